"""Tracking: working days across weekends, holidays and make-up days; deadlines; the lifecycle."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from email import message_from_bytes
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from smtp_sink import SmtpSink

from conftest import Gateway, make_message, outbound_settings, write_messages
from gateway.stages.answers import own_text, parse_command
from gateway.track.calendar import WorkingCalendar

# 2026: 1-7 October a holiday week; Saturday 10 October worked instead.
CAL = WorkingCalendar("Asia/Shanghai", ["saturday", "sunday"],
                      [date(2026, 10, d) for d in (1, 2, 5, 6, 7)], [date(2026, 10, 10)])


def local(y: int, m: int, d: int, h: int = 10) -> datetime:
    return datetime(y, m, d, h, tzinfo=CAL.tz)


@pytest.mark.parametrize("received,days,due", [
    (local(2026, 11, 23), 1, "2026-11-24"),   # Monday + 1 = Tuesday
    (local(2026, 11, 27), 1, "2026-11-30"),   # Friday + 1 = Monday: the weekend does not count
    (local(2026, 11, 28), 0, "2026-11-30"),   # received on Saturday: counts from Monday
    (local(2026, 11, 28), 1, "2026-12-01"),
    (local(2026, 9, 30), 1, "2026-10-08"),    # the holiday week and its weekend skipped
    (local(2026, 10, 9), 1, "2026-10-10"),    # Friday + 1 = the make-up Saturday
    (local(2026, 10, 3), 2, "2026-10-10"),    # received in the holidays: counted from the 8th
    (local(2026, 11, 23), 5, "2026-11-30"),
])
def test_working_days_skip_weekends_and_holidays_and_count_make_up_days(received: datetime, days: int,
                                                                       due: str) -> None:
    deadline = CAL.deadline(received, days)
    assert deadline.isoformat() == f"{due}T23:59:59+08:00"


def test_the_time_zone_decides_the_day() -> None:
    # 2026-11-27 17:00 UTC is already Saturday 01:00 in Shanghai.
    assert CAL.deadline(datetime(2026, 11, 27, 17, 0, tzinfo=timezone.utc), 0).date() == date(2026, 11, 30)
    assert CAL.working_days_between(local(2026, 9, 30), local(2026, 10, 12)) == 4  # 8, 9, 10 and 12 October


def test_deadlines_come_from_category_and_urgency(tmp_path: Path) -> None:
    rules = """
rules:
  - name: urgent
    when: {subject: [urgent]}
    set: {urgency: urgent}
    stop: false
  - name: official
    when: {subject: [notice]}
    set: {category: external.official, department: business}
  - name: quick
    when: {subject: [quick]}
    set: {department: business, deadline_days: 0}
"""
    gateway = Gateway(tmp_path, rules=rules, extra="""
[calendar]
holidays = [2026-11-25]

[deadlines]
answer_days = 5
urgency = { urgent = 1 }

