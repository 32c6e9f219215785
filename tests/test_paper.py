"""Paper letters (post, courier, front desk): the registry office's page in a real browser, the
same from `gateway ingest --channel`, a crash between the upload and the registration, who may
register, what is refused (each fault naming its field), and no receipt without an e-mail address."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
import pytest
from browser_support import SignIn, browser_fixture, signed_in_pages
from conftest import Daemon, Gateway, PostgresServer, make_message, wait_for
from fax_samples import ENGLISH, SIMPLIFIED, pdf_fax, render_page
from playwright.sync_api import Browser, expect
from web_support import PASSWORD, Site, hidden, meta_csrf

from gateway.registry import Registry
from gateway.registry.models import OcrJob
from gateway.services.paper import PaperLetter, PaperRefused, Scan, register_paper
from gateway.stages import rulebook
from gateway.stages.fax.document import FaxPages, read_scan
from gateway.stages.fax.text import TextReader

pytestmark = pytest.mark.timeout(300)

browser = browser_fixture
# Paper letters about an order go to Business; the rest stays with triage.
RULES = """
rules:
  - name: orders
    when:
      keywords: {any: ["order", "4711", "订单"], in: [subject, body]}
    set: {department: business, category: external.business}
"""
TWO_PAGES = [ENGLISH, SIMPLIFIED]  # page 1 names purchase order 4711; page 2 is in Chinese


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, rules=RULES)
    s.add_people()
    s.people.set_language("rita", "en")  # the browser tests choose theirs
    yield s
    s.close()


@pytest.fixture(name="sign_in")
def sign_in_fixture(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def read_texts(site: Site) -> None:
    """What the daemon's text reader does: read every waiting letter's scans, then classify it."""
    reader = TextReader(site.config, site.registry)
    try:
        def read() -> bool:
            reader.run_once()
            with site.registry.read() as conn:  # a look, not a claim
                return conn.execute(select(OcrJob.letter_id)).first() is None
        wait_for(read, timeout=120, what="the scans read")
    finally:
        reader.stop()


def png(lines: list[str]) -> bytes:
    out = io.BytesIO()
    render_page(lines).save(out, "PNG")
    return out.getvalue()


# -- the browser ------------------------------------------------------------------------------
def test_a_scanned_two_page_pdf_registered_in_the_browser(site: Site, sign_in: SignIn, tmp_path: Path) -> None:
    scan = tmp_path / "扫描件.pdf"
    scan.write_bytes(pdf_fax(TWO_PAGES))
    page = sign_in("rita", lang="zh")
    page.click("nav >> text=登记纸质来信")
    expect(page.locator("h1")).to_have_text("登记纸质来信")
    page.check("input[name=channel][value=courier]")
    page.fill("input[name=sender_name]", "王建国")
    page.fill("input[name=organisation]", "广州示例贸易有限公司")
    page.fill("textarea[name=address]", "广州市天河区示例路 1 号")
    page.fill("input[name=phone]", "+86 20 1234 5678")
    page.fill("input[name=subject]", "Purchase order 4711")
    page.fill("textarea[name=note]", "前台签收，信封完好")
    page.set_input_files("input[name=scans]", str(scan))
    page.click("form.paper-form button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("已登记，编号为")
    number = page.locator(".flash.ok a.number").inner_text()
    letter = site.registry.letter(number)
    assert letter is not None and letter.channel == "courier" and letter.intake == "web"
    assert (letter.sender_name, letter.sender_organisation, letter.sender_phone) == (
        "王建国", "广州示例贸易有限公司", "+86 20 1234 5678")
    assert letter.sender_address == "" and letter.status == "registered" and "ocr-pending" in letter.flags
    [attachment] = letter.attachments
    assert attachment.original_filename == "扫描件.pdf" and attachment.size == scan.stat().st_size
    assert letter.envelope["paper"] == {"registered_by": "rita", "note": "前台签收，信封完好", "pages": 2}

    read_texts(site)
    letter = site.registry.letter(number)
    assert letter is not None
    assert "4711" in letter.body_text and "报价单" in letter.body_text.replace(" ", "")
    assert (letter.status, letter.department, letter.category) == ("routed", "business", "external.business")
    events = [e.action for e in letter.events]
    assert events[:2] == ["received", "registered"] and "text-read" in events and "routed" in events
    assert next(e for e in letter.events if e.action == "registered").actor == "rita"
    receipt = next(e for e in letter.events if e.action == "receipt-suppressed")
    assert receipt.details["reason"] == "no sender address"  # a phone and an address are no e-mail address
    assert not [m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "receipt"]

    # The letter page shows the channel, the sender as recorded and the text read; the scan is intact.
    page.goto(f"/letters/{number}")
    entry = page.locator("section.card").first
    for text in ("快递", "广州示例贸易有限公司", "广州市天河区示例路 1 号", "+86 20 1234 5678", "前台签收", "rita"):
        expect(entry).to_contain_text(text)
    expect(page.locator("pre.body")).to_contain_text("4711")
    downloaded = site.sign_in("rita").get(f"/letters/{number}/attachments/{attachment.position}")
    assert downloaded.content == scan.read_bytes()
    # The channel is a filter of the queues and a column of the export.
    page.goto("/letters?queue=all&channel=courier")
    expect(page.locator("table.letters")).to_contain_text(number)
    csv = site.sign_in("rita").get("/letters.csv", params={"queue": "all", "channel": "courier"}).text
    assert re.search(rf"^{number},[^,]+,courier,王建国,", csv, re.M)


def test_a_refused_form_names_each_field_and_keeps_what_was_typed(site: Site, sign_in: SignIn,
                                                                  tmp_path: Path) -> None:
    good, broken, program = tmp_path / "letter.pdf", tmp_path / "broken.pdf", tmp_path / "setup.exe"
    good.write_bytes(pdf_fax([ENGLISH]))
    broken.write_bytes(pdf_fax([ENGLISH])[:400])
    program.write_bytes(b"MZ\x90\x00" + bytes(300))
    page = sign_in("rita", lang="en")
    page.goto("/paper")
    page.fill("input[name=sender_name]", "Mr Li")
    page.fill("input[name=organisation]", "Li & Sons")
    page.fill("input[name=email]", "not an address")
    page.fill("input[name=received_at]", "2099-01-01T09:00")
    page.set_input_files("input[name=scans]", [str(good), str(broken), str(program)])
    # The browser's own check of the e-mail field is off the point here: the server's answer is.
    page.eval_on_selector("form.paper-form", "f => f.noValidate = true")
    page.click("form.paper-form button[type=submit]")
    alert = page.locator(".flash.error")
    expect(alert).to_contain_text("The letter was not registered")
    expect(page.locator("#received_at-error")).to_have_text("the time it was received cannot be in the future")
    expect(page.locator("#email-error")).to_have_text("“not an address” is not an e-mail address")
    scans = page.locator("#field-scans")
    expect(scans).to_contain_text("broken.pdf: PDF is damaged")
    expect(scans).to_contain_text("setup.exe: not a PDF, TIFF, JPEG or PNG")
    for name, value in (("sender_name", "Mr Li"), ("organisation", "Li & Sons"), ("email", "not an address"),
                        ("received_at", "2099-01-01T09:00")):
        expect(page.locator(f"input[name={name}]")).to_have_value(value)
    # The readable scan was kept with the form: corrected, it is registered without choosing it again.
    expect(page.locator("input[name=kept]")).to_have_count(1)
    expect(scans).to_contain_text("letter.pdf")
    page.fill("input[name=email]", "li@partner.example")
    page.fill("input[name=received_at]", "2026-11-20T10:15")
    page.click("form.paper-form button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("Registered as")
    number = page.locator(".flash.ok a.number").inner_text()
    letter = site.registry.letter(number)
    assert letter is not None and [a.original_filename for a in letter.attachments] == ["letter.pdf"]
    assert letter.channel == "post" and letter.sender_address == "li@partner.example"
    assert letter.received_at.isoformat() == "2026-11-20T02:15:00+00:00"  # 10:15 in Asia/Shanghai
    assert not list((site.config.state_dir / "paper-forms").iterdir())  # nothing kept once registered


def test_bad_input_over_http_gives_400_naming_the_field(site: Site) -> None:
    client = site.sign_in("rita")
    token = hidden(client.get("/paper").text, "token")
    cases = [
        ({"sender_name": "A", "channel": "post"}, None, "scans", "add the scans of the letter"),
        ({"sender_name": "", "channel": "post"}, ("a.pdf", pdf_fax([ENGLISH])), "sender_name",
         "the sender&#39;s name is needed"),
        ({"sender_name": "A", "channel": "pigeon"}, ("a.pdf", pdf_fax([ENGLISH])), "channel", "choose how it came"),
        ({"sender_name": "A", "channel": "post", "received_at": "yesterday"}, ("a.pdf", pdf_fax([ENGLISH])),
         "received_at", "is not a date and time"),
        # A year no register holds, and 2026 typed as 0026: refused before anything is spooled.
        *[({"sender_name": "A", "channel": "post", "received_at": when}, ("a.pdf", pdf_fax([ENGLISH])),
           "received_at", f"“{when}” is outside the register&#39;s years (1900 to 9998): check the year")
          for when in ("0001-01-01 00:00", "0026-11-22 09:30", "9999-12-31 23:59")],
        ({"sender_name": "A", "channel": "post", "phone": "call me"}, ("a.pdf", pdf_fax([ENGLISH])), "phone",
         "a telephone number has digits"),
    ]
    for form, upload, field, message in cases:
        files = {"scans": (upload[0], upload[1], "application/pdf")} if upload else {"scans": ("", b"", "")}
        refused = client.post("/paper", data={"csrf": client.csrf, "token": token, **form}, files=files)
        assert refused.status_code == 400, (field, refused.text[-500:])
        assert f'id="{field}-error">' in refused.text and message in refused.text, field
    assert site.spool.pending() == [] and not list((site.config.spool_dir / "work").iterdir())


def test_only_the_registry_office_may_register(site: Site) -> None:
    form = {"sender_name": "A", "channel": "post"}
    files = {"scans": ("a.pdf", pdf_fax([ENGLISH]), "application/pdf")}
    for login in ("ada", "sam", "bella", "gina", "leo", "audrey"):
        client = site.sign_in(login)
        assert client.get("/paper").status_code == 403, login
        assert client.post("/paper", data={"csrf": client.csrf, **form}, files=files).status_code == 403, login
        assert 'href="/paper"' not in client.get("/letters?queue=all").text, login  # not in their navigation
    anonymous = site.client()
    assert anonymous.get("/paper").status_code == 303
    rita = site.sign_in("rita")
    assert 'href="/paper"' in rita.get("/letters?queue=all").text
    assert rita.post("/paper", data=form, files=files).status_code == 403  # no CSRF token
    assert site.spool.pending() == []
    registered = rita.post("/paper", data={"csrf": rita.csrf, "token": hidden(rita.get("/paper").text, "token"),
                                           **form}, files=files)
    assert registered.status_code == 303 and "registered=" in registered.headers["location"]


def test_the_same_form_sent_twice_is_one_letter(site: Site) -> None:
    client = site.sign_in("rita")
    data = {"csrf": client.csrf, "token": hidden(client.get("/paper").text, "token"), "sender_name": "A",
            "channel": "front-desk"}
    files = {"scans": ("a.pdf", pdf_fax([ENGLISH]), "application/pdf")}
    first = client.post("/paper", data=data, files=files)
    again = client.post("/paper", data=data, files=files)
    assert "result=registered" in first.headers["location"] and "result=known" in again.headers["location"]
    number = re.search(r"registered=([^&]+)", first.headers["location"])
    assert number and number.group(1) in again.headers["location"]
    page = client.get(again.headers["location"])
    assert "This form was registered already" in page.text
    # The same page, changed for the next letter (the browser's Back): another letter, registered.
    other = client.post("/paper", data=data | {"sender_name": "B"}, files=files)
    assert "result=registered" in other.headers["location"]
    assert number.group(1) not in other.headers["location"]
    second = re.search(r"registered=([^&]+)", other.headers["location"])
    assert second and (letter := site.registry.letter(second.group(1))) is not None
    assert letter.sender_name == "B"



def test_a_refused_form_corrected_and_sent_twice_with_its_kept_scans_is_one_letter(site: Site) -> None:
    """The first sending registers it and drops the kept scans; the second (a double click) is
    told the form was registered already, not asked for the scans again."""
    client = site.sign_in("rita")
    token = hidden(client.get("/paper").text, "token")
    files = {"scans": ("a.pdf", pdf_fax([ENGLISH]), "application/pdf")}
    refused = client.post("/paper", data={"csrf": client.csrf, "token": token, "sender_name": "",
                                          "channel": "post"}, files=files)
    assert refused.status_code == 400
    kept = hidden(refused.text, "kept")
    corrected = {"csrf": client.csrf, "token": token, "sender_name": "A", "channel": "post", "kept": kept}
    first = client.post("/paper", data=corrected, files={"scans": ("", b"", "")})
    again = client.post("/paper", data=corrected, files={"scans": ("", b"", "")})
    assert "result=registered" in first.headers["location"], first.text[-500:]
    number = re.search(r"registered=([^&]+)", first.headers["location"])
    assert number and again.status_code == 303, again.text[-500:]
    assert again.headers["location"] == f"/paper?registered={number.group(1)}&result=known"
    assert len(site.registry.letters(channel="post")) == 1
    # Kept scans gone and nothing registered from the form: asked for the scans, as before.
    other = hidden(client.get("/paper").text, "token")
    lost = client.post("/paper", data=corrected | {"token": other}, files={"scans": ("", b"", "")})
    assert lost.status_code == 400 and "add the scans of the letter" in lost.text


def test_the_chinese_form_calls_the_sender_as_its_field_and_the_register_do(site: Site) -> None:
    """In Chinese the register calls whoever wrote the letter 来信人 (the sender's field too): the
    form's card, its hints and the refusal of an empty name say the same, not 寄件人."""
    site.people.set_language("rita", "zh")
    client = site.sign_in("rita")
    token = hidden(client.get("/paper").text, "token")
    refused = client.post("/paper", data={"csrf": client.csrf, "token": token, "sender_name": " ", "channel": "post",
                                          "subject": "保留的主题"},
                          files={"scans": ("a.pdf", pdf_fax([ENGLISH]), "application/pdf")})
    assert refused.status_code == 400 and 'value="保留的主题"' in refused.text
    assert "请填写来信人姓名" in refused.text and "<h2>来信人</h2>" in refused.text
    assert "寄件人" not in refused.text


def test_a_file_sent_again_for_a_refused_one_takes_its_place(site: Site) -> None:
    """Pages 1 to 3, page 1's file cut short: refused by name, pages 2 and 3 kept. Page 1 scanned
    again and sent with them: the letter's files are pages 1, 2 and 3, in that order."""
    client = site.sign_in("rita")
    token = hidden(client.get("/paper").text, "token")
    pages = [pdf_fax([[f"PAGE {n}"]]) for n in (1, 2, 3)]
    data = {"csrf": client.csrf, "token": token, "sender_name": "A", "channel": "post"}
    refused = client.post("/paper", data=data, files=[
        ("scans", ("page1.pdf", pages[0][:len(pages[0]) // 2], "application/pdf")),
        ("scans", ("page2.pdf", pages[1], "application/pdf")), ("scans", ("page3.pdf", pages[2], "application/pdf"))])
    assert refused.status_code == 400 and "page1.pdf" in refused.text
    kept = re.findall(r'name="kept" value="([^"]*)"', refused.text)
    assert [name.partition("-")[2] for name in kept] == ["page2.pdf", "page3.pdf"]
    done = client.post("/paper", data=data | {"kept": kept}, files=[("scans", ("page1.pdf", pages[0],
                                                                               "application/pdf"))])
    found = re.search(r"registered=([^&]+)", done.headers.get("location", ""))
    assert found, done.text[-500:]
    letter = site.registry.letter(found.group(1))
    assert letter is not None
    with site.registry.read() as conn:
        files = conn.exec_driver_sql("SELECT original_filename, sha256 FROM attachments WHERE letter_id = ? "
                                     "ORDER BY position", (letter.id,)).all()
    assert [name for name, _ in files] == ["page1.pdf", "page2.pdf", "page3.pdf"]
    assert [sha for _, sha in files] == [hashlib.sha256(page).hexdigest() for page in pages]

# -- the service ------------------------------------------------------------------------------
def test_a_jpeg_and_a_png_scan_are_one_page_documents(tmp_path: Path) -> None:
    photo = io.BytesIO()
    render_page(["PHOTOGRAPHED PAGE"]).convert("L").save(photo, "JPEG", quality=90)
    for data, kind in ((photo.getvalue(), "jpeg"), (png(["SCANNED PAGE"]), "png")):
        document = read_scan(data, f"page.{kind}")
        assert (document.kind, document.page_count, document.pages[0].compression) == ("image", 1, kind)
        with FaxPages(data, "image") as pages:
            image = pages.image(0)
            assert image.mode == "L" and image.size == (document.pages[0].width, document.pages[0].height)
    with pytest.raises(Exception, match=r"^page\.png: picture is damaged"):
        read_scan(png(["X"])[:200], "page.png")


def test_a_receipt_goes_only_to_an_e_mail_address(site: Site) -> None:
    pdf = pdf_fax([ENGLISH])
    with_email = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
        channel="post", sender_name="Alice", email="alice@partner.example", phone="123 456",
        scans=[Scan("a.pdf", pdf)]), by="rita", intake="web")
    without = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
        channel="post", sender_name="Bob", address="1 Long Road, Guangzhou", phone="+86 20 1234",
        scans=[Scan("b.pdf", pdf + b"\n")]), by="rita", intake="web")
    read_texts(site)
    receipts = {}
    for done in (with_email, without):
        assert done.number
        letter = site.registry.letter(done.number)
        assert letter is not None
        receipts[letter.sender_name] = [m.recipient for m in site.registry.outbox(letter_id=letter.id)
                                        if m.kind == "receipt"]
    assert receipts == {"Alice": ["alice@partner.example"], "Bob": []}


