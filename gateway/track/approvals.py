"""Who approves a reply's step, and approvers reminded when a step waits too long.

A reply's chain names roles in order: `head` (the department's head), `leader` (its leaders in
charge, `[[departments]] leaders`) and `top` (`[replies] top_leadership`). An approver whose step has
waited `[replies] approval_reminder_working_days` working days is reminded (kind `reply-approval`),
and again after as many more; each reminder is an outbox mail and an event in one transaction.
"""
from __future__ import annotations

from datetime import datetime

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.models import Letter
from gateway.registry.reminders import OpenLetter
from gateway.registry.replies import ReplyRecords
from gateway.stages.route import new_mail
from gateway.track.reminders import Reminder


def approvers(config: Config, letter: Letter, role: str) -> list[str]:
    """The addresses that may take a step of this role on this letter's reply."""
    department = config.departments.get(letter.department or "")
    if role == "head":
        return [department.head] if department else []
    if role == "leader":
        return list(department.leaders) if department else []
    return list(config.model.replies.top_leadership)


def due(config: Config, registry: Registry, now: datetime, *, dry_run: bool = False) -> list[Reminder]:
    """Remind the approvers of every step waiting long enough (a pass of `gateway reminders run`)."""
    days = config.model.replies.approval_reminder_working_days
    calendar = config.calendar
    records = ReplyRecords(registry)
    out = []
    for waiting in records.waiting():
        since = waiting.reminded_at or waiting.step_since
        if since is None or calendar.working_days_between(since, now) < days:
            continue
        letter = registry.letter(waiting.number)
        if letter is None:
            continue
        role = waiting.chain[waiting.step]
        mail = [new_mail(config, "approval", address, about="reminder", draft=waiting.reply_id, role=role,
                         step=waiting.step + 1, since=waiting.step_since.isoformat() if waiting.step_since else None)
                for address in dict.fromkeys(approvers(config, letter, role))]
        if dry_run or records.remind(waiting.reply_id, step=waiting.step, round_=waiting.round, at=now, mail=mail,
                                            seen_reminded_at=waiting.reminded_at):
            out.append(Reminder(OpenLetter(letter.id, letter.number, letter.status, letter.department,
                                           letter.owner, letter.received_at, letter.deadline),
                                "reply-approval", mail, 1))
    return out
