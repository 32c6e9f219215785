"""Reminders and escalations: what was sent for which open letter, and queueing the next."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, ColumnElement, and_, insert, or_, select

from gateway.registry import lifecycle
from gateway.registry.models import Event, Letter, OutboxMail
from gateway.registry.plan import NewMail
from gateway.registry.store import Store, utcnow

# Events after which a letter's deadline is a new one: reminders recorded before one of them (and
# recorded without the deadline they were about) belong to the old deadline.
_NEW_DEADLINE = ("reopened", "supplemented")
# Events that bring a letter to a department: its acknowledgement is counted from the latest one.
_ARRIVAL = ("routed", "reassigned")


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
    arrived_at: datetime | None = None  # the latest routing or reassignment to its current department
    renewed_at: datetime | None = None  # the latest reopening or resuming supplement (a new deadline)
    handed_at: datetime | None = None  # the latest reassignment from another department to its current one


@dataclass(frozen=True)
class Sent:
    """A reminder or escalation recorded for a letter."""

    kind: str
    at: datetime
    # The deadline it was about; None in those recorded before reminders kept it.
    deadline: datetime | None = None
    # Due in the same pass as a more advanced reminder, which was sent instead: done, not sent.
    superseded: bool = False

    def of(self, letter: OpenLetter) -> bool:
        """Whether it was about the letter's deadline in force now (a reopened or resumed letter
        has a new one, whose reminders and escalation start again)."""
        if self.deadline is not None:
            return self.deadline == letter.deadline
        return letter.renewed_at is None or self.at > letter.renewed_at


# The caller's decision, made under the letter's lock from the letter and what was sent for it:
# the mail, count and further details of the reminder of that kind if it is still due, else None.
Decide = Callable[[OpenLetter, list[Sent]], tuple[list[NewMail], int, dict[str, Any]] | None]


def _state(conn: Connection, where: tuple[ColumnElement[bool], ...]) -> list[tuple[OpenLetter, list[Sent]]]:
    """The letters `where` selects, each with the reminders recorded for it."""
    letters = conn.execute(
        select(Letter.id, Letter.number, Letter.status, Letter.department, Letter.owner,
               Letter.received_at, Letter.deadline, Letter.created_at)
        .where(*where).order_by(Letter.id)).all()
    # Subqueries, not lists of thousands of ids (SQLite caps the parameters of a statement).
    ids = select(Letter.id).where(*where)
    arrived: dict[int, datetime] = {}
    renewed: dict[int, datetime] = {}
    handed: dict[int, datetime] = {}
    for letter_id, action, at, from_department, to_department, department in conn.execute(
            select(Event.letter_id, Event.action, Event.at, Event.from_department, Event.to_department,
                   Letter.department)
            .join(Letter, Letter.id == Event.letter_id)
            .where(Event.letter_id.in_(ids), or_(
                Event.action.in_(_ARRIVAL), Event.action == "reopened",
                and_(Event.action == "supplemented", Event.details["resumed"].as_boolean())))):
        if letter_id is None:
            continue
        if action in _NEW_DEADLINE:
            renewed[letter_id] = max(at, renewed.get(letter_id, at))
        elif to_department is not None and to_department == department:
            arrived[letter_id] = max(at, arrived.get(letter_id, at))
            if action == "reassigned" and from_department is not None and from_department != department:
                handed[letter_id] = max(at, handed.get(letter_id, at))
    sent: dict[int, list[Sent]] = {}
    for letter_id, action, details, at in conn.execute(
            select(Event.letter_id, Event.action, Event.details, Event.at).where(
                Event.action.in_(("reminded", "escalated", "reminder-superseded")), Event.letter_id.in_(ids))):
        deadline = details.get("deadline")
        sent.setdefault(letter_id, []).append(Sent(
            str(details.get("kind")), at, datetime.fromisoformat(deadline) if deadline else None,
            action == "reminder-superseded"))
    return [(OpenLetter(*row, arrived_at=arrived.get(row.id), renewed_at=renewed.get(row.id),
                        handed_at=handed.get(row.id)),
             sent.get(row.id, [])) for row in letters]


class ReminderRecords(Store):
    def reminder_state(self) -> list[tuple[OpenLetter, list[Sent]]]:
        """Open letters with a deadline, each with the reminders already recorded for it."""
        with self.read() as conn:
            return _state(conn, (Letter.status.in_(lifecycle.OPEN), Letter.deadline.is_not(None)))

    def remind(self, letter_id: int, kind: str, at: datetime, decide: Decide) -> bool:
        """Queue a reminder (or an escalation) and record it, in one transaction, if `decide`
        still finds it due under the letter's lock. Returns whether it was recorded. A reminder
        superseded by a more advanced one (`superseded_by` in the details) is recorded as such,
        with no mail."""
        now = utcnow()
        with self.write() as conn:
            # Locked and decided again: two passes at once (the daemon's and a hand-run one) must
            # not both send the same reminder, and a step taken since the pass read the letter
            # (closed, reopened, moved) may have made it due no more.
            if conn.execute(select(Letter.id).where(Letter.id == letter_id).with_for_update()).first() is None:
                return False
            found = _state(conn, (Letter.id == letter_id, Letter.status.in_(lifecycle.OPEN),
                                  Letter.deadline.is_not(None)))
            if not found:
                return False
            letter, sent = found[0]
            decided = decide(letter, sent)
            if decided is None:
                return False
            mail, count, more = decided
            action = ("escalated" if kind == "escalation" else
                      "reminder-superseded" if more.get("superseded_by") else "reminded")
            details: dict[str, Any] = {"kind": kind, "count": count, "to": [m.recipient for m in mail],
                                       "deadline": letter.deadline.isoformat() if letter.deadline else None, **more}
            conn.execute(insert(Event), [self.event_row(letter_id, at, "gateway", action, None, details)])
            if mail:
                conn.execute(insert(OutboxMail), [self.mail_row(letter_id, m, now) for m in mail])
        return True
