"""The web register's pages: they render in both languages, carry the security headers, refuse a
form without its CSRF token, sign in and out, and show attachment pages as pictures."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from web_support import PASSWORD, Person, Site, hidden, site_fixture  # noqa: F401  (the `site` fixture)

from gateway.registry.models import Letter
from gateway.services.access import Refused
from gateway.services.incomplete import Incomplete
from gateway.services.people import Principal
from gateway.web import i18n, preview, security


def closed_and_archived(site: Site, number: str) -> Letter:
    """The letter closed by an operator and its month archived: its content is read through a
    borrowing from now on. Returns the letter as it was when closed."""
    from zoneinfo import ZoneInfo

    from gateway.archive.packer import Archiver

    site.access.act(Principal.operator("test"), number, "close", text="done")
    letter = site.registry.letter(number)
    assert letter is not None
    Archiver(site.config, site.registry).run(letter.received_at.astimezone(ZoneInfo("Asia/Shanghai"))
                                             .strftime("%Y-%m"))
    return letter


def test_signing_in_and_out(site: Site) -> None:
    client = site.client()
    assert client.get("/letters?queue=all").headers["location"] == "/signin?next=%2Fletters%3Fqueue%3Dall"
    form = client.get("/signin?next=/letters%3Fqueue%3Dall")
    token = hidden(form.text, "csrf")
    assert 'name="next" value="/letters?queue=all"' in form.text
    wrong = client.post("/signin", data={"login": "rita", "password": "nope", "csrf": token})
    assert wrong.status_code == 401 and "登录名或密码错误" in wrong.text  # [web] language = "zh"
    assert "登录名<input" in wrong.text and "用户名" not in wrong.text  # the refusal names the field as it is labelled
    done = client.post("/signin", data={"login": "rita", "password": PASSWORD, "csrf": token,
                                        "next": "/letters?queue=all"})
    assert done.status_code == 303 and done.headers["location"] == "/letters?queue=all"
    cookie = done.headers["set-cookie"]
    assert "gw_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    page = client.get("/letters?queue=all")
    assert page.status_code == 200 and site.letters["business"] in page.text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert client.post("/signout", data={"csrf": csrf}).headers["location"] == "/signin"
    assert client.get("/letters?queue=all").status_code == 303
    actions = [r.action for r in site.access.audit(site.people.principal("audrey"), actor="rita")]  # type: ignore[arg-type]
    assert actions[:3] == ["sign-out", "sign-in", "sign-in-failed"]


def test_sign_in_refuses_a_form_without_its_token_and_foreign_next(site: Site) -> None:
    client = site.client()
    client.get("/signin")
    refused = client.post("/signin", data={"login": "rita", "password": PASSWORD, "csrf": "forged"})
    assert refused.status_code == 403 and "gw_session" not in refused.headers.get("set-cookie", "")
    token = hidden(client.get("/signin").text, "csrf")
    done = client.post("/signin", data={"login": "rita", "password": PASSWORD, "csrf": token,
                                        "next": "//evil.example/x"})
    assert done.headers["location"] == "/"


def test_sign_in_is_throttled(site: Site) -> None:
    client = site.client()
    token = hidden(client.get("/signin?lang=en").text, "csrf")
    for _ in range(site.config.model.web.signin_failures_per_account):
        client.post("/signin", data={"login": "sam", "password": "wrong", "csrf": token, "lang": "en"})
    throttled = client.post("/signin", data={"login": "sam", "password": PASSWORD, "csrf": token, "lang": "en"})
    assert throttled.status_code == 429
    assert re.search(r"Too many failed attempts; try again in \d+ minutes", throttled.text)


def test_first_start_explains_how_to_create_an_administrator(tmp_path: Path) -> None:
    empty = Site(tmp_path)
    try:
        page = empty.client().get("/signin?lang=en")
        assert "gateway users add NAME --role admin --email" in page.text
    finally:
        empty.close()


def test_every_page_has_the_security_headers_and_letter_pages_are_not_stored(site: Site) -> None:
    client = site.sign_in("rita")
    for url in ("/signin", "/static/app.css", "/letters?queue=all", f"/letters/{site.letters['business']}",
                "/no/such/page"):
        response = client.get(url)
        assert response.headers["content-security-policy"] == security.CSP, url
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    assert client.get(f"/letters/{site.letters['business']}").headers["cache-control"] == "no-store"
    assert "<script>" not in "".join(re.findall(r"<script[^>]*>[^<]+</script>",
                                                client.get("/letters?queue=all").text))  # no inline script
    assert client.get("/static/../web_support.py").status_code == 404


def test_pages_render_in_both_languages(site: Site) -> None:
    n = site.letters
    pages = {"rita": ["/letters?queue=all", "/letters?queue=triage&sort=deadline", f"/letters/{n['business']}",
                      f"/letters/{n['fax']}", f"/letters/{n['fax']}/attachments/0/pages"],
             "sam": [f"/letters/{n['secret']}", "/letters?queue=departments"],
             "ada": ["/people", "/people/sam", "/people/new"],
             "audrey": ["/audit", "/audit?action=read"]}
    words = {"zh": ["退出登录"], "en": ["Sign out"]}
    for login, urls in pages.items():
        for lang in ("zh", "en"):
            site.people.set_language(login, lang)
            client = site.sign_in(login)
            for url in urls:
                page = client.get(url)
                assert page.status_code == 200, (login, lang, url, page.text[-2000:])
                assert all(w in page.text for w in words[lang]), (login, lang, url)
                assert f'<html lang="{i18n.HTML_LANG[lang]}">' in page.text


def test_the_chinese_catalogue_translates_every_string() -> None:
    from babel.messages.pofile import read_po

    translated: set[str] = set()
    for path in sorted((i18n.LOCALE_DIR / "zh_Hans" / "LC_MESSAGES").glob("*.po")):
        with open(path, "rb") as po:
            catalog = read_po(po)
        untranslated = [m.id for m in catalog if m.id and not m.string]
        assert not untranslated, (path.name, untranslated[:10])
        translated |= {m.id for m in catalog if m.id and isinstance(m.id, str)}
    for table in (*i18n.KINDS.values(), i18n.REFUSAL, i18n.PREVIEW_PROBLEM):
        for text in table.values():
            assert text in translated, text


def test_every_string_marked_in_the_web_register_is_in_the_template_and_translated() -> None:
    """The strings marked in the code and the templates, as `pybabel extract` finds them with
    gateway/web/babel.cfg: each has its Chinese, and messages.pot lists exactly them."""
    from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
    from babel.messages.frontend import parse_mapping_cfg
    from babel.messages.pofile import read_po

    web = i18n.LOCALE_DIR.parent
    with open(web / "babel.cfg") as config:
        method_map, options_map = parse_mapping_cfg(config)
    marked: dict[str, str] = {}
    for filename, line, message, _comments, _context in extract_from_dir(str(web), method_map, options_map,
                                                                          keywords=DEFAULT_KEYWORDS):
        marked.setdefault(message if isinstance(message, str) else message[0], f"{filename}:{line}")
    translated: set[str] = set()
    for path in sorted((i18n.LOCALE_DIR / "zh_Hans" / "LC_MESSAGES").glob("*.po")):
        with open(path, "rb") as po:
            translated |= {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(po) if m.id}
    missing = {text: where for text, where in marked.items() if text not in translated}
    assert not missing, f"no Chinese for {len(missing)} string(s), e.g. {list(missing.items())[:5]}"
    with open(i18n.LOCALE_DIR / "messages.pot", "rb") as pot:
        listed = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(pot) if m.id}
    assert listed == set(marked), ("messages.pot is not current: run the extraction in gateway/web/babel.cfg",
                                   sorted(set(marked) - listed)[:5], sorted(listed - set(marked))[:5])


def test_the_decision_trace_is_punctuated_in_the_pages_language_and_names_its_outcome_apart(site: Site) -> None:
    """In Chinese the trace writes ：；（） and 、, and calls the classification's outcome 分办结果, not
    办理结果, the result a letter is closed with on the same page; English keeps its own marks."""

    def trace(client: Any, name: str) -> str:
        page = client.get(f"/letters/{site.letters[name]}").text
        card = page.split('class="card trace-card"', 1)[1].split("</section>", 1)[0]
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", card))

    rita = site.sign_in("rita")  # [web] language = "zh"
    chinese = trace(rita, "business")
    assert re.search(r"规则 “by-address” （第 \d+ 行）：部门：Business；类别：外部：业务往来 ", chinese), chinese
    assert "分办结果：类别：外部：业务往来；部门：Business；" in chinese and "办理结果" not in chinese, chinese
    assert "待分办：没有规则匹配；可能的部门：" in trace(rita, "triage")
    assert not re.search(r"[:;()]", chinese.replace("by-address", "")), chinese
    assert "依据：" in chinese and "依据： " not in chinese, chinese  # no space after a Chinese colon
    site.people.set_language("rita", "en")
    english = trace(site.sign_in("rita"), "business")
    assert re.search(r"Rule “by-address” \(line \d+\): department: Business; category: external: business ", english)
    assert "Result: category: external: business; department: Business;" in english, english
    assert re.search(r"because \S", english), english


def test_the_letter_pages_and_reports_labels_end_with_the_pages_colon(site: Site) -> None:
    """A letter's summary and the reports' downloads are labelled with ： in Chinese, : in English."""
    rita = site.sign_in("rita")  # [web] language = "zh"
    letter = rita.get(f"/letters/{site.letters['business']}").text
    assert "<strong>摘要：</strong>Please confirm the order." in letter and "摘要:" not in letter
    assert '<div class="downloads">下载：' in rita.get("/reports").text
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    letter = rita.get(f"/letters/{site.letters['business']}").text
    assert "<strong>Summary: </strong>Please confirm the order." in letter
    assert '<div class="downloads">Download: ' in rita.get("/reports").text


def test_a_confidential_letter_shows_only_its_entry(site: Site) -> None:
    site.people.set_language("sam", "en")
    page = site.sign_in("sam").get(f"/letters/{site.letters['secret']}")
    assert page.status_code == 200
    assert "merger" not in page.text and "The terms are attached" not in page.text
    assert "Confidential: the content is visible to its owner" in page.text
    listing = site.sign_in("sam").get("/letters?queue=departments")
    assert "merger" not in listing.text and site.letters["secret"] in listing.text


def test_a_letter_one_may_not_see_is_not_found(site: Site) -> None:
    client = site.sign_in("gina")
    hidden_letter = client.get(f"/letters/{site.letters['business']}")
    missing = client.get("/letters/2099-999999")
    assert hidden_letter.status_code == missing.status_code == 404
    assert client.get(f"/letters/{site.letters['business']}/attachments/0").status_code == 404
    assert client.get(f"/letters/{site.letters['business']}/original").status_code == 404
    assert client.get("/audit").status_code == 403 and client.get("/people").status_code == 403


def test_html_in_a_letter_is_shown_as_text(site: Site) -> None:
    page = site.sign_in("rita").get(f"/letters/{site.letters['business']}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert(1)" not in page.text


def test_direction_overrides_cannot_disguise_a_sender_subject_or_file_name(site: Site) -> None:
    """U+202E turns round what follows it: "\u202emoc.knab@ecivres" reads as a bank's address (and the
    real address after it is turned round too), "invoice\u202efdp.exe" as a PDF. The page shows the
    text in its true order, and the defects say what was removed."""
    def word(text: str) -> bytes:
        return b"=?utf-8?b?" + base64.b64encode(text.encode()) + b"?="

    raw = (b"From: " + word("\u202emoc.knab@ecivres") + b" <mallory@attacker.example>\r\n"
           b"To: liaison@example.org\r\nSubject: " + word("Payment \u202egnp.exe") + b"\r\n"
           b"Date: Mon, 23 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: text/plain\r\n\r\nSee the invoice.\r\n"
           b"--B\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAA=\r\n--B--\r\n")
    number = site.ingest("disguised", raw)
    page = site.sign_in("rita").get(f"/letters/{number}").text
    for hidden_control in "\u202a\u202b\u202d\u202e\u2066\u2067\u2068":
        assert hidden_control not in page
    assert "moc.knab@ecivres" in page and "mallory@attacker.example" in page
    assert "Payment gnp.exe" in page and "invoicefdp.exe" in page
    assert page.count("已删除会改变文字显示顺序的方向控制字符 U+202E") == 3  # the defects, in the page's Chinese


def test_an_rfc_2231_value_whose_charset_holds_a_nul_costs_neither_the_letter_nor_its_page(site: Site) -> None:
    """boundary*=, name*= or charset*= declared in a charset with a NUL in its name made Python's
    decoder raise ValueError, where it expects an unknown charset's LookupError: a boundary given
    so cost the letter its sender, subject and text, and a name on its HTML part made its page
    an error. Such a value is read as one without a charset."""
    head = (b"From: Alice <alice@partner.example>\r\nTo: liaison@example.org\r\n"
            b"Date: Mon, 23 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n")
    boundary = site.ingest("boundary", head + b"Subject: boundary\r\n"
                           b"Content-Type: multipart/mixed; boundary*=ut%00f''B\r\n\r\n"
                           b"--B\r\nContent-Type: text/plain\r\n\r\nThe boundary held.\r\n--B--\r\n")
    shown = site.gateway.show_json(boundary)
    assert (shown["sender_address"], shown["subject"], shown["body_text"]) == (
        "alice@partner.example", "boundary", "The boundary held.")
    html = site.ingest("html", head + b"Subject: formatted\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
                       b"--B\r\nContent-Type: text/html; name*=ut%00f''letter.html\r\n\r\n"
                       b"<p>Formatted <b>text</b>.</p>\r\n--B--\r\n")
    page = site.sign_in("rita").get(f"/letters/{html}")
    assert page.status_code == 200 and "letter.html" in page.text


def test_a_step_without_the_csrf_token_is_refused(site: Site) -> None:
    client = site.sign_in("sam")
    url = f"/letters/{site.letters['business']}/act"
    for data, headers in (({"action": "ack"}, {}), ({"action": "ack", "csrf": "wrong"}, {}),
                          ({"action": "ack"}, {"X-CSRF-Token": "wrong"})):
        refused = client.post(url, data=data, headers=headers)
        assert refused.status_code == 403
    assert site.registry.letter(site.letters["business"]).status == "routed"  # type: ignore[union-attr]
    by_header = client.post(url, data={"action": "ack"}, headers={"X-CSRF-Token": client.csrf})
    assert by_header.status_code == 303
    assert site.registry.letter(site.letters["business"]).status == "acknowledged"  # type: ignore[union-attr]


def test_steps_are_taken_and_refusals_say_why(site: Site) -> None:
    site.people.set_language("sam", "en")
    client = site.sign_in("sam")
    number = site.letters["inquiry"]
    url = f"/letters/{number}/act"
    done = client.post(url, data={"action": "ack", "csrf": client.csrf})
    assert done.headers["location"].startswith(f"/letters/{number}?done=ack.")
    assert "Acknowledged." in client.get(done.headers["location"]).text
    again = client.post(url, data={"action": "ack", "csrf": client.csrf})
    assert again.status_code == 409 and "Not done:" in again.text and "cannot be acknowledged" in again.text
    empty_close = client.post(url, data={"action": "close", "csrf": client.csrf})
    assert empty_close.status_code == 400 and "the sender receives it" in empty_close.text
    closed = client.post(url, data={"action": "close", "text": "Delivery on Monday.",
                                    "csrf": client.csrf})
    assert closed.status_code == 303
    assert site.registry.letter(number).status == "closed"  # type: ignore[union-attr]
    gina = site.sign_in("gina")
    office = site.letters["office"]
    leo = site.sign_in("leo")
    refused = leo.post(f"/letters/{office}/act", data={"action": "ack", "csrf": leo.csrf})
    assert refused.status_code == 403
    assert gina.post(f"/letters/{office}/act",
                     data={"action": "note", "text": "Called back.", "csrf": gina.csrf}).status_code == 303


def test_a_page_left_open_does_not_move_a_letter_that_moved_meanwhile(site: Site) -> None:
    rita, bella = site.sign_in("rita"), site.sign_in("bella")  # [web] language = "zh"
    number = site.letters["triage"]
    desk = rita.get("/triage").text
    form = re.search(rf'name="number" value="{number}">\s*<input type="hidden" name="seen" value="([^"]*)"', desk)
    assert form is not None  # the form is for the letter as it was shown (a triage letter may have a default)
    shown = form.group(1)
    assert shown == (site.registry.letter(number).department or "")  # type: ignore[union-attr]
    # A colleague settles it and Business acknowledges it while Rita's desk stays open.
    site.access.act(Principal.operator("colleague"), number, "reassign", department="business", text="settled")
    site.access.act(site.people.principal("sam"), number, "ack")  # type: ignore[arg-type]
    stale = rita.post("/triage", data={"number": number, "department": "general-office", "seen": shown,
                                       "reason": "Settled on the triage page", "csrf": rita.csrf})
    assert stale.status_code == 409 and "在此期间已易手（现在部门 Business）" in stale.text
    letter = site.registry.letter(number)
    assert letter is not None and (letter.department, letter.status) == ("business", "acknowledged")
    # The letter page's forms carry the department they were shown for, too.
    page = bella.get(f"/letters/{number}").text
    assert hidden(page, "seen") == "business"
    site.access.act(site.people.principal("rita"), number, "reassign", department="general-office",  # type: ignore[arg-type]
                    text="belongs to the office")
    refused = bella.post(f"/letters/{number}/act", data={"action": "reassign", "department": "general-office",
                                                         "text": "ours? no", "seen": "business", "csrf": bella.csrf})
    assert refused.status_code == 409 and "未作任何处理" in refused.text
    assert [e.action for e in site.registry.letter(number).events].count("reassigned") == 2  # type: ignore[union-attr]


def test_an_assignment_from_a_page_left_open_does_not_overwrite_a_colleagues(site: Site) -> None:
    rita, bella = site.sign_in("rita"), site.sign_in("bella")  # [web] language = "zh"
    number = site.letters["business"]
    page = bella.get(f"/letters/{number}").text
    assert hidden(page, "owner_seen") == ""
    # Rita assigns it to Sam while Bella's page, showing it assigned to no one, stays open.
    assert rita.post(f"/letters/{number}/act", data={"action": "assign", "assignee": "sam", "seen": "business",
                                                     "owner_seen": "", "csrf": rita.csrf}).status_code == 303
    stale = bella.post(f"/letters/{number}/act", data={"action": "assign", "assignee": "bella", "seen": "business",
                                                       "owner_seen": "", "csrf": bella.csrf})
    assert stale.status_code == 409
    assert "在此期间已易手（现在分派给 sales.desk@example.org）：未作任何处理" in stale.text
    letter = site.registry.letter(number)
    assert letter is not None and letter.owner == "sales.desk@example.org"
    # The page shown with the refusal is the letter as it is now: its form takes the step.
    assert hidden(stale.text, "owner_seen") == "sales.desk@example.org"
    done = bella.post(f"/letters/{number}/act", data={"action": "assign", "assignee": "bella", "seen": "business",
                                                      "owner_seen": "Sales.Desk@example.org", "csrf": bella.csrf})
    assert done.status_code == 303 and site.registry.letter(number).owner == "business.head@example.org"  # type: ignore[union-attr]


def test_a_bulk_step_from_a_queue_left_open_does_not_move_a_letter_that_moved_meanwhile(tmp_path: Path) -> None:
    legal = ('\n[[departments]]\nid = "legal"\nname = "Legal"\nowners = ["legal@example.org"]\n'
             'head = "legal.head@example.org"\n')
    site = Site(tmp_path, extra=legal)
    try:
        site.add_people()
        site.add_letters()
        rita = site.sign_in("rita")  # [web] language = "zh"
        business, office = site.letters["business"], site.letters["office"]
        queue = rita.get("/letters?queue=all").text
        assert hidden(queue, f"seen-{business}") == "business"
        # A colleague sends the Business letter to Legal while Rita's queue, showing it with
        # Business, stays open; she sends it and the office's letter to the General Office.
        site.access.act(Principal.operator("colleague"), business, "reassign", department="legal",
                        text="a contract dispute")
        done = rita.post("/letters/bulk", data={
            "action": "reassign", "number": [business, office], "department": "business", "text": "their orders",
            f"seen-{business}": "business", f"seen-{office}": "general-office", "back": "/letters?queue=all",
            "csrf": rita.csrf})
        assert done.status_code == 200 and "在此期间已易手（现在部门 Legal）" in done.text
        assert site.registry.letter(office).department == "business"  # type: ignore[union-attr]
        letter = site.registry.letter(business)
        assert letter is not None and letter.department == "legal"
    finally:
        site.close()


def test_a_letter_given_to_another_owner_is_theirs_to_acknowledge_with_its_deadline_kept(site: Site) -> None:
    """Acknowledged by one, assigned to another person (or reassigned to another department, on
    the web or with the CLI), a letter is routed again: the new owner acknowledges it. Its
    deadline stays. Taking it oneself, or giving it to whoever acknowledged it, keeps it
    acknowledged; a letter in progress stays in progress."""
    sam, bella, rita, gina = (site.sign_in(login) for login in ("sam", "bella", "rita", "gina"))

    def letter(name: str) -> Any:
        return site.registry.letter(site.letters[name])

    def act(client: Any, name: str, **data: str) -> None:
        done = client.post(f"/letters/{site.letters[name]}/act", data={**data, "csrf": client.csrf})
        assert done.status_code == 303, (data, done.text[-2000:])

    deadline = letter("business").deadline
    assert deadline is not None
    act(sam, "business", action="ack")
    act(rita, "business", action="assign", assignee="bella")
    assert letter("business").status == "routed" and letter("business").deadline == deadline
    assigned = [e for e in letter("business").events if e.action == "assigned"][-1]
    assert assigned.details["status"] == "routed"
    assert 'name="action" value="ack"' in bella.get(f"/letters/{site.letters['business']}").text
    act(bella, "business", action="ack")
    assert letter("business").status == "acknowledged"
    # Whoever acknowledged it, given it: acknowledged still; taking it oneself is acknowledging it.
    act(sam, "inquiry", action="ack")
    act(bella, "inquiry", action="assign", assignee="sam")
    assert letter("inquiry").status == "acknowledged"
    act(gina, "office", action="ack")
    act(gina, "office", action="assign", assignee="gina")
    assert letter("office").status == "acknowledged"
    # In progress: the work goes on with its new owner.
    act(bella, "business", action="progress")
    act(rita, "business", action="assign", assignee="sam")
    assert letter("business").status == "in-progress"
    # Reassigned to another department: routed there, on the web and with the CLI alike.
    act(bella, "inquiry", action="reassign", department="general-office", text="theirs", seen="business")
    assert letter("inquiry").status == "routed"
    office = site.letters["office"]
    office_deadline = letter("office").deadline
    site.gateway.run("letters", "reassign", office, "business", "--reason", "a sales matter")
    assert letter("office").status == "routed" and letter("office").deadline == office_deadline
    shown = site.gateway.run("letters", "show", office).stdout
    assert "routed" in shown


def test_an_assignment_racing_a_reassignment_is_refused_under_the_letters_lock(site: Site) -> None:
    number = site.letters["business"]
    bella, sam = site.people.principal("bella"), site.people.principal("sam")
    assert bella is not None and sam is not None
    assign = site.registry.assign

    def reassigned_meanwhile(*args: object, **kwargs: object) -> object:
        # Rita's reassignment lands between Bella's rights being checked and her step's lock.
        site.registry.reassign(number, "general-office", reason="wrong department", actor="rita", notify=[])
        return assign(*args, **kwargs)  # type: ignore[arg-type]

    site.registry.assign = reassigned_meanwhile  # type: ignore[method-assign]
    try:
        with pytest.raises(Refused) as refused:
            site.access.act(bella, number, "assign", assignee="sam")
    finally:
        site.registry.assign = assign  # type: ignore[method-assign]
    assert refused.value.key == "moved" and refused.value.params["department"] == "General Office"
    letter = site.registry.letter(number)
    assert letter is not None and letter.department == "general-office" and letter.owner is None


def test_a_step_a_colleagues_step_overtook_under_the_lock_is_refused_in_the_pages_language(site: Site) -> None:
    sam = site.sign_in("sam")  # [web] language = "zh"
    number, inquiry = site.letters["business"], site.letters["inquiry"]
    transition, assign = site.registry.transition, site.registry.assign

    def closed_meanwhile(*args: object, **kwargs: object) -> object:
        # Bella closes it between Sam's rights being checked and his step's lock.
        site.registry.transition = transition  # type: ignore[method-assign]
        transition(number, "close", actor="bella", text="done")
        return transition(*args, **kwargs)  # type: ignore[arg-type]

    def inquiry_closed_meanwhile(*args: object, **kwargs: object) -> object:
        site.registry.assign = assign  # type: ignore[method-assign]
        transition(inquiry, "close", actor="bella", text="answered by phone")
        return assign(*args, **kwargs)  # type: ignore[arg-type]

    site.registry.transition = closed_meanwhile  # type: ignore[method-assign]
    site.registry.assign = inquiry_closed_meanwhile  # type: ignore[method-assign]
    try:
        closed = sam.post(f"/letters/{number}/act", data={"action": "close", "text": "mine", "seen": "business",
                                                          "csrf": sam.csrf})
        assigned = sam.post(f"/letters/{inquiry}/act", data={"action": "assign", "assignee": "sam",
                                                             "seen": "business", "csrf": sam.csrf})
    finally:
        site.registry.transition, site.registry.assign = transition, assign  # type: ignore[method-assign]
    assert closed.status_code == 409 and "当前状态为“已办结”，现在不能“办结”" in closed.text
    assert assigned.status_code == 409 and "当前状态为“已办结”，现在不能“指派”" in assigned.text
    assert "cannot be" not in closed.text + assigned.text
    events = [e.action for e in site.registry.letter(number).events]  # type: ignore[union-attr]
    assert events.count("closed") == 1


def test_any_letter_closes_only_with_its_result_on_the_web_as_by_the_command(site: Site) -> None:
    """Not only an inquiry: a letter closes with what came of it, as `gateway letters close
    --result` requires. Without one the web form is bad input (400) said in the page's language,
    the letter page shown again with its close form, nothing done; the service refuses it alike."""
    sam = site.sign_in("sam")  # [web] language = "zh"
    number = site.letters["business"]
    form = sam.get(f"/letters/{number}").text
    assert re.search(r'<textarea name="text" rows="3" maxlength="2000" required>', form)
    before = len(site.registry.letter(number).events)  # type: ignore[union-attr]
    refused = sam.post(f"/letters/{number}/act", data={"action": "close", "text": "  ", "seen": "business",
                                                       "csrf": sam.csrf})
    assert refused.status_code == 400
    assert "未能办理：办结信件须填写办理结果" in refused.text and 'value="close"' in refused.text
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "routed" and len(letter.events) == before
    with pytest.raises(Refused) as without:
        site.access.act(Principal.operator("test"), number, "close")
    assert without.value.key == "need-close-result"
    closed = sam.post(f"/letters/{number}/act", data={"action": "close", "text": "已电话确认订单",
                                                      "seen": "business", "csrf": sam.csrf})
    assert closed.status_code == 303
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "closed"
    assert [e.details.get("text") for e in letter.events if e.action == "closed"] == ["已电话确认订单"]


def test_a_step_refused_for_what_was_sent_is_400_and_for_the_letters_state_409(site: Site) -> None:
    """Bad input — no such step, a field missing, too long or naming no one — is the request's
    fault (400); a letter whose state or hands are not what the step needs is a conflict (409);
    a step the person may not take is 403. Nothing is done in any of them."""
    site.people.set_language("sam", "en")
    site.people.set_language("rita", "en")
    sam, rita, leo = site.sign_in("sam"), site.sign_in("rita"), site.sign_in("leo")
    business, inquiry = site.letters["business"], site.letters["inquiry"]
    before = {n: len(site.registry.letter(n).events) for n in (business, inquiry)}  # type: ignore[union-attr]
    bad_input = [
        (rita, business, {"action": "bogus"}, "no step &#39;bogus&#39;"),
        (rita, business, {}, "no step &#39;&#39;"),
        (rita, business, {"action": "reassign", "text": "wrong desk"}, "choose the department"),
        (rita, business, {"action": "reassign", "department": "nope", "text": "wrong desk"}, "no department"),
        (rita, business, {"action": "reassign", "department": "general-office"}, "needs a reason"),
        (rita, business, {"action": "assign"}, "choose the person"),
        (rita, business, {"action": "assign", "assignee": "nobody"}, "no one named &#39;nobody&#39;"),
        (rita, business, {"action": "assign", "assignee": "gina"}, "is not in department"),
        (rita, business, {"action": "tag", "text": "no spaces allowed"}, "is not a tag"),
        (sam, business, {"action": "note"}, "a note needs text"),
        (sam, business, {"action": "note", "text": "x" * 2001}, "at most 2000 characters"),
        (sam, inquiry, {"action": "close"}, "the sender receives it"),
    ]
    for client, number, data, says in bad_input:
        refused = client.post(f"/letters/{number}/act", data={**data, "csrf": client.csrf})
        assert refused.status_code == 400 and says in refused.text, (data, refused.status_code)
    after = {n: len(site.registry.letter(n).events) for n in (business, inquiry)}  # type: ignore[union-attr]
    assert after == before
    # The letter's state: a step it does not allow now, or hands it is no longer in.
    assert sam.post(f"/letters/{business}/act", data={"action": "ack", "csrf": sam.csrf}).status_code == 303
    conflicts = [
        (sam, {"action": "ack"}, "cannot be acknowledged"),
        (rita, {"action": "reassign", "department": "business", "text": "again"}, "is already with business"),
        (rita, {"action": "note", "text": "seen", "seen": "general-office"}, "changed hands meanwhile"),
    ]
    for client, data, says in conflicts:
        refused = client.post(f"/letters/{business}/act", data={**data, "csrf": client.csrf})
        assert refused.status_code == 409 and says in refused.text, (data, refused.status_code)
    assert leo.post(f"/letters/{business}/act", data={"action": "ack", "csrf": leo.csrf}).status_code == 403


def test_a_letter_page_says_a_step_was_taken_only_after_its_own_persons_step(site: Site) -> None:
    """The banner after a step ("Closed.", "Legal hold set.", a reply sent…) comes from the step's
    own redirect, marked for that person's session and that letter: a link someone crafted, or one
    another person was given, or one for another letter, shows no banner for a step never taken."""
    for login in ("sam", "bella"):
        site.people.set_language(login, "en")
    sam, bella = site.sign_in("sam"), site.sign_in("bella")
    business, inquiry = site.letters["business"], site.letters["inquiry"]
    banners = ("Closed.", "Legal hold set.", "Acknowledged.", "Note added.", "Closed as withdrawn.",
               "Circulation started", "Marked incomplete", "Approved and sent to the sender.", "Draft saved.")

    def banner(client: Any, link: str) -> list[str]:
        page = client.get(link)
        assert page.status_code == 200, link
        return [text for text in banners if text in page.text]

    for forged in ("?done=close", "?done=hold-on", "?done=withdraw", "?done=circulate", "?done=incomplete",
                   "?reply=sent", "?reply=saved", "?done=close.0123456789abcdef0123456789abcdef", "?done=close."):
        assert banner(sam, f"/letters/{business}{forged}") == [], forged
    noted = sam.post(f"/letters/{business}/act", data={"action": "note", "text": "called", "csrf": sam.csrf})
    own = noted.headers["location"]
    assert banner(sam, own) == ["Note added."]  # the step's own redirect, and the same page again
    assert banner(sam, own) == ["Note added."]
    assert banner(bella, own) == []  # sent to someone else, the link says nothing
    assert banner(sam, own.replace(business, inquiry)) == []  # nor for another letter
    step = own.partition("?done=")[2].partition(".")[0]
    assert banner(sam, own.replace(f"?done={step}.", "?done=close.")) == []  # nor for another step
    signed_out = site.sign_in("sam")  # a new session: an old link says nothing there either
    assert banner(signed_out, own) == []
    # The other pages that say a step was done likewise.
    site.people.set_language("ada", "en")
    site.people.set_language("leo", "en")
    ada, leo = site.sign_in("ada"), site.sign_in("leo")
    for client, link, words in ((ada, "/people/sam?done=disabled", "Disabled: signed out everywhere."),
                                (ada, "/operations?done=mail", "Queued again; the gateway sends it now."),
                                (ada, "/me?done=password", "Password changed."),
                                (leo, "/approvals?done=sent", "Approved and sent to the sender."),
                                (leo, "/borrowing?done=granted", "Granted.")):
        page = client.get(link)
        assert page.status_code == 200 and words not in page.text, link


def test_a_step_that_would_change_nothing_is_refused_in_the_pages_language(site: Site) -> None:
    bella = site.sign_in("bella")
    url = f"/letters/{site.letters['business']}/act"
    assert bella.post(url, data={"action": "assign", "assignee": "sam", "csrf": bella.csrf}).status_code == 303
    again = bella.post(url, data={"action": "assign", "assignee": "sam", "csrf": bella.csrf})
    assert again.status_code == 409 and "已分派给 sales.desk@example.org" in again.text
    assert "already assigned" not in again.text
    rita = site.sign_in("rita")
    hold = {"action": "hold", "on": "on", "text": "a claim is expected", "csrf": rita.csrf}
    assert rita.post(url, data=hold).status_code == 303
    twice = rita.post(url, data=hold)  # the same form sent again
    assert twice.status_code == 409 and "已处于诉讼保全" in twice.text


def test_a_hold_step_says_whether_to_set_or_lift_it_and_a_stale_one_flips_nothing(site: Site) -> None:
    """A hold step without `on` (a form made by hand, or an old one) is refused with a 400 naming the
    field, and the hold stays as it was; a page that shows no hold sent after a colleague set one
    does not lift it."""
    number = site.letters["business"]
    rita, leo = site.sign_in("rita"), site.sign_in("leo")
    url = f"/letters/{number}/act"

    def held() -> bool:
        return site.registry.letter(number).legal_hold  # type: ignore[union-attr]

    for on in (None, "", "yes"):
        data = {"action": "hold", "text": "a claim is expected", "csrf": rita.csrf, **({"on": on} if on is not None
                                                                                          else {})}
        refused = rita.post(url, data=data)
        assert refused.status_code == 400 and "字段“on”" in refused.text, on
        assert not held()
    # Leo's page still shows no hold; Rita sets it meanwhile; Leo's form, sent now, does not lift it.
    set_on = {"action": "hold", "on": "on", "text": "a claim is expected"}
    assert rita.post(url, data={**set_on, "csrf": rita.csrf}).status_code == 303 and held()
    stale = leo.post(url, data={**set_on, "csrf": leo.csrf})
    assert stale.status_code == 409 and "已处于诉讼保全" in stale.text and held()
    refused = leo.post(url, data={"action": "hold", "text": "no hold after all", "csrf": leo.csrf})
    assert refused.status_code == 400 and held()
    lifted = leo.post(url, data={"action": "hold", "on": "off", "text": "settled", "csrf": leo.csrf})
    assert lifted.status_code == 303 and not held()


def test_what_was_written_in_a_refused_step_is_kept_in_its_form(site: Site) -> None:
    bella, rita = site.sign_in("bella"), site.sign_in("rita")
    number = site.letters["business"]
    url = f"/letters/{number}/act"

    def field(html: str, tag: str, action: str) -> str:
        """The text of the form's `text` field, in the form for `action`."""
        form = re.search(rf'value="{action}">(?:(?!</form>).)*?<{tag} name="text"[^>]*?'
                         + (r'value="([^"]*)"' if tag == "input" else r'>([^<]*)</textarea>'), html, re.S)
        assert form is not None, action
        return form.group(1)

    long_note = "根据来电记录，" * 300  # 2,100 characters: more than a note takes
    refused = bella.post(url, data={"action": "note", "text": long_note, "csrf": bella.csrf})
    assert "最多 2000 个字符" in refused.text
    assert field(refused.text, "textarea", "note") == long_note
    assert re.search(r'<textarea name="text" rows="2" required maxlength="2000">', refused.text)
    assert field(bella.get(f"/letters/{number}").text, "textarea", "note") == ""  # a fresh page: empty
    no_department = bella.post(url, data={"action": "reassign", "department": "", "text": "belongs to the office",
                                          "seen": "business", "csrf": bella.csrf})
    assert "请选择转办的部门" in no_department.text
    assert field(no_department.text, "input", "reassign") == "belongs to the office"
    # A hold put on by a colleague meanwhile: the reason given for putting it on is not offered for
    # lifting it.
    assert rita.post(url, data={"action": "hold", "on": "on", "text": "a claim", "csrf": rita.csrf}).status_code == 303
    twice = bella.post(url, data={"action": "hold", "on": "on", "text": "a claim is expected", "csrf": bella.csrf})
    assert "已处于诉讼保全" in twice.text and 'name="on" value="off"' in twice.text
    assert "a claim is expected" not in twice.text


