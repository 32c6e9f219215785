"""The registry's engine and its unit of work: every write is one transaction through `write()`.

Errors are translated in one place: a database that is away (connection refused, dropped,
read-only) becomes RegistryUnavailable, which callers treat as "keep the item and try again
later", never as the item's fault.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, make_url, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry import schema
from gateway.registry.models import NumberSeries
from gateway.registry.numbers import NumberTemplate, conflict
from gateway.registry.plan import NewMail


def _advance_statement(insert: Any) -> Any:
    series = NumberSeries.__table__
    stmt = insert(series).values(series=bindparam("series"), last_seq=bindparam("count"))
    return stmt.on_conflict_do_update(index_elements=[series.c.series],
                                      set_={"last_seq": series.c.last_seq + bindparam("count")},
                                      ).returning(series.c.last_seq)


# Built once per dialect: every registration batch runs it, and building it costs more than running it.
_ADVANCE = {"postgresql": _advance_statement(pg_insert), "sqlite": _advance_statement(sqlite_insert)}


class RegistryUnavailable(Exception):
    """The database cannot be reached or written; the caller keeps the item and retries."""


def unreachable(exc: DBAPIError) -> bool:
    """Is this the database being away (retry later) rather than this item's fault?"""
    if conflict(exc):
        return False  # a deadlock or serialisation failure: the caller retries, the database is fine
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_READ_ONLY = "25006"  # PostgreSQL's read_only_sql_transaction: a standby, or a primary set read-only

_DATABASE_CLOCK = text("SELECT clock_timestamp()")


def lease_clock(conn: Connection) -> datetime:
    """The time claims and leases are written and compared by. On PostgreSQL it is the database's:
    nodes whose own clocks disagree (one machine's NTP broken) must still agree on whose claim has
    run out, or two of them send one mail or watch one folder. SQLite serves one node: its own."""
    if conn.dialect.name == "postgresql":
        return conn.execute(_DATABASE_CLOCK).scalar_one()
    return utcnow()


# The days a register knows: far enough either way for any letter, and near enough that a day's
# bounds in UTC (a day later, in any time zone) stay within what datetime holds. Days and periods
# from people (filters, forms, options) are refused outside them.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)


def in_register(day: date) -> bool:
    return FIRST_DAY <= day <= LAST_DAY


# libpq's connection parameters that bound how long a registry that stopped answering can hold a
# caller: connecting (seconds), and noticing a connection whose server is gone (keepalives, and
# unacknowledged data, in milliseconds). And how long a statement waits for a lock another session
# holds, as SQLite's busy_timeout: a node frozen inside a transaction (a paused machine keeps its
# connection) would otherwise hold every other node's registration, heartbeat and stop for as long
# as it stays frozen. The statement fails instead, as the registry being away: the item is kept
# and tried again.
_PG_BOUNDS: dict[str, Any] = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                              "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 60000,
                              "options": "-c lock_timeout=60000"}


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
            # Writers take the write lock up front: a deferred transaction that
            # upgrades later fails with "database is locked" instead of waiting.
            # Readers do not, so listing letters never queues behind intake.
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # libpq waits for ever by default for a server that accepts and never answers (a hung host, a
    # stuck proxy), and minutes for one gone without closing the connection: every part of the daemon
    # would hang with it, its stop too (past systemd's TimeoutStopSec, leaving every claim to expire
    # instead of being handed back). Bounded here, unless the URL says otherwise.
    given = make_url(url).query
    bounds = {key: value for key, value in _PG_BOUNDS.items() if key not in given}
    engine = create_engine(url, echo=echo, pool_pre_ping=True, connect_args=bounds)

    @event.listens_for(engine, "handle_error")
    def _read_only(context: Any) -> None:
        # A server that refuses every write (after a fail-over, the old primary come back as a
        # standby, still reached by the nodes' name for the registry) is the registry being away:
        # and its connections are let go, every one, so that the next attempt connects anew and
        # finds the primary (a pre-ping would find the standby answering, and keep them).
        if getattr(context.original_exception, "sqlstate", None) == _READ_ONLY:
            context.is_disconnect = True

    return engine


class Store:
    """The engine, the unit of work and the row builders every part of the registry shares."""

    def __init__(self, url: str, *, number_template: str = "{year}-{seq:06d}",
                 timezone_name: str = "UTC", echo: bool = False):
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.writer = self.engine.execution_options(write=True)
        self.template = NumberTemplate(number_template)
        self.tz = ZoneInfo(timezone_name)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Who claims outbox mail and OCR jobs through this object, and for how long (registry/leases.py:
        # a daemon sets its node's instance; a command claims in its own name).
        self.claimant = f"{socket.gethostname()}#{os.getpid()}"
        self.lease_seconds = 60.0
        self.max_claims = 5
        # Set once the node's run was taken for dead and its record replaced (Cluster.beat): it
        # claims nothing more, and sends nothing it still holds.
        self.displaced = False

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def upgrade(self) -> bool:
        with self._translated():
            return schema.upgrade(self.engine)

    def check_schema(self) -> bool:
        """Refuse an older or newer schema (schema.SchemaMismatch); set up an empty registry."""
        with self._translated():
            return schema.check(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- the unit of work -----------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._translated(), self.writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._translated(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-only ORM session whose objects stay usable after it ends."""
        with self._translated(), self.sessions() as session:
            yield session

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if unreachable(exc):
                raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
            raise

    # -- rows every part writes -----------------------------------------
    @staticmethod
    def event_row(letter_id: int, at: datetime, actor: str, action: str, to_department: str | None,
                  details: dict[str, Any], from_department: str | None = None) -> dict[str, Any]:
        return {"letter_id": letter_id, "at": at, "actor": actor, "action": action,
                "from_department": from_department, "to_department": to_department, "details": details}

    @staticmethod
    def mail_row(letter_id: int | None, mail: NewMail, now: datetime) -> dict[str, Any]:
        return {"letter_id": letter_id, "kind": mail.kind, "recipient": mail.recipient,
                "message_id": mail.message_id, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "created_at": now, "updated_at": now, "sent_at": None,
                "last_error": None, "details": mail.details}

    @staticmethod
    def advance(conn: Connection, series: str, count: int) -> int:
        """Add `count` to a series (creating it) and return its new last number.

        One statement that holds the counter's row lock until commit: that is
        what keeps numbers gap-free across processes.
        """
        return int(conn.execute(_ADVANCE[conn.dialect.name], {"series": series, "count": count}).scalar_one())
