"""The register: one row per item, its attachments, and an append-only event log."""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Date, DateTime, ForeignKey, Index, Integer, LargeBinary, String,
                        Text, TypeDecorator, UniqueConstraint, false, func)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (which has no zones) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class NumberSeries(Base):
    """The last number handed out per series; its row lock makes numbering gap-free."""

    __tablename__ = "number_series"
    series: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)


def entry_sender(sender_name: str, sender_address: str, fax_sender: str | None,
                 fax_number: str | None) -> tuple[str, str]:
    """The sender a letter's register entry shows, (name, address): the sender's name, else a
    fax's sender; the sender's address, else a fax's number (a drop-folder fax has only those; a
    fax by mail shows the mail's sender). Its search terms are exactly these."""
    return sender_name or fax_sender or "", sender_address or fax_number or ""


class Letter(Base):
    __tablename__ = "letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    series: Mapped[str] = mapped_column(String(64), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)  # email | fax
    intake: Mapped[str] = mapped_column(String(32), nullable=False)  # file | smtp | imap | fax-drop
    status: Mapped[str] = mapped_column(String(32), nullable=False)

    sender_name: Mapped[str] = mapped_column(Text, nullable=False, default="")
    sender_address: Mapped[str] = mapped_column(Text, nullable=False, default="", index=True)
    recipients: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    recipient: Mapped[str] = mapped_column(Text, nullable=False, default="")
    department: Mapped[str | None] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, nullable=False, default="")
    body_text: Mapped[str] = mapped_column(Text, nullable=False, default="")

    category: Mapped[str | None] = mapped_column(String(64))
    urgency: Mapped[str] = mapped_column(String(16), nullable=False, default="regular")
    confidentiality: Mapped[str] = mapped_column(String(16), nullable=False, default="normal")
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(Text)  # a person, when a rule named one
    tags: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    # The decision trace; SQL NULL (not JSON null) until the letter is classified.
    classification: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"))
    archive_number: Mapped[str | None] = mapped_column(String(64), unique=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archive_package_id: Mapped[int | None] = mapped_column(Integer)
    legal_hold: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    raw_released: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # only in the archive now
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    raw_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    raw_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    raw_path: Mapped[str] = mapped_column(Text, nullable=False)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    defects: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    flags: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    # The check stage's verdict (gateway/stages/check.py); {} for letters registered before it.
    trust: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)

    fax_number: Mapped[str | None] = mapped_column(String(64))
    fax_caller_id: Mapped[str | None] = mapped_column(String(64))
    fax_sender_name: Mapped[str | None] = mapped_column(Text)
    fax_pages: Mapped[int | None] = mapped_column(Integer)
    fax_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # A paper letter's sender as the registry office recorded it (post, courier, front desk).
    sender_organisation: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    sender_postal_address: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    sender_phone: Mapped[str] = mapped_column(String(64), nullable=False, default="", server_default="")
    # The number its issuer gave the document (来文字号): typed for a paper letter, found in a mail's
    # subject or text (gateway/stages/reference.py); "" if none.
    sender_reference: Mapped[str] = mapped_column(String(100), nullable=False, default="", server_default="")
    # Taken over from another mail system (`gateway import`, an IMAP folder's first import): no receipt.
    backlog: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="letter", order_by="Attachment.position", cascade="all, delete-orphan")
    events: Mapped[list[Event]] = relationship(
        back_populates="letter", order_by="Event.id", cascade="all")

    __table_args__ = (UniqueConstraint("series", "seq", name="uq_letters_series_seq"),)

    @property
    def is_fax_file(self) -> bool:
        """A fax registered from its file (drop folder or `gateway ingest`): its original is not a mail."""
        return self.channel == "fax" and any(a.origin == "fax" for a in self.attachments)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    original_filename: Mapped[str] = mapped_column(Text, nullable=False, default="")
    declared_type: Mapped[str] = mapped_column(Text, nullable=False, default="")
    detected_type: Mapped[str] = mapped_column(Text, nullable=False, default="")
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    origin: Mapped[str] = mapped_column(String(32), nullable=False, default="mime")

    letter: Mapped[Letter] = relationship(back_populates="attachments")