def test_a_note_as_long_as_its_form_takes_is_kept_with_its_line_breaks(site: Site) -> None:
    bella = site.sign_in("bella")
    number = site.letters["business"]
    # 1,994 characters as the form counts them (maxlength 2000); a browser sends each line break as CRLF.
    note = "\r\n".join(["请核对订单数量与交货地点并书面答复客户。"] * 95)
    assert len(note.replace("\r\n", "\n")) <= 2000 < len(note)
    done = bella.post(f"/letters/{number}/act", data={"action": "note", "text": note, "csrf": bella.csrf})
    assert done.status_code == 303, done.text[-2000:]
    notes = [e.details.get("text") for e in site.registry.letter(number).events  # type: ignore[union-attr]
             if e.action == "note"]
    assert notes == [note.replace("\r\n", "\n")]


def test_people_are_added_and_disabled_by_an_administrator(site: Site) -> None:
    client = site.sign_in("ada")
    added = client.post("/people", data={"login": "nora", "name": "Nora", "emails": "nora@example.org",
                                         "roles": ["member"], "departments": ["business"], "language": "zh",
                                         "password": "a long enough password", "csrf": client.csrf})
    assert added.status_code == 303, added.text
    nora = site.sign_in("nora", "a long enough password")
    assert "退出登录" in nora.get("/letters?queue=departments").text
    bad = client.post("/people", data={"login": "Bad Name", "name": "x", "csrf": client.csrf})
    assert bad.status_code == 400 and "sign-in name" in bad.text
    # Her language back to the register's default ("" in the form), then her entry as it was.
    entry = {"name": "Nora", "emails": "nora@example.org", "roles": ["member"], "departments": ["business"],
             "csrf": client.csrf}
    assert client.post("/people/nora", data={**entry, "language": ""}).status_code == 303
    assert site.people.get("nora").language is None  # type: ignore[union-attr]
    assert client.post("/people/nora", data={**entry, "language": "en"}).status_code == 303
    assert site.people.get("nora").language == "en"  # type: ignore[union-attr]
    assert client.post("/people/nora/disabled", data={"disabled": "1", "csrf": client.csrf}).status_code == 303
    assert nora.get("/letters?queue=departments").status_code == 303  # signed out at once


