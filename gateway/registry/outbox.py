"""The transactional outbox: mail rows written with the change that causes them, then claimed,
sent, retried with backoff, or dead-lettered."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update

from gateway.registry.models import Event, OutboxMail
from gateway.registry.store import Store, utcnow


class Outbox(Store):
    def outbox_due(self, limit: int, now: datetime | None = None) -> list[OutboxMail]:
        with self.session() as session:
            return list(session.scalars(
                select(OutboxMail).where(OutboxMail.status == "pending",
                                         OutboxMail.next_attempt_at <= (now or utcnow()))
                .order_by(OutboxMail.next_attempt_at, OutboxMail.id).limit(limit)))

    def outbox_next_due(self) -> datetime | None:
        with self.read() as conn:
            return conn.execute(select(func.min(OutboxMail.next_attempt_at))
                                .where(OutboxMail.status == "pending")).scalar()

    def outbox_sent(self, mail_id: int, response: str) -> None:
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient,
                                       OutboxMail.attempts).where(OutboxMail.id == mail_id)).one()
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="sent", sent_at=now, updated_at=now, attempts=mail.attempts + 1, last_error=None))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, "gateway", f"{mail.kind}-sent", None,
                                                         {"to": mail.recipient, "outbox": mail_id,
                                                          "relay": response[:200]})])

    def outbox_retry_later(self, mail_id: int, error: str, at: datetime) -> int:
        now = utcnow()
        with self.write() as conn:
            attempts = conn.execute(select(OutboxMail.attempts).where(OutboxMail.id == mail_id)).scalar_one() + 1
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                attempts=attempts, next_attempt_at=at, updated_at=now, last_error=error[:1000]))
        return attempts

    def outbox_dead(self, mail_id: int, error: str) -> None:
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient,
                                       OutboxMail.attempts).where(OutboxMail.id == mail_id)).one()
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="dead", updated_at=now, attempts=mail.attempts + 1, last_error=error[:1000]))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, "gateway",
                                                         f"{mail.kind}-dead-lettered", None,
                                                         {"to": mail.recipient, "outbox": mail_id,
                                                          "error": error[:500]})])

    def outbox_requeue(self, mail_id: int, actor: str) -> OutboxMail:
        now = utcnow()
        with self.write() as conn:
            mail = conn.execute(select(OutboxMail.status, OutboxMail.letter_id).where(OutboxMail.id == mail_id)).first()
            if mail is None:
                raise LookupError(f"no outbox mail {mail_id}")
            if mail.status != "dead":
                raise ValueError(f"outbox mail {mail_id} is {mail.status}, not dead")
            # A fresh queue time: the give-up clock starts again.
            conn.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(
                status="pending", next_attempt_at=now, created_at=now, updated_at=now))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self.event_row(mail.letter_id, now, actor, "mail-requeued", None,
                                                         {"outbox": mail_id})])
        with self.session() as session:
            return session.get_one(OutboxMail, mail_id)

    def outbox(self, *, status: str | None = None, letter_id: int | None = None,
               limit: int | None = None) -> list[OutboxMail]:
        stmt = select(OutboxMail).order_by(OutboxMail.id)
        if status is not None:
            stmt = stmt.where(OutboxMail.status == status)
        if letter_id is not None:
            stmt = stmt.where(OutboxMail.letter_id == letter_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.session() as session:
            return list(session.scalars(stmt))

    def outbox_counts(self) -> dict[str, int]:
        with self.read() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(
                select(OutboxMail.status, func.count(OutboxMail.id)).group_by(OutboxMail.status))}
