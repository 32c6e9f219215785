"""Circulation with sign-off in a real browser (Debian's chromium) under a controllable clock: the
registry office circulates a letter to a leader, a department and a head in that order; the second
reader can neither read nor sign before the first has signed; the leader's instruction goes to the
handling department; a late reader is reminded and the starter told; nobody off the list signs; the
record goes into the archive package. The CLI starts and signs through the same service."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import conftest
import pytest
from browser_support import SignIn, browser_fixture, rows_within_the_screen, signed_in_pages  # noqa: F401
from playwright.sync_api import Browser, Page, expect
from smtp_sink import SmtpSink
from web_support import PASSWORD, Clock, Person, Site, hidden

from gateway.archive.packer import Archiver, circulation_path
from gateway.outbound.sender import OutboxSender
from gateway.report.figures import Period, compute
from gateway.services.circulation import Circulations
from gateway.services.people import Principal
from gateway.track import reminders

pytestmark = pytest.mark.timeout(300)

TZ = ZoneInfo("Asia/Shanghai")
TODAY = datetime.now(TZ).date()
# The next Monday, 9:00 (a working day: the test configuration has no holidays), after the letters came in.
MONDAY = datetime.combine(TODAY + timedelta(days=7 - TODAY.weekday()), time(9, 0), TZ)
INSTRUCTION = "请业务部本周内办理并回复。"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("circulation"))
    s.add_people()
    # The General Office's head (by the configuration's address), who signs for it.
    s.add_people((Person("olga", emails=("office.head@example.org",)),))
    s.add_letters()
    yield s
    s.close()


@pytest.fixture
def clock(site: Site) -> Clock:
    clock = Clock(MONDAY)
    site.app.state.web.access.clock = clock
    return clock


@pytest.fixture
def sign_in(site: Site, browser: Browser, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def events(site: Site, number: str, action: str) -> list[dict[str, Any]]:
    letter = site.registry.letter(number)
    assert letter is not None
    return [e.details for e in letter.events if e.action == action]


def mails(site: Site, number: str, about: str) -> list[Any]:
    letter = site.registry.letter(number)
    assert letter is not None
    return [m for m in site.registry.outbox(letter_id=letter.id)
            if m.kind == "circulation" and m.details.get("about") == about]


def post(page: Page, url: str, form: dict[str, str]) -> Any:
    """A form sent from the signed-in page (its cookies), as a crafted request would be."""
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    return page.request.post(url, form={**form, "csrf": csrf}, max_redirects=0)


def test_three_readers_in_order_the_instruction_to_the_department_and_a_late_reader_reminded(
        site: Site, sign_in: SignIn, clock: Clock) -> None:
    number = site.letters["business"]
    url = f"/letters/{number}"

    # The registry office starts it: a leader, then the General Office (its head signs), then Bella.
    rita = sign_in("rita")
    rita.goto(url)
    rita.click("text=Circulate")
    rita.fill("textarea[name=readers]", "leo\ngeneral-office\nbella")
    rita.click("button:has-text('Start the circulation')")
    panel = rita.locator("#circulation")
    expect(panel).to_contain_text("running")
    expect(panel.locator("li.current")).to_contain_text("leo")
    [started] = events(site, number, "circulation-started")
    assert started["readers"] == ["person:leo", "department:general-office", "person:bella"]
    assert [m.recipient for m in mails(site, number, "to-read")] == ["leo@example.org"]

    # The second reader has nothing to read yet: not in their queue, no content, no signing.
    olga = sign_in("olga")
    olga.goto("/to-read")
    expect(olga.locator("main")).to_contain_text("Nothing to read and sign.")
    olga.goto(url)
    expect(olga.locator("main")).not_to_contain_text("Please confirm the order")
    early = post(olga, f"{url}/sign", {"instruction": "too early"})
    assert early.status == 409 and "turn: it comes to you once they have signed" in early.text()
    # Nor anyone off the list, though they see the letter: it is never passed sideways.
    sam = sign_in("sam")
    sideways = post(sam, f"{url}/sign", {})
    assert sideways.status == 403 and "cannot be passed on to anyone else" in sideways.text()

    # The leader reads it (in their queue) and signs with an instruction, an hour later.
    clock.now = MONDAY + timedelta(hours=1)
    leo = sign_in("leo")
    leo.goto("/to-read")
    leo.click(f"text={number}")
    expect(leo.locator("pre.body")).to_contain_text("Please confirm the order")
    leo.fill("textarea[name=instruction]", INSTRUCTION)
    leo.click("button:has-text('Read and sign')")
    expect(leo.locator("#circulation li.signed")).to_contain_text(INSTRUCTION)
    [signed] = events(site, number, "circulation-signed")
    assert (signed["reader"], signed["instruction"], signed["step"]) == ("person:leo", INSTRUCTION, 1)
    assert signed["deadline"] and signed["next_reader"] == "department:general-office"
    # The handling department (Business's owners) hears of the instruction by mail.
    [told] = mails(site, number, "instruction")
    assert (told.recipient, told.details["instruction"], told.details["reader"]) == (
        "sales.desk@example.org", INSTRUCTION, "Leo")

    # Now it is the General Office's turn: in its head's queue, its content readable.
    olga.goto("/to-read")
    expect(olga.locator("main table")).to_contain_text(number)
    olga.goto(url)
    expect(olga.locator("pre.body")).to_contain_text("Please confirm the order")

    # Two working days pass unsigned: the reader is reminded; a working day later again, and the
    # registry office (who started it) is told.
    thursday = MONDAY + timedelta(days=3)
    done = reminders.run(site.config, site.registry, thursday)
    assert [(r.letter.number, r.kind) for r in done if r.kind.startswith("circulation")] == [(number, "circulation")]
    assert events(site, number, "circulation-reminded")[0]["reader"] == "department:general-office"
    assert [m.recipient for m in mails(site, number, "reminder")] == ["office.head@example.org"]
    reminders.run(site.config, site.registry, thursday + timedelta(days=1))
    [escalated] = events(site, number, "circulation-escalated")
    assert escalated["to"] == ["rita@example.org"]
    assert not [r for r in reminders.run(site.config, site.registry, thursday + timedelta(days=1, hours=1),
                                         dry_run=True) if r.kind.startswith("circulation")]
    clock.now = thursday + timedelta(days=1)
    olga.goto("/to-read")
    expect(olga.locator("main table .badge.overdue")).to_be_visible()

    # The General Office signs late, then Bella: the circulation is finished, the department told.
    olga.goto(url)
    olga.click("button:has-text('Read and sign')")
    assert events(site, number, "circulation-signed")[-1]["late"] is True
    bella = sign_in("bella")
    bella.goto(url)
    bella.fill("textarea[name=instruction]", "已阅。")
    bella.click("button:has-text('Read and sign')")
    expect(bella.locator("#circulation")).to_contain_text("finished")
    assert events(site, number, "circulation-finished")
    finished = mails(site, number, "finished")  # to the department, and to whoever started it
    assert [m.recipient for m in finished] == ["sales.desk@example.org", "rita@example.org"]
    assert [s["instruction"] for s in finished[0].details["signed"]] == [INSTRUCTION, "", "已阅。"]

    # The department sees the instruction on the letter; the leader has nothing left to read.
    sam.goto(url)
    expect(sam.locator("#circulation .instruction").first).to_contain_text(INSTRUCTION)
    leo.goto("/to-read")
    expect(leo.locator("main")).to_contain_text("Nothing to read and sign.")

    # The report's circulation timeliness per reader, as the clock saw it: the General Office late.
    tz = site.config.model.gateway.timezone
    weeks = Period("weeks", MONDAY - timedelta(days=1), MONDAY + timedelta(days=30))
    figures = compute(site.registry, weeks, tz, now=thursday + timedelta(days=2))["circulation"]
    assert figures["by_reader"] == {
        "department:general-office": {"due": 1, "on_time": 0, "late": 1, "rate": 0.0},
        "person:bella": {"due": 1, "on_time": 1, "late": 0, "rate": 1.0},
        "person:leo": {"due": 1, "on_time": 1, "late": 0, "rate": 1.0}}
    assert (figures["due"], figures["on_time"]) == (3, 2)


def test_a_confidential_letter_only_to_readers_allowed_its_content_and_the_cli(site: Site, sign_in: SignIn,
                                                                             clock: Clock) -> None:
    secret = site.letters["secret"]
    refused = site.gateway.run("letters", "circulate", secret, "--reader", "leo", "--reader", "bella",
                               check=False)
    assert refused.returncode != 0 and "confidential" in refused.stderr
    # An ordinary letter over the CLI: started by the operator, signed by the reader named with --as.
    office = site.letters["office"]
    started = site.gateway.run("letters", "circulate", office, "--reader", "gina", "--reader", "leo")
    assert "gina" in started.stdout
    refused = site.gateway.run("letters", "sign", office, "--as", "leo", check=False)
    assert refused.returncode != 0 and "turn" in refused.stderr
    signed = site.gateway.run("letters", "sign", office, "--as", "gina", "--instruction", "阅")
    assert "leo" in signed.stdout
    rita = sign_in("rita", lang="zh")
    rita.goto(f"/letters/{office}")
    expect(rita.locator("#circulation")).to_contain_text("传阅")


def test_the_circulation_record_goes_into_the_archive_package(site: Site, tmp_path: Path) -> None:
    number = site.letters["business"]
    operator = Principal.operator("test")
    site.access.act(operator, number, "close", text="done")
    letter = site.registry.letter(number)
    assert letter is not None and events(site, number, "circulation-finished")
    month = letter.received_at.astimezone(TZ).strftime("%Y-%m")
    archiver = Archiver(site.config, site.registry)
    archiver.run(month)
    assert all(c.ok for c in archiver.verify(month))
    letter = site.registry.letter(number)
    assert letter is not None and letter.archive_number
    package = site.registry.archive_package(letter.archive_package_id or 0)
    assert package is not None
    record = circulation_path(site.config.archive_dir / package.manifest)
    rows = [r for r in csv.DictReader(io.StringIO(record.read_text())) if r["letter_number"] == number]
    assert [(r["letter_number"], r["step"], r["reader"], r["signed_by"], r["instruction"]) for r in rows] == [
        (number, "1", "person:leo", "leo", INSTRUCTION), (number, "2", "department:general-office", "olga", ""),
        (number, "3", "person:bella", "bella", "已阅。")]
    assert {r["archive_number"] for r in rows} == {letter.archive_number}


def test_the_mail_of_a_circulation_reaches_its_readers_and_the_department(tmp_path: Path, sink: SmtpSink) -> None:
    """Through the outbox and a relay: the reader whose turn it is, and the handling department told
    of the leader's instruction."""
    site = Site(tmp_path, extra=f'[outbound]\nrelay = "{sink.address}"\nfrom_address = "gateway@example.org"\n')
    try:
        site.add_people()
        site.add_people((Person("olga", emails=("office.head@example.org",)),))
        site.add_letters()
        number = site.letters["business"]
        rita, leo = site.people.principal("rita"), site.people.principal("leo")
        assert rita is not None and leo is not None
        circulations = Circulations(site.config, site.registry)
        circulations.start(rita, number, ["leo", "general-office"])
        circulations.sign(leo, number, INSTRUCTION)
        OutboxSender(site.config, site.registry).deliver_due()

        def circulated(address: str) -> list[Any]:  # beside the letters' own notifications
            return [r.message for r in sink.to(address) if "kind=circulation" in str(r.message["X-Gateway-Loop"])]
        conftest.wait_for(lambda: len(circulated("sales.desk@example.org")), 30, "the department told")
        [to_leo], [to_office] = circulated("leo@example.org"), circulated("office.head@example.org")
        [to_department] = circulated("sales.desk@example.org")
        assert number in str(to_leo["Subject"]) and number in str(to_office["Subject"])
        assert INSTRUCTION in to_department.get_content()
    finally:
        site.close()


