"""Reminders and escalations: what was sent for which open letter, and queueing the next."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from gateway.registry import lifecycle
from gateway.registry.models import Event, Letter, OutboxMail
from gateway.registry.plan import NewMail
from gateway.registry.store import Store, utcnow


@dataclass(frozen=True)
class OpenLetter:
    """What the reminder pass decides with: never a letter's text, attachments or trace, which
    for thousands of open letters would take hundreds of megabytes on every pass."""

    id: int
    number: str
    status: str
    department: str | None
    owner: str | None
    received_at: datetime
    deadline: datetime | None  # never None here (the query asks for a deadline); typed as the column is
    registered_at: datetime | None = None  # later than received_at for a backlog imported long after


class ReminderRecords(Store):
    def reminder_state(self) -> list[tuple[OpenLetter, list[dict[str, Any]]]]:
        """Open letters with a deadline, each with the reminders already recorded for it."""
        open_with_deadline = (Letter.status.in_(lifecycle.OPEN), Letter.deadline.is_not(None))
        with self.read() as conn:
            letters = [OpenLetter(*row) for row in conn.execute(
                select(Letter.id, Letter.number, Letter.status, Letter.department, Letter.owner,
                       Letter.received_at, Letter.deadline, Letter.created_at)
                .where(*open_with_deadline).order_by(Letter.id))]
            sent: dict[int, list[dict[str, Any]]] = {}
            # A subquery, not a list of thousands of ids (SQLite caps the parameters of a statement).
            for letter_id, details, at in conn.execute(
                    select(Event.letter_id, Event.details, Event.at).where(
                        Event.action.in_(("reminded", "escalated")),
                        Event.letter_id.in_(select(Letter.id).where(*open_with_deadline)))):
                sent.setdefault(letter_id, []).append({"kind": details.get("kind"), "at": at})
        return [(letter, sent.get(letter.id, [])) for letter in letters]

    def remind(self, letter_id: int, kind: str, mail: list[NewMail], count: int, at: datetime) -> None:
        """Queue a reminder (or an escalation) and record it, in one transaction."""
        now = utcnow()
        with self.write() as conn:
            # Locked and looked at again: two passes at once (the daemon's and a hand-run one)
            # must not both send the same reminder.
            conn.execute(select(Letter.id).where(Letter.id == letter_id).with_for_update()).first()
            earlier = conn.execute(select(Event.at).where(
                Event.letter_id == letter_id, Event.action.in_(("reminded", "escalated")),
                Event.details["kind"].as_string() == kind)).scalars().all()
            if earlier and (kind != "overdue" or any(abs((at - e).total_seconds()) < 12 * 3600 for e in earlier)):
                return
            action = "escalated" if kind == "escalation" else "reminded"
            details = {"kind": kind, "count": count, "to": [m.recipient for m in mail]}
            conn.execute(insert(Event), [self.event_row(letter_id, at, "gateway", action, None, details)])
            if mail:
                conn.execute(insert(OutboxMail), [self.mail_row(letter_id, m, now) for m in mail])