def test_refused_input_spools_nothing(site: Site) -> None:
    with pytest.raises(PaperRefused) as refused:
        register_paper(site.config, site.spool, site.pipeline, PaperLetter(
            channel="post", sender_name="A", scans=[]), by="rita", intake="web")
    assert [e.field for e in refused.value.errors] == ["scans"]
    assert site.spool.pending() == [] and not list((site.config.spool_dir / "work").iterdir())


# -- the command line and a crash -----------------------------------------------------------
@pytest.fixture(name="paper_gateway")
def paper_gateway_fixture(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path, rules=RULES, extra="[fax]\nocr_workers = 1\n")


def test_gateway_ingest_channel_post(paper_gateway: Gateway, tmp_path: Path) -> None:
    gw = paper_gateway
    page1, page2 = tmp_path / "page1.pdf", tmp_path / "page2.png"
    page1.write_bytes(pdf_fax([ENGLISH]))
    page2.write_bytes(png(["SECOND PAGE"]))
    out = gw.run("ingest", "--channel", "post", "--sender", "Wang Wei", "--organisation", "Example Trading",
                 "--address", "1 Harbour Road", "--phone", "+86 20 5555", "--subject", "Order 4711 by post",
                 "--received-at", "2026-11-20 09:30", "--note", "opened by the front desk", "--by", "rita",
                 "--reference", "粤贸函〔2026〕8号", str(page1), str(page2)).stdout
    found = re.search(r"registered as (\S+) \(post, 2 page\(s\)\)", out)
    assert found, out
    detail: dict[str, Any] = gw.show_json(found.group(1))
    assert (detail["channel"], detail["sender_name"], detail["subject"]) == ("post", "Wang Wei", "Order 4711 by post")
    assert detail["received_at"].startswith("2026-11-20T01:30:00")
    assert [a["original_filename"] for a in detail["attachments"]] == ["page1.pdf", "page2.png"]
    assert detail["envelope"]["paper"]["note"] == "opened by the front desk" and detail["defects"] == []
    assert detail["sender_reference"] == "粤贸函〔2026〕8号"
    assert [e["actor"] for e in detail["events"] if e["action"] == "registered"] == ["rita"]
    [listed] = gw.list_json()
    assert listed["channel"] == "post"
    # Refusals name the option; nothing is registered.
    refused = gw.run("ingest", "--channel", "courier", "--sender", "", "--received-at", "2099-01-01 00:00",
                     str(tmp_path / "page1.pdf"), check=False)
    assert refused.returncode == 1
    assert "error: --sender: the sender's name is needed" in refused.stderr
    assert "error: --received-at: the time it was received cannot be in the future" in refused.stderr
    assert gw.run("ingest", "--sender", "x", str(page1), check=False).returncode == 2  # --sender needs --channel
    # A line break would be a header of its own in the letter: refused by name, not a traceback.
    forged = gw.run("ingest", "--channel", "post", "--sender", "Wang\nWei", "--subject", "Order\nBcc: x@evil.example",
                    str(page1), check=False)
    assert forged.returncode == 1 and "Traceback" not in forged.stderr, forged.stderr
    assert "error: --subject: one line, without line breaks or control characters" in forged.stderr
    assert "error: --sender: one line" in forged.stderr
    assert len(gw.list_json()) == 1
    # Scan names from the shell: another encoding read, a line break dropped.
    odd = tmp_path / "odd"
    odd.mkdir()
    latin, broken = os.fsdecode(b"fax\xb4\xab.pdf"), "new\nline.pdf"
    for name in (latin, broken):
        (odd / name).write_bytes(pdf_fax([ENGLISH]))
    out = gw.run("ingest", "--channel", "post", "--sender", "Wang Wei", str(odd / latin), str(odd / broken)).stdout
    named = re.search(r"registered as (\S+)", out)
    assert named, out
    assert "odd/fax\\xb4\\xab.pdf, " in out and "odd/new\\nline.pdf: registered" in out  # shown, never raw
    names = [a["original_filename"] for a in gw.show_json(named.group(1))["attachments"]]
    assert names == ["fax传.pdf", "newline.pdf"], names  # a scanner's GBK name, read as such
    assert len(gw.list_json()) == 2
    # The paper channel in the month's figures; found by the organisation too.
    report = json.loads(gw.run("report", "--month", "2026-11", "--format", "json").stdout)
    assert (report["volumes"]["channel"], report["paper"]) == ({"post": 1}, 1)
    hits = json.loads(gw.run("letters", "search", "Example Trading", "--json").stdout)["letters"]
    assert [hit["number"] for hit in hits] == [found.group(1)]


