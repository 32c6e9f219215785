"""The outward loop on the register: requests to a sender for missing materials, their supplements,
withdrawals, and the sender's ratings of a result.

Each change is one transaction under the letter's row lock, like every other step
(gateway.registry.decisions): the state, the request or rating row, the event and the mail it
causes. Whatever needs the configuration (the working-day calendar, who to tell, the mail) is
decided by the caller (gateway.services.incomplete, gateway.services.satisfaction) and handed in.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, func, insert, select, update

from gateway.registry import lifecycle
from gateway.registry.archive import archived_when_ended
from gateway.registry.models import Attachment, AuditRow, Event, IntakeKey, Letter, OutboxMail, Rating, SenderRequest
from gateway.registry.plan import NewAttachment, NewMail, Registered
from gateway.registry.replies import refuse_past_reply
from gateway.registry.store import Store, utcnow

# The deadline a letter gets again when it resumes: from the working days it had left (None: it
# had no deadline) and the moment it resumes.
Resume = Callable[[int | None, datetime], datetime | None]


class AlreadyRated(Exception):
    """This result mail was rated before: one rating per result mail."""


@dataclass(frozen=True)
class SenderThread:
    """What a sender's mail may be about: the letter it names (by our mail it replies to, or by
    the number in its subject) and the mail of ours it could answer."""

    number: str
    status: str
    sender_address: str
    replied_to: str | None  # the kind of our mail it replies to: request | feedback | None
    request_id: str | None  # the Message-ID of the letter's waiting request, if one waits
    feedback_id: str | None  # the result mail it rates: the one it replies to, else the latest
    feedback_to: str | None  # where that result mail went


@dataclass
class FollowUp:
    """A sender's mail about their letter: a supplement (materials asked for) or a rating."""

    number: str
    kind: str  # supplement | rating
    sender: str
    text: str
    verified: bool  # in the thread of our request / result mail, or from the letter's sender, proven
    matched_by: str  # reply | number
    subject: str = ""
    message_id: str | None = None
    score: int | None = None  # a rating: 1..5
    feedback_id: str | None = None  # a rating: the result mail it rates
    attachments: list[NewAttachment] = field(default_factory=list)


@dataclass(frozen=True)
class Waiting:
    """A request whose date has passed without a supplement."""

    request_id: int
    letter_id: int
    number: str
    department: str | None
    owner: str | None
    received_at: datetime
    due_at: datetime
    missing: list[str]


def _locked(conn: Connection, number: str) -> Any:
    row = conn.execute(select(Letter.id, Letter.number, Letter.status, Letter.department, Letter.owner, Letter.category,
                              Letter.deadline, Letter.body_text).where(Letter.number == number)
                       .with_for_update()).first()
    if row is None:
        raise LookupError(f"no letter {number}")
    return row


def _waiting(conn: Connection, letter_id: int) -> Any:
    """The letter's waiting request (its id, remaining_days, paused_deadline and requested_at),
    locked; None when none waits."""
    return conn.execute(select(SenderRequest.id, SenderRequest.remaining_days, SenderRequest.paused_deadline,
                               SenderRequest.requested_at).where(
        SenderRequest.letter_id == letter_id, SenderRequest.status == "waiting")
        .order_by(SenderRequest.id.desc()).with_for_update()).first()


def _resumed(waiting: Any, resume: Resume, now: datetime) -> datetime | None:
    """The deadline of a letter that stops waiting for its sender: the working days it had left
    counted again from now; a letter already past its deadline when its sender was asked had none
    left and keeps that deadline (the wait does not make a late letter on time)."""
    if waiting is not None and waiting.paused_deadline is not None and waiting.paused_deadline < waiting.requested_at:
        return cast(datetime, waiting.paused_deadline)
    return resume(waiting.remaining_days if waiting else None, now)


