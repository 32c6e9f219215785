"""Incomplete submissions over the daemon's real SMTP listener with a real SMTP sink as the relay: the
request reaches the sender, their follow-up resumes the letter as a supplement (not a new letter,
its department told, the deadline counted on), a stranger quoting the number only gets recorded, a
passed day reminds the department once, and withdrawal works only for a letter awaiting its sender."""
from __future__ import annotations

import json
import smtplib
import time
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conftest import Gateway, Notify, make_message, outbound_settings, wait_for
from gateway import config as config_mod
from gateway.registry import Registry
from gateway.services.access import Access
from gateway.services.people import Principal
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(300)

TZ = ZoneInfo("Asia/Shanghai")


def send(gateway: Gateway, *, sender: str, subject: str, body: str, to: str = "sales@example.org",
         headers: dict[str, str] | None = None, attachment: tuple[str, bytes] | None = None) -> None:
    message = EmailMessage()
    if sender:
        message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.time_ns()}@partner.example>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if attachment:
        message.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(sender or "robot@partner.example", [to], message.as_bytes())


def events(gateway: Gateway, number: str, action: str) -> list[dict[str, Any]]:
    return [e for e in gateway.show_json(number)["events"] if e["action"] == action]  # type: ignore[index]


def next_working_day(after: date, n: int = 1) -> date:
    day = after
    while n:
        day += timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day


