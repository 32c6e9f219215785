"""The web register in a real browser (Debian's chromium driven by Playwright) against `gateway run`:
signing in and out, a department's queue, a confidential letter's content, acknowledging and
closing a complaint (its sender receives the result at an SMTP sink), switching language.

One daemon and one browser for the module; each test has its own browser context (cookies). A
failing test leaves a screenshot of its pages, whose path it prints."""
from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_support import SignIn, browser_fixture, rows_within_the_screen, signed_in_pages  # noqa: F401
from playwright.sync_api import Browser, Page, expect

from conftest import Daemon, Notify, make_message, wait_for
from smtp_sink import Received, SmtpSink
from test_access import LETTERS, PASSWORD, A, World, build_world

pytestmark = pytest.mark.timeout(300)


@dataclass
class Register:
    world: World
    daemon: Daemon
    sink: SmtpSink
    url: str


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def register(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Register]:
    sink = SmtpSink().start()
    tmp = tmp_path_factory.mktemp("web-browser")
    world = build_world(tmp, "", cli=False, extra=f"""
[outbound]
relay = "{sink.address}"
from_address = "gateway@example.org"
poll_seconds = 0.2
retry_min_seconds = 0.3
retry_max_seconds = 1
""")
    notify = Notify(tmp / "notify.sock")
    daemon = world.gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: listening(world.gateway.web_port), 20, "the web register")
        yield Register(world, daemon, sink, f"http://127.0.0.1:{world.gateway.web_port}")
    finally:
        output = daemon.stop()
        notify.close()
        sink.stop()
        world.registry.close()
        assert "Traceback" not in output, output[-3000:]


