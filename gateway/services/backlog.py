"""A backlog from another mail system (`gateway import PATH`): an mbox file, a Maildir or a folder
of .eml files, taken in through the spool and the pipeline like any other intake.

Each message is a backlog item: flagged `backlog` (no receipt) and `imported`, and unless the
import notifies (`--notify`) also `no-notifications` — no department notification and no deadline,
since the old system handled it (see gateway.stages.route). The source identity of a message is
("import", the source's path, its place in it: an mbox's message index, a Maildir's unique name, an
.eml file's relative path); with the SHA-256 of its bytes it makes a second run skip, before any
spooling, what is already registered.

Messages go in batches: spooled (one sync for the batch), then registered in one transaction. An
interrupted batch stays in the spool, claimed; the next run (or the daemon) recovers it, and the
registry's intake keys keep it from being registered twice.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from gateway.registry.models import IntakeKey, Letter
from gateway.spool import Spool, SpoolError, SpoolItem, readable_text
from gateway.stages.normalise.headers import parse_date
from gateway.stages.normalise.message import skip_before_header
from gateway.stages.route import IMPORTED, QUIET

if TYPE_CHECKING:
    from gateway.daemon.pipeline import Outcome, Pipeline
    from gateway.registry import Registry

INTAKE = "import"
_KEY_LIMIT = 512  # intake_keys.key

# An mbox separator as mail systems write it: "From <sender> <asctime date>", the zone optional,
# e.g. "From alice@example.org Mon Nov 23 10:00:00 2026" or "From - Mon Nov 23 10:00:00 +0800 2026".
# A body line that merely begins with "From " (an unescaped one: mboxo) does not split a message.
_STRICT_FROM = re.compile(
    rb"^From \S+ +(?:[A-Z][a-z]{2},? +)?[A-Z][a-z]{2} +\d{1,2} +\d{1,2}:\d\d(?::\d\d)?"
    rb"(?: +[-+]?[A-Za-z0-9]+)? +\d{4}[ \t]*\r?$", re.MULTILINE)
# Exporters that write no date: then "From " after a blank line (or at the start) separates.
_LOOSE_FROM = re.compile(rb"(?:\A|(?<=\n\n)|(?<=\n\r\n))From [^\n]*\n")
_FROM_TIME = re.compile(rb"([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}:\d\d(?::\d\d)?)(?: +([-+]\d{4}|[A-Z]{3,4}))? +(\d{4})")
_DATE_HEADER = re.compile(rb"^Date:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# What a Windows tool may put before an mbox's first From line: a UTF-8 byte-order mark, blank lines.
_BEFORE_MBOX = re.compile(rb"(?:\xef\xbb\xbf)?(?:\r\n|\n|\r)*")
# An mbox written on the classic Mac OS ends its lines with a bare CR, its first line included.
_BARE_CR_FIRST_LINE = re.compile(rb"From [^\r\n]*\r(?!\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")
_MAILDIR_TIME = re.compile(r"^(\d{9,11})\.")
# Compressed files, by their first bytes: (magic, what compressed it, how to decompress it).
_COMPRESSED = ((b"\x1f\x8b", "gzip", "gzip -dc"), (b"\x28\xb5\x2f\xfd", "zstd", "zstd -dc"),
               (b"BZh", "bzip2", "bzip2 -dc"), (b"\xfd7zXZ\x00", "xz", "xz -dc"), (b"PK\x03\x04", "zip", "unzip -p"))
# A link in an export is not followed: it could point at any file the import's user may read. It is
# refused by name rather than passed over, so that the summary shows what was not taken in.
_LINK = "a symbolic link, not followed: put the message itself there"


class SourceError(Exception):
    """The path is no mbox, Maildir or folder of .eml files (or cannot be read)."""


@dataclass(frozen=True)
class Message:
    """One message of the backlog, read."""

    locator: str  # its place in the source: "#<index>" (mbox), the Maildir unique name, a relative path
    raw: bytes
    received_at: datetime


class Source:
    """An export of another mail system: the messages in a stable order, each with a stable locator."""

    kind = ""

    def __init__(self, path: Path, tz: ZoneInfo):
        self.path = path
        self.tz = tz

    def count(self) -> int:
        raise NotImplementedError

    def messages(self) -> Iterator[Message | tuple[str, str]]:
        """Each message, or (locator, why it cannot be read)."""
        raise NotImplementedError

    def folders_not_read(self) -> list[str]:
        """Folders of mail in the source that this import does not read, to be named in its summary."""
        return []

    def files_not_read(self) -> list[str]:
        """Files in the source that this import does not read, to be named in its summary."""
        return []

    def key(self, locator: str) -> str:
        """The intake key of a message: the source's path and the message's place in it.

        A name that is not UTF-8 is made readable as the spool makes it in the item's metadata
        (b"\\xba\\xcf.eml" is the text "\\xba\\xcf.eml"): the registry stores that key, and
        the lookup before spooling must find it."""
        key = f"{INTAKE}:{self.path}{locator if locator.startswith('#') else '/' + locator}"
        if len(readable_text(key)) <= _KEY_LIMIT:
            return readable_text(key)
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{INTAKE}:sha256:{digest}"


class Mbox(Source):
    """One file of messages, each after a "From " line (mboxo or mboxrd; kept byte for byte)."""

    kind = "mbox"

    def __init__(self, path: Path, tz: ZoneInfo):
        super().__init__(path, tz)
        self._spans: list[tuple[int, int, int]] | None = None  # (From line start, message start, end)

    def spans(self) -> list[tuple[int, int, int]]:
        if self._spans is None:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    self._spans = []
                    return self._spans
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    self._spans = _mbox_spans(data)
        return self._spans

    def count(self) -> int:
        return len(self.spans())

    def messages(self) -> Iterator[Message | tuple[str, str]]:
        spans = self.spans()
        if not spans:
            return
        mtime = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for index, (line_start, start, end) in enumerate(spans):
                raw = data[start:end]
                from_line = data[line_start:start]
                yield Message(f"#{index}", raw, _received_at(raw, [_from_line_time(from_line, self.tz)], mtime))


def _mbox_spans(data: mmap.mmap) -> list[tuple[int, int, int]]:
    """Where each message of an mbox is: its From line, its first byte and its end (without the blank
    line that ends it). Raises SourceError when the file does not begin like an mbox."""
    found = _BEFORE_MBOX.match(data)
    skip = found.end() if found else 0
    if data[skip:skip + 5] != b"From ":
        raise SourceError("not an mbox: its first line is not a \"From \" line")
    # In an mbox whose first line ends with a bare CR (classic Mac OS), every bare CR ends a line:
    # the places are found in a copy with LF for each bare CR, which keeps every byte's offset, and
    # the messages are taken from the file as they are.
    lines: bytes | mmap.mmap = _BARE_CR.sub(b"\n", data) if _BARE_CR_FIRST_LINE.match(data, skip) else data
    if skip:
        # Read from the first From line on (a pattern's "^" does not match where a search starts),
        # its places counted from the file's start.
        lines = bytes(lines[skip:])
    first = _STRICT_FROM.match(lines)
    # A first line the strict pattern takes means the exporter writes dates: only such lines separate.
    starts = [m.start() for m in (_STRICT_FROM if first else _LOOSE_FROM).finditer(lines)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    spans = []
    for n, line_start in enumerate(starts):
        newline = lines.find(b"\n", line_start)
        start = len(lines) if newline < 0 else newline + 1
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        # The blank line before the next From line belongs to the mbox, not to the message.
        if lines[max(start, end - 2):end] == b"\n\n":
            end -= 1
        elif lines[max(start, end - 3):end] == b"\n\r\n":
            end -= 2
        spans.append((skip + line_start, skip + start, skip + max(start, end)))
    return spans


class Maildir(Source):
    """A folder with cur/ and new/ (tmp/ holds deliveries in progress, never read). A message's
    locator is its unique name, which stays when the old system moved it or changed its flags."""

    kind = "Maildir"

    def __init__(self, path: Path, tz: ZoneInfo):
        super().__init__(path, tz)
        self._files: list[tuple[str, Path]] | None = None

    def files(self) -> list[tuple[str, Path]]:
        if self._files is None:
            found: dict[str, Path] = {}
            for sub in ("new", "cur"):  # a name in both (a crash of the old system mid-move): cur/ wins
                with os.scandir(self.path / sub) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not (entry.is_symlink()
                                                               or entry.is_file(follow_symlinks=False)):
                            continue
                        found[entry.name.split(":", 1)[0]] = Path(entry.path)
            self._files = sorted(found.items())
        return self._files

    def count(self) -> int:
        return len(self.files())

    def messages(self) -> Iterator[Message | tuple[str, str]]:
        for unique, path in self.files():
            if path.is_symlink():
                yield unique, f"{path}: {_LINK}"
                continue
            try:
                raw, mtime = _read_file(path)
            except OSError as exc:
                yield unique, f"cannot read {path}: {exc.strerror or exc}"
                continue
            delivered = _MAILDIR_TIME.match(unique)
            hints = [datetime.fromtimestamp(int(delivered.group(1)), timezone.utc)] if delivered else []
            yield Message(unique, raw, _received_at(raw, hints, mtime))

    def folders_not_read(self) -> list[str]:
        # Maildir++ (Dovecot, Courier): each folder but the inbox is a Maildir of its own, named
        # ".Sent", ".Archive.2019". Not read with the inbox (a Sent folder holds no letters to the
        # organisation), but named, so that none is left out unnoticed.
        with os.scandir(self.path) as entries:
            return sorted(entry.name for entry in entries
                          if entry.name.startswith(".") and entry.name not in (".", "..")
                          and entry.is_dir(follow_symlinks=False)
                          and (Path(entry.path) / "cur").is_dir() and (Path(entry.path) / "new").is_dir())


class EmlFolder(Source):
    """A folder (and its subfolders) of .eml files, in the order of their relative paths."""

    kind = "folder of .eml files"

    def __init__(self, path: Path, tz: ZoneInfo):
        super().__init__(path, tz)
        self._files: list[str] | None = None
        self._others: list[str] = []

    def files(self) -> list[str]:
        if self._files is None:
            found = sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_symlink() or p.is_file())
            self._files = [name for name in found if Path(name).suffix.lower() == ".eml"]
            # A .msg or .txt in an export may well be a letter: named in the summary, not passed
            # over unnoticed. Hidden files (.DS_Store) are a file manager's, not the export's.
            self._others = [name for name in found if Path(name).suffix.lower() != ".eml"
                            and not Path(name).name.startswith(".")]
        return self._files

    def files_not_read(self) -> list[str]:
        self.files()
        return self._others

    def count(self) -> int:
        return len(self.files())

    def messages(self) -> Iterator[Message | tuple[str, str]]:
        for name in self.files():
            if (self.path / name).is_symlink():
                yield name, _LINK
                continue
            try:
                raw, mtime = _read_file(self.path / name)
            except OSError as exc:
                yield name, f"cannot read: {exc.strerror or exc}"
                continue
            yield Message(name, raw, _received_at(raw, [], mtime))


def _read_file(path: Path) -> tuple[bytes, datetime]:
    with open(path, "rb") as fh:
        mtime = datetime.fromtimestamp(os.fstat(fh.fileno()).st_mtime, timezone.utc)
        return fh.read(), mtime


def open_source(path: Path, tz: ZoneInfo) -> Source:
    """The kind of export at `path`, found from what is there (not from its name)."""
    path = path.resolve()
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            return Maildir(path, tz)
        folder = EmlFolder(path, tz)
        if folder.count():
            return folder
        others = [readable_text(name) for name in folder.files_not_read()]
        if others:  # an export saved as Outlook .msg files, say: named, and what to do about them
            raise SourceError(f"{path}: neither a Maildir (no cur/ and new/) nor a folder of .eml files: "
                              f"its {len(others)} file(s) are {NOT_EML}: {first_named(others)}")
        raise SourceError(f"{path}: neither a Maildir (no cur/ and new/) nor a folder of .eml files")
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if not path.is_file():
        raise SourceError(f"{path}: not a file or folder")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for magic, kind, command in _COMPRESSED:
        if head.startswith(magic):
            # An export is often handed over compressed (and the monthly archive's mail is mbox.zst).
            raise SourceError(f"{path}: not an mbox but a file compressed with {kind}: decompress it first "
                              f"({command} FILE > FILE.mbox) and import that")
    found = _BEFORE_MBOX.match(head)
    if head and head[found.end() if found else 0:][:5] != b"From ":
        raise SourceError(f"{path}: not an mbox (its first line is not a \"From \" line); "
                          f"a single message is taken in with `gateway ingest`")
    source = Mbox(path, tz)
    try:
        source.spans()
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return source


def _from_line_time(line: bytes, tz: ZoneInfo) -> datetime | None:
    """The delivery time an mbox's From line gives (the old server's local time, unless it names a zone)."""
    found = _FROM_TIME.search(line)
    if not found:
        return None
    month, day, clock, zone, year = (g.decode("ascii") if g else "" for g in found.groups())
    if int(year) < 1900:  # the mail date parser would read 0001 as 2001
        return None
    try:
        value = parsedate_to_datetime(f"{day} {month} {year} {clock} {zone}".strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=tz)


def _date_header(raw: bytes) -> datetime | None:
    raw, _, _ = skip_before_header(raw)  # as the letter is read: a blank line first ends no header
    if _BARE_CR.search(raw, 0, 1024):  # lines ended by a bare CR (classic Mac OS), as the parser reads them
        raw = _BARE_CR.sub(b"\n", raw[:64 * 1024])
    end = _HEADER_END.search(raw)
    head = raw[: end.start() if end else 64 * 1024]
    found = _DATE_HEADER.search(head)
    if not found:
        return None
    # Read as the letter's own sent date is (a year 0001 is no year of 2001, a zone-less time is UTC).
    value, _ = parse_date(found.group(1).decode("ascii", "replace").replace("\r\n", ""))
    return value


def _received_at(raw: bytes, delivered: Sequence[datetime | None], fallback: datetime) -> datetime:
    """When the old system received a message: its delivery time if the export kept one, else the
    Date header, else the file's time. A time in the future or before 1980 is not believed."""
    now = datetime.now(timezone.utc)
    for value in [*delivered, _date_header(raw)]:
        if value is not None and datetime(1980, 1, 1, tzinfo=timezone.utc) <= value <= now + timedelta(days=1):
            return value.astimezone(timezone.utc)
    return min(fallback, now)


