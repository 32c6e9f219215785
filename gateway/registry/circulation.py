"""Circulation (传阅) and borrowing from the archive (借阅) on the register.

Each change is one transaction under the letter's row lock, like every other step: the circulation
or borrowing row, the event on the letter and the mail it causes. Who may do what, the deadlines
(working days) and the mail are decided by the caller (gateway.services.circulation,
gateway.services.borrowing) and handed in; this module re-checks under the lock only what a
concurrent step could have changed (whose turn it is, whether a request is still open).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update

from gateway.registry.models import Borrowing, Circulation, CirculationStep, Event, Letter, OutboxMail
from gateway.registry.plan import NewMail
from gateway.registry.store import Store


class StepRefused(Exception):
    """The circulation moved on (or ended) meanwhile, or a request was decided already."""


@dataclass
class CirculationRecord:
    """A circulation with its steps in order."""

    circulation: Circulation
    steps: list[CirculationStep] = field(default_factory=list)

    @property
    def current(self) -> CirculationStep | None:
        c = self.circulation
        if c.status != "running" or c.current is None:
            return None
        return next((s for s in self.steps if s.position == c.current), None)


@dataclass(frozen=True)
class DueStep:
    """The current step of a running circulation, for the reminder pass."""

    letter_id: int
    number: str
    department: str | None
    circulation_id: int
    started_by: str
    step: CirculationStep


def _locked(conn: Connection, number: str) -> Any:
    row = conn.execute(select(Letter.id, Letter.number, Letter.status, Letter.department)
                       .where(Letter.number == number).with_for_update()).first()
    if row is None:
        raise LookupError(f"no letter {number}")
    return row


def _not_destroyed(conn: Connection, letter_id: int, number: str) -> None:
    """Refuse to lend a letter whose original was destroyed with its package: nothing to read."""
    purged = conn.execute(select(Letter.purged_at).where(Letter.id == letter_id)).scalar()
    if purged is not None:
        raise StepRefused(f"{number} was destroyed with its archive package on {purged:%Y-%m-%d}: "
                          "there is nothing to borrow")


def _reader(step: CirculationStep | Any) -> str:
    return f"{step.kind}:{step.target}"


class CirculationRecords:
    """The register's side of circulation and borrowing, over one store."""

    def __init__(self, store: Store):
        self.store = store

    # -- circulation --------------------------------------------------------------
    def start(self, number: str, *, actor: str, readers: list[tuple[str, str]], deadline: datetime,
              now: datetime, mail: list[NewMail], allowed: tuple[str, ...]) -> int:
        """Start a circulation to `readers` ((kind, target) in order), the first one's turn now.
        Raises LookupError, StepRefused (one runs already, or the letter's state moved)."""
        s = self.store
        with s.write() as conn:
            row = _locked(conn, number)
            if row.status not in allowed:
                raise StepRefused(f"{number} is {row.status}: it cannot be circulated")
            if conn.execute(select(Circulation.id).where(Circulation.letter_id == row.id,
                                                         Circulation.status == "running")).first():
                raise StepRefused(f"{number} is being circulated already: wait until its readers have signed")
            cid = conn.execute(insert(Circulation).values(
                letter_id=row.id, status="running", started_by=actor, started_at=now, finished_at=None,
                current=1).returning(Circulation.id)).scalar_one()
            conn.execute(insert(CirculationStep), [
                {"circulation_id": cid, "position": n, "kind": kind, "target": target,
                 "reached_at": now if n == 1 else None, "deadline": deadline if n == 1 else None,
                 "signed_at": None, "signed_by": None, "instruction": "", "reminders": 0, "reminded_at": None,
                 "escalated_at": None} for n, (kind, target) in enumerate(readers, 1)])
            conn.execute(insert(Event), [s.event_row(row.id, now, actor, "circulation-started", None, {
                "circulation": cid, "readers": [f"{k}:{t}" for k, t in readers],
                "first_deadline": deadline.isoformat()})])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(row.id, m, now) for m in mail])
        return cid

    def circulations(self, letter_id: int) -> list[CirculationRecord]:
        """The letter's circulations, oldest first."""
        with self.store.session() as session:
            found = session.scalars(select(Circulation).where(Circulation.letter_id == letter_id)
                                    .order_by(Circulation.id)).all()
            steps = session.scalars(select(CirculationStep).where(
                CirculationStep.circulation_id.in_([c.id for c in found])).order_by(
                CirculationStep.circulation_id, CirculationStep.position)).all() if found else []
        out = {c.id: CirculationRecord(c) for c in found}
        for step in steps:
            out[step.circulation_id].steps.append(step)
        return list(out.values())

    def sign(self, number: str, circulation_id: int, position: int, *, actor: str, instruction: str,
             now: datetime, next_deadline: datetime, mail: Callable[[CirculationStep | None], list[NewMail]]
             ) -> CirculationStep | None:
        """Sign step `position` (still the current one, unsigned) with an instruction; the next reader's
        turn starts with `next_deadline`, or the circulation ends. `mail(next_step)` gives the mail the
        signature causes. Returns the next step (None: finished). Raises StepRefused."""
        s = self.store
        with s.write() as conn:
            row = _locked(conn, number)
            if row.status == "archived":
                # Its content is read only through a borrowing now: its readers sign no more.
                raise StepRefused(f"{number} is archived: its circulation is signed no more")
            circ = conn.execute(select(Circulation).where(Circulation.id == circulation_id,
                                                          Circulation.letter_id == row.id)).first()
            if circ is None or circ.status != "running" or circ.current != position:
                raise StepRefused(f"{number}: this reading is no longer the current one")
            steps = conn.execute(select(CirculationStep).where(CirculationStep.circulation_id == circulation_id)
                                 .order_by(CirculationStep.position)).all()
            step = next(st for st in steps if st.position == position)
            conn.execute(update(CirculationStep).where(CirculationStep.id == step.id).values(
                signed_at=now, signed_by=actor, instruction=instruction))
            following = next((st for st in steps if st.position == position + 1), None)
            events = [s.event_row(row.id, now, actor, "circulation-signed", None, {
                "circulation": circulation_id, "step": position, "reader": _reader(step), "instruction": instruction,
                "deadline": step.deadline.isoformat() if step.deadline else None,
                "late": bool(step.deadline and now > step.deadline)})]
            if following is not None:
                events[0]["details"].update(next_reader=_reader(following), next_deadline=next_deadline.isoformat())
                conn.execute(update(CirculationStep).where(CirculationStep.id == following.id).values(
                    reached_at=now, deadline=next_deadline))
                conn.execute(update(Circulation).where(Circulation.id == circulation_id).values(current=position + 1))
                next_step: CirculationStep | None = CirculationStep(
                    id=following.id, circulation_id=circulation_id, position=following.position, kind=following.kind,
                    target=following.target, reached_at=now, deadline=next_deadline, instruction="", reminders=0)
            else:
                conn.execute(update(Circulation).where(Circulation.id == circulation_id).values(
                    status="finished", finished_at=now, current=None))
                events.append(s.event_row(row.id, now, actor, "circulation-finished", None, {
                    "circulation": circulation_id, "readers": [_reader(st) for st in steps]}))
                next_step = None
            conn.execute(insert(Event), events)
            rows = mail(next_step)
            if rows:
                conn.execute(insert(OutboxMail), [s.mail_row(row.id, m, now) for m in rows])
        return next_step

    def due_steps(self) -> list[DueStep]:
        """The current step of every running circulation (of a letter not archived meanwhile: its
        readers are reminded no more)."""
        with self.store.session() as session:
            rows = session.execute(
                select(Letter.id, Letter.number, Letter.department, Circulation.id, Circulation.started_by,
                       CirculationStep)
                .join(Circulation, Circulation.letter_id == Letter.id)
                .join(CirculationStep, and_(CirculationStep.circulation_id == Circulation.id,
                                            CirculationStep.position == Circulation.current))
                .where(Circulation.status == "running", Letter.status != "archived")
                .order_by(Circulation.id)).all()
        return [DueStep(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def remind(self, step_id: int, *, kind: str, letter_id: int, mail: list[NewMail], now: datetime,
               details: dict[str, Any], seen_reminded_at: datetime | None = None) -> bool:
        """A reminder to the reader, or (kind escalated) a word to the starter: the step's count, an
        event and the mail, in one transaction. False, and nothing done, when another pass got
        there first (the step reminded since `seen_reminded_at`, or escalated already): the
        decision was read without a lock, and two passes (the daemon's and `reminders run`) may meet."""
        s = self.store
        values: dict[str, Any] = {"escalated_at": now} if kind == "escalated" else {
            "reminders": CirculationStep.reminders + 1, "reminded_at": now}
        with s.write() as conn:
            step = conn.execute(select(CirculationStep.reminded_at, CirculationStep.escalated_at)
                                .where(CirculationStep.id == step_id).with_for_update()).one()
            if (step.escalated_at is not None) if kind == "escalated" else (step.reminded_at != seen_reminded_at):
                return False
            conn.execute(update(CirculationStep).where(CirculationStep.id == step_id).values(**values))
            conn.execute(insert(Event), [s.event_row(letter_id, now, "gateway", f"circulation-{kind}", None, details)])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(letter_id, m, now) for m in mail])
        return True

    def to_read(self, login: str, headed: frozenset[str]) -> list[tuple[Letter, CirculationStep]]:
        """Letters whose running circulation waits for this person (by login) or a department they head.
        Not a letter archived meanwhile: its content is read only through a borrowing now."""
        target = and_(CirculationStep.kind == "person", CirculationStep.target == login)
        if headed:
            target = or_(target, and_(CirculationStep.kind == "department", CirculationStep.target.in_(headed)))
        with self.store.session() as session:
            rows = session.execute(
                select(Letter, CirculationStep)
                .join(Circulation, Circulation.letter_id == Letter.id)
                .join(CirculationStep, and_(CirculationStep.circulation_id == Circulation.id,
                                            CirculationStep.position == Circulation.current))
                .where(Circulation.status == "running", Letter.status != "archived", target)
                .order_by(CirculationStep.deadline)).all()
        return [(r[0], r[1]) for r in rows]

    def current_readers(self, letter_ids: list[int]) -> dict[int, tuple[str, str]]:
        """letter id -> (kind, target) of whoever's turn it is in its running circulation."""
        if not letter_ids:
            return {}
        with self.store.read() as conn:
            rows = conn.execute(
                select(Circulation.letter_id, CirculationStep.kind, CirculationStep.target)
                .join(CirculationStep, and_(CirculationStep.circulation_id == Circulation.id,
                                            CirculationStep.position == Circulation.current))
                .where(Circulation.status == "running", Circulation.letter_id.in_(letter_ids))).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    def is_reader(self, letter_id: int, login: str, headed: frozenset[str]) -> bool:
        """Is this person (or a department they head) a reader of one of the letter's circulations?"""
        target = and_(CirculationStep.kind == "person", CirculationStep.target == login)
        if headed:
            target = or_(target, and_(CirculationStep.kind == "department", CirculationStep.target.in_(headed)))
        with self.store.read() as conn:
            return conn.execute(select(CirculationStep.id).join(
                Circulation, Circulation.id == CirculationStep.circulation_id).where(
                Circulation.letter_id == letter_id, target).limit(1)).first() is not None

    def steps_of(self, letter_ids: list[int]) -> dict[int, list[tuple[Circulation, CirculationStep]]]:
        """Every circulation step of these letters, by letter, in order (for the archive)."""
        if not letter_ids:
            return {}
        with self.store.session() as session:
            rows = session.execute(select(Circulation, CirculationStep).join(
                CirculationStep, CirculationStep.circulation_id == Circulation.id).where(
                Circulation.letter_id.in_(letter_ids)).order_by(Circulation.id, CirculationStep.position)).all()
        out: dict[int, list[tuple[Circulation, CirculationStep]]] = {}
        for circ, step in rows:
            out.setdefault(circ.letter_id, []).append((circ, step))
        return out

    # -- borrowing ------------------------------------------------------------------
    def borrow(self, number: str, *, person_id: int, login: str, reason: str, days: int, approver: str,
               now: datetime, mail: list[NewMail]) -> int:
        """A request to read an archived letter. Raises LookupError, StepRefused (not archived, or
        one of theirs is open already)."""
        s = self.store
        with s.write() as conn:
            row = _locked(conn, number)
            if row.status != "archived":
                raise StepRefused(f"{number} is {row.status}: only an archived letter is borrowed")
            _not_destroyed(conn, row.id, number)
            if conn.execute(select(Borrowing.id).where(
                    Borrowing.letter_id == row.id, Borrowing.person_id == person_id,
                    or_(Borrowing.status == "requested",
                        and_(Borrowing.status == "granted", Borrowing.ends_at > now)))).first():
                raise StepRefused(f"{number}: a request of yours is open already")
            bid = conn.execute(insert(Borrowing).values(
                letter_id=row.id, person_id=person_id, login=login, reason=reason, days=days, approver=approver,
                requested_at=now, status="requested", decided_by=None, decided_at=None, comment="", ends_at=None,
                ended_at=None).returning(Borrowing.id)).scalar_one()
            conn.execute(insert(Event), [s.event_row(row.id, now, login, "borrow-requested", None, {
                "borrowing": bid, "reason": reason, "days": days, "approver": approver})])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(row.id, m, now) for m in mail])
        return bid

    def borrowing(self, borrowing_id: int) -> tuple[Borrowing, Letter] | None:
        with self.store.session() as session:
            row = session.execute(select(Borrowing, Letter).join(Letter, Letter.id == Borrowing.letter_id)
                                  .where(Borrowing.id == borrowing_id)).first()
        return (row[0], row[1]) if row else None

    def decide(self, borrowing_id: int, *, grant: bool, actor: str, comment: str, now: datetime,
               ends_at: datetime | None, mail: list[NewMail]) -> Borrowing:
        """Grant (until `ends_at`) or refuse a waiting request. Raises StepRefused."""
        return self._end(borrowing_id, "granted" if grant else "refused", ("requested",), actor=actor, now=now,
                         values={"decided_by": actor, "decided_at": now, "comment": comment, "ends_at": ends_at},
                         details={"approver": actor, "comment": comment,
                                  **({"until": ends_at.isoformat()} if ends_at else {})}, mail=mail)

    def give_back(self, borrowing_id: int, *, actor: str, now: datetime) -> Borrowing:
        """The borrower returns the letter before the end of the period."""
        return self._end(borrowing_id, "returned", ("granted",), actor=actor, now=now, values={"ended_at": now},
                         details={}, mail=[], open_at=now)

    def expiring(self, now: datetime) -> list[int]:
        """Grants whose period has ended and that are not recorded as ended yet."""
        with self.store.read() as conn:
            return list(conn.execute(select(Borrowing.id).where(Borrowing.status == "granted",
                                                                Borrowing.ends_at <= now)).scalars())

    def expire(self, now: datetime) -> list[Borrowing]:
        """Grants whose period has ended: recorded as expired (their reads ended with the period)."""
        out = []
        for bid in self.expiring(now):
            try:
                out.append(self._end(bid, "expired", ("granted",), actor="gateway", now=now,
                                     values={"ended_at": now}, details={}, mail=[]))
            except StepRefused:
                continue  # returned meanwhile
        return out

    def _end(self, borrowing_id: int, status: str, allowed: tuple[str, ...], *, actor: str, now: datetime,
             values: dict[str, Any], details: dict[str, Any], mail: list[NewMail],
             open_at: datetime | None = None) -> Borrowing:
        s = self.store
        with s.write() as conn:
            letter_id = conn.execute(select(Borrowing.letter_id).where(Borrowing.id == borrowing_id)).scalar()
            if letter_id is None:
                raise LookupError(f"no borrowing {borrowing_id}")
            number = conn.execute(select(Letter.number).where(Letter.id == letter_id).with_for_update()).scalar_one()
            current = conn.execute(select(Borrowing.status, Borrowing.login, Borrowing.ends_at)
                                   .where(Borrowing.id == borrowing_id)).one()
            if current.status not in allowed or (open_at is not None and current.ends_at <= open_at):
                raise StepRefused(f"borrowing {borrowing_id} is {current.status}")
            if status == "granted":
                _not_destroyed(conn, letter_id, number)
            conn.execute(update(Borrowing).where(Borrowing.id == borrowing_id).values(status=status, **values))
            event = {"granted": "borrow-granted", "refused": "borrow-refused", "returned": "borrow-returned",
                     "expired": "borrow-expired"}[status]
            conn.execute(insert(Event), [s.event_row(letter_id, now, actor, event, None, {
                "borrowing": borrowing_id, "borrower": current.login, **details})])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(letter_id, m, now) for m in mail])
        found = self.borrowing(borrowing_id)
        assert found is not None
        return found[0]

    def borrowings(self, *, letter_id: int | None = None, person_id: int | None = None,
                   statuses: tuple[str, ...] = (), limit: int = 500) -> list[tuple[Borrowing, Letter]]:
        """Borrowing requests, newest first."""
        query = select(Borrowing, Letter).join(Letter, Letter.id == Borrowing.letter_id)
        if letter_id is not None:
            query = query.where(Borrowing.letter_id == letter_id)
        if person_id is not None:
            query = query.where(Borrowing.person_id == person_id)
        if statuses:
            query = query.where(Borrowing.status.in_(statuses))
        with self.store.session() as session:
            rows = session.execute(query.order_by(Borrowing.id.desc()).limit(limit)).all()
        return [(r[0], r[1]) for r in rows]

    def borrow_read(self, letter_id: int, person_id: int, login: str, now: datetime) -> None:
        """A borrower opened the letter: an event on it (the read is in the audit log as always)."""
        s = self.store
        with s.write() as conn:
            borrowing_id = conn.execute(select(Borrowing.id).where(
                Borrowing.letter_id == letter_id, Borrowing.person_id == person_id, Borrowing.status == "granted",
                Borrowing.ends_at > now).order_by(Borrowing.id.desc())).scalar()
            if borrowing_id is not None:
                conn.execute(insert(Event), [s.event_row(letter_id, now, login, "borrow-read", None, {
                    "borrowing": borrowing_id, "borrower": login})])

    def lent(self, person_id: int, letter_ids: list[int], now: datetime) -> set[int]:
        """Of these letters, those lent to the person now (granted, the period not over)."""
        if not letter_ids:
            return set()
        with self.store.read() as conn:
            return set(conn.execute(select(Borrowing.letter_id).where(
                Borrowing.person_id == person_id, Borrowing.letter_id.in_(letter_ids),
                Borrowing.status == "granted", Borrowing.ends_at > now)).scalars())
