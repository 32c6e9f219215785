"""The dashboard, the reports and the operations page over a real server: the dashboard's numbers
checked against the register and against the queues they link to, for the registry office and for
a member who sees one department; report downloads and their audit rows; a quarantined item and
an undeliverable mail retried; the wrong roles refused; the charts drawn in chromium."""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update
from web_support import PASSWORD, Browser, Site

from gateway.registry import lifecycle
from gateway.registry.models import Letter
from gateway.services.people import Principal

pytestmark = pytest.mark.timeout(120)
FIGURE = re.compile(r'<a class="figure[^"]*" href="([^"]+)"( title="[^"]*")?>(\d+)')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The standard people and letters, with known deadlines and states:
    business overdue, office closed late, secret due within the hour (and this week), inquiry closed on
    time, urgent acknowledged and overdue, one in triage, the fax received 40 days ago."""
    s = Site(tmp_path_factory.mktemp("web-overview"))
    s.add_people()
    s.add_letters()
    now = datetime.now(timezone.utc)
    n = s.letters
    with s.registry.write() as conn:
        for name, deadline in (("business", now - timedelta(days=2)), ("office", now - timedelta(days=1)),
                               ("secret", within_the_week(s, now)), ("urgent", now - timedelta(days=1))):
            conn.execute(update(Letter).where(Letter.number == n[name]).values(deadline=deadline))
        conn.execute(update(Letter).where(Letter.number == n["fax"]).values(received_at=now - timedelta(days=40)))
    gina, sam = principal(s, "gina"), principal(s, "sam")
    s.access.act(gina, n["office"], "close", text="done late", address="127.0.0.1")
    s.access.act(sam, n["inquiry"], "close", text="Delivery on Monday.", address="127.0.0.1")
    s.access.act(gina, n["urgent"], "ack", address="127.0.0.1")
    yield s
    s.close()


def week_stop(site: Site, now: datetime) -> datetime:
    """The end of the register's week (Sunday midnight where it is) that `now` is in."""
    tz = ZoneInfo(site.config.model.gateway.timezone)
    today = now.astimezone(tz).date()
    return datetime.combine(today + timedelta(days=7 - today.weekday()), datetime.min.time(), tz)


def within_the_week(site: Site, now: datetime) -> datetime:
    """Within the hour, and before the week ends: late on a Sunday the hour would be next week's."""
    return now + min(timedelta(hours=1), (week_stop(site, now) - now) / 2)


def principal(site: Site, login: str) -> Principal:
    who = site.people.principal(login)
    assert who is not None
    return who


def due_now(site: Site) -> None:
    """The letters as the fixture left them, but as of now: the module's letters were made minutes
    ago, and a day, a week or a month may have ended since (at midnight in Shanghai, where the
    register counts its days). The six mails received now, the fax 40 days ago, the secret letter
    due within the week."""
    now = datetime.now(timezone.utc)
    with site.registry.write() as conn:
        conn.execute(update(Letter).where(Letter.number.in_([n for name, n in site.letters.items() if name != "fax"]))
                     .values(received_at=now))
        conn.execute(update(Letter).where(Letter.number == site.letters["fax"])
                     .values(received_at=now - timedelta(days=40)))
        conn.execute(update(Letter).where(Letter.number == site.letters["secret"])
                     .values(deadline=within_the_week(site, now)))


def local_day(site: Site) -> date:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(site.config.model.gateway.timezone)).date()


def on_one_day(site: Site, check: Callable[[], None]) -> None:
    """`check` run again if the register's day ended while it ran: the page it read and the figures
    it worked out here would then count different days (today's intake, this week, this month)."""
    for _ in range(2):
        day = local_day(site)
        due_now(site)
        try:
            check()
            return
        except AssertionError:
            if local_day(site) == day:
                raise


def figures(html: str) -> list[tuple[str, bool, int]]:
    """(queue URL, exact, number) of every number on a page."""
    return [(url.replace("&amp;", "&"), not title, int(count)) for url, title, count in FIGURE.findall(html)]


def queue_total(client: Browser, url: str) -> int:
    page = client.get(url)
    assert page.status_code == 200, url
    found = re.search(r"<h1>[^<]*</h1>\s*<p class=\"muted\">\D*(\d+)", page.text)
    assert found, url
    return int(found.group(1))