def test_the_audit_log_and_its_export(site: Site) -> None:
    site.sign_in("rita").get(f"/letters/{site.letters['business']}")
    client = site.sign_in("audrey")
    page = client.get(f"/audit?letter={site.letters['business']}")
    assert page.status_code == 200 and "rita" in page.text
    export = client.get("/audit.csv?actor=rita")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert "attachment;" in export.headers["content-disposition"] and ",rita,read," in export.text


def test_ids_beyond_the_registry_and_files_for_passwords_are_refused_not_errors(site: Site) -> None:
    """What a hand-made request may send: an id past 64 bits is no row (404), a file where a password
    or a number is expected is no such value; never a 500. A password keeps the spaces typed."""
    huge = "99999999999999999999999"
    ada, rita = site.sign_in("ada"), site.sign_in("rita")
    number = site.letters["business"]
    for client, path in ((rita, f"/borrowing/{huge}/decide"), (rita, f"/borrowing/{huge}/return"),
                         (rita, f"/views/{huge}/delete")):
        assert client.post(path, data={"decision": "grant", "csrf": client.csrf}).status_code == 404, path
    assert rita.get(f"/letters/{number}/reply/{huge}/attachments/1").status_code == 404
    assert rita.get(f"/letters/{number}/attachments/{huge}").status_code == 404
    assert ada.post("/operations/outbox/retry", data={"mail": huge, "csrf": ada.csrf}).status_code == 404
    as_file = ada.post("/people/sam/password", data={"csrf": ada.csrf}, files={"password": ("p.txt", b"x" * 20)})
    assert as_file.status_code == 400
    stranger = site.client()
    form = stranger.get("/signin")
    signin = stranger.post("/signin", data={"login": "sam", "csrf": hidden(form.text, "csrf")},
                           files={"password": ("p.txt", PASSWORD.encode())})
    assert signin.status_code == 401
    sam_reply = site.sign_in("sam")
    saved = sam_reply.post(f"/letters/{number}/reply",
                           data={"text": "Thank you.", "remove": "²", "csrf": sam_reply.csrf})
    assert saved.status_code in (200, 303), saved.text[:300]
    # Spaces at a password's ends are part of it, when added as when changed.
    assert ada.post("/people", data={"login": "pat", "name": "Pat", "password": " padded secret ",
                                     "csrf": ada.csrf}).status_code == 303
    site.sign_in("pat", " padded secret ")


