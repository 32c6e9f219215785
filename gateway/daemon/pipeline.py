"""The stages an item goes through after intake: normalise, then register.

A worker's whole contract is `process(items)`: every claimed item leaves it
finished (registered, its file kept as the raw copy), failed (back in line
with a backoff, or quarantined) or released (the registry is down; not the
item's fault, so the attempt does not count).
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from gateway.stages.classify.facts import facts_from_mail
from gateway.config import Config
from gateway.stages.fax.document import FaxUnreadable, read_fax
from gateway.stages.fax.metadata import FaxFacts, parse_time
from gateway.faults import checkpoint
from gateway.stages.normalise import Normalised, normalise
from gateway.stages.normalise.filenames import safe_filename
from gateway.stages.route import route
from gateway.registry import Answer, NewAttachment, NewLetter, Registered, Registry, RegistryUnavailable
from gateway.services.letters import LetterSteps
from gateway.stages.answers import FORWARD, bracketed_numbers, own_text, parse_command
from gateway.spool import Spool, SpoolItem

log = logging.getLogger("gateway.daemon.pipeline")

Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class AnswerItem:
    """A department's answer to one of our letters: recorded on that letter, not registered anew."""

    answer: Answer
    keys: list[str]
    sha256: str
    raw_path: str
    received_at: datetime


@dataclass(frozen=True)
class Outcome:
    item_id: str
    result: str  # registered | duplicate | known | answer | retry | quarantined | released
    number: str | None = None
    reason: str | None = None


def _parse_time(value: str | None) -> datetime:
    if value:
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


