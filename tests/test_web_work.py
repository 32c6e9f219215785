"""The web register's daily-work pages in a real browser (Debian's chromium driven by Playwright):
Chinese search (a two-character word inside a sentence, traditional finding simplified, never a
letter the person may not see nor a confidential letter by its content), the triage desk settled
in one click, fifty letters acknowledged at once with the refused ones and their reasons, a saved
view, and the keyboard.

One register (web_support.Site on a real uvicorn) and one browser for the module; each test has its
own browser context. A failing test leaves screenshots of its pages and prints their paths."""
from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from conftest import make_message
from fax_samples import ENGLISH, pdf_fax, tiff_fax
from browser_support import SignIn, browser_fixture, signed_in_pages  # noqa: F401  (the `browser` fixture)
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import text
import web_support
from web_support import ORDERS_RULE, PASSWORD, WEB_RULES, Site

from gateway.services.paper import PaperLetter, Scan, register_paper
from gateway.services.people import Principal

pytestmark = pytest.mark.timeout(300)

# 订单 nearly matches "orders" (see ORDERS_RULE); 批量 marks the letters acted on at once (category
# official).
RULES = WEB_RULES.replace("rules:\n", "rules:\n" + ORDERS_RULE + """\
  - name: batch
    when:
      keywords: {any: ["批量"], in: [subject]}
    set: {category: external.official}
    stop: false
""", 1)
BATCH = 50
FORBIDDEN = range(40, 45)  # reassigned away from Business: sam sees them but may not acknowledge them
DONE_BEFORE = range(45, 50)  # already acknowledged
# Fax-to-email: the fax's number from the subject, its sender (the station's name) from the text.
FAX_MAIL = """
[fax.email]
senders = ["fax@faxservice.example"]
body_pattern = '(?i)station (?P<sender_name>[^.\\n]+)'
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("web-work"), rules=RULES, extra=FAX_MAIL)
    s.add_people()
    operator = Principal.operator("test")
    for i in range(BATCH):
        s.ingest(f"batch{i}", make_message(100 + i, subject=f"批量 {i} 报价单", to="sales@example.org"))
    for i in FORBIDDEN:
        s.access.act(operator, s.letters[f"batch{i}"], "reassign", department="general-office", text="moved")
    for i in DONE_BEFORE:
        s.access.act(operator, s.letters[f"batch{i}"], "ack")
    s.ingest("contract", make_message(1, subject="关于供货合同的续签", to="sales@example.org",
                                      body="续签条款见附件。\n"))
    s.ingest("office-contract", make_message(2, subject="合同归档通知", to="liaison@example.org"))
    s.ingest("complaint", make_message(3, subject="投诉：送货延误三天", to="liaison@example.org"))
    s.ingest("secret", make_message(4, subject="机密：价格调整", to="sales@example.org",
                                    body="保密条款另行约定。\n"))
    s.ingest("urgent", make_message(5, subject="紧急：会议通知", to="liaison@example.org"))
    s.ingest("order", make_message(6, subject="新订单询价", to="nobody@example.org"))
    s.ingest("first", make_message(7, subject="Keyboard first", to="sales@example.org"))  # newest of Business
    add_senders(s)
    yield s
    s.close()


def add_senders(site: Site) -> None:
    """A letter by mail, a fax by mail, a drop-folder fax (its number only) and a paper letter, all
    on the triage desk (the faxes and the paper letter as when their text leads the rules nowhere)."""
    site.ingest("mail-sender", make_message(8, subject="Who sent this", to="nobody@example.org",
                                            sender="Carol Customer <carol@customer.example>"))
    fax = EmailMessage()
    fax["From"], fax["To"] = "Fax Service <fax@faxservice.example>", "nobody@example.org"
    fax["Subject"], fax["Date"] = "Fax from +86 21 6666 7777 (1 page)", "Mon, 23 Nov 2026 10:00:00 +0800"
    fax.set_content("You have received a fax from station 东方机电.\n")
    fax.add_attachment(pdf_fax([ENGLISH]), maintype="application", subtype="pdf", filename="fax.pdf")
    site.ingest("fax-mail", bytes(fax))
    site.ingest("fax-drop", tiff_fax([["ONE PAGE"]]), filename="fax_+8620123456_20261122-090000.tif")
    paper = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
        channel="post", sender_name="王芳", scans=[Scan("a.pdf", pdf_fax([ENGLISH]))]), by="rita", intake="web")
    assert paper.number
    site.letters["paper"] = paper.number
    with site.registry.write() as conn:
        conn.execute(text("UPDATE letters SET status = 'needs-triage', department = NULL WHERE number IN "
                          "(:a, :b, :c)"), {"a": site.letters["fax-mail"], "b": site.letters["fax-drop"],
                                            "c": paper.number})


# Each kind of letter's sender as its register entry shows it: (name, address).
SENDERS = {"mail-sender": ("Carol Customer", "carol@customer.example"),
           "fax-mail": ("Fax Service", "fax@faxservice.example"),  # the mail's sender, not the fax's
           "fax-drop": ("", "+8620123456"), "paper": ("王芳", "")}


@pytest.fixture
def sign_in(site: Site, browser: Browser, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    """sign_in(login, lang="en") -> a page of a new browser context, signed in, in that language."""
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def search(page: Page, text: str) -> None:
    """Search from the top bar, as a person types."""
    page.fill("#search-q", text)
    page.press("#search-q", "Enter")
    expect(page.locator("main h1")).to_have_text("Search" if page.locator("html").get_attribute("lang") == "en"
                                                 else "检索")
    expect(page.locator("main form.search-form input[name=q]")).to_have_value(text)


def test_chinese_search_finds_words_in_sentences_and_traditional_for_simplified(site: Site,
                                                                                sign_in: SignIn) -> None:
    n = site.letters
    sam = sign_in("sam", "zh")
    search(sam, "合同")  # inside 关于供货合同的续签
    results = sam.locator("main table.letters")
    expect(results).to_contain_text(n["contract"])
    expect(results).to_contain_text("关于供货合同的续签")
    # The General Office's letter with 合同 is not sam's to see.
    expect(results).not_to_contain_text(n["office-contract"])
    expect(results.locator("tbody tr")).to_have_count(1)

    gina = sign_in("gina", "zh")
    search(gina, "投訴")  # traditional; the letter says 投诉
    expect(gina.locator("main table.letters")).to_contain_text(n["complaint"])
    search(gina, "合同")
    expect(gina.locator("main table.letters")).to_contain_text(n["office-contract"])
    expect(gina.locator("main table.letters")).not_to_contain_text(n["contract"])
    rows = site.registry.audit_rows(actor="gina", action="search", limit=10)
    assert [row.subject for row, _ in rows][:2] == ["合同", "投訴"]


def test_a_confidential_letters_content_finds_nothing_for_those_who_may_not_read_it(site: Site,
                                                                                    sign_in: SignIn) -> None:
    n = site.letters
    for login in ("gina", "leo", "sam"):  # another department; a leader; Business, but not its head
        page = sign_in(login)
        search(page, "保密条款")
        expect(page.locator("main .empty")).to_contain_text("No letter you may see holds")
        expect(page.locator("main table.letters")).to_have_count(0)
    head = sign_in("bella")  # heads Business: reads its confidential letters
    search(head, "保密条款")
    expect(head.locator("main table.letters")).to_contain_text(n["secret"])
    expect(head.locator("main table.letters")).to_contain_text("机密：价格调整")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_rows_and_the_triage_desk_show_each_kind_of_letters_sender_as_its_register_entry(
        site: Site, sign_in: SignIn, lang: str) -> None:
    page = sign_in("rita", lang)
    page.goto("/letters?queue=triage")
    for name, (who, address) in SENDERS.items():
        number = site.letters[name]
        entry = site.access.entry(site.registry.letter(number))  # type: ignore[arg-type]
        assert (entry.sender_name, entry.sender_address) == (who, address), name
        cell = page.locator(f"tr[data-href$='/{number}'] td.sender")
        expect(cell.locator("span").nth(0)).to_have_text(who)
        expect(cell.locator("span.muted")).to_have_text(address)
    page.goto("/triage")
    for name, (who, address) in SENDERS.items():
        meta = page.locator(f"article#t-{site.letters[name]} p.triage-meta")
        expect(meta).to_contain_text(f" · {who} <{address}>" if address else f" · {who}")
        expect(meta).not_to_contain_text("<>")  # a sender without an address: no empty brackets


def test_triage_settled_in_one_click(site: Site, sign_in: SignIn) -> None:
    number = site.letters["order"]
    page = sign_in("rita")
    page.goto("/triage")
    item = page.locator(f"article#t-{number}")
    expect(item).to_contain_text("新订单询价")
    expect(item.locator(".triage-why")).to_contain_text("Likely: Business")
    item.locator("button[name=department][value=business]").click()
    expect(page.locator(".flash.ok")).to_have_text(f"{number} sent to Business.")
    expect(page.locator(f"article#t-{number}")).to_have_count(0)
    letter = site.registry.letter(number)
    assert letter is not None and letter.department == "business"
    [event] = [e for e in letter.events if e.action == "reassigned"]
    assert event.actor == "rita"
    assert "Settled on the triage page" in str(event.details)
    # The words come from the register, never from the link: a forged one says nothing.
    page.goto("/triage?done=Your+session+expired%2C+call+0800&to=business")
    expect(page.locator(".flash")).to_have_count(0)
    page.goto(f"/triage?done={number}&to=hr")  # not where the letter is
    expect(page.locator(".flash")).to_have_count(0)
    page.goto(f"/triage?done={site.letters['office-contract']}&to=general-office")
    expect(page.locator(".flash.ok")).to_have_text(f"{site.letters['office-contract']} sent to General Office.")
    sam = sign_in("sam")  # Business: never sees the General Office's letter, so is not told of it
    sam.goto(f"/triage?done={site.letters['office-contract']}&to=general-office")
    expect(sam.locator(".flash")).to_have_count(0)


def test_bulk_acknowledge_of_fifty_letters_some_refused_with_reasons(site: Site, sign_in: SignIn) -> None:
    numbers = [site.letters[f"batch{i}"] for i in range(BATCH)]
    page = sign_in("sam")
    page.goto("/letters?queue=all&category=external.official")
    rows = page.locator("main table.letters tbody tr")
    expect(rows).to_have_count(BATCH)
    page.check("main table.letters thead input.pick-all")
    expect(page.locator("[data-bulk-count]")).to_have_text(f"{BATCH} selected")
    page.select_option("select[name=action]", "ack")
    page.click("form#bulk button[type=submit]")
    expect(page.locator(".bulk-summary")).to_contain_text("40 letters done. 10 refused")
    refused = page.locator("table.bulk-results tr.refused")
    expect(refused).to_have_count(10)
    expect(page.locator("table.bulk-results tr.done")).to_have_count(40)
    for i in FORBIDDEN:
        row = page.locator("table.bulk-results tr", has_text=numbers[i])
        expect(row).to_contain_text("refused")
        expect(row).to_contain_text("only the people of department General Office may ack")
    for i in DONE_BEFORE:
        row = page.locator("table.bulk-results tr", has_text=numbers[i])
        expect(row).to_contain_text(f"{numbers[i]} is acknowledged: it cannot be acknowledged")
    for i, number in enumerate(numbers):
        letter = site.registry.letter(number)
        assert letter is not None
        acks = [e.actor for e in letter.events if e.action == "acknowledged"]
        if i in FORBIDDEN:
            assert letter.status == "routed" and acks == []
        elif i in DONE_BEFORE:
            assert acks == ["test"]
        else:
            assert letter.status == "acknowledged" and acks == ["sam"]
    # The refusals in Chinese for a Chinese page.
    page.click("form[action='/me/language'] button[value=zh]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    page.goto("/letters?queue=all&category=external.official&status=routed")
    expect(page.locator("main table.letters tbody tr")).to_have_count(len(FORBIDDEN))
    page.locator(f"main table.letters input[name=number][value='{numbers[40]}']").check()
    page.click("form#bulk button[type=submit]")
    expect(page.locator("table.bulk-results tr.refused")).to_contain_text("只有")


def test_a_bulk_reassignment_asks_for_its_reason_before_it_is_sent(site: Site, sign_in: SignIn) -> None:
    page = sign_in("rita")
    page.goto("/letters?queue=all")
    page.locator("main table.letters tbody input[name=number]").first.check()
    reason = page.locator("form#bulk input[name=text]")
    department = page.locator("form#bulk select[name=department]")
    page.select_option("select[name=action]", "tag")
    expect(reason).not_to_have_attribute("required", "")
    page.select_option("select[name=action]", "reassign")
    expect(page.locator("form#bulk [data-bulk-for='assign reassign tag'] span")).to_have_text("Reason (required)")
    page.click("form#bulk button[type=submit]")  # neither department nor reason: the browser holds it back
    assert department.evaluate("e => e.validity.valueMissing")
    department.select_option("business")
    page.click("form#bulk button[type=submit]")
    assert reason.evaluate("e => e.validity.valueMissing")
    # With its reason, it is confirmed first, naming how many letters go where; dismissed, nothing is sent.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    reason.fill("Their business")
    page.click("form#bulk button[type=submit]")
    expect(page.locator("form#bulk")).to_be_visible()
    assert asked == ["Reassign the 1 selected letters to Business? Each leaves its department, and the new one is "
                     "notified."]
    expect(page.locator(".bulk-summary")).to_have_count(0)
    assert "/letters/bulk" not in page.url
    page.select_option("select[name=action]", "assign")  # a note is optional there
    assert not reason.evaluate("e => e.required")


def test_a_bulk_reassignment_without_its_department_or_reason_is_bad_input_with_the_way_back(site: Site) -> None:
    """Sent without the browser's checks: the form's fault said once (400), not a refusal on every
    letter; nothing is done, and the page leads back to the list it came from."""
    site.people.set_language("rita", "en")
    rita = site.sign_in("rita")
    numbers = [site.letters["batch0"], site.letters["batch1"]]
    before = {n: len(site.registry.letter(n).events) for n in numbers}  # type: ignore[union-attr]
    back = "/letters?queue=all&category=external.official"
    for fields, says in (({"text": "Their business"}, "choose the department to send it to"),
                         ({"department": "general-office"}, "a reassignment needs a reason"),
                         ({"department": "nowhere", "text": "Their business"}, "no department &#39;nowhere&#39;")):
        refused = rita.post("/letters/bulk", data={"csrf": rita.csrf, "action": "reassign", "number": numbers,
                                                   "back": back, **fields})
        assert refused.status_code == 400, (fields, refused.status_code)
        assert f"Not done: {says}" in refused.text and "bulk-results" not in refused.text
        assert f'href="{back.replace("&", "&amp;")}"' in refused.text
    assert {n: len(site.registry.letter(n).events) for n in numbers} == before  # type: ignore[union-attr]


def test_reassigning_one_letter_is_confirmed_first_like_several(site: Site, sign_in: SignIn) -> None:
    """The letter page's reassignment asks first, naming the letter and where it goes, in the
    page's language; dismissed, nothing is sent; accepted, the letter moves."""
    number = site.letters["urgent"]
    page = sign_in("rita", lang="zh")
    page.goto(f"/letters/{number}")
    form = page.locator("form:has(input[name=action][value=reassign])")
    page.click("details:has(input[name=action][value=reassign]) summary")
    form.locator("select[name=department]").select_option("business")
    form.locator("input[name=text]").fill("属业务部门")
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    form.locator("button[type=submit]").click()
    expect(form).to_be_visible()
    assert asked == [f"确认将 {number} 转办至 Business？信件将离开原部门，并通知新部门。"]
    letter = site.registry.letter(number)
    assert letter is not None and letter.department == "general-office"
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_have_text("已转办。")
    assert len(asked) == 2
    letter = site.registry.letter(number)
    assert letter is not None and letter.department == "business"


