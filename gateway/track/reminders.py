"""Reminders before and at a deadline, and escalation to the department head.

One pass looks at every open letter with a deadline and decides, from the
reminders already recorded as its events, what is due now:

- `unacknowledged`: still only routed after `[deadlines] acknowledge_days`;
- `before`: the deadline is `before_working_days` working days away or less;
- `overdue`: the deadline has passed; repeated every `repeat_working_days`
  (at least 12 hours apart);
- `escalation`: to the department head, once, after `escalate_after` reminders
  when the letter is overdue;
- `awaiting-sender`: once, when the day a sender was given for missing materials
  has passed without them (gateway.services.incomplete asked); the department may
  withdraw the letter or go on without them;
- `reply-approval`: an approver whose step of a reply's chain has waited
  `[replies] approval_reminder_working_days`;
- late readers of a circulation, and borrowings whose period is over (gateway.track.circulation).

The owners get one reminder of a letter per pass: when several are due at once (the daemon was
down past the acknowledgement day and the deadline, say), the most advanced (overdue, then
before, then unacknowledged) is sent, and the others are recorded as superseded by it, with no
mail, so that no later pass sends them; only those sent count towards the escalation.

Each is an outbox mail and an event written in one transaction, so a pass that
is cut short sends nothing twice and loses nothing. The clock is a parameter:
`gateway reminders run --now ...` shows what a given moment would send.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.config import Config
from gateway.stages.route import NewMail, new_mail
from gateway.registry import Registry
from gateway.registry.leases import JobStopped
from gateway.registry.outward import OutwardRecords
from gateway.registry.reminders import OpenLetter, Sent


@dataclass
class Reminder:
    letter: OpenLetter
    kind: str  # unacknowledged | before | overdue | escalation | awaiting-sender
    mail: list[NewMail]
    count: int  # reminders of this deadline including this one
    superseded_by: str | None = None  # due with a more advanced one, sent instead: recorded, no mail


# The owners' reminders, the least advanced first: of those due together only the last is sent.
ADVANCE = ("unacknowledged", "before", "overdue")


# Overdue reminders repeat every `repeat_working_days`, counted by the day, and never closer than
# this: a pass just before midnight and one just after would otherwise both remind.
MIN_OVERDUE_INTERVAL = timedelta(hours=12)


def _reminder(config: Config, letter: OpenLetter, kind: str, to: list[str], count: int) -> Reminder:
    return Reminder(letter, kind, [new_mail(config, kind if kind == "escalation" else "reminder", r,
                                            reminder=kind, count=count) for r in to], count)


def due_for(config: Config, letter: OpenLetter, sent: list[Sent], now: datetime) -> list[Reminder]:
    """What is due now for one open letter, from the reminders already recorded for it. The pass
    decides with it, and the registry decides again with it under the letter's lock."""
    settings = config.model.reminders
    calendar = config.calendar
    department = config.departments.get(letter.department or "")
    if department is None or letter.deadline is None:
        return []
    owners = [letter.owner] if letter.owner else list(department.owners)
    # Reminders of the deadline in force: a reopened or resumed letter has a new one, reminded
    # before and at it and escalated again. Not the one about a sender's missing materials. Only
    # those since another department handed it to the one holding it: the letter keeps its
    # deadline, and the new department is warned, reminded and its head told as the one before.
    current = [s for s in sent if s.kind != "awaiting-sender" and s.of(letter)
               and (letter.handed_at is None or s.at >= letter.handed_at)]
    kinds = {s.kind for s in current}
    reminders = sum(1 for s in current if s.kind != "escalation" and not s.superseded)
    kinds_due: list[str] = []

    # Counted from when the department could first know of it: an old letter imported with
    # `gateway import --notify` is not unacknowledged the moment it is registered, nor is one
    # routed by hand out of triage days after it arrived; each department it reaches is reminded once.
    ack_from = max(letter.received_at, letter.registered_at or letter.received_at,
                   letter.arrived_at or letter.received_at)
    ack_deadline = calendar.deadline(ack_from, config.model.deadlines.acknowledge_days)
    unacknowledged = any(s.kind == "unacknowledged" and (letter.arrived_at is None or s.at >= letter.arrived_at)
                         for s in sent)
    if letter.status == "routed" and now > ack_deadline and not unacknowledged:
        kinds_due.append("unacknowledged")
    if now > letter.deadline:
        last = max((s.at for s in current if s.kind == "overdue" and not s.superseded), default=None)
        if last is None or (calendar.working_days_between(last, now) >= settings.repeat_working_days
                            and now - last >= MIN_OVERDUE_INTERVAL):
            kinds_due.append("overdue")
    elif ("before" not in kinds and settings.before_working_days > 0
          and calendar.working_days_between(now, letter.deadline) <= settings.before_working_days):
        kinds_due.append("before")
    found: list[Reminder] = []
    if kinds_due:
        # The superseded are listed, and so recorded, first: no pass finds them due without the
        # one sent instead.
        sent_kind = max(kinds_due, key=ADVANCE.index)
        reminders += 1
        found = [Reminder(letter, kind, [], reminders, superseded_by=sent_kind) for kind in kinds_due
                 if kind != sent_kind]
        found.append(_reminder(config, letter, sent_kind, owners, reminders))
    if now > letter.deadline and reminders >= settings.escalate_after and "escalation" not in kinds:
        found.append(_reminder(config, letter, "escalation", [department.head], reminders))
    return found