def test_a_refused_reassignment_or_unknown_step_is_worded_in_the_pages_language(site: Site) -> None:
    number = site.letters["business"]
    rita = site.sign_in("rita")  # Chinese
    for data, says, status in (({"action": "reassign", "department": "general-office", "text": "  "}, "请填写原因",
                                400),
                               ({"action": "reassign", "department": "nope", "text": "wrong desk"}, "没有部门 nope",
                                400),
                               ({"action": "reassign", "department": "business", "text": "again"},
                                f"{number} 已在部门 Business", 409),  # by its name, as the page names it
                               ({"action": "assign", "assignee": "gina"}, "Gina 不属于 Business 部门", 400),
                               ({"action": "bogus"}, "没有“bogus”这一步骤", 400)):
        refused = rita.post(f"/letters/{number}/act", data={**data, "csrf": rita.csrf})
        assert refused.status_code == status and says in refused.text, (data, refused.text[-3000:])
    long_note = rita.post(f"/letters/{number}/act", data={"action": "note", "text": "x" * 900_000, "csrf": rita.csrf})
    assert long_note.status_code == 400 and "最多 2000 个字符" in long_note.text
    assert not [e for e in site.registry.letter(number).events if e.action == "note"]  # type: ignore[union-attr]
    site.people.set_language("rita", "en")
    refused = rita.post(f"/letters/{number}/act", data={"action": "reassign", "department": "nope", "text": "x",
                                                         "csrf": rita.csrf})
    assert "no department &#39;nope&#39; (known: business, general-office)" in refused.text


def test_a_letter_whose_content_a_role_does_not_see_is_called_confidential_only_if_it_is(site: Site) -> None:
    site.people.set_language("audrey", "en")
    audrey = site.sign_in("audrey")
    ordinary = audrey.get(f"/letters/{site.letters['business']}").text
    assert "Your role sees this letter's register entry, not its content" in ordinary
    assert "Confidential: the content" not in ordinary and "Please confirm the order." not in ordinary
    secret = audrey.get(f"/letters/{site.letters['secret']}").text
    assert "Confidential: the content is visible to its owner" in secret
    queue = audrey.get("/letters?queue=all").text
    assert queue.count('<span class="badge confidential">') == 1 and "content not shown" in queue


def test_a_refused_step_showing_the_letter_again_is_an_audited_read(site: Site) -> None:
    """A step refused (a stale tab, an unknown action) shows the letter page again, content and all:
    that is a read like any other, in the audit log."""
    number = site.letters["business"]
    letter_id = site.registry.letter(number).id  # type: ignore[union-attr]
    rita = site.sign_in("rita")
    refused = rita.post(f"/letters/{number}/act", data={"action": "bogus", "csrf": rita.csrf})
    assert refused.status_code == 400 and "Please confirm the order." in refused.text
    rows = site.registry.audit_rows(actor="rita", letter_id=letter_id)
    assert [row.action for row, _ in rows] == ["read"]


def test_the_audit_log_names_no_file_of_a_confidential_letter(site: Site) -> None:
    """An attachment's name is content: an auditor, who may not read a confidential letter, does not
    learn it from the log of who downloaded it (an ordinary letter's file keeps its name there)."""
    from email.message import EmailMessage

    def with_file(subject: str, name: str) -> bytes:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@partner.example", "sales@example.org", subject
        message.set_content("See the file.\n")
        message.add_attachment(b"%PDF-1.4 offer", maintype="application", subtype="pdf", filename=name)
        return message.as_bytes()

    secret = site.ingest("offer", with_file("Confidential: the offer", "Acme-takeover-offer-EUR-40M.pdf"))
    plain = site.ingest("price", with_file("Price list", "prices-2027.pdf"))
    bella = site.sign_in("bella")
    for number in (secret, plain):
        [position] = [a.position for a in site.registry.letter(number).attachments]  # type: ignore[union-attr]
        assert bella.get(f"/letters/{number}/attachments/{position}").status_code == 200
        assert bella.get(f"/letters/{number}/original").status_code == 200
    log = site.sign_in("audrey").get("/audit?actor=bella").text
    assert "Acme-takeover-offer" not in log and f"{secret} original" in log
    assert "prices-2027.pdf" in log and f"{plain}.eml" in log


def test_language_is_switched_per_person(site: Site) -> None:
    client = site.sign_in("rita")
    client.post("/me/language", data={"language": "en", "next": "/letters?queue=all", "csrf": client.csrf})
    assert "All letters" in client.get("/letters?queue=all").text
    client.post("/me/language", data={"language": "zh", "next": "/", "csrf": client.csrf})
    assert "全部信件" in client.get("/letters?queue=all").text
    assert site.people.get("rita").language == "zh"  # type: ignore[union-attr]


def test_attachments_are_downloads_with_their_sniffed_type(site: Site) -> None:
    client = site.sign_in("rita")
    fax = site.letters["fax"]
    download = client.get(f"/letters/{fax}/attachments/0")
    assert download.status_code == 200 and download.headers["content-type"] == "image/tiff"
    assert download.headers["content-disposition"].startswith("attachment; filename=")
    assert "filename*=UTF-8''fax_%2B8620123456_20261122-090000.tif" in download.headers["content-disposition"]
    second = client.get(f"/letters/{fax}/attachments/0/pages/2.png")
    assert second.status_code == 200 and second.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(second.content)).format == "PNG"
    assert client.get(f"/letters/{fax}/attachments/0/pages/3.png").status_code == 404
    original = client.get(f"/letters/{site.letters['business']}/original")
    assert original.headers["content-disposition"].startswith("attachment;")
    assert b"Order 4711" in original.content


def test_previews_are_redrawn_and_bombs_refused() -> None:
    picture = Image.new("RGB", (3000, 1000), "white")
    out = io.BytesIO()
    picture.save(out, "JPEG")
    png = preview.render_page(out.getvalue(), "image/jpeg", 1)
    assert Image.open(io.BytesIO(png)).size == (1600, 533)
    pdf = io.BytesIO()
    Image.new("RGB", (600, 800), "white").save(pdf, "PDF", save_all=True,
                                                append_images=[Image.new("RGB", (600, 800), "black")])
    assert preview.page_count(pdf.getvalue(), "application/pdf") == 2
    page = Image.open(io.BytesIO(preview.render_page(pdf.getvalue(), "application/pdf", 2)))
    assert page.getpixel((10, 10)) in (0, (0, 0, 0))
    with pytest.raises(preview.PreviewError, match="no such page"):
        preview.render_page(pdf.getvalue(), "application/pdf", 3)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    with pytest.raises(preview.PreviewError, match="too large"):
        preview.render_page(bomb.getvalue(), "image/png", 1)
    with pytest.raises(preview.PreviewError, match="no preview"):
        preview.render_page(b"<html>", "text/html", 1)
    with pytest.raises(preview.PreviewError, match="at most 50 MB"):
        preview.page_count(b"\0" * (preview.MAX_BYTES + 1), "image/png")


def test_a_page_that_cannot_be_shown_says_why_in_the_pages_language(site: Site) -> None:
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"] = "alice@partner.example", "sales@example.org"
    message["Subject"], message["Date"] = "Damaged scan", "Mon, 23 Nov 2026 10:00:00 +0800"
    message.set_content("The scan is attached.\n")
    message.add_attachment(b"%PDF-1.4\n1 0 obj <<\n" + b"\x00" * 64, maintype="application", subtype="pdf",
                           filename="scan.pdf")
    number = site.ingest("damaged-pdf", message.as_bytes())
    rita = site.sign_in("rita")  # Chinese
    pages = rita.get(f"/letters/{number}/attachments/0/pages")
    assert pages.status_code == 200 and "PDF 无法读取" in pages.text, pages.text[-2000:]
    assert rita.get(f"/letters/{number}/attachments/0/pages/1.png").status_code == 422
    rita.post("/me/language", data={"language": "en", "next": "/", "csrf": rita.csrf})
    assert "the PDF cannot be read" in rita.get(f"/letters/{number}/attachments/0/pages").text
    rita.post("/me/language", data={"language": "zh", "next": "/", "csrf": rita.csrf})