class OutwardRecords:
    """The register's side of the outward loop, over one store."""

    def __init__(self, store: Store):
        self.store = store

    # -- incomplete submissions -------------------------------------------------
    def mark_incomplete(self, number: str, *, actor: str, missing: list[str], due_at: datetime,
                        remaining: Callable[[datetime | None, datetime], int | None], recipient: str,
                        request: NewMail | None, seen: lifecycle.Seen | None = None) -> SenderRequest:
        """The letter waits for its sender: state awaiting-sender, deadline paused (its remaining
        working days kept), the request recorded and its mail queued. Raises LookupError and
        TransitionRefused (LetterMoved when it is not with whom `seen` says)."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            row = _locked(conn, number)
            lifecycle.unmoved(number, row.department, row.owner, seen)
            lifecycle.check(number, row.status, "incomplete")
            refuse_past_reply(conn, row.id, number, "incomplete")
            days = remaining(row.deadline, now)
            conn.execute(update(Letter).where(Letter.id == row.id).values(
                status="awaiting-sender", deadline=None, updated_at=now))
            values = {"letter_id": row.id, "missing": missing, "due_at": due_at, "requested_at": now,
                      "requested_by": actor, "recipient": recipient,
                      "message_id": request.message_id if request else None, "paused_deadline": row.deadline,
                      "remaining_days": days, "status": "waiting", "settled_at": None, "reminded_at": None}
            request_id = conn.execute(insert(SenderRequest).values(values).returning(SenderRequest.id)).scalar_one()
            details: dict[str, Any] = {
                "from": row.status, "to": "awaiting-sender", "missing": missing, "by": due_at.isoformat(),
                "request": request_id, "paused_deadline": row.deadline.isoformat() if row.deadline else None,
                "remaining_days": days}
            if request is not None:
                details.update(request_to=request.recipient, message_id=request.message_id)
                conn.execute(insert(OutboxMail), [s.mail_row(row.id, request, now)])
            else:
                details["contact"] = "other-means"  # no address to write to: the sender is told otherwise
            conn.execute(insert(Event), [s.event_row(row.id, now, actor, "incomplete", None, details)])
        return SenderRequest(id=request_id, **values)

    def withdraw(self, number: str, *, actor: str, reason: str,
                 seen: lifecycle.Seen | None = None) -> tuple[str, str]:
        """The sender never sent what was missing: the letter ends as withdrawn. Raises LookupError
        and TransitionRefused (LetterMoved when it is not with whom `seen` says)."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            row = _locked(conn, number)
            lifecycle.unmoved(number, row.department, row.owner, seen)
            lifecycle.check(number, row.status, "withdraw")
            conn.execute(update(Letter).where(Letter.id == row.id).values(status="withdrawn", updated_at=now))
            waiting = _waiting(conn, row.id)
            if waiting is not None:
                conn.execute(update(SenderRequest).where(SenderRequest.id == waiting.id).values(
                    status="withdrawn", settled_at=now))
            conn.execute(insert(Event), [s.event_row(row.id, now, actor, "withdrawn", None, {
                "from": row.status, "to": "withdrawn", "request": waiting.id if waiting else None,
                **({"text": reason} if reason else {})})])
            after = "archived" if archived_when_ended(conn, row.id, now) else "withdrawn"
        return row.status, after

    def proceed(self, number: str, *, actor: str, reason: str, resume: Resume,
                seen: lifecycle.Seen | None = None) -> tuple[str, str, datetime | None]:
        """The department goes on without the materials its sender did not send: the letter is in
        progress again with its deadline counted on from the working days it had left (as a
        supplement would), and the waiting request is settled as waived. Returns (state before,
        state after, the deadline). Raises LookupError and TransitionRefused (LetterMoved when it
        is not with whom `seen` says)."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            row = _locked(conn, number)
            lifecycle.unmoved(number, row.department, row.owner, seen)
            move = lifecycle.check(number, row.status, "proceed")
            waiting = _waiting(conn, row.id)
            deadline = _resumed(waiting, resume, now)
            conn.execute(update(Letter).where(Letter.id == row.id).values(
                status=move.to, deadline=deadline, updated_at=now))
            if waiting is not None:
                conn.execute(update(SenderRequest).where(SenderRequest.id == waiting.id).values(
                    status="waived", settled_at=now))
            conn.execute(insert(Event), [s.event_row(row.id, now, actor, move.name, None, {
                "from": row.status, "to": move.to, "request": waiting.id if waiting else None,
                "deadline": deadline.isoformat() if deadline else None, **({"text": reason} if reason else {})})])
        return row.status, str(move.to), deadline

    def waiting_request(self, number: str) -> SenderRequest | None:
        with self.store.session() as session:
            letter_id = session.execute(select(Letter.id).where(Letter.number == number)).scalar()
            if letter_id is None:
                return None
            row = session.execute(select(SenderRequest).where(
                SenderRequest.letter_id == letter_id).order_by(SenderRequest.id.desc())).first()
            return row[0] if row else None

    def expired(self, now: datetime) -> list[Waiting]:
        """Waiting requests past their date whose department has not been reminded yet."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(SenderRequest.id, Letter.id, Letter.number, Letter.department, Letter.owner, Letter.received_at,
                       SenderRequest.due_at, SenderRequest.missing)
                .join(Letter, Letter.id == SenderRequest.letter_id)
                .where(SenderRequest.status == "waiting", SenderRequest.due_at < now,
                       SenderRequest.reminded_at.is_(None), Letter.status == "awaiting-sender")
                .order_by(SenderRequest.id)).all()
        return [Waiting(*row) for row in rows]

    def remind_expired(self, request_id: int, mail: list[NewMail], at: datetime) -> bool:
        """Queue the one reminder of an expired request; False when it was sent already (two passes)."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            request = conn.execute(select(SenderRequest.letter_id, SenderRequest.reminded_at, SenderRequest.due_at)
                                   .where(SenderRequest.id == request_id).with_for_update()).first()
            if request is None or request.reminded_at is not None:
                return False
            conn.execute(update(SenderRequest).where(SenderRequest.id == request_id).values(reminded_at=at))
            conn.execute(insert(Event), [s.event_row(request.letter_id, at, "gateway", "reminded", None, {
                "kind": "awaiting-sender", "request": request_id, "by": request.due_at.isoformat(),
                "to": [m.recipient for m in mail]})])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(request.letter_id, m, now) for m in mail])
        return True

    def supplement(self, follow: FollowUp, *, keys: list[str], raw_sha256: str, raw_path: str,
                   received_at: datetime, resume: Resume, notify: list[NewMail]) -> Registered:
        """A sender's follow-up to a request, recorded on the letter (never a letter of its own).

        Verified (in our request's thread, or from the letter's sender, proven): its text and attachments
        become the letter's and a letter awaiting its sender resumes (in progress, the deadline
        moved on by the working days it had left), its department told. Otherwise, and for an
        archived letter, it is only recorded."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            known = self._known(conn, keys)
            if known is not None:
                return known
            row = _locked(conn, follow.number)
            details: dict[str, Any] = {
                "from": follow.sender, "subject": follow.subject, "text": follow.text[:4000],
                "matched_by": follow.matched_by, "message_id": follow.message_id, "raw_sha256": raw_sha256,
                "raw_path": raw_path, "received_at": received_at.isoformat(),
                "attachments": [a.filename for a in follow.attachments]}
            if not follow.verified or row.status == "archived":
                # An archived letter's content is what its package holds: a late supplement is
                # recorded beside it (its bytes kept), never made part of it.
                details["reason"] = (
                    "neither a reply to our request nor from the letter's sender, proven: recorded only"
                    if not follow.verified else "the letter is archived: recorded only, its content stays as archived")
                conn.execute(insert(Event), [s.event_row(row.id, now, follow.sender, "follow-up", None, details)])
            else:
                waiting = _waiting(conn, row.id)
                values: dict[str, Any] = {"updated_at": now, "body_text": _appended(row.body_text, follow, received_at)}
                resumed = row.status == "awaiting-sender"
                if resumed:
                    lifecycle.check(row.number, row.status, "supplement")
                    deadline = _resumed(waiting, resume, now)
                    values.update(status="in-progress", deadline=deadline)
                    details.update({"from_state": row.status, "to": "in-progress",
                                    "deadline": deadline.isoformat() if deadline else None})
                    if waiting is not None:
                        conn.execute(update(SenderRequest).where(SenderRequest.id == waiting.id).values(
                            status="supplemented", settled_at=now))
                        details["request"] = waiting.id
                conn.execute(update(Letter).where(Letter.id == row.id).values(values))
                if follow.attachments:
                    first = (conn.execute(select(func.max(Attachment.position)).where(
                        Attachment.letter_id == row.id)).scalar() or 0) + 1
                    conn.execute(insert(Attachment), [
                        {"letter_id": row.id, "position": first + n, "filename": a.filename,
                         "original_filename": a.original_filename, "declared_type": a.declared_type,
                         "detected_type": a.detected_type, "size": a.size, "sha256": a.sha256,
                         "origin": "supplement"} for n, a in enumerate(follow.attachments)])
                details["resumed"] = resumed
                if resumed and notify:
                    conn.execute(insert(OutboxMail), [s.mail_row(row.id, m, now) for m in notify])
                    details["notify"] = [m.recipient for m in notify]
                conn.execute(insert(Event), [s.event_row(row.id, now, follow.sender, "supplemented", None, details)])
            conn.execute(insert(IntakeKey), [{"key": k, "letter_id": row.id, "at": now} for k in keys])
            status = conn.execute(select(Letter.status).where(Letter.id == row.id)).scalar_one()
            return Registered(row.number, row.id, "answer", status)

    @staticmethod
    def _known(conn: Connection, keys: list[str]) -> Registered | None:
        """The same mail again (the same bytes, or through another mailbox): recognised, not recorded twice."""
        known = conn.execute(select(IntakeKey.key, Letter.id, Letter.number, Letter.status)
                             .join(Letter, IntakeKey.letter_id == Letter.id)
                             .where(IntakeKey.key.in_(keys))).first()
        return Registered(known.number, known.id, "known", known.status) if known is not None else None

    # -- the sender's satisfaction -------------------------------------------------
    def result_mail(self, message_id: str) -> tuple[str, str, datetime] | None:
        """(letter number, recipient, queued at) of a result mail we sent, by its Message-ID."""
        wanted = f"<{message_id.strip().strip('<>')}>"
        with self.store.read() as conn:
            row = conn.execute(select(Letter.number, OutboxMail.recipient, OutboxMail.created_at)
                               .join(Letter, Letter.id == OutboxMail.letter_id)
                               .where(OutboxMail.message_id == wanted, OutboxMail.kind == "feedback")).first()
        return (row.number, row.recipient, row.created_at) if row else None

    def rated(self, message_id: str) -> Rating | None:
        wanted = f"<{message_id.strip().strip('<>')}>"
        with self.store.session() as session:
            row = session.execute(select(Rating).where(Rating.feedback_message_id == wanted)).first()
            return row[0] if row else None

    def rate(self, number: str, feedback_id: str, *, score: int, comment: str, via: str, actor: str,
             address: str, reopen_at_most: int, resume: Resume, notify: list[NewMail],
             keys: list[str] | None = None, details: dict[str, Any] | None = None) -> tuple[Rating, bool]:
        """Record a rating of a result mail (raises AlreadyRated for a second one). A low one
        reopens an answered or closed letter to its department, its head told. Returns the rating
        and whether the letter was reopened."""
        s, now = self.store, utcnow()
        wanted = f"<{feedback_id.strip().strip('<>')}>"
        with s.write() as conn:
            row = _locked(conn, number)
            if conn.execute(select(Rating.id).where(Rating.feedback_message_id == wanted)).first() is not None:
                raise AlreadyRated(f"{number}: this result was rated already")
            values = {"letter_id": row.id, "feedback_message_id": wanted, "score": score, "comment": comment,
                      "via": via, "department": row.department, "category": row.category, "address": address,
                      "at": now}
            rating_id = conn.execute(insert(Rating).values(values).returning(Rating.id)).scalar_one()
            event: dict[str, Any] = {"score": score, "comment": comment, "via": via, "feedback": wanted,
                                     **(details or {})}
            reopened = False
            if score <= reopen_at_most:
                if row.status in lifecycle.ACTIONS["reopen"].allowed_from:
                    reopened = True
                    deadline = resume(None, now)
                    conn.execute(update(Letter).where(Letter.id == row.id).values(
                        status="in-progress", deadline=deadline, updated_at=now))
                    conn.execute(insert(Event), [s.event_row(row.id, now, actor, "rated", None, event)])
                    conn.execute(insert(Event), [s.event_row(row.id, now, "gateway", "reopened", None, {
                        "from": row.status, "to": "in-progress", "score": score, "comment": comment,
                        "deadline": deadline.isoformat() if deadline else None,
                        # What it replaced: a report as of an earlier moment uses the deadline it had then.
                        "replaced_deadline": row.deadline.isoformat() if row.deadline else None,
                        "notify": [m.recipient for m in notify]})])
                    if notify:
                        conn.execute(insert(OutboxMail), [s.mail_row(row.id, m, now) for m in notify])
                else:
                    event["not_reopened"] = f"{number} is {row.status}"
            if not reopened:
                conn.execute(insert(Event), [s.event_row(row.id, now, actor, "rated", None, event)])
            if keys:
                conn.execute(insert(IntakeKey), [{"key": k, "letter_id": row.id, "at": now} for k in keys])
        return Rating(id=rating_id, **values), reopened

    def record_mail_event(self, number: str, action: str, actor: str, details: dict[str, Any],
                          keys: list[str]) -> Registered:
        """A sender's mail recorded on its letter and nothing more (a second rating, say)."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            known = self._known(conn, keys)
            if known is not None:
                return known
            row = _locked(conn, number)
            conn.execute(insert(Event), [s.event_row(row.id, now, actor, action, None, details)])
            conn.execute(insert(IntakeKey), [{"key": k, "letter_id": row.id, "at": now} for k in keys])
            return Registered(row.number, row.id, "answer", row.status)

    def known(self, keys: list[str]) -> Registered | None:
        with self.store.read() as conn:
            return self._known(conn, keys)

    def visits(self, address: str, action: str, since: datetime) -> int:
        """How often a client address used a public page since then (its rate limit)."""
        with self.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(AuditRow).where(
                AuditRow.address == address, AuditRow.action == action, AuditRow.at >= since)).scalar_one())

    # -- which letter a sender's mail is about ---------------------------------------
    def sender_thread(self, numbers: list[str], message_ids: list[str]) -> SenderThread | None:
        """The letter a sender's mail names: by our request or result mail it replies to, else
        by a number in its subject."""
        wanted = [f"<{m.strip().strip('<>')}>" for m in message_ids if m.strip()]
        with self.store.read() as conn:
            letter_id, replied_to, feedback_id = None, None, None
            if wanted:
                row = conn.execute(select(OutboxMail.letter_id, OutboxMail.kind, OutboxMail.message_id)
                                   .where(OutboxMail.message_id.in_(wanted),
                                          OutboxMail.kind.in_(("request", "feedback")))
                                   .order_by(OutboxMail.id.desc())).first()
                if row is not None and row.letter_id is not None:
                    letter_id, replied_to = row.letter_id, row.kind
                    feedback_id = row.message_id if row.kind == "feedback" else None
            if letter_id is None and numbers:
                letter_id = conn.execute(select(Letter.id).where(Letter.number.in_(numbers))).scalar()
            if letter_id is None:
                return None
            letter = conn.execute(select(Letter.number, Letter.status, Letter.sender_address)
                                  .where(Letter.id == letter_id)).one()
            feedback = conn.execute(select(OutboxMail.message_id, OutboxMail.recipient).where(
                OutboxMail.letter_id == letter_id, OutboxMail.kind == "feedback",
                *([OutboxMail.message_id == feedback_id] if feedback_id else []))
                .order_by(OutboxMail.id.desc())).first()
            request = conn.execute(select(SenderRequest.message_id).where(
                SenderRequest.letter_id == letter_id, SenderRequest.status == "waiting")
                .order_by(SenderRequest.id.desc())).scalar()
        return SenderThread(letter.number, letter.status, letter.sender_address or "", replied_to, request,
                            feedback.message_id if feedback else None, feedback.recipient if feedback else None)


def _appended(body: str, follow: FollowUp, received_at: datetime) -> str:
    """The letter's text with the supplement's below it, marked as such."""
    head = f"--- Supplement from {follow.sender}, {received_at.strftime('%Y-%m-%d %H:%M')} UTC ---"
    return f"{body.rstrip()}\n\n{head}\n{follow.text.strip()}".lstrip()