[deadlines.category]
"external.official" = 3
""")
    gateway.run("ingest", *write_messages(tmp_path, (
        make_message(n, subject=subject) for n, subject in enumerate(["notice", "urgent notice", "quick", "hello"]))))
    received = {letter["subject"]: letter for letter in gateway.list_json()}
    start = datetime.fromisoformat(str(received["notice"]["received_at"]))
    cal = WorkingCalendar("Asia/Shanghai", ["saturday", "sunday"], [date(2026, 11, 25)], [])
    expected = {"notice": 3, "urgent notice": 1, "quick": 0, "hello": 5}
    for subject, days in expected.items():
        assert received[subject]["deadline"] == cal.deadline(start, days).astimezone(timezone.utc).isoformat(), subject
    routed = [e for e in gateway.show_json(str(received["notice"]["number"]))["events"] if e["action"] == "routed"]
    assert routed[0]["details"]["deadline"] == cal.deadline(start, 3).isoformat()


def test_the_lifecycle_moves_and_refuses(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    path = tmp_path / "a.eml"
    path.write_bytes(make_message(1, to="sales@example.org"))
    gateway.run("ingest", str(path))

    def step(*args: str, ok: bool = True) -> str:
        proc = gateway.run("letters", *args, check=False)
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc.stdout + proc.stderr

    assert "2026-000001: routed -> acknowledged" in step("ack", "2026-000001", "--by", "li.wei")
    assert "it cannot be acknowledged (only when routed)" in step("ack", "2026-000001", ok=False)
    assert "note recorded (acknowledged)" in step("note", "2026-000001", "called the sender back")
    assert "acknowledged -> in-progress" in step("progress", "2026-000001")
    assert "in-progress -> answered" in step("answer", "2026-000001", "--text", "sent the quotation")
    assert "answered -> closed" in step("close", "2026-000001", "--result", "quotation accepted")
    assert "2026-000001 is closed: it cannot be put in progress" in step("progress", "2026-000001", ok=False)
    assert "2026-000001 is closed: it cannot be reassigned" in step(
        "reassign", "2026-000001", "general-office", "--reason", "x", ok=False)
    assert "no letter 2026-000099" in step("ack", "2026-000099", ok=False)
    events = gateway.show_json("2026-000001")["events"]
    moves = [(e["action"], e["details"].get("from"), e["details"].get("to")) for e in events
             if e["action"] in ("acknowledged", "note", "in-progress", "answered", "closed")]
    assert moves == [("acknowledged", "routed", "acknowledged"), ("note", "acknowledged", "acknowledged"),
                     ("in-progress", "acknowledged", "in-progress"), ("answered", "in-progress", "answered"),
                     ("closed", "answered", "closed")]
    actors = {e["action"]: e["actor"] for e in events}
    assert actors["acknowledged"] == "li.wei"
    assert [e["details"].get("text") for e in events if e["action"] == "closed"] == ["quotation accepted"]


def test_overdue_lists_open_letters_past_their_deadline(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, rules="rules:\n  - name: all\n    when: {channel: email}\n"
                                      "    set: {department: business, deadline_days: 2}\n")
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n) for n in range(3))))
    gateway.run("letters", "close", "2026-000002", "--result", "done")
    assert gateway.list_json("--overdue") == []  # nothing is due yet
    deadline = datetime.fromisoformat(str(gateway.list_json()[0]["deadline"]))
    later = deadline.astimezone(CAL.tz).date().isoformat()
    overdue = gateway.list_json("--overdue", "--as-of", later)
    assert [letter["number"] for letter in overdue] == ["2026-000001", "2026-000003"]  # the closed one is not overdue


def test_reminders_before_and_at_the_deadline_then_escalation_under_a_controlled_clock(tmp_path: Path) -> None:
    import json

    gateway = Gateway(tmp_path, rules="rules:\n  - name: all\n    when: {channel: email}\n"
                                      "    set: {department: business, deadline_days: 2}\n", extra="""
[reminders]
before_working_days = 1
repeat_working_days = 1
escalate_after = 3
""")
    path = tmp_path / "a.eml"
    path.write_bytes(make_message(1))
    gateway.run("ingest", str(path))
    [letter] = gateway.list_json()
    cal = WorkingCalendar("Asia/Shanghai", ["saturday", "sunday"], [], [])
    received = datetime.fromisoformat(str(letter["received_at"])).astimezone(cal.tz)
    first = cal.add_working_days(received.date(), 0)
    due = cal.add_working_days(first, 2)
    assert datetime.fromisoformat(str(letter["deadline"])).astimezone(cal.tz).date() == due

    def run(day: date, hour: int = 9) -> list[str]:
        out = gateway.run("reminders", "run", "--now", f"{day.isoformat()} {hour:02d}:00").stdout
        return [line for line in out.splitlines() if line != "nothing due"]

    before = cal.add_working_days(first, 1)
    assert gateway.run("reminders", "run", "--now", f"{before.isoformat()} 09:00", "--dry-run").stdout.strip() == \
        "2026-000001: reminder (before) to sales.desk@example.org (not sent: dry run)"
    assert run(before) == ["2026-000001: reminder (before) to sales.desk@example.org"]
    assert run(before, 15) == []  # once
    assert run(due) == ["2026-000001: reminder (unacknowledged) to sales.desk@example.org"]  # still only routed
    after = cal.add_working_days(due, 1)
    assert run(after) == ["2026-000001: reminder (overdue) to sales.desk@example.org",
                          "2026-000001: escalation to business.head@example.org"]
    assert run(after, 16) == []
    assert run(after + timedelta(days=1 if after.weekday() < 4 else 3)) == [
        "2026-000001: reminder (overdue) to sales.desk@example.org"]  # the next working day; no second escalation
    gateway.run("letters", "close", "2026-000001", "--result", "answered by phone")
    assert run(after + timedelta(days=7)) == []  # closed letters are left alone

    detail = gateway.show_json("2026-000001")
    kinds = [(e["action"], e["details"]["kind"]) for e in detail["events"] if e["action"] in ("reminded", "escalated")]
    assert kinds == [("reminded", "before"), ("reminded", "unacknowledged"), ("reminded", "overdue"),
                     ("escalated", "escalation"), ("reminded", "overdue")]
    mails = [(m["kind"], m["recipient"]) for m in detail["outbox"] if m["kind"] in ("reminder", "escalation")]
    assert mails == [("reminder", "sales.desk@example.org")] * 3 + [("escalation", "business.head@example.org"),
                                                                   ("reminder", "sales.desk@example.org")]
    assert json.loads(gateway.run("status", "--json", check=False).stdout)["outbox"]["pending"] >= 5


ALL_TO_BUSINESS = ("rules:\n  - name: all\n    when: {channel: email}\n"
                   "    set: {department: business, deadline_days: 2}\n")


def registry_of(gateway: Gateway) -> tuple[Any, Any]:
    from gateway.config import load
    from gateway.registry import Registry

    config = load(gateway.config)
    return config, Registry.from_config(config)


def moved_back(gateway: Gateway, number: str, days: int) -> None:
    """The letter arrived `days` earlier than it did (its events stay as they were)."""
    import sqlite3

    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute(f"UPDATE letters SET received_at = datetime(received_at, '-{days} days'), "
                   f"created_at = datetime(created_at, '-{days} days'), deadline = datetime(deadline, '-{days} days') "
                   "WHERE number = ?", (number,))


def test_a_reopened_letter_is_reminded_before_and_after_its_new_deadline_and_escalated_again(tmp_path: Path) -> None:
    """Reminders belong to a deadline: once a dissatisfied sender reopens the letter with a new
    one, its department is reminded before it, at it, and its head told again when it passes."""
    from datetime import time as clock

    from gateway.registry.outward import OutwardRecords
    from gateway.services.letters import LetterSteps
    from gateway.track import reminders

    gateway = Gateway(tmp_path, rules=ALL_TO_BUSINESS, extra="""