def tile(html: str, name: str) -> int:
    found = re.search(rf'id="tile-{name}">\s*<h2>[^<]*</h2>\s*<(?:a|span) class="figure big"[^>]*>(\d+)', html)
    assert found, name
    return int(found.group(1))


def expected(site: Site, who: Principal) -> dict[str, object]:
    """The dashboard's figures worked out here from the letters themselves."""
    tz = ZoneInfo(site.config.model.gateway.timezone)
    now = datetime.now(timezone.utc)
    today = now.astimezone(tz).date()
    stop = week_stop(site, now)
    month_start = datetime.combine(today.replace(day=1), datetime.min.time(), tz)
    letters = site.registry.letters(scope=site.access.scope(who))
    open_ = [x for x in letters if x.status in lifecycle.OPEN]
    by_department: dict[str, int] = {}
    for x in open_:
        if x.department:
            by_department[x.department] = by_department.get(x.department, 0) + 1
    closed = [x for x in letters if x.received_at >= month_start and x.status == "closed"]
    on_time = [x for x in closed if x.deadline is None or max(e.at for e in site.registry.letter(x.number).events
                                                                if e.action == "closed") <= x.deadline]
    return {
        "intake": sum(1 for x in letters if x.received_at.astimezone(tz).date() == today),
        "open": len(open_), "by_department": by_department,
        "overdue": sum(1 for x in open_ if x.deadline and x.deadline < now),
        "week": sum(1 for x in open_ if x.deadline and now <= x.deadline < stop),
        "triage": sum(1 for x in letters if x.status == "needs-triage"),
        "closed": len(closed), "on_time": len(on_time),
    }


def test_the_dashboard_counts_the_register_and_each_number_opens_its_letters(site: Site) -> None:
    rita = site.sign_in("rita")

    def check() -> None:
        page = rita.get("/dashboard")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        want = expected(site, principal(site, "rita"))
        assert want == {"intake": 6, "open": 5, "by_department": {"business": 2, "general-office": 3},
                        "overdue": 2, "week": 1, "triage": 1, "closed": 2, "on_time": 1}
        html = page.text
        assert (tile(html, "intake"), tile(html, "open"), tile(html, "overdue"), tile(html, "week"),
                tile(html, "triage")) == (want["intake"], want["open"], want["overdue"], want["week"], want["triage"])
        assert "50%" in html  # timeliness this month: the inquiry on time, the office letter late
        assert tile(html, "quarantine") == len(site.spool.quarantined())
        numbers = figures(html)
        exact = [(url, count) for url, is_exact, count in numbers if is_exact]
        assert len(exact) >= 10
        for url, count in exact:
            assert queue_total(rita, url) == count, url
        # The numbers without an exact queue open one that holds at least as many letters.
        for url, is_exact, count in numbers:
            if not is_exact:
                assert queue_total(rita, url) >= count, url
        assert ("/letters?queue=overdue&department=business", True, 1) in numbers
        assert ("/letters?queue=all&department=general-office&status=acknowledged", True, 1) in numbers
        assert ("/letters?queue=triage", True, 1) in numbers

    on_one_day(site, check)


def test_a_member_sees_only_the_figures_of_their_departments(site: Site) -> None:
    sam = site.sign_in("sam")

    def check() -> None:
        html = sam.get("/dashboard").text
        want = expected(site, principal(site, "sam"))
        assert want["by_department"] == {"business": 2} and want["intake"] == 3
        assert (tile(html, "intake"), tile(html, "open"), tile(html, "overdue"), tile(html, "week")) == (
            want["intake"], want["open"], want["overdue"], want["week"])
        assert "General Office" not in html and "department=general-office" not in html
        assert 'id="tile-quarantine"' not in html and "/operations" not in html
        for url, is_exact, count in figures(html):
            if is_exact:
                assert queue_total(sam, url) == count, url

    on_one_day(site, check)


def test_a_letter_due_on_sunday_is_due_this_week_as_the_dashboard_says(site: Site) -> None:
    """The week's figure counts a deadline on Sunday itself, and its caption says so in Chinese:
    up to Sunday, not before it."""
    now = datetime.now(timezone.utc)
    stop = week_stop(site, now)
    sunday = max(stop - timedelta(hours=1), now + (stop - now) / 2)  # late on Sunday, still to come
    try:
        with site.registry.write() as conn:
            conn.execute(update(Letter).where(Letter.number == site.letters["secret"]).values(deadline=sunday))
        html = site.sign_in("rita").get("/dashboard").text
        assert tile(html, "week") == expected(site, principal(site, "rita"))["week"] == 1
        day = (stop - timedelta(days=1)).date().isoformat()
        caption = re.search(r'id="tile-week">.*?<p class="parts muted">([^<]*)</p>', html, re.S)
        assert caption is not None and caption.group(1) == f"未办结，办理期限不晚于本周日（{day}）", caption
    finally:
        due_now(site)