@pytest.fixture
def sign_in(register: Register, browser: Browser, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    """sign_in(login) -> a page of a new browser context, signed in, showing English pages."""
    yield from signed_in_pages(browser, register.url, PASSWORD, request)


def test_sign_in_and_out(register: Register, sign_in: SignIn) -> None:
    page = sign_in("mem.a")
    expect(page).to_have_url(f"{register.url}/letters?queue=departments")
    page.click("form[action='/signout'] button")
    expect(page).to_have_url(f"{register.url}/signin")
    page.goto("/letters?queue=all")
    expect(page).to_have_url(f"{register.url}/signin?next=%2Fletters%3Fqueue%3Dall")
    expect(page.locator("input[name=password]")).to_be_visible()


def test_a_wrong_password_is_refused(register: Register, browser: Browser) -> None:
    context = browser.new_context(base_url=register.url)
    try:
        page = context.new_page()
        page.goto("/signin?lang=en")
        page.fill("input[name=login]", "leader")
        page.fill("input[name=password]", "not the password")
        page.click("form[action='/signin'] button[type=submit]")
        expect(page.locator(".flash.error")).to_have_text("Wrong name or password.")
        expect(page.locator(".topbar")).to_have_count(0)
    finally:
        context.close()


def test_a_member_sees_the_queue_of_her_department_and_not_another(register: Register, sign_in: SignIn) -> None:
    world = register.world
    page = sign_in("mem.b")
    table = page.locator("main table")
    expect(table).to_contain_text(world.n("B"))
    expect(table).to_contain_text(world.n("AB"))  # reassigned to business
    expect(table).not_to_contain_text(world.n("A"))
    page.goto("/letters?queue=all")
    expect(page.locator("main table")).not_to_contain_text(world.n("A"))
    response = page.goto(f"/letters/{world.n('A')}")
    assert response is not None and response.status == 404
    other = sign_in("mem.a")
    expect(other.locator("main table")).to_contain_text(world.n("A"))
    expect(other.locator("main table")).not_to_contain_text(world.n("B"))


def test_a_confidential_letter_is_hidden_from_a_member_and_shown_to_its_owner(register: Register,
                                                                              sign_in: SignIn) -> None:
    number, subject = register.world.n("CO"), LETTERS["CO"][0]
    member = sign_in("mem.a")
    member.goto("/letters?queue=departments")
    row = member.locator("main table tr", has_text=number)
    expect(row).to_have_count(1)
    expect(row).not_to_contain_text(subject)
    member.goto(f"/letters/{number}")
    expect(member.locator(".notice")).to_contain_text("Confidential")
    expect(member.locator("main")).not_to_contain_text(subject)
    expect(member.locator("main")).not_to_contain_text("scan attached")

    owner = sign_in("owen")
    owner.goto(f"/letters/{number}")
    expect(owner.locator("h1")).to_contain_text(subject)
    expect(owner.locator("pre.body")).to_contain_text("please see the scan attached (CO)")
    expect(owner.locator(".previews img")).to_have_count(1)
    # The preview is lazy-loaded and rendered on demand: wait until the browser has decoded it.
    owner.locator(".previews img").scroll_into_view_if_needed()
    owner.wait_for_function("() => { const img = document.querySelector('.previews img');"
                            " return img.complete && img.naturalWidth > 0; }")


def test_acknowledge_then_close_with_a_result_the_sender_receives(register: Register, sign_in: SignIn) -> None:
    number = register.world.n("ACT")
    page = sign_in("mem.a")
    page.goto(f"/letters/{number}")
    page.click("button[name=action][value=ack]")
    expect(page.locator(".flash.ok")).to_have_text("Acknowledged.")
    expect(page.locator(".page-head .badge").first).to_have_class("badge status-acknowledged")
    close = page.locator("form:has(input[name=action][value=close])")
    expect(close.locator(".hint")).to_contain_text("the sender receives this result")
    close.locator("textarea[name=text]").fill("The parcel was sent again on Monday.")
    asked: list[str] = []  # closing is confirmed first; an inquiry's says the sender is mailed the result
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss() if len(asked) == 1
                                      else dialog.accept()))
    close.locator("button[type=submit]").click()  # dismissed: nothing is sent
    expect(page.locator(".page-head .badge").first).to_have_class("badge status-acknowledged")
    close.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_have_text("Closed.")
    assert len(asked) == 2 and f"Close {number}?" in asked[0] and "mailed to the sender" in asked[0]
    expect(page.locator(".page-head .badge").first).to_have_class("badge status-closed")
    expect(page.locator("table.timeline")).to_contain_text("mem.a")

    def result() -> list[Received]:
        return [r for r in register.sink.received if r.rcpt_tos == ["alice@partner.example"]
                and "The parcel was sent again on Monday." in r.message.get_content()]
    wait_for(result, 30, "the result at the sender")
    [mail] = result()
    assert number in str(mail.message["Subject"])
    letter = register.world.registry.letter(number)
    assert letter is not None and letter.status == "closed"
    assert [(e.action, e.actor) for e in letter.events if e.action in ("acknowledged", "closed")] == [
        ("acknowledged", "mem.a"), ("closed", "mem.a")]


def test_switching_language(register: Register, sign_in: SignIn) -> None:
    page = sign_in("leader")
    sign_out = page.locator("form[action='/signout'] button")
    expect(sign_out).to_have_text("Sign out")
    page.click("form[action='/me/language'] button[value=zh]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    expect(sign_out).to_have_text("退出登录")
    page.goto(f"/letters/{register.world.n('CA')}")  # the choice is kept for the next page
    expect(page.locator(".notice")).to_contain_text("机密信件")
    page.click("form[action='/me/language'] button[value=en]")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(".notice")).to_contain_text("Confidential")
    expect(page).to_have_url(f"{register.url}/letters/{register.world.n('CA')}")


def test_a_phone_sized_window_shows_pages_no_wider_than_its_screen(register: Register, sign_in: SignIn) -> None:
    page = sign_in("mem.a", lang="zh")
    page.set_viewport_size({"width": 390, "height": 800})
    for path in ("/letters?queue=departments", f"/letters/{register.world.n('ACT')}", "/dashboard", "/search?q=a"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        # The sidebar is a band above the page, not a column the page waits below.
        top = page.evaluate("document.querySelector('main#content').getBoundingClientRect().top")
        assert top < 400, (path, top)


def test_a_phone_shows_a_letters_history_without_scrolling_sideways(register: Register, sign_in: SignIn) -> None:
    """At 390 px a letter's history is read down the screen: every event, its details too, is
    within the screen, not in a table that scrolls sideways to a column out of sight."""
    page = sign_in("mem.a", lang="zh")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"/letters/{register.world.n('ACT')}")
    timeline = page.locator("table.timeline")
    expect(timeline).to_contain_text("已登记")
    rows_within_the_screen(timeline, ("td.details",), rows=3)