def test_ingest_of_a_pipe_given_as_a_scan_is_refused_at_once(paper_gateway: Gateway, tmp_path: Path) -> None:
    """A named pipe (or a device) in the list of scans, a slip at the shell: refused by name before
    anything is read, instead of the command waiting for a writer that never comes."""
    gw = paper_gateway
    scan, pipe = tmp_path / "page1.pdf", tmp_path / "scanner-pipe"
    scan.write_bytes(pdf_fax([ENGLISH]))
    os.mkfifo(pipe)
    refused = gw.run("ingest", "--channel", "post", "--sender", "Wang Wei", str(scan), str(pipe), check=False,
                     timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip() == f"error: {pipe}: not a regular file (a pipe or a device?)"
    assert gw.list_json() == [] and gw.spool_files("new") == gw.spool_files("work") == []


def test_a_direction_control_pasted_into_a_name_is_refused(paper_gateway: Gateway, tmp_path: Path) -> None:
    """U+202E pasted with a sender's name or organisation turns what follows it round (a name that
    reads as another): refused by field, as a line break is, and nothing is registered."""
    gw = paper_gateway
    scan = tmp_path / "page1.pdf"
    scan.write_bytes(pdf_fax([ENGLISH]))
    refused = gw.run("ingest", "--channel", "post", "--sender", "Wang \u202eieW", "--organisation",
                     "\u2067Example Trading\u2069", str(scan), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.splitlines() == [
        "error: --sender: one line, without line breaks or control characters",
        "error: --organisation: one line, without line breaks or control characters"]
    assert gw.list_json() == [] and gw.spool_files("new") == gw.spool_files("work") == []


def test_ingest_by_names_the_clerk_never_a_person_or_the_registers_own_names(tmp_path: Path) -> None:
    """`--by` of `gateway ingest --channel` is the clerk at the shell, as every command's: a person's
    sign-in name (any case) or the register's own names are refused before anything is spooled. With
    the registry unreachable the name cannot be checked: nothing is spooled and the command exits 75,
    to be run again."""
    server = PostgresServer()
    server.start()
    try:
        gw = Gateway(tmp_path, registry_url=server.create_database(), rules=RULES)
        gw.run("db", "upgrade")
        gw.run("users", "add", "rita", "--role", "registry", "--email", "rita@example.org", "--no-password")
        scan = tmp_path / "scan.pdf"
        scan.write_bytes(pdf_fax([ENGLISH]))

        def ingest(by: str) -> Any:
            return gw.run("ingest", "--channel", "post", "--sender", "Wang Wei", "--by", by, str(scan), check=False)
        for name in ("rita", "Rita", "sender", "system"):
            refused = ingest(name)
            assert refused.returncode == 1 and "--by" in refused.stderr and "/paper" in refused.stderr, refused.stderr
        assert gw.list_json() == [] and gw.spool_files("new") == gw.spool_files("work") == []
        server.stop()
        for name in ("rita", "night.clerk"):
            away = ingest(name)
            assert away.returncode == 75 and "registry" in away.stderr, away.stderr
        assert gw.spool_files("new") == gw.spool_files("work") == []  # unchecked, so not taken
        server.start()
        assert ingest("rita").returncode == 1
        taken = ingest("night.clerk")
        found = re.search(r"registered as (\S+)", taken.stdout)
        assert taken.returncode == 0 and found, taken.stderr
        detail = gw.show_json(found.group(1))
        assert [e["actor"] for e in detail["events"] if e["action"] == "registered"] == ["night.clerk"]
        assert detail["envelope"]["paper"]["registered_by"] == "night.clerk"
        assert len(gw.list_json()) == 1
    finally:
        server.destroy()


def test_ingest_of_a_message_file_refuses_by_and_a_paper_letters_details(paper_gateway: Gateway,
                                                                        tmp_path: Path) -> None:
    """A message or fax file is registered by the gateway as it came: `--by` (the clerk of a paper
    letter) or a paper letter's details without --channel would be recorded nowhere, so they are a
    usage error and nothing is taken."""
    gw = paper_gateway
    message = tmp_path / "letter.eml"
    message.write_bytes(make_message(1, to="sales@example.org"))
    for given, says in ((("--by", "clerk.wang"), "--by names the clerk who registers a paper letter"),
                        (("--sender", "Wang Wei"), "--sender describes a paper letter: give --channel too")):
        refused = gw.run("ingest", *given, str(message), check=False)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    assert gw.list_json() == [] and gw.spool_files("new") == gw.spool_files("work") == []
    taken = gw.run("ingest", str(message))
    assert "registered as 2026-000001" in taken.stdout
    events = gw.show_json("2026-000001")["events"]
    assert [e["actor"] for e in events if e["action"] == "registered"] == ["gateway"]


def test_a_crash_between_the_upload_and_the_registration_loses_nothing(paper_gateway: Gateway,
                                                                       tmp_path: Path) -> None:
    """Killed right after the scans are durable in the spool: the daemon registers the letter on
    restart, and reads and routes it, exactly once."""
    gw = paper_gateway
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(pdf_fax(TWO_PAGES))
    crashed = gw.run("ingest", "--channel", "front-desk", "--sender", "Visitor", str(scan), check=False,
                     env=gw.env(GATEWAY_CRASH_AT="after-spool"))
    assert crashed.returncode == -9
    assert len(gw.spool_files("work")) == 1 and gw.list_json() == []
    daemon = gw.start()
    try:
        wait_for(lambda: gw.list_json() and gw.list_json()[0]["status"] == "routed", timeout=120,
                 what="the letter registered and routed")
    finally:
        out = daemon.stop()
    [letter] = gw.list_json()
    detail = gw.show_json(str(letter["number"]))
    assert detail["channel"] == "front-desk" and detail["department"] == "business", out
    assert "4711" in str(detail["body_text"])
    assert gw.spool_files("work") == gw.spool_files("new") == []


def test_the_web_page_of_a_daemon_killed_after_the_spool(paper_gateway: Gateway, tmp_path: Path) -> None:
    """The same through the daemon's own web listener: the page never said "registered", and the
    restarted daemon registers what was spooled."""
    gw = paper_gateway
    gw.run("users", "add", "rita", "--role", "registry", "--email", "rita@example.org", "--password-stdin",
           input=f"{PASSWORD}\n".encode())
    config = rulebook.load(str(gw.config), with_rules=False)
    url = f"http://{config.model.web.listen}"

    def signed_in() -> httpx.Client:
        client = httpx.Client(base_url=url, timeout=30)
        wait_for(lambda: _answers(client), timeout=60, what="the web listener")
        token = hidden(client.get("/signin").text, "csrf")
        assert client.post("/signin", data={"login": "rita", "password": PASSWORD, "csrf": token}).status_code == 303
        return client

    crashing = gw.start(GATEWAY_CRASH_AT="after-spool")
    client = signed_in()
    form = client.get("/paper").text
    with pytest.raises(httpx.TransportError):
        client.post("/paper", data={"csrf": meta_csrf(form), "token": hidden(form, "token"), "sender_name": "Visitor",
                                    "channel": "front-desk"},
                    files={"scans": ("scan.pdf", pdf_fax(TWO_PAGES), "application/pdf")})
    client.close()
    assert _dead(crashing) == -9
    assert gw.list_json() == []
    daemon = gw.start()
    try:
        wait_for(lambda: gw.list_json() and gw.list_json()[0]["status"] == "routed", timeout=120,
                 what="the letter registered and routed")
    finally:
        daemon.stop()
    [letter] = gw.list_json()
    assert letter["channel"] == "front-desk"
    registry = Registry.from_config(config)
    try:
        stored = registry.letter(str(letter["number"]))
        assert stored is not None and [a.original_filename for a in stored.attachments] == ["scan.pdf"]
    finally:
        registry.close()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/signin").status_code == 200
    except httpx.TransportError:
        return False


def _dead(daemon: Daemon) -> int:
    return daemon.wait(30)


def test_the_page_says_registered_or_waiting_only_when_the_register_or_the_spool_does(site: Site) -> None:
    """A link is anyone's to write: /paper?registered=... or ?spooled=... shows a banner only for a
    letter in the register or an item the spool holds; an item registered since shows as its
    letter."""
    from gateway.registry.models import IntakeKey, Letter

    site.people.set_language("rita", "en")
    client = site.sign_in("rita")
    banner = "This form was registered already"
    assert banner not in client.get("/paper", params={"registered": "PAY-TO-IBAN-DE00", "result": "known"}).text
    number = site.ingest("paper", make_message(9, subject="A letter", to="sales@example.org"))
    assert banner in client.get("/paper", params={"registered": number, "result": "known"}).text
    with site.registry.session() as session:
        key = session.scalar(select(IntakeKey.key).join(Letter).where(
            Letter.number == number, IntakeKey.key.startswith("spool:")))
    assert key is not None
    registered_since = client.get("/paper", params={"spooled": key.removeprefix("spool:")}).text
    assert f"Registered as <a href=\"/letters/{number}\"" in registered_since
    waiting = site.spool.enqueue(make_message(10), {"channel": "post", "intake": "web"})
    assert f"kept safely (item {waiting.id})" in client.get("/paper", params={"spooled": waiting.id}).text
    for forged in ("00000000000000000000-deadbeef", "<script>", waiting.id + "x"):
        page = client.get("/paper", params={"spooled": forged}).text
        assert "kept safely" not in page and "Registered as" not in page, forged


def test_an_encoded_word_typed_into_the_form_stays_text_in_the_letters_message(site: Site) -> None:
    """The form's values become the headers of the letter's message: an encoded-word of header
    lines typed (or pasted) into the sender's name or the subject must not become headers."""
    injected = "=?utf-8?b?" + base64.b64encode(b"\r\nFrom: boss@example.org\r\nX-Forged: yes").decode() + "?="
    done = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
        channel="post", sender_name=f"Alice {injected}", email="alice@partner.example", subject=f"Offer {injected}",
        scans=[Scan("a.pdf", pdf_fax([ENGLISH]))]), by="rita", intake="web")
    letter = site.registry.letter(done.number)
    assert letter is not None and letter.sender_address == "alice@partner.example"
    raw = (site.config.state_dir / letter.raw_path).read_bytes()
    assert b"X-Forged" not in raw and b"boss@example.org" not in raw
    assert letter.subject.startswith("Offer =\u200b?utf-8?b?")


