"""Registration: a batch of new letters, their events, attachments, intake keys, OCR jobs and the
mail their routing causes, in one transaction; then the text of a fax once it is read."""
from __future__ import annotations

from collections.abc import Sequence
import logging
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Select, Table, bindparam, delete, func, insert, or_, select, true, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import selectinload

from gateway.registry import lifecycle
from gateway.registry.leases import ClaimLost
from gateway.registry.numbers import conflict
from gateway.registry.models import (Attachment, Event, IntakeKey, Letter, OcrJob, OcrReading, OutboxMail,
                                     UTCDateTime)
from gateway.registry.plan import NewLetter, Registered, Routing
from gateway.registry.search import SearchRecords, index_terms, letter_terms, registered_terms
from gateway.registry.store import lease_clock, utcnow

log = logging.getLogger("gateway.registry")


def routed_columns(routing: Routing) -> dict[str, Any]:
    return {"status": routing.status, "department": routing.department, "category": routing.category,
            "urgency": routing.urgency, "confidentiality": routing.confidentiality, "deadline": routing.deadline,
            "owner": routing.owner, "tags": routing.tags, "classification": routing.trace}


def merged(flags: list[str], more: list[str]) -> list[str]:
    return [*flags, *(f for f in more if f not in flags)]


# The statements of a registration batch, built once. Building a statement and working out its
# cache key costs several times what SQLite takes to run it (the number counter: 0.2 ms against
# 0.03 ms built beforehand), and a batch runs about a dozen: for a batch of one letter, building
# them was two fifths of its registration's CPU.
_LETTERS, _KEYS, _OUTBOX = (cast(Table, model.__table__) for model in (Letter, IntakeKey, OutboxMail))
_SEEN_KEYS = (select(_KEYS.c.key, _LETTERS.c.id, _LETTERS.c.number, _LETTERS.c.status, _LETTERS.c.envelope)
              .join(_LETTERS, _KEYS.c.letter_id == _LETTERS.c.id)
              .where(_KEYS.c.key.in_(bindparam("keys", expanding=True))))
_SEEN_BYTES = (select(_LETTERS.c.raw_sha256, _LETTERS.c.id, _LETTERS.c.number, _LETTERS.c.status,
                      _LETTERS.c.envelope)
               .where(_LETTERS.c.raw_sha256.in_(bindparam("shas", expanding=True))))
# Inserted in one executemany of a one-row statement, then their ids found by number (unique).
# RETURNING in the order given makes SQLAlchemy run one statement per row on SQLite; RETURNING in
# any order, one statement of many rows per batch size, each of which SQLite's statement cache
# keeps with the texts last bound to it (a batch of 100 KiB letters: megabytes per size).
_NEW_LETTERS = insert(_LETTERS)
_NUMBERED = select(_LETTERS.c.number, _LETTERS.c.id).where(_LETTERS.c.number.in_(bindparam("numbers", expanding=True)))
_NEW_ROWS = {model: insert(cast(Table, model.__table__))
             for model in (Attachment, Event, IntakeKey, OcrJob, OutboxMail)}
_RECEIPTS_TO = (select(_OUTBOX.c.recipient, func.count(_OUTBOX.c.id))
                .where(_OUTBOX.c.kind == "receipt", _OUTBOX.c.recipient.in_(bindparam("senders", expanding=True)),
                       _OUTBOX.c.created_at > bindparam("since", type_=UTCDateTime()))
                .group_by(_OUTBOX.c.recipient))
_RECEIPTS_SINCE = (select(_OUTBOX.c.recipient, func.count(_OUTBOX.c.id))
                   .where(_OUTBOX.c.kind == "receipt", _OUTBOX.c.created_at > bindparam("since", type_=UTCDateTime()))
                   .group_by(_OUTBOX.c.recipient))

_SENT = "sent:"


def sent_key(sha256: str) -> str:
    """The intake key of a message as its SMTP client sent it (the SHA-256 of the bytes after our own
    Received: header): a client retrying after a crash sends these bytes again in another session."""
    return f"{_SENT}{sha256}"


