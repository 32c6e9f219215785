"""What is known about a received fax besides its pages: who sent it, and when.

Three sources, in this order of trust: a HylaFAX-style information file beside
the fax (qfile `key:value` lines or `faxinfo` `Key: Value` output), the TIFF
tags written by the receiving fax server (ImageDescription carries the
sender's TSI, DateTime the time of reception), and a configurable pattern on
the file name. A field no source gives is recorded as missing, never guessed.
"""
from __future__ import annotations

import glob

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

FIELDS = ("number", "caller_id", "sender_name", "received", "pages")
SIDECAR_SUFFIXES = (".info", ".qf", ".txt")

# Keys seen in qfiles, faxinfo output and fax servers' own sidecars, per field.
_KEYS = {
    "number": {"sender", "tsi", "csid", "number", "faxnumber", "fax", "from", "remoteid", "remote_id"},
    "caller_id": {"callid1", "callid", "callerid", "caller_id", "cidnumber", "ani"},
    "sender_name": {"callid2", "cidname", "sendername", "sender_name", "name", "company"},
    "received": {"received", "receivetime", "receive_time", "date", "time", "datetime"},
    "pages": {"pages", "npages", "pagecount", "totpages", "page_count"},
}
_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_ -]*?)\s*[:=]\s*(.*?)\s*$")
_TIME_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S",
                 "%Y%m%d%H%M%S", "%Y%m%d-%H%M%S", "%Y-%m-%d %H:%M")
_NUMBERISH = re.compile(r"^\+?[0-9][0-9 ()./-]{2,}$")


@dataclass
class FaxFacts:
    number: str | None = None  # the sender's fax number (TSI/CSID)
    caller_id: str | None = None
    sender_name: str | None = None
    received: datetime | None = None
    declared_pages: int | None = None  # what the sender or fax server says, to compare with the count
    sources: dict[str, str] = field(default_factory=dict)  # field -> where it came from
    problems: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        return [name for name, value in (("number", self.number), ("caller_id", self.caller_id),
                                         ("sender_name", self.sender_name), ("received", self.received))
                if value is None]

    def as_meta(self) -> dict[str, Any]:
        return {"number": self.number, "caller_id": self.caller_id, "sender_name": self.sender_name,
                "received": self.received.isoformat() if self.received else None,
                "declared_pages": self.declared_pages, "sources": self.sources,
                "missing": self.missing(), "problems": self.problems}

    def offer(self, name: str, value: str | None, source: str, tz: ZoneInfo) -> None:
        """Take a value for a field that no more trusted source has given yet."""
        if value is None or not value.strip():
            return
        value = " ".join(value.split())
        if name == "pages":
            if self.declared_pages is None:
                if value.isdigit():
                    self.declared_pages = int(value)
                    self.sources["pages"] = source
                else:
                    self.problems.append(f"{source}: page count {value!r} is not a number")
            return
        if name == "received":
            if self.received is None:
                parsed = parse_time(value, tz)
                if parsed is None:
                    self.problems.append(f"{source}: time {value!r} not understood")
                else:
                    self.received = parsed
                    self.sources["received"] = source
            return
        if getattr(self, name) is None:
            setattr(self, name, value[:200])
            self.sources[name] = source


def parse_time(value: str, tz: ZoneInfo, formats: tuple[str, ...] = _TIME_FORMATS) -> datetime | None:
    value = value.strip()
    if value.isdigit() and len(value) in (9, 10):  # seconds since the epoch
        return datetime.fromtimestamp(int(value), timezone.utc)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
        for fmt in formats:
            try:
                parsed = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    # A fax server writes local time without a zone: the organisation's.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def sidecar_names(fax_name: str) -> list[str]:
    """The names a fax's information file may have, in the order they are looked for: foo.info
    for foo.tif, then foo.tif.info (and the other suffixes likewise)."""
    base = fax_name.rpartition(".")[0] or fax_name
    names = [*(base + s for s in SIDECAR_SUFFIXES), *(fax_name + s for s in SIDECAR_SUFFIXES)]
    return [name for name in names if name != fax_name]


def find_sidecar(fax_path: Path) -> Path | None:
    """The fax's information file beside it, if any. foo.info beside foo.tif and foo.pdf could be
    either's, and is neither's (see `shared_sidecar`); foo.tif.info is foo.tif's alone."""
    for name in sidecar_names(fax_path.name):
        if (candidate := fax_path.with_name(name)).is_file() and shared_sidecar(fax_path, name) is None:
            return candidate
    return None