def test_a_saved_view_is_in_the_sidebar_and_applies_its_filters(site: Site, sign_in: SignIn) -> None:
    page = sign_in("rita")
    page.goto("/letters?queue=all&urgency=urgent")
    page.click("details.save-view summary")
    page.fill("form[action='/views'] input[name=name]", "紧急件")
    page.click("form[action='/views'] button[type=submit]")
    expect(page.locator("main h1")).to_contain_text("紧急件")
    link = page.locator(".sidebar ul.views a", has_text="紧急件")
    expect(link).to_have_count(1)

    page.goto("/letters?queue=all")
    expect(page.locator("main table.letters tbody tr")).not_to_have_count(1)
    page.locator(".sidebar ul.views a", has_text="紧急件").click()
    expect(page.locator("main h1")).to_contain_text("紧急件")
    expect(page.locator("form.filters select[name=urgency]")).to_have_value("urgent")
    rows = page.locator("main table.letters tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(site.letters["urgent"])
    assert "urgency=urgent" in page.url

    asked: list[str] = []  # deleting is confirmed first, naming the view
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("form[action$='/delete'] button[type=submit]")
    expect(page.locator(".sidebar ul.views")).to_have_count(0)
    assert asked == ["Delete the saved view “紧急件”? The letters stay as they are."]
    expect(page.locator("main h1")).to_have_text("All letters")


def test_a_view_name_of_only_spaces_is_refused_as_bad_input_with_the_way_back_to_its_list(site: Site) -> None:
    """The form's `required` lets spaces through: the refusal says what the name needs (400, bad
    input, not "not possible now"), saves nothing, and leads back to the list with its filters."""
    rita = site.sign_in("rita")
    views_before = saved_views(rita)
    refused = rita.post("/views", data={"csrf": rita.csrf, "name": "   ", "queue": "all", "urgency": "urgent",
                                        "sort": "deadline"})
    assert refused.status_code == 400 and "a view needs a name of 1 to 60 characters" in refused.text
    assert '<a href="/letters?queue=all&amp;urgency=urgent&amp;sort=deadline">Back to the list</a>' in refused.text
    assert saved_views(rita) == views_before


def test_a_saved_view_keeps_the_queues_page_size(site: Site) -> None:
    """A queue shown 100 letters a page and saved as a view opens again 100 a page, from the save
    and from the sidebar."""
    rita = site.sign_in("rita")
    listed = rita.get("/letters?queue=all&per_page=100&sort=number").text
    form = re.search(r'<form method="post" action="/views".*?</form>', listed, re.S)
    assert form is not None
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(0)))
    assert fields["per_page"] == "100"
    saved = rita.post("/views", data={**fields, "name": "每页一百"})
    assert saved.status_code == 303
    location = saved.headers["location"]
    assert "per_page=100" in location
    opened = rita.get(location).text
    assert '<strong aria-current="true">100</strong>' in opened
    assert len(re.findall(r'<tr data-href="/letters/', opened)) > 50
    view_id = re.search(r"view=(\d+)", location)
    assert view_id is not None
    link = re.search(rf'<a href="(/letters\?[^"]*view={view_id.group(1)})"', opened)
    assert link is not None and "per_page=100" in link.group(1)
    assert rita.post(f"/views/{view_id.group(1)}/delete", data={"csrf": rita.csrf}).status_code == 303