class Event(Base):
    """Append-only: triggers installed by the migration refuse UPDATE and DELETE."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int | None] = mapped_column(ForeignKey("letters.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    from_department: Mapped[str | None] = mapped_column(String(64))
    to_department: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)

    letter: Mapped[Letter | None] = relationship(back_populates="events")


class IntakeKey(Base):
    """Source identities already registered (spool item, IMAP UID, SMTP session, fax file)."""

    __tablename__ = "intake_keys"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class OcrJob(Base):
    """A fax letter whose text is still to be read (OCR runs after registration, off its path)."""

    __tablename__ = "ocr_jobs"

    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # The claim (see registry/leases.py): which node's run holds it, until when, how often taken.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claims: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class OutboxMail(Base):
    """Mail the gateway sends, written in the transaction of the change that causes it.

    One row per recipient, so that one refusal does not hold back the others.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int | None] = mapped_column(ForeignKey("letters.id"))
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # notification | receipt
    recipient: Mapped[str] = mapped_column(Text, nullable=False)
    message_id: Mapped[str] = mapped_column(Text, nullable=False)  # the same on every attempt
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claims: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class ArchivePackage(Base):
    """One file of the monthly archive (mail as mbox, or a folder of fax originals) and its manifest."""

    __tablename__ = "archive_packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    month: Mapped[str] = mapped_column(String(7), nullable=False)  # YYYY-MM
    category: Mapped[str] = mapped_column(String(64), nullable=False)
    part: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # mail | fax | late (items after their letter)
    path: Mapped[str] = mapped_column(Text, nullable=False)  # relative to the archive folder
    manifest: Mapped[str] = mapped_column(Text, nullable=False)
    letters: Mapped[int] = mapped_column(Integer, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)  # of the package file (fax: of the manifest)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # written | verified | corrupt | purged
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("month", "category", "kind", "part", name="uq_archive_packages_part"),)


class DestructionRecord(Base):
    __tablename__ = "destruction_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    approved_by: Mapped[str] = mapped_column(Text, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    packages: Mapped[list[Any]] = mapped_column(JSONType, nullable=False)
    letters: Mapped[list[Any]] = mapped_column(JSONType, nullable=False)


