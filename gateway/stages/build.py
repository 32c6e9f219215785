"""From a spool item to the plan of a letter (or of an answer to one): normalise, read a fax's
pages, classify and route — all as plain data for the registry, nothing written here.

Everything that can fail because of the item itself happens here, so the caller can retry
or quarantine that item alone.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.registry.intake import sent_key
from gateway.registry.outward import FollowUp
from gateway.registry.plan import Answer, NewAttachment, NewLetter
from gateway.spool import SpoolItem
from gateway.stages.addresses import is_internal
from gateway.stages.answers import (FORWARD, FindSenderThread, bracketed_numbers, follow_up_of, own_text,
                                    parse_command, signature_keys)
from gateway.stages.autoreply import automatic_reason
from gateway.stages.check import Checker, TrustPolicy, make_resolver, parse_relays, vouched_places
from gateway.stages.classify.facts import facts_from_mail, header_map, returned_headers
from gateway.stages.fax.document import FaxUnreadable, read_fax
from gateway.stages.fax.metadata import FaxFacts, fax_subject, parse_time
from gateway.stages.normalise import Limits, Normalised, normalise
from gateway.stages.normalise.filenames import safe_filename
from gateway.stages.paper import build_paper, is_paper
from gateway.stages.reference import find_reference
from gateway.stages.route import IMPORTED, route
from gateway.stages.tokens import check_reply_token, find_reply_tokens, has_loop_marker, loop_content

FAX_SENDER_UNPROVEN = "fax-sender-unproven"  # fax-to-email whose sender nothing proved

# The letter a mail answers, if any: (numbers in its subject, Message-IDs it replies to) -> number.
FindAnswered = Callable[[list[str], list[str]], "str | None"]


@dataclass(frozen=True)
class AnswerItem:
    """A department's answer to one of our letters: recorded on that letter, not registered anew."""

    answer: Answer
    keys: list[str]
    sha256: str
    raw_path: str
    received_at: datetime
    trust: dict[str, Any] = field(default_factory=dict)  # the check stage's verdict of the answer's sender
    follow_up: FollowUp | None = None  # not a department's answer: the letter's sender writing back



def _parse_time(value: str | None) -> datetime:
    if value:
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


