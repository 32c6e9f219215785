"""What is known about a fax file before its pages are read: from its sidecar, its TIFF tags and
its name. One function for the drop folder and for `gateway ingest`, so both build the same item."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.stages.fax.document import FaxDocument
from gateway.stages.fax.metadata import FaxFacts, read_filename, read_sidecar, read_tiff_tags


def read_sidecar_text(sidecar: Path | None) -> str | None:
    if sidecar is None:
        return None
    try:
        return sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def fax_facts(config: Config, path: Path, document: FaxDocument | None, sidecar: Path | None,
              sidecar_text: str | None = None) -> dict[str, Any]:
    """Everything known about a fax file, for its spool item: sidecar, then TIFF tags, then name.
    Without a document (a file that is no readable fax) only the sidecar and the name speak.
    `sidecar_text`: the sidecar's content read already (else it is read from `sidecar`)."""
    tz = ZoneInfo(config.model.gateway.timezone)
    facts = FaxFacts()
    if sidecar is not None:
        text = read_sidecar_text(sidecar) if sidecar_text is None else sidecar_text
        if text is None:
            facts.problems.append(f"sidecar {sidecar.name} cannot be read")
        else:
            read_sidecar(text, facts, f"sidecar {sidecar.name}", tz)
    if document is not None:
        read_tiff_tags(document.tags, facts, tz)
    settings = config.model.fax
    read_filename(path.name, settings.filename_pattern, settings.filename_time_format, facts, tz)
    if document is None:
        return {**facts.as_meta(), "file_name": path.name}
    return {**facts.as_meta(), "file_name": path.name, "kind": document.kind, "pages": document.page_count,
            "resolution": sorted({p.resolution for p in document.pages})}