class ImapFolder(Base):
    """Where an IMAP folder stands: its UIDVALIDITY, the highest UID settled, and its health."""

    __tablename__ = "imap_folders"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    folder: Mapped[str] = mapped_column(String(512), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_uid: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    importing_until: Mapped[int | None] = mapped_column(BigInteger)  # during the first import
    # The first import's newest UID (or the import's after a UIDVALIDITY change), kept after it ends:
    # a message of that import fetched only later is still backlog.
    backlog_until: Mapped[int | None] = mapped_column(BigInteger)
    # During an import after a UIDVALIDITY change: read mail from this day on is taken too.
    import_seen_since: Mapped[date | None] = mapped_column(Date)
    last_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    backlog: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ImapMessage(Base):
    """The ledger: one row per message settled, keyed by its server identity."""

    __tablename__ = "imap_ledger"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    folder: Mapped[str] = mapped_column(String(512), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # spooled (durable, its item registered by the spool workers) | failing | unfetchable
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    number: Mapped[str | None] = mapped_column(String(64))
    item_id: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32), nullable=False)  # what was done on the server
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Person(Base):
    """Someone who signs in to the web register or is named in the CLI: their roles and departments.

    Rights derived from the configuration ([[departments]] owners, head, members, matched by
    address) are added when a person is read, never stored, so the file stays the truth for them."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False, default="")
    emails: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    departments: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    roles: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    password_hash: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(8))
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Two-step sign-in (TOTP, RFC 6238): the secret is kept from the moment it is shown, and counts
    # only once a code proved the app has it (totp_enabled_at). The last step used is kept so that a
    # code seen over someone's shoulder cannot be used again; recovery codes are kept as SHA-256.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    recovery_codes: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list,
                                                      server_default="[]")


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is kept here."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), nullable=False, index=True)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The password was right and the person has two-step sign-in: no page is open to this session
    # until its code is given (or it lapses, a few minutes after created_at).
    awaiting_code: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    method: Mapped[str] = mapped_column(String(16), nullable=False, default="password", server_default="password")
    user_agent: Mapped[str] = mapped_column(String(200), nullable=False, default="", server_default="")


class PasswordReset(Base):
    """A link mailed to someone who forgot their password: only the token's SHA-256 is kept; it works
    once, and for a short while (the web's reset_minutes)."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")  # who asked
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Grant(Base):
    """An explicit right of one person to read one letter's content (a confidential letter's, or
    any letter's for a role that sees no content, such as an auditor)."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), nullable=False)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    granted_by: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (UniqueConstraint("person_id", "letter_id", name="uq_grants_person_letter"),)


class SavedView(Base):
    """A person's named queue: its filters and sort, shown in their sidebar."""

    __tablename__ = "saved_views"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    query: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (UniqueConstraint("person_id", "name", name="uq_saved_views_person_name"),)


class AuditRow(Base):
    """Who read what, signed in or out, and changed whose rights. Append-only like events."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    actor: Mapped[str] = mapped_column(Text, nullable=False)  # a login, "cli:<user>", or the name tried
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    letter_id: Mapped[int | None] = mapped_column(ForeignKey("letters.id"))
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")  # an attachment, a person, a query
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")  # the client's IP
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


Index("ix_letters_channel_received", Letter.channel, Letter.received_at)
Index("ix_outbox_due", OutboxMail.status, OutboxMail.next_attempt_at)
Index("ix_outbox_letter", OutboxMail.letter_id)
Index("ix_outbox_kind_recipient", OutboxMail.kind, OutboxMail.recipient, OutboxMail.created_at)
Index("ix_outbox_message_id", OutboxMail.message_id)
Index("ix_events_to_department", Event.to_department, Event.letter_id)
Index("ix_letters_department_received", Letter.department, Letter.received_at)
Index("ix_letters_deadline", Letter.deadline)
Index("ix_letters_status_deadline", Letter.status, Letter.deadline)
Index("ix_letters_department_status_deadline", Letter.department, Letter.status, Letter.deadline)
Index("ix_letters_status_received", Letter.status, Letter.received_at)
Index("ix_letters_category_received", Letter.category, Letter.received_at)
Index("ix_letters_owner_lower", func.lower(Letter.owner))
Index("ix_letters_archive_package", Letter.archive_package_id)
Index("ix_audit_letter", AuditRow.letter_id, AuditRow.at)
Index("ix_audit_actor_action", AuditRow.actor, AuditRow.action, AuditRow.at)
Index("ix_audit_address_action", AuditRow.address, AuditRow.action, AuditRow.at)


class SenderRequest(Base):
    """Materials a letter's sender was asked for (an incomplete submission), and how it ended.

    While it waits the letter is awaiting-sender and has no deadline: the working days that were
    left are kept here and counted again from the day the supplement arrives."""

    __tablename__ = "sender_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False)
    missing: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # the end of the day asked for
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    requested_by: Mapped[str] = mapped_column(Text, nullable=False)
    recipient: Mapped[str] = mapped_column(Text, nullable=False, default="")  # '': asked by other means
    message_id: Mapped[str | None] = mapped_column(Text)  # the request mail's, to match the follow-up
    paused_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    remaining_days: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # waiting | supplemented | withdrawn | waived
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Rating(Base):
    """A sender's rating of how their letter was handled, one per result mail."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False)
    feedback_message_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    score: Mapped[int] = mapped_column(Integer, nullable=False)  # 1..5
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    via: Mapped[str] = mapped_column(String(8), nullable=False)  # web | mail
    department: Mapped[str | None] = mapped_column(String(64))  # the letter's when rated
    category: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


Index("ix_sender_requests_letter", SenderRequest.letter_id)
Index("ix_sender_requests_status_due", SenderRequest.status, SenderRequest.due_at)
Index("ix_sender_requests_message_id", SenderRequest.message_id)
Index("ix_ratings_letter", Rating.letter_id)
Index("ix_ratings_department_at", Rating.department, Rating.at)


class OcrReading(Base):
    """How a fax's or scan's text was read: by which reader, its version, each page's confidence,
    and the pages a person should check (a low confidence, or nothing read on them)."""

    __tablename__ = "ocr_readings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    reader: Mapped[str] = mapped_column(String(32), nullable=False)  # ppocr | ppocr+tesseract | tesseract
    version: Mapped[str] = mapped_column(Text, nullable=False, default="")
    pages: Mapped[int] = mapped_column(Integer, nullable=False)
    confidences: Mapped[list[float | None]] = mapped_column(JSONType, nullable=False, default=list)
    low_confidence: Mapped[list[int]] = mapped_column(JSONType, nullable=False, default=list)  # page numbers
    header: Mapped[str | None] = mapped_column(Text)  # the sending machine's header line, as read
    read_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Circulation(Base):
    """A letter read and signed in order by people or departments (传阅): who started it, for
    which department's handling, and where it stands. Its steps are CirculationStep rows."""

    __tablename__ = "circulations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # running | finished
    started_by: Mapped[str] = mapped_column(Text, nullable=False)  # a login
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    current: Mapped[int | None] = mapped_column(Integer)  # the position of the step being read; None when finished
    # The archive package that holds its record once finished: its letter's, or a late part's.
    archive_package_id: Mapped[int | None] = mapped_column(Integer)


class CirculationStep(Base):
    """One reader of a circulation: a person (by login) or a department (its head signs for it)."""

    __tablename__ = "circulation_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    circulation_id: Mapped[int] = mapped_column(ForeignKey("circulations.id"), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # 1, 2, ...
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # person | department
    target: Mapped[str] = mapped_column(String(64), nullable=False)  # a login or a department id
    reached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when it became this reader's turn
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signed_by: Mapped[str | None] = mapped_column(Text)  # the login that signed
    instruction: Mapped[str] = mapped_column(Text, nullable=False, default="")  # 批示
    reminders: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("circulation_id", "position", name="uq_circulation_steps_position"),)