class LetterBuilder:
    """Builds the plan for each item, with the configuration in force and a way to look up the
    letter a reply answers (a read of the registry, never a write)."""

    def __init__(self, config: Config, answered_letter: FindAnswered, stored_path: Callable[[str], str],
                 sender_thread: FindSenderThread | None = None):
        self.config = config
        self.answered_letter = answered_letter
        self.sender_thread = sender_thread  # the letter a sender's follow-up or rating is about
        self.stored_path = stored_path  # sha256 -> the raw copy's path, relative to the state directory
        self._checker: tuple[Config, Checker] | None = None

    def checker(self) -> Checker:
        """The check stage for the configuration in force (built again after a reload)."""
        if self._checker is None or self._checker[0] is not self.config:
            trust = self.config.model.trust
            self._checker = (self.config, Checker(
                make_resolver(trust.nameservers, trust.timeout_seconds, trust.lifetime_seconds),
                TrustPolicy(frozenset(trust.trusted_authserv_ids), trust.dmarc_policy == "refuse",
                            tuple(self.config.model.gateway.domains), parse_relays(trust.trusted_relays),
                            trust.check_deadline_seconds),
                self.config.auth_user_may_send_as))
        return self._checker[1]

    def build(self, item: SpoolItem, *, may_refuse: bool = False) -> NewLetter | AnswerItem:
        """Everything that can fail because of the item itself happens here.

        With may_refuse (an SMTP client still waits for the answer), mail the DMARC policy in
        force refuses raises DmarcRefused instead of being built."""
        raw = item.raw  # checked against the spool seal while reading
        meta = item.meta
        if meta.get("channel") == "fax" and "fax" in meta:  # a fax file, not a mail
            return _storable(self._build_fax_file(item, raw))
        if is_paper(meta):  # registered by the registry office: its record is in the meta
            return _storable(build_paper(self.config, item, raw, self.stored_path))
        sha = meta["sha256"]
        parsed: Normalised = normalise(raw, summary_chars=self.config.model.normalise.summary_chars,
                                       limits=Limits.of(self.config.model.normalise))
        envelope: dict[str, Any] = meta.get("envelope") or {}
        rcpts = [r.lower() for r in envelope.get("rcpt_to", [])]
        to = [a.address for a in parsed.to]
        flags = list(meta.get("flags", []))
        trust = self.checker().check(raw, parsed.sender.address if parsed.sender else "", parsed.header_fields,
                                     envelope, str(meta.get("intake", "file")), may_refuse=may_refuse,
                                     sender_field=parsed.sender_field,
                                     outside_mailbox=(meta.get("imap") or {}).get("authentication_results") is False
                                     ).as_dict()
        flags += [f for f in trust["flags"] if f not in flags]
        hint = meta.get("department_hint") if meta.get("department_hint") in self.config.departments else None
        if hint:
            envelope = {**envelope, "department_hint": hint}  # the mailbox it came from belongs to someone
        keys = [f"spool:{item.id}"]
        if meta.get("source_key"):
            keys.append(str(meta["source_key"]))
        sent = _as_sent(raw, meta)
        if sent is not None:
            keys.append(sent_key(sent))
        fax: dict[str, Any] = {}
        channel, needs_ocr, defects = meta.get("channel", "email"), False, list(parsed.defects)
        if parsed.sender and self.config.model.fax.email.is_fax_service(parsed.sender.address):
            channel = "fax"
            fax, needs_ocr, fax_flags, fax_defects = fax_from_mail(self.config, parsed)
            flags += fax_flags
            defects += fax_defects
            if not trust["authenticated"]:
                # Its From alone made it a fax, with the number and sender it writes: anyone can
                # write those. It is taken as a fax all the same (its content is one), and shown
                # as not proven to come from the fax service.
                flags.append(FAX_SENDER_UNPROVEN)
        received_at = _parse_time(meta.get("received_at"))
        # A sender writing back about their letter (old mail imported as backlog is not writing back now).
        follow = follow_up_of(parsed, envelope_from=envelope.get("mail_from"),
                              domains=self.config.model.gateway.domains,
                              proven_address=trust["address"] if trust["authenticated"] else None,
                              find=self.sender_thread) \
            if self.sender_thread and channel == "email" and "backlog" not in flags else None
        # Mail imported from another system was answered there: never a command for a letter here.
        answer = Answer(follow.number, follow.sender, None, "", follow.text) if follow else \
            None if IMPORTED in flags else self._answer(parsed, channel, rcpts, envelope.get("mail_from"), trust)
        if answer is not None:
            # The same answer again (the same bytes, or the same mail through another mailbox)
            # is recognised, not obeyed twice.
            keys.append(f"answer:{sent or sha}")
            if parsed.message_id:
                keys.append(f"answer-message-id:{parsed.message_id[:400]}")
            keys += signature_keys(parsed.header_fields)
            return AnswerItem(answer, keys, sha, self.stored_path(sha),
                              received_at, trust=trust, follow_up=follow)
        routing = None
        if not needs_ocr:  # a fax with pages to read is classified once its text is known
            facts = facts_from_mail(parsed, channel=channel, envelope_rcpts=rcpts, mailbox_department=hint,
                                    fax_number=fax.get("number"), trust=trust,
                                    returned=returned_headers(raw, parsed.header_fields),
                                    loop_content=loop_content(raw) if has_loop_marker(
                                        self.config, header_map(parsed.header_fields)) else "")
            routing = route(self.config, facts, received_at=received_at, envelope_from=envelope.get("mail_from"),
                            backlog="backlog" in flags, flags=flags)
        return _storable(NewLetter(
            intake_keys=keys,
            channel=channel,
            intake=meta.get("intake", "file"),
            received_at=received_at,
            raw_sha256=sha,
            raw_size=len(raw),
            raw_path=self.stored_path(sha),
            sender_name=parsed.sender.name if parsed.sender else "",
            sender_address=parsed.sender.address if parsed.sender else "",
            recipients={"to": [vars(a) for a in parsed.to], "cc": [vars(a) for a in parsed.cc],
                        "envelope": rcpts},
            recipient=(rcpts or to or [""])[0],
            department=routing.department if routing else self.config.model.triage.department,
            subject=parsed.subject,
            sent_at=parsed.date,
            message_id=parsed.message_id,
            summary=parsed.summary,
            body_text=parsed.body_text,
            sender_reference=find_reference(parsed.subject, parsed.body_text),
            envelope=envelope,
            defects=defects,
            flags=flags,
            attachments=[NewAttachment(a.filename, a.original_filename, a.declared_type, a.detected_type,
                                       a.size, a.sha256, a.origin) for a in parsed.attachments],
            fax=fax,
            needs_ocr=needs_ocr,
            routing=routing,
            trust=trust,
        ))

    def _answer(self, parsed: Normalised, channel: str, rcpts: list[str], envelope_from: str | None,
                trust: dict[str, Any]) -> Answer | None:
        """Is this a department answering one of our notifications? It names the letter by the
        number in its subject, by the mail of ours it replies to, or by the signed reply address it
        was sent to. From the organisation's domains that makes it an answer (whether it is obeyed
        is decided later, from its authentication and reply token); from anyone else only a reply
        address issued to that very sender does, or it is correspondence, registered as a letter."""
        if channel != "email" or parsed.sender is None:
            return None
        sender = parsed.sender.address.lower()
        if FORWARD.match(parsed.subject):
            return None  # someone passing on mail: correspondence of its own, not an answer
        addresses = [*rcpts, *(a.address for a in [*parsed.to, *parsed.cc])]
        tokens = find_reply_tokens(self.config, addresses)
        internal = is_internal(sender, self.config.model.gateway.domains)
        if not internal and not tokens:
            return None
        numbers = bracketed_numbers(parsed.subject)
        ids = [i for i in [parsed.in_reply_to, *parsed.references] if i]
        number = self.answered_letter(numbers, ids) if numbers or ids else None
        by_token = [t.number for t in tokens if t.number]
        if number is None and by_token:
            number = self.answered_letter(by_token, [])
        if number is None:
            return None
        if not internal and not any(check_reply_token(self.config, t, number, sender) is None for t in tokens):
            return None
        text = own_text(parsed.body_text)
        # An absence notice or a server's rule answering our notification (RFC 3834) is recorded,
        # never obeyed: its first line ("Received", "收到") was not written to this letter.
        automatic = automatic_reason(header_map(parsed.header_fields), envelope_from)
        command, argument = (None, "") if automatic else parse_command(text)
        vouched = vouched_places(trust, parsed.header_fields, envelope_from)
        places = {"envelope": rcpts, "to": [a.address for a in parsed.to], "cc": [a.address for a in parsed.cc]}
        reply: dict[str, bool] = {}  # our reply addresses, and whether a place the proof covers names them
        for place, found in places.items():
            for address in found:
                if find_reply_tokens(self.config, [address]):
                    reply[address.lower()] = reply.get(address.lower(), False) or place in vouched
        return Answer(number, sender, command, argument, text, [a for a, ok in reply.items() if ok], automatic,
                      unvouched_addresses=[a for a, ok in reply.items() if not ok])

    def _build_fax_file(self, item: SpoolItem, raw: bytes) -> NewLetter:
        """A fax from the drop folder: its pages counted again from the bytes, its facts from intake."""
        meta = item.meta
        facts: dict[str, Any] = meta.get("fax") or {}
        name = str(facts.get("file_name") or "fax")
        document = read_fax(raw, name)  # FaxUnreadable is the item's fault: retried, then quarantined
        flags = list(meta.get("flags", []))
        defects = [f"fax: {field.replace('_', ' ')} unknown" for field in facts.get("missing", [])]
        defects += [f"fax: {problem}" for problem in facts.get("problems", [])]
        declared = facts.get("declared_pages")
        if declared is not None and declared != document.page_count:
            flags.append("partial-reception")
            defects.append(f"fax: {declared} page(s) announced, {document.page_count} received")
        flags += ["ocr-pending"]
        number, sender = facts.get("number"), facts.get("sender_name")
        subject = fax_subject(number, sender, document.page_count)
        sha = meta["sha256"]
        keys = [f"spool:{item.id}"] + ([str(meta["source_key"])] if meta.get("source_key") else [])
        return NewLetter(
            intake_keys=keys, channel="fax", intake=meta.get("intake", "fax-drop"),
            received_at=_parse_time(meta.get("received_at")),
            raw_sha256=sha, raw_size=len(raw),
            raw_path=self.stored_path(sha),
            sender_name=sender or "", sender_address="", recipients={}, recipient="",
            department=self.config.model.triage.department, subject=subject,
            sent_at=None, message_id=None, summary="", body_text="", envelope={},
            defects=defects, flags=flags,
            attachments=[NewAttachment(safe_filename(name), name, "", _detected_type(raw), len(raw), sha, "fax")],
            fax={"number": number, "caller_id": facts.get("caller_id"), "sender_name": sender,
                 "pages": document.page_count, "sent_at": _parse_optional(facts.get("received"))},
            needs_ocr=True,
        )