def _content(new: NewLetter) -> str:
    """What makes two arrivals the same message: the bytes as sent, else the raw bytes."""
    return next((k for k in new.intake_keys if k.startswith(_SENT)), new.raw_sha256)


def _arrival_envelope(first: dict[str, Any] | None, again: dict[str, Any]) -> dict[str, Any]:
    """For the event of a message arriving again: the envelope it came with, and whether that is
    the first arrival's (a retry) or another sender's or recipients' (the same bytes sent twice)."""
    if not again.get("rcpt_to"):
        return {}  # no envelope: a file, an IMAP copy

    def key(envelope: dict[str, Any]) -> tuple[str, list[str]]:
        return (str(envelope.get("mail_from") or "").lower(),
                sorted({str(r).lower() for r in envelope.get("rcpt_to") or []}))
    return {"envelope": {"mail_from": again.get("mail_from") or "", "rcpt_to": list(again["rcpt_to"]),
                         "client": again.get("client")},
            "retry": key(first or {}) == key(again)}


# When each receipt cap last tripped in this process (a domain, or "*" for all), so that a storm
# alerts once an hour rather than once per suppressed receipt.
_TRIPPED: dict[str, datetime] = {}


@dataclass
class ReceiptCounts:
    """Receipts already queued, as the caps count them; counted up as a batch queues more."""

    per_sender: dict[str, int] = field(default_factory=dict)  # last 24 hours
    per_domain: dict[str, int] = field(default_factory=dict)  # last hour
    last_hour: int = 0

    def capped(self, recipient: str, routing: Routing, now: datetime) -> str | None:
        """Why no receipt may go to `recipient` now, or None."""
        sent = self.per_sender.get(recipient, 0)
        if sent >= routing.receipt_cap:
            return f"{sent} receipt(s) to this sender in 24 hours (cap {routing.receipt_cap})"
        domain = recipient.rpartition("@")[2].lower()
        sent = self.per_domain.get(domain, 0)
        if sent >= routing.receipt_domain_cap:
            return self._tripped(domain, f"{sent} receipt(s) to {domain} in the last hour "
                                         f"(cap {routing.receipt_domain_cap}, [receipts] per_domain_per_hour)", now)
        if self.last_hour >= routing.receipt_hourly_cap:
            return self._tripped("*", f"{self.last_hour} receipt(s) in the last hour "
                                      f"(cap {routing.receipt_hourly_cap}, [receipts] per_hour)", now)
        return None

    def count(self, recipient: str) -> None:
        self.per_sender[recipient] = self.per_sender.get(recipient, 0) + 1
        domain = recipient.rpartition("@")[2].lower()
        self.per_domain[domain] = self.per_domain.get(domain, 0) + 1
        self.last_hour += 1

    @staticmethod
    def _tripped(key: str, reason: str, now: datetime) -> str:
        last = _TRIPPED.get(key)
        if last is None or now - last > timedelta(hours=1):
            _TRIPPED[key] = now
            log.error("ALERT receipts suppressed: %s; an auto-responder answering every receipt from a new "
                      "address looks like this. Letters are still registered.", reason)
        return reason


