"""Replies under approval on the register: drafts, submissions, each approver's decision, and the
sending record.

Each change is one transaction under the reply's row lock: the reply's state, the decision row,
the event on its letter and the mail it causes (to the next approver, back to the handler, or the
reply itself to the sender). Who may do what, the chain and the mail are decided by the caller
(gateway.services.replies) and handed in; this module only refuses what the reply's state no
longer allows (two approvers of one step at once, a reply changed meanwhile).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import defer

from gateway.registry import lifecycle
from gateway.registry.models import Event, Letter, OutboxMail, Reply, ReplyAttachment, ReplyStep
from gateway.registry.plan import NewMail
from gateway.registry.store import Store, utcnow

EDITABLE = ("draft", "returned")
OPEN = ("draft", "pending", "returned", "to-post")


class ReplyChanged(Exception):
    """The reply is not where the caller saw it (another step was taken meanwhile)."""


class DraftChanged(ReplyChanged):
    """The draft's text is not the one the writer started from: someone saved theirs meanwhile."""


def text_digest(text: str) -> str:
    """What a draft form carries of the text it was opened with, to tell a save made meanwhile."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NewReplyAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Outgoing:
    """The approved reply as it leaves: its mail (None: by post) and the bytes of that mail."""

    mail: NewMail | None
    message: bytes | None


@dataclass(frozen=True)
class Waiting:
    """A reply waiting for an approver: what the queue and the reminders need."""

    reply_id: int
    letter_id: int
    number: str
    department: str | None
    received_at: datetime
    chain: list[str]
    step: int
    round: int
    authors: list[str]
    step_since: datetime | None
    reminded_at: datetime | None


def _reply(conn: Connection, reply_id: int) -> Any:
    row = conn.execute(select(Reply.id, Reply.letter_id, Reply.status, Reply.step, Reply.round, Reply.chain,
                              Reply.authors).where(Reply.id == reply_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no reply {reply_id}")
    return row


def _letter(conn: Connection, letter_id: int) -> Any:
    return conn.execute(select(Letter.id, Letter.number, Letter.status).where(Letter.id == letter_id)
                        .with_for_update()).one()


def refuse_past_reply(conn: Connection, letter_id: int, number: str, action: str) -> None:
    """Raise ReplyInHand if `action` would move the letter where its reply in hand (waiting for
    approval or for the post) could no longer answer it: the approval would then fail for good,
    leaving the reply in its approver's queue and no new draft possible. A reassignment too: the
    reply is its department's, and another department's head would be asked to approve it. Under
    the letter's lock."""
    move = lifecycle.ACTIONS[action]
    if action != "reassign" and (move.to is None or move.to in lifecycle.ACTIONS["answer"].allowed_from):
        return
    waiting = conn.execute(select(Reply.status).where(Reply.letter_id == letter_id,
                                                      Reply.status.in_(("pending", "to-post")))).scalar()
    if waiting is not None:
        raise lifecycle.ReplyInHand(number, waiting, action)