class Pipeline:
    def __init__(self, config: Config, spool: Spool, registry: Registry,
                 publish: Publish | None = None):
        self.config = config
        self.spool = spool
        self.registry = registry
        self.publish = publish or (lambda topic, body: None)
        self.steps = LetterSteps(config, registry)

    def build(self, item: SpoolItem) -> NewLetter | AnswerItem:
        """Everything that can fail because of the item itself happens here."""
        raw = item.raw  # checked against the spool seal while reading
        meta = item.meta
        if meta.get("channel") == "fax" and "fax" in meta:  # a fax file, not a mail
            return _storable(self._build_fax_file(item, raw))
        sha = meta["sha256"]
        parsed: Normalised = normalise(raw, summary_chars=self.config.model.normalise.summary_chars)
        envelope: dict[str, Any] = meta.get("envelope") or {}
        rcpts = [r.lower() for r in envelope.get("rcpt_to", [])]
        to = [a.address for a in parsed.to]
        cc = [a.address for a in parsed.cc]
        flags = list(meta.get("flags", []))
        hint = meta.get("department_hint") if meta.get("department_hint") in self.config.departments else None
        if hint:
            envelope = {**envelope, "department_hint": hint}  # the mailbox it came from belongs to someone
        keys = [f"spool:{item.id}"]
        if meta.get("source_key"):
            keys.append(str(meta["source_key"]))
        channel, fax, needs_ocr, defects = meta.get("channel", "email"), {}, False, list(parsed.defects)
        if parsed.sender and self.config.model.fax.email.is_fax_service(parsed.sender.address):
            channel = "fax"
            fax, needs_ocr, fax_flags, fax_defects = fax_from_mail(self.config, parsed)
            flags += fax_flags
            defects += fax_defects
        received_at = _parse_time(meta.get("received_at"))
        answer = self._answer(parsed, channel)
        if answer is not None:
            # The same answer again (the same bytes, or the same mail through another mailbox)
            # is recognised, not obeyed twice.
            keys.append(f"answer:{sha}")
            if parsed.message_id:
                keys.append(f"answer-message-id:{parsed.message_id[:400]}")
            return AnswerItem(answer, keys, sha, str(self.spool.stored_path(sha).relative_to(self.config.state_dir)),
                              received_at)
        routing = None
        if not needs_ocr:  # a fax with pages to read is classified once its text is known
            facts = facts_from_mail(parsed, channel=channel, envelope_rcpts=rcpts, mailbox_department=hint,
                                    fax_number=fax.get("number"))
            routing = route(self.config, facts, received_at=received_at, envelope_from=envelope.get("mail_from"),
                            backlog="backlog" in flags)
        return _storable(NewLetter(
            intake_keys=keys,
            channel=channel,
            intake=meta.get("intake", "file"),
            received_at=received_at,
            raw_sha256=sha,
            raw_size=len(raw),
            raw_path=str(self.spool.stored_path(sha).relative_to(self.config.state_dir)),
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
            envelope=envelope,
            defects=defects,
            flags=flags,
            attachments=[NewAttachment(a.filename, a.original_filename, a.declared_type, a.detected_type,
                                       a.size, a.sha256, a.origin) for a in parsed.attachments],
            fax=fax,
            needs_ocr=needs_ocr,
            routing=routing,
        ))

    def _answer(self, parsed: Normalised, channel: str) -> Answer | None:
        """Is this a department answering one of our notifications? Only people of the
        organisation answer; anyone else's reply is correspondence, registered as a letter."""
        if channel != "email" or parsed.sender is None:
            return None
        sender = parsed.sender.address.lower()
        domain = sender.rpartition("@")[2]
        if not any(domain == d or domain.endswith("." + d) for d in self.config.model.gateway.domains):
            return None
        if FORWARD.match(parsed.subject):
            return None  # someone passing on mail: correspondence of its own, not an answer
        numbers = bracketed_numbers(parsed.subject)
        ids = [i for i in [parsed.in_reply_to, *parsed.references] if i]
        if not numbers and not ids:
            return None
        number = self.registry.answered_letter(numbers, ids)
        if number is None:
            return None
        text = own_text(parsed.body_text)
        command, argument = parse_command(text)
        return Answer(number, sender, command, argument, text)

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
        subject = f"Fax from {number or 'an unknown number'}{f' ({sender})' if sender else ''}, " \
                  f"{document.page_count} page(s)"
        sha = meta["sha256"]
        keys = [f"spool:{item.id}"] + ([str(meta["source_key"])] if meta.get("source_key") else [])
        return NewLetter(
            intake_keys=keys, channel="fax", intake=meta.get("intake", "fax-drop"),
            received_at=_parse_time(meta.get("received_at")),
            raw_sha256=sha, raw_size=len(raw),
            raw_path=str(self.spool.stored_path(sha).relative_to(self.config.state_dir)),
            sender_name=sender or "", sender_address="", recipients={}, recipient="",
            department=self.config.model.triage.department, subject=subject,
            sent_at=None, message_id=None, summary="", body_text="", envelope={},
            defects=defects, flags=flags,
            attachments=[NewAttachment(safe_filename(name), name, "", _detected_type(raw), len(raw), sha, "fax")],
            fax={"number": number, "caller_id": facts.get("caller_id"), "sender_name": sender,
                 "pages": document.page_count, "sent_at": _parse_optional(facts.get("received"))},
            needs_ocr=True,
        )

    def process(self, items: list[SpoolItem], *, discard_when_unavailable: bool = False) -> list[Outcome]:
        """Normalise and register a batch. With discard_when_unavailable (an intake
        that can still answer "try again", like SMTP), items the registry could
        not take are deleted instead of kept, so that the retry is the only copy."""
        outcomes: list[Outcome] = []
        ready: list[tuple[SpoolItem, NewLetter]] = []
        for item in items:
            try:
                built = self.build(item)
            except Exception as exc:  # one bad item never blocks the others
                outcomes.append(self._failed(item, f"cannot read item: {type(exc).__name__}: {exc}"))
                item.forget_raw()
                continue
            item.forget_raw()  # a batch of large messages must not stay in memory
            if isinstance(built, AnswerItem):
                outcomes.append(self._record_answer(item, built, discard_when_unavailable))
            else:
                ready.append((item, built))
        if not ready:
            return outcomes
        checkpoint("before-commit")
        try:
            results = self.registry.register([new for _, new in ready])
        except RegistryUnavailable as exc:
            if discard_when_unavailable:
                log.warning("registry unavailable, %d item(s) refused for a retry by the sender: %s",
                            len(ready), exc)
            else:
                log.warning("registry unavailable, %d item(s) stay spooled: %s", len(ready), exc)
            return outcomes + [self._unavailable(item, exc, discard_when_unavailable) for item, _ in ready]
        except Exception:
            # Try each alone: the one that fails must not hold back the rest.
            for item, new in ready:
                outcomes += self._register_alone(item, new, discard_when_unavailable)
            return outcomes
        checkpoint("after-commit")
        for (item, new), result in zip(ready, results, strict=True):
            outcomes.append(self._finish(item, new, result))
        return outcomes

    def _record_answer(self, item: SpoolItem, answer: AnswerItem, discard_when_unavailable: bool) -> Outcome:
        try:
            result = self.steps.record_answer(answer.answer, keys=answer.keys, raw_sha256=answer.sha256,
                                              raw_path=answer.raw_path, received_at=answer.received_at)
        except RegistryUnavailable as exc:
            return self._unavailable(item, exc, discard_when_unavailable)
        except Exception as exc:
            log.exception("item %s: answer not recorded", item.id)
            return self._failed(item, f"answer not recorded: {type(exc).__name__}: {exc}")
        try:
            self.spool.finish(item, answer.sha256)
        except OSError as exc:
            log.error("%s: answer recorded, but its spool file could not be moved to the store: %s",
                      result.number, exc)
            item._unlock()
        a = answer.answer
        log.info("%s: answer from %s%s", result.number, a.sender,
                 f": {a.command} {a.argument}".rstrip() if a.command else " (no command)")
        try:
            self.publish(f"letter.{result.outcome}", {"number": result.number, "status": result.status,
                                                      "item": item.id, "at": time.time()})
        except Exception:
            log.exception("%s: event not published", result.number)
        return Outcome(item.id, result.outcome, result.number)

    def _register_alone(self, item: SpoolItem, new: NewLetter, discard_when_unavailable: bool) -> list[Outcome]:
        try:
            [result] = self.registry.register([new])
        except RegistryUnavailable as exc:
            return [self._unavailable(item, exc, discard_when_unavailable)]
        except Exception as exc:
            log.exception("item %s: registration failed", item.id)
            return [self._failed(item, f"registration failed: {type(exc).__name__}: {exc}")]
        return [self._finish(item, new, result)]

    def _unavailable(self, item: SpoolItem, exc: Exception, discard: bool) -> Outcome:
        (self.spool.discard if discard else self.spool.release)(item)
        return Outcome(item.id, "released", reason=str(exc))

    def _finish(self, item: SpoolItem, new: NewLetter, result: Registered) -> Outcome:
        # Committed: from here on nothing may undo the registration or lose the bytes.
        try:
            self.spool.finish(item, new.raw_sha256)
        except OSError as exc:
            # The file stays in work/; recover() brings it back and it is recognised as known.
            log.error("%s registered, but its spool file could not be moved to the store: %s",
                      result.number, exc)
            item._unlock()
        if result.outcome == "registered":
            sender = f"{new.sender_name} <{new.sender_address}>" if new.sender_name else f"<{new.sender_address}>"
            log.info("%s registered: %s from %s, %d attachment(s)%s", result.number,
                     _quote(new.subject), sender, len(new.attachments),
                     f", {len(new.defects)} defect(s)" if new.defects else "")
        elif result.outcome == "duplicate":
            log.info("%s received again (same bytes, item %s): recorded as an event", result.number, item.id)
        try:
            self.publish(f"letter.{result.outcome}", {
                "number": result.number, "status": result.status, "channel": new.channel,
                "department": new.department, "item": item.id, "at": time.time()})
        except Exception:
            log.exception("%s: event not published", result.number)
        return Outcome(item.id, result.outcome, result.number)

    def _failed(self, item: SpoolItem, reason: str) -> Outcome:
        quarantined = self.spool.fail(item, reason)
        if quarantined:
            log.error("item %s quarantined after %d attempts: %s", item.id, item.attempts + 1, reason)
            self.publish("item.quarantined", {"item": item.id, "reason": reason, "at": time.time()})
            return Outcome(item.id, "quarantined", reason=reason)
        log.warning("item %s failed (attempt %d of %d), will retry: %s", item.id, item.attempts + 1,
                    self.spool.max_attempts, reason)
        return Outcome(item.id, "retry", reason=reason)


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


def _quote(text: str, limit: int = 80) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