def test_two_reminder_passes_that_meet_remind_a_late_reader_once(tmp_path: Path) -> None:
    """The daemon's pass and `gateway reminders run` may run at once: the one that reads a step
    as due after the other has reminded it (its decision read without a lock) queues nothing."""
    from gateway.registry.circulation import CirculationRecords
    from gateway.track import circulation

    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        records = CirculationRecords(site.registry)
        start = datetime.now(TZ) - timedelta(days=30)
        records.start(site.letters["office"], actor="rita", readers=[("person", "leo")],
                      deadline=start + timedelta(days=1), now=start, mail=[], allowed=("routed",))
        now = datetime.now(TZ)
        read_before = records.due_steps()  # pass A reads the due step ...
        first = circulation.due(site.config, site.registry, now)  # ... pass B runs in full ...
        original = CirculationRecords.due_steps
        CirculationRecords.due_steps = lambda self: read_before  # type: ignore[method-assign]
        try:
            second = circulation.due(site.config, site.registry, now)  # ... and A goes on with what it read
        finally:
            CirculationRecords.due_steps = original  # type: ignore[method-assign]
        assert [r.kind for r in first] == ["circulation"] and second == []
        letter = site.registry.letter(site.letters["office"])
        assert letter is not None
        assert [e.action for e in letter.events].count("circulation-reminded") == 1
        assert len([m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "circulation"]) == 1
    finally:
        site.close()