def _as_sent(raw: bytes, meta: dict[str, Any]) -> str | None:
    """The SHA-256 of the message as its SMTP client sent it: the bytes after the Received: header
    the listener put first (its session id and time differ on every attempt). None for other intakes."""
    trace = meta.get("trace_bytes")
    if not isinstance(trace, int) or not 0 < trace <= len(raw):
        return None
    return hashlib.sha256(memoryview(raw)[trace:]).hexdigest()


def _parse_optional(value: str | None) -> datetime | None:
    return _parse_time(value) if value else None


def _detected_type(data: bytes) -> str:
    import magic

    return str(magic.from_buffer(data, mime=True))


def fax_from_mail(config: Config, parsed: Normalised) -> tuple[dict[str, Any], bool, list[str], list[str]]:
    """Fax-to-email: the fax fields from the subject and body, the pages from the attachment(s).

    Returns the fax fields, whether there is a document to read, flags and defects.
    """
    settings = config.model.fax.email
    tz = ZoneInfo(config.model.gateway.timezone)
    facts = FaxFacts()
    for pattern, text, source in ((settings.subject_pattern, parsed.subject, "subject"),
                                  (settings.body_pattern, parsed.body_text, "body")):
        match = re.search(pattern, text) if pattern else None
        for group, value in (match.groupdict() if match else {}).items():
            if group == "received" and value:
                parsed_time = parse_time(value, tz, (settings.time_format,))
                if parsed_time is not None and facts.received is None:
                    facts.received = parsed_time
            else:
                facts.offer(group, value, source, tz)
    flags: list[str] = []
    defects = [f"fax: {field.replace('_', ' ')} unknown" for field in facts.missing()
               if field in ("number", "received")]
    documents = []
    for attachment in parsed.attachments:
        try:
            documents.append(read_fax(attachment.content, attachment.filename))
        except FaxUnreadable:
            continue
    pages = sum(d.page_count for d in documents)
    if not documents:
        flags.append("partial-reception")
        defects.append("fax: the fax mail carries no TIFF or PDF document")
    elif facts.declared_pages is not None and facts.declared_pages != pages:
        flags.append("partial-reception")
        defects.append(f"fax: {facts.declared_pages} page(s) announced, {pages} received")
    if documents:
        flags.append("ocr-pending")
    fax = {"number": facts.number, "caller_id": facts.caller_id, "sender_name": facts.sender_name,
           "pages": pages if documents else 0, "sent_at": facts.received}
    return fax, bool(documents), flags, defects


_NUL = "\x00"


def _clean(value: Any) -> Any:
    """PostgreSQL refuses NUL in text and JSON; a hostile message must still register."""
    if isinstance(value, str):
        return value.replace(_NUL, "\ufffd") if _NUL in value else value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _storable(new: NewLetter) -> NewLetter:
    for name, value in vars(new).items():
        if name != "attachments":
            setattr(new, name, _clean(value))
    for attachment in new.attachments:
        for name, value in vars(attachment).items():
            setattr(attachment, name, _clean(value))
    return new