def test_a_request_for_missing_materials_its_supplement_its_reminder_and_withdrawal(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = Gateway(tmp_path, extra=outbound_settings(sink.address))
    calendar = config_mod.load(gateway.config).calendar
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        send(gateway, sender="Alice Partner <alice@partner.example>", subject="Order for next quarter",
             body="Please find our order.\n")
        send(gateway, sender="Bob Buyer <bob@buyer.example>", subject="Another order", body="Our order.\n")
        sink.wait_for(4)  # each: a notification to the owner, a receipt to the sender
        first = gateway.show_json("2026-000001")
        assert first["status"] == "routed" and first["deadline"]

        # Marked incomplete: the sender is asked, the letter waits with its deadline paused.
        by = next_working_day(datetime.now(TZ).date(), 3)
        done = gateway.run("letters", "incomplete", "2026-000001", "--missing", "The signed contract",
                           "--missing", "A copy of the invoice", "--by", by.isoformat(), "--actor", "clerk")
        assert "the request goes to alice@partner.example" in done.stdout
        letter = gateway.show_json("2026-000001")
        assert (letter["status"], letter["deadline"]) == ("awaiting-sender", None)
        [asked] = events(gateway, "2026-000001", "incomplete")
        assert asked["details"]["missing"] == ["The signed contract", "A copy of the invoice"]
        assert asked["details"]["request_to"] == "alice@partner.example"
        assert asked["details"]["paused_deadline"] is not None
        request = wait_for_mail(sink, "alice@partner.example", 2)[-1]  # after the receipt
        message = request.message
        assert message["Subject"] == "[2026-000001] Materials missing from your letter"
        assert message["X-Gateway-Letter"] == "2026-000001" and message["Auto-Submitted"] == "auto-generated"
        text = message.get_content()
        assert "1. The signed contract" in text and "2. A copy of the invoice" in text and by.isoformat() in text
        assert message["Message-ID"] == asked["details"]["message_id"]
        # No reminders while it waits (it has no deadline), and marking it again is refused.
        assert "nothing due" in gateway.run("reminders", "run", "--dry-run").stdout
        again = gateway.run("letters", "incomplete", "2026-000001", "--missing", "x", "--by", by.isoformat(),
                            check=False)
        assert again.returncode != 0 and "awaiting-sender" in again.stderr

        # A stranger quoting the number: recorded on the letter, nothing resumed, no new letter.
        send(gateway, sender="mallory@elsewhere.example", subject="Re: [2026-000001] here you are",
             body="Here are the documents.\n")
        wait_for(lambda: events(gateway, "2026-000001", "follow-up"), 30, "the stranger's mail recorded")
        assert gateway.show_json("2026-000001")["status"] == "awaiting-sender"
        # So is a mail that only says it is from the sender (its From unproven, not in our thread),
        # its attachment kept out of the letter's.
        send(gateway, sender="Alice Partner <alice@partner.example>", subject="Re: [2026-000001] the contract",
             body="Here it is.\n", attachment=("forged.pdf", b"%PDF-1.4 not from alice"))
        wait_for(lambda: len(events(gateway, "2026-000001", "follow-up")) == 2, 30, "the forged mail recorded")
        forged = events(gateway, "2026-000001", "follow-up")[-1]["details"]
        assert forged["from"] == "alice@partner.example" and forged["attachments"] == ["forged.pdf"]
        assert forged["reason"] == "neither a reply to our request nor from the letter's sender, proven: recorded only"
        letter = gateway.show_json("2026-000001")
        assert letter["status"] == "awaiting-sender" and letter["attachments"] == []

        # The sender answers our request (another address of theirs: the thread is what counts),
        # with the contract attached: a supplement, resuming the letter.
        send(gateway, sender="Alice at home <alice@home.example>", subject="Re: Materials missing",
             body="Here is the signed contract.\n\n> the quoted request\n",
             headers={"In-Reply-To": message["Message-ID"], "References": message["Message-ID"]},
             attachment=("contract-signed.pdf", b"%PDF-1.4 signed contract"))
        wait_for(lambda: events(gateway, "2026-000001", "supplemented"), 30, "the supplement recorded")
        letter = gateway.show_json("2026-000001")
        [supplement] = events(gateway, "2026-000001", "supplemented")
        assert letter["status"] == "in-progress" and supplement["details"]["resumed"] is True
        assert supplement["details"]["matched_by"] == "reply"
        assert [a["filename"] for a in letter["attachments"]] == ["contract-signed.pdf"]  # type: ignore[index]
        assert "Here is the signed contract." in str(letter["body_text"])
        # Its attachment is read from the supplement's own mail, kept in the message store.
        registry = Registry.from_config(config_mod.load(gateway.config))
        try:
            [position] = [a.position for a in registry.letter("2026-000001").attachments]  # type: ignore[union-attr]
            found = Access(config_mod.load(gateway.config), registry).attachment(
                Principal.operator("test"), "2026-000001", position, address="test")
            assert found is not None and found[:2] == ("contract-signed.pdf", b"%PDF-1.4 signed contract")
        finally:
            registry.close()
        # The deadline counts on from the working days it had left.
        remaining = asked["details"]["remaining_days"]
        resumed_at = datetime.fromisoformat(supplement["at"])
        assert datetime.fromisoformat(str(letter["deadline"])) == calendar.deadline(resumed_at, remaining)
        assert len(gateway.list_json()) == 2  # not a letter of its own
        told = wait_for_mail(sink, "sales.desk@example.org", 3)
        notice = [r.message for r in told if "Supplement received" in str(r.message["Subject"])]
        assert notice and notice[0]["Subject"] == "[2026-000001] Supplement received from the sender"
        assert "contract-signed.pdf" in notice[0].get_content()
        # A supplement resumes only a letter awaiting its sender: withdrawing it now is refused.
        refused = gateway.run("letters", "withdraw", "2026-000001", check=False)
        assert refused.returncode != 0 and "in-progress" in refused.stderr

        # The second letter's sender never answers: once its day has passed the department is
        # reminded, once, and may withdraw it.
        soon = next_working_day(datetime.now(TZ).date())
        gateway.run("letters", "incomplete", "2026-000002", "--missing", "Your company stamp", "--by", soon.isoformat())
        later = f"{next_working_day(soon).isoformat()} 10:00"
        ran = gateway.run("reminders", "run", "--now", later).stdout
        assert "2026-000002: reminder (awaiting-sender) to sales.desk@example.org" in ran
        assert "2026-000002" not in gateway.run("reminders", "run", "--now", later).stdout
        [reminded] = [e for e in events(gateway, "2026-000002", "reminded")
                      if e["details"]["kind"] == "awaiting-sender"]
        assert reminded["details"]["to"] == ["sales.desk@example.org"]
        wait_for(lambda: any("did not send" in str(r.message["Subject"]) for r in sink.to("sales.desk@example.org")),
                 30, "the department reminded")
        assert "awaiting-sender -> withdrawn" in gateway.run("letters", "withdraw", "2026-000002",
                                                             "--reason", "no stamp").stdout
        assert gateway.show_json("2026-000002")["status"] == "withdrawn"
        assert len(events(gateway, "2026-000002", "withdrawn")) == 1
        # The month's report: two senders asked, one supplemented, one withdrawn, none still awaited.
        report = json.loads(gateway.run("report", "--month", datetime.now(TZ).strftime("%Y-%m"),
                                        "--format", "json").stdout)
        assert report["incomplete"] == {"requested": 2, "supplemented": 1, "withdrawn": 1, "proceeded": 0,
                                        "awaiting": 0}
    finally:
        daemon.stop()


def wait_for_mail(sink: SmtpSink, address: str, count: int) -> list[Any]:
    wait_for(lambda: len(sink.to(address)) >= count, 30, f"{count} mail(s) to {address}")
    return sink.to(address)


def test_a_sender_without_an_address_is_to_be_contacted_by_other_means(
        tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    raw = (b"To: sales@example.org\r\nSubject: A letter with no sender\r\nMessage-ID: <x1@partner.example>\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\n\r\nNo From header at all.\r\n")
    (tmp_path / "nofrom.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "nofrom.eml"))
    by = next_working_day(datetime.now(TZ).date(), 2).isoformat()
    done = gateway.run("letters", "incomplete", "2026-000001", "--missing", "Who you are", "--by", by)
    assert "contact them by other means" in done.stdout
    [asked] = events(gateway, "2026-000001", "incomplete")
    assert asked["details"]["contact"] == "other-means" and "request_to" not in asked["details"]
    assert not [m for m in gateway.show_json("2026-000001")["outbox"]  # type: ignore[union-attr]
                if m["kind"] == "request"]
    past = gateway.run("letters", "incomplete", "2026-000001", "--missing", "x", "--by", "2020-01-01", check=False)
    assert past.returncode != 0
    report = json.loads(gateway.run("report", "--month", datetime.now(TZ).strftime("%Y-%m"), "--format", "json").stdout)
    assert report["incomplete"] == {"requested": 1, "supplemented": 0, "withdrawn": 0, "proceeded": 0,
                                    "awaiting": 1}


def test_only_a_reply_in_our_thread_or_a_proven_from_counts_for_the_letters_sender() -> None:
    """The decision itself: a From header naming the sender resumes nothing and rates nothing."""
    from gateway.registry.outward import SenderThread
    from gateway.stages.answers import sender_follow_up

    def follow(thread: SenderThread, *, sender: str = "alice@partner.example", proven: bool,
               subject: str = "Re: [2026-000001]", body: str = "Here it is.", replying: bool = False) -> Any:
        return sender_follow_up(subject=subject, sender=sender, message_ids=["<ours@example.org>"] if replying else [],
                                body=body, message_id="<x@partner.example>", internal=False, automatic=False,
                                proven=proven, find=lambda numbers, ids: thread)

    waiting = SenderThread("2026-000001", "awaiting-sender", "alice@partner.example", None, "<ours@example.org>",
                           None, None)
    assert follow(waiting, proven=False).verified is False
    assert follow(waiting, proven=True).verified is True
    assert follow(waiting, sender="mallory@elsewhere.example", proven=True).verified is False
    in_thread = SenderThread("2026-000001", "awaiting-sender", "alice@partner.example", "request",
                             "<ours@example.org>", None, None)
    assert follow(in_thread, sender="alice@home.example", proven=False, replying=True).verified is True
    closed = SenderThread("2026-000001", "closed", "alice@partner.example", None, None, "<result@example.org>",
                          "alice@partner.example")
    named = follow(closed, proven=False, body="1 terrible")
    assert (named.kind, named.score, named.verified) == ("rating", 1, False)
    assert follow(closed, proven=True, body="1 terrible").verified is True
    answered = SenderThread("2026-000001", "closed", "alice@partner.example", "feedback", None,
                            "<result@example.org>", "alice@partner.example")
    assert follow(answered, proven=False, body="2", replying=True).verified is True



def test_a_department_goes_on_without_the_materials_its_sender_did_not_send(tmp_path: Path) -> None:
    """From awaiting-sender the letter's department may go on without the materials: the letter is
    in progress again with the working days it had left, the request is settled (no reminder of it
    any more), the history says so and the report counts it; no one else may, and only once."""
    from gateway.services.incomplete import Incomplete
    from gateway.services.letters import LetterSteps

    gateway = Gateway(tmp_path)
    for n in (1, 2):
        (tmp_path / f"{n}.eml").write_bytes(make_message(n, to="sales@example.org"))
        gateway.run("ingest", str(tmp_path / f"{n}.eml"))
    gateway.run("users", "add", "leo", "--email", "leo@example.org", "--role", "leader", "--no-password")
    calendar = config_mod.load(gateway.config).calendar
    by = next_working_day(datetime.now(TZ).date(), 2)
    for number in ("2026-000001", "2026-000002"):
        gateway.run("letters", "incomplete", number, "--missing", "The signed contract", "--by", by.isoformat())
    [asked] = events(gateway, "2026-000001", "incomplete")

    refused = gateway.run("letters", "proceed", "2026-000001", "--as", "leo", check=False)
    assert refused.returncode != 0 and "only the people of department" in refused.stderr
    done = gateway.run("letters", "proceed", "2026-000001", "--reason", "the copy we have will do", "--by", "desk")
    assert done.stdout.startswith("2026-000001: awaiting-sender -> in-progress, deadline ")
    letter = gateway.show_json("2026-000001")
    [went_on] = events(gateway, "2026-000001", "proceeded")
    assert letter["status"] == "in-progress" and went_on["actor"] == "desk"
    deadline = calendar.deadline(datetime.fromisoformat(went_on["at"]), asked["details"]["remaining_days"])
    assert datetime.fromisoformat(str(letter["deadline"])) == deadline
    assert went_on["details"] == {"from": "awaiting-sender", "to": "in-progress",
                                  "request": asked["details"]["request"], "deadline": deadline.isoformat(),
                                  "text": "the copy we have will do"}
    again = gateway.run("letters", "proceed", "2026-000001", check=False)
    assert again.returncode != 0 and "2026-000001 is in-progress: it cannot be resumed without the materials" \
        in again.stderr

    registry = Registry.from_config(config_mod.load(gateway.config))
    try:
        config = config_mod.load(gateway.config)
        request = Incomplete(config, registry).request("2026-000001")
        assert request is not None and request.status == "waived" and request.settled_at is not None
        # Only through its own path, which gives the deadline back: never as a bare step.
        with pytest.raises(ValueError):
            LetterSteps(config, registry).step("2026-000002", "proceed", actor="desk")
    finally:
        registry.close()
    # Its day passed, only the letter still waiting is reminded of it.
    ran = gateway.run("reminders", "run", "--now", f"{next_working_day(by).isoformat()} 10:00").stdout
    assert "2026-000002: reminder (awaiting-sender)" in ran and "2026-000001: reminder (awaiting-sender)" not in ran
    report = json.loads(gateway.run("report", "--month", datetime.now(TZ).strftime("%Y-%m"), "--format", "json").stdout)
    assert report["incomplete"] == {"requested": 2, "supplemented": 0, "withdrawn": 0, "proceeded": 1,
                                    "awaiting": 1}