def due(config: Config, registry: Registry, now: datetime) -> list[Reminder]:
    return [r for letter, sent in registry.reminder_state() for r in due_for(config, letter, sent, now)]


def send(config: Config, registry: Registry, reminder: Reminder, now: datetime) -> Reminder | None:
    """Queue and record one reminder the pass found due, if it still is under the letter's lock
    (decided again there: another pass may have sent it, or a step changed the letter). Returns
    what was recorded (its count as it stands then), or None. An escalation is decided after the
    reminders before it in the same pass were recorded or not, so it follows only real ones."""
    made: list[Reminder] = []

    def decide(letter: OpenLetter, sent: list[Sent]) -> tuple[list[NewMail], int, dict[str, Any]] | None:
        for found in due_for(config, letter, sent, now):
            if found.kind == reminder.kind:
                made.append(found)
                return found.mail, found.count, {"superseded_by": found.superseded_by} if found.superseded_by else {}
        return None

    return made[-1] if registry.remind(reminder.letter.id, reminder.kind, now, decide) else None


def expired_requests(config: Config, registry: Registry, now: datetime, *, dry_run: bool = False) -> list[Reminder]:
    """Letters awaiting their sender have no deadline (it is paused): their department hears once
    when the day the sender was given has passed, recorded with the request."""
    records = OutwardRecords(registry)
    out = []
    for waiting in records.expired(now):
        department = config.departments.get(waiting.department or "")
        if department is None:
            continue
        owners = [waiting.owner] if waiting.owner else list(department.owners)
        mail = [new_mail(config, "sender-notice", owner, about="expired", missing=waiting.missing,
                         by=waiting.due_at.isoformat()) for owner in owners]
        if dry_run or records.remind_expired(waiting.request_id, mail, now):
            out.append(Reminder(OpenLetter(waiting.letter_id, waiting.number, "awaiting-sender", waiting.department,
                                           waiting.owner, waiting.received_at, None), "awaiting-sender", mail, 1))
    return out


def run(config: Config, registry: Registry, now: datetime, *, dry_run: bool = False,
        stop: threading.Event | None = None) -> list[Reminder]:
    """One pass: what is due now, sent. Once `stop` is set (the daemon stopping past its grace),
    the pass ends before its next reminder with JobStopped; what it sent stays recorded, and the
    next pass sends the rest, as it would after a crash."""
    def stop_here() -> None:
        if stop is not None and stop.is_set():
            raise JobStopped("the reminders' pass stopped before it was done; the next pass does the rest")

    reminders = due(config, registry, now)
    if not dry_run:
        # Only what was really queued is reported (and counted towards an escalation).
        recorded = []
        for reminder in reminders:
            stop_here()
            if (done := send(config, registry, reminder, now)) is not None:
                recorded.append(done)
        reminders = recorded
    reminders = [r for r in reminders if r.superseded_by is None]  # recorded, but nothing sent
    from gateway.track import circulation

    # Readers late to sign a circulation; borrowings of archived letters whose period is over.
    stop_here()
    circulation.expire_borrowings(registry, now, dry_run=dry_run)
    for phase in (expired_requests, circulation.due, approvals):
        stop_here()
        reminders += phase(config, registry, now, dry_run=dry_run)
    return reminders


def approvals(config: Config, registry: Registry, now: datetime, *, dry_run: bool = False) -> list[Reminder]:
    """Approvers of a reply waiting past [replies] approval_reminder_working_days (kind reply-approval)."""
    from gateway.track import approvals as approval_steps

    return approval_steps.due(config, registry, now, dry_run=dry_run)