def test_client_address_is_believed_only_through_trusted_proxies(tmp_path: Path) -> None:
    proxied = Site(tmp_path, web='trusted_proxies = ["127.0.0.1"]')
    try:
        proxied.add_people()
        client = proxied.client()
        token = hidden(client.get("/signin").text, "csrf")
        client.post("/signin", data={"login": "rita", "password": "wrong", "csrf": token},
                    headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
        [row] = [r for r in proxied.access.audit(proxied.people.principal("audrey"),  # type: ignore[arg-type]
                                                 action="sign-in-failed")]
        assert row.address == "203.0.113.9"
    finally:
        proxied.close()


def test_a_borrowed_confidential_letters_reply_attachments_are_not_files(site: Site) -> None:
    """A borrower reads a confidential letter as page previews only: its reply's attachments are
    named on the page but not downloads, as its own attachments and original are not."""
    from datetime import datetime, timezone

    from gateway.registry.replies import NewReplyAttachment
    from gateway.services.borrowing import Borrowings
    from gateway.services.replies import Replies

    # A second head of Business, to approve what bella writes.
    site.add_people((Person("hank", roles=("head",), departments=("business",), emails=("hank@example.org",)),))
    number = site.letters["secret"]  # confidential, of Business
    replies = Replies(site.config, site.registry)
    bella, hank = site.people.principal("bella"), site.people.principal("hank")
    assert bella is not None and hank is not None
    replies.draft(bella, number, text="Our answer on the merger.",
                  attach=[NewReplyAttachment("terms-signed.pdf", "application/pdf", b"%PDF-1.4 secret terms")])
    replies.submit(bella, number)
    assert replies.approve(hank, number) == "sent"
    letter = closed_and_archived(site, number)
    [reply] = replies.records.replies(letter.id)
    [attachment] = replies.records.attachments(reply.id)
    url = f"/letters/{number}/reply/{reply.id}/attachments/{attachment.id}"
    assert site.sign_in("bella").get(url).status_code == 404  # archived: read only when borrowed

    books = Borrowings(site.config, site.registry, site.access)
    now = datetime.now(timezone.utc)
    sam = site.people.principal("sam")
    leo = site.people.principal("leo")
    assert sam is not None and leo is not None
    books.decide(leo, books.request(sam, number, reason="check the terms", days=3, now=now), grant=True, now=now)
    browser = site.sign_in("sam")
    page = browser.get(f"/letters/{number}")
    assert page.status_code == 200 and "terms-signed.pdf" in page.text and url not in page.text
    assert browser.get(url).status_code == 404
    assert browser.get(f"/letters/{number}/original").status_code == 404


def test_a_borrowing_reason_or_comment_longer_than_its_form_takes_is_refused_not_cut_short(site: Site) -> None:
    from gateway.services.borrowing import Borrowings

    number = site.letters["business"]
    closed_and_archived(site, number)
    sam, bella = site.sign_in("sam"), site.sign_in("bella")  # in Chinese, the default
    books = Borrowings(site.config, site.registry, site.access)
    long_reason = "核对订单数量。" * 300  # 2,100 characters: more than the form takes
    refused = sam.post(f"/letters/{number}/borrow", data={"reason": long_reason, "days": "3", "csrf": sam.csrf})
    assert refused.status_code == 400 and "借阅事由最多 2000 个字符" in refused.text
    assert f"{long_reason}</textarea>" in refused.text  # kept in the form to shorten
    assert books.records.borrowings() == []
    assert sam.post(f"/letters/{number}/borrow", data={"reason": long_reason[:2000], "days": "3",
                                                      "csrf": sam.csrf}).status_code == 303
    [(asked, _)] = books.records.borrowings()
    assert asked.reason == long_reason[:2000]
    decided = bella.post(f"/borrowing/{asked.id}/decide", data={"decision": "grant", "comment": "可以。" * 700,
                                                               "csrf": bella.csrf})
    assert decided.status_code == 400 and "审批意见最多 2000 个字符" in decided.text
    [(still, _)] = books.records.borrowings()
    assert still.status == "requested"
    assert bella.post(f"/borrowing/{asked.id}/decide", data={"decision": "grant", "comment": "可以。",
                                                            "csrf": bella.csrf}).status_code == 303


def test_a_borrowing_decided_or_returned_twice_is_refused_saying_how_it_stands(site: Site) -> None:
    from gateway.services.borrowing import Borrowings

    number = site.letters["business"]
    closed_and_archived(site, number)
    sam, bella, bella_elsewhere = site.sign_in("sam"), site.sign_in("bella"), site.sign_in("bella")
    assert sam.post(f"/letters/{number}/borrow", data={"reason": "核对订单", "days": "3",
                                                      "csrf": sam.csrf}).status_code == 303
    [(asked, _)] = Borrowings(site.config, site.registry, site.access).records.borrowings()
    url = f"/borrowing/{asked.id}"
    assert bella.post(f"{url}/decide", data={"decision": "grant", "csrf": bella.csrf}).status_code == 303
    # The same request refused from another browser: it was granted, and stays so.
    again = bella_elsewhere.post(f"{url}/decide", data={"decision": "refuse", "comment": "不必",
                                                        "csrf": bella_elsewhere.csrf})
    assert again.status_code == 409 and f"{number} 的借阅申请已经处理过了：借阅中" in again.text
    assert sam.post(f"{url}/return", data={"csrf": sam.csrf}).status_code == 303
    twice = sam.post(f"{url}/return", data={"csrf": sam.csrf})
    assert twice.status_code == 409 and f"{number} 的借阅申请已经处理过了：已归还" in twice.text
    letter = site.registry.letter(number)
    assert letter is not None
    assert [e.action for e in letter.events if e.action.startswith("borrow-")] == [
        "borrow-requested", "borrow-granted", "borrow-returned"]


def test_a_heads_request_to_borrow_goes_to_a_leader_not_back_to_the_head(site: Site) -> None:
    from gateway.services.borrowing import Borrowings

    number, secret = site.letters["business"], site.letters["secret"]
    site.access.act(Principal.operator("test"), secret, "close", text="done")
    closed_and_archived(site, number)  # and the secret letter, of the same month
    bella, leo = site.sign_in("bella"), site.sign_in("leo")  # Business's head; a leader
    # A leader's own request for a confidential letter waits for another leader, not in his list.
    assert leo.post(f"/letters/{secret}/borrow", data={"reason": "核对条款", "days": "3",
                                                      "csrf": leo.csrf}).status_code == 303
    assert 'id="awaiting"' not in leo.get("/borrowing").text
    assert bella.post(f"/letters/{number}/borrow", data={"reason": "核对订单", "days": "3",
                                                        "csrf": bella.csrf}).status_code == 303
    asked, _ = Borrowings(site.config, site.registry, site.access).records.borrowings()[0]  # newest first
    # Not in her own list to approve (she may not), but in the leader's.
    assert 'id="awaiting"' not in bella.get("/borrowing").text
    assert 'id="awaiting"' in leo.get("/borrowing").text
    assert leo.post(f"/borrowing/{asked.id}/decide", data={"decision": "grant", "csrf": leo.csrf}).status_code == 303
    assert bella.get(f"/letters/{number}").status_code == 200
    letter = site.registry.letter(number)
    assert letter is not None
    [granted] = [e.details for e in letter.events if e.action == "borrow-granted"]
    assert granted["approver"] == "leo"


def test_days_and_pages_out_of_range_are_refused_or_kept_in_range(site: Site) -> None:
    """A day or period beyond what the register holds, or a day that is no date, is a 400 naming
    the field and the value, a page number beyond any queue shows an empty page: neither is an
    error of the server."""
    site.people.set_language("rita", "en")
    site.people.set_language("audrey", "en")
    rita, audrey = site.sign_in("rita"), site.sign_in("audrey")
    for client, path, field, value in (
            (rita, "/letters?queue=all&until=9999-12-31", "Received until", "9999-12-31"),
            (rita, "/letters?queue=all&since=0001-01-01", "Received from", "0001-01-01"),
            (rita, "/letters?queue=all&deadline_before=0001-01-01", "Deadline before", "0001-01-01"),
            (rita, "/letters.csv?queue=all&until=9999-12-31", "Received until", "9999-12-31"),
            (rita, "/search?q=order&until=9999-12-31", "Received until", "9999-12-31"),
            (audrey, "/audit?until=9999-12-31", "Recorded until", "9999-12-31"),
            (audrey, "/audit.csv?since=1899-12-31", "Recorded from", "1899-12-31")):
        refused = client.get(path)
        assert refused.status_code == 400, path
        assert f"{field}: “{value}” is outside the register&#39;s years (1900 to 9998)." in refused.text, path
    # A day no calendar has is said to be no date, naming the filter it was given for.
    for client, path, says in (
            (rita, "/letters?queue=all&deadline_after=2026-02-30", "Deadline from: “2026-02-30” is not a date"),
            (rita, "/search?q=order&since=2026-13-01", "Received from: “2026-13-01” is not a date"),
            (audrey, "/audit?since=2026-02-30", "Recorded from: “2026-02-30” is not a date")):
        refused = client.get(path)
        assert refused.status_code == 400 and says in refused.text, path
    for period in ("0001-01", "9999-12", "9999-Q4"):
        refused = rita.get(f"/reports?period={period}")
        assert refused.status_code == 400 and "is neither a month" in refused.text, period
    huge = "99999999999999999999999"
    for path in (f"/letters?queue=all&page={huge}", f"/search?q=order&page={huge}", f"/triage?page={huge}"):
        shown = rita.get(path)
        assert shown.status_code == 200 and site.letters["business"] not in shown.text, path
    assert site.letters["business"] in rita.get("/letters?queue=all&since=1900-01-01&until=9998-12-31").text
    site.people.set_language("rita", "zh")
    chinese = site.sign_in("rita").get("/letters?queue=all&until=2026-02-30")
    assert chinese.status_code == 400 and "收文日期至：“2026-02-30”不是有效日期" in chinese.text


def test_a_list_filter_the_form_does_not_offer_is_refused_by_name(site: Site) -> None:
    """A misspelt status, category, urgency or channel in an address (a link typed or kept from
    elsewhere) is a 400 naming it, in the page's language: not an empty list whose form says "any"."""
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    for path in ("/letters?queue=all&status=acknowleged", "/letters.csv?queue=all&category=external.busines",
                 "/search?q=order&urgency=URGENT", "/letters?queue=all&channel=e-mail"):
        refused = rita.get(path)
        value = path.rpartition("=")[2]
        assert refused.status_code == 400, path
        assert f"there is none called “{value}”." in refused.text, path
    assert "状态：没有“acknowleged”这一项。" in site.sign_in("sam").get(
        "/letters?queue=departments&status=acknowleged").text
    assert site.letters["business"] in rita.get("/letters?queue=all&status=open&channel=email").text


def test_the_deadline_column_sorts_the_soonest_first_on_its_first_click(site: Site) -> None:
    """A queue's Deadline header first sorts ascending (the soonest deadline first, letters without
    one last), Received newest first, Number in order; a second click reverses, and the arrow
    beside the sorted column says which way (▲ ascending, ▼ descending)."""
    import html

    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")

    def header(page: str, label: str) -> tuple[str, str]:
        found = re.search(rf'<th><a href="([^"]*)">{label} ?(▲|▼)?</a></th>', page)
        assert found, label
        return html.unescape(found.group(1)), found.group(2) or ""

    page = rita.get("/letters?queue=all").text
    assert "sort=deadline" in header(page, "Deadline")[0] and "sort=-deadline" not in header(page, "Deadline")[0]
    assert header(page, "Received") == ("/letters?queue=all&sort=received", "▼")  # newest first, by default
    soonest_link, _ = header(page, "Deadline")
    soonest = rita.get(soonest_link).text
    again, arrow = header(soonest, "Deadline")
    assert arrow == "▲" and "sort=-deadline" in again
    assert header(soonest, "Received") == ("/letters?queue=all&sort=-received", "")
    assert header(soonest, "Number") == ("/letters?queue=all&sort=number", "")
    shown = [n for n in re.findall(r"2026-\d{6}", soonest)]
    deadlines = {n: site.registry.letter(n).deadline for n in dict.fromkeys(shown)}
    dated = [d for d in deadlines.values() if d is not None]
    assert len(set(dated)) > 1 and dated == sorted(dated)
    assert [d for d in deadlines.values()][-1] is None  # the triage letter has none: last
    latest = rita.get(again).text
    back, arrow = header(latest, "Deadline")
    assert arrow == "▼" and "sort=deadline" in back and "sort=-deadline" not in back


def test_a_department_filter_naming_no_department_is_refused_by_name(site: Site) -> None:
    """A department no one configured and no letter is in is a 400 naming it; one removed from the
    configuration whose letters are still in the register lists them."""
    from sqlalchemy import update

    from gateway.registry.models import Letter

    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    for path in ("/letters?queue=all&department=sales", "/letters.csv?queue=all&department=sales",
                 "/search?q=order&department=sales"):
        refused = rita.get(path)
        assert refused.status_code == 400 and "Department: there is none called “sales”." in refused.text, path
    with site.registry.write() as conn:
        conn.execute(update(Letter).where(Letter.number == site.letters["office"]).values(department="old-office"))
    listed = rita.get("/letters?queue=all&department=old-office")
    assert listed.status_code == 200 and site.letters["office"] in listed.text
    assert site.letters["business"] not in listed.text


def test_days_given_the_wrong_way_round_are_refused_saying_so(site: Site) -> None:
    """Received from a day after the last one, or a deadline from a day not before the "before"
    day, selects nothing: a 400 that says why, in the page's language; one day alone is a range."""
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    for path in ("/letters?queue=all&since=2026-12-10&until=2026-12-01",
                 "/letters.csv?queue=all&since=2026-12-10&until=2026-12-01",
                 "/search?q=order&since=2026-12-10&until=2026-12-01"):
        refused = rita.get(path)
        assert refused.status_code == 400, path
        assert "Received from 2026-12-10 to 2026-12-01: the first day is after the last." in refused.text, path
    refused = rita.get("/letters?queue=all&deadline_after=2026-12-07&deadline_before=2026-12-07")
    assert refused.status_code == 400
    assert "Deadline from 2026-12-07 and before 2026-12-07: no day is in between." in refused.text
    assert "收文日期从 2026-12-10 到 2026-12-01：起始日期晚于结束日期。" in site.sign_in("sam").get(
        "/letters?queue=departments&since=2026-12-10&until=2026-12-01").text
    day = rita.get("/letters?queue=all&since=2026-12-01&until=2026-12-01")
    assert day.status_code == 200


def test_a_nul_in_any_value_is_refused_by_name_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL refuses a NUL in any text it is given: a query, a form field, a path or a session
    cookie holding one is a 400 naming it (in either language), never a 500, signed in or not."""
    site = Site(tmp_path, registry_url=pg_url)
    try:
        site.add_people()
        site.add_letters()
        site.people.set_language("rita", "en")
        number = site.letters["business"]
        stranger = site.client()
        form = stranger.get("/signin")
        refused = stranger.post("/signin", data={"login": "a\x00b", "password": "x", "csrf": hidden(form.text, "csrf")})
        assert refused.status_code == 400 and "login 含有空字符" in refused.text  # not signed in: Chinese first
        stranger.cookies.set("gw_session", '"made\\000up"')  # a quoted cookie's octal escape: a NUL
        assert stranger.get("/").status_code == 303  # no session: to the sign-in page
        rita = site.sign_in("rita")
        for path, field in (("/letters?queue=all&category=%00", "category"), ("/search?q=a%00b", "q"),
                            ("/letters/%00", "the address"), ("/audit?actor=%00", "actor")):
            refused = rita.get(path)
            assert refused.status_code == 400 and f"{field} holds a NUL character" in refused.text, path
        note = rita.post(f"/letters/{number}/act", data={"action": "note", "text": "a\x00b", "csrf": rita.csrf})
        assert note.status_code == 400 and "text holds a NUL character" in note.text
        site.people.set_language("rita", "zh")
        assert "text 含有空字符" in rita.post(f"/letters/{number}/act",
                                            data={"action": "note", "text": "\x00", "csrf": rita.csrf}).text
        assert not [e for e in site.registry.letter(number).events if e.action == "note"]  # type: ignore[union-attr]
        assert rita.get("/letters?queue=all&category=external.business").status_code == 200
    finally:
        site.close()


def test_asking_the_sender_twice_or_for_a_day_years_away_is_refused_with_the_reason(site: Site) -> None:
    """A second request while the first waits (a second tab, a second click) is a refusal saying
    why, not an error of the server; a day more than a year away is refused as the past is."""
    from datetime import date, timedelta

    site.people.set_language("sam", "en")
    sam = site.sign_in("sam")
    url = f"/letters/{site.letters['business']}/incomplete"
    far = (date.today() + timedelta(days=400)).isoformat()
    refused = sam.post(url, data={"csrf": sam.csrf, "missing": "the signed contract", "by": far})
    assert refused.status_code in (400, 409) and f"{far} is more than a year away" in refused.text
    near = (date.today() + timedelta(days=10)).isoformat()
    asked = sam.post(url, data={"csrf": sam.csrf, "missing": "the signed contract", "by": near})
    assert asked.status_code == 303, asked.text[-500:]
    again = sam.post(url, data={"csrf": sam.csrf, "missing": "the signed contract", "by": near})
    assert again.status_code == 409 and "is awaiting-sender" in again.text, again.text[-1000:]


def test_asking_the_sender_keeps_what_was_written_and_cuts_nothing_it_would_send(site: Site) -> None:
    from datetime import date, timedelta

    bella = site.sign_in("bella")  # [web] language = "zh"
    number = site.letters["business"]
    url = f"/letters/{number}/incomplete"
    missing = "the signed contract\nthe invoice of March"
    past = bella.post(url, data={"csrf": bella.csrf, "missing": missing, "by": "2020-01-01"})
    assert past.status_code == 400 and "2020-01-01 已过" in past.text
    assert ">the signed contract\nthe invoice of March</textarea>" in past.text and 'value="2020-01-01"' in past.text
    # An item longer than a request takes is refused, never cut short in the mail to the sender.
    near = (date.today() + timedelta(days=10)).isoformat()
    long_item = "the minutes of the meeting " * 12  # 324 characters
    refused = bella.post(url, data={"csrf": bella.csrf, "missing": long_item, "by": near})
    assert refused.status_code == 400 and "每项需补充的内容最多 300 个字符" in refused.text
    letter = site.registry.letter(number)
    assert letter is not None and letter.status != "awaiting-sender"
    assert bella.post(url, data={"csrf": bella.csrf, "missing": "the signed contract", "by": near}
                      ).status_code == 303
    # A remark longer than any step's text is refused, and kept in its form.
    remark = "电话联系未果，" * 300  # 2,100 characters
    withdrawn = bella.post(f"/letters/{number}/withdraw", data={"csrf": bella.csrf, "text": remark})
    assert withdrawn.status_code == 400 and "最多 2000 个字符" in withdrawn.text
    assert f'value="{remark}"' in withdrawn.text
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "awaiting-sender"


def test_asking_the_sender_by_an_impossible_day_says_it_is_no_date_and_keeps_the_form(site: Site) -> None:
    """2026-02-30 is not taken for a day left out ("give the day"): the refusal names the field
    and what was typed (400), and the form keeps both fields; nothing is asked."""
    bella = site.sign_in("bella")  # [web] language = "zh"
    number = site.letters["business"]
    missing = "the signed contract"
    refused = bella.post(f"/letters/{number}/incomplete", data={"csrf": bella.csrf, "missing": missing,
                                                                "by": "2026-02-30"})
    assert refused.status_code == 400
    assert "补充期限“2026-02-30”不是有效日期" in refused.text and "请填写补充期限" not in refused.text
    assert f">{missing}</textarea>" in refused.text and 'value="2026-02-30"' in refused.text
    letter = site.registry.letter(number)
    assert letter is not None and letter.status != "awaiting-sender"
    with pytest.raises(Refused) as english:
        Incomplete(site.config, site.registry).mark(Principal.operator("test"), number, missing=[missing],
                                                    by="2026-13-01")
    assert english.value.key == "not-a-date" and "“2026-13-01”, is not a date" in str(english.value)


def test_asking_the_sender_or_withdrawing_racing_a_reassignment_is_refused_under_the_letters_lock(
        site: Site) -> None:
    """Bella's rights to ask the sender, then to withdraw, are decided while the letter is her
    department's; the registry office moves it before her step takes the letter's lock: nothing
    is done, and she is told where it went."""
    from datetime import date, timedelta

    from gateway.services.incomplete import Incomplete

    number = site.letters["business"]
    bella = site.people.principal("bella")
    assert bella is not None
    incomplete = Incomplete(site.config, site.registry)
    by = date.today() + timedelta(days=10)

    def moved_meanwhile(step: str) -> object:
        original = getattr(incomplete.records, step)

        def racing(*args: object, **kwargs: object) -> object:
            site.registry.reassign(number, "general-office", reason="wrong department", actor="rita", notify=[])
            return original(*args, **kwargs)
        return racing

    incomplete.records.mark_incomplete = moved_meanwhile("mark_incomplete")  # type: ignore[method-assign]
    with pytest.raises(Refused) as refused:
        incomplete.mark(bella, number, missing=["the signed contract"], by=by)
    assert refused.value.key == "moved" and refused.value.params["department"] == "General Office"
    letter = site.registry.letter(number)
    assert letter is not None and letter.status != "awaiting-sender" and not incomplete.request(number)

    # Back with business, asked properly; then moved again while Bella withdraws it.
    site.registry.reassign(number, "business", reason="it is theirs after all", actor="rita", notify=[])
    del incomplete.records.mark_incomplete
    incomplete.mark(bella, number, missing=["the signed contract"], by=by)
    incomplete.records.withdraw = moved_meanwhile("withdraw")  # type: ignore[method-assign]
    with pytest.raises(Refused) as refused:
        incomplete.withdraw(bella, number, reason="never came")
    assert refused.value.key == "moved"
    letter = site.registry.letter(number)
    assert letter is not None and (letter.department, letter.status) == ("general-office", "awaiting-sender")


def test_a_refused_withdrawal_or_request_names_the_state_it_is_in_now_and_the_step_in_chinese(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import date, timedelta

    from gateway.registry.outward import OutwardRecords
    from gateway.services.incomplete import Incomplete

    number = site.letters["business"]
    bella = site.sign_in("bella")  # [web] language = "zh"
    assert bella.post(f"/letters/{number}/incomplete", data={
        "missing": "the signed contract", "by": (date.today() + timedelta(days=10)).isoformat(),
        "csrf": bella.csrf}).status_code == 303
    withdraw = OutwardRecords.withdraw

    def went_on_meanwhile(self: OutwardRecords, *args: object, **kwargs: object) -> object:
        # Sam goes on without the materials between Bella's rights being checked and her step's lock.
        Incomplete(site.config, site.registry).proceed(site.people.principal("sam"), number)  # type: ignore[arg-type]
        return withdraw(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(OutwardRecords, "withdraw", went_on_meanwhile)
    refused = bella.post(f"/letters/{number}/withdraw", data={"text": "never came", "csrf": bella.csrf})
    monkeypatch.undo()
    said = refused.text.split('role="alert">')[1].split("</p>")[0]
    assert refused.status_code == 409 and "当前状态为“办理中”，现在不能“作撤回处理（来信人未补充材料）”" in said, said
    assert site.registry.letter(number).status == "in-progress"  # type: ignore[union-attr]
    # Asked again, then once more from a second tab: the step is named in Chinese too.
    ask = {"missing": "the invoice", "by": (date.today() + timedelta(days=10)).isoformat(), "csrf": bella.csrf}
    assert bella.post(f"/letters/{number}/incomplete", data=ask).status_code == 303
    twice = bella.post(f"/letters/{number}/incomplete", data=ask)
    said = twice.text.split('role="alert">')[1].split("</p>")[0]
    assert twice.status_code == 409 and "当前状态为“待来信人补充”，现在不能“通知来信人补充”" in said, said


def test_a_form_from_nobody_signed_in_is_not_read_and_one_too_large_is_refused(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload to a page that needs a signed-in person is not taken in before the sign-in check;
    a form past the limit is refused with 413 before it is kept, whether it says its length or comes
    in chunks."""
    from starlette.datastructures import UploadFile

    from gateway.web.app import Web

    written: list[int] = []
    original = UploadFile.write

    async def counting(self: UploadFile, data: bytes) -> None:
        written.append(len(data))
        await original(self, data)

    monkeypatch.setattr(UploadFile, "write", counting)
    upload = {"scans": ("big.pdf", b"%PDF-1.4\n" + b"0" * (4 * 2**20), "application/pdf")}
    anonymous = site.client()
    answer = anonymous.post("/paper", data={"sender_name": "A", "channel": "post"}, files=upload)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")
    assert sum(written) == 0
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    monkeypatch.setattr(Web, "body_limit", property(lambda self: 64 * 1024))
    small = {"scans": ("a.pdf", b"%PDF-1.4\n" + b"0" * (128 * 1024), "application/pdf")}
    large = rita.post("/paper", data={"csrf": rita.csrf, "sender_name": "A", "channel": "post"}, files=small)
    assert large.status_code == 413
    assert "What was sent is larger than the register takes" in large.text and sum(written) == 0
    site.people.set_language("rita", "zh")  # said in the page's language, as every refusal is
    large = rita.post("/paper", data={"csrf": rita.csrf, "sender_name": "A", "channel": "post"}, files=small)
    assert large.status_code == 413 and "413 · 内容过大" in large.text
    assert "发送的内容超过登记簿可接收的上限" in large.text
    chunked = rita.post("/paper", content=(b"a" * 16384 for _ in range(8)),
                        headers={"content-type": "application/x-www-form-urlencoded", "x-csrf-token": rita.csrf})
    assert chunked.status_code == 413
    assert site.spool.pending() == []


def test_an_uploaded_files_declared_type_never_shapes_the_reply_mail(site: Site) -> None:
    """The type a browser sends with a file is the uploader's word: `multipart/mixed; boundary=...`
    is stored and mailed as a plain file (application/octet-stream), and the reply the sender gets
    is one well-formed multipart with its text and two leaf attachments."""
    from email import message_from_bytes, policy

    from gateway.registry.replies import ReplyRecords
    from gateway.services.replies import Replies

    number = site.letters["business"]
    sam = site.sign_in("sam")
    done = sam.post(f"/letters/{number}/reply",
                    data={"csrf": sam.csrf, "text": "Dear Alice,\nthe terms are attached.\n", "action": "submit"},
                    files=[("files", ("terms.txt", b"our terms\n", 'multipart/mixed; boundary="zz"')),
                           ("files", ("offer.pdf", b"%PDF-1.4\n", "Application/PDF; name=offer.pdf"))])
    assert done.status_code == 303, done.text[-500:]
    bella = site.people.principal("bella")
    assert bella is not None
    assert Replies(site.config, site.registry).approve(bella, number) == "sent"
    letter = site.registry.letter(number)
    assert letter is not None
    [mail] = [m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "sender-reply"]
    raw = ReplyRecords(site.registry).message_by_id(mail.message_id)
    assert raw
    sent = message_from_bytes(raw, policy=policy.default)
    parts = [(p.get_content_type(), p.get_filename(), p.defects) for p in sent.walk()]
    assert [(kind, name) for kind, name, _ in parts] == [
        ("multipart/mixed", None), ("text/plain", None), ("application/octet-stream", "terms.txt"),
        ("application/pdf", "offer.pdf")], parts
    assert not any(defects for _, _, defects in parts)


def visible(html: str) -> str:
    """A page's words as a reader sees them: no tags, no scripts, spaces collapsed."""
    import html as entities

    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", entities.unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def test_the_letter_page_words_its_history_trace_and_people(site: Site) -> None:
    number = site.letters["business"]
    bella = site.people.principal("bella")
    assert bella is not None
    site.access.act(bella, number, "assign", assignee="sam")
    page = site.sign_in("sam").get(f"/letters/{number}")  # in Chinese, the default
    assert page.status_code == 200
    words = visible(page.text)
    # People by their names (the sign-in name beside it), the system and the intake in words.
    assert "承办人 Sam sam" in words
    assert "文件导入 已接收" in words and "系统 已登记" in words and "Bella bella 已指派" in words
    # The history's details under labels, times local, codes labelled; technical keys folded away.
    assert "发现的缺陷： 0" in words and "原状态" not in words
    assert "办理时限：" in words and "T23:59:59" not in words and "+00:00" not in words and "+08:00" not in words
    assert "技术细节" in words and "spool:" in words  # nothing lost
    assert "keys:" in words.split("技术细节", 1)[1] and "发现的缺陷： 0 keys" not in words
    # The decision trace in Chinese: evidence, what was set, the result.
    assert "收件地址属于部门 Business" in words and "addressed to department" not in words
    assert "类别： 外部：业务往来" in words and "category=" not in words
    triage = visible(site.sign_in("rita").get(f"/letters/{site.letters['triage']}").text)
    assert "没有规则匹配" in triage and "no rule matched" not in triage
    # Who read it: by name.
    assert "查阅记录 Sam sam" in words


def test_the_history_words_a_replys_last_approval_a_rating_and_a_reopening_in_chinese(tmp_path: Path) -> None:
    from gateway.outbound.outward import invitation
    from gateway.services.replies import Replies
    from gateway.services.satisfaction import Satisfaction

    site = Site(tmp_path, web='base_url = "http://letters.example.org"')
    try:
        site.add_people()
        site.add_letters()
        number = site.letters["inquiry"]
        sam, bella = site.people.principal("sam"), site.people.principal("bella")
        assert sam is not None and bella is not None
        replies = Replies(site.config, site.registry)
        replies.draft(sam, number, text="The goods leave on Monday.")
        replies.submit(sam, number)
        assert replies.approve(bella, number) == "sent"
        site.access.act(Principal.operator("test"), number, "close", text="The goods left on Monday.")
        [mail] = [m for m in site.registry.outbox() if m.kind == "feedback"]
        token = re.findall(r"/rate/([^?\s]+)", invitation(site.config, mail, "zh"))[0]
        Satisfaction(site.config, site.registry).by_link(token, 1, "太慢了", address="127.0.0.1")
        page = site.sign_in("bella").get(f"/letters/{number}").text  # in Chinese, the default
        history = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
        assert "审批完毕： 是" in history and "complete:" not in history
        # The reply went by mail, the rating came by web.
        assert "途径： 电子邮件" in history and "途径： 网页" in history
        assert "原办理时限：" in history and "replaced_deadline" not in history
        assert "来信人 来信人已评价" in history  # who rated: the sender, worded
        shown = history.split("来信人已评价", 1)[1].split("技术细节", 1)[0]
        assert "feedback" not in shown  # the result mail's Message-ID is a technical detail
    finally:
        site.close()


def test_the_letter_page_words_its_history_in_english_too(site: Site) -> None:
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/letters/{site.letters['business']}").text)
    assert "System registered" in words and "File import received" in words
    assert "defects found: 0" in words and "Technical details" in words
    assert "addressed to department Business" in words and "category: external: business" in words


def test_the_audit_log_offers_its_actions_by_name_names_people_and_pages(site: Site) -> None:
    from gateway.web.routes import audit

    rita = site.sign_in("rita")
    for _ in range(audit.PER_PAGE + 5):  # more rows than a page holds
        rita.get(f"/letters/{site.letters['business']}")
    client = site.sign_in("audrey")  # in Chinese, the default
    page = client.get("/audit?actor=rita&action=read")
    words = visible(page.text)
    assert page.status_code == 200
    # The action filter: a list of labels whose values are the codes.
    assert re.search(r'<select name="action">.*<option value="read" selected>阅读</option>', page.text, re.S)
    assert 'list="audit-actions"' not in page.text
    assert "对象" in words and "Rita rita" in words  # the target column; people by name
    assert "下一页" in words and "第 1 页" in words and "最多显示" not in words
    second = visible(client.get("/audit?actor=rita&action=read&page=2").text)
    assert "第 2 页" in second and "上一页" in second and "下一页" not in second


def test_irreversible_steps_ask_first_naming_the_outcome(site: Site) -> None:
    inquiry = site.letters["inquiry"]
    sam = site.sign_in("sam")  # in Chinese, the default
    page = sam.get(f"/letters/{inquiry}").text
    assert f"确认办结 {inquiry}？办理结果将通过电子邮件发送给来信人" in page
    office = site.sign_in("gina").get(f"/letters/{site.letters['office']}").text
    assert f"确认办结 {site.letters['office']}？信件将移出待办队列。" in office
    assert "保全后不得删除或销毁" in site.sign_in("rita").get(f"/letters/{site.letters['office']}").text
    ada = site.sign_in("ada")
    assert "确认停用 Sam？其将立即退出登录" in ada.get("/people/sam").text
    listing = sam.get("/letters?queue=departments").text
    assert "确认将所选 {count} 封信件转办至 {department}？" in listing
    created = sam.post("/views", data={"name": "Mine", "queue": "departments", "csrf": sam.csrf})
    view = sam.get(created.headers["location"]).text
    assert "确认删除常用视图“Mine”？" in view
    assert 'data-confirm' in (Path(__file__).parents[1] / "gateway" / "web" / "static" / "app.js").read_text()


def test_the_registers_words_for_holds_replies_withdrawals_and_triage(site: Site) -> None:
    rita = site.sign_in("rita")  # in Chinese, the default
    office = visible(rita.get(f"/letters/{site.letters['office']}").text)
    assert "诉讼保全" in office and "诉讼保留" not in office
    triage = rita.get("/triage").text
    assert 'name="reason" value="" maxlength="500" placeholder="如：按业务范围转办"' in triage
    assert "分办台分办" not in visible(triage)
    i18n.use("zh")
    assert i18n.gettext("Reply to the sender") == "答复来信人"
    assert i18n.gettext("Close as withdrawn") == "作撤回处理（来信人未补充材料）"


def test_forms_with_nothing_chosen_or_crafted_names_get_a_page_not_an_error(site: Site) -> None:
    """A bulk step with no letter ticked or no action, a paper form naming a kept scan no file
    could have, a quarantined item's id of 5,000 characters: each gets its page, never a 500."""
    rita = site.sign_in("rita")
    rita.post("/me/language", data={"language": "en", "next": "/", "csrf": rita.csrf})
    none_ticked = rita.post("/letters/bulk", data={"action": "ack", "csrf": rita.csrf})
    assert none_ticked.status_code == 400 and "No letters selected" in none_ticked.text
    no_action = rita.post("/letters/bulk", data={"action": "", "number": site.letters["business"], "csrf": rita.csrf})
    assert no_action.status_code == 400 and "Choose what to do" in no_action.text
    paper = rita.post("/paper", data={"channel": "post", "sender_name": "X", "kept": "a" * 5000,
                                      "token": "A" * 24, "csrf": rita.csrf})
    assert paper.status_code == 400 and "scans" in paper.text.lower()
    ada = site.sign_in("ada")
    ada.post("/me/language", data={"language": "en", "next": "/", "csrf": ada.csrf})
    for item in ("x" * 5000, "../new/x"):
        retried = ada.post("/operations/quarantine/retry", data={"item": item, "csrf": ada.csrf})
        assert retried.status_code == 404 and "No quarantined item" in retried.text


def test_going_on_without_the_missing_materials_on_the_letter_page(site: Site) -> None:
    """A letter awaiting its sender offers its department to go on without the materials, in
    Chinese first: done, it is in progress again with a deadline; a leader may not."""
    from datetime import date, timedelta

    number = site.letters["business"]
    for login in ("sam", "leo"):
        site.people.set_language(login, "zh")
    sam = site.sign_in("sam")
    by = (date.today() + timedelta(days=10)).isoformat()
    asked = sam.post(f"/letters/{number}/incomplete", data={"csrf": sam.csrf, "missing": "the signed contract",
                                                            "by": by})
    assert asked.status_code == 303
    page = sam.get(f"/letters/{number}").text
    assert f'action="/letters/{number}/proceed"' in page and "不等补充材料，继续办理" in page

    leo = site.sign_in("leo")
    refused = leo.post(f"/letters/{number}/proceed", data={"csrf": leo.csrf})
    assert refused.status_code == 403 and "可以决定不等补充材料、继续办理" in refused.text
    done = sam.post(f"/letters/{number}/proceed", data={"csrf": sam.csrf, "text": "the copy will do"})
    assert done.status_code == 303 and done.headers["location"].startswith(f"/letters/{number}?done=proceed.")
    shown = sam.get(done.headers["location"]).text
    assert "已不等补充材料继续办理" in shown and "未等补充材料，继续办理" in shown  # the flash, the history
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "in-progress" and letter.deadline is not None
    again = sam.post(f"/letters/{number}/proceed", data={"csrf": sam.csrf})
    assert again.status_code == 409


def test_flags_and_why_no_receipt_went_are_worded_in_chinese(site: Site) -> None:
    from conftest import make_message

    internal = site.ingest("internal", make_message(30, subject="From inside", sender="Bob <bob@example.org>",
                                                    to="sales@example.org"))
    repeated = site.ingest("repeated", b"From: a@partner.example\r\nFrom: b@partner.example\r\n"
                                       b"To: sales@example.org\r\nSubject: two\r\nSubject: three\r\n"
                                       b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\n\r\nhi\r\n")
    rita = site.sign_in("rita")  # in Chinese, the default
    words = visible(rita.get(f"/letters/{internal}").text)
    assert "标记 内部发件人未经验证" in words and "unverified-internal-sender" not in words
    assert "事由： 内部发件人" in words and "internal sender" not in words
    words = visible(rita.get(f"/letters/{repeated}").text)
    assert "信头字段重复：From, Subject" in words and "repeated-header" not in words
    grouped = site.ingest("grouped", b"From: Board members:;\r\nSender: Bob <bob@example.org>\r\n"
                                     b"To: sales@example.org\r\nSubject: minutes\r\n"
                                     b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\n\r\nhi\r\n")
    words = visible(rita.get(f"/letters/{grouped}").text)
    assert "发件人取自 Sender 字段" in words and "sender-not-from" not in words
    # The fourth letter to one sender in a day gets no receipt: the cap, in words.
    words = visible(rita.get(f"/letters/{site.letters['triage']}").text)
    assert "24 小时内已向该发件人发送 3 份回执（上限 3 份）" in words and "receipt(s)" not in words
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/letters/{internal}").text)
    assert "internal sender not verified" in words and "reason: internal sender" in words


def test_a_letters_defects_are_listed_on_its_page_for_those_who_read_its_content(site: Site) -> None:
    number = site.ingest("defective", b"From: a@partner.example\r\nTo: sales@example.org\r\nSubject: odd\r\n"
                                      b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
                                      b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
                                      b"Content-Transfer-Encoding: quoted-printable\r\n\r\nprice =ZZ 100\r\n")
    defects = site.gateway.show_json(number)["defects"]
    assert len(defects) == 2, defects
    words = visible(site.sign_in("rita").get(f"/letters/{number}").text)  # the registry office, in Chinese
    assert "缺陷 读取时发现 2 处缺陷" in words, words
    assert "邮件：未知字符集 'x-no-such-charset'，按 utf-8 读取" in words, words
    assert "邮件：quoted-printable 编码有误：1 处“=”不构成转义，按原样保留（第一处：'=ZZ'）" in words, words
    assert "unknown charset" not in words and "starting no escape" not in words
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/letters/{number}").text)
    assert "Defects 2 defects found while reading it" in words and all(d in words for d in defects), words
    # An auditor sees the register entry, not what was read from the letter.
    words = visible(site.sign_in("audrey").get(f"/letters/{number}").text)
    assert "x-no-such-charset" not in words and "Defects" not in words and "缺陷" not in words


def test_defects_and_why_mail_was_undeliverable_are_worded_in_the_pages_language() -> None:
    from gateway.web.shown import flag, sentence

    said = {
        "fax: caller id unknown": "传真：主叫号码未知",
        "fax: information file f1.info not read: its name fits another fax as well (f1.pdf); named f1.tif.info "
        "it is read":
            "传真：未读取信息文件 f1.info：其文件名也与另一份传真（f1.pdf）相符；改名为 f1.tif.info 后即可读取",
        "fax: 3 page(s) announced, 2 received": "传真：声明 3 页，实收 2 页",
        "fax: page 2: OCR skipped: the time limit of 60 s was reached": "传真：第 2 页：未识别文字：已达 60 秒的时限",
        "fax: text not read: OSError: gone": "传真：未识别文字：OSError: gone",
        "relay mx.example.org does not offer SMTPUTF8 (RFC 6531), without which no mail reaches 李明@example.org: "
        "its local part is not ASCII": "中继 mx.example.org 不支持 SMTPUTF8（RFC 6531）：李明@example.org 的用户名部分"
                                       "不是 ASCII 字符，没有 SMTPUTF8 邮件无法送达",
        "not delivered within 48 hours: 451 try later": "48 小时内未能送达：451 try later",
        "Precedence: bulk": "自动邮件（Precedence: bulk）",
    }
    i18n.use("zh")
    try:
        for english, chinese in said.items():
            assert sentence(english) == chinese
        assert flag("partial-reception") == "未收全所有页" and flag("ambiguous-header") == "部分信头字段不在签名范围内"
        assert sentence("something no one wrote before") == "something no one wrote before"
        i18n.use("en")
        assert sentence("fax: caller id unknown") == "fax: caller id unknown"
    finally:
        i18n.use("en")


def test_the_subject_the_gateway_gives_a_fax_is_worded_in_the_pages_language(site: Site) -> None:
    from conftest import make_message
    from fax_samples import tiff_fax

    fax = site.letters["fax"]  # fax_+8620123456_….tif, two pages
    (site.tmp / "scan.tif.info").write_text("name: 张三 (Acme)\n")
    unknown = site.ingest("scan", tiff_fax([["ONE PAGE"]]), filename="scan.tif")
    stored = {n: site.gateway.show_json(n)["subject"] for n in (fax, unknown)}
    assert stored == {fax: "Fax from +8620123456, 2 page(s)",
                      unknown: "Fax from an unknown number (张三 (Acme)), 1 page(s)"}
    # Someone's mail written like it is theirs, shown as written.
    lookalike = site.ingest("lookalike", make_message(40, subject="Fax from +8620123456, 2 page(s)",
                                                      to="sales@example.org"))
    rita = site.sign_in("rita")  # in Chinese, the default
    assert "传真，来自 +8620123456，共 2 页" in visible(rita.get(f"/letters/{fax}").text)
    assert "传真，来自未知号码（张三 (Acme)），共 1 页" in visible(rita.get(f"/letters/{unknown}").text)
    words = visible(rita.get("/search?q=8620123456").text)
    # Searching finds both by their stored words; only the gateway's own is worded.
    assert "传真，来自 +8620123456，共 2 页" in words and words.count("Fax from") == 1, words
    words = visible(rita.get("/letters?queue=all").text)
    assert "传真，来自 +8620123456，共 2 页" in words, words
    assert "传真，来自未知号码（张三 (Acme)），共 1 页" in words and words.count("Fax from +8620123456") == 1, words
    assert visible(rita.get(f"/letters/{lookalike}").text).count("Fax from +8620123456, 2 page(s)") == 1
    # The export is the register's data: the subjects as stored.
    csv = rita.get("/letters.csv?queue=all").text
    assert "Fax from +8620123456, 2 page(s)" in csv and "传真" not in csv
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    assert "Fax from +8620123456, 2 page(s)" in visible(rita.get(f"/letters/{fax}").text)
    assert "传真" not in visible(rita.get("/letters?queue=all").text)


# Where the gateway writes what it found wrong in a letter (its defects and a fax's problems).
DEFECT_SOURCES = ("gateway/stages/normalise/*.py", "gateway/stages/fax/*.py", "gateway/stages/build.py",
                  "gateway/services/intake.py")
# Values for the parts of a defect the code fills in, where any word would not do: the place a
# defect names first, a defect inside another. Any other part is given as "2".
DEFECT_PARTS: dict[str | tuple[str, str], tuple[str, ...]] = {
    "where": ("part 1.2", "message"), "self.where": ("part 1.2",), "step": ("headers", "body"),
    "label": ("TNEF body", "TNEF HTML body"), "name": ("filename",),
    "defect": ("unknown charset 'x-none', decoded as utf-8", "invalid bytes for charset 'gbk', replaced"),
    "d": ("unknown charset 'x-none', decoded as utf-8",),
    "_describe_defect(defect)": ("start boundary not found", "invalid base64 padding (3 bytes)"),
    "problem": ("8-bit text without charset is not valid utf-8", "unknown charset 'x-none'"),
    "field.replace('_', ' ')": ("number", "caller id", "sender name", "received"),
    ("build.py", "problem"): ("sidecar fax.info cannot be read", "file name 'x.tif' does not match the configured "
                              "pattern", "TIFF DateTime: time 'x' not understood"),
    ("text.py", "d"): ("page 2: OCR failed: boom", "document unreadable: boom"),
    ("headers.py", "problem"): ("unparseable address in", "address hidden in encoded text"),
    ("headers.py", "defect"): ("8-bit text without charset is not valid utf-8, decoded as gb18030",
                               "2 character(s) that are not base64 dropped; truncated base64"),
    ("charsets.py", "defect"): ("charset 'latin1' declared, byte-order mark says utf-16-le",),
    ("charsets.py", "replaced"): ("invalid bytes for utf-16-le, replaced",),
    ("charsets.py", "source"): ("of part 1.2", "of message", "declared in the message"),
    ("metadata.py", "source"): ("sidecar fax.info", "file name", "TIFF DateTime", "fax header line"),
}


def defect_samples() -> list[tuple[str, str]]:
    """Every defect sentence the code can write, with its parts filled in, and where it is written:
    a string appended to (or extended onto, or assigned to) a list of defects or problems, given
    as defects=, returned beside a decoded value, or given to a mail defect's constructor."""
    import ast
    import email.errors
    import glob
    import itertools

    from gateway.stages.normalise.message import _describe_defect

    def text(node: ast.JoinedStr, module: str) -> list[str]:
        choices: list[tuple[str, ...]] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                choices.append((str(value.value),))
                continue
            assert isinstance(value, ast.FormattedValue)
            source = ast.unparse(value.value)
            parts = DEFECT_PARTS.get((module, source), DEFECT_PARTS.get(source, ("2",)))
            choices.append(tuple(repr(p) if value.conversion == ord("r") else p for p in parts))
        return ["".join(chosen) for chosen in itertools.product(*choices)]

    def strings(node: ast.AST, module: str) -> list[str]:
        if isinstance(node, ast.JoinedStr):
            return text(node, module)
        if isinstance(node, ast.Constant):
            return [node.value] if isinstance(node.value, str) and node.value else []
        parts: list[ast.AST] = []
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            parts = [node.elt]
        elif isinstance(node, (ast.List, ast.Tuple)):
            parts = list(node.elts)
        elif isinstance(node, ast.IfExp):
            parts = [node.body, node.orelse]
        elif isinstance(node, ast.BinOp):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Starred):
            parts = [node.value]
        return [s for part in parts for s in strings(part, module)]

    found: list[tuple[str, str]] = []
    from conftest import ROOT

    for path in sorted(p for pattern in DEFECT_SOURCES for p in glob.glob(str(ROOT / pattern))):
        module = Path(path).name
        tree = ast.parse(Path(path).read_text())
        returning: set[int] = set()  # the returns of functions giving (value, defect or None)
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef) and function.returns is not None and \
                    ast.unparse(function.returns).replace(" ", "").endswith(",str|None]"):
                returning |= {id(n) for n in ast.walk(function) if isinstance(n, ast.Return)}
        for node in ast.walk(tree):
            carriers: list[ast.AST] = []
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                if isinstance(node.func, ast.Attribute) and node.func.attr in ("append", "extend") and \
                        any(w in ast.unparse(node.func.value).lower() for w in ("defect", "problem")):
                    carriers += node.args
                if called == "_decode_undeclared":
                    carriers += node.args[2:3]
                carriers += [k.value for k in node.keywords if k.arg == "defects"]
                if called.endswith("Defect") and node.args:  # a mail defect of our own, worded by its class
                    kind = type(called, (email.errors.MessageDefect,), {})
                    found += [(_describe_defect(kind(s)), f"{module}:{node.lineno}")
                              for s in strings(node.args[0], module)]
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any("defect" in ast.unparse(t).lower() for t in targets):
                    carriers.append(node.value)
            if isinstance(node, ast.Return) and id(node) in returning and isinstance(node.value, ast.Tuple):
                carriers.append(node.value.elts[-1])
            for carrier in carriers:
                found += [(s, f"{module}:{getattr(carrier, 'lineno', '?')}") for s in strings(carrier, module)]
    return found


def test_the_outboxs_events_are_worded_in_chinese_for_every_kind_of_mail(site: Site) -> None:
    """`<kind>-sent` and `<kind>-dead-lettered` are written for every kind of mail the gateway
    sends; a kind without words of its own for them is worded from the kind's name."""
    from gateway.web.routes import replies  # noqa: F401  (its kinds among the labels)

    kinds = {"notification", "receipt", "feedback", "reminder", "escalation", "refused-command", "circulation",
             "borrowing", "request", "sender-notice", "sender-reply", "approval", "password-reset"}
    mail = site.registry.outbox_due(1)[0]  # claimed, as the sender does before giving a mail up
    i18n.use("zh")
    try:
        for kind in kinds:
            for outcome in ("sent", "dead-lettered"):
                worded = i18n.label("event", f"{kind}-{outcome}")
                assert not re.search("[a-z]", worded), (kind, worded)
        expected = i18n.label("event", f"{mail.kind}-dead-lettered")
    finally:
        i18n.use("en")
    assert site.registry.outbox_dead(mail.id, "550 5.1.1 no such user")
    found = site.registry.letter_by_id(mail.letter_id)  # type: ignore[arg-type]
    assert found is not None
    words = visible(site.sign_in("rita").get(f"/letters/{found.number}").text)
    assert expected in words and f"{mail.kind}-dead-lettered" not in words


def test_every_defect_the_code_can_write_has_its_chinese() -> None:
    """A defect added to the code without a pattern and its Chinese in gateway/web/shown.py fails
    here: on a Chinese page it would stay in English."""
    import email.errors

    from gateway.stages.normalise.message import _describe_defect
    from gateway.web.shown import SENTENCES, sentence

    def known(line: str) -> bool:
        for pattern, _template in SENTENCES:
            found = pattern.match(line)
            if found is not None:
                return all(known(v) for k, v in found.groupdict().items() if k.startswith("rest") and v)
        return False

    samples = defect_samples()
    # The mail parser's own defects, worded from their class names.
    for kind in vars(email.errors).values():
        if isinstance(kind, type) and issubclass(kind, email.errors.MessageDefect):
            named = type(kind.__name__, (email.errors.MessageDefect,), {})  # worded by its name alone
            samples += [(_describe_defect(named()), kind.__name__), (_describe_defect(named("x")), kind.__name__)]
    assert len(samples) > 60, samples  # the search of the code still finds them
    unknown = [(s, where) for s, where in samples if not known(s)]
    assert not unknown, unknown
    i18n.use("zh")
    try:
        shown = {s: sentence(s) for s, _where in samples}
    finally:
        i18n.use("en")
    assert all(chinese != english for english, chinese in shown.items()), shown


def test_a_letters_rarer_defects_are_worded_in_chinese_on_its_page(site: Site) -> None:
    number = site.ingest("odd", b"From: a@partner.example\r\nTo: sales@example.org, <<<nobody\r\nSubject: odd\r\n"
                                b"Date: the day after tomorrow\r\nMIME-Version: 1.0\r\n"
                                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: x-rot13\r\n"
                                b"\r\nprice 100\r\n")
    defects = site.gateway.show_json(number)["defects"]
    assert len(defects) == 3, defects
    words = visible(site.sign_in("rita").get(f"/letters/{number}").text)
    assert "读取时发现 3 处缺陷" in words, words
    assert "信头 To：无法解析的地址：'sales@example.org, <<<nobody'" in words, words
    assert "信头 Date：无法解析的日期：'the day after tomorrow'" in words, words
    assert "邮件：未知的 Content-Transfer-Encoding 'x-rot13'，内容按原样读取" in words, words
    assert not any(english in words for english in ("unparseable", "content taken as is")), words
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/letters/{number}").text)
    assert all(d in words for d in defects), words


def test_the_subject_the_gateway_gives_a_paper_letter_is_worded_in_the_pages_language(site: Site) -> None:
    from fax_samples import ENGLISH, pdf_fax

    from gateway.services.paper import PaperLetter, Scan, register_paper

    def paper(subject: str = "", organisation: str = "", channel: str = "post", extra: bytes = b"") -> str:
        done = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
            channel=channel, sender_name="王芳", organisation=organisation, subject=subject,
            scans=[Scan("a.pdf", pdf_fax([ENGLISH]) + extra)]), by="rita", intake="web")
        assert done.number
        return done.number

    plain, courier = paper(), paper(organisation="Acme (Asia)", channel="courier", extra=b"\n")
    typed = paper(subject="Letter by post from 王芳, 1 page(s)", organisation="Acme", extra=b"\n\n")
    assert site.gateway.show_json(courier)["subject"] == "Letter by courier from 王芳 (Acme (Asia)), 1 page(s)"
    rita = site.sign_in("rita")  # in Chinese, the default
    assert "邮寄来信，来自 王芳，共 1 页" in visible(rita.get(f"/letters/{plain}").text)
    assert "快递来信，来自 王芳（Acme (Asia)），共 1 页" in visible(rita.get(f"/letters/{courier}").text)
    # A subject the clerk typed that is not the one the gateway would give this letter: as typed.
    assert "Letter by post from 王芳, 1 page(s)" in visible(rita.get(f"/letters/{typed}").text)
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/letters/{plain}").text)
    assert "Letter by post from 王芳, 1 page(s)" in words and "邮寄" not in words