def test_a_phone_shows_a_letters_steps_right_after_its_register_entry(register: Register, sign_in: SignIn) -> None:
    """At 390 px the page is one column: the register entry, then the steps (acknowledge, close),
    then the text and the history, with the mail sent about it and who read it last; not the steps
    after the whole history. At 1,280 px the steps stay in the column beside the letter."""
    page = sign_in("mem.a", lang="zh")
    page.goto(f"/letters/{register.world.n('ACT2')}")  # a letter no other test here takes a step on

    def tops() -> dict[str, float]:
        return page.evaluate("""() => Object.fromEntries([
            ['entry', 'section.entry'], ['steps', 'section.actions'], ['text', 'pre.body'],
            ['history', 'table.timeline'], ['read', 'section.record:last-of-type']].map(
            ([name, css]) => [name, document.querySelector(css).getBoundingClientRect().top + window.scrollY]))""")

    page.set_viewport_size({"width": 390, "height": 800})
    at = tops()
    assert at["entry"] < at["steps"] < at["text"] < at["history"] < at["read"], at
    expect(page.locator("section.actions button[name=action][value=ack]")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 800})
    at = tops()
    assert at["steps"] < at["entry"] and at["steps"] < at["text"] < at["history"], at  # the column beside


def test_a_phone_shows_each_letter_of_a_queue_with_its_subject_and_deadline_in_sight(register: Register,
                                                                                     sign_in: SignIn) -> None:
    """At 390 px a queue is read down the screen, a letter a block: its number, subject and deadline
    within the screen, not in columns scrolled out of sight; the sort links and the box that ticks
    every letter are still there."""
    page = sign_in("mem.a", lang="zh")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/letters?queue=departments")
    table = page.locator("table.letters")
    rows = rows_within_the_screen(table, ("a.open", "td.subject", "td.when.deadline"), rows=3)
    for i in range(rows.count()):
        named = rows.nth(i).locator("td.when.deadline").evaluate("c => getComputedStyle(c, '::before').content")
        assert "办理期限" in named, (i, named)  # which of its two times is the deadline
    for control in ("thead a:has-text('收文时间')", "thead a:has-text('办理期限')", "thead input.pick-all"):
        expect(table.locator(control)).to_be_visible()


def test_a_laptop_sized_window_shows_every_column_beside_the_sidebar(register: Register, sign_in: SignIn) -> None:
    """At 1024 and 1200 px, in either language: no page scrolls sideways, and no table scrolls
    within its box: a queue's deadline (its last column), the dashboard's figures and the people
    list are in sight without it, even with a long unbroken address in a queue and in the list."""
    world = register.world
    long_mail = world.gateway.config.parent / "long-address.eml"
    long_mail.write_bytes(make_message(90, subject="Long address", to="liaison@example.org",
                                       sender="Verylong <verylongmailboxname1234@correspondence-partners.example>"))
    world.gateway.run("ingest", str(long_mail))
    world.people.add("long.address", emails=["verylongmailboxname1234@correspondence-partners.example"],
                     password=PASSWORD, actor="test")
    visible = "Math.max(0, ...[...document.querySelectorAll('.table-wrap')].map(w => w.scrollWidth - w.clientWidth))"
    for login, paths in (("mem.a", ["/letters?queue=departments"]), ("reg", ["/letters?queue=all", "/dashboard"]),
                         ("admin", ["/people"])):
        for lang in ("zh", "en"):
            page = sign_in(login, lang=lang)
            for width in (1024, 1200):
                page.set_viewport_size({"width": width, "height": 800})
                for path in paths:
                    page.goto(path)
                    assert page.evaluate("document.documentElement.scrollWidth") <= width, (login, lang, width, path)
                    assert page.evaluate(visible) == 0, (login, lang, width, path)
            page.context.close()


