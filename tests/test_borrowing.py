"""Borrowing from the archive in a real browser (Debian's chromium) under a controllable clock: an
archived letter's content is refused without an approved borrowing (the registry office's too), a
request refused, one granted by the department's head, read (each read audited) and expired at the
end of its period; a confidential one approved only by a leader and read as previews only, never
downloaded; the register for the registry office and auditors; the CLI through the same service; the
records of circulation and borrowing on PostgreSQL."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from email.message import EmailMessage
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from browser_support import SignIn, browser_fixture, signed_in_pages  # noqa: F401  (the `browser` fixture)
from playwright.sync_api import Browser, Dialog, Page, expect
from web_support import PASSWORD, Clock, Site

from gateway.archive.packer import Archiver
from gateway.report.figures import Period, compute
from gateway.services.access import Refused
from gateway.services.people import Principal
from gateway.track import reminders

pytestmark = pytest.mark.timeout(300)

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The standard letters; the Business order and the confidential one closed and archived."""
    s = Site(tmp_path_factory.mktemp("borrowing"))
    s.add_people()
    s.add_letters()
    operator = Principal.operator("test")
    for name in ("business", "secret"):
        s.access.act(operator, s.letters[name], "close", text="done")
    letter = s.registry.letter(s.letters["business"])
    assert letter is not None
    Archiver(s.config, s.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
    yield s
    s.close()


@pytest.fixture
def clock(site: Site) -> Clock:
    clock = Clock(datetime.now(timezone.utc))
    site.app.state.web.access.clock = clock
    return clock


@pytest.fixture
def sign_in(site: Site, browser: Browser, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def events(site: Site, number: str, action: str) -> list[dict[str, Any]]:
    letter = site.registry.letter(number)
    assert letter is not None
    return [e.details for e in letter.events if e.action == action]


def ask(page: Page, number: str, reason: str, days: int) -> None:
    page.goto(f"/letters/{number}")
    page.click("text=Ask to borrow")
    page.fill("textarea[name=reason]", reason)
    page.fill("input[name=days]", str(days))
    page.click("button:has-text('Send the request')")
    expect(page.locator(".flash.ok")).to_contain_text("once the request is approved")


def decide(page: Page, reason: str, button: str) -> None:
    page.goto("/borrowing")
    row = page.locator("#awaiting tr", has_text=reason)
    row.locator("input[name=comment]").fill(f"{button}: seen")
    asked: list[str] = []  # a refusal is confirmed first, naming what it does

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()
    page.once("dialog", answer)
    row.locator(f"button:has-text('{button}')").click()
    if button == "Refuse":
        expect(page.locator(".flash.ok")).to_be_visible()
        assert len(asked) == 1 and asked[0].startswith("Refuse the borrowing of") and "ask again" in asked[0]
    else:
        page.remove_listener("dialog", answer)
    expect(page.locator(".flash.ok")).to_be_visible()


def test_refused_without_approval_then_granted_read_and_expired(site: Site, sign_in: SignIn, clock: Clock) -> None:
    number = site.letters["business"]
    url = f"/letters/{number}"
    assert site.registry.letter(number).status == "archived"  # type: ignore[union-attr]

    # Archived: nobody reads its content without a borrowing, the registry office neither.
    sam = sign_in("sam")
    sam.goto(url)
    expect(sam.locator("#borrowing")).to_contain_text("This letter is archived")
    expect(sam.locator("main")).not_to_contain_text("Please confirm the order")
    assert sam.request.get(f"{url}/original").status == 404
    rita = sign_in("rita")
    rita.goto(url)
    expect(rita.locator("main")).not_to_contain_text("Please confirm the order")
    # Nor does a word of its content find it (its register entry still does).
    assert number not in sam.request.get("/search?q=confirm").text()
    assert number in sam.request.get(f"/search?q={number}").text()

    # The registry office asks, the head refuses: still nothing to read.
    ask(rita, number, "Checking the register", 1)
    bella = sign_in("bella")
    decide(bella, "Checking the register", "Refuse")
    rita.goto(url)
    expect(rita.locator("main")).not_to_contain_text("Please confirm the order")
    assert events(site, number, "borrow-refused")[0]["approver"] == "bella"

    # A member asks for two days; the head grants it: read-only in the browser, each read audited.
    ask(sam, number, "Preparing the next order", 2)
    assert events(site, number, "borrow-requested")[-1] | {"borrowing": 0} == {
        "borrowing": 0, "reason": "Preparing the next order", "days": 2, "approver": "head"}
    decide(bella, "Preparing the next order", "Grant")
    sam.goto(url)
    expect(sam.locator("pre.body")).to_contain_text("Please confirm the order")
    expect(sam.locator("#borrowing")).to_contain_text("Lent to you until")
    assert number in sam.request.get("/search?q=confirm").text()  # lent: its content is searched too
    reads = [a for a in site.access.audit(Principal.operator("t"), letter=number) if a.actor == "sam"]
    assert [a.action for a in reads] == ["read"]
    assert [e["borrower"] for e in events(site, number, "borrow-read")] == ["sam"]

    # The period ends by itself: from then on the content is refused again, and the pass records it.
    clock.now = clock.now + timedelta(days=2, minutes=1)
    sam.goto(url)
    expect(sam.locator("main")).not_to_contain_text("Please confirm the order")
    expect(sam.locator("#borrowing")).to_contain_text("This letter is archived")
    reminders.run(site.config, site.registry, clock.now)
    [expired] = events(site, number, "borrow-expired")
    assert expired["borrower"] == "sam"

    # The register: the registry office and auditors see every request and how it ended.
    for login in ("rita", "audrey"):
        page = sign_in(login)
        page.goto("/borrowing")
        register = page.locator("#register")
        expect(register).to_contain_text("Preparing the next order")
        expect(register.locator(".badge.borrow-expired")).to_have_count(1)
        expect(register.locator(".badge.borrow-refused")).to_have_count(1)
    sam.goto("/borrowing")
    expect(sam.locator("#register")).to_have_count(0)

    # The report's borrowings of the weeks around: one refused, one granted that expired.
    tz = site.config.model.gateway.timezone
    weeks = Period("weeks", clock.now - timedelta(days=30), clock.now + timedelta(days=1))
    assert compute(site.registry, weeks, tz, now=clock.now)["borrowings"] == {
        "requested": 2, "granted": 1, "refused": 1, "returned": 0, "expired": 1, "awaiting": 0}


def test_a_confidential_letter_approved_by_a_leader_read_as_previews_only(site: Site, sign_in: SignIn,
                                                                        clock: Clock) -> None:
    number = site.letters["secret"]
    bella = sign_in("bella", lang="zh")  # heads Business, the letter's department
    bella.goto(f"/letters/{number}")
    expect(bella.locator("#borrowing")).to_contain_text("该来信已归档")
    # Over the CLI: the head asks; she may not approve it (confidential: a leader in charge does).
    asked = site.gateway.run("archive", "borrow", number, "--reason", "The merger file", "--days", "3",
                             "--as", "bella")
    borrowing_id = asked.stdout.split("borrowing ")[1].split()[0]
    refused = site.gateway.run("archive", "grant", borrowing_id, "--as", "bella", check=False)
    assert refused.returncode != 0 and "leader in charge" in refused.stderr
    # Someone who cannot see the letter learns nothing of it from the request's (sequential) id.
    unseen = site.gateway.run("archive", "grant", borrowing_id, "--as", "gina", check=False)
    assert unseen.returncode != 0 and f"no borrowing {borrowing_id}" in unseen.stderr
    assert number not in unseen.stderr and "leader" not in unseen.stderr
    leo = sign_in("leo")
    leo.goto("/borrowing")
    expect(leo.locator("#awaiting")).to_contain_text("The merger file")
    decide(leo, "The merger file", "Grant")

    bella.goto(f"/letters/{number}")
    expect(bella.locator("pre.body")).to_contain_text("The terms are attached.")
    expect(bella.locator("#borrowing")).to_contain_text("仅可预览页面")
    expect(bella.locator("a[href$='/original']")).to_have_count(0)
    assert bella.request.get(f"/letters/{number}/original").status == 404
    # Returned early: the reading ends there.
    bella.click("button:has-text('立即归还')")
    bella.goto(f"/letters/{number}")
    expect(bella.locator("main")).not_to_contain_text("The terms are attached.")
    assert events(site, number, "borrow-returned")[0]["borrower"] == "bella"


def test_circulation_and_borrowing_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same records on PostgreSQL: a circulation signed in turn and reminded; a borrowing granted,
    read and expired."""
    from gateway.services.borrowing import Borrowings
    from gateway.services.circulation import Circulations

    site = Site(tmp_path, registry_url=pg_url)
    try:
        site.add_people()
        site.add_letters()
        def who(login: str) -> Principal:
            person = site.people.principal(login)
            assert person is not None
            return person

        now = datetime.now(timezone.utc)
        circulations = Circulations(site.config, site.registry)
        number = site.letters["office"]
        circulations.start(who("rita"), number, ["leo", "gina"], now=now)
        with pytest.raises(Refused, match="turn"):
            circulations.sign(who("gina"), number, now=now)
        following = circulations.sign(who("leo"), number, "阅办", now=now)
        assert following is not None and following.target == "gina"
        assert [letter.number for letter, _ in circulations.to_read(who("gina"))] == [number]
        late = [r for r in reminders.run(site.config, site.registry, now + timedelta(days=7))
                if r.kind.startswith("circulation")]
        assert [r.kind for r in late] == ["circulation"]
        assert circulations.sign(who("gina"), number, now=now + timedelta(days=7)) is None

        operator = Principal.operator("test")
        archived = site.letters["business"]
        site.access.act(operator, archived, "close", text="done")
        letter = site.registry.letter(archived)
        assert letter is not None
        Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
        books = Borrowings(site.config, site.registry)
        sam = who("sam")
        borrowing_id = books.request(sam, archived, reason="an order", days=1, now=now)
        letter = site.registry.letter(archived)
        assert letter is not None and not site.access.content_allowed(sam, letter, now=now)
        books.decide(who("bella"), borrowing_id, grant=True, now=now)
        assert site.access.content_allowed(sam, letter, now=now + timedelta(hours=23))
        assert not site.access.content_allowed(sam, letter, now=now + timedelta(days=1, minutes=1))
        reminders.run(site.config, site.registry, now + timedelta(days=1, minutes=1))
        assert [b.borrowing.status for b in books.mine(sam)] == ["expired"]
    finally:
        site.close()


def test_a_borrowed_confidential_letter_is_not_extracted_as_files(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site")
    try:
        site.add_people()
        msg = EmailMessage()
        msg["From"], msg["To"] = "Alice <alice@partner.example>", "sales@example.org"
        msg["Subject"], msg["Date"] = "Confidential: merger terms", "Mon, 23 Nov 2026 10:00:00 +0800"
        msg.set_content("The terms are attached.\n")
        msg.add_attachment(b"secret terms", maintype="application", subtype="octet-stream", filename="terms.bin")
        number = site.ingest("secret", msg.as_bytes())
        site.access.act(Principal.operator("test"), number, "close", text="done")
        letter = site.registry.letter(number)
        assert letter is not None and letter.confidentiality == "confidential"
        month = letter.received_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
        Archiver(site.config, site.registry).run(month)
        asked = site.gateway.run("archive", "borrow", number, "--reason", "Merger file", "--days", "3", "--as", "bella")
        bid = asked.stdout.split("borrowing ")[1].split()[0]
        site.gateway.run("archive", "grant", bid, "--as", "leo")
        out = tmp_path / "out"
        done = site.gateway.run("letters", "extract", number, str(out), "--as", "bella", check=False)
        # Previews only: no file of a borrowed confidential letter may be written.
        assert not (out / "terms.bin").exists(), done.stdout
        assert done.returncode != 0 and "read as page previews" in done.stderr
        # The operator, who keeps the archive, still extracts it.
        site.gateway.run("letters", "extract", number, str(tmp_path / "kept"))
        assert (tmp_path / "kept" / "terms.bin").read_bytes() == b"secret terms"
    finally:
        site.close()



def test_the_command_line_names_why_a_letter_is_not_yours_to_read(tmp_path: Path) -> None:
    """`letters show --as` on a letter whose entry the person sees and whose content they may not
    read says why: archived (a borrowing), confidential, or a role that reads by grant only."""
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site")
    try:
        site.add_people()
        site.add_letters()
        archived = site.letters["business"]
        site.access.act(Principal.operator("test"), archived, "close", text="done")
        letter = site.registry.letter(archived)
        assert letter is not None and letter.confidentiality == "normal"
        Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
        assert site.registry.letter(archived).status == "archived"  # type: ignore[union-attr]

        def why(number: str, login: str) -> str:
            shown = site.gateway.run("letters", "show", number, "--as", login, "--json")
            return str(json.loads(shown.stdout)["content"])

        for login in ("rita", "sam"):  # the registry office, and the department's member
            reason = why(archived, login)
            assert "archived" in reason and "borrowing" in reason and "confidential" not in reason, reason
        reason = why(site.letters["secret"], "rita")
        assert "confidential letters are read by their owner" in reason and "archived" not in reason, reason
        reason = why(site.letters["office"], "audrey")  # an auditor reads an ordinary letter by grant
        assert "your role" in reason and "grant" in reason and "confidential" not in reason, reason
    finally:
        site.close()


def test_a_period_longer_than_allowed_is_held_back_by_the_form_and_refused_keeping_the_reason(site: Site) -> None:
    site.people.set_language("sam", "zh")
    sam = site.sign_in("sam")
    number = site.letters["business"]
    limit = site.config.model.borrowing.max_days
    page = sam.get(f"/letters/{number}").text
    assert f'name="days" type="number" min="1" max="{limit}"' in page  # the browser holds back a longer one
    reason = "核对订单金额，准备年度审计"
    before = len(events(site, number, "borrow-requested"))
    refused = sam.post(f"/letters/{number}/borrow", data={"reason": reason, "days": str(limit + 30),
                                                          "csrf": sam.csrf})
    assert refused.status_code == 400 and f"借阅期限为 1 至 {limit} 天" in refused.text
    assert f">{reason}</textarea>" in refused.text and f'value="{limit + 30}"' in refused.text
    assert len(events(site, number, "borrow-requested")) == before


def test_a_queue_says_an_archived_letter_is_read_by_borrowing_it(site: Site) -> None:
    site.people.set_language("sam", "zh")
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", site.sign_in("sam").get("/letters?queue=all").text))
    assert "已归档，需借阅" in words  # the Business order, archived: its subject is read through a borrowing
    assert "Please confirm the order" not in words and "Order 4711" not in words