[reminders]
before_working_days = 1
repeat_working_days = 1
escalate_after = 2
""")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    moved_back(gateway, "2026-000001", 21)
    config, registry = registry_of(gateway)
    cal, number = config.calendar, "2026-000001"
    steps = LetterSteps(config, registry)
    steps.step(number, "ack", actor="desk")

    def run(day: date) -> list[str]:
        return [r.kind for r in reminders.run(config, registry, datetime.combine(day, clock(9), cal.tz))]

    def working_day_before(day: date) -> date:
        day -= timedelta(days=1)
        while not cal.is_working_day(day):
            day -= timedelta(days=1)
        return day

    first = registry.letter(number).deadline.astimezone(cal.tz).date()
    assert run(working_day_before(first)) == ["before"]
    assert run(cal.add_working_days(first, 1)) == ["overdue", "escalation"]
    steps.step(number, "close", actor="desk", text="done")
    _, reopened = OutwardRecords(registry).rate(
        number, "<result@example.org>", score=1, comment="not answered", via="web", actor="sender",
        address="127.0.0.1", reopen_at_most=2, resume=lambda _days, now: cal.deadline(now, 5), notify=[])
    assert reopened
    renewed = registry.letter(number).deadline
    second = renewed.astimezone(cal.tz).date()
    assert run(working_day_before(second)) == ["before"]
    assert run(cal.add_working_days(second, 1)) == ["overdue", "escalation"]
    recorded = [(e.action, e.details["kind"], e.details["deadline"]) for e in registry.letter(number).events
                if e.action in ("reminded", "escalated")]
    assert recorded[-3:] == [("reminded", "before", renewed.isoformat()), ("reminded", "overdue", renewed.isoformat()),
                             ("escalated", "escalation", renewed.isoformat())]
    registry.close()


def test_a_letter_reopened_by_its_sender_gets_again_the_working_days_its_rule_gave_it(tmp_path: Path) -> None:
    """A rule's deadline_days, not the category's days, set the first deadline: a sender's low
    rating reopens the letter with as many working days again, counted from the reopening."""
    from gateway.outbound.outward import rating_token
    from gateway.services.letters import LetterSteps
    from gateway.services.satisfaction import Satisfaction

    rules = ("rules:\n  - name: complaints\n    when: {channel: email}\n"
             "    set: {category: external.inquiry_complaint, department: business, deadline_days: 2}\n")
    gateway = Gateway(tmp_path, rules=rules, extra="""
[deadlines]
answer_days = 5