def test_reports_in_the_browser_and_downloaded_as_html_csv_and_json(site: Site) -> None:
    due_now(site)  # the six mails in this month's report
    tz = ZoneInfo(site.config.model.gateway.timezone)
    month = datetime.now(timezone.utc).astimezone(tz).strftime("%Y-%m")
    rita = site.sign_in("rita")
    page = rita.get(f"/reports?period={month}")
    assert page.status_code == 200 and page.text.count('class="chart bars"') == 3
    assert f"收文日期 {month}-01 至 " in page.text  # the local dates
    assert site.letters["business"] in page.text  # overdue at the report's moment
    late = re.search(r'<td class="num nowrap" title="[0-9.]+">([^<]*)</td>', page.text)
    assert late is not None and re.fullmatch(r"\d+ 天", late.group(1))  # whole days, not "2.0"
    data = rita.get(f"/reports/download?period={month}&format=json")
    assert data.headers["content-disposition"].startswith("attachment") and data.headers["cache-control"] == "no-store"
    report = json.loads(data.text)
    assert report["letters"] == 6 and report["first_day"] == f"{month}-01"
    assert report["timeliness"] == {"closed": 2, "closed_within_deadline": 1, "rate": 0.5}
    text = rita.get(f"/reports/download?period={month}&format=csv").text
    table = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert ["period", "first_day", f"{month}-01"] in table and ["timeliness", "rate", "0.5"] in table
    html = rita.get(f"/reports/download?period={month}&format=html")
    assert html.text.startswith("<!DOCTYPE html>") and html.headers["content-type"].startswith("text/html")
    assert "sandbox" in html.headers["content-security-policy"]
    rows = site.access.audit(principal(site, "audrey"), actor="rita", action="export")
    assert {r.subject for r in rows} >= {f"report {month} ({fmt})" for fmt in ("json", "csv", "html")}
    # Auditors read the figures, not the letters: no subjects in their overdue list.
    audrey = site.sign_in("audrey")
    theirs = json.loads(audrey.get(f"/reports/download?period={month}&format=json").text)
    assert theirs["overdue"] and all(o["subject"] == "" for o in theirs["overdue"])
    assert "Order 4711" not in audrey.get(f"/reports?period={month}").text
    assert rita.get("/reports?period=2026-13").status_code == 400
    # A period without letters: a dash where a mean would be, no unit after it.
    empty = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", rita.get("/reports?period=2020-01").text))
    assert "— 小时" not in empty and "—" in empty, empty
    assert rita.get(f"/reports/download?period={month}&format=pdf").status_code == 404
    # An archived letter's subject is read only through a borrowing: not in the registry office's list.
    from sqlalchemy import update

    from gateway.registry.models import Letter

    with site.registry.writer.begin() as conn:
        conn.execute(update(Letter).where(Letter.number == site.letters["business"]).values(status="archived"))
    listed = json.loads(rita.get(f"/reports/download?period={month}&format=json").text)["overdue"]
    [archived] = [o for o in listed if o["number"] == site.letters["business"]]
    assert archived["subject"] == "" and any(o["subject"] for o in listed if o["status"] != "archived")
    assert "Order 4711" not in rita.get(f"/reports?period={month}").text


