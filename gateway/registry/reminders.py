"""Reminders and escalations: what was sent for which open letter, and queueing the next."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from gateway.registry import lifecycle
from gateway.registry.models import Event, Letter, OutboxMail
from gateway.registry.plan import NewMail
from gateway.registry.store import Store, utcnow


class ReminderRecords(Store):
    def reminder_state(self) -> list[tuple[Letter, list[dict[str, Any]]]]:
        """Open letters with a deadline, each with the reminders already recorded for it."""
        with self.session() as session:
            letters = list(session.scalars(select(Letter).where(Letter.status.in_(lifecycle.OPEN),
                                                                Letter.deadline.is_not(None)).order_by(Letter.id)))
            # Keyed by the event's letter id, which the type allows to be None (the query never yields one).
            sent: dict[int | None, list[dict[str, Any]]] = {}
            if letters:
                letter_ids = [letter.id for letter in letters]
                for event in session.scalars(select(Event).where(Event.action.in_(("reminded", "escalated")),
                                                                 Event.letter_id.in_(letter_ids))):
                    sent.setdefault(event.letter_id, []).append({"kind": event.details.get("kind"), "at": event.at})
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