[deadlines.category]
"external.inquiry_complaint" = 12
""")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    config, registry = registry_of(gateway)
    cal, number = config.calendar, "2026-000001"
    letter = registry.letter(number)
    assert letter.deadline == cal.deadline(letter.received_at, 2)
    LetterSteps(config, registry).step(number, "close", actor="desk", text="Answered by telephone.")
    [result] = [m for m in registry.outbox(letter_id=letter.id) if m.kind == "feedback"]
    _, reopened = Satisfaction(config, registry).by_link(
        rating_token(config, result.message_id, result.created_at), 1, "not answered", address="127.0.0.1")
    assert reopened
    letter = registry.letter(number)
    [event] = [e for e in letter.events if e.action == "reopened"]
    assert letter.status == "in-progress"
    assert letter.deadline == cal.deadline(event.at, 2) != cal.deadline(event.at, 12)
    assert event.details["deadline"] == cal.deadline(event.at, 2).isoformat()
    registry.close()


def test_reminders_recorded_without_their_deadline_count_until_the_letter_has_a_new_one() -> None:
    from gateway.registry.reminders import OpenLetter, Sent

    at = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
    deadline = datetime(2026, 11, 23, 15, 59, 59, tzinfo=timezone.utc)
    letter = OpenLetter(1, "2026-000001", "in-progress", "business", None, at, deadline)
    assert Sent("before", at).of(letter)
    assert Sent("before", at, deadline).of(letter)
    assert not Sent("before", at, deadline - timedelta(days=7)).of(letter)
    reopened = OpenLetter(1, "2026-000001", "in-progress", "business", None, at, deadline,
                          renewed_at=at + timedelta(days=1))
    assert not Sent("before", at).of(reopened) and Sent("before", at + timedelta(days=2)).of(reopened)


def test_an_overdue_reminder_not_sent_is_neither_reported_nor_counted_towards_the_escalation(
        tmp_path: Path) -> None:
    """Passes just before and just after midnight: the second sends nothing, says nothing, and
    does not escalate after a single reminder."""
    gateway = Gateway(tmp_path, rules=ALL_TO_BUSINESS, extra="""
[reminders]
before_working_days = 0
repeat_working_days = 1
escalate_after = 2
""")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    gateway.run("letters", "ack", "2026-000001")
    cal = WorkingCalendar("Asia/Shanghai", ["saturday", "sunday"], [], [])
    due = datetime.fromisoformat(str(gateway.show_json("2026-000001")["deadline"])).astimezone(cal.tz).date()
    first, second = cal.add_working_days(due, 1), cal.add_working_days(due, 2)

    def run(moment: str) -> str:
        return gateway.run("reminders", "run", "--now", moment).stdout.strip()

    assert run(f"{first} 23:50") == "2026-000001: reminder (overdue) to sales.desk@example.org"
    assert run(f"{second} 00:10") == "nothing due"
    assert run(f"{second} 09:00") == "nothing due"
    assert run(f"{second} 12:00") == ("2026-000001: reminder (overdue) to sales.desk@example.org\n"
                                      "2026-000001: escalation to business.head@example.org")
    detail = gateway.show_json("2026-000001")
    sent = [(e["details"]["kind"], e["details"]["count"]) for e in detail["events"]  # type: ignore[index]
            if e["action"] in ("reminded", "escalated")]
    assert sent == [("overdue", 1), ("overdue", 2), ("escalation", 2)]
    assert [m["kind"] for m in detail["outbox"] if m["kind"] in ("reminder", "escalation")] == [  # type: ignore[index]
        "reminder", "reminder", "escalation"]


def test_one_pass_sends_the_owners_only_the_most_advanced_reminder_due_and_never_the_others_later(
        tmp_path: Path, sink: SmtpSink) -> None:
    """The daemon was down from before the acknowledgement day to after the deadline: its first
    pass finds the letter unacknowledged and overdue at once. The owners get the overdue reminder
    alone; the other is recorded as superseded, is never sent later, and does not count towards
    the escalation (which follows two reminders really sent)."""
    from gateway.outbound.sender import OutboxSender

    gateway = Gateway(tmp_path, rules=ALL_TO_BUSINESS, extra=outbound_settings(sink.address) + """
[reminders]
before_working_days = 1
repeat_working_days = 1
escalate_after = 2
""")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    config, registry = registry_of(gateway)
    cal = WorkingCalendar("Asia/Shanghai", ["saturday", "sunday"], [], [])
    due = datetime.fromisoformat(str(gateway.show_json("2026-000001")["deadline"])).astimezone(cal.tz).date()
    after, next_day = cal.add_working_days(due, 1), cal.add_working_days(due, 2)

    def run(moment: str, *dry_run: str) -> list[str]:
        return gateway.run("reminders", "run", "--now", moment, *dry_run).stdout.strip().splitlines()

    def delivered(address: str) -> list[str]:
        OutboxSender(config, registry).deliver_due()
        return [r.message["Subject"] for r in sink.to(address) if "Reminder" in r.message["Subject"]
                or "Escalation" in r.message["Subject"]]

    # On the deadline's day, unacknowledged and before at once: the one before the deadline alone.
    assert run(f"{due} 09:00", "--dry-run") == [
        "2026-000001: reminder (before) to sales.desk@example.org (not sent: dry run)"]
    assert run(f"{after} 09:00") == ["2026-000001: reminder (overdue) to sales.desk@example.org"]
    assert delivered("sales.desk@example.org") == ["[2026-000001] Reminder: overdue"]
    assert delivered("business.head@example.org") == []
    assert run(f"{after} 15:00") == ["nothing due"]  # the unacknowledged one is not sent later either
    assert run(f"{next_day} 09:00") == ["2026-000001: reminder (overdue) to sales.desk@example.org",
                                        "2026-000001: escalation to business.head@example.org"]
    assert delivered("sales.desk@example.org") == ["[2026-000001] Reminder: overdue"] * 2
    assert len(delivered("business.head@example.org")) == 1
    events = [(e.action, e.details["kind"], e.details["count"]) for e in registry.letter("2026-000001").events
              if e.action in ("reminded", "escalated", "reminder-superseded")]
    assert events == [("reminder-superseded", "unacknowledged", 1), ("reminded", "overdue", 1),
                      ("reminded", "overdue", 2), ("escalated", "escalation", 2)]
    registry.close()


def test_two_passes_at_once_send_each_reminder_once_and_report_only_what_they_sent(tmp_path: Path) -> None:
    from gateway.track import reminders

    gateway = Gateway(tmp_path, rules=ALL_TO_BUSINESS, extra="""
