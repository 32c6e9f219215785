"""What is known about a received fax besides its pages: who sent it, and when.

Three sources, in this order of trust: a HylaFAX-style information file beside
the fax (qfile `key:value` lines or `faxinfo` `Key: Value` output), the TIFF
tags written by the receiving fax server (ImageDescription carries the
sender's TSI, DateTime the time of reception), and a configurable pattern on
the file name. A field no source gives is recorded as missing, never guessed.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

FIELDS = ("number", "caller_id", "sender_name", "received", "pages")
SIDECAR_SUFFIXES = (".info", ".qf", ".txt")
LONE_INFORMATION_WAIT = 3  # times [fax] stable_seconds an information file waits for its fax in the drop folder

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


def fax_subject(number: str | None, sender: str | None, pages: int) -> str:
    """The subject the gateway gives a fax it reads from a file (which has none of its own). The
    web register recognises exactly this form to word it in a page's language."""
    return f"Fax from {number or 'an unknown number'}{f' ({sender})' if sender else ''}, {pages} page(s)"


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


FAX_MAGIC = (b"II*\0", b"MM\0*", b"%PDF-")  # TIFF (either byte order), PDF


def is_fax_content(raw: bytes) -> bool:
    """A fax document (TIFF or PDF) by its first bytes, whatever the file is called."""
    return raw.startswith(FAX_MAGIC)


def is_information_file(name: str) -> bool:
    """Named like an information file (foo.info, foo.tif.qf): never taken as a fax."""
    return "." in name and "." + name.rpartition(".")[2] in SIDECAR_SUFFIXES


def may_be_fax(path: Path) -> bool:
    """A TIFF or PDF by its first bytes, or a file that has none yet (still being written) or
    cannot be read: not known not to be a fax."""
    try:
        # Without waiting: a FIFO put in the file's place would hold the caller.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            head = os.read(fd, len(max(FAX_MAGIC, key=len)))
        finally:
            os.close(fd)
    except OSError:
        return True
    return not head or is_fax_content(head)


def information_files(files: Collection[str], may_be_fax: Callable[[str], bool], shared_before: Collection[str] = ()
                      ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Whose information file is whose among a folder's plain files (as the drop folder takes
    them: not an ignored name): each file's, and the information files that are nobody's because
    their name fits more than one fax, with the faxes it fits.

    foo.tif.info is foo.tif's alone. foo.info fits every file called foo.*: it is the one's if it
    fits one; among several, only the faxes count (`may_be_fax`, by their content: foo.doc beside
    foo.tif is not one), and beside foo.tif and foo.pdf it could be either's, and is neither's; so
    is one in `shared_before` (found shared when a fax it fitted was taken), whichever of its faxes
    are still there."""
    candidates = sorted(name for name in files if not is_information_file(name))
    whole: dict[str, str] = {}  # foo.tif.info -> foo.tif
    bare: dict[str, list[str]] = {}  # foo.info -> foo.tif, foo.pdf
    for candidate in candidates:
        for name in dict.fromkeys(sidecar_names(candidate)):
            if name in files:
                if name.startswith(candidate + "."):
                    whole[name] = candidate
                else:
                    bare.setdefault(name, []).append(candidate)
    for name, claim in bare.items():
        if len(claim) > 1:
            bare[name] = [candidate for candidate in claim if may_be_fax(candidate)] or claim
    shared = {name: claim for name, claim in bare.items()
              if name not in whole and (len(claim) > 1 or name in shared_before)}
    owner = {**{name: claim[0] for name, claim in bare.items() if name not in shared}, **whole}
    sidecars: dict[str, str] = {}
    for candidate in candidates:
        mine = next((name for name in sidecar_names(candidate) if owner.get(name) == candidate), None)
        if mine is not None:
            sidecars[candidate] = mine
    return sidecars, shared


def find_sidecar(fax_path: Path, ignore: Sequence[str] = ()) -> tuple[Path | None, dict[str, list[str]]]:
    """The fax's information file beside it, as the drop folder would give it (`information_files`,
    over the files beside it whose names are not in `ignore`), or None; and, when there is none,
    the information files skipped because their name fits another fax as well, with the faxes
    each fits."""
    folder = fax_path.parent
    base = fax_path.name.rpartition(".")[0] or fax_path.name
    # Every file an information file of this fax's could also fit is called base*.
    files = {other.name for other in folder.glob(glob.escape(base) + "*")
             if not any(fnmatch.fnmatch(other.name, pattern) for pattern in ignore) and other.is_file()}
    files.add(fax_path.name)
    sidecars, shared = information_files(files, lambda name: may_be_fax(folder / name))
    if (mine := sidecars.get(fax_path.name)) is not None:
        return folder / mine, {}
    return None, {name: fits for name, fits in shared.items() if fax_path.name in fits}


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