def test_a_paper_letters_reference_is_typed_or_read_from_its_scans_and_found_by_search(site: Site) -> None:
    """The sender's reference (来文字号): as the clerk typed it, spaces folded; else, once the scans
    are read, the first one near the top of their text, written the standard's way; a typed one
    is not overruled by the text. Shown on the letter's page, found by search, refused by name when
    it is not one line or too long."""
    client = site.sign_in("rita")

    def register(fields: dict[str, str], lines: list[str]) -> str:
        done = client.post("/paper", data={"csrf": client.csrf, "token": hidden(client.get("/paper").text, "token"),
                                           "sender_name": "市应急管理局", "channel": "post", **fields},
                           files={"scans": ("scan.png", png(lines), "image/png")})
        assert done.status_code == 303, done.text[-500:]
        found = re.search(r"registered=([^&]+)", done.headers["location"])
        assert found is not None
        return found.group(1)

    typed = register({"reference": "  京应急函〔2026〕 3号 "}, ["国办发[2026]12号"])
    read = register({"subject": "关于召开安全生产工作会议的通知"}, ["国办发[2026]12号", "FAX TRANSMISSION"])
    none = register({"subject": "Purchase order"}, ENGLISH)
    read_texts(site)
    references = {number: letter.sender_reference for number in (typed, read, none)
                  if (letter := site.registry.letter(number)) is not None}
    assert references == {typed: "京应急函〔2026〕 3号", read: "国办发〔2026〕12号", none: ""}
    assert "京应急函〔2026〕 3号" in client.get(f"/letters/{typed}").text
    found = client.get("/search", params={"q": "京应急函"}).text
    assert typed in found and read not in found
    shown = json.loads(site.gateway.run("letters", "show", read, "--json").stdout)
    assert shown["sender_reference"] == "国办发〔2026〕12号"
    token = hidden(client.get("/paper").text, "token")
    for reference, message in (("国办发〔2026〕\n12号", "one line"), ("号" * 101, "at most 100 characters")):
        refused = client.post("/paper", data={"csrf": client.csrf, "token": token, "sender_name": "A",
                                              "channel": "post", "reference": reference},
                              files={"scans": ("a.png", png(ENGLISH), "image/png")})
        assert refused.status_code == 400 and 'id="reference-error">' in refused.text and message in refused.text


