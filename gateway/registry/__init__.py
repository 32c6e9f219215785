"""The registry: the second place where durability lives.

Everything a stage decides about an item is written in one transaction:
the letter, its attachments, its events and the intake keys that make a
second arrival recognisable. Numbers come from a per-series counter row that
is incremented inside that same transaction, so a rolled-back registration
gives its number back and the series has no gaps.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, bindparam, case, create_engine, event, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import selectinload, sessionmaker

from gateway.config import Config
from gateway.stages.route import NewMail, Routing
from gateway.registry import schema
from gateway.registry.models import (ArchivePackage, Attachment, DestructionRecord, Event, IntakeKey, Letter,
                                     NumberSeries, OcrJob, OutboxMail)
from gateway.registry.numbers import NumberTemplate
from gateway.registry import lifecycle
from gateway.stages.answers import Answer

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
    needs_ocr: bool = False  # a fax whose text is read afterwards, off the registration path
    routing: Routing | None = None  # None: classified later (a fax, once its text is read)


@dataclass(frozen=True)
class ToArchive:
    id: int
    number: str
    received_at: datetime
    channel: str
    category: str | None
    raw_path: str
    raw_sha256: str
    fax_file_name: str | None  # a fax registered from its file: its original is that file


@dataclass(frozen=True)
class Registered:
    number: str
    letter_id: int
    outcome: str  # "registered" | "duplicate" (same bytes seen before) | "known" (this intake already done)
    status: str


def _routed_columns(routing: Routing, flags: list[str]) -> dict[str, Any]:
    return {"status": routing.status, "department": routing.department, "category": routing.category,
            "urgency": routing.urgency, "confidentiality": routing.confidentiality, "deadline": routing.deadline,
            "owner": routing.owner, "tags": routing.tags, "classification": routing.trace}


def _merge(flags: list[str], more: list[str]) -> list[str]:
    return [*flags, *(f for f in more if f not in flags)]


def _unreachable(exc: DBAPIError) -> bool:
    """Is this the database being away (retry later) rather than this item's fault?"""
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


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
            # Writers take the write lock up front: a deferred transaction that
            # upgrades later fails with "database is locked" instead of waiting.
            # Readers do not, so listing letters never queues behind intake.
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, echo=echo, pool_pre_ping=True)