def test_operations_retries_a_quarantined_item_and_an_undeliverable_mail(site: Site) -> None:
    item = site.spool.quarantine_new(b"not a message", {"intake": "smtp"}, "cannot read item: test")
    mail = site.registry.outbox_due(1)[0]  # claimed, as the sender does before giving a mail up
    assert site.registry.outbox_dead(mail.id, "550 5.1.1 no such user")
    held = site.spool.enqueue(b"Subject: x\r\n\r\nx\r\n", {"intake": "file"}, claim=True)  # a worker's
    ada = site.sign_in("ada")
    page = ada.get("/operations")
    site.spool.discard(held)
    assert page.status_code == 200 and "另有 1 件正在处理" in page.text  # in spool/work, apart from those waiting
    assert item in page.text and "cannot read item: test" in page.text and "550 5.1.1 no such user" in page.text
    assert "<td>SMTP 接收</td>" in page.text and "<td>smtp</td>" not in page.text  # where it came in, in words
    assert ada.post("/operations/quarantine/retry", data={"item": item}).status_code == 403  # no CSRF token
    done = ada.post("/operations/quarantine/retry", data={"item": item, "csrf": ada.csrf})
    assert done.status_code == 303 and done.headers["location"].startswith("/operations?done=item.")
    assert site.spool.quarantined() == [] and len(site.spool.pending()) == 1
    assert ada.post("/operations/quarantine/retry", data={"item": item, "csrf": ada.csrf}).status_code == 404
    sent = ada.post("/operations/outbox/retry", data={"mail": str(mail.id), "csrf": ada.csrf})
    assert sent.status_code == 303
    assert next(m for m in site.registry.outbox() if m.id == mail.id).status == "pending"
    assert ada.post("/operations/outbox/retry", data={"mail": str(mail.id), "csrf": ada.csrf}).status_code == 409
    assert ada.post("/operations/outbox/retry", data={"mail": "99999", "csrf": ada.csrf}).status_code == 404
    after = ada.get("/operations?done=mail")
    assert "Nothing in quarantine" in after.text or "隔离区为空" in after.text
    actions = {r.action for r in site.access.audit(principal(site, "audrey"), actor="ada")}
    assert {"quarantine-retry", "mail-requeued"} <= actions


def test_a_mail_queued_again_no_longer_shows_its_old_failure_as_current(site: Site) -> None:
    """By the web and by `gateway outbox retry`: the error that dead-lettered it stays in the
    letter's history, not on the mail waiting for its next attempt. Its attempts are counted
    afresh (the history keeps the old count): the back-off after its next failure is the first
    one's, not the longest."""
    web_mail, cli_mail = site.registry.outbox_due(2)  # claimed, as the sender does before giving a mail up
    for _ in range(3):  # three failed attempts, each released and claimed again as the sender does
        site.registry.outbox_retry_later(web_mail.id, "451 4.3.0 try later", datetime(2000, 1, 1, tzinfo=timezone.utc))
        [web_mail] = site.registry.outbox_due(1)
    assert site.registry.outbox_dead(web_mail.id, "550 5.1.1 <x@example.org>: no such user (web)")
    assert site.registry.outbox_dead(cli_mail.id, "550 5.1.1 <y@example.org>: no such user (cli)")
    ada = site.sign_in("ada")
    assert ada.post("/operations/outbox/retry", data={"mail": str(web_mail.id), "csrf": ada.csrf}).status_code == 303
    site.gateway.run("outbox", "retry", str(cli_mail.id))
    mails = {m.id: m for m in site.registry.outbox()}
    for mail, said in ((web_mail, "(web)"), (cli_mail, "(cli)")):
        assert mails[mail.id].status == "pending" and mails[mail.id].last_error is None
        assert mails[mail.id].attempts == 0 and mails[mail.id].claims == 0
        listed = json.loads(site.gateway.run("outbox", "list", "--status", "pending", "--json").stdout)
        assert next(m for m in listed if m["id"] == mail.id)["last_error"] is None
        assert f"no such user {said}" not in ada.get("/operations").text
        found = site.registry.letter_by_id(mail.letter_id)  # type: ignore[arg-type]
        letter = site.registry.letter(found.number) if found is not None else None
        assert letter is not None
        requeued = [e for e in letter.events if e.action == "mail-requeued" and e.details.get("outbox") == mail.id]
        assert requeued and f"no such user {said}" in requeued[-1].details["error"]
        assert requeued[-1].details["attempts"] == (4 if mail is web_mail else 1)
    status = json.loads(site.gateway.run("status", "--json", check=False).stdout)["outbox"]
    assert "no such user" not in json.dumps(status)