def test_a_signing_form_sent_twice_signs_one_step(site: Site, clock: Clock) -> None:
    number = site.letters["inquiry"]  # Business: Bella reads it in person, then heads the department that reads it
    rita = site.sign_in("rita")
    assert rita.post(f"/letters/{number}/circulate",
                     data={"readers": "bella\nbusiness\nleo", "csrf": rita.csrf}).status_code == 303
    site.people.set_language("bella", "zh")
    bella = site.sign_in("bella")
    page = bella.get(f"/letters/{number}").text
    step = re.search(r'name="step" value="([^"]+)"', page)
    assert step is not None and step.group(1).endswith(".1")
    form = {"instruction": "同意", "step": step.group(1), "csrf": bella.csrf}
    assert bella.post(f"/letters/{number}/sign", data=form).status_code == 303
    again = bella.post(f"/letters/{number}/sign", data=form)  # a double click, a form sent again
    assert again.status_code == 409 and "传阅已进入下一步：未作签阅" in again.text
    assert [e["step"] for e in events(site, number, "circulation-signed")] == [1]
    # From the page as it is now, the department's turn is signed.
    page = bella.get(f"/letters/{number}").text
    step = re.search(r'name="step" value="([^"]+)"', page)
    assert step is not None and step.group(1).endswith(".2")
    assert bella.post(f"/letters/{number}/sign", data={**form, "step": step.group(1)}).status_code == 303
    assert [e["step"] for e in events(site, number, "circulation-signed")] == [1, 2]