def test_a_sender_reference_is_put_right_on_the_letter_page_and_by_command(site: Site) -> None:
    """By the registry office or the letter's department, not by a leader; an event keeps the one
    before; search finds the letter by the new one; bad input and the same one again are refused."""
    from conftest import make_message

    number = site.ingest("plain", make_message(41, subject="关于会议的通知", body="各单位：请准时参加。\n"))
    letter = site.registry.letter(number)
    assert letter is not None and letter.sender_reference == ""
    rita = site.sign_in("rita")
    page = rita.get(f"/letters/{number}").text
    assert 'name="action" value="reference"' in page

    def put(client: Any, text: str) -> Any:
        return client.post(f"/letters/{number}/act", data={"csrf": client.csrf, "action": "reference", "text": text,
                                                          "seen": letter.department or ""})

    done = put(rita, " 粤贸函〔2026〕 8号 ")
    assert done.status_code == 303 and "Sender&#39;s reference saved." in rita.get(done.headers["location"]).text
    after = site.registry.letter(number)
    assert after is not None and after.sender_reference == "粤贸函〔2026〕 8号"
    [event] = [e for e in after.events if e.action == "reference-set"]
    assert (event.actor, event.details) == ("rita", {"reference": "粤贸函〔2026〕 8号", "before": ""})
    assert number in rita.get("/search", params={"q": "粤贸函"}).text
    again = put(rita, "粤贸函〔2026〕 8号")
    assert again.status_code == 409 and "reference is 粤贸函〔2026〕 8号 already" in again.text
    for bad in ("粤贸函〔2026〕\n8号", "号" * 101, "\u202e号8〔2026〕函贸粤"):
        refused = put(rita, bad)
        assert refused.status_code == 400 and "one line of at most 100 characters" in refused.text
    leo = site.sign_in("leo")
    assert 'value="reference"' not in leo.get(f"/letters/{number}").text
    assert put(leo, "x〔2026〕1号").status_code == 403
    # The command, as the registry office: cleared, and no longer found by it.
    site.gateway.run("letters", "reference", number, "", "--as", "rita")
    cleared = site.registry.letter(number)
    assert cleared is not None and cleared.sender_reference == ""
    assert number not in rita.get("/search", params={"q": "粤贸函"}).text
    refused_cli = site.gateway.run("letters", "reference", number, "x〔2026〕1号", "--as", "leo", check=False)
    assert refused_cli.returncode == 1 and "registry office who may read it" in refused_cli.stderr