def shared_sidecar(fax_path: Path, name: str) -> str | None:
    """Another fax file (by its name: .tif, .tiff, .pdf) whose information file `name` could be as
    well (foo.pdf, for foo.info beside foo.tif), or None when it fits this fax alone."""
    if name.startswith(fax_path.name + "."):
        return None
    base = name.rpartition(".")[0]
    for other in sorted(fax_path.parent.glob(glob.escape(base) + ".*")):
        if (other.name != fax_path.name and other.name.rpartition(".")[0] == base
                and other.suffix.lower() in (".tif", ".tiff", ".pdf") and other.is_file()):
            return other.name
    return None


def read_sidecar(text: str, facts: FaxFacts, source: str, tz: ZoneInfo) -> None:
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        key = match.group(1).lower().replace(" ", "").replace("-", "")
        for name, keys in _KEYS.items():
            if key in keys:
                facts.offer(name, match.group(2), source, tz)


def read_tiff_tags(tags: dict[str, str], facts: FaxFacts, tz: ZoneInfo) -> None:
    description = tags.get("ImageDescription", "").strip()
    # HylaFAX and most fax servers put the sender's TSI in ImageDescription.
    if description and _NUMBERISH.match(description):
        facts.offer("number", description, "TIFF ImageDescription", tz)
    if tags.get("DateTime"):
        facts.offer("received", tags["DateTime"], "TIFF DateTime", tz)


def read_filename(name: str, pattern: str | None, time_format: str, facts: FaxFacts, tz: ZoneInfo) -> None:
    if not pattern:
        return
    match = re.search(pattern, name)
    if not match:
        facts.problems.append(f"file name {name!r} does not match the configured pattern")
        return
    for group, value in match.groupdict().items():
        if value is None:
            continue
        if group == "received":
            parsed = parse_time(value, tz, (time_format, *_TIME_FORMATS))
            if parsed is None:
                facts.problems.append(f"file name: time {value!r} does not match {time_format!r}")
            elif facts.received is None:
                facts.received = parsed
                facts.sources["received"] = "file name"
        else:
            facts.offer(group, value.replace("_", " "), "file name", tz)


# The line a sending fax machine prints across the top of every page: its time, its number (TSI)
# and often its name, and the page as n/m, e.g. "2026-03-06 10:42  FROM: +86 21 6234 5679  P.01/02"
# or "MAR-06-2026 10:42 FROM ... P. 1".
_HEADER_NUMBER = re.compile(r"(?:FROM|TSI|FAX|TEL|传真|傳真)\s*[:：.]?\s*(\+?\d[\d ()-]{5,}\d)", re.IGNORECASE)
_HEADER_ANY_NUMBER = re.compile(r"(?<![\d:/.-])(\+?\d[\d ()-]{6,}\d)(?![\d:/.-])")
_HEADER_WHEN = re.compile(
    r"(?P<date>\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}|[A-Za-z]{3}[- ]\d{1,2}[- ,]+\d{4})"
    r"[ T,]*(?P<time>\d{1,2}:\d{2}(?::\d{2})?)?")
_HEADER_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y",
                        "%b-%d-%Y", "%b %d %Y", "%b-%d %Y")


def read_header_line(line: str, facts: FaxFacts, tz: ZoneInfo) -> None:
    """Offer what the sending machine's header line says (its number, the send time) to `facts`:
    taken only where the sidecar and the TIFF tags said nothing."""
    source = "fax header line"
    number = _HEADER_NUMBER.search(line) or _HEADER_ANY_NUMBER.search(line)
    if number:
        facts.offer("number", number.group(1).strip(), source, tz)
    when = _HEADER_WHEN.search(line)
    if when and facts.received is None:
        date = re.sub(r"[ ,]+", " ", when.group("date"))
        for fmt in _HEADER_DATE_FORMATS:
            try:
                day = datetime.strptime(date, fmt)
                break
            except ValueError:
                continue
        else:
            return
        if when.group("time"):
            hour, minute, *rest = (int(part) for part in when.group("time").split(":"))
            day = day.replace(hour=hour, minute=minute, second=rest[0] if rest else 0)
        facts.received = day.replace(tzinfo=tz)
        facts.sources["received"] = source