def test_a_refused_circulation_keeps_its_readers_and_a_list_too_long_is_refused_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.services.people import People

    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        number = site.letters["urgent"]
        rita = site.sign_in("rita")  # in Chinese, the default
        typo = rita.post(f"/letters/{number}/circulate", data={"readers": "leo\ngenral-office", "csrf": rita.csrf})
        assert typo.status_code == 400 and "没有名为 genral-office 的人员或部门" in typo.text
        assert ">leo\ngenral-office</textarea>" in typo.text  # to correct, not to type again
        # Thousands of names are refused by their count, before any of them is looked up.
        looked_up: list[str] = []
        principal = People.principal
        monkeypatch.setattr(People, "principal", lambda self, login: looked_up.append(login) or principal(self, login))
        many = rita.post(f"/letters/{number}/circulate", data={"readers": "leo\n" * 5000, "csrf": rita.csrf})
        assert many.status_code == 400 and "阅件人最多 20 位" in many.text
        assert looked_up.count("leo") < 20  # the page itself names people; the list is not resolved
        monkeypatch.undo()
        assert rita.post(f"/letters/{number}/circulate",
                         data={"readers": "leo", "csrf": rita.csrf}).status_code == 303
        leo = site.sign_in("leo")
        step = hidden(leo.get(f"/letters/{number}").text, "step")
        instruction = "请办公室本周内办理。" * 210  # 2,100 characters
        refused = leo.post(f"/letters/{number}/sign", data={"instruction": instruction, "step": step,
                                                            "csrf": leo.csrf})
        assert refused.status_code == 400 and "批示最多 2000 个字符" in refused.text
        assert f">{instruction}</textarea>" in refused.text
        # As long as the form takes, line breaks counted as the browser counts them: signed whole.
        lines = "\r\n".join(["请办公室本周内办理并于周五前回复。"] * 110)
        assert len(lines.replace("\r\n", "\n")) <= 2000 < len(lines)
        assert leo.post(f"/letters/{number}/sign", data={"instruction": lines, "step": step,
                                                         "csrf": leo.csrf}).status_code == 303
        assert events(site, number, "circulation-signed")[-1]["instruction"] == lines.replace("\r\n", "\n")
    finally:
        site.close()


