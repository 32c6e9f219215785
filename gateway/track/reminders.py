"""Reminders before and at a deadline, and escalation to the department head.

One pass looks at every open letter with a deadline and decides, from the
reminders already recorded as its events, what is due now:

- `unacknowledged`: still only routed after `[deadlines] acknowledge_days`;
- `before`: the deadline is `before_working_days` working days away or less;
- `overdue`: the deadline has passed; repeated every `repeat_working_days`;
- `escalation`: to the department head, once, after `escalate_after` reminders
  when the letter is overdue;
- `awaiting-sender`: once, when the day a sender was given for missing materials
  has passed without them (gateway.services.incomplete asked); the department may
  withdraw the letter or go on without them;
- `reply-approval`: an approver whose step of a reply's chain has waited
  `[replies] approval_reminder_working_days`;
- late readers of a circulation, and borrowings whose period is over (gateway.track.circulation).

Each is an outbox mail and an event written in one transaction, so a pass that
is cut short sends nothing twice and loses nothing. The clock is a parameter:
`gateway reminders run --now ...` shows what a given moment would send.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Config
from gateway.stages.route import NewMail, new_mail
from gateway.registry import Registry
from gateway.registry.leases import JobStopped
from gateway.registry.outward import OutwardRecords
from gateway.registry.reminders import OpenLetter


@dataclass
class Reminder:
    letter: OpenLetter
    kind: str  # unacknowledged | before | overdue | escalation | awaiting-sender
    mail: list[NewMail]
    count: int  # reminders for this letter including this one


def _reminder(config: Config, letter: OpenLetter, kind: str, to: list[str], count: int) -> Reminder:
    return Reminder(letter, kind, [new_mail(config, kind if kind == "escalation" else "reminder", r,
                                            reminder=kind, count=count) for r in to], count)


def due(config: Config, registry: Registry, now: datetime) -> list[Reminder]:
    settings = config.model.reminders
    calendar = config.calendar
    out: list[Reminder] = []
    for letter, sent in registry.reminder_state():
        department = config.departments.get(letter.department or "")
        if department is None or letter.deadline is None:
            continue
        owners = [letter.owner] if letter.owner else list(department.owners)
        kinds = [s["kind"] for s in sent]
        # Reminders of this deadline; not the one about a sender's missing materials.
        reminders = sum(1 for k in kinds if k not in ("escalation", "awaiting-sender"))

        # Counted from when the department could first know of it: an old letter imported with
        # `gateway import --notify` is not unacknowledged the moment it is registered.
        ack_from = max(letter.received_at, letter.registered_at or letter.received_at)
        ack_deadline = calendar.deadline(ack_from, config.model.deadlines.acknowledge_days)
        if letter.status == "routed" and now > ack_deadline and "unacknowledged" not in kinds:
            reminders += 1
            out.append(_reminder(config, letter, "unacknowledged", owners, reminders))
        if now > letter.deadline:
            overdue = [s["at"] for s in sent if s["kind"] == "overdue"]
            if not overdue or calendar.working_days_between(max(overdue), now) >= settings.repeat_working_days:
                reminders += 1
                out.append(_reminder(config, letter, "overdue", owners, reminders))
            if reminders >= settings.escalate_after and "escalation" not in kinds:
                out.append(_reminder(config, letter, "escalation", [department.head], reminders))
        elif ("before" not in kinds and settings.before_working_days > 0
              and calendar.working_days_between(now, letter.deadline) <= settings.before_working_days):
            reminders += 1
            out.append(_reminder(config, letter, "before", owners, reminders))
    return out


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
        for reminder in reminders:
            stop_here()
            registry.remind(reminder.letter.id, reminder.kind, reminder.mail, reminder.count, now)
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