class Registration(SearchRecords):
    # -- registration ---------------------------------------------------
    def register(self, letters: Sequence[NewLetter]) -> list[Registered]:
        """Register a batch in one transaction; retried when a concurrent writer collides."""
        # The search terms are cut before the write lock is taken; only the number is added inside.
        terms = [letter_terms(number="", sender_name=new.sender_name, sender_address=new.sender_address,
                              fax_number=new.fax.get("number"), fax_sender=new.fax.get("sender_name"),
                              subject=new.subject, body_text=new.body_text,
                              attachment_names=[a.original_filename or a.filename for a in new.attachments],
                              sender_details=(new.sender_organisation, new.sender_phone, new.sender_postal_address,
                                              new.sender_reference))
                 for new in letters]
        for attempt in range(5):
            try:
                with self.write() as conn:
                    return self._register_batch(conn, list(letters), terms)
            except IntegrityError:
                # Another process registered the same bytes or took the same
                # new series at the same moment; a fresh look will see it.
                if attempt == 4:
                    raise
            except DBAPIError as exc:
                # Another node's batch and this one met (a deadlock or serialisation failure):
                # run again after a moment, never reported as the registry being down.
                if not conflict(exc) or attempt == 4:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _register_batch(self, conn: Connection, letters: list[NewLetter],
                        terms: list[tuple[str, str]]) -> list[Registered]:
        # Core statements, a handful per batch rather than several per letter:
        # registration is the hot path of every intake.
        now = utcnow()
        all_keys = [k for new in letters for k in new.intake_keys]
        known = {row.key: row for row in conn.execute(_SEEN_KEYS, {"keys": all_keys})}
        by_sha = {row.raw_sha256: row for row in conn.execute(
            _SEEN_BYTES, {"shas": list({new.raw_sha256 for new in letters})})}

        results: list[Registered | None] = [None] * len(letters)
        fresh: list[int] = []  # indexes of letters to insert
        first_in_batch: dict[str, int] = {}
        for i, new in enumerate(letters):
            hit = next((known[k] for k in new.intake_keys if k in known and not k.startswith(_SENT)), None)
            content = _content(new)
            if hit is not None:
                # Registered before; the spool copy was not released (crash).
                results[i] = Registered(hit.number, hit.id, "known", hit.status)
            elif new.raw_sha256 not in by_sha and content not in known and content not in first_in_batch:
                first_in_batch[content] = i
                fresh.append(i)

        # Numbers: one counter update per series for the whole batch.
        locals_ = {i: letters[i].received_at.astimezone(self.tz) for i in fresh}
        per_series: dict[str, list[int]] = {}
        for i in fresh:
            per_series.setdefault(self.template.series(locals_[i], letters[i].channel), []).append(i)
        seqs: dict[int, tuple[str, int]] = {}
        # Counters locked in one order (by series name) in every batch on every node: two batches
        # spanning the same series wait for each other, and can never hold one each and deadlock.
        for series, members in sorted(per_series.items()):
            last = self.advance(conn, series, len(members))
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
                **(routed_columns(routing) if routing is not None else
                   {"category": None, "urgency": "regular", "confidentiality": "normal", "deadline": None,
                    "owner": None, "tags": [], "classification": None}),
                "raw_sha256": new.raw_sha256, "raw_size": new.raw_size, "raw_path": new.raw_path,
                "envelope": new.envelope, "defects": new.defects, "trust": new.trust,
                "flags": merged(new.flags, routing.flags) if routing is not None else new.flags,
                "fax_number": fax.get("number"), "fax_caller_id": fax.get("caller_id"),
                "fax_sender_name": fax.get("sender_name"), "fax_pages": fax.get("pages"),
                "fax_sent_at": fax.get("sent_at"), "created_at": now, "updated_at": now,
                "sender_organisation": new.sender_organisation, "sender_postal_address": new.sender_postal_address,
                "sender_phone": new.sender_phone, "sender_reference": new.sender_reference,
                "backlog": "backlog" in new.flags,
            })
        ids: list[int] = []
        if rows:
            conn.execute(_NEW_LETTERS, rows)
            by_number = {number: letter_id for number, letter_id
                         in conn.execute(_NUMBERED, {"numbers": [row["number"] for row in rows]})}
            ids = [by_number[row["number"]] for row in rows]

        events: list[dict[str, Any]] = []
        attachments: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        receipt_recipients = [routing.receipt.recipient for routing in (letters[i].routing for i in fresh)
                              if routing and routing.receipt]
        receipts_sent = self.receipts_today(conn, receipt_recipients, now)
        self.write_terms(conn, [(letter_id, f"{index_terms(row['number'])} {terms[i][0]}", terms[i][1])
                                for i, letter_id, row in zip(fresh, ids, rows, strict=True)])
        for i, letter_id, row in zip(fresh, ids, rows, strict=True):
            new = letters[i]
            results[i] = Registered(row["number"], letter_id, "registered", row["status"])
            attachments += [{"letter_id": letter_id, "position": n, **vars(a)}
                            for n, a in enumerate(new.attachments)]
            events.append(self.event_row(letter_id, new.received_at, new.intake, "received", None,
                                      {"keys": new.intake_keys, "size": new.raw_size}))
            events.append(self.event_row(letter_id, now, new.actor, "registered", new.department,
                                      {"number": row["number"], "defects": len(new.defects),
                                       "attachments": len(new.attachments)}))
            if new.routing is not None:
                more_events, mail = self.routed_rows(letter_id, new.routing, now, receipts_sent)
                events += more_events
                outbox += mail
        for i, new in enumerate(letters):
            if results[i] is not None:
                continue
            # The same message as an earlier letter, or as one earlier in this batch: the same
            # bytes, or the same bytes as sent by an SMTP client (its retry, or a second envelope).
            content = _content(new)
            same = by_sha.get(new.raw_sha256) or known.get(content)
            if same is not None:
                original = Registered(same.number, same.id, "duplicate", same.status)
                first_envelope = same.envelope
            else:
                first = results[first_in_batch[content]]
                assert first is not None  # the first in the batch was registered above
                original = replace(first, outcome="duplicate")
                first_envelope = letters[first_in_batch[content]].envelope
            results[i] = original
            events.append(self.event_row(original.letter_id, now, new.actor, "duplicate-arrival", None,
                                      {"intake": new.intake, "keys": new.intake_keys,
                                       "received_at": new.received_at.isoformat(),
                                       **_arrival_envelope(first_envelope, new.envelope)}))

        registered = [r for r in results if r is not None]
        assert len(registered) == len(letters)  # every letter has its outcome now

        # Every key of every item, so that the next arrival of any of them is recognised.
        key_rows = {k: {"key": k, "letter_id": r.letter_id, "at": now}
                    for new, r in zip(letters, registered, strict=True) for k in new.intake_keys if k not in known}
        ocr_jobs = [{"letter_id": letter_id, "created_at": now, "attempts": 0}
                    for i, letter_id in zip(fresh, ids, strict=True) if letters[i].needs_ocr]
        for table, values in ((Attachment, attachments), (Event, events), (IntakeKey, list(key_rows.values())),
                              (OcrJob, ocr_jobs), (OutboxMail, outbox)):
            if values:
                conn.execute(_NEW_ROWS[table], values)
        return registered

    def receipts_today(self, conn: Connection, senders: list[str], now: datetime) -> ReceiptCounts:
        """Receipts queued per sender in the last 24 hours, and per recipient domain and altogether
        in the last hour: what the caps count."""
        counts = ReceiptCounts()
        if not senders:
            return counts
        rows = conn.execute(_RECEIPTS_TO, {"senders": list(set(senders)), "since": now - timedelta(days=1)})
        counts.per_sender.update({row[0]: int(row[1]) for row in rows})
        # At most the hourly cap's worth of rows: the cap is what keeps this small.
        for recipient, count in conn.execute(_RECEIPTS_SINCE, {"since": now - timedelta(hours=1)}):
            domain = recipient.rpartition("@")[2].lower()
            counts.per_domain[domain] = counts.per_domain.get(domain, 0) + int(count)
            counts.last_hour += int(count)
        return counts

    def routed_rows(self, letter_id: int, routing: Routing, now: datetime, receipts_sent: ReceiptCounts,
                actor: str = "gateway") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The events and outbox rows of a routing decision (the caller inserts them)."""
        trace = routing.trace
        events = [
            self.event_row(letter_id, now, actor, "classified", None, {
                "rules": trace.get("rules"), "matched": [m["rule"] for m in trace.get("matched", [])],
                "category": routing.category, "urgency": routing.urgency,
                "confidentiality": routing.confidentiality, "tags": routing.tags}),
            self.event_row(letter_id, now, actor, "needs-triage" if routing.status == "needs-triage" else "routed",
                        routing.department, {"owner": routing.owner,
                                             "notify": [m.recipient for m in routing.mail],
                                             "deadline": routing.deadline.isoformat() if routing.deadline else None,
                                             **({"not_notified": routing.no_notification}
                                                if routing.no_notification else {}),
                                             **({"candidates": trace["triage"]["candidates"],
                                                 "reason": trace["triage"]["reason"]}
                                                if trace.get("triage") else {})}),
        ]
        mail = [self.mail_row(letter_id, m, now) for m in routing.mail]
        receipt = routing.receipt
        if receipt is not None:
            capped = receipts_sent.capped(receipt.recipient, routing, now)
            if capped is not None:
                events.append(self.event_row(letter_id, now, actor, "receipt-suppressed", None, {
                    "to": receipt.recipient, "reason": capped}))
            else:
                receipts_sent.count(receipt.recipient)
                mail.append(self.mail_row(letter_id, receipt, now))
                events.append(self.event_row(letter_id, now, actor, "receipt-queued", None,
                                          {"to": receipt.recipient, **receipt.details}))
        elif routing.no_receipt:
            events.append(self.event_row(letter_id, now, actor, "receipt-suppressed", None,
                                      {"reason": routing.no_receipt}))
        return events, mail

    # -- reading a fax's text afterwards ---------------------------------
    def ocr_jobs(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, str]]:
        """Claim letters waiting for their text: (letter id, raw path). Claimed like outbox mail
        (registry/leases.py): SKIP LOCKED on PostgreSQL, a lease the node's heartbeat renews. A job
        claimed `max_claims` times and never finished (the reader took its node down each time) is
        given up here, as a failed read is, instead of being offered again."""
        if self.displaced:  # this node's run was taken for dead: it claims nothing more
            return []
        def claimable(at: datetime) -> Select[int, int, int]:
            free = or_(OcrJob.claimed_by.is_(None), OcrJob.lease_until < at, OcrJob.claimed_by == self.claimant)
            return (select(OcrJob.letter_id, OcrJob.claims, OcrJob.attempts).where(free)
                    .where(OcrJob.letter_id.not_in(exclude) if exclude else true())
                    .order_by(OcrJob.created_at, OcrJob.letter_id).limit(limit))
        with self.read() as conn:
            if conn.execute(claimable(lease_clock(conn))).first() is None:
                return []  # the common case, answered without a write transaction
        with self.write() as conn:
            now = lease_clock(conn)
            stmt = claimable(now)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = conn.execute(stmt).all()
            # Claims minus counted attempts: the times a reading never came back.
            worn = [r.letter_id for r in rows if r.claims - r.attempts >= self.max_claims]
            ids = [r.letter_id for r in rows if r.claims - r.attempts < self.max_claims]
            for letter_id in worn:
                self._give_up_ocr(conn, letter_id, utcnow(), {"claims": self.max_claims,
                                                              "error": "its reading never finished: the node "
                                                                       "reading it stopped each time"})
            if ids:
                conn.execute(update(OcrJob).where(OcrJob.letter_id.in_(ids)).values(
                    claimed_by=self.claimant, lease_until=now + timedelta(seconds=self.lease_seconds),
                    claims=OcrJob.claims + 1))
            paths = {letter_id: raw_path for letter_id, raw_path in
                     conn.execute(select(Letter.id, Letter.raw_path).where(Letter.id.in_(ids)))}
        return [(letter_id, paths[letter_id]) for letter_id in ids]

    def _give_up_ocr(self, conn: Connection, letter_id: int, now: datetime, details: dict[str, Any]) -> None:
        row = conn.execute(select(Letter.flags).where(Letter.id == letter_id).with_for_update()).one()
        flags = merged([f for f in row.flags if f != "ocr-pending"], ["ocr-failed"])
        conn.execute(update(Letter).where(Letter.id == letter_id).values(flags=flags, updated_at=now))
        conn.execute(insert(Event), [self.event_row(letter_id, now, "gateway", "text-not-read", None, details)])
        conn.execute(delete(OcrJob).where(OcrJob.letter_id == letter_id))

    def ocr_still_mine(self, conn: Connection, letter_id: int) -> bool:
        """Inside the transaction storing a result: the job is still there, and ours or free (an
        expired claim nobody took since). Locks the job row until the transaction ends."""
        holder = conn.execute(select(OcrJob.claimed_by, OcrJob.lease_until).where(OcrJob.letter_id == letter_id)
                              .with_for_update()).first()
        return holder is not None and (holder.claimed_by in (None, self.claimant)
                                       or holder.lease_until is None or holder.lease_until < lease_clock(conn))

    def ocr_done(self, letter_id: int, text: str, *, summary: str, defects: list[str], pages: int,
                 seconds: float, routing: Routing | None, reading: dict[str, Any] | None = None,
                 reference: str = "") -> tuple[str, str]:
        """Store a fax's text: it becomes the letter's text and summary; the routing decided from it
        (outside this transaction) is applied only if the letter is still waiting for it — a person
        who routed it meanwhile is not overruled. Returns the number and the status.

        `reading` (reader, version, confidences, low_confidence, header, and the fax number and send
        time the header line gave) is recorded; pages of low confidence flag the letter `ocr-check`,
        and the header line's number and time fill the letter's only where nothing else gave them;
        so does `reference`, the sender's reference found in the text."""
        now = utcnow()
        read_number = str(reading["number"])[:64] if reading and reading.get("number") else None
        # What the letter is found by from now on, cut before the write lock is taken: with the
        # number the header line gives a fax that had none (a drop-folder fax's is an entry term).
        # Only registration and this job, under its claim, set a fax number: it cannot change meanwhile.
        with self.session() as session:
            before = session.scalars(select(Letter).where(Letter.id == letter_id)
                                     .options(selectinload(Letter.attachments))).one()
            had_number = before.fax_number
            fax_number = had_number if had_number is not None else read_number
            terms = registered_terms(before, f"{before.body_text}\n\n{text}", fax_number=fax_number)
        with self.write() as conn:
            if not self.ocr_still_mine(conn, letter_id):
                raise ClaimLost(f"the text of letter {letter_id} is read by another node (this node's claim expired)")
            # Locked: a person reassigning the letter meanwhile waits, and is then not overruled.
            row = conn.execute(select(Letter.number, Letter.body_text, Letter.defects, Letter.flags, Letter.status,
                                      Letter.fax_sent_at, Letter.sender_reference)
                               .where(Letter.id == letter_id).with_for_update()).one()
            body = f"{row.body_text.rstrip()}\n\n{text}".strip() if row.body_text.strip() else text
            self.write_terms(conn, [(letter_id, *terms)])
            check = bool(reading and reading.get("low_confidence"))
            flags = [f for f in row.flags if f not in ("ocr-pending", "ocr-failed", "ocr-check")] + \
                ([] if text.strip() else ["no-text"]) + (["ocr-check"] if check else [])
            values: dict[str, Any] = {
                "body_text": body.replace("\x00", "\ufffd"), "defects": [*row.defects, *defects],
                "flags": flags, "updated_at": now}
            if text.strip():
                values["summary"] = summary
            if reference and not row.sender_reference:
                values["sender_reference"] = reference[:100]
            details: dict[str, Any] = {"pages": pages, "characters": len(text), "defects": defects,
                                       "seconds": round(seconds, 2)}
            if reading:
                details.update(reader=reading["reader"], version=reading["version"],
                               confidences=reading["confidences"], low_confidence=reading["low_confidence"])
                if fax_number != had_number:
                    values["fax_number"] = fax_number
                if row.fax_sent_at is None and reading.get("sent_at") is not None:
                    values["fax_sent_at"] = reading["sent_at"]
                conn.execute(insert(OcrReading).values(
                    letter_id=letter_id, reader=reading["reader"], version=reading["version"], pages=pages,
                    confidences=reading["confidences"], low_confidence=reading["low_confidence"],
                    header=reading.get("header"), read_at=now))
            events = [self.event_row(letter_id, now, "gateway", "text-read", None, details)]
            outbox: list[dict[str, Any]] = []
            status = row.status
            if routing is not None and row.status == "registered":
                values.update(routed_columns(routing), flags=merged(flags, routing.flags))
                status = routing.status
                receipts = self.receipts_today(conn, [routing.receipt.recipient] if routing.receipt else [], now)
                more, outbox = self.routed_rows(letter_id, routing, now, receipts)
                events += more
            conn.execute(update(Letter).where(Letter.id == letter_id).values(**values))
            conn.execute(insert(Event), events)
            if outbox:
                conn.execute(insert(OutboxMail), outbox)
            conn.execute(delete(OcrJob).where(OcrJob.letter_id == letter_id))
        return str(row.number), status

    def set_reference(self, number: str, reference: str, *, actor: str,
                      seen: lifecycle.Seen | None = None) -> tuple[str, str]:
        """Set (or, with "", clear) a letter's sender's reference, with a `reference-set` event, and
        what search finds it by; (before, after). Raises LookupError, lifecycle.LetterMoved (not
        with whom `seen` says) and lifecycle.Unchanged (it is that already)."""
        now = utcnow()
        with self.session() as session:
            letter = session.scalars(select(Letter).where(Letter.number == number)
                                     .options(selectinload(Letter.attachments))).first()
            if letter is None:
                raise LookupError(f"no letter {number}")
            session.expunge(letter)
        letter.sender_reference = reference
        terms = registered_terms(letter)
        with self.write() as conn:
            row = conn.execute(select(Letter.id, Letter.sender_reference, Letter.department, Letter.owner,
                                      Letter.body_text).where(Letter.number == number).with_for_update()).one()
            lifecycle.unmoved(number, row.department, row.owner, seen)
            if row.sender_reference == reference:
                raise lifecycle.Unchanged(f"{number}'s sender's reference is {reference or 'none'} already",
                                          "same-reference", number=number)
            if row.body_text != letter.body_text:  # its text was read meanwhile: found by that too
                terms = registered_terms(letter, row.body_text)
            conn.execute(update(Letter).where(Letter.id == row.id).values(sender_reference=reference, updated_at=now))
            self.write_terms(conn, [(row.id, *terms)])
            conn.execute(insert(Event), [self.event_row(row.id, now, actor, "reference-set", None,
                                                        {"reference": reference, "before": row.sender_reference})])
        return row.sender_reference, reference

    def ocr_release(self, letter_ids: list[int]) -> None:
        """Give claimed jobs back unread and uncounted, for this node or another to read anew."""
        if not letter_ids:
            return
        with self.write() as conn:
            conn.execute(update(OcrJob).where(OcrJob.letter_id.in_(letter_ids), OcrJob.claimed_by == self.claimant)
                         .values(claimed_by=None, lease_until=None, claims=OcrJob.claims - 1))

    def ocr_failed(self, letter_id: int, error: str, *, give_up_after: int) -> bool:
        """Count a failed attempt to read or store a fax's text. After `give_up_after` attempts the
        job is given up: the letter is flagged `ocr-failed`, an event says why, and the job goes.
        Returns True when given up. The letter stays registered (and routable by a person)."""
        now = utcnow()
        with self.write() as conn:
            if not self.ocr_still_mine(conn, letter_id):
                return True  # done meanwhile, or another node's now: not ours to count
            attempts = conn.execute(select(OcrJob.attempts).where(OcrJob.letter_id == letter_id)).scalar_one() + 1
            if attempts < give_up_after:
                # Free again at once: the next pass (here or on another node) reads it anew.
                conn.execute(update(OcrJob).where(OcrJob.letter_id == letter_id)
                             .values(attempts=attempts, claimed_by=None, lease_until=None))
                return False
            self._give_up_ocr(conn, letter_id, now, {"attempts": attempts, "error": error[:1000]})
            return True