def test_a_confidential_letter_is_circulated_only_by_one_allowed_its_content(tmp_path: Path) -> None:
    """The registry office and leaders see a confidential letter's entry, not its content: a form
    made by hand, the CLI with --as, or any other way through the service, none of them starts its
    circulation (to readers who may read it, too), unless the starter was granted the letter."""
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        secret = site.letters["secret"]
        for login in ("rita", "leo"):
            client = site.sign_in(login)  # in Chinese, the default
            page = client.get(f"/letters/{secret}").text
            assert f'action="/letters/{secret}/circulate"' not in page  # not offered
            refused = client.post(f"/letters/{secret}/circulate", data={"readers": "bella", "csrf": client.csrf})
            assert refused.status_code == 403 and f"{secret} 为机密来信" in refused.text, login
            by_cli = site.gateway.run("letters", "circulate", secret, "--reader", "bella", "--as", login, check=False)
            assert by_cli.returncode != 0 and "only one allowed its content" in by_cli.stderr, login
        # A head reads it, but starting a circulation is for the registry office and leaders.
        bella = site.sign_in("bella")
        refused = bella.post(f"/letters/{secret}/circulate", data={"readers": "bella", "csrf": bella.csrf})
        assert refused.status_code == 403 and "只有收发室和领导可以发起传阅" in refused.text
        assert events(site, secret, "circulation-started") == []
        # A leader granted the letter reads it, and may circulate it to readers who may read it too.
        site.people.grant("leo", letter=secret, reason="board review", actor="test")
        leo = site.sign_in("leo")
        assert f'action="/letters/{secret}/circulate"' in leo.get(f"/letters/{secret}").text
        assert leo.post(f"/letters/{secret}/circulate",
                        data={"readers": "bella", "csrf": leo.csrf}).status_code == 303
        assert len(events(site, secret, "circulation-started")) == 1
    finally:
        site.close()


def test_the_circulation_panel_names_its_people_and_says_it_is_under_way(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        number = site.letters["urgent"]
        rita = site.people.principal("rita")
        assert rita is not None
        Circulations(site.config, site.registry).start(rita, number, ["leo", "general-office"])
        page = site.sign_in("rita").get(f"/letters/{number}").text  # in Chinese, the default
        html = page.split('id="circulation"', 1)[1].split("</section>")[0]
        panel = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
        assert "传阅中" in panel and "运行中" not in panel  # not the daemon's word for running
        assert "Leo leo" in panel and "Rita rita" in panel  # readers and who started it, by name
        leo = site.sign_in("leo").get(f"/letters/{number}").text
        assert "批示（可选）" in leo
        site.people.set_language("leo", "en")
        english = site.sign_in("leo").get(f"/letters/{number}").text
        assert "Instruction (optional)" in english and "批示" not in english
    finally:
        site.close()


def test_the_circulate_form_names_the_leaders_by_the_sign_in_names_it_asks_for(tmp_path: Path) -> None:
    """Readers are typed by sign-in name or department id: the form lists the leaders with theirs
    (not one disabled), as it lists the departments with their ids, and a list typed from it starts."""
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_people((Person("lin", roles=("leader",), emails=("lin@example.org",)),))
        site.people.set_disabled("lin", True, actor="test")
        number = site.ingest("official", conftest.make_message(30, subject="Notice", to="liaison@example.org"))
        rita = site.sign_in("rita")  # in Chinese, the default
        page = rita.get(f"/letters/{number}").text
        form = page.split('action="/letters/' + number + '/circulate"', 1)[1].split("</form>")[0]
        hint = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", form))
        assert "领导： leo Leo" in hint and "lin" not in hint, hint
        started = rita.post(f"/letters/{number}/circulate", data={"readers": "leo\ngeneral-office", "csrf": rita.csrf})
        assert started.status_code == 303, started.text
    finally:
        site.close()


def test_the_circulate_forms_hint_is_punctuated_in_the_pages_language(tmp_path: Path) -> None:
    """The departments and leaders the circulate form lists are separated and ended as the page's
    language writes: ；and 。 in Chinese (no ASCII ; or . between Chinese words), ; and . in English."""
    site = Site(tmp_path)
    try:
        site.add_people()
        number = site.ingest("official", conftest.make_message(31, subject="Notice", to="liaison@example.org"))

        def hint(login: str) -> str:
            page = site.sign_in(login).get(f"/letters/{number}").text
            form = page.split('action="/letters/' + number + '/circulate"', 1)[1].split("</form>")[0]
            text = form.split('<p class="hint">', 1)[1].split("</p>")[0]
            return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text))

        chinese = hint("rita")  # in Chinese, the default
        assert chinese.startswith("部门： general-office General Office；business Business。"
                                  "领导： leo Leo。按批示次序"), chinese
        assert ";" not in chinese and "." not in chinese, chinese
        site.people.set_language("rita", "en")
        english = hint("rita")
        assert english.startswith("Departments: general-office General Office; business Business. Leaders: leo Leo. "
                                  "Each reads and signs"), english
    finally:
        site.close()