[reminders]
before_working_days = 0
repeat_working_days = 1
escalate_after = 1
""")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    gateway.run("letters", "ack", "2026-000001")
    config, registry = registry_of(gateway)
    later = registry.letter("2026-000001").deadline + timedelta(days=3)
    seen = reminders.due(config, registry, later)  # one pass has decided...
    assert [r.kind for r in seen] == ["overdue", "escalation"]
    assert [r.kind for r in reminders.run(config, registry, later)] == ["overdue", "escalation"]  # ...another sent
    assert [reminders.send(config, registry, r, later) for r in seen] == [None, None]
    events = [e.details["kind"] for e in registry.letter("2026-000001").events if e.action in ("reminded", "escalated")]
    assert events == ["overdue", "escalation"]
    registry.close()


def test_a_letter_routed_by_hand_out_of_triage_is_unacknowledged_only_a_day_after_it_reached_its_department(
        tmp_path: Path) -> None:
    from gateway.track import reminders

    gateway = Gateway(tmp_path, rules="rules: []\n")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    moved_back(gateway, "2026-000001", 3)  # it waited in triage for three days
    config, registry = registry_of(gateway)
    assert registry.letter("2026-000001").status == "needs-triage"
    gateway.run("letters", "reassign", "2026-000001", "business", "--reason", "triaged")
    now = datetime.now(timezone.utc)

    def unacknowledged(moment: datetime) -> list[list[str]]:
        return [[m.recipient for m in r.mail] for r in reminders.run(config, registry, moment)
                if r.kind == "unacknowledged"]

    assert unacknowledged(now + timedelta(minutes=1)) == []
    ack_deadline = config.calendar.deadline(now, config.model.deadlines.acknowledge_days)
    assert unacknowledged(ack_deadline + timedelta(minutes=1)) == [["sales.desk@example.org"]]
    assert unacknowledged(ack_deadline + timedelta(minutes=2)) == []  # once for this department
    registry.close()


# Answers by mail count only when authenticated: here by an Authentication-Results header from
# the organisation's own MTA (a trusted authserv-id), as a file ingested after it would carry.
TRUSTED_MTA = """
[trust]
trusted_authserv_ids = ["mx.example.org"]
"""


def authenticated(raw: bytes) -> bytes:
    """As the MTA stamps a mail its From address sent through the domain's own servers: SPF (for
    that address as envelope sender) and DMARC pass."""
    sender = parseaddr(str(message_from_bytes(raw)["From"]))[1]
    return (f"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom={sender}; "
            f"dmarc=pass header.from={sender.rpartition('@')[2]}\r\n").encode() + raw


def reply_address(gateway: Gateway, number: str, owner: str) -> str:
    """The signed reply address the owner's notifications for this letter carry."""
    return gateway.run("keys", "reply-address", number, owner).stdout.strip()