# -- the import ------------------------------------------------------------------
FILES_NAMED = 10  # of the files not read, how many the summary names
NOT_EML = "not .eml files, so not read: save each message as .eml to import it"


def first_named(names: Sequence[str]) -> str:
    """The first FILES_NAMED of `names`, and how many more there are."""
    more = len(names) - FILES_NAMED
    return ", ".join(names[:FILES_NAMED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class Summary:
    """What an import did, for its summary and exit status."""

    total: int = 0  # messages in the source
    seen: int = 0  # of those, looked at so far
    done: int = 0  # of those, registered, skipped or set aside (the progress)
    registered: int = 0
    recovered: int = 0  # of `registered`: left in the spool by an interrupted earlier run
    already: int = 0  # registered before (by an earlier run, or the same bytes through another intake)
    quarantined: dict[str, str] = field(default_factory=dict)  # locator or item -> reason
    quarantined_before: int = 0  # by an earlier run, still in quarantine: not spooled again
    refused: dict[str, str] = field(default_factory=dict)  # never spooled: locator -> reason
    waiting: int = 0  # spooled but not registered (the registry is unavailable): the daemon or a re-run does it
    answers: int = 0  # answers to letters of ours, recorded on them
    numbers: list[str] = field(default_factory=list)  # of the letters registered
    folders_not_read: list[str] = field(default_factory=list)  # a Maildir's own folders (.Sent): imported by path
    files_not_read: list[str] = field(default_factory=list)  # in a folder of .eml files, those of another kind
    interrupted: bool = False
    unavailable: str | None = None  # why the registry could not take more

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "seen": self.seen, "done": self.done, "registered": self.registered,
                "recovered": self.recovered,
                "already_registered": self.already, "answers": self.answers,
                "quarantined": len(self.quarantined), "quarantined_before": self.quarantined_before,
                "refused": len(self.refused), "waiting": self.waiting,
                # JSON is UTF-8: a name that is not is given as its key gives it (Source.key).
                "quarantine_reasons": {readable_text(k): v for k, v in self.quarantined.items()},
                "refusal_reasons": {readable_text(k): v for k, v in self.refused.items()},
                "folders_not_read": self.folders_not_read,
                "files_not_read": len(self.files_not_read),
                "files_not_read_first": self.files_not_read[:FILES_NAMED],
                "interrupted": self.interrupted, "registry_unavailable": self.unavailable}


Progress = Callable[[Summary], None]
BATCH_BYTES = 64 * 1024 * 1024  # a batch of large messages is cut short: its bytes are held until spooled


@dataclass
class Spooled:
    """A batch in the spool, claimed, waiting for registration."""

    items: list[SpoolItem]
    locators: dict[str, str]  # item id -> where the message is in the source
    covered: int = 0  # messages of the source this batch dealt with (skipped and refused ones too)


class BacklogImport:
    """One run of `gateway import` over one source."""

    def __init__(self, spool: Spool, pipeline: Pipeline, registry: Registry, source: Source, *,
                 notify: bool = False, batch_size: int = 500, limit: int | None = None):
        self.spool = spool
        self.pipeline = pipeline
        self.registry = registry
        self.source = source
        self.flags = ["backlog", IMPORTED] + ([] if notify else [QUIET])
        self.batch_size = max(1, batch_size)
        self.limit = limit
        self.stop = False  # set (by a signal handler) to end after the batch in hand
        self.quarantined_keys: set[str] = set()
        self.taken = 0  # spooled from the last batch
        self.summary = Summary()

    def run(self, progress: Progress | None = None) -> Summary:
        """Import until the source is done, `limit` messages are taken in, `stop` is set or the spool or
        the registry can take no more. One thread reads and spools the next batch while this one
        registers the last: the one waits on the disk while the other parses."""
        report = progress or (lambda summary: None)
        summary = self.summary
        summary.total = self.source.count()
        summary.folders_not_read = [readable_text(name) for name in self.source.folders_not_read()]
        summary.files_not_read = [readable_text(name) for name in self.source.files_not_read()]
        self._recover(report)
        # An earlier run's quarantined messages stay there (`gateway quarantine retry` takes them
        # again): spooling them anew would only quarantine them twice.
        self.quarantined_keys = {str(q.meta["source_key"]) for q in self.spool.quarantined()
                                 if q.meta.get("intake") == INTAKE and q.meta.get("source_key")}
        spooled: Queue[Spooled | None] = Queue(maxsize=1)
        failure: list[BaseException] = []

        def spool_batches() -> None:
            try:
                for batch, covered in self._batches():
                    spooled.put(replace(self._spool(batch), covered=covered))
            except BaseException as exc:  # handed to the registering thread, which raises it
                failure.append(exc)
            finally:
                spooled.put(None)

        # A daemon thread: a second Ctrl-C ends the process at once; what it spooled is recovered later.
        threading.Thread(target=spool_batches, name="import-spool", daemon=True).start()
        while (batch := spooled.get()) is not None:
            if batch.items:
                for outcome in self.pipeline.process(batch.items):
                    self._count(outcome, batch.locators.get(outcome.item_id, outcome.item_id))
            summary.done += batch.covered
            report(summary)
        if failure:
            raise failure[0]
        summary.interrupted = self.stop
        report(summary)
        return summary

    def _batches(self) -> Iterator[tuple[list[Message], int]]:
        """The messages of the source, a batch at a time (by count and by size), up to the limit; with
        each, how many messages of the source it covers (those that could not be read too)."""
        summary = self.summary
        taken = size = covered = 0
        batch: list[Message] = []
        for message in self.source.messages():
            if self.stop or summary.unavailable:
                return
            summary.seen += 1
            covered += 1
            if isinstance(message, tuple):
                summary.refused[message[0]] = message[1]
                continue
            batch.append(message)
            size += len(message.raw)
            room = self.batch_size if self.limit is None else min(self.batch_size, self.limit - taken)
            if len(batch) >= room or size >= BATCH_BYTES:
                yield batch, covered
                taken += self.taken
                batch, size, covered = [], 0, 0
                if self.limit is not None and taken >= self.limit:
                    return
        if covered and not self.stop and not summary.unavailable:
            yield batch, covered

    def _recover(self, report: Progress) -> None:
        """Register what an interrupted earlier run (or any intake) left in the spool, before going on:
        its keys then tell this run to skip those messages."""
        self.spool.recover()
        while not self.stop and not self.summary.unavailable:
            items = self.spool.claim(self.batch_size)
            if not items:
                return
            for outcome in self.pipeline.process(items):
                self._count(outcome, outcome.item_id, recovered=True)
            report(self.summary)

    def _spool(self, batch: list[Message]) -> Spooled:
        """Skip what is registered (or quarantined) and spool the rest, claimed by this process."""
        summary = self.summary
        keys = {m.locator: self.source.key(m.locator) for m in batch}
        shas = {m.locator: hashlib.sha256(m.raw).hexdigest() for m in batch}
        known_keys, known_shas = self._known(list(keys.values()), list(shas.values()))
        spooled = Spooled([], {})
        for message in batch:
            if keys[message.locator] in known_keys or shas[message.locator] in known_shas:
                summary.already += 1
                continue
            if keys[message.locator] in self.quarantined_keys:
                summary.quarantined_before += 1
                continue
            meta = {"channel": "email", "intake": INTAKE, "source_key": keys[message.locator],
                    "flags": self.flags, "received_at": message.received_at.isoformat(),
                    "source": {"path": str(self.source.path), "kind": self.source.kind,
                               "locator": message.locator, "size": len(message.raw)}}
            if not message.raw.strip():
                self._quarantine_empty(message, meta)
                continue
            try:
                writer = self.spool.writer(meta)
                writer.write(message.raw)
                item = writer.commit(claim=True, durable=False)
            except SpoolError as exc:
                # Nothing more can be spooled (full disk, permissions): what is spooled is registered.
                summary.unavailable = str(exc)
                break
            # The bytes come from a file that stays: a message the pipeline cannot read now will not
            # read better later, so it is quarantined at once (retryable there) rather than retried.
            item.attempts = self.spool.max_attempts - 1
            spooled.items.append(item)
            spooled.locators[item.id] = message.locator
        if spooled.items:
            self.spool.sync()  # durable before registration: each file becomes its letter's raw copy
        self.taken = len(spooled.items)
        return spooled

    def _quarantine_empty(self, message: Message, meta: dict[str, Any]) -> None:
        reason = "an empty message"
        try:
            self.spool.quarantine_new(message.raw, meta, reason)
        except SpoolError as exc:
            self.summary.refused[message.locator] = f"{reason}, and it cannot be quarantined: {exc}"
            return
        self.summary.quarantined[message.locator] = reason

    def _known(self, keys: list[str], shas: list[str]) -> tuple[set[str], set[str]]:
        """Which of these source identities and raw digests the registry has (two indexed lookups)."""
        with self.registry.read() as conn:
            known_keys = set(conn.execute(select(IntakeKey.key).where(IntakeKey.key.in_(keys))).scalars())
            known_shas = set(conn.execute(select(Letter.raw_sha256).where(Letter.raw_sha256.in_(shas))).scalars())
        return known_keys, known_shas

    def _count(self, outcome: Outcome, locator: str, *, recovered: bool = False) -> None:
        summary = self.summary
        if outcome.result == "registered":
            summary.registered += 1
            summary.recovered += recovered
            if outcome.number:
                summary.numbers.append(outcome.number)
        elif outcome.result in ("duplicate", "known"):
            summary.already += not recovered
        elif outcome.result == "answer":
            summary.answers += 1
        elif outcome.result == "released":
            summary.waiting += 1
            summary.unavailable = outcome.reason or "the registry is unavailable"
        elif outcome.result == "quarantined":
            summary.quarantined[locator] = outcome.reason or ""
        elif outcome.result == "retry":  # an item of another intake, recovered: the daemon retries it
            summary.waiting += 1
        else:
            summary.refused[locator] = f"{outcome.result}: {outcome.reason}"