def printed_text(page: Page) -> tuple[str, list[tuple[float, float]]]:
    """The page as Chromium prints it, to PDF: its text (pdftotext keeps the layout's order) and
    each sheet's size in points."""
    with tempfile.TemporaryDirectory(prefix="gw-print-") as tmp:
        pdf = Path(tmp) / "page.pdf"
        page.emulate_media(media="print")
        page.pdf(path=str(pdf), prefer_css_page_size=True)
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        info = subprocess.run(["pdfinfo", "-l", "99", str(pdf)], capture_output=True, text=True, check=True).stdout
    sizes = [(float(m[1]), float(m[2])) for m in re.finditer(r"Page +\d+ size: +([\d.]+) x ([\d.]+)", info)]
    return " ".join(text.split()), sizes


def test_a_letter_prints_as_its_processing_slip_and_a_queue_as_a_sheet_of_the_register(
        register: Register, sign_in: SignIn) -> None:
    """On paper a letter is its processing slip (收文处理单), with boxes for the handwritten
    proposal, instruction and result, and a queue is a sheet of the register, across an A4 page:
    what the page records, never its navigation, search, filters or forms; and a person who may
    not read a letter's content does not print it either."""
    world = register.world
    page = sign_in("reg", lang="zh")
    page.goto(f"/letters/{world.n('A')}")
    button = page.locator("button[data-print]")
    expect(button).to_have_text("打印处理单")
    # The button opens the browser's print dialogue (which a headless browser has not).
    page.evaluate("() => { window.print = () => { window.printed = (window.printed || 0) + 1; }; }")
    button.click()
    assert page.evaluate("window.printed") == 1
    text, sizes = printed_text(page)
    assert sizes and all(width < height for width, height in sizes), sizes  # portrait
    for shown in ("收文处理单", "打印人：reg", world.n("A"), LETTERS["A"][0], "登记信息", "办理记录",
                  "拟办意见", "领导批示", "办理结果", "签名", "日期"):
        assert shown in text, (shown, text)
    for hidden in ("退出登录", "检索", "添加备注", "转办", "打印处理单", "分办依据", "查阅记录", "下载原件"):
        assert hidden not in text, (hidden, text)
    expect(page.locator(".sidebar")).to_be_hidden()
    expect(button).to_be_hidden()

    page.emulate_media(media="screen")
    world.registry.set_reference(world.n("A"), "京应急函〔2026〕3号", actor="reg")
    page.goto(f"/letters?queue=all&department={A}&sort=number")
    assert "京应急函" not in page.locator("table.grid.letters").inner_text()  # too wide beside the sidebar
    expect(page.locator("button[data-print]")).to_have_text("打印")
    text, sizes = printed_text(page)
    assert sizes and all(width > height for width, height in sizes), sizes  # landscape
    assert "收文登记簿" in text and "全部信件 · 部门：General Office" in text, text
    assert "来文字号" in text and "京应急函" in text, text  # a column of the register on paper
    shown_rows = page.locator("table.grid.letters tbody tr").count()
    assert f"第 1–{shown_rows} 件，共 {shown_rows} 件" in text, text
    for name in ("A", "CA", "CO", "ACT"):
        assert world.n(name) in text, (name, text)
    assert world.n("B") not in text
    for hidden in ("筛选", "清除", "保存视图", "导出 CSV", "对所选信件执行", "退出登录"):
        assert hidden not in text, (hidden, text)

    # A member who may see the confidential letter's entry, not its content: nor on paper.
    member = sign_in("mem.a", lang="zh")
    member.goto(f"/letters/{world.n('CO')}")
    text, _sizes = printed_text(member)
    assert world.n("CO") in text and "收文处理单" in text, text
    assert LETTERS["CO"][0] not in text and "scan attached" not in text, text