class Borrowing(Base):
    """A request to read an archived letter for some days, its approval, and how it ended."""

    __tablename__ = "borrowings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), nullable=False)
    login: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    days: Mapped[int] = mapped_column(Integer, nullable=False)
    approver: Mapped[str] = mapped_column(String(16), nullable=False)  # head | leader: who must approve
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # requested | granted | refused | returned | expired
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # granted until
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # returned or expired


Index("ix_circulation_steps_circulation", CirculationStep.circulation_id)
Index("ix_circulations_status", Circulation.status)
Index("ix_borrowings_letter_person", Borrowing.letter_id, Borrowing.person_id)
Index("ix_borrowings_status", Borrowing.status, Borrowing.ends_at)


class Reply(Base):
    """A reply to a letter's sender: drafted by its handler, approved step by step along a chain
    chosen by [[replies.approval]], then sent through the outbox (or, with no address, by post).

    status: draft | pending (under approval) | returned (back to the handler) | sent | to-post |
    posted. `step` is the position in `chain` awaiting approval; each submission is a new
    `round`, whose approvals start again from the first step."""

    __tablename__ = "replies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    letter_id: Mapped[int] = mapped_column(ForeignKey("letters.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    authors: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)  # logins who wrote it
    chain: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)  # head | leader | top
    rule: Mapped[str] = mapped_column(Text, nullable=False, default="")  # which rule chose the chain
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    round: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    step_since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when the current step began waiting
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the current step's last reminder
    recipient: Mapped[str] = mapped_column(Text, nullable=False, default="")  # '': by post
    message_id: Mapped[str | None] = mapped_column(Text)
    outbox_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[bytes | None] = mapped_column(LargeBinary)  # the mail as sent, byte for byte
    message_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The archive package that holds it once sent: its letter's, or a late part's.
    archive_package_id: Mapped[int | None] = mapped_column(Integer)


# What the archive has not packed yet (a package id of NULL), found without reading every reply or
# circulation: a run looks for what was sent or finished after its letter was packed.
Index("ix_replies_archive_package", Reply.archive_package_id, Reply.status)
Index("ix_circulations_archive_package", Circulation.archive_package_id, Circulation.status)


class ReplyAttachment(Base):
    __tablename__ = "reply_attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reply_id: Mapped[int] = mapped_column(ForeignKey("replies.id"), nullable=False, index=True)
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    content_type: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class ReplyStep(Base):
    """One approver's decision on one round of a reply: approved or returned, with a comment."""

    __tablename__ = "reply_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reply_id: Mapped[int] = mapped_column(ForeignKey("replies.id"), nullable=False, index=True)
    round: Mapped[int] = mapped_column(Integer, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    approver: Mapped[str] = mapped_column(Text, nullable=False)
    decision: Mapped[str] = mapped_column(String(16), nullable=False)  # approved | returned
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


Index("ix_replies_status", Reply.status)


class Node(Base):
    """A gateway node sharing this registry: who it is, and its heartbeat."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    instance: Mapped[str] = mapped_column(String(200), nullable=False)  # "name#run": one per start
    host: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    # "boot id/start time" of that pid's process: after a restart (of a container most of all)
    # the same small pid is another process's. None where /proc does not tell.
    process: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The settings every node must be given alike, as this run has them: JSON, name -> digest
    # (config.shared_settings). None until the run first compares them.
    settings: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """Something one node at a time may do (an IMAP folder), held until `expires_at`,
    renewed by the holder's heartbeat."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(700), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)  # the node's instance
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class JobRun(Base):
    """The last run of a periodic job done once across nodes (archive, reminders, ...)."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[str] = mapped_column(String(64), nullable=False)  # the period it ran for
    node: Mapped[str] = mapped_column(String(200), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(Text)