def test_operations_shows_first_what_needs_attention_in_either_language(site: Site) -> None:
    """At the top of the page, for an administrator: each thing that needs an operator in words,
    with what to do (a link to where the page does it); the daemon not running is one of them.
    With the daemon running and nothing wrong, a calm line instead. Only administrators see it."""
    from gateway.daemon.daemon import PidLock

    item = site.spool.quarantine_new(b"not a message", {"intake": "smtp"}, "cannot read item: test")
    mail = site.registry.outbox_due(1)[0]
    assert site.registry.outbox_dead(mail.id, "550 5.1.1 no such user")
    ada = site.sign_in("ada")
    lock = PidLock(site.config.run_dir / "gateway.pid")  # as a running daemon holds it
    try:
        page = ada.get("/operations").text
        head = page[page.index('id="attention"'):page.index('class="tiles"')]  # before the figures
        assert "需要处理" in head and '<span class="count">2</span>' in head
        assert "1 件来件多次处理失败，已放入隔离区。" in head and 'href="#quarantine"' in head
        assert "1 封邮件投递失败，已停止发送。" in head and 'href="#dead"' in head
        assert "后台服务未运行" not in head
        site.people.set_language("ada", "en")
        english = site.sign_in("ada")
        page = english.get("/operations").text
        head = page[page.index('id="attention"'):page.index('class="tiles"')]
        assert "Needs attention" in head and "1 item failed repeatedly and is in quarantine." in head
        assert "1 mail could not be delivered and was given up." in head
        assert "Send each again below, once the address or the relay is fixed." in head
        refused = site.sign_in("rita").get("/operations")  # the registry office: no administrator
        assert refused.status_code == 403 and "Needs attention" not in refused.text and "需要处理" not in refused.text
        assert english.post("/operations/quarantine/retry", data={"item": item, "csrf": english.csrf}
                            ).status_code == 303
        assert english.post("/operations/outbox/retry", data={"mail": str(mail.id), "csrf": english.csrf}
                            ).status_code == 303
        calm = english.get("/operations").text
        assert "Nothing needs attention." in calm and "Needs attention" not in calm
    finally:
        lock.release()
        site.people.set_language("ada", "zh")
    stopped = ada.get("/operations").text  # no daemon: that needs attention by itself
    head = stopped[stopped.index('id="attention"'):stopped.index('class="tiles"')]
    assert "需要处理" in head and "后台服务未运行" in head and "systemctl start gateway" in head
    assert "一切正常" not in stopped


def test_operations_says_a_reload_was_refused_and_a_restart_is_needed_in_either_language(
        site: Site, tmp_path: Path) -> None:
    """What `gateway status` says of the running daemon's configuration: its last reload refused,
    with the file's errors, and settings edited in the file that only a restart puts in force."""
    from gateway import running
    from gateway.daemon.daemon import PidLock

    ada = site.sign_in("ada")
    file = site.config.path
    good = file.read_text()
    error = f"{file}:3: bogus: unknown key"
    lock = PidLock(site.config.run_dir / "gateway.pid")  # as a running daemon holds it
    try:
        running.publish(site.config, refused=[error])
        file.write_text(good.replace('timezone = "Asia/Shanghai"', 'timezone = "America/New_York"'))
        page = ada.get("/operations").text
        head = page[page.index('id="attention"'):page.index('class="tiles"')]
        assert "配置重新加载被拒绝" in head and error in head and "systemctl reload gateway" in head
        assert "仍按原配置运行" in head
        assert f"{file} 中以下设置与正在运行的后台服务不同" in head and "gateway.timezone" in head
        assert "systemctl restart gateway" in head
        site.people.set_language("ada", "en")
        english = site.sign_in("ada")
        page = english.get("/operations").text
        head = page[page.index('id="attention"'):page.index('class="tiles"')]
        assert "was refused; the daemon runs with the configuration it had before:" in head and error in head
        assert (f"These settings differ in {file} from what the running daemon uses; only a restart puts "
                "them in force:") in head and "gateway.timezone" in head
        shot = tmp_path / "operations.png"
        screenshot(site, "/operations", shot)
        print(f"screenshot: {shot}")
        # A reload taken, and the file as the daemon runs it: nothing about the configuration.
        running.publish(site.config, reloaded=True)
        file.write_text(good)
        calm = english.get("/operations").text
        assert "was refused" not in calm and "These settings differ" not in calm
    finally:
        file.write_text(good)
        lock.release()
        site.people.set_language("ada", "zh")
        (site.config.run_dir / running.PUBLISHED).unlink(missing_ok=True)


