"""Trying the classification rules without registering anything: on files, as the daemon would
classify them, and on letters already registered (what the rules in force would decide now)."""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.plan import NewLetter
from gateway.registry.models import Attachment, Letter
from gateway.services.intake import file_meta
from gateway.services.queries import received_between
from gateway.spool import Spool
from gateway.stages.build import AnswerItem, LetterBuilder
from gateway.stages.fax.document import FaxUnreadable
from gateway.stages.fax.text import read_text
from gateway.stages.normalise import Limits
from gateway.stages.route import Routing, letter_facts, route_letter

CLASSIFICATION_FIELDS = ("category", "department", "urgency", "confidentiality")


@dataclass(frozen=True)
class FileDecision:
    """How the daemon would classify and route one file; or why it would not."""

    path: Path
    routing: Routing | None = None
    answers: str | None = None  # the letter this mail answers: recorded there, never classified
    unreadable: str | None = None  # a fax file that cannot be read (the daemon sets it aside)


def classify_file(config: Config, registry: Registry, path: Path, *, ocr: bool) -> FileDecision:
    """The file goes through the daemon's own steps in a scratch state directory: spooled with
    the meta `gateway ingest` gives it, built into a letter's plan, stored; a fax's text read (with
    `ocr`) by the daemon's reader; classified and routed. Nothing reaches the real spool, message
    store or register; the registry is only asked whether a mail answers one of its letters."""
    raw = path.read_bytes()
    try:
        meta = file_meta(config, path, raw)
    except FaxUnreadable as exc:
        return FileDecision(path, unreadable=str(exc))
    with tempfile.TemporaryDirectory(prefix="gateway-rules-") as scratch_dir:
        scratch = dataclasses.replace(config, state_dir=Path(scratch_dir))
        spool = Spool(scratch.spool_dir, scratch.message_dir)
        item = spool.enqueue(raw, meta, claim=True)
        builder = LetterBuilder(scratch, registry.answered_letter,
                                lambda sha: str(spool.stored_path(sha).relative_to(scratch.state_dir)))
        try:
            built = builder.build(item)
        except BaseException:
            spool.discard(item)
            raise
        spool.finish(item, item.meta["sha256"])
        if isinstance(built, AnswerItem):
            return FileDecision(path, answers=built.answer.number)
        if built.routing is not None:
            return FileDecision(path, routing=built.routing)
        # A fax is classified once its text is read; without `ocr`, on what is known without it.
        text = ""
        if ocr:
            settings = config.model.fax
            text = read_text(str(scratch.state_dir / built.raw_path), settings.ocr_languages,
                             settings.ocr_timeout_seconds, Limits.of(config.model.normalise),
                             reader=settings.ocr_reader, min_confidence=settings.ocr_min_confidence)[0]
        letter = _as_letter(built, text)
        return FileDecision(path, routing=route_letter(scratch, letter))


def _as_letter(new: NewLetter, text: str) -> Letter:
    """The letter as the registry would hold it once its text is read (never stored)."""
    # As the registry stores the text read: after the mail's own text, if it has any.
    body = f"{new.body_text.rstrip()}\n\n{text}".strip() if new.body_text.strip() else text
    return Letter(channel=new.channel, intake=new.intake, received_at=new.received_at,
                  sender_name=new.sender_name, sender_address=new.sender_address, recipients=new.recipients,
                  recipient=new.recipient, subject=new.subject, body_text=body, envelope=new.envelope,
                  flags=[f for f in new.flags if f != "ocr-pending"], raw_path=new.raw_path,
                  raw_sha256=new.raw_sha256, raw_size=new.raw_size,
                  fax_number=new.fax.get("number"), fax_caller_id=new.fax.get("caller_id"),
                  fax_sender_name=new.fax.get("sender_name"), fax_pages=new.fax.get("pages"),
                  attachments=[Attachment(position=n, filename=a.filename, original_filename=a.original_filename,
                                          declared_type=a.declared_type, detected_type=a.detected_type,
                                          size=a.size, sha256=a.sha256, origin=a.origin)
                               for n, a in enumerate(new.attachments)])


@dataclass(frozen=True)
class Replay:
    replayed: int
    letters: list[dict[str, Any]]  # those that would change (or all, when asked)
    rules_version: str

    @property
    def would_change(self) -> int:
        return sum(1 for r in self.letters if r["changes"])


def replay(config: Config, registry: Registry, *, since: date, until: date | None,
           show_all: bool = False) -> Replay:
    """How the rules in force would classify the letters received in those local days. Changes nothing."""
    start, end = received_between(config, since, until)
    rows = registry.letters(since=start, until=end, with_attachments=True)
    report = []
    for letter in rows:
        if letter.classification is None:
            continue  # not classified yet: a fax waiting for its text
        decision = config.ruleset.classify(letter_facts(config, letter))
        then = letter.classification.get("result", {})
        now = decision.trace()["result"]
        changes = {f: [then.get(f), now.get(f)] for f in CLASSIFICATION_FIELDS if then.get(f) != now.get(f)}
        if changes or show_all:
            report.append({"number": letter.number, "changes": changes,
                           "rules_then": [m["rule"] for m in letter.classification.get("matched", [])],
                           "rules_now": [m["rule"] for m in decision.matched],
                           "department_now": letter.department,
                           "reassigned_by_person": letter.department != then.get("department")})
    return Replay(len(rows), report, config.ruleset.version)