def test_the_reports_overdue_list_words_a_faxs_subject_and_its_downloads_keep_the_register_s(site: Site) -> None:
    import json
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from sqlalchemy import update

    from gateway.registry.models import Letter

    now = datetime.now(timezone.utc)
    with site.registry.write() as conn:  # the fax late at the report's moment
        conn.execute(update(Letter).where(Letter.number == site.letters["fax"])
                     .values(deadline=now - timedelta(days=2)))
    month = now.astimezone(ZoneInfo(site.config.model.gateway.timezone)).strftime("%Y-%m")
    rita = site.sign_in("rita")  # in Chinese, the default
    words = visible(rita.get(f"/reports?period={month}").text)
    assert "传真，来自 +8620123456，共 2 页" in words and "Fax from" not in words, words
    report = json.loads(rita.get(f"/reports/download?period={month}&format=json").text)
    assert [o["subject"] for o in report["overdue"]] == ["Fax from +8620123456, 2 page(s)"]
    site.people.set_language("rita", "en")
    words = visible(site.sign_in("rita").get(f"/reports?period={month}").text)
    assert "Fax from +8620123456, 2 page(s)" in words


def test_an_internationalised_sender_domain_is_shown_in_chinese_unless_it_could_pass_for_another(site: Site) -> None:
    """A domain in A-labels (xn--fsqu00a.xn--fiqs8s, as mail programs without SMTPUTF8 write it) is
    shown as its owner writes it, 例子.中国, with the form the letter gave beside it on the letter's
    page and under the pointer in the lists; a domain whose Unicode could pass for another (Cyrillic
    аррӏе.com, for apple.com) is shown in A-labels, however the letter wrote it. The command line
    shows them the same way."""
    from conftest import make_message

    idn = site.ingest("idn", make_message(7, subject="IDN", sender="Zhang San <zhang@xn--fsqu00a.xn--fiqs8s>"))
    spoof = site.ingest("spoof", make_message(8, subject="Spoof", sender="Apple <pay@аррӏе.com>"))
    rita = site.sign_in("rita")
    assert "zhang@例子.中国 (zhang@xn--fsqu00a.xn--fiqs8s)" in rita.get(f"/letters/{idn}").text
    assert "pay@xn--80ak6aa92e.com (pay@аррӏе.com)" in rita.get(f"/letters/{spoof}").text
    listing = rita.get("/letters?queue=all").text
    # (It may wrap after its @, where <wbr> marks.)
    assert 'title="zhang@xn--fsqu00a.xn--fiqs8s">zhang@<wbr>例子.中国</span>' in listing
    assert 'title="pay@аррӏе.com">pay@<wbr>xn--80ak6aa92e.com</span>' in listing
    assert ">alice@<wbr>partner.example</span>" in listing  # ASCII as it is, nothing beside it
    shown = site.gateway.run("letters", "show", idn).stdout
    assert "zhang@例子.中国 (zhang@xn--fsqu00a.xn--fiqs8s)" in shown
    listed = site.gateway.run("letters", "list", env=site.gateway.env(COLUMNS="250")).stdout
    assert "zhang@例子.中国" in listed and "pay@xn--80ak6aa92e.com" in listed and "аррӏе" not in listed


