"""From a paper letter's spool item to the plan of its letter.

The registry office registers a letter that came by post, by courier or over the front desk
(gateway/services/paper.py): its scans travel as one message whose attachments are the files as
scanned, and the spool item's meta carries what the office recorded (channel, sender, subject,
note, when it arrived). Like a fax, it is registered at once and classified once the text of its
scans is read.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from gateway.config import Config
from gateway.registry.plan import NewAttachment, NewLetter
from gateway.spool import SpoolItem
from gateway.stages.normalise import Limits, normalise
from gateway.stages.reference import LONGEST as REFERENCE_LONGEST

PAPER_CHANNELS = ("post", "courier", "front-desk")


def is_paper(meta: dict[str, Any]) -> bool:
    return "paper" in meta


def build_paper(config: Config, item: SpoolItem, raw: bytes, stored_path: Callable[[str], str]) -> NewLetter:
    """The plan of a paper letter; raises ValueError for an item whose record is not usable."""
    meta = item.meta
    paper: dict[str, Any] = meta["paper"]
    channel = meta.get("channel")
    if channel not in PAPER_CHANNELS:
        raise ValueError(f"a paper letter's channel must be one of {', '.join(PAPER_CHANNELS)}, not {channel!r}")
    sender: dict[str, str] = paper.get("sender") or {}
    if not str(sender.get("name", "")).strip():
        raise ValueError("a paper letter needs its sender's name")
    parsed = normalise(raw, summary_chars=config.model.normalise.summary_chars,
                       limits=Limits.of(config.model.normalise))
    if not parsed.attachments:
        raise ValueError("a paper letter without scans")
    sha = meta["sha256"]
    keys = [f"spool:{item.id}"] + ([str(meta["source_key"])] if meta.get("source_key") else [])
    received = datetime.fromisoformat(meta["received_at"])
    return NewLetter(
        intake_keys=keys, channel=channel, intake=str(meta.get("intake", "file")),
        received_at=received if received.tzinfo else received.replace(tzinfo=timezone.utc),
        raw_sha256=sha, raw_size=len(raw), raw_path=stored_path(sha),
        sender_name=sender["name"].strip(), sender_address=str(sender.get("email") or "").strip().lower(),
        recipients={}, recipient="", department=config.model.triage.department,
        subject=parsed.subject, sent_at=None, message_id=None, summary="", body_text="",
        # What the office recorded beyond the register's columns; the text comes from the scans.
        envelope={"paper": {"registered_by": paper.get("registered_by", ""), "note": paper.get("note", ""),
                            "pages": paper.get("pages")}},
        # The message is ours; without an e-mail address it has no From on purpose.
        defects=[d for d in parsed.defects if d != "message: missing From header"],
        flags=[*meta.get("flags", []), "ocr-pending"],
        attachments=[NewAttachment(a.filename, a.original_filename, a.declared_type, a.detected_type, a.size,
                                   a.sha256, "scan") for a in parsed.attachments],
        actor=str(paper.get("registered_by") or "gateway"), needs_ocr=True,
        sender_organisation=str(sender.get("organisation") or ""),
        sender_postal_address=str(sender.get("address") or ""), sender_phone=str(sender.get("phone") or ""),
        sender_reference=str(paper.get("reference") or "")[:REFERENCE_LONGEST],
    )