def screenshot(site: Site, path: str, shot: Path) -> None:
    """The page as an administrator (ada) sees it in chromium, saved in `shot`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(site.url + "/signin")
            page.fill("input[name=login]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(site.url + path)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()


def test_the_wrong_roles_are_refused(site: Site) -> None:
    sam, ada, rita, leo = (site.sign_in(login) for login in ("sam", "ada", "rita", "leo"))
    for client, url in ((sam, "/operations"), (rita, "/operations"), (leo, "/operations"), (sam, "/reports"),
                        (ada, "/reports"), (sam, "/reports/download?format=json"), (ada, "/reports/download")):
        assert client.get(url).status_code == 403, url
    assert rita.post("/operations/quarantine/retry", data={"all": "1", "csrf": rita.csrf}).status_code == 403
    assert leo.get("/reports").status_code == 200 and leo.get("/dashboard").status_code == 200
    anonymous = site.client()
    assert anonymous.get("/dashboard").status_code == 303 and anonymous.get("/operations").status_code == 303
    assert rita.get("/dashboards").status_code == 404
    # The sidebar offers each page only to those who may open it.
    assert 'href="/operations"' in ada.get("/dashboard").text and 'href="/reports"' not in ada.get("/dashboard").text
    assert 'href="/reports"' in rita.get("/dashboard").text and 'href="/operations"' not in rita.get("/dashboard").text


def test_the_dashboard_draws_its_charts_in_chromium(site: Site, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(site.url + "/signin")
            page.fill("input[name=login]", "rita")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(site.url + "/dashboard")
            try:
                assert page.locator("svg.chart").count() == 3  # departments, timeliness, intake
                bar = page.locator("svg.chart.bars rect.bar").first
                box = bar.bounding_box()
                assert box is not None and box["width"] > 50 and box["height"] > 5
                # Coloured by the stylesheet (no inline style): the CSP lets it through.
                assert bar.evaluate("e => getComputedStyle(e).fill") == "rgb(59, 110, 165)"
                assert page.locator("svg.chart.stacked rect.seg").count() >= 4
                assert page.locator("svg.chart.gauge path.value").count() == 1
                assert refused == []
                page.locator("svg.chart.stacked a").first.click()
                page.wait_for_url("**/letters?**")
            except AssertionError:
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
                raise
        finally:
            browser.close()


def test_the_dashboard_counts_letters_awaiting_their_sender_in_its_columns(tmp_path: Path) -> None:
    from datetime import date

    from gateway.services.incomplete import Incomplete

    s = Site(tmp_path)
    try:
        s.add_people()
        s.add_letters()
        sam = s.people.principal("sam")
        assert sam is not None
        Incomplete(s.config, s.registry).mark(sam, s.letters["business"], missing=["the invoice"],
                                              by=date.today() + timedelta(days=7))
        html = s.sign_in("rita").get("/dashboard").text  # in Chinese, the default
        head = re.search(r'<table class="grid compact figures">\s*<thead>(.*?)</thead>', html, re.S)
        assert head is not None and "待来信人补充" in re.sub(r"<[^>]+>", " ", head.group(1))
        row = re.search(r'<th scope="row">Business</th>(.*?)</tr>', html, re.S)
        assert row is not None
        numbers = [int(n) for n in re.findall(r">(\d+)<", row.group(1))]
        states, still_open = numbers[:-3], numbers[-3]
        assert still_open == 3 and sum(states) == still_open  # the columns add up to the open letters
        css = Path(__file__).parents[1] / "gateway" / "web" / "static" / "overview.css"
        assert ".seg.status-awaiting-sender" in css.read_text()  # its segment has a colour of its own
    finally:
        s.close()


def test_the_timeliness_figures_open_exactly_the_letters_they_count(tmp_path: Path) -> None:
    """Closed this month: only letters received in it, with a deadline, whose close stands (an
    archived one still counts); and for a member, only the letters they work on (not those their
    department passed on). Each figure's queue lists exactly the letters it counts."""
    from conftest import make_message

    s = Site(tmp_path)
    try:
        s.add_people()
        operator = Principal.operator("test")
        tz = ZoneInfo(s.config.model.gateway.timezone)
        now = datetime.now(timezone.utc)
        month_start = datetime.combine(now.astimezone(tz).date().replace(day=1), datetime.min.time(), tz)
        names = ("on-time", "late", "archived", "no-deadline", "last-month", "passed-on", "passed-open")
        for i, name in enumerate(names):
            s.ingest(name, make_message(20 + i, subject=f"Order {i}", to="sales@example.org"))
        n = s.letters
        with s.registry.write() as conn:
            for name in names:
                deadline = now - timedelta(hours=1) if name == "late" else now + timedelta(days=3)
                conn.execute(update(Letter).where(Letter.number == n[name]).values(
                    deadline=None if name == "no-deadline" else deadline))
            conn.execute(update(Letter).where(Letter.number == n["last-month"])
                         .values(received_at=month_start - timedelta(days=1)))
        for name in ("passed-on", "passed-open"):  # Business passes them on to the General Office
            s.access.act(operator, n[name], "reassign", department="general-office", text="theirs")
        for name in names[:-1]:
            s.access.act(operator, n[name], "close", text="done")
        with s.registry.write() as conn:  # as the month's archive leaves a closed letter
            conn.execute(update(Letter).where(Letter.number == n["archived"]).values(status="archived"))

        for login, closed, on_time in (("rita", 4, 3), ("sam", 3, 2)):  # sam: Business's letters now
            client = s.sign_in(login)
            numbers = figures(client.get("/dashboard").text)
            [(closed_url, count)] = [(url, c) for url, exact, c in numbers if exact and "closed=timed" in url]
            [(on_time_url, on_time_count)] = [(url, c) for url, exact, c in numbers
                                              if exact and "closed=on-time" in url]
            assert (count, on_time_count) == (closed, on_time), login
            for url, is_exact, count in numbers:  # every figure, as the person's queue lists it
                total = queue_total(client, url)
                assert total == count if is_exact else total >= count, (login, url, total, count)
            listed = client.get(closed_url).text
            assert n["archived"] in listed and n["no-deadline"] not in listed and n["last-month"] not in listed
            assert (n["passed-on"] in listed) == (login == "rita")
            assert n["late"] not in client.get(on_time_url).text
            # Saved as a view, the list keeps what it lists.
            fields = dict(parse_qsl(urlsplit(closed_url).query))
            saved = client.post("/views", data={"csrf": client.csrf, "name": f"closed {login}", **fields})
            assert saved.status_code == 303, saved.text
            view = saved.headers["location"]
            assert ("work=1" in view) == (login == "sam") and "closed=timed" in view, view
            total = re.search(r'</h1>\s*<p class="muted">\D*(\d+)', client.get(view).text)
            assert total and int(total.group(1)) == closed, view
    finally:
        s.close()