def test_departments_answer_by_mail_and_strangers_are_recorded_not_obeyed(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, extra=TRUSTED_MTA)
    letter = tmp_path / "letter.eml"
    letter.write_bytes(make_message(1, subject="Quotation please", to="sales@example.org"))
    gateway.run("ingest", str(letter))
    [notification] = [m for m in gateway.show_json("2026-000001")["outbox"] if m["kind"] == "notification"]
    owner_reply = reply_address(gateway, "2026-000001", "sales.desk@example.org")
    assert owner_reply.startswith("gateway+2026-000001.") and owner_reply.endswith("@localhost")

    def answer(n: int, sender: str, body: str, *, subject: str = "Re: [2026-000001] Quotation please",
               in_reply_to: str | None = None, to: str = owner_reply, proven: bool = True) -> str:
        path = tmp_path / f"answer{n}.eml"
        raw = make_message(100 + n, subject=subject, sender=sender, to=to, body=body)
        if in_reply_to:
            raw = raw.replace(b"MIME-Version", f"In-Reply-To: {in_reply_to}\r\nMIME-Version".encode(), 1)
        path.write_bytes(authenticated(raw) if proven else raw)
        return gateway.run("ingest", str(path)).stdout.strip()

    # A stranger in the organisation, through a colleague's reply address: recorded, not obeyed.
    answered = answer(1, "Bob <bob@example.org>", "done: not mine to close\n")
    assert answered.endswith("an answer, recorded on 2026-000001")
    assert gateway.show_json("2026-000001")["status"] == "routed"
    # The owner unauthenticated, then authenticated but to the plain address: recorded, not obeyed.
    answer(10, "sales.desk@example.org", "received\n", proven=False)
    answer(11, "sales.desk@example.org", "received\n", to="gateway@localhost")
    assert gateway.show_json("2026-000001")["status"] == "routed"
    # The owner: by the number in the subject, then by In-Reply-To alone, with the quote below ignored.
    answer(2, "Sales Desk <sales.desk@example.org>", "Received.\n\n> Letter 2026-000001 was routed\n")
    assert gateway.show_json("2026-000001")["status"] == "acknowledged"
    answer(3, "sales.desk@example.org", "办理中\n", subject="Re: your mail", in_reply_to=notification["message_id"])
    assert gateway.show_json("2026-000001")["status"] == "in-progress"
    answer(4, "sales.desk@example.org", "Just to say we called them.\n")
    answer(5, "sales.desk@example.org", "reassign nowhere\n")
    answer(6, "sales.desk@example.org", "done: quotation sent, order expected\n")
    answer(7, "sales.desk@example.org", "received\n")  # too late: the letter is closed
    detail = gateway.show_json("2026-000001")
    assert detail["status"] == "closed"
    answers = [e for e in detail["events"] if e["action"] == "answer"]
    assert [(a["actor"], a["details"]["command"], a["details"]["obeyed"]) for a in answers] == [
        ("bob@example.org", "close", False), ("sales.desk@example.org", "ack", False),
        ("sales.desk@example.org", "ack", False), ("sales.desk@example.org", "ack", True),
        ("sales.desk@example.org", "progress", True), ("sales.desk@example.org", None, False),
        ("sales.desk@example.org", "reassign", False), ("sales.desk@example.org", "close", True),
        ("sales.desk@example.org", "ack", False)]
    assert "is not an owner of business" in answers[0]["details"]["refused"]
    assert "the reply token was not issued to bob@example.org" in answers[0]["details"]["refused"]
    assert "is not authenticated" in answers[1]["details"]["refused"]
    assert answers[1]["details"]["authenticated"] is None
    assert answers[2]["details"]["refused"].startswith("no reply token")
    assert answers[3]["details"]["authenticated"] == "sales.desk@example.org"
    assert answers[5]["details"]["text"] == "Just to say we called them."
    assert answers[6]["details"]["refused"] == "no department 'nowhere'"
    assert "2026-000001 is closed: it cannot be acknowledged" in answers[8]["details"]["refused"]
    # A command refused for want of authority is told to the department's owner, at most once an hour
    # per letter; the later refusals count the notice not sent.
    refusals = [m for m in detail["outbox"] if m["kind"] == "refused-command"]
    assert [m["recipient"] for m in refusals] == ["sales.desk@example.org"]
    assert [a["details"].get("refusal_notice") for a in answers] == [["sales.desk@example.org"]] + [None] * 8
    assert [a["details"].get("notice_suppressed") for a in answers] == [
        None] + [["sales.desk@example.org"]] * 2 + [None] * 6
    [closed] = [e for e in detail["events"] if e["action"] == "closed"]
    assert closed["details"] == {"from": "in-progress", "to": "closed", "by_mail": True,
                                 "text": "quotation sent, order expected"}
    assert len(gateway.list_json()) == 1  # answers are not letters
    # The same answer again is recognised, not obeyed twice; its bytes are kept.
    ingested = gateway.run("ingest", str(tmp_path / "answer6.eml")).stdout.strip()
    assert ingested.endswith("already registered as 2026-000001")
    stored = gateway.state / answers[7]["details"]["raw_path"]
    assert stored.exists()
    # A refused command arriving again is no second notice either.
    gateway.run("ingest", str(tmp_path / "answer1.eml"))
    assert len([m for m in gateway.show_json("2026-000001")["outbox"] if m["kind"] == "refused-command"]) == 1
    # Mail from outside that quotes a number is correspondence: a letter of its own.
    outside = answer(8, "Alice <alice@partner.example>", "done: thanks\n", to="gateway@localhost")
    assert outside.endswith("registered as 2026-000002")
    # Through the owner's reply address too: it was not issued to her.
    outside = answer(12, "Alice <alice@partner.example>", "done: thanks\n")
    assert outside.endswith("registered as 2026-000003")
    # Passing a mail on is not an answer either, even from an owner.
    forward = answer(9, "sales.desk@example.org", "done: see below\n", subject="Fwd: [2026-000001] Quotation please")
    assert forward.endswith("registered as 2026-000004")