def test_a_queue_shows_50_100_or_200_letters_a_page_and_keeps_the_choice(site: Site) -> None:
    """A longer page (for a printed sheet of the register, say): 50, 100 or 200 letters, chosen
    under the queue and kept by its links, sorting and filters; any other number is the first."""
    from conftest import make_message

    for n in range(60):
        site.ingest(f"more{n}", make_message(100 + n, subject=f"Order {n}", to="liaison@example.org"))
    client = site.sign_in("rita")
    first = client.get("/letters?queue=all")
    words = visible(first.text)
    assert first.status_code == 200 and "第 1 页，共 2 页" in words, words[-400:]
    assert first.text.count('name="number" value="') == 50
    assert "每页显示：" in words and '<strong aria-current="true">50</strong>' in first.text
    longer = client.get("/letters?queue=all&per_page=100")
    assert longer.text.count('name="number" value="') == len(site.letters) > 60
    assert "第 1 页，共 2 页" not in visible(longer.text)
    # Kept by the sort links and by the filter form (a hidden field).
    assert "per_page=100" in longer.text and 'name="per_page" value="100"' in longer.text
    assert '<strong aria-current="true">100</strong>' in longer.text
    for odd in ("75", "-1", "many", "100000"):
        page = client.get(f"/letters?queue=all&per_page={odd}")
        assert page.status_code == 200 and page.text.count('name="number" value="') == 50, odd