def filter_form(html: str) -> dict[str, str]:
    """What the queue's filter form sends as it stands: its hidden and date fields, the options
    chosen in its lists."""
    form = re.search(r'<form method="get" action="/letters" class="filters">(.*?)</form>', html, re.S)
    assert form, "no filter form"
    fields = dict(re.findall(r'<input type="(?:hidden|date)" name="([^"]+)" value="([^"]*)"', form.group(1)))
    for name, options in re.findall(r'<select name="([^"]+)">(.*?)</select>', form.group(1), re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', options)
        fields[name] = chosen.group(1) if chosen else ""
    return fields


def test_a_list_due_this_week_keeps_its_first_day_filtered_again_and_saved(site: Site) -> None:
    """The dashboard's "due this week" opens the open letters with a deadline from today to Sunday:
    its filter form holds both days, so filtering again lists the same letters (not those overdue
    since days), and the view saved from it opens from the sidebar with both days too."""
    rita = site.sign_in("rita")
    due_now(site)
    dashboard = rita.get("/dashboard").text
    [url] = [url for url, _, _ in figures(dashboard) if "deadline_after" in url and "department" not in url]
    listed = rita.get(url).text
    fields = filter_form(listed)
    assert fields["deadline_after"] == dict(parse_qsl(urlsplit(url).query))["deadline_after"]
    again = rita.get("/letters", params={k: v for k, v in fields.items() if v})
    assert queue_total(rita, url) == queue_total(rita, str(again.url)) == 1
    assert site.letters["business"] not in again.text and site.letters["secret"] in again.text

    saved = rita.post("/views", data={"csrf": rita.csrf, "name": "due this week", **fields})
    assert saved.status_code == 303, saved.text
    sidebar = re.search(r'<a href="([^"]+)"[^>]*><span>due this week</span>', rita.get("/letters?queue=all").text)
    assert sidebar, "no saved view in the sidebar"
    opened = sidebar.group(1).replace("&amp;", "&")
    total = re.search(r'</h1>\s*<p class="muted">\D*(\d+)', rita.get(opened).text)
    assert "deadline_after=" in opened and total and int(total.group(1)) == 1, opened
