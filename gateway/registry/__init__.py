"""The registry: the second place where durability lives.

Everything a stage decides about an item is written in one transaction:
the letter, its attachments, its events and the intake keys that make a
second arrival recognisable. Numbers come from a per-series counter row that
is incremented inside that same transaction, so a rolled-back registration
gives its number back and the series has no gaps.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, create_engine, event, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from gateway.registry import schema
from gateway.registry.models import Attachment, Event, IntakeKey, Letter, NumberSeries
from gateway.registry.numbers import NumberTemplate

log = logging.getLogger("gateway.registry")

__all__ = ["Registry", "NewLetter", "NewAttachment", "Registered", "RegistryUnavailable",
           "Letter", "Attachment", "Event"]


class RegistryUnavailable(Exception):
    """The database cannot be reached or written; the caller keeps the item and retries."""


@dataclass
class NewAttachment:
    filename: str
    original_filename: str
    declared_type: str
    detected_type: str
    size: int
    sha256: str
    origin: str


@dataclass
class NewLetter:
    """What the pipeline hands to the registry for one spool item."""

    intake_keys: list[str]           # e.g. "spool:<id>", "imap:acct/INBOX/uidvalidity/uid"
    channel: str
    intake: str
    received_at: datetime
    raw_sha256: str
    raw_size: int
    raw_path: str
    sender_name: str = ""
    sender_address: str = ""
    recipients: dict[str, Any] = field(default_factory=dict)
    recipient: str = ""
    department: str | None = None
    subject: str = ""
    sent_at: datetime | None = None
    message_id: str | None = None
    summary: str = ""
    body_text: str = ""
    envelope: dict[str, Any] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    attachments: list[NewAttachment] = field(default_factory=list)
    fax: dict[str, Any] = field(default_factory=dict)
    actor: str = "gateway"


@dataclass(frozen=True)
class Registered:
    number: str
    letter_id: int
    outcome: str  # "registered" | "duplicate" (same bytes seen before) | "known" (this intake already done)
    status: str


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the spool copy is released.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front: a deferred transaction that upgrades
            # later fails with "database is locked" instead of waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, echo=echo, pool_pre_ping=True)


class Registry:
    def __init__(self, url: str, *, number_template: str = "{year}-{seq:06d}",
                 timezone_name: str = "UTC", echo: bool = False):
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.template = NumberTemplate(number_template)
        self.tz = ZoneInfo(timezone_name)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> bool:
        try:
            return schema.upgrade(self.engine)
        except OperationalError as exc:
            raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- registration ---------------------------------------------------
    def register(self, letters: Sequence[NewLetter]) -> list[Registered]:
        """Register a batch in one transaction; retried when a concurrent writer collides."""
        for attempt in range(5):
            try:
                with self.sessions.begin() as session:
                    return [self._register_one(session, new) for new in letters]
            except IntegrityError:
                # Another process registered the same bytes or took the same
                # new series at the same moment; a fresh look will see it.
                if attempt == 4:
                    raise
            except OperationalError as exc:
                raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _register_one(self, session: Session, new: NewLetter) -> Registered:
        known = session.execute(
            select(Letter.id, Letter.number, Letter.status).join(IntakeKey, IntakeKey.letter_id == Letter.id)
            .where(IntakeKey.key.in_(new.intake_keys)).limit(1)).first()
        if known is not None:
            # Registered before, the spool copy was not released (crash): nothing to add.
            self._add_keys(session, known.id, new.intake_keys)
            return Registered(known.number, known.id, "known", known.status)

        now = _utcnow()
        same_bytes = session.execute(
            select(Letter.id, Letter.number, Letter.status).where(Letter.raw_sha256 == new.raw_sha256)).first()
        if same_bytes is not None:
            session.add(Event(letter_id=same_bytes.id, at=now, actor=new.actor, action="duplicate-arrival",
                              details={"intake": new.intake, "keys": new.intake_keys,
                                       "received_at": new.received_at.isoformat()}))
            self._add_keys(session, same_bytes.id, new.intake_keys)
            return Registered(same_bytes.number, same_bytes.id, "duplicate", same_bytes.status)

        local = new.received_at.astimezone(self.tz)
        series = self.template.series(local, new.channel)
        seq = self._next_seq(session, series)
        number = self.template.render(local, new.channel, seq)
        fax = new.fax
        letter = Letter(
            number=number, series=series, seq=seq, channel=new.channel, intake=new.intake,
            status="registered", sender_name=new.sender_name, sender_address=new.sender_address,
            recipients=new.recipients, recipient=new.recipient, department=new.department,
            subject=new.subject, received_at=new.received_at, sent_at=new.sent_at,
            message_id=new.message_id, summary=new.summary, body_text=new.body_text,
            raw_sha256=new.raw_sha256, raw_size=new.raw_size, raw_path=new.raw_path,
            envelope=new.envelope, defects=new.defects, flags=new.flags,
            fax_number=fax.get("number"), fax_caller_id=fax.get("caller_id"),
            fax_sender_name=fax.get("sender_name"), fax_pages=fax.get("pages"),
            fax_sent_at=fax.get("sent_at"), created_at=now, updated_at=now,
            urgency="regular", confidentiality="normal",
        )
        letter.attachments = [Attachment(position=i, **vars(a)) for i, a in enumerate(new.attachments)]
        session.add(letter)
        session.flush()
        session.add_all([
            Event(letter_id=letter.id, at=new.received_at, actor=new.intake, action="received",
                  details={"keys": new.intake_keys, "size": new.raw_size}),
            Event(letter_id=letter.id, at=now, actor=new.actor, action="registered",
                  to_department=new.department,
                  details={"number": number, "defects": len(new.defects),
                           "attachments": len(new.attachments)}),
        ])
        self._add_keys(session, letter.id, new.intake_keys)
        return Registered(number, letter.id, "registered", letter.status)

    def _add_keys(self, session: Session, letter_id: int, keys: list[str]) -> None:
        if not keys:
            return
        existing = set(session.scalars(select(IntakeKey.key).where(IntakeKey.key.in_(keys))))
        now = _utcnow()
        session.add_all(IntakeKey(key=k, letter_id=letter_id, at=now) for k in keys if k not in existing)

    def _next_seq(self, session: Session, series: str) -> int:
        # One statement: create the series at 1 or add 1, and hold the row lock
        # until commit, which is what makes numbers gap-free across processes.
        dialect = session.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(NumberSeries)
        stmt = ins.values(series=series, last_seq=1).on_conflict_do_update(
            index_elements=[NumberSeries.series], set_={"last_seq": NumberSeries.last_seq + 1},
        ).returning(NumberSeries.last_seq)
        return int(session.execute(stmt).scalar_one())

    # -- reading --------------------------------------------------------
    def letter(self, number: str) -> Letter | None:
        with self.sessions() as session:
            return session.scalars(
                select(Letter).where(Letter.number == number)
                .options(selectinload(Letter.attachments), selectinload(Letter.events))).first()

    def letters(self, *, status: str | None = None, department: str | None = None,
                category: str | None = None, channel: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: int | None = None) -> list[Letter]:
        stmt = select(Letter).order_by(Letter.received_at, Letter.id)
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
        with self.sessions() as session:
            return list(session.scalars(stmt))

    def count(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count(Letter.id))) or 0)

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
