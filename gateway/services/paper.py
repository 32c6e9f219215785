"""Paper letters: what the registry office registers from the post, a courier or the front desk.

One function for the web page and `gateway ingest --channel`: the office's record (channel,
sender, when it arrived, subject, note) and the scans are checked, every fault named by its
field; then the scans become one message whose attachments are the files exactly as scanned,
which is spooled (fsynced) and registered like any other item. The answer says "registered"
only once it is; when the registry is down the item waits in the spool and the daemon registers
it. The text is read from the scans afterwards by the same OCR as a fax's, which classifies and
routes the letter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.faults import checkpoint
from gateway.outbound.compose import header_text
from gateway.registry.store import in_register
from gateway.spool import Spool
from gateway.stages.autoreply import safe_address
from gateway.stages.fax.document import FaxDocument, FaxUnreadable, read_scan
from gateway.stages.normalise.charsets import decode_bytes
from gateway.stages.normalise.filenames import safe_filename
from gateway.stages.paper import PAPER_CHANNELS
from gateway.stages.reference import LONGEST as REFERENCE_LONGEST
from gateway.stages.reference import ONE_LINE_CONTROL, typed_reference

if TYPE_CHECKING:
    from gateway.daemon.pipeline import Pipeline

CHANNELS = PAPER_CHANNELS
MAX_SCANS = 50
MAX_SCAN_BYTES = 100 * 1024 * 1024  # all the files of one letter together
# A clock a few minutes apart (a phone, the office PC) is not a time in the future.
CLOCK_SKEW = timedelta(minutes=5)
_PHONE = re.compile(r"[0-9+()\-./ #*extEXT]{3,64}")
_MEDIA = {"pdf": "application/pdf", "tiff": "image/tiff", "jpeg": "image/jpeg", "png": "image/png"}
_LIMITS = {"sender_name": 200, "organisation": 300, "address": 1000, "subject": 500, "note": 4000,
           "reference": REFERENCE_LONGEST}
# Fields of one line, written into the letter's header (Subject, From) or its record: a line break
# there would add a header of its own (`Order\nBcc: x`), and other controls have no place; nor have
# the direction controls, pasted with a name, that reorder how it reads (U+202E: "moc.knab").
_ONE_LINE = ("sender_name", "organisation", "subject", "email", "phone", "reference")


@dataclass(frozen=True)
class Scan:
    """One file as scanned (a PDF or TIFF of several pages, or a JPEG or PNG of one)."""

    name: str
    data: bytes


@dataclass
class PaperLetter:
    """What the registry office records of a paper letter."""

    channel: str
    sender_name: str
    scans: list[Scan]
    organisation: str = ""
    address: str = ""  # postal address
    phone: str = ""
    email: str = ""  # the only address a receipt may go to
    subject: str = ""
    note: str = ""
    received_at: datetime | None = None  # None: now
    reference: str = ""  # the sender's reference (来文字号), as printed on the letter


@dataclass(frozen=True)
class FieldError:
    """A fault in one field; `message` is English with %(name)s parameters (the web translates it)."""

    field: str
    message: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.message % self.params if self.params else self.message


class PaperRefused(ValueError):
    """The record or the scans are not usable: nothing was spooled."""

    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(f"{e.field}: {e}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class PaperRegistered:
    # registered | known (this form or item was registered already) | released (the registry is
    # down: it waits in the spool for the daemon) | retry | quarantined
    result: str
    item_id: str
    number: str | None = None
    reason: str | None = None
    pages: int = 0


def parse_received(text: str, tz: ZoneInfo) -> datetime:
    """A time as the office types it ("2026-11-22 09:30", "2026-11-22T09:30", with or without an
    offset; the organisation's time zone when none is given). Raises PaperRefused."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PaperRefused([FieldError("received_at", "“%(value)s” is not a date and time such as "
                                                      "2026-11-22 09:30", {"value": text.strip()[:40]})]) from None
    if not in_register(moment.date()):
        # "0026-11-22" for 2026: refused here, before the spool takes a time no query can hold.
        raise PaperRefused([FieldError("received_at", "“%(value)s” is outside the register's years (1900 to 9998): "
                                                      "check the year", {"value": text.strip()[:40]})])
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def check(letter: PaperLetter, *, now: datetime | None = None) -> tuple[list[FieldError], list[FaxDocument]]:
    """Every fault of the record, by field, and the scans read as documents (when all are readable)."""
    now = now or datetime.now(timezone.utc)
    errors: list[FieldError] = []
    if letter.channel not in CHANNELS:
        errors.append(FieldError("channel", "choose how it came: post, courier or front desk"))
    if not letter.sender_name.strip():
        errors.append(FieldError("sender_name", "the sender's name is needed"))
    for name, limit in _LIMITS.items():
        if len(getattr(letter, name)) > limit:
            errors.append(FieldError(name, "at most %(limit)s characters", {"limit": limit}))
    for name in _ONE_LINE:
        if ONE_LINE_CONTROL.search(getattr(letter, name)):
            errors.append(FieldError(name, "one line, without line breaks or control characters"))
    if letter.email.strip() and not safe_address(letter.email.strip()):
        errors.append(FieldError("email", "“%(value)s” is not an e-mail address", {"value": letter.email[:80]}))
    if letter.phone.strip() and not _PHONE.fullmatch(letter.phone.strip()):
        errors.append(FieldError("phone", "a telephone number has digits, spaces and + ( ) - only"))
    if letter.received_at is not None and letter.received_at > now + CLOCK_SKEW:
        errors.append(FieldError("received_at", "the time it was received cannot be in the future"))
    documents: list[FaxDocument] = []
    if not letter.scans:
        errors.append(FieldError("scans", "add the scans of the letter (PDF, TIFF, JPEG or PNG)"))
    elif len(letter.scans) > MAX_SCANS:
        errors.append(FieldError("scans", "at most %(limit)s files", {"limit": MAX_SCANS}))
    elif sum(len(s.data) for s in letter.scans) > MAX_SCAN_BYTES:
        errors.append(FieldError("scans", "the files together exceed %(limit)s MiB",
                                 {"limit": MAX_SCAN_BYTES // 2**20}))
    else:
        for scan in letter.scans:
            try:
                documents.append(read_scan(scan.data, scan.name))
            except FaxUnreadable as exc:
                errors.append(FieldError("scans", "%(reason)s", {"reason": str(exc)}))
    return errors, documents


def compose(letter: PaperLetter, received_at: datetime, documents: list[FaxDocument]) -> bytes:
    """The letter as one message: a note of the record, then each scan unchanged as an attachment.
    Its own From only with an e-mail address: a name alone is no address to write to."""
    message = EmailMessage()
    if letter.email.strip():
        message["From"] = Address(display_name=header_text(letter.sender_name, 200), addr_spec=letter.email.strip())
    message["Subject"] = header_text(letter.subject, 500)
    message["Date"] = format_datetime(received_at)
    message["MIME-Version"] = "1.0"
    lines = [f"Paper letter received by {letter.channel} on {received_at.isoformat()}",
             f"Sender: {letter.sender_name.strip()}"]
    lines += [f"{label}: {value.strip()}" for label, value in (
        ("Organisation", letter.organisation), ("Postal address", letter.address), ("Telephone", letter.phone),
        ("E-mail", letter.email), ("Reference", letter.reference), ("Note", letter.note)) if value.strip()]
    message.set_content("\n".join(lines) + "\n")
    for scan, document in zip(letter.scans, documents, strict=True):
        kind = document.pages[0].compression if document.kind == "image" else document.kind
        maintype, _, subtype = _MEDIA.get(kind, "application/octet-stream").partition("/")
        message.add_attachment(scan.data, maintype=maintype, subtype=subtype, filename=_base_name(scan.name))
    return message.as_bytes(policy=SMTP)


def _base_name(name: str) -> str:
    # Some browsers send the whole path of an uploaded file; a name from the shell may hold bytes
    # of another encoding (a scanner's GBK `\xb4\xab` is 传), decoded as mail's raw 8-bit names
    # are, and controls (dropped).
    readable, _ = decode_bytes(name.encode("utf-8", "surrogateescape"), None)
    return safe_filename(readable, "scan")


def paper_subject(channel: str, sender_name: str, organisation: str, pages: int) -> str:
    """The subject of a paper letter registered without one. The web register recognises exactly
    this form to word it in a page's language."""
    by = {"post": "by post", "courier": "by courier", "front-desk": "at the front desk"}[channel]
    who = sender_name.strip()
    if organisation.strip():
        who += f" ({organisation.strip()})"
    return f"Letter {by} from {who}, {pages} page(s)"


def _content_digest(letter: PaperLetter) -> str:
    """What the clerk sent, as typed (before a subject or a time is filled in) and every scan's bytes."""
    digest = hashlib.sha256()
    fields = (letter.channel, letter.sender_name, letter.organisation, letter.address, letter.phone, letter.email,
              letter.subject, letter.note, letter.received_at.isoformat() if letter.received_at else "",
              letter.reference)
    for value in fields:
        digest.update(value.strip().encode("utf-8", "surrogateescape") + b"\0")
    for scan in letter.scans:
        digest.update(scan.name.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(scan.data).digest())
    return digest.hexdigest()[:24]


def form_prefix(form_token: str) -> str:
    """The start of the intake key of every letter registered from this form."""
    return f"paper-form:{form_token}:"


def register_paper(config: Config, spool: Spool, pipeline: Pipeline, letter: PaperLetter, *, by: str,
                   intake: str, form_token: str = "") -> PaperRegistered:
    """Check, spool and register one paper letter. Raises PaperRefused (nothing spooled) and
    SpoolError (the spool cannot take it: nothing accepted either).

    `form_token`: the same form sent twice (a double click, a reload) registers one letter. A
    form sent again with other content (an old page, changed for the next letter) is another
    letter, and is registered as one."""
    tz = ZoneInfo(config.model.gateway.timezone)
    errors, documents = check(letter)
    if errors:
        raise PaperRefused(errors)
    form_key = f"{form_prefix(form_token)}{_content_digest(letter)}" if form_token else ""
    received_at = (letter.received_at or datetime.now(timezone.utc)).astimezone(tz)
    pages = sum(d.page_count for d in documents)
    if not letter.subject.strip():
        letter.subject = paper_subject(letter.channel, letter.sender_name, letter.organisation, pages)
    raw = compose(letter, received_at, documents)
    meta: dict[str, Any] = {
        "channel": letter.channel, "intake": intake, "received_at": received_at.isoformat(),
        "paper": {"registered_by": by, "note": letter.note.strip(), "pages": pages,
                  "reference": typed_reference(letter.reference),
                  "sender": {"name": letter.sender_name.strip(), "organisation": letter.organisation.strip(),
                             "address": letter.address.strip(), "phone": letter.phone.strip(),
                             "email": letter.email.strip()}}}
    if form_key:
        meta["source_key"] = form_key
    item = spool.enqueue(raw, meta, claim=True)  # durable (fsynced) when it returns
    checkpoint("after-spool")
    [outcome] = pipeline.process([item])
    result = "known" if outcome.result == "duplicate" else outcome.result
    return PaperRegistered(result, outcome.item_id, outcome.number, outcome.reason, pages)