class ReplyRecords:
    """The register's side of replies, over one store."""

    def __init__(self, store: Store):
        self.store = store

    # -- reading --------------------------------------------------------------------
    def replies(self, letter_id: int) -> list[Reply]:
        """The letter's replies, oldest first (without the bytes of a sent mail)."""
        with self.store.session() as session:
            return list(session.scalars(select(Reply).options(defer(Reply.message))
                                        .where(Reply.letter_id == letter_id).order_by(Reply.id)))

    def reply(self, reply_id: int) -> Reply | None:
        with self.store.session() as session:
            return session.get(Reply, reply_id, options=[defer(Reply.message)])

    def attachments(self, reply_id: int) -> list[ReplyAttachment]:
        """A reply's attachments without their content."""
        with self.store.session() as session:
            return list(session.scalars(select(ReplyAttachment).options(defer(ReplyAttachment.content))
                                        .where(ReplyAttachment.reply_id == reply_id).order_by(ReplyAttachment.id)))

    def attachment_content(self, reply_id: int, attachment_id: int) -> ReplyAttachment | None:
        with self.store.session() as session:
            return session.scalars(select(ReplyAttachment).where(ReplyAttachment.id == attachment_id,
                                                                 ReplyAttachment.reply_id == reply_id)).first()

    def steps(self, reply_id: int) -> list[ReplyStep]:
        with self.store.session() as session:
            return list(session.scalars(select(ReplyStep).where(ReplyStep.reply_id == reply_id)
                                        .order_by(ReplyStep.id)))

    def message(self, reply_id: int) -> bytes | None:
        """The reply's mail as it was sent (or queued), byte for byte."""
        with self.store.read() as conn:
            return conn.execute(select(Reply.message).where(Reply.id == reply_id)).scalar()

    def message_by_id(self, message_id: str) -> bytes | None:
        with self.store.read() as conn:
            return conn.execute(select(Reply.message).where(Reply.message_id == message_id)).scalar()

    def sent_messages(self, letter_id: int) -> list[bytes]:
        """The mails of the letter's sent replies, oldest first: archived with it."""
        with self.store.read() as conn:
            return [m for m in conn.execute(select(Reply.message).where(
                Reply.letter_id == letter_id, Reply.status == "sent", Reply.message.is_not(None))
                .order_by(Reply.id)).scalars() if m]

    def waiting(self) -> list[Waiting]:
        """Every reply under approval, oldest waiting first."""
        with self.store.read() as conn:
            rows = conn.execute(select(Reply.id, Letter.id, Letter.number, Letter.department, Letter.received_at,
                                       Reply.chain, Reply.step, Reply.round, Reply.authors, Reply.step_since,
                                       Reply.reminded_at)
                                .join(Letter, Letter.id == Reply.letter_id)
                                .where(Reply.status == "pending").order_by(Reply.step_since, Reply.id)).all()
        return [Waiting(*row) for row in rows]

    # -- the handler's side -----------------------------------------------------------
    def save_draft(self, letter_id: int, reply_id: int | None, *, actor: str, text: str,
                   add: list[NewReplyAttachment], remove: list[int], started_from: str | None = None) -> int:
        """Create the letter's draft or change it (only a draft or a returned reply). Returns its id.

        `started_from`: the `text_digest` of the draft the writer's form was opened with ("": no
        draft yet); when the draft is another by now (a colleague saved meanwhile, or started one),
        DraftChanged, and nothing is overwritten. None: not checked."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            letter = _letter(conn, letter_id)
            created = reply_id is None
            if reply_id is None:
                if conn.execute(select(Reply.id).where(Reply.letter_id == letter_id, Reply.status.in_(OPEN))
                                ).first() is not None:
                    raise (DraftChanged(f"the draft of {letter.number} was changed meanwhile by someone else")
                           if started_from is not None else
                           ReplyChanged(f"{letter.number} has a reply in hand already"))
                reply_id = conn.execute(insert(Reply).values(
                    letter_id=letter_id, status="draft", text=text, authors=[actor], chain=[], rule="", step=0,
                    round=0, recipient="", created_at=now, updated_at=now).returning(Reply.id)).scalar_one()
            else:
                reply = _reply(conn, reply_id)
                if reply.letter_id != letter_id or reply.status not in EDITABLE:
                    raise ReplyChanged(f"the reply is {reply.status}: it can no longer be changed")
                if started_from is not None:
                    saved = conn.execute(select(Reply.text).where(Reply.id == reply_id)).scalar_one()
                    if text_digest(saved) != started_from:
                        raise DraftChanged(f"the draft of {letter.number} was changed meanwhile by someone else")
                authors = list(reply.authors) + ([actor] if actor not in reply.authors else [])
                conn.execute(update(Reply).where(Reply.id == reply_id).values(text=text, authors=authors,
                                                                              updated_at=now))
            if remove:
                conn.execute(delete(ReplyAttachment).where(ReplyAttachment.reply_id == reply_id,
                                                           ReplyAttachment.id.in_(remove)))
            if add:
                conn.execute(insert(ReplyAttachment), [
                    {"reply_id": reply_id, "filename": a.filename, "content_type": a.content_type,
                     "size": len(a.content), "sha256": hashlib.sha256(a.content).hexdigest(), "content": a.content}
                    for a in add])
            conn.execute(insert(Event), [s.event_row(letter_id, now, actor, "reply-drafted", None, {
                "draft": reply_id, "created": created, "characters": len(text),
                **({"attached": [a.filename for a in add]} if add else {}),
                **({"removed": len(remove)} if remove else {})})])
        return reply_id

    def submit(self, reply_id: int, *, actor: str, chain: list[str], rule: str, notify: list[NewMail]) -> int:
        """Start (or, after a return, restart) the approval chain: a new round from its first step."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            reply = _reply(conn, reply_id)
            if reply.status not in EDITABLE:
                raise ReplyChanged(f"the reply is {reply.status}: it was submitted already")
            round_ = reply.round + 1
            authors = list(reply.authors) + ([actor] if actor not in reply.authors else [])
            conn.execute(update(Reply).where(Reply.id == reply_id).values(
                status="pending", chain=chain, rule=rule, step=0, round=round_, authors=authors, step_since=now,
                reminded_at=None, updated_at=now))
            conn.execute(insert(Event), [s.event_row(reply.letter_id, now, actor, "reply-submitted", None, {
                "draft": reply_id, "round": round_, "chain": chain, "rule": rule,
                "next": chain[0], "notify": [m.recipient for m in notify]})])
            if notify:
                conn.execute(insert(OutboxMail), [s.mail_row(reply.letter_id, m, now) for m in notify])
        return round_

    # -- the approvers' side -------------------------------------------------------------
    def decide(self, reply_id: int, *, actor: str, round_: int, position: int, decision: str, comment: str,
               notify: list[NewMail], outgoing: Outgoing | None = None) -> str:
        """One approver's decision on the step awaiting it. `outgoing` with the last step's
        approval: the reply leaves (queued for its sender, the letter answered) or waits for the
        post. Returns the reply's new status. Raises ReplyChanged and TransitionRefused."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            reply = _reply(conn, reply_id)
            if reply.status != "pending" or reply.round != round_ or reply.step != position:
                raise ReplyChanged("the reply moved on meanwhile: reload it")
            role = reply.chain[position]
            conn.execute(insert(ReplyStep).values(reply_id=reply_id, round=round_, position=position, role=role,
                                                  approver=actor, decision=decision, comment=comment, at=now))
            details: dict[str, Any] = {"draft": reply_id, "round": round_, "step": position + 1, "role": role,
                                       "approver": actor, "comment": comment}
            last = position + 1 == len(reply.chain)
            if decision == "returned":
                status = "returned"
                conn.execute(update(Reply).where(Reply.id == reply_id).values(
                    status=status, step=0, step_since=None, reminded_at=None, updated_at=now))
                conn.execute(insert(Event), [s.event_row(reply.letter_id, now, actor, "reply-returned", None, {
                    **details, "notify": [m.recipient for m in notify]})])
            elif not last:
                status = "pending"
                conn.execute(update(Reply).where(Reply.id == reply_id).values(
                    step=position + 1, step_since=now, reminded_at=None, updated_at=now))
                conn.execute(insert(Event), [s.event_row(reply.letter_id, now, actor, "reply-approved", None, {
                    **details, "next": reply.chain[position + 1], "notify": [m.recipient for m in notify]})])
            else:
                assert outgoing is not None
                conn.execute(insert(Event), [s.event_row(reply.letter_id, now, actor, "reply-approved", None, {
                    **details, "complete": True})])
                status = self._leave(conn, reply, outgoing, actor, now)
            if notify:
                conn.execute(insert(OutboxMail), [s.mail_row(reply.letter_id, m, now) for m in notify])
        return status

    def _leave(self, conn: Connection, reply: Any, outgoing: Outgoing, actor: str, now: datetime) -> str:
        """The fully approved reply: to its sender through the outbox, the letter answered; or, with
        no address, marked for the registry office to post."""
        s = self.store
        if outgoing.mail is None:
            conn.execute(update(Reply).where(Reply.id == reply.id).values(status="to-post", step=len(reply.chain),
                                                                          step_since=None, updated_at=now))
            conn.execute(insert(Event), [s.event_row(reply.letter_id, now, "gateway", "reply-to-post", None, {
                "draft": reply.id, "reason": "the sender has no e-mail address: the registry office posts it"})])
            return "to-post"
        letter = _letter(conn, reply.letter_id)
        move = lifecycle.check(letter.number, letter.status, "answer")
        mail, message = outgoing.mail, outgoing.message or b""
        outbox_id = conn.execute(insert(OutboxMail).values(s.mail_row(reply.letter_id, mail, now))
                                 .returning(OutboxMail.id)).scalar_one()
        conn.execute(update(Reply).where(Reply.id == reply.id).values(
            status="sent", step=len(reply.chain), step_since=None, recipient=mail.recipient,
            message_id=mail.message_id, outbox_id=outbox_id, message=message,
            message_sha256=hashlib.sha256(message).hexdigest(), sent_at=now, updated_at=now))
        conn.execute(update(Letter).where(Letter.id == reply.letter_id).values(status=move.to, updated_at=now))
        conn.execute(insert(Event), [s.event_row(reply.letter_id, now, "gateway", "reply-sent", None, {
            "draft": reply.id, "via": "mail", "outbox": outbox_id, "message_id": mail.message_id,
            "recipient": mail.recipient, "sha256": hashlib.sha256(message).hexdigest(), "approved_by": actor,
            "from": letter.status, "to": move.to})])
        return "sent"

    def posted(self, reply_id: int, *, actor: str, note: str) -> None:
        """The registry office posted an approved reply to a sender without an e-mail address."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            reply = _reply(conn, reply_id)
            if reply.status != "to-post":
                raise ReplyChanged(f"the reply is {reply.status}: only an approved reply waiting for the post")
            letter = _letter(conn, reply.letter_id)
            move = lifecycle.check(letter.number, letter.status, "answer")
            conn.execute(update(Reply).where(Reply.id == reply_id).values(status="posted", sent_at=now,
                                                                          updated_at=now))
            conn.execute(update(Letter).where(Letter.id == reply.letter_id).values(status=move.to, updated_at=now))
            conn.execute(insert(Event), [s.event_row(reply.letter_id, now, actor, "reply-sent", None, {
                "draft": reply_id, "via": "post", "recipient": note, "from": letter.status, "to": move.to})])

    def remind(self, reply_id: int, *, step: int, round_: int, at: datetime, mail: list[NewMail],
               seen_reminded_at: datetime | None) -> bool:
        """Queue a reminder to the approvers of the step still waiting; False when that step has
        moved on or was reminded by another pass. The decision was read without a lock and two
        passes (the daemon's and `reminders run`) may meet: only the one that finds the step as it
        read it (`seen_reminded_at`) reminds."""
        s, now = self.store, utcnow()
        with s.write() as conn:
            reply = conn.execute(select(Reply.letter_id, Reply.status, Reply.step, Reply.round, Reply.chain,
                                        Reply.reminded_at, Reply.step_since)
                                 .where(Reply.id == reply_id).with_for_update()).first()
            if (reply is None or reply.status != "pending" or reply.step != step or reply.round != round_
                    or reply.reminded_at != seen_reminded_at):
                return False
            conn.execute(update(Reply).where(Reply.id == reply_id).values(reminded_at=at))
            conn.execute(insert(Event), [s.event_row(reply.letter_id, at, "gateway", "reply-reminded", None, {
                "draft": reply_id, "step": step + 1, "role": reply.chain[step],
                "waiting_since": reply.step_since.isoformat() if reply.step_since else None,
                "to": [m.recipient for m in mail]})])
            if mail:
                conn.execute(insert(OutboxMail), [s.mail_row(reply.letter_id, m, now) for m in mail])
        return True
