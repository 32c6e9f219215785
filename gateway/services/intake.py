"""Taking a file in by hand (`gateway ingest`): spooled and registered like any other intake.

A message file (.eml) is spooled as it is; a fax file (TIFF, PDF) gets the same fax facts the
drop folder gives its faxes (sidecar, TIFF tags, file name), so the pipeline cannot tell them apart.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.stages.fax.facts import fax_facts
from gateway.config import Config
from gateway.faults import checkpoint
from gateway.spool import Spool, SpoolError
from gateway.stages.fax.document import FaxUnreadable, read_fax
from gateway.stages.fax.metadata import find_sidecar, is_fax_content

if TYPE_CHECKING:
    from gateway.daemon.pipeline import Pipeline

def file_meta(config: Config, path: Path, raw: bytes) -> dict[str, Any]:
    """The spool item's meta for a file taken in by hand. Raises FaxUnreadable for a broken fax."""
    meta: dict[str, Any] = {"channel": "email", "intake": "file",
                            "source": {"path": str(path.resolve()), "size": len(raw)}}
    if is_fax_content(raw):
        sidecar, skipped = find_sidecar(path, config.model.fax.ignore)
        fax = fax_facts(config, path, read_fax(raw, path.name), sidecar)
        for name, fits in skipped.items():
            others = ", ".join(other for other in fits if other != path.name)
            fax["problems"] = [*fax.get("problems", []), f"information file {name} not read: its name fits "
                               f"another fax as well ({others}); named {path.name}.info it is read"]
        meta.update(channel="fax", fax=fax)
    return meta


@dataclass(frozen=True)
class Ingested:
    """What became of one file."""

    path: Path
    # registered | duplicate | known | answer | released (registry down, stays spooled) |
    # retry | quarantined | refused (never spooled: unreadable file or fax, spool full)
    result: str
    number: str | None = None
    item_id: str | None = None
    reason: str | None = None


def ingest_file(config: Config, spool: Spool, pipeline: Pipeline, path: Path) -> Ingested:
    """Spool one file and push it through the pipeline at once, as the daemon would."""
    try:
        # Opened without waiting, and read only if a regular file: a FIFO or a device would hold
        # the command (and every file after it) until someone wrote to it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return Ingested(path, "refused", reason="not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as file:
                raw = file.read()
        finally:
            os.close(fd)
    except OSError as exc:
        return Ingested(path, "refused", reason=f"cannot read: {exc.strerror}")
    if not raw:  # as the fax drop and the paper form: no message, most likely a copy cut short
        return Ingested(path, "refused", reason="empty file: nothing to register")
    try:
        meta = file_meta(config, path, raw)
    except FaxUnreadable as exc:
        return Ingested(path, "refused", reason=str(exc))
    try:
        item = spool.enqueue(raw, meta, claim=True)
    except SpoolError as exc:
        return Ingested(path, "refused", reason=str(exc))
    checkpoint("after-spool")
    [outcome] = pipeline.process([item])
    return Ingested(path, outcome.result, outcome.number, outcome.item_id, outcome.reason)
