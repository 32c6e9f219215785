"""Replies under approval in a real browser (Debian's chromium): a member drafts a reply to an urgent
letter with an attachment, its department head returns it with a comment, the member redrafts it,
head and leader in charge approve it in order, and it reaches the sender at an SMTP sink as a reply
(In-Reply-To their letter, its number in the subject, our From, the attachment). Sending or
approving before the chain completes is refused in the web and the CLI; an approval waiting too
long is reminded under a given clock, once per pass."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import conftest
import pytest
from browser_support import SignIn, browser_fixture, signed_in_pages  # noqa: F401
from playwright.sync_api import Browser, expect
from smtp_sink import SmtpSink
from web_support import PASSWORD, PEOPLE, Person, Site

from gateway.outbound.sender import OutboxSender
from gateway.registry.replies import ReplyRecords
from gateway.report.figures import Period, compute
from gateway.services.access import Forbidden, Refused
from gateway.services.replies import Replies
from gateway.track import reminders

pytestmark = pytest.mark.timeout(300)

EXTRA = """
[outbound]
relay = "{relay}"
from_address = "gateway@example.org"
from_name = "Example Org"

[replies]
top_leadership = ["tom@example.org"]
approval_reminder_working_days = 1

[[replies.approval]]
when = {{confidentiality = "confidential"}}
chain = ["head", "leader", "top"]

[[replies.approval]]
when = {{urgency = ["urgent", "special"]}}
chain = ["head", "leader"]