def test_a_letters_owner_commands_by_mail_only_while_not_disabled(tmp_path: Path) -> None:
    """The letter's own owner may command it by mail, of whatever department they are; once they
    are disabled in the web register, owning it grants them nothing."""
    import sqlite3

    gateway = Gateway(tmp_path, extra=TRUSTED_MTA)
    letter = tmp_path / "letter.eml"
    letter.write_bytes(make_message(1, subject="Quotation please", to="sales@example.org"))
    gateway.run("ingest", str(letter))
    gateway.run("users", "add", "pat", "--email", "pat@example.org", "--role", "member",
                "--department", "general-office", "--no-password")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:  # assigned to pat, of another department
        db.execute("UPDATE letters SET owner = 'pat@example.org' WHERE number = '2026-000001'")
    reply = reply_address(gateway, "2026-000001", "pat@example.org")

    def answer(n: int, body: str) -> None:
        path = tmp_path / f"answer{n}.eml"
        path.write_bytes(authenticated(make_message(100 + n, subject="Re: Quotation please",
                                                    sender="Pat <pat@example.org>", to=reply, body=body)))
        gateway.run("ingest", str(path))

    answer(1, "received\n")
    assert gateway.show_json("2026-000001")["status"] == "acknowledged"
    gateway.run("users", "disable", "pat")
    answer(2, "done: closed by someone who left\n")
    detail = gateway.show_json("2026-000001")
    assert detail["status"] == "acknowledged"
    answers = [e["details"] for e in detail["events"] if e["action"] == "answer"]
    assert [(a["command"], a["obeyed"]) for a in answers] == [("ack", True), ("close", False)]
    assert answers[1]["refused"].startswith("pat@example.org is disabled in the web register")


def test_an_answer_reassigns_and_the_new_owners_are_notified(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, extra=TRUSTED_MTA)
    path = tmp_path / "letter.eml"
    path.write_bytes(make_message(1, subject="Wrong desk", to="sales@example.org"))
    gateway.run("ingest", str(path))
    reply = tmp_path / "reply.eml"
    # The reply address alone names the letter: the subject need not.
    reply.write_bytes(authenticated(make_message(
        2, subject="RE: Wrong desk", sender="sales.desk@example.org",
        to=reply_address(gateway, "2026-000001", "sales.desk@example.org").upper(),  # case is not the token's
        body="转 General-Office\n这封信应由办公室处理。\n")))
    gateway.run("ingest", str(reply))
    detail = gateway.show_json("2026-000001")
    assert detail["department"] == "general-office"
    [moved] = [e for e in detail["events"] if e["action"] == "reassigned"]
    assert (moved["from_department"], moved["to_department"], moved["details"]["by_mail"]) == (
        "business", "general-office", True)
    assert [m["recipient"] for m in detail["outbox"] if m["kind"] == "notification"][-1] == "office@example.org"


def test_a_fax_reassigned_by_mail_gets_its_deadline_as_by_the_cli(tmp_path: Path) -> None:
    """A fax moved before its text was read has no deadline yet; moving it gives it one, by mail
    exactly as from the command line (one reassignment, written once)."""
    from fax_samples import tiff_fax

    gateway = Gateway(tmp_path, extra=TRUSTED_MTA)
    page = ["Delivery delayed", "Please confirm the new date."]
    for n in (1, 2):
        fax = tmp_path / f"fax_+862012345{n}_20261122-09000{n}.tif"
        fax.write_bytes(tiff_fax([page + [f"Ref {n}"]]))
        gateway.run("ingest", str(fax))
    by_cli, by_mail = gateway.show_json("2026-000001"), gateway.show_json("2026-000002")
    assert by_cli["deadline"] is None and by_mail["deadline"] is None  # the text is not read yet
    gateway.run("letters", "reassign", "2026-000001", "business", "--reason", "a delivery", "--by", "clerk")
    reply = tmp_path / "reply.eml"  # from an owner of the triage department, where the fax waits
    reply.write_bytes(authenticated(make_message(
        3, subject="Re: [2026-000002] Fax", sender="office@example.org",
        to=reply_address(gateway, "2026-000002", "office@example.org"), body="reassign business\n")))
    gateway.run("ingest", str(reply))
    by_cli, by_mail = gateway.show_json("2026-000001"), gateway.show_json("2026-000002")
    assert by_mail["department"] == by_cli["department"] == "business"
    assert by_mail["status"] == by_cli["status"] == "routed"
    assert by_cli["deadline"] is not None and by_mail["deadline"] == by_cli["deadline"]
    # And it is the right moment: the end of its day in the organisation's zone, stored as UTC
    # (not that local wall time read back as UTC, eight hours late).
    from gateway import config as config_mod

    config = config_mod.load(gateway.config)
    days = config.model.deadlines.answer_within(by_cli["category"], by_cli["urgency"])  # type: ignore[arg-type]
    expected = config.calendar.deadline(datetime.fromisoformat(str(by_cli["received_at"])), days)
    for letter in (by_cli, by_mail):
        deadline = datetime.fromisoformat(str(letter["deadline"]))
        assert deadline == expected and deadline.astimezone(CAL.tz).time() == time(23, 59, 59)