def test_a_phone_shows_each_letter_to_read_with_its_subject_and_deadline_in_sight(
        tmp_path: Path, browser: Browser, request: pytest.FixtureRequest) -> None:
    """At 390 px the To read list is read down the screen, a letter a block: its number, subject
    and the day to sign by within the screen, the day named, not in a column scrolled out of sight."""
    site = Site(tmp_path)
    pages = signed_in_pages(browser, site.url, PASSWORD, request)
    try:
        site.add_people()
        site.add_letters()
        rita = site.people.principal("rita")
        assert rita is not None
        Circulations(site.config, site.registry).start(rita, site.letters["urgent"], ["leo", "general-office"])
        page = next(pages)("leo", lang="zh")
        page.set_viewport_size({"width": 390, "height": 800})
        page.goto("/to-read")
        row = rows_within_the_screen(page.locator("table.to-read"), ("a", "td.subject", "td.sign-by"))
        expect(row).to_have_count(1)
        named = row.locator("td.sign-by").evaluate("c => getComputedStyle(c, '::before').content")
        assert "签阅期限" in named, named
    finally:
        next(pages, None)
        site.close()


def test_the_letters_history_names_a_department_reader_and_the_next_reader(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_people((Person("olga", emails=("office.head@example.org",)),))
        site.add_letters()
        number = site.letters["urgent"]
        rita, olga = site.people.principal("rita"), site.people.principal("olga")
        assert rita is not None and olga is not None
        circulations = Circulations(site.config, site.registry)
        circulations.start(rita, number, ["general-office", "leo"])
        circulations.sign(olga, number, "请阅")  # the head, for her department
        page = site.sign_in("rita").get(f"/letters/{number}").text  # in Chinese, the default
        history = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
        signed = history.split("传阅签阅", 1)[1].split("技术细节", 1)[0]
        assert "阅读人： General Office" in signed and "下一位传阅人： Leo leo" in signed
        assert "department:" not in signed and "person:" not in signed and "next_reader" not in signed
    finally:
        site.close()


def test_a_letter_archived_while_it_circulates_is_signed_no_more(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        number = site.letters["business"]
        rita, operator = site.people.principal("rita"), Principal.operator("test")
        assert rita is not None
        Circulations(site.config, site.registry).start(rita, number, ["leo", "bella"])
        leo = site.sign_in("leo")
        step = hidden(leo.get(f"/letters/{number}").text, "step")  # the signing form, left open ...
        site.access.act(operator, number, "close", text="done")
        letter = site.registry.letter(number)
        assert letter is not None
        Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
        # ... signs nothing once the letter is archived: no step, no mail to the next reader.
        refused = leo.post(f"/letters/{number}/sign", data={"step": step, "instruction": "请办理", "csrf": leo.csrf})
        assert refused.status_code == 409 and f"{number} 已归档：传阅不再签阅" in refused.text
        assert events(site, number, "circulation-signed") == []
        assert [m.recipient for m in mails(site, number, "to-read")] == ["leo@example.org"]  # the first reader's
    finally:
        site.close()