[[replies.approval]]
when = {{tags = ["important"]}}
chain = ["head", "leader"]
"""
# Leo is the leader in charge of both departments; Olga heads the General Office by its head's address.
LEADERS = 'head = "office.head@example.org"\n', 'head = "office.head@example.org"\nleaders = ["leo@example.org"]\n'
LEADERS_B = ('head = "business.head@example.org"\n',
             'head = "business.head@example.org"\nleaders = ["leo@example.org"]\n')
MORE_PEOPLE = (Person("olga", emails=("office.head@example.org",)), Person("tom", emails=("tom@example.org",)))


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(conftest, "DEPARTMENTS", conftest.DEPARTMENTS.replace(*LEADERS).replace(*LEADERS_B))
    s = Site(tmp_path, extra=EXTRA.format(relay=sink.address))
    s.add_people(PEOPLE + MORE_PEOPLE)
    s.add_letters()
    yield s
    s.close()


@pytest.fixture(name="sign_in")
def sign_in_fixture(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def deliver(site: Site) -> None:
    OutboxSender(site.config, site.registry).deliver_due()


def actions(site: Site, number: str) -> list[str]:
    letter = site.registry.letter(number)
    assert letter is not None
    return [e.action for e in sorted(letter.events, key=lambda e: e.id)]


def test_a_reply_returned_redrafted_approved_in_order_and_delivered(site: Site, sign_in: SignIn,
                                                                    sink: SmtpSink, tmp_path: Path) -> None:
    number = site.letters["urgent"]
    letter = site.registry.letter(number)
    assert letter is not None and letter.urgency == "urgent" and letter.message_id
    replies = Replies(site.config, site.registry)

    # Gina (a member of the General Office) drafts the reply with an attachment and submits it.
    gina = sign_in("gina")
    gina.goto(f"/letters/{number}")
    gina.locator("#reply textarea[name=text]").fill("Dear Alice,\nwe sign the contract today.\n")
    gina.locator("#reply input[type=file]").set_input_files(
        files=[{"name": "contract.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 our contract"}])
    gina.click("#reply button[value=submit]")
    expect(gina.locator("#reply .flash")).to_contain_text("Submitted for approval")
    expect(gina.locator("#reply .reply-chain li")).to_have_count(2)
    expect(gina.locator("#reply .reply-chain li").first).to_contain_text("waiting")
    gina.screenshot(path=str(tmp_path / "submitted.png"), full_page=True)

    # Nothing leaves, and nobody skips a step: the leader before the head, the sending, the drafter.
    leo = site.people.principal("leo")
    assert leo is not None
    with pytest.raises(Refused) as refused:
        replies.approve(leo, number)
    assert refused.value.key == "out-of-order"
    with pytest.raises(Refused) as refused:
        replies.send(leo, number)
    assert refused.value.key == "chain-incomplete"
    with pytest.raises(Forbidden):
        replies.approve(site.people.principal("gina"), number)  # type: ignore[arg-type]
    web_leo = site.sign_in("leo")
    refused_web = web_leo.post(f"/letters/{number}/reply/approve", data={"csrf": web_leo.csrf})
    assert refused_web.status_code == 409 and "须按顺序审批" in refused_web.text  # in Chinese, the default
    refused_web = web_leo.post(f"/letters/{number}/reply/send", data={"csrf": web_leo.csrf})
    assert refused_web.status_code == 409
    cli = site.gateway.run("letters", "approve", number, "--as", "leo", check=False)
    assert cli.returncode == 1 and "approvals go in order" in cli.stderr
    cli = site.gateway.run("letters", "reply", number, "--send", check=False)
    assert cli.returncode == 1 and "nothing is sent before every approver" in cli.stderr
    cli = site.gateway.run("letters", "approve", number, check=False)  # the operator is nobody in the chain
    assert cli.returncode == 1 and "--as" in cli.stderr

    # Olga (the head) finds it in her queue and returns it with a comment.
    olga = sign_in("olga")
    olga.goto("/approvals")
    expect(olga.locator("nav a[href='/approvals'] .count")).to_have_text("1")
    olga.click(f"a[href='/letters/{number}#reply']")
    expect(olga.locator("#reply .reply-text")).to_contain_text("we sign the contract today")
    olga.locator("#reply textarea[name=comment]").fill("Name the contract number, please.")
    olga.click("#reply button[formaction$='/reply/return']")
    expect(olga.locator("#reply .flash")).to_contain_text("Returned")

    # Gina sees why, changes it and submits again: the chain starts over.
    gina.goto(f"/letters/{number}")
    expect(gina.locator("#reply .notice")).to_contain_text("Name the contract number, please.")
    gina.locator("#reply textarea[name=text]").fill("Dear Alice,\nwe sign contract 4711 today.\n")
    gina.click("#reply button[value=submit]")
    expect(gina.locator("#reply .flash")).to_contain_text("Submitted for approval")

    # Head, then leader in charge approve.
    olga.goto(f"/letters/{number}")
    olga.locator("#reply textarea[name=comment]").fill("Fine now.")
    olga.click("#reply button:has-text('Approve')")
    expect(olga.locator("#reply .flash")).to_contain_text("Approved")
    assert site.registry.letter(number).status != "answered"  # type: ignore[union-attr]
    leo_page = sign_in("leo")
    leo_page.goto("/approvals")
    expect(leo_page.locator("nav a[href='/approvals'] .count")).to_have_text("1")
    leo_page.click(f"a[href='/letters/{number}#reply']")
    leo_page.click("#reply button:has-text('Approve')")
    expect(leo_page.locator("#reply .flash")).to_contain_text("sent to the sender")
    expect(leo_page.locator("#reply .reply-chain li.step-approved")).to_have_count(2)
    leo_page.screenshot(path=str(tmp_path / "sent.png"), full_page=True)

    # The reply reaches the sender through the outbox, as a reply to their letter.
    deliver(site)
    [received] = [r for r in sink.to("alice@partner.example") if r.message["Subject"].startswith("Re: [")]
    message = received.message
    assert message["Subject"] == f"Re: [{number}] 紧急：合同签署"
    assert message["In-Reply-To"] == message["References"] == f"<{letter.message_id}>"
    assert "gateway@example.org" in message["From"]
    assert "we sign contract 4711 today" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [attached] = list(message.iter_attachments())
    assert attached.get_filename() == "contract.pdf" and attached.get_content() == b"%PDF-1.4 our contract"
    after = site.registry.letter(number)
    assert after is not None and after.status == "answered"
    trail = actions(site, number)
    for action in ("reply-drafted", "reply-submitted", "reply-returned", "reply-approved", "reply-sent"):
        assert action in trail, (action, trail)
    assert trail.count("reply-submitted") == 2 and trail.count("reply-approved") == 2
    [sent] = [e for e in after.events if e.action == "reply-sent"]
    assert sent.details["message_id"] == message["Message-ID"]
    assert sent.details["recipient"] == "alice@partner.example" and sent.details["outbox"]
    [returned] = [e for e in after.events if e.action == "reply-returned"]
    assert (returned.actor, returned.details["comment"]) == ("olga", "Name the contract number, please.")
    # A sent reply is not sent twice.
    cli = site.gateway.run("letters", "reply", number, "--send", check=False)
    assert cli.returncode == 1 and "sent already" in cli.stderr


def test_an_approval_waiting_too_long_is_reminded(site: Site, sink: SmtpSink,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    number = site.letters["office"]  # ordinary: the head alone approves
    replies = Replies(site.config, site.registry)
    gina = site.people.principal("gina")
    assert gina is not None
    done = site.gateway.run("letters", "reply", number, "--text", "Thank you, see you next week.", "--submit",
                            "--as", "gina")
    assert "submitted for approval by head" in done.stdout
    assert [w.number for w in replies.awaiting(site.people.principal("olga"))] == [number]  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    assert not [r for r in reminders.approvals(site.config, site.registry, now)]
    later = now + timedelta(days=4)  # at least one working day on
    stale = ReplyRecords(site.registry).waiting()  # what a second pass read before the first one committed
    [reminded] = reminders.approvals(site.config, site.registry, later)
    assert reminded.kind == "reply-approval" and [m.recipient for m in reminded.mail] == ["office.head@example.org"]
    assert reminders.approvals(site.config, site.registry, later) == []  # once per pass
    # Two passes at once (the daemon's and `gateway reminders run`): the one that read the step before
    # the other reminded it finds it changed under the lock, and reminds no one.
    with monkeypatch.context() as patch:
        patch.setattr(ReplyRecords, "waiting", lambda self: stale)
        assert reminders.approvals(site.config, site.registry, later + timedelta(seconds=2)) == []
    assert actions(site, number).count("reply-reminded") == 1
    deliver(site)
    notices = [r.message["Subject"] for r in sink.to("office.head@example.org")]
    assert f"[{number}] Reminder: reply awaiting your approval" in notices
    # Approved by the head alone, the reply leaves.
    olga = site.people.principal("olga")
    assert olga is not None and replies.approve(olga, number) == "sent"
    # The month's report: one draft submitted and approved, none returned, approved in the time between.
    letter = site.registry.letter(number)
    assert letter is not None
    submitted = next(e.at for e in letter.events if e.action == "reply-submitted")
    approved = next(e.at for e in letter.events if e.action == "reply-approved")
    tz = site.config.model.gateway.timezone
    month = Period.parse(submitted.astimezone(ZoneInfo(tz)).strftime("%Y-%m"), tz)
    report = compute(site.registry, month, tz)
    assert report["replies"] == {"submitted": 1, "approved": 1, "returned": 0}
    hours = round((approved - submitted).total_seconds() / 3600, 2)
    assert report["time_to_approve"] == {"count": 1, "mean_hours": hours, "p90_hours": hours}