def test_an_answer_by_mail_nothing_proved_says_so_beside_its_claimed_sender(site: Site) -> None:
    """The history names an answer by the From it claims; one that nothing proved (no DKIM, DMARC,
    SMTP AUTH or trusted verdict) says so there, not only in its refusal."""
    from datetime import datetime, timezone

    from gateway.registry.models import Event

    number = site.letters["business"]
    letter = site.registry.letter(number)
    assert letter is not None
    now = datetime.now(timezone.utc)
    with site.registry.write() as conn:
        conn.execute(Event.__table__.insert(), [
            site.registry.event_row(letter.id, now, "sales.desk@example.org", "answer", None,
                                    {"from": "sales.desk@example.org", "authenticated": None, "command": "ack",
                                     "obeyed": False, "refused": "the sender is not proven: recorded, not obeyed"}),
            site.registry.event_row(letter.id, now, "bella@example.org", "answer", None,
                                    {"from": "bella@example.org", "authenticated": "bella@example.org",
                                     "authenticated_by": "dkim", "command": None, "obeyed": False})])
    words = visible(site.sign_in("rita").get(f"/letters/{number}").text)
    assert words.count("收到答复") == 2 and words.count("发件人未经验证") == 1, words
    assert re.search(r"Sam sam 发件人未经验证 收到答复", words), words  # beside the person it claims to be
    assert "已验证发件人： —" in words and "指令： ack" in words and "已执行： 否" in words, words