def saved_views(client: web_support.Browser) -> list[str]:
    """The saved views in the sidebar, by name."""
    page = client.get("/letters?queue=all").text
    return re.findall(r'<li><a href="/letters\?[^"]*view=\d+"[^>]*><span>([^<]*)</span>', page)


def test_keyboard_moves_through_a_queue_selects_opens_and_shows_its_help(site: Site, sign_in: SignIn) -> None:
    page = sign_in("sam")
    page.goto("/letters?queue=departments")
    rows = page.locator("main table.letters tbody tr")
    page.keyboard.press("j")
    expect(rows.nth(0)).to_have_class("kb-current")
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class("kb-current")
    expect(rows.nth(0)).not_to_have_class("kb-current")
    page.keyboard.press("ArrowUp")
    expect(rows.nth(0)).to_have_class("kb-current")

    help_box = page.locator("#kb-help")
    expect(help_box).to_be_hidden()
    page.keyboard.press("?")
    expect(help_box).to_be_visible()
    expect(help_box).to_contain_text("next letter")
    page.keyboard.press("Escape")
    expect(help_box).to_be_hidden()

    page.keyboard.press("/")
    expect(page.locator("#search-q")).to_be_focused()
    page.keyboard.press("Escape")

    page.keyboard.press("Enter")
    first = site.letters["first"]
    expect(page).to_have_url(f"{site.url}/letters/{first}")
    expect(page.locator("h1")).to_contain_text("Keyboard first")

    page.keyboard.press("g")
    page.keyboard.press("d")
    expect(page).to_have_url(f"{site.url}/letters?queue=departments")
    page.keyboard.press("j")
    page.keyboard.press("x")
    expect(rows.nth(0).locator("input[name=number]")).to_be_checked()
    expect(page.locator("[data-bulk-count]")).to_have_text("1 selected")
    page.keyboard.press("a")
    expect(page.locator(".bulk-summary")).to_contain_text("1 letter done")
    letter = site.registry.letter(first)
    assert letter is not None and letter.status == "acknowledged"
