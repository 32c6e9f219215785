"""Reading the register: letters by number, id and filters. No writes here."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from gateway.registry import lifecycle
from gateway.registry.models import Event, IntakeKey, Letter
from gateway.registry.people import Scope, scope_clause
from gateway.registry.store import Store


class Reads(Store):
    def rules_since(self, after_letter_id: int | None) -> tuple[set[str], int]:
        """The rules versions (their files' digests) by which the letters registered after
        `after_letter_id` were classified, and the newest letter's id; None: only that id."""
        with self.read() as conn:
            newest = int(conn.execute(select(func.max(Letter.id))).scalar() or 0)
            if after_letter_id is None:
                return set(), newest
            versions = conn.execute(select(Event.details["rules"].as_string()).distinct().where(
                Event.letter_id > after_letter_id, Event.letter_id <= newest, Event.action == "classified"))
            return {str(v) for v in versions.scalars() if v}, newest

    def letters_by_id(self, ids: set[int | None]) -> list[Letter]:
        with self.session() as session:
            return list(session.scalars(select(Letter).where(Letter.id.in_({i for i in ids if i is not None}))))

    def letter_by_id(self, letter_id: int) -> Letter | None:
        with self.session() as session:
            return session.scalars(select(Letter).where(Letter.id == letter_id)
                                   .options(selectinload(Letter.attachments))).first()

    def letters_numbered(self, numbers: list[str]) -> dict[str, Letter]:
        """The letters of these numbers (without attachments and events), by number; numbers not
        in the register are left out."""
        found: dict[str, Letter] = {}
        with self.session() as session:
            for first in range(0, len(numbers), 1000):
                found.update((letter.number, letter) for letter in session.scalars(
                    select(Letter).where(Letter.number.in_(numbers[first:first + 1000]))))
        return found

    def letter(self, number: str) -> Letter | None:
        with self.session() as session:
            return session.scalars(
                select(Letter).where(Letter.number == number)
                .options(selectinload(Letter.attachments), selectinload(Letter.events))).first()

    def letters(self, *, status: str | None = None, department: str | None = None,
                category: str | None = None, channel: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: int | None = None, with_attachments: bool = False,
                overdue_at: datetime | None = None, scope: Scope | None = None) -> list[Letter]:
        stmt = select(Letter).order_by(Letter.received_at, Letter.id)
        if scope is not None:
            stmt = stmt.where(scope_clause(scope))
        if overdue_at is not None:  # still open, and past its deadline
            stmt = stmt.where(Letter.deadline < overdue_at, Letter.status.in_(lifecycle.OPEN))
        if with_attachments:
            stmt = stmt.options(selectinload(Letter.attachments))
        if status == "open":  # any state before closed, as the queues' filter says it
            stmt = stmt.where(Letter.status.in_(lifecycle.OPEN))
            status = None
        for column, value in ((Letter.status, status), (Letter.department, department),
                              (Letter.category, category), (Letter.channel, channel)):
            if value is not None:
                stmt = stmt.where(column == value)
        if since is not None:
            stmt = stmt.where(Letter.received_at >= since)
        if until is not None:
            stmt = stmt.where(Letter.received_at < until)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.session() as session:
            return list(session.scalars(stmt))

    def number_by_intake_key(self, key: str, *, prefix: bool = False) -> str | None:
        """The number of the letter registered under this intake key (`spool:ITEM`), or under one
        starting with it (a paper form's `paper-form:TOKEN:`), if one was."""
        match = IntakeKey.key.startswith(key, autoescape=True) if prefix else IntakeKey.key == key
        with self.session() as session:
            return session.scalar(select(Letter.number).join(IntakeKey, IntakeKey.letter_id == Letter.id)
                                  .where(match).limit(1))

    def department_in_register(self, department: str) -> bool:
        """Whether any letter is in this department (one removed from the configuration may still have letters)."""
        with self.session() as session:
            return session.scalar(select(Letter.id).where(Letter.department == department).limit(1)) is not None

    def count(self) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count(Letter.id))) or 0)
