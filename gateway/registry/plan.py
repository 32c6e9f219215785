"""What the stages and services hand to the registry: plain data, decided before any write.

A stage (normalise, classify, route) or a service (a person's step) works out *what* should
happen — the letter, its events, the mail it causes — without touching the database; the
registry then applies the plan in one transaction, doing no rule, file or template work while
its write lock is held.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


@dataclass
class NewMail:
    """One outbox mail to queue: a notification, receipt, reminder, escalation or feedback."""

    kind: str
    recipient: str
    details: dict[str, Any]
    message_id: str  # the same on every attempt, so that a receiver can tell a repeat


@dataclass
class Routing:
    """A classification decision and the mail routing causes."""

    status: str  # routed | needs-triage
    department: str
    category: str | None
    urgency: str
    confidentiality: str
    owner: str | None
    tags: list[str]
    deadline: datetime | None
    trace: dict[str, Any]
    flags: list[str]  # added to the letter's
    mail: list[NewMail]
    receipt: NewMail | None  # sent unless the sender's daily cap is reached
    no_receipt: str | None  # why no receipt, for the event
    receipt_cap: int = 3  # receipts per sender in 24 hours
    receipt_domain_cap: int = 30  # receipts per recipient domain in the last hour
    receipt_hourly_cap: int = 300  # receipts altogether in the last hour
    no_notification: str | None = None  # why nobody is notified, for the event


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
    """A letter to register, built from one spool item."""

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
    trust: dict[str, Any] = field(default_factory=dict)  # the check stage's verdict (stages/check.py)
    # A paper letter's sender beyond name and e-mail address, as the registry office recorded it.
    sender_organisation: str = ""
    sender_postal_address: str = ""
    sender_phone: str = ""
    sender_reference: str = ""  # 来文字号 (gateway/stages/reference.py)


@dataclass
class Answer:
    """A mail found to answer one of our letters."""

    number: str  # the letter it answers
    sender: str
    command: str | None  # ack | progress | close | reassign | note | None (just text)
    argument: str  # the result, note or department
    text: str  # the answer's own text (without the quoted part), as recorded
    # Our signed reply addresses it was sent to, named where what proved its sender vouches for them.
    reply_addresses: list[str] = field(default_factory=list)
    automatic: str | None = None  # why it is an automatic reply (then it commands nothing), if it is one
    # Our reply addresses named only where that proof does not reach (the envelope, a To or Cc its
    # DKIM signature does not cover): they vouch for nothing.
    unvouched_addresses: list[str] = field(default_factory=list)


@dataclass
class AnswerPlan:
    """An answer to record on its letter, with everything obeying it may cause, composed beforehand.

    Whether it is obeyed is decided under the letter's lock: its sender must be authenticated
    (`authenticated`), have answered through a reply address signed for this letter and for
    them (`token_refusal` None), and be in `entitled` (the addresses that may command, per
    department, plus the letter's own owner unless they are disabled). The subject's number alone grants nothing.
    Notices of a refused command go to each owner at most once per letter an hour."""

    answer: Answer
    keys: list[str]  # intake keys: a second arrival of the same mail is recognised
    raw_sha256: str
    raw_path: str
    received_at: datetime
    entitled: dict[str, set[str]]  # department -> addresses whose commands are obeyed
    departments: set[str]
    disabled: set[str] = field(default_factory=set)  # disabled people's: owning the letter grants them nothing
    notify: list[NewMail] = field(default_factory=list)  # the new department's owners, for reassign
    deadline: datetime | None = None  # for reassign, when the letter has none yet
    feedback: list[NewMail] = field(default_factory=list)  # the result for the sender, if it closes
    authenticated: str | None = None  # the sender's address as the check stage proved it; None: not proved
    authenticated_by: str | None = None  # how: smtp-auth | dkim | dmarc | authentication-results
    method: str | None = None  # the check stage's verdict's method, as it gave it
    temperror: bool = False  # a DNS lookup of the check failed: unproven is then not disproven
    token_refusal: str | None = "no reply token"  # why the reply token does not vouch for it; None: it does
    # department -> the notices to its owners that a command was refused, one each (queued only then)
    refusal_notices: dict[str, list[NewMail]] = field(default_factory=dict)


class ToArchive(NamedTuple):
    """A letter as packing needs it (a month's hundred thousand are made at once: a tuple is made
    in a third of a frozen dataclass's time)."""
    id: int
    number: str
    received_at: datetime
    channel: str
    category: str | None
    raw_path: str
    raw_sha256: str
    raw_size: int
    fax_file_name: str | None  # a fax registered from its file: its original is that file


class LateItem(NamedTuple):
    """What the archive holds for a letter beside its original, sent or finished after the letter
    was packed: a reply as mailed, or a circulation's record."""
    kind: str  # reply | circulation
    id: int  # the reply's or the circulation's
    letter_id: int
    letter_number: str
    archive_number: str
    category: str | None
    at: datetime  # when it was sent, or finished
    message: bytes | None  # a reply's mail, byte for byte as sent

    @property
    def item(self) -> str:
        """How the manifest names it: "reply 12", "circulation 3"."""
        return f"{self.kind} {self.id}"


@dataclass(frozen=True)
class Registered:
    number: str
    letter_id: int
    outcome: str  # "registered" | "duplicate" (same bytes seen before) | "known" (this intake already done) | "answer"
    status: str