def test_a_letter_awaiting_its_sender_keeps_no_deadline_when_moved(tmp_path: Path) -> None:
    """Moved to another department while it waits for its sender's materials, by the command line
    or by mail, the letter still waits with no deadline: no reminders, nothing overdue."""
    gateway = Gateway(tmp_path, extra=TRUSTED_MTA)
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n, to="sales@example.org") for n in (1, 2))))
    by = (datetime.now(CAL.tz).date() + timedelta(days=60)).isoformat()
    for number in ("2026-000001", "2026-000002"):
        gateway.run("letters", "incomplete", number, "--missing", "The signed contract", "--by", by)
    gateway.run("letters", "reassign", "2026-000001", "general-office", "--reason", "theirs")
    reply = tmp_path / "reply.eml"
    reply.write_bytes(authenticated(make_message(
        3, subject="Re: [2026-000002] Order", sender="sales.desk@example.org",
        to=reply_address(gateway, "2026-000002", "sales.desk@example.org"), body="reassign general-office\n")))
    gateway.run("ingest", str(reply))
    later = (datetime.now(CAL.tz) + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
    for number in ("2026-000001", "2026-000002"):
        letter = gateway.show_json(number)
        assert (letter["department"], letter["status"], letter["deadline"]) == (
            "general-office", "awaiting-sender", None), number
    assert gateway.run("reminders", "run", "--now", later, "--dry-run").stdout.strip() == "nothing due"
    assert gateway.list_json("--overdue", "--as-of", later[:10]) == []


@pytest.mark.parametrize("quoted", [
    "在 2026年12月5日 10:00，张三 <office@example.org> 写道：",  # Chinese Gmail, Foxmail
    "-----原始邮件-----", "----- Original Message -----", "_" * 32,  # Outlook, in Chinese and English
    "发件人: office@example.org", "寄件者：office@example.org", "On Mon, 7 Dec 2026, Office wrote:",
])
def test_a_quoted_mail_without_quote_marks_is_not_the_answer(quoted: str) -> None:
    """An HTML reply rendered as text keeps no ">": the quoted mail below the attribution line is
    not the person's answer, and a command in it (someone else's "done: ...") is none of theirs."""
    text = own_text(f"\n\n{quoted}\ndone: settled by someone else\n")
    assert text == "" and parse_command(text) == (None, "")
    assert parse_command(own_text(f"收到\n\n{quoted}\ndone: settled\n")) == ("ack", "")


def test_a_line_of_ones_own_ending_in_a_colon_is_still_ones_own() -> None:
    text = own_text("办结：已处理\n鲁迅写道：\n“真的猛士，敢于直面惨淡的人生。”\n____\n谢谢\n")
    assert text.endswith("谢谢") and parse_command(text) == ("close", "已处理")


def test_an_overdue_letter_handed_to_another_department_is_reminded_and_escalated_there(tmp_path: Path) -> None:
    """The deadline stays the letter's when it is handed over, but its reminders are the holding
    department's: the department it reaches overdue is reminded and its head told, once, although
    the department before it had been."""
    from gateway.track import reminders

    gateway = Gateway(tmp_path, rules=ALL_TO_BUSINESS, extra="[reminders]\nescalate_after = 1\n")
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1)]))
    moved_back(gateway, "2026-000001", 10)  # overdue for days
    config, registry = registry_of(gateway)
    deadline = registry.letter("2026-000001").deadline
    now = datetime.now(timezone.utc)

    def run(moment: datetime) -> list[tuple[str, list[str]]]:
        return [(r.kind, [m.recipient for m in r.mail]) for r in reminders.run(config, registry, moment)]

    assert run(now) == [("overdue", ["sales.desk@example.org"]),
                                               ("escalation", ["business.head@example.org"])]
    gateway.run("letters", "reassign", "2026-000001", "general-office", "--reason", "theirs")
    assert registry.letter("2026-000001").deadline == deadline  # the sender's clock runs on
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert run(later) == [("overdue", ["office@example.org"]), ("escalation", ["office.head@example.org"])]
    assert run(later + timedelta(minutes=1)) == []
    registry.close()