class Registry:
    def __init__(self, url: str, *, number_template: str = "{year}-{seq:06d}",
                 timezone_name: str = "UTC", echo: bool = False):
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.writer = self.engine.execution_options(write=True)
        self.template = NumberTemplate(number_template)
        self.tz = ZoneInfo(timezone_name)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Config) -> Registry:
        model = config.model
        return cls(config.registry_url, number_template=model.gateway.letter_number,
                   timezone_name=model.gateway.timezone, echo=model.registry.echo_sql)

    def upgrade(self) -> bool:
        try:
            return schema.upgrade(self.engine)
        except DBAPIError as exc:
            if _unreachable(exc):
                raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
            raise

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
                with self.writer.begin() as conn:
                    return self._register_batch(conn, list(letters))
            except IntegrityError:
                # Another process registered the same bytes or took the same
                # new series at the same moment; a fresh look will see it.
                if attempt == 4:
                    raise
            except DBAPIError as exc:
                if _unreachable(exc):
                    raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
                raise
        raise AssertionError("unreachable")

    def _register_batch(self, conn: Connection, letters: list[NewLetter]) -> list[Registered]:
        # Core statements, a handful per batch rather than several per letter:
        # registration is the hot path of every intake.
        now = _utcnow()
        all_keys = [k for new in letters for k in new.intake_keys]
        known = {row.key: row for row in conn.execute(
            select(IntakeKey.key, Letter.id, Letter.number, Letter.status)
            .join(Letter, IntakeKey.letter_id == Letter.id).where(IntakeKey.key.in_(all_keys)))}
        by_sha = {row.raw_sha256: row for row in conn.execute(
            select(Letter.raw_sha256, Letter.id, Letter.number, Letter.status)
            .where(Letter.raw_sha256.in_({new.raw_sha256 for new in letters})))}

        results: list[Registered | None] = [None] * len(letters)
        fresh: list[int] = []  # indexes of letters to insert
        first_in_batch: dict[str, int] = {}
        for i, new in enumerate(letters):
            hit = next((known[k] for k in new.intake_keys if k in known), None)
            if hit is not None:
                # Registered before; the spool copy was not released (crash).
                results[i] = Registered(hit.number, hit.id, "known", hit.status)
            elif new.raw_sha256 not in by_sha and new.raw_sha256 not in first_in_batch:
                first_in_batch[new.raw_sha256] = i
                fresh.append(i)

        # Numbers: one counter update per series for the whole batch.
        locals_ = {i: letters[i].received_at.astimezone(self.tz) for i in fresh}
        per_series: dict[str, list[int]] = {}
        for i in fresh:
            per_series.setdefault(self.template.series(locals_[i], letters[i].channel), []).append(i)
        seqs: dict[int, tuple[str, int]] = {}
        for series, members in per_series.items():
            last = self._advance(conn, series, len(members))
            for offset, i in enumerate(members):
                seqs[i] = (series, last - len(members) + 1 + offset)

        rows = []
        for i in fresh:
            new, (series, seq) = letters[i], seqs[i]
            fax = new.fax
            routing = new.routing
            rows.append({
                "number": self.template.render(locals_[i], new.channel, seq), "series": series, "seq": seq,
                "channel": new.channel, "intake": new.intake, "status": "registered",
                "sender_name": new.sender_name, "sender_address": new.sender_address,
                "recipients": new.recipients, "recipient": new.recipient, "department": new.department,
                "subject": new.subject, "received_at": new.received_at, "sent_at": new.sent_at,
                "message_id": new.message_id, "summary": new.summary, "body_text": new.body_text,
                **(_routed_columns(routing, new.flags) if routing is not None else
                   {"category": None, "urgency": "regular", "confidentiality": "normal", "deadline": None,
                    "owner": None, "tags": [], "classification": None}),
                "raw_sha256": new.raw_sha256, "raw_size": new.raw_size, "raw_path": new.raw_path,
                "envelope": new.envelope, "defects": new.defects,
                "flags": _merge(new.flags, routing.flags) if routing is not None else new.flags,
                "fax_number": fax.get("number"), "fax_caller_id": fax.get("caller_id"),
                "fax_sender_name": fax.get("sender_name"), "fax_pages": fax.get("pages"),
                "fax_sent_at": fax.get("sent_at"), "created_at": now, "updated_at": now,
            })
        ids: list[int] = []
        if rows:
            ids = list(conn.execute(insert(Letter).returning(Letter.id, sort_by_parameter_order=True),
                                    rows).scalars())

        events: list[dict[str, Any]] = []
        attachments: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        receipts_sent = self._receipts_today(conn, [letters[i].routing.receipt.recipient for i in fresh  # type: ignore[union-attr]
                                                    if letters[i].routing and letters[i].routing.receipt], now)
        for i, letter_id, row in zip(fresh, ids, rows, strict=True):
            new = letters[i]
            results[i] = Registered(row["number"], letter_id, "registered", row["status"])
            attachments += [{"letter_id": letter_id, "position": n, **vars(a)}
                            for n, a in enumerate(new.attachments)]
            events.append(self._event(letter_id, new.received_at, new.intake, "received", None,
                                      {"keys": new.intake_keys, "size": new.raw_size}))
            events.append(self._event(letter_id, now, new.actor, "registered", new.department,
                                      {"number": row["number"], "defects": len(new.defects),
                                       "attachments": len(new.attachments)}))
            if new.routing is not None:
                more_events, mail = self._routed(letter_id, new.routing, now, receipts_sent)
                events += more_events
                outbox += mail
        for i, new in enumerate(letters):
            if results[i] is not None:
                continue
            # The same bytes as an earlier letter, or as one earlier in this batch.
            same = by_sha.get(new.raw_sha256)
            if same is not None:
                original = Registered(same.number, same.id, "duplicate", same.status)
            else:
                original = replace(results[first_in_batch[new.raw_sha256]], outcome="duplicate")  # type: ignore[arg-type]
            results[i] = original
            events.append(self._event(original.letter_id, now, new.actor, "duplicate-arrival", None,
                                      {"intake": new.intake, "keys": new.intake_keys,
                                       "received_at": new.received_at.isoformat()}))

        # Every key of every item, so that the next arrival of any of them is recognised.
        key_rows = {k: {"key": k, "letter_id": r.letter_id, "at": now}  # type: ignore[union-attr]
                    for new, r in zip(letters, results, strict=True) for k in new.intake_keys if k not in known}
        ocr_jobs = [{"letter_id": letter_id, "created_at": now, "attempts": 0}
                    for i, letter_id in zip(fresh, ids, strict=True) if letters[i].needs_ocr]
        for table, values in ((Attachment, attachments), (Event, events), (IntakeKey, list(key_rows.values())),
                              (OcrJob, ocr_jobs), (OutboxMail, outbox)):
            if values:
                conn.execute(insert(table), values)
        return results  # type: ignore[return-value]

    @staticmethod
    def _event(letter_id: int, at: datetime, actor: str, action: str, to_department: str | None,
               details: dict[str, Any], from_department: str | None = None) -> dict[str, Any]:
        return {"letter_id": letter_id, "at": at, "actor": actor, "action": action,
                "from_department": from_department, "to_department": to_department, "details": details}

    # -- routing --------------------------------------------------------
    def _receipts_today(self, conn: Connection, senders: list[str], now: datetime) -> dict[str, int]:
        """Receipts queued per sender in the last 24 hours (the per-sender cap counts them)."""
        if not senders:
            return {}
        rows = conn.execute(select(OutboxMail.recipient, func.count(OutboxMail.id))
                            .where(OutboxMail.kind == "receipt", OutboxMail.recipient.in_(set(senders)),
                                   OutboxMail.created_at > now - timedelta(days=1))
                            .group_by(OutboxMail.recipient))
        return {row[0]: int(row[1]) for row in rows}

    def _routed(self, letter_id: int, routing: Routing, now: datetime, receipts_sent: dict[str, int],
                actor: str = "gateway") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The events and outbox rows of a routing decision (the caller inserts them)."""
        trace = routing.trace
        events = [
            self._event(letter_id, now, actor, "classified", None, {
                "rules": trace.get("rules"), "matched": [m["rule"] for m in trace.get("matched", [])],
                "category": routing.category, "urgency": routing.urgency,
                "confidentiality": routing.confidentiality, "tags": routing.tags}),
            self._event(letter_id, now, actor, "needs-triage" if routing.status == "needs-triage" else "routed",
                        routing.department, {"owner": routing.owner,
                                             "notify": [m.recipient for m in routing.mail],
                                             "deadline": routing.deadline.isoformat() if routing.deadline else None,
                                             **({"not_notified": routing.no_notification}
                                                if routing.no_notification else {}),
                                             **({"candidates": trace["triage"]["candidates"],
                                                 "reason": trace["triage"]["reason"]}
                                                if trace.get("triage") else {})}),
        ]
        mail = [self._mail(letter_id, m, now) for m in routing.mail]
        receipt = routing.receipt
        if receipt is not None:
            cap = routing.receipt_cap
            sent = receipts_sent.get(receipt.recipient, 0)
            if sent >= cap:
                events.append(self._event(letter_id, now, actor, "receipt-suppressed", None, {
                    "to": receipt.recipient, "reason": f"{sent} receipt(s) to this sender in 24 hours (cap {cap})"}))
            else:
                receipts_sent[receipt.recipient] = sent + 1
                mail.append(self._mail(letter_id, receipt, now))
                events.append(self._event(letter_id, now, actor, "receipt-queued", None,
                                          {"to": receipt.recipient, **receipt.details}))
        elif routing.no_receipt:
            events.append(self._event(letter_id, now, actor, "receipt-suppressed", None,
                                      {"reason": routing.no_receipt}))
        return events, mail

    def _mail(self, letter_id: int | None, mail: NewMail, now: datetime) -> dict[str, Any]:
        return {"letter_id": letter_id, "kind": mail.kind, "recipient": mail.recipient,
                "message_id": mail.message_id, "status": "pending", "attempts": 0,
                "next_attempt_at": now, "created_at": now, "updated_at": now, "sent_at": None,
                "last_error": None, "details": mail.details}

    def _advance(self, conn: Connection, series: str, count: int) -> int:
        """Add `count` to a series (creating it) and return its new last number.

        One statement that holds the counter's row lock until commit: that is
        what keeps numbers gap-free across processes.
        """
        ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(NumberSeries)
        stmt = ins.values(series=series, last_seq=count).on_conflict_do_update(
            index_elements=[NumberSeries.series], set_={"last_seq": NumberSeries.last_seq + count},
        ).returning(NumberSeries.last_seq)
        return int(conn.execute(stmt).scalar_one())

    # -- reading a fax's text afterwards ---------------------------------
    def ocr_jobs(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, str]]:
        """Letters waiting for their text: (letter id, raw path)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(OcrJob.letter_id, Letter.raw_path)
                                .join(Letter, OcrJob.letter_id == Letter.id)
                                .where(OcrJob.letter_id.not_in(exclude) if exclude else True)
                                .order_by(OcrJob.created_at, OcrJob.letter_id).limit(limit))
            return [(r.letter_id, r.raw_path) for r in rows]

    def ocr_done(self, letter_id: int, text: str, summary_chars: int, defects: list[str], pages: int,
                 seconds: float, route: Callable[[Letter], Routing] | None = None) -> tuple[str, str]:
        """Store a fax's text: it becomes the letter's text and summary; then classify and route it
        with `route` (given the letter with its text), unless a person routed it meanwhile.
        Returns the number and the status."""
        from gateway.stages.normalise.summary import summarise

        now = _utcnow()
        with self.writer.begin() as conn:
            # Locked: a person reassigning the letter meanwhile waits, and is then not overruled.
            row = conn.execute(select(Letter.number, Letter.body_text, Letter.defects, Letter.flags, Letter.status)
                               .where(Letter.id == letter_id).with_for_update()).one()
            body = f"{row.body_text.rstrip()}\n\n{text}".strip() if row.body_text.strip() else text
            flags = [f for f in row.flags if f != "ocr-pending"] + ([] if text.strip() else ["no-text"])
            values: dict[str, Any] = {
                "body_text": body.replace("\x00", "\ufffd"), "defects": [*row.defects, *defects],
                "flags": flags, "updated_at": now}
            if text.strip():
                values["summary"] = summarise(text, summary_chars)
            events = [self._event(letter_id, now, "gateway", "text-read", None,
                                  {"pages": pages, "characters": len(text), "defects": defects,
                                   "seconds": round(seconds, 2)})]
            outbox: list[dict[str, Any]] = []
            status = row.status
            if route is not None and row.status == "registered":
                with self.sessions(bind=conn) as session:
                    letter = session.scalars(select(Letter).where(Letter.id == letter_id)
                                             .options(selectinload(Letter.attachments))).one()
                    letter.body_text = values["body_text"]
                    session.expunge(letter)
                routing = route(letter)
                values.update(_routed_columns(routing, flags), flags=_merge(flags, routing.flags))
                status = routing.status
                receipts = self._receipts_today(conn, [routing.receipt.recipient] if routing.receipt else [], now)
                more, outbox = self._routed(letter_id, routing, now, receipts)
                events += more
            conn.execute(Letter.__table__.update().where(Letter.id == letter_id).values(**values))
            conn.execute(insert(Event), events)
            if outbox:
                conn.execute(insert(OutboxMail), outbox)
            conn.execute(OcrJob.__table__.delete().where(OcrJob.letter_id == letter_id))
        return str(row.number), status

    # -- people's decisions ---------------------------------------------
    def reassign(self, number: str, department: str, *, reason: str, actor: str,
                 notify: list[NewMail], deadline: datetime | None = None) -> tuple[str | None, str]:
        """A person moves a letter to another department. Returns (from, to).

        Recorded as a `reassigned` event with `by_person`, which the accuracy
        rate counts; the new department's owners are notified in the same transaction.
        """
        now = _utcnow()
        with self.writer.begin() as conn:
            row = conn.execute(select(Letter.id, Letter.department, Letter.flags, Letter.status)
                               .where(Letter.number == number).with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            lifecycle.check(number, row.status, "reassign")
            if row.department == department:
                raise ValueError(f"{number} is already with {department}")
            status = "routed" if row.status in ("registered", "needs-triage") else row.status
            # The new department's owners own it now (a rule's owner belonged to the old one); a
            # letter routed before it was classified (a fax awaiting its text) gets its deadline.
            conn.execute(Letter.__table__.update().where(Letter.id == row.id).values(
                department=department, status=status, updated_at=now, owner=None,
                deadline=func.coalesce(Letter.deadline, deadline),
                flags=[f for f in row.flags if f != "needs-triage"]))
            conn.execute(insert(Event), [self._event(row.id, now, actor, "reassigned", department,
                                                     {"reason": reason, "by_person": True,
                                                      "notify": [m.recipient for m in notify]},
                                                     from_department=row.department)])
            if notify:
                conn.execute(insert(OutboxMail), [self._mail(row.id, m, now) for m in notify])
        return row.department, department

    def transition(self, number: str, action: str, *, actor: str, text: str = "",
                   on_close: Callable[[int, str], list[NewMail]] | None = None) -> tuple[str, str]:
        """A person's step in the letter's life (ack, progress, answer, close, note).

        Refused with TransitionRefused when the letter's state does not allow it.
        Returns (state before, state after).
        """
        now = _utcnow()
        with self.writer.begin() as conn:
            row = conn.execute(select(Letter.id, Letter.status, Letter.department)
                               .where(Letter.number == number).with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            move = lifecycle.check(number, row.status, action)
            after = move.to or row.status
            if move.to is not None:
                conn.execute(Letter.__table__.update().where(Letter.id == row.id).values(status=after, updated_at=now))
            conn.execute(insert(Event), [self._event(row.id, now, actor, move.name, None,
                                                     {"from": row.status, "to": after, **({"text": text} if text else {})})])
            if move.to == "closed" and on_close is not None:
                self._feedback(conn, row.id, on_close(row.id, text), now)
        return row.status, after

    def _feedback(self, conn: Connection, letter_id: int, mails: list[NewMail], now: datetime) -> None:
        """The result of a closed letter, queued for its sender with the closing."""
        if mails:
            conn.execute(insert(OutboxMail), [self._mail(letter_id, m, now) for m in mails])
            conn.execute(insert(Event), [self._event(letter_id, now, "gateway", "feedback-queued", None,
                                                     {"to": [m.recipient for m in mails]})])

    # -- answers from departments ---------------------------------------
    def answered_letter(self, numbers: list[str], message_ids: list[str]) -> str | None:
        """The letter a mail answers: a number in its subject, or our mail it replies to."""
        try:
            return self._answered_letter(numbers, message_ids)
        except DBAPIError as exc:
            if _unreachable(exc):  # the registry is away: not the mail's fault
                raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
            raise

    def _answered_letter(self, numbers: list[str], message_ids: list[str]) -> str | None:
        with self.engine.connect() as conn:
            if numbers:
                found = conn.execute(select(Letter.number).where(Letter.number.in_(numbers))).scalars().first()
                if found:
                    return str(found)
            if message_ids:
                wanted = [f"<{m.strip('<>')}>" for m in message_ids]
                found = conn.execute(select(Letter.number).join(OutboxMail, OutboxMail.letter_id == Letter.id)
                                     .where(OutboxMail.message_id.in_(wanted),
                                            OutboxMail.kind.in_(("notification", "reminder", "escalation")))
                                     ).scalars().first()
                if found:
                    return str(found)
        return None

    def apply_answer(self, answer: Answer, *, keys: list[str], raw_sha256: str, raw_path: str, received_at: datetime,
                     allowed: dict[str, set[str]], departments: set[str],
                     notify: Callable[[str], list[NewMail]],
                     on_close: Callable[[int, str], list[NewMail]] | None = None) -> Registered:
        """Record a department's answer on its letter, and obey its command if its sender may give it.

        One transaction: the event(s), the change of state, the new owners' notifications and the
        intake keys that make a second arrival of the same mail recognisable.
        """
        now = _utcnow()
        try:
            with self.writer.begin() as conn:
                known = conn.execute(select(IntakeKey.key, Letter.id, Letter.number, Letter.status)
                                     .join(Letter, IntakeKey.letter_id == Letter.id)
                                     .where(IntakeKey.key.in_(keys))).first()
                if known is not None:
                    return Registered(known.number, known.id, "known", known.status)
                row = conn.execute(select(Letter.id, Letter.number, Letter.status, Letter.department, Letter.owner,
                                          Letter.flags)
                                   .where(Letter.number == answer.number).with_for_update()).one()
                may = answer.sender.lower() in allowed.get(row.department or "", set()) | {(row.owner or "").lower()}
                details: dict[str, Any] = {"from": answer.sender, "text": answer.text, "command": answer.command,
                                           "argument": answer.argument, "raw_sha256": raw_sha256, "raw_path": raw_path,
                                           "received_at": received_at.isoformat()}
                refused = None
                if answer.command is None:
                    pass
                elif not may:
                    refused = (f"{answer.sender} is not an owner of {row.department}: recorded, not obeyed")
                else:
                    try:
                        refused = self._obey(conn, row, answer, departments, notify, now, on_close)
                    except lifecycle.TransitionRefused as exc:
                        refused = str(exc)
                details["obeyed"] = answer.command is not None and refused is None
                if refused:
                    details["refused"] = refused
                events = [self._event(row.id, now, answer.sender, "answer", None, details)]
                conn.execute(insert(Event), events)
                conn.execute(insert(IntakeKey), [{"key": k, "letter_id": row.id, "at": now} for k in keys])
                status = conn.execute(select(Letter.status).where(Letter.id == row.id)).scalar_one()
                return Registered(row.number, row.id, "answer", status)
        except DBAPIError as exc:
            if _unreachable(exc):
                raise RegistryUnavailable(f"registry {self.safe_url}: {exc.orig}") from exc
            raise

    def _obey(self, conn: Connection, row: Any, answer: Answer, departments: set[str],
              notify: Callable[[str], list[NewMail]], now: datetime,
              on_close: Callable[[int, str], list[NewMail]] | None) -> str | None:
        """Apply an answer's command; returns why it was not applied, or None."""
        actor = answer.sender
        if answer.command == "reassign":
            target = answer.argument
            lifecycle.check(row.number, row.status, "reassign")
            if target not in departments:
                return f"no department {target!r}"
            if target == row.department:
                return f"{row.number} is already with {target}"
            mails = notify(target)
            conn.execute(Letter.__table__.update().where(Letter.id == row.id).values(
                department=target, updated_at=now, flags=[f for f in row.flags if f != "needs-triage"], owner=None,
                status="routed" if row.status in ("registered", "needs-triage") else row.status))
            conn.execute(insert(Event), [self._event(row.id, now, actor, "reassigned", target,
                                                     {"reason": answer.text[:500], "by_person": True, "by_mail": True,
                                                      "notify": [m.recipient for m in mails]},
                                                     from_department=row.department)])
            if mails:
                conn.execute(insert(OutboxMail), [self._mail(row.id, m, now) for m in mails])
            return None
        move = lifecycle.check(row.number, row.status, str(answer.command))
        if move.to is not None:
            conn.execute(Letter.__table__.update().where(Letter.id == row.id).values(status=move.to, updated_at=now))
        conn.execute(insert(Event), [self._event(row.id, now, actor, move.name, None,
                                                 {"from": row.status, "to": move.to or row.status, "by_mail": True,
                                                  **({"text": answer.argument} if answer.argument else {})})])
        if move.to == "closed" and on_close is not None:
            self._feedback(conn, row.id, on_close(row.id, answer.argument), now)
        return None

    # -- the archive ----------------------------------------------------
    def letters_to_archive(self, start: datetime, end: datetime) -> list[ToArchive]:
        """The month's letters not archived yet: only what packing needs (a month can be large)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Letter.id, Letter.number, Letter.received_at, Letter.channel, Letter.category,
                                       Letter.raw_path, Letter.raw_sha256)
                                .where(Letter.received_at >= start, Letter.received_at < end,
                                       Letter.archive_number.is_(None))
                                .order_by(Letter.received_at, Letter.id)).all()
            faxes = dict(conn.execute(select(Attachment.letter_id, Attachment.filename)
                                      .join(Letter, Attachment.letter_id == Letter.id)
                                      .where(Letter.received_at >= start, Letter.received_at < end,
                                             Letter.archive_number.is_(None), Letter.channel == "fax",
                                             Attachment.origin == "fax")).all())
        return [ToArchive(r.id, r.number, r.received_at, r.channel, r.category, r.raw_path, r.raw_sha256,
                          faxes.get(r.id)) for r in rows]

    def archive_paths(self, month: str) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(ArchivePackage.path, ArchivePackage.manifest).where(ArchivePackage.month == month))
            return {p for row in rows for p in row}

    def next_archive_part(self, month: str, category: str, kind: str) -> int:
        with self.engine.connect() as conn:
            last = conn.execute(select(func.max(ArchivePackage.part)).where(
                ArchivePackage.month == month, ArchivePackage.category == category,
                ArchivePackage.kind == kind)).scalar()
            return int(last or 0) + 1

    def series_last(self, series: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(NumberSeries.last_seq).where(NumberSeries.series == series)).scalar() or 0)

    def archive_commit(self, *, package: dict[str, Any], assignments: list[tuple[int, str]], series: str,
                       expected_last: int) -> int:
        """Record a written package and give its letters their archive numbers, in one transaction."""
        now = _utcnow()
        with self.writer.begin() as conn:
            last = self._advance(conn, series, len(assignments))
            if last != expected_last + len(assignments):
                raise RuntimeError(f"archive series {series} moved while packing (at {last}); run again")
            package_id = conn.execute(insert(ArchivePackage).returning(ArchivePackage.id), [
                {**package, "created_at": now, "status": "written", "verified_at": None, "purged_at": None}]).scalar_one()
            table = Letter.__table__
            # One statement executed for many rows: a month can hold tens of thousands of letters.
            conn.execute(table.update().where(table.c.id == bindparam("letter_id")).values(
                archive_number=bindparam("archive_number"), archived_at=now, archive_package_id=package_id,
                updated_at=now, status=case((table.c.status == "closed", "archived"), else_=table.c.status)),
                [{"letter_id": letter_id, "archive_number": number} for letter_id, number in assignments])
            conn.execute(insert(Event), [self._event(letter_id, now, "gateway", "archived", None,
                                                     {"archive_number": number, "package": package["path"]})
                                         for letter_id, number in assignments])
            return int(package_id)

    def archive_packages(self, month: str | None) -> list[ArchivePackage]:
        stmt = select(ArchivePackage).order_by(ArchivePackage.month, ArchivePackage.category, ArchivePackage.kind,
                                               ArchivePackage.part)
        if month is not None:
            stmt = stmt.where(ArchivePackage.month == month)
        with self.sessions() as session:
            return list(session.scalars(stmt))

    def archive_package(self, package_id: int) -> ArchivePackage | None:
        with self.sessions() as session:
            return session.get(ArchivePackage, package_id)

    def archive_checked(self, package_id: int, problems: list[str]) -> None:
        now = _utcnow()
        with self.writer.begin() as conn:
            conn.execute(ArchivePackage.__table__.update().where(
                ArchivePackage.id == package_id, ArchivePackage.status != "purged").values(
                status="corrupt" if problems else "verified", verified_at=None if problems else now))

    def archived_hashes(self, package_id: int) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(
                select(Letter.archive_number, Letter.raw_sha256).where(Letter.archive_package_id == package_id))}

    def archived_letters(self, package_id: int) -> list[Letter]:
        with self.sessions() as session:
            return list(session.scalars(select(Letter).where(Letter.archive_package_id == package_id)))

    def releasable(self, package_id: int) -> list[tuple[int, str]]:
        with self.engine.connect() as conn:
            # Open letters keep their copy: they are still being worked on (text to read, answers).
            return [(r[0], r[1]) for r in conn.execute(select(Letter.id, Letter.raw_path).where(
                Letter.archive_package_id == package_id, Letter.raw_released.is_(False),
                Letter.status.in_(("closed", "archived"))))]

    def mark_released(self, letter_ids: list[int]) -> None:
        if not letter_ids:
            return
        with self.writer.begin() as conn:
            for start in range(0, len(letter_ids), 1000):
                conn.execute(Letter.__table__.update().where(Letter.id.in_(letter_ids[start:start + 1000]))
                             .values(raw_released=True))

    def record_destruction(self, package_ids: list[int], *, approved_by: str,
                           actor: str) -> tuple[list[int], list[str]]:
        """Mark packages destroyed and write the destruction record, re-checking legal holds under
        lock. Returns (package ids destroyed, paths refused because a hold was placed meanwhile)."""
        now = _utcnow()
        with self.writer.begin() as conn:
            letters = conn.execute(select(Letter.id, Letter.number, Letter.archive_number, Letter.legal_hold,
                                          Letter.archive_package_id)
                                   .where(Letter.archive_package_id.in_(package_ids)).with_for_update()).all()
            held = {l.archive_package_id for l in letters if l.legal_hold}
            packages = conn.execute(select(ArchivePackage.id, ArchivePackage.path)
                                    .where(ArchivePackage.id.in_(package_ids), ArchivePackage.status != "purged")
                                    .with_for_update()).all()
            refused = [p.path for p in packages if p.id in held]
            chosen = [p for p in packages if p.id not in held]
            ids = [p.id for p in chosen]
            letters = [l for l in letters if l.archive_package_id in ids]
            if not ids:
                return [], refused
            conn.execute(ArchivePackage.__table__.update().where(ArchivePackage.id.in_(ids)).values(
                status="purged", purged_at=now))
            conn.execute(Letter.__table__.update().where(Letter.archive_package_id.in_(ids)).values(
                purged_at=now, updated_at=now))
            record = conn.execute(insert(DestructionRecord).returning(DestructionRecord.id), [{
                "at": now, "approved_by": approved_by, "actor": actor, "packages": [p.path for p in chosen],
                "letters": [[l.number, l.archive_number] for l in letters]}]).scalar_one()
            if letters:
                conn.execute(insert(Event), [self._event(l.id, now, actor, "destroyed", None,
                                                         {"approved_by": approved_by, "record": int(record)})
                                             for l in letters])
            return ids, refused

    def destruction_records(self) -> list[DestructionRecord]:
        with self.sessions() as session:
            return list(session.scalars(select(DestructionRecord).order_by(DestructionRecord.id)))

    def hold(self, number: str, *, on: bool, reason: str, actor: str) -> None:
        now = _utcnow()
        with self.writer.begin() as conn:
            row = conn.execute(select(Letter.id, Letter.legal_hold).where(Letter.number == number)
                               .with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            if row.legal_hold == on:
                raise ValueError(f"{number} is {'already' if on else 'not'} on legal hold")
            conn.execute(Letter.__table__.update().where(Letter.id == row.id).values(legal_hold=on, updated_at=now))
            conn.execute(insert(Event), [self._event(row.id, now, actor, "hold" if on else "hold-released", None,
                                                     {"reason": reason})])

    # -- reminders ------------------------------------------------------
    def reminder_state(self) -> list[tuple[Letter, list[dict[str, Any]]]]:
        """Open letters with a deadline, each with the reminders already recorded for it."""
        with self.sessions() as session:
            letters = list(session.scalars(select(Letter).where(Letter.status.in_(lifecycle.OPEN),
                                                                Letter.deadline.is_not(None)).order_by(Letter.id)))
            sent: dict[int, list[dict[str, Any]]] = {}
            if letters:
                for event in session.scalars(select(Event).where(Event.action.in_(("reminded", "escalated")),
                                                                 Event.letter_id.in_([l.id for l in letters]))):
                    sent.setdefault(event.letter_id, []).append({"kind": event.details.get("kind"), "at": event.at})
        return [(letter, sent.get(letter.id, [])) for letter in letters]

    def remind(self, letter_id: int, kind: str, mail: list[NewMail], count: int, at: datetime) -> None:
        """Queue a reminder (or an escalation) and record it, in one transaction."""
        now = _utcnow()
        with self.writer.begin() as conn:
            # Locked and looked at again: two passes at once (the daemon's and a hand-run one)
            # must not both send the same reminder.
            conn.execute(select(Letter.id).where(Letter.id == letter_id).with_for_update()).first()
            earlier = conn.execute(select(Event.at).where(
                Event.letter_id == letter_id, Event.action.in_(("reminded", "escalated")),
                Event.details["kind"].as_string() == kind)).scalars().all()
            if earlier and (kind != "overdue" or any(abs((at - e).total_seconds()) < 12 * 3600 for e in earlier)):
                return
            conn.execute(insert(Event), [self._event(letter_id, at, "gateway",
                                                     "escalated" if kind == "escalation" else "reminded", None,
                                                     {"kind": kind, "count": count, "to": [m.recipient for m in mail]})])
            if mail:
                conn.execute(insert(OutboxMail), [self._mail(letter_id, m, now) for m in mail])

    # -- the outbox -----------------------------------------------------
    def outbox_due(self, limit: int, now: datetime | None = None) -> list[OutboxMail]:
        with self.sessions() as session:
            return list(session.scalars(
                select(OutboxMail).where(OutboxMail.status == "pending",
                                         OutboxMail.next_attempt_at <= (now or _utcnow()))
                .order_by(OutboxMail.next_attempt_at, OutboxMail.id).limit(limit)))

    def outbox_next_due(self) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(OutboxMail.next_attempt_at))
                                .where(OutboxMail.status == "pending")).scalar()

    def outbox_sent(self, mail_id: int, response: str) -> None:
        now = _utcnow()
        with self.writer.begin() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient,
                                       OutboxMail.attempts).where(OutboxMail.id == mail_id)).one()
            conn.execute(OutboxMail.__table__.update().where(OutboxMail.id == mail_id).values(
                status="sent", sent_at=now, updated_at=now, attempts=mail.attempts + 1, last_error=None))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self._event(mail.letter_id, now, "gateway", f"{mail.kind}-sent", None,
                                                         {"to": mail.recipient, "outbox": mail_id,
                                                          "relay": response[:200]})])

    def outbox_retry_later(self, mail_id: int, error: str, at: datetime) -> int:
        now = _utcnow()
        with self.writer.begin() as conn:
            attempts = conn.execute(select(OutboxMail.attempts).where(OutboxMail.id == mail_id)).scalar_one() + 1
            conn.execute(OutboxMail.__table__.update().where(OutboxMail.id == mail_id).values(
                attempts=attempts, next_attempt_at=at, updated_at=now, last_error=error[:1000]))
        return attempts

    def outbox_dead(self, mail_id: int, error: str) -> None:
        now = _utcnow()
        with self.writer.begin() as conn:
            mail = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.recipient,
                                       OutboxMail.attempts).where(OutboxMail.id == mail_id)).one()
            conn.execute(OutboxMail.__table__.update().where(OutboxMail.id == mail_id).values(
                status="dead", updated_at=now, attempts=mail.attempts + 1, last_error=error[:1000]))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self._event(mail.letter_id, now, "gateway", f"{mail.kind}-dead-lettered",
                                                         None, {"to": mail.recipient, "outbox": mail_id,
                                                                "error": error[:500]})])

    def outbox_requeue(self, mail_id: int, actor: str) -> OutboxMail:
        now = _utcnow()
        with self.writer.begin() as conn:
            mail = conn.execute(select(OutboxMail.status, OutboxMail.letter_id).where(OutboxMail.id == mail_id)).first()
            if mail is None:
                raise LookupError(f"no outbox mail {mail_id}")
            if mail.status != "dead":
                raise ValueError(f"outbox mail {mail_id} is {mail.status}, not dead")
            # A fresh queue time: the give-up clock starts again.
            conn.execute(OutboxMail.__table__.update().where(OutboxMail.id == mail_id).values(
                status="pending", next_attempt_at=now, created_at=now, updated_at=now))
            if mail.letter_id is not None:
                conn.execute(insert(Event), [self._event(mail.letter_id, now, actor, "mail-requeued", None,
                                                         {"outbox": mail_id})])
        with self.sessions() as session:
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
        with self.sessions() as session:
            return list(session.scalars(stmt))

    def outbox_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(
                select(OutboxMail.status, func.count(OutboxMail.id)).group_by(OutboxMail.status))}

    def letters_by_id(self, ids: set[int | None]) -> list[Letter]:
        with self.sessions() as session:
            return list(session.scalars(select(Letter).where(Letter.id.in_({i for i in ids if i is not None}))))

    def letter_by_id(self, letter_id: int) -> Letter | None:
        with self.sessions() as session:
            return session.scalars(select(Letter).where(Letter.id == letter_id)
                                   .options(selectinload(Letter.attachments))).first()

    # -- reading --------------------------------------------------------
    def letter(self, number: str) -> Letter | None:
        with self.sessions() as session:
            return session.scalars(
                select(Letter).where(Letter.number == number)
                .options(selectinload(Letter.attachments), selectinload(Letter.events))).first()

    def letters(self, *, status: str | None = None, department: str | None = None,
                category: str | None = None, channel: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                limit: int | None = None, with_attachments: bool = False,
                overdue_at: datetime | None = None) -> list[Letter]:
        stmt = select(Letter).order_by(Letter.received_at, Letter.id)
        if overdue_at is not None:  # still open, and past its deadline
            stmt = stmt.where(Letter.deadline < overdue_at, Letter.status.in_(lifecycle.OPEN))
        if with_attachments:
            stmt = stmt.options(selectinload(Letter.attachments))
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
