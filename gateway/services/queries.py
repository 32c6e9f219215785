"""Reading the register: letters listed and shown, the outbox and the archive's packages, and the
organisation's local days that bound a listing."""
from __future__ import annotations

import os
import stat
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.addressing import shown_address
from gateway.config import Config
from gateway.registry import Registry, Scope
from gateway.registry.models import Attachment, Letter, OcrReading, OutboxMail, entry_sender


def local_zone(config: Config) -> ZoneInfo:
    return ZoneInfo(config.model.gateway.timezone)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The first moment of a local day, in UTC."""
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(timezone.utc)


def received_between(config: Config, since: date | None,
                     until: date | None) -> tuple[datetime | None, datetime | None]:
    """From the start of local day `since` to the end of local day `until` (either may be open)."""
    tz = local_zone(config)
    return (day_start(since, tz) if since else None,
            day_start(until + timedelta(days=1), tz) if until else None)


def overdue_moment(config: Config, as_of: date | None) -> datetime:
    """Overdue by the end of local day `as_of`, or by now."""
    return day_start(as_of + timedelta(days=1), local_zone(config)) if as_of else datetime.now(timezone.utc)


def local_moment(config: Config, at: datetime | None) -> datetime:
    """A wall-clock time given on the command line, read in the organisation's time zone; now if none."""
    return at.replace(tzinfo=local_zone(config)) if at else datetime.now(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def list_letters(config: Config, registry: Registry, *, status: str | None = None,
                 department: str | None = None, category: str | None = None, channel: str | None = None,
                 since: date | None = None, until: date | None = None, overdue: bool = False,
                 as_of: date | None = None, limit: int | None = None, scope: Scope | None = None) -> list[Letter]:
    """Letters, oldest first; with `overdue`, only open letters past their deadline (by `as_of`);
    with a `scope`, only those it covers (gateway/services/access.py decides it)."""
    start, end = received_between(config, since, until)
    return registry.letters(status=status, department=department, category=category, channel=channel,
                            since=start, until=end, limit=limit,
                            overdue_at=overdue_moment(config, as_of) if overdue else None, scope=scope)


def letter_sender(letter: Letter) -> tuple[str, str]:
    """The sender a letter's register entry shows, (name, address): see `entry_sender`."""
    return entry_sender(letter.sender_name, letter.sender_address, letter.fax_sender_name, letter.fax_number)


def letter_summary(letter: Letter) -> dict[str, Any]:
    """A letter as a row of the register (`letters list/search --json`): its sender as the row
    shows it (a drop-folder fax by its number, a domain as shown_address shows it), and the
    address as the letter gave it."""
    sender_name, sender_address = letter_sender(letter)
    return {"number": letter.number, "status": letter.status, "channel": letter.channel,
            "received_at": iso(letter.received_at), "sender_name": sender_name,
            "sender_address": shown_address(sender_address), "sender_address_as_given": sender_address,
            "department": letter.department, "category": letter.category, "urgency": letter.urgency,
            "subject": letter.subject, "deadline": iso(letter.deadline), "flags": letter.flags}


def letter_detail(letter: Letter, outbox: list[OutboxMail] | None = None,
                  reading: OcrReading | None = None) -> dict[str, Any]:
    """Every field of a letter, its attachments, events, the mail sent about it and how its text
    was read (a fax or scan)."""
    out = letter_summary(letter)
    del out["sender_address_as_given"]
    out.update({
        # Every field as stored: the row's sender is worked out from these and the fax's.
        "sender_name": letter.sender_name, "sender_address": letter.sender_address,
        "text_read": ocr_reading_row(reading) if reading is not None else None,
        "owner": letter.owner, "tags": letter.tags, "classification": letter.classification,
        "archive_number": letter.archive_number, "archived_at": iso(letter.archived_at),
        "legal_hold": letter.legal_hold, "raw_released": letter.raw_released, "purged_at": iso(letter.purged_at),
        "outbox": [outbox_row(m) for m in outbox or []],
        "intake": letter.intake, "recipient": letter.recipient, "recipients": letter.recipients,
        "sent_at": iso(letter.sent_at), "message_id": letter.message_id, "summary": letter.summary,
        "confidentiality": letter.confidentiality, "deadline": iso(letter.deadline),
        "series": letter.series, "seq": letter.seq, "created_at": iso(letter.created_at),
        "updated_at": iso(letter.updated_at), "body_text": letter.body_text,
        "raw_sha256": letter.raw_sha256, "raw_size": letter.raw_size, "raw_path": letter.raw_path,
        "envelope": letter.envelope, "defects": letter.defects, "flags": letter.flags,
        "trust": letter.trust or {},
        "fax": {"number": letter.fax_number, "caller_id": letter.fax_caller_id,
                "sender_name": letter.fax_sender_name, "pages": letter.fax_pages,
                "sent_at": iso(letter.fax_sent_at)},
        "sender_organisation": letter.sender_organisation, "sender_postal_address": letter.sender_postal_address,
        "sender_phone": letter.sender_phone, "sender_reference": letter.sender_reference, "backlog": letter.backlog,
        "attachments": [{"filename": a.filename, "original_filename": a.original_filename,
                         "declared_type": a.declared_type, "detected_type": a.detected_type,
                         "size": a.size, "sha256": a.sha256, "origin": a.origin} for a in letter.attachments],
        "events": [{"at": iso(e.at), "actor": e.actor, "action": e.action,
                    "from_department": e.from_department, "to_department": e.to_department,
                    "details": e.details} for e in letter.events],
    })
    return out


def letter_or_fail(registry: Registry, number: str) -> Letter:
    letter = registry.letter(number)
    if letter is None:
        raise LookupError(f"no letter {number}")
    return letter


def show_letter(registry: Registry, number: str) -> tuple[Letter, dict[str, Any]]:
    """The letter and its detail. Raises LookupError."""
    letter = letter_or_fail(registry, number)
    return letter, letter_detail(letter, registry.outbox(letter_id=letter.id), ocr_reading(registry, letter.id))


def ocr_reading(registry: Registry, letter_id: int) -> OcrReading | None:
    """How the letter's text was last read (a fax or scan), if it has been."""
    from sqlalchemy import select

    with registry.session() as session:
        return session.scalars(select(OcrReading).where(OcrReading.letter_id == letter_id)
                               .order_by(OcrReading.read_at.desc(), OcrReading.id.desc()).limit(1)).first()


def ocr_reading_row(reading: OcrReading) -> dict[str, Any]:
    return {"reader": reading.reader, "version": reading.version, "pages": reading.pages,
            "confidences": reading.confidences, "low_confidence": reading.low_confidence,
            "header": reading.header, "read_at": iso(reading.read_at)}


def outbox_row(mail: OutboxMail) -> dict[str, Any]:
    return {"id": mail.id, "letter_id": mail.letter_id, "kind": mail.kind, "recipient": mail.recipient,
            "status": mail.status, "attempts": mail.attempts, "created_at": iso(mail.created_at),
            "next_attempt_at": iso(mail.next_attempt_at), "sent_at": iso(mail.sent_at),
            "last_error": mail.last_error, "message_id": mail.message_id}


def outbox_mail(registry: Registry, *, status: str | None,
                limit: int) -> tuple[list[OutboxMail], dict[int | None, str]]:
    """The outbox's mail, and the number of the letter each is about (by letter id)."""
    mails = registry.outbox(status=status, limit=limit)
    letters = registry.letters_by_id({m.letter_id for m in mails if m.letter_id is not None})
    numbers: dict[int | None, str] = {letter.id: letter.number for letter in letters}
    return mails, numbers


class ExtractRefused(LookupError):
    """The folder has something in the way of a document: nothing is written. A LookupError, so
    that whoever reports a letter that is not there reports this the same way."""


def attachment_content(config: Config, registry: Registry, letter: Letter, attachment: Attachment,
                       original: bytes | None = None) -> bytes | None:
    """The bytes of one of a letter's attachments: a fax file is its own document, one a sender's
    supplement brought is in that mail, the others are in the letter's original (`original`, when
    the caller has read it already). None when it is not found there."""
    from gateway.archive.packer import read_original
    from gateway.services.incomplete import supplement_content
    from gateway.stages.normalise import Limits, normalise

    if attachment.origin == "supplement":
        return supplement_content(config, letter, attachment.sha256)
    raw = original if original is not None else read_original(config, registry, letter)
    if letter.is_fax_file:
        return raw
    return next((a.content for a in normalise(raw, limits=Limits.of(config.model.normalise)).attachments
                 if a.sha256 == attachment.sha256), None)


def extract_attachments(config: Config, registry: Registry, number: str, directory: Path) -> list[Path]:
    """Write a letter's documents into `directory` under their safe names, one file each (a
    supplement's file of a name taken is numbered); returns the files written.

    A file of the same name is replaced. Anything else of that name (a symbolic link, a folder, a
    pipe) makes it refuse before writing anything: a link could send a document anywhere, and
    half an extract is worse than none. Raises LookupError (ExtractRefused for the folder)."""
    from gateway.archive.packer import read_original
    from gateway.stages.normalise import Limits, normalise
    from gateway.stages.normalise.filenames import numbered_variant

    letter = letter_or_fail(registry, number)
    raw = read_original(config, registry, letter)
    if letter.is_fax_file:  # the fax itself is the document
        documents = [(letter.attachments[0].filename, raw)]
    else:  # names are safe and unique within one mail
        documents = [(a.filename, a.content)
                     for a in normalise(raw, limits=Limits.of(config.model.normalise)).attachments]
    # What the sender's supplements brought is in their own mails, named as the sender named it: a
    # name the letter (or an earlier supplement) has already is numbered, as a mail's second one is.
    taken = {name.casefold() for name, _ in documents}
    for attachment in letter.attachments:
        if attachment.origin != "supplement":
            continue
        content = attachment_content(config, registry, letter, attachment)
        if content is None:
            continue
        filename, n = attachment.filename, 1
        while filename.casefold() in taken:
            n += 1
            filename = numbered_variant(attachment.filename, n)
        taken.add(filename.casefold())
        documents.append((filename, content))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExtractRefused(f"cannot extract into {directory}: {exc.strerror or exc}") from None
    base = directory.resolve()
    targets = [(_free_target(base, filename), content) for filename, content in documents]
    folder = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    written: list[Path] = []
    try:
        for target, content in targets:
            try:
                # O_NOFOLLOW: a link put there since the check is not written through either;
                # O_NONBLOCK: nor does a pipe put there hold the command up.
                fd = os.open(target.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o644, dir_fd=folder)
            except OSError as exc:
                raise ExtractRefused(f"{target}: {exc.strerror or exc}; {len(written)} of {len(targets)} "
                                     "document(s) written before it") from None
            with open(fd, "wb") as out:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ExtractRefused(f"{target} is no longer a file; {len(written)} of {len(targets)} "
                                         "document(s) written before it")
                out.write(content)
            written.append(target)
    finally:
        os.close(folder)
    return written


def _free_target(base: Path, filename: str) -> Path:
    """base/filename if a document may be written there: nothing of that name yet, or a file."""
    from gateway.stages.normalise import safe_join

    where = "where an attachment would be written: nothing written (remove {}, or extract into another folder)"
    try:
        mode: int | None = (base / filename).lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise ExtractRefused(f"{base} holds a symbolic link named {filename!r} {where.format('the link')}")
    if mode is not None and stat.S_ISDIR(mode):
        raise ExtractRefused(f"{base} holds a folder named {filename!r} {where.format('the folder')}")
    if mode is not None and not stat.S_ISREG(mode):
        raise ExtractRefused(f"{base} holds something other than a file named {filename!r} {where.format('it')}")
    return safe_join(base, filename)  # one entry of the folder, whatever the name


def archive_packages(registry: Registry) -> list[dict[str, Any]]:
    return [{"month": p.month, "category": p.category, "kind": p.kind, "part": p.part, "path": p.path,
             "manifest": p.manifest, "letters": p.letters, "size": p.size, "sha256": p.sha256, "status": p.status,
             "created_at": iso(p.created_at), "verified_at": iso(p.verified_at)}
            for p in registry.archive_packages(None)]


def reindex_missing(registry: Registry, *, batch: int = 500) -> int:
    """Put letters registered before the search index existed into it; returns how many."""
    from gateway.registry.search import registered_terms

    done = 0
    while letters := registry.unindexed(batch):
        registry.index_letters([(letter.id, *registered_terms(letter)) for letter in letters])
        done += len(letters)
    return done
