"""Packing a month of correspondence, checking it, and destroying only what retention allows.

Layout under the archive folder, one set per month and category:

    2026/11/external.business/part-001.mbox.zst           mail (mboxrd), zstd or gzip, one frame a message
    2026/11/external.business/part-001.manifest.csv       archive no., letter no., SHA-256, size, ...
    2026/11/external.official/part-001-faxes/A202611-00007_fax.tif   fax originals, as received
    2026/11/external.official/part-001-faxes.manifest.csv
    2026/11/external.official/circulation-part-001-faxes.csv  who read and signed its circulated letters
    2026/11/external.official/part-003.mbox.zst           a late part: replies sent after their letter was
    2026/11/external.official/part-003.manifest.csv       packed, and circulations finished after it (their
    2026/11/external.official/circulation-part-003.csv    record), each named with its letter

`zstd -dc part-001.mbox.zst > part-001.mbox` and any mail client opens it; the
manifest is CSV. Each message sits in the mbox byte for byte (mboxrd quoting
of "From " lines aside, which reading undoes), so its SHA-256 can be checked
against the register.

Each mbox message (a letter, and each reply sent to its sender after it) is
compressed as a frame of its own (a zstd frame, or a gzip member); frames back
to back decompress to the whole mbox. The manifest gives each letter's place
twice: `offset`/`length` in the mbox, `frame_offset`/`frame_length` in the
package file, so reading one letter decompresses its frame and nothing else.
Packages written before (one frame for the month, no frame columns) are read
and verified by decompressing the whole stream.

A run is idempotent and resumable: letters already archived are skipped, a
package is written under a temporary name, fsynced and renamed before the
registry records it (with the letters' archive numbers) in one transaction,
and files a crash left unrecorded are removed by the next run. The copies in
the message store are deleted only once `verify` has re-read the package.
"""
from __future__ import annotations

import csv
import fcntl
import gc
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from pathlib import Path
from itertools import accumulate
from typing import Any, NamedTuple, TypeVar, cast
from zoneinfo import ZoneInfo

import zstandard

from gateway.archive import ArchiveError as ArchiveError  # raised here; named by the callers from here too
from gateway.config import Config
from gateway.faults import checkpoint
from gateway.stages.normalise.filenames import safe_filename
from gateway.registry import LateItem, Registry, ToArchive
from gateway.registry.archive import ArchiveSeriesMoved
from gateway.registry.circulation import CirculationRecords
from gateway.registry.leases import JobStopped
from gateway.registry.models import ArchivePackage, Letter
from gateway.spool import DamagedItem, Sealed, read_raw, read_sealed
from gateway.spool.durable import fsync_dir, make_dirs, move, write_file, writing

log = logging.getLogger("gateway.archive")
T = TypeVar("T")
R = TypeVar("R")
_REPLY_FILE = re.compile(r"_reply-\d+\.eml$")  # a fax's reply as mailed, beside it in its folder
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_FROM_LINE = re.compile(rb"^(>*From )", re.M)
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.M)
MANIFEST_FIELDS = ["archive_number", "letter_number", "received_at", "channel", "sha256", "size", "offset", "length",
                   "file", "frame_offset", "frame_length"]
# A late part's manifest: a row per reply (its frame in the package, as a letter's) and per circulation
# (its record in the circulation CSV beside it, whose SHA-256 and size each of its rows gives), each
# with the archive number and letter number of the letter it belongs to.
LATE_FIELDS = ["archive_number", "letter_number", "item", "at", "sha256", "size", "offset", "length", "file",
               "frame_offset", "frame_length"]
# Packing: one thread reads the letters (file reads, seal checks, mbox blocks: work that holds the
# interpreter lock) while the run's own thread compresses the chunk before (zstd lets go of it).
_READING_WORKERS = 1
_COMPRESS_THREADS = 1  # zstd's own, for a chunk's frames; the reading thread has the other core
# Verifying: two worker threads, each decompressing a piece of the package at a time (outside the
# interpreter lock) and hashing its letters (one thread at a time: Archiver._hashing), while this
# one reads the next piece: on two cores, a month of 4 KiB letters in some 15% less time than one
# worker that decompresses with two of zstd's threads.
_CHECKING_WORKERS = 2
CHUNK = 1024  # letters read at a time: enough for zstd to keep its core busy
CHUNK_BYTES = 16 << 20
_PIECE = 1 << 20  # package bytes read at a time when verifying: hundreds of frames for a worker
_SEPARATOR_MAX = 128  # an mbox separator line ("From gateway@archive <date>") is shorter


class ArchiveStopped(ArchiveError, JobStopped):
    """The run or the check was told to stop (the daemon stopping, past its grace) before it was
    done. What it finished stays recorded; a package it was writing was never recorded, and the
    next run removes what is left of it and does the rest."""


@dataclass
class Written:
    package: str
    letters: int
    size: int
    items: int = 0  # a late part's replies and circulations


@dataclass
class Checked:
    package: ArchivePackage
    problems: list[str] = field(default_factory=list)  # the package's own, in the archive folder
    # With [archive] copies: what is wrong with a copy that could not be put right (a folder that
    # cannot be written); the copy folders written now; what was put right (a copy that differed,
    # or the package itself restored from a copy).
    copy_problems: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    items: int = 0  # a late part's replies and circulations, as the register gives them

    @property
    def ok(self) -> bool:
        return not self.problems


def log_checked(checked: list[Checked]) -> None:
    """What a check found, in the log: ALERTs for a package or a copy that is wrong and stays so,
    and for a package restored from its copy; a warning for a copy written again."""
    for c in checked:
        if c.problems:
            log.error("ALERT archive: %s failed verification: %s", c.package.path, "; ".join(c.problems[:5]))
        for problem in c.copy_problems:
            log.error("ALERT archive: %s: %s", c.package.path, problem)
        for repair in c.repaired:
            if repair.startswith("restored"):
                log.error("ALERT archive: %s %s", c.package.path, repair)
            else:
                log.warning("archive: %s: %s", c.package.path, repair)


def month_bounds(month: str, timezone_name: str) -> tuple[datetime, datetime]:
    match = MONTH.match(month)
    if not match:
        raise ArchiveError(f"{month!r} is not a month (YYYY-MM)")
    year, mon = int(match.group(1)), int(match.group(2))
    tz = ZoneInfo(timezone_name)
    start = datetime.combine(datetime(year, mon, 1).date(), time.min, tz)
    end = datetime.combine(datetime(year + (mon == 12), mon % 12 + 1, 1).date(), time.min, tz)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def mbox_escape(raw: bytes) -> bytes:
    """mboxrd: one more '>' before every line that is '>'* then 'From '; reading removes it."""
    return _FROM_LINE.sub(rb">\1", raw) if b"From " in raw else raw  # most messages have none


def mbox_unescape(data: bytes) -> bytes:
    return _QUOTED_FROM.sub(rb"\1", data) if b"From " in data else data


class Archiver:
    def __init__(self, config: Config, registry: Registry, stop: threading.Event | None = None):
        """`stop`, once set, ends a run at its next letter and a check at its next piece of a
        package (ArchiveStopped)."""
        self.config = config
        self.registry = registry
        self.root = config.archive_dir
        self.copies = config.archive_copies
        self._stop = stop or threading.Event()
        self._local = threading.local()  # a compressor per worker thread: they are not thread-safe
        # One checking thread at a time hashes its letters, while the other decompresses: hashing 4 KiB
        # lets go of the interpreter lock and takes it back, and two threads doing that at once
        # hand it back and forth (measured: two threads hashing took 40% longer than one doing both
        # shares; with the lock, verifying a month took 15% less time).
        self._hashing = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveError(f"another archive run holds {self.root / '.lock'}") from None
            yield
        finally:
            os.close(fd)

    def _stop_here(self) -> None:
        if self._stop.is_set():
            raise ArchiveStopped("stopped before it was done; the next run does the rest")

    def _until_stopped(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            self._stop_here()
            yield item

    # -- packing ------------------------------------------------------------
    def run(self, month: str) -> list[Written]:
        start, end = month_bounds(month, self.config.model.gateway.timezone)
        # The collector waits, as for verifying: a month's letters and manifest rows are objects by
        # the hundred thousand, and its passes over them took a tenth of the run.
        with self._locked(), _collector_paused():
            self._remove_unrecorded(month)
            letters = self.registry.letters_to_archive(start, end)
            replied, circulated = self.registry.archive_extras(start, end)
            groups: dict[tuple[str, str], list[ToArchive]] = {}
            for letter in letters:
                kind = "fax" if letter.fax_file_name is not None else "mail"
                groups.setdefault((letter.category or "uncategorised", kind), []).append(letter)
            series = f"archive-{month}"
            last = self.registry.series_last(series)
            written: list[Written] = []
            # Each package is recorded (manifest written, letters numbered in the registry) on a
            # thread of its own while the next one is packed: one waits on the database, the
            # other on the files and the compressor. The with-block waits for the last recording
            # however the loop ends, so what was packed before a stop is recorded.
            with ThreadPoolExecutor(1, thread_name_prefix="archive-record") as recorder:
                recording: Future[Written] | None = None
                for (category, kind), members in self._until_stopped(sorted(groups.items())):
                    package = self._pack(month, category, kind, members, replied, series, last)
                    last += len(members)
                    if recording is not None:
                        written.append(self._recorded(recording, package))
                    recording = recorder.submit(self._record, package, circulated)
                if recording is not None:
                    written.append(recording.result())
            # What was sent or finished after its letter was packed: a part of its own per category,
            # never added to a package already written.
            late: dict[str, list[LateItem]] = {}
            for item in self.registry.late_items(start, end):
                late.setdefault(item.category or "uncategorised", []).append(item)
            for category, items in self._until_stopped(sorted(late.items())):
                written.append(self._pack_late(month, category, items))
            return written

    def months_behind(self, month: str) -> list[str]:
        """The months before `month` that still have letters no package holds, oldest first: letters
        registered after their month was archived (a paper letter entered late with the day it
        came, an item released from quarantine), or months no run ever did (the daemon stopped
        for longer than a month). A run of such a month packs only those letters, in a part of
        its own."""
        zone = self.config.model.gateway.timezone
        end = month_bounds(month, zone)[0]
        months: list[str] = []
        oldest = self.registry.oldest_unarchived(None, end)
        while oldest is not None:
            months.append(oldest.astimezone(ZoneInfo(zone)).strftime("%Y-%m"))
            oldest = self.registry.oldest_unarchived(month_bounds(months[-1], zone)[1], end)
        # And the months of letters with a reply sent, or a circulation finished, after they were packed.
        late = {when.astimezone(ZoneInfo(zone)).strftime("%Y-%m") for when in self.registry.late_received(end)}
        return sorted(late.union(months))

    def _folder(self, month: str, category: str) -> Path:
        year, mon = month.split("-")
        return self.root / year / mon / category

    def orphans(self) -> int:
        """How many files crashed runs left in orphans/ (`_remove_unrecorded`): never removed by the
        gateway, only named for the operator."""
        with suppress(OSError):
            return sum(1 for entry in (self.root / "orphans").rglob("*") if entry.is_file())
        return 0

    def _remove_unrecorded(self, month: str) -> None:
        """Files a crashed run left behind, never recorded. Moved aside to orphans/, not deleted:
        after a registry restored from an older backup they could be the only copies."""
        year, mon = month.split("-")
        base = self.root / year / mon
        if not base.is_dir():
            return
        recorded = self.registry.archive_paths(month)
        aside_in: Path | None = None
        for folder in base.iterdir():
            for entry in folder.iterdir() if folder.is_dir() else []:
                relative = str(entry.relative_to(self.root))
                if relative in recorded or not entry.name.startswith(("part-", ".part-")):
                    continue
                if entry.name.startswith("."):  # never renamed into place: incomplete
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                    continue
                aside_in = aside_in or self.root / "orphans" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                aside = aside_in / relative
                make_dirs(aside.parent)
                move(entry, aside)
        if aside_in is not None:
            log.warning("archive of %s: what a run that crashed left, in no package of the register, set aside in "
                        "%s (never removed by the gateway: gateway archive verify says what to do)", month, aside_in)

    def _pack(self, month: str, category: str, kind: str, letters: list[ToArchive], replied: set[int],
              series: str, last: int) -> _Package:
        """The package of these letters written, durable and in place (not its manifest), its letters
        numbered from after `last`, the archive series' last number when the run began."""
        folder = self._folder(month, category)
        make_dirs(folder)
        part = self.registry.next_archive_part(month, category, kind)
        series_prefix = f"A{month.replace('-', '')}-"
        numbers = [f"{series_prefix}{n:05d}" for n in range(last + 1, last + 1 + len(letters))]
        rows: list[list[Any]] = []
        packed: list[int] = []  # the sent replies it holds
        if kind == "mail":
            target = folder / f"part-{part:03d}{self._mbox_suffix()}"
            size, sha = self._write_mail(target, letters, numbers, replied, rows, packed)
            manifest = folder / f"part-{part:03d}.manifest.csv"
        else:
            name = f"part-{part:03d}-faxes"
            target = folder / name
            tmp = folder / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            make_dirs(tmp)
            size = 0
            replies = self.registry.sent_replies([letter.id for letter in letters if letter.id in replied])
            for letter, number in self._until_stopped(zip(letters, numbers, strict=True)):
                raw = self._raw(letter)
                file_name = f"{number}_{safe_filename(letter.fax_file_name or 'fax')}"
                write_file(tmp / file_name, raw)
                rows.append(_row(number, letter, len(raw), 0, len(raw), file_name, "", ""))
                size += len(raw)
                for n, (reply_id, sent) in enumerate(replies.get(letter.id, []), 1):  # as mailed to its sender
                    write_file(tmp / f"{number}_reply-{n}.eml", sent)
                    size += len(sent)
                    packed.append(reply_id)
            # The folder is complete and durable: now it takes its name.
            move(tmp, target)
            manifest = folder / f"part-{part:03d}-faxes.manifest.csv"
            sha = ""  # a folder of faxes: its manifest's SHA-256 is recorded
        return _Package(month, category, kind, part, target, manifest, letters, numbers, rows, size, sha, series, last,
                        packed)

    def _mbox_suffix(self) -> str:
        return ".mbox.zst" if self.config.model.archive.compression == "zstd" else ".mbox.gz"

    def _pack_late(self, month: str, category: str, items: list[LateItem]) -> Written:
        """A late part: the replies sent and the circulations finished after their letters were
        packed (`items`, of letters of this month and category), in a part of their own, written as
        a package is (durable and in place, then its manifest), then recorded with what it holds in
        one transaction. A crash before recording leaves files the next run sets aside, and the
        items still unheld: that run packs them again."""
        folder = self._folder(month, category)
        make_dirs(folder)
        part = self.registry.next_archive_part(month, category, "late")
        target = folder / f"part-{part:03d}{self._mbox_suffix()}"
        manifest = folder / f"part-{part:03d}.manifest.csv"
        replies = [item for item in items if item.kind == "reply"]
        circulations = [item for item in items if item.kind == "circulation"]
        rows: list[list[Any]] = []
        blocks = [_mbox_block(f"From gateway@archive {item.at.strftime('%a %b %d %H:%M:%S %Y')}\n".encode(),
                              item.message or b"") for item in replies]
        # With no reply, one frame of nothing: `zstd -dc` takes no file of no frames.
        frames = self._compress_frames(blocks) if blocks else [self._empty_frame()]
        offset = frame_offset = 0
        with writing(target) as out:
            for item, block, frame in zip(replies, blocks, frames, strict=False):
                message = item.message or b""
                rows.append([item.archive_number, item.letter_number, item.item, item.at.isoformat(),
                             hashlib.sha256(message).hexdigest(), len(message), offset, len(block), "",
                             frame_offset, len(frame)])
                offset += len(block)
                frame_offset += len(frame)
            data = b"".join(frames)
            out.write(data)
        if circulations:
            letters = dict.fromkeys((item.letter_id, item.letter_number, item.archive_number) for item in circulations)
            record = self._circulation_record(manifest, list(letters), {item.id for item in circulations})
            written = circulation_path(manifest)
            sha, size = hashlib.sha256(record).hexdigest(), len(record)
            rows += [[item.archive_number, item.letter_number, item.item, item.at.isoformat(), sha, size, "", "",
                      written.name, "", ""] for item in circulations]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(LATE_FIELDS)
        writer.writerows(rows)
        write_file(manifest, text.getvalue().encode())
        checkpoint("archive-before-commit")  # written, not yet recorded: the next run sets it aside
        path = str(target.relative_to(self.root))
        try:
            self.registry.archive_commit_late(
                package={"month": month, "category": category, "part": part, "path": path,
                         "manifest": str(manifest.relative_to(self.root)), "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()},
                replies=[item.id for item in replies], circulations=[item.id for item in circulations])
        except ArchiveSeriesMoved as exc:
            raise ArchiveError(f"{exc}: another archive run packed them (is {self.root} shared by every node?); "
                               f"nothing of {path} was recorded; run again") from None
        return Written(path, 0, len(data), len(items))

    def _record(self, package: _Package, circulated: set[int]) -> Written:
        """On the recording thread: the package's manifest (and circulation record) written, then
        the package and its letters' archive numbers recorded in the registry, in one transaction."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        writer.writerows(package.rows)
        data = text.getvalue().encode()
        write_file(package.manifest, data)
        numbered = list(zip(package.letters, package.numbers, strict=True))
        finished: set[int] = set()
        self._circulation_record(package.manifest, [(letter.id, letter.number, number) for letter, number in numbered
                                                    if letter.id in circulated], finished=finished)
        checkpoint("archive-before-commit")  # written, not yet recorded: the next run removes it
        path = str(package.target.relative_to(self.root))
        try:
            self.registry.archive_commit(
                package={"month": package.month, "category": package.category, "part": package.part,
                         "kind": package.kind, "path": path, "manifest": str(package.manifest.relative_to(self.root)),
                         "letters": len(package.letters), "size": package.size,
                         "sha256": package.sha256 or hashlib.sha256(data).hexdigest()},
                assignments=[(letter.id, number) for letter, number in numbered],
                series=package.series, expected_last=package.last, replies=package.replies,
                circulations=sorted(finished))
        except ArchiveSeriesMoved as exc:
            # Only a run that does not share this folder's lock gets here: a node whose archive
            # folder is its own. Nothing of this package is recorded: the next run here sets it
            # aside, unless the other run recorded a package of the same name.
            raise ArchiveError(f"{exc}: another archive run numbered letters of {package.month} meanwhile (is "
                               f"{self.root} shared by every node?); nothing of {path} was recorded; "
                               "run again") from None
        return Written(path, len(package.letters), package.size)

    @staticmethod
    def _recorded(recording: Future[Written], after: _Package) -> Written:
        """The recording's outcome. Should it have failed, the package packed meanwhile (`after`)
        will never be recorded either: its files go at once (they are this run's alone, and every
        letter in them still has its copy in the message store)."""
        try:
            return recording.result()
        except Exception:
            if after.target.is_dir():
                shutil.rmtree(after.target, ignore_errors=True)
            else:
                after.target.unlink(missing_ok=True)
            raise

    def _write_mail(self, target: Path, letters: list[ToArchive], numbers: list[str], replied: set[int],
                    rows: list[list[Any]], packed: list[int] | None = None) -> tuple[int, str]:
        """The mbox package, one frame per message, its manifest rows appended to `rows` (and the
        ids of the sent replies it holds to `packed`). Returns (its size, its SHA-256), both taken
        while writing it.

        A reading thread reads and checks the letters a chunk at a time and lays out their mbox
        blocks; this thread compresses each chunk (zstd works outside the interpreter lock, so the
        reading goes on beside it) and writes it. The file is in place only once complete and
        durable (one fsync at the end); a crash leaves a hidden temporary file, which the next run
        removes."""
        digest = hashlib.sha256()
        offset = frame_offset = 0

        def chunks() -> Iterator[tuple[list[ToArchive], dict[int, list[tuple[int, bytes]]]]]:
            for chunk in _chunked(letters):
                replies = self.registry.sent_replies([letter.id for letter in chunk if letter.id in replied])
                if packed is not None:
                    packed.extend(reply_id for sent in replies.values() for reply_id, _ in sent)
                yield chunk, replies

        with writing(target) as out:
            numbered = iter(numbers)
            for read in _in_order(lambda job: self._read_chunk(*job), chunks(), _READING_WORKERS):
                frames = self._compress_frames(read.blocks)
                frame_at = list(accumulate((len(frame) for frame in frames), initial=0))
                data = b"".join(frames)
                out.write(data)
                digest.update(data)
                for letter, size, at, n in read.letters:
                    rows.append(_row(next(numbered), letter, size, offset + at, len(read.blocks[n]),
                                     "", frame_offset + frame_at[n], len(frames[n])))
                offset += read.mbox_size
                frame_offset += len(data)
        return frame_offset, digest.hexdigest()

    def _read_chunk(self, letters: list[ToArchive], replies: dict[int, list[tuple[int, bytes]]]) -> _Read:
        """On the reading thread: each letter read and checked against its seal and the register,
        in its mbox block, then the blocks of its sent replies."""
        blocks: list[bytes] = []
        placed = []
        at = 0
        for letter in letters:
            self._stop_here()
            separator = f"From gateway@archive {letter.received_at.strftime('%a %b %d %H:%M:%S %Y')}\n".encode()
            block, size = self._letter_block(letter, separator)
            placed.append((letter, size, at, len(blocks)))
            blocks.append(block)
            at += len(block)
            for _, message in replies.get(letter.id, []):
                blocks.append(_mbox_block(separator, message))
                at += len(blocks[-1])
        return _Read(blocks, placed, at)

    def _letter_block(self, letter: ToArchive, separator: bytes) -> tuple[bytes, int]:
        """The letter's mbox block and the letter's size. Its bytes are copied once, from the one
        read of its file into the block."""
        data, start, _ = self._sealed(letter)
        return _mbox_block(separator, data, start), len(data) - start

    def _compress_frames(self, blocks: list[bytes]) -> list[bytes] | list[memoryview]:
        """Each block into a self-contained frame: a zstd frame (with its content size and a
        checksum) or a gzip member; concatenated, they decompress to the concatenation. zstd
        compresses the chunk's blocks in one call, outside the interpreter lock."""
        if self.config.model.archive.compression == "gzip":
            return [_gzip_member(block) for block in blocks]
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
        compressed = compressor.multi_compress_to_buffer(cast(list[bytes | bytearray | memoryview], blocks),
                                                         threads=_COMPRESS_THREADS)
        return [memoryview(compressed[n]) for n in range(len(blocks))]  # type: ignore[arg-type]

    def _empty_frame(self) -> bytes:
        if self.config.model.archive.compression == "gzip":
            return _gzip_member(b"")
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(b"")

    def _frame_decompressor(self, path: Path) -> Callable[[bytes], bytes]:
        return self._zstd_decompressor().decompress if path.name.endswith(".zst") else _gunzip_member

    def _zstd_decompressor(self) -> zstandard.ZstdDecompressor:
        """This thread's decompressor, made once."""
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        return decompressor

    def _circulation_record(self, manifest: Path, letters: list[tuple[int, str, str]], only: set[int] | None = None,
                            finished: set[int] | None = None) -> bytes:
        """Who read and signed the package's circulated letters ((id, letter number, archive
        number); `only`: of these circulations alone), when, and their instructions: a CSV beside
        the manifest (none when nothing of it was circulated). Its bytes; the circulations in it
        that were finished are added to `finished` (one still running is recorded as it stands,
        and once finished goes into a late part)."""
        rows = _circulation_rows(self.registry, letters, only, finished)
        if not rows:
            return b""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CIRCULATION_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
        write_file(circulation_path(manifest), data)
        return data

    def _raw(self, letter: ToArchive) -> bytes:
        return bytes(self._sealed(letter).raw)

    def _sealed(self, letter: ToArchive) -> Sealed:
        try:
            # Checked against its seal (length and SHA-256) while reading.
            sealed = read_sealed(os.path.join(self.config.state_dir, letter.raw_path))  # a month of them: no Path
        except (OSError, DamagedItem) as exc:
            raise ArchiveError(f"{letter.number}: its original cannot be read: {exc}") from exc
        if sealed.sha256 != letter.raw_sha256:
            raise ArchiveError(f"{letter.number}: its stored original does not match the register's SHA-256")
        return sealed

    # -- checking ---------------------------------------------------------
    def verify(self, month: str | None = None) -> list[Checked]:
        with self._locked():  # never beside a purge
            return self._verify(month)

    def _verify(self, month: str | None) -> list[Checked]:
        results = []
        packages = [package for package in self.registry.archive_packages(month) if package.status != "purged"]
        # The collector waits: a month's manifests are objects by the hundred thousand (a tenth of
        # the time went to walking them), all garbage once their package is checked.
        with _collector_paused():
            for package, manifest in zip(packages, map(self._read_manifest, self._until_stopped(packages)),
                                         strict=True):
                results.append(self._checked(package, manifest))
        return results

    def _checked(self, package: ArchivePackage, manifest: _Manifest) -> Checked:
        """The package checked; with copies, then each copy, each put right from a good one.

        The message store's copies are released only once the package and every copy are right:
        until then each original exists twice."""
        checked = Checked(package, self._check(package, manifest, self.root),
                          items=len(manifest.registered) if package.kind == "late" else 0)
        if checked.problems and self.copies:
            source = self._restored(package, manifest.registered)
            if source is not None:
                problems = checked.problems
                checked.problems = self._check(package, self._read_manifest(package, self.root, manifest.registered),
                                               self.root)
                if not checked.problems:
                    checked.repaired.append(f"restored from its copy in {source}; it had: {'; '.join(problems[:3])}")
        if checked.ok:
            for copy in self.copies:
                self._check_copy(checked, copy, manifest.registered)
        self.registry.archive_checked(package.id, checked.problems)
        if checked.ok and not checked.copy_problems and self.config.model.archive.release_after_verify:
            self._release(package)
        return checked

    def _check_copy(self, checked: Checked, copy: Path, registered: dict[str, str]) -> None:
        """The package's copy in `copy` checked as the package is; missing or wrong, it is written
        again from the package (just found right) and checked once more."""
        package = checked.package
        if not os.path.isdir(copy):
            # Never made here: a share that is not mounted leaves its empty mount point, and copies
            # written there would be on the archive's own disk. The folder is made on the share.
            checked.copy_problems.append(f"copy in {copy}: the folder is not there (a share not mounted?); make it "
                                         "on the share once it is mounted")
            return
        found = [*self._check(package, self._read_manifest(package, copy, registered), copy),
                 *self._unchecked(package, copy)]
        if not found:
            return
        # os.path.exists: a folder that cannot be searched (a share's permissions, a stale mount)
        # is found below, where writing fails, not here for the whole check.
        existed = os.path.exists(copy / package.path) or os.path.exists(copy / package.manifest)
        try:
            self._copy_package(package, self.root, copy)
        except OSError as exc:
            checked.copy_problems.append(f"copy in {copy}: cannot be written: {exc.strerror or exc}")
            return
        again = [*self._check(package, self._read_manifest(package, copy, registered), copy),
                 *self._unchecked(package, copy)]
        if again:
            checked.copy_problems += [f"copy in {copy}: {problem}" for problem in again[:5]]
        elif existed:
            checked.repaired.append(f"its copy in {copy} was written again; it had: {'; '.join(found[:3])}")
        else:
            checked.copied.append(str(copy))

    def _unchecked(self, package: ArchivePackage, copy: Path) -> list[str]:
        """The package's files its check does not read (its circulation record, a fax folder's
        reply files): each in the copy when it is in the archive folder. Neither has a recorded
        SHA-256 to tell the right one from a damaged one: one that differs is not written over."""
        names = [circulation_path(Path(package.manifest))]
        if package.kind == "fax":
            with suppress(OSError):  # the folder itself was just checked
                names += [Path(package.path) / entry.name for entry in (self.root / package.path).iterdir()
                          if _REPLY_FILE.search(entry.name)]
        return [f"{name.name}: not in the copy" for name in names
                if os.path.exists(self.root / name) and not os.path.exists(copy / name)]

    def _restored(self, package: ArchivePackage, registered: dict[str, str]) -> Path | None:
        """The package (found wrong) written again from the first of its copies that is right;
        the copy folder it came from, or None when none is right."""
        for copy in self.copies:
            if not self._check(package, self._read_manifest(package, copy, registered), copy):
                try:
                    self._copy_package(package, copy, self.root)
                except OSError as exc:
                    log.error("archive: %s cannot be restored from its copy in %s: %s", package.path, copy,
                              exc.strerror or exc)
                    continue
                return copy
        return None

    @staticmethod
    def _copy_package(package: ArchivePackage, source: Path, target: Path) -> None:
        """The package's files (the package, its manifest, its circulation record) copied from the
        archive folder `source` to `target`: each is durable before it takes its name, and a folder
        of faxes takes its name only once whole."""
        manifest = Path(package.manifest)
        names = [Path(package.path), manifest]
        if (source / circulation_path(manifest)).exists():
            names.append(circulation_path(manifest))
        for name in names:
            origin, copy = source / name, target / name
            make_dirs(copy.parent)
            if not origin.is_dir():
                _copy_file(origin, copy)
                checkpoint("archive-copy")  # the package copied, not its manifest: checked again, copied again
                continue
            tmp = copy.with_name(f".{copy.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                make_dirs(tmp)
                for entry in sorted(origin.iterdir()):
                    _copy_file(entry, tmp / entry.name)
                fsync_dir(tmp)
            except OSError:  # a full disk: no half folder of faxes left behind (a destroyed package's, unseen)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if copy.exists():  # a wrong one; the new one is whole and durable beside it
                shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
            move(tmp, copy)

    def _read_manifest(self, package: ArchivePackage, root: Path | None = None,
                       registered: dict[str, str] | None = None) -> _Manifest:
        """The manifest in the archive folder (or in the folder `root`, a copy of it), with the
        register's hashes of the package's letters (`registered`, when already read)."""
        try:
            data = ((root or self.root) / package.manifest).read_bytes()
            text = data.decode()
        except (OSError, UnicodeDecodeError) as exc:
            return _Manifest(f"manifest {package.manifest}: {getattr(exc, 'strerror', None) or exc}", b"", "", None,
                             registered if registered is not None else self._registered(package))
        try:
            framed = _frame_places(text) if package.kind == "mail" else None
        except csv.Error as exc:  # a stray quote: the rest of the file one field, over csv's limit
            framed, problem = None, f"manifest {package.manifest}: {exc}"
        else:
            problem = ""
        return _Manifest(problem, data, text, framed,
                         registered if registered is not None else self._registered(package))

    def _registered(self, package: ArchivePackage) -> dict[str, str]:
        """What the register says the package holds, as its check compares it."""
        if package.kind == "late":
            return self.registry.late_hashes(package.id)
        return self.registry.archived_hashes(package.id)

    def _check(self, package: ArchivePackage, manifest: _Manifest, root: Path) -> list[str]:
        if manifest.problem:
            return [manifest.problem]
        path, registered = root / package.path, manifest.registered
        if package.kind == "late":
            return self._check_late(package, manifest, root)
        if manifest.framed is not None:
            places, problems, count, listed = manifest.framed
            if count != package.letters:
                problems.insert(0, f"manifest lists {count} letter(s), the register {package.letters}")
            if listed is not None:
                problems += _listed_once(listed, registered)
            return problems + self._check_frames(package, path, places, registered)
        try:
            rows = _manifest_rows(manifest.text)
        except csv.Error as exc:
            return [f"manifest {package.manifest}: {exc}"]
        problems = []
        if len(rows) != package.letters:
            problems.append(f"manifest lists {len(rows)} letter(s), the register {package.letters}")
        needed = ("archive_number", "letter_number", "sha256", "size",
                  *(("offset", "length") if package.kind == "mail" else ("file",)))
        if rows and (missing := [name for name in needed if name not in rows[0]]):
            return [*problems, f"the manifest has no column {', '.join(missing)}"]  # said once: enough
        problems += _listed_once([row["archive_number"] for row in rows], registered)
        if package.kind == "mail":  # a package of one frame for the month, as written before
            try:
                if _sha_file(path) != package.sha256:
                    problems.append("SHA-256 differs from the one recorded when it was written")
                data = self._decompress(path)
            except (OSError, zstandard.ZstdError, EOFError, gzip.BadGzipFile) as exc:
                return problems + [f"cannot be read: {exc}"]
            for row in rows:
                if (numbers := _whole_numbers(row, "offset", "length", "size")) is None:
                    problems.append(_damaged(row))
                    continue
                offset, length, size = numbers
                problems += _compare(row, size, _message_of(data[offset:offset + length], size), registered)
        else:
            if hashlib.sha256(manifest.data).hexdigest() != package.sha256:
                problems.append(f"manifest {package.manifest}: SHA-256 differs from the one recorded "
                                "when it was written")
            for row in rows:
                name = row["file"]
                # A name, not a path: a damaged row must not send the check to another file.
                if (numbers := _whole_numbers(row, "size")) is None or name in ("", ".", "..") or "/" in name:
                    problems.append(_damaged(row))
                    continue
                try:
                    raw = (path / name).read_bytes()
                except OSError as exc:
                    problems.append(f"{row['archive_number']}: {name}: {exc.strerror or exc}")
                    continue
                problems += _compare(row, numbers[0], raw, registered)
        return problems

    def _check_late(self, package: ArchivePackage, manifest: _Manifest, root: Path) -> list[str]:
        """A late part: the package file against its recorded SHA-256, each reply's frame against its
        manifest row, the circulation record against the rows that name it, and each item against
        the register (which letter it belongs to, a reply's mail as sent), each listed once."""
        try:
            rows = _manifest_rows(manifest.text)
        except csv.Error as exc:
            return [f"manifest {package.manifest}: {exc}"]
        if rows and (missing := [name for name in LATE_FIELDS if name not in rows[0]]):
            return [f"the manifest has no column {', '.join(missing)}"]
        registered, problems = manifest.registered, []
        listed = Counter(row["item"] for row in rows)
        problems += [f"{item}: listed {count} times in the manifest" for item, count in listed.items() if count > 1]
        problems += [f"{item} ({value.split(' ')[1]}): in the register, not in the manifest"
                     for item, value in registered.items() if item not in listed]
        path = root / package.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            return [*problems, f"cannot be read: {exc.strerror or exc}"]
        if hashlib.sha256(data).hexdigest() != package.sha256:
            problems.insert(0, "SHA-256 differs from the one recorded when it was written")
        decompress = self._frame_decompressor(path)
        files: dict[str, bytes | None] = {}
        for row in rows:
            label = f"{row['item']} ({row['letter_number']})"
            if row["item"].startswith("reply "):
                if (numbers := _whole_numbers(row, "frame_offset", "frame_length", "size")) is None:
                    problems.append(f"{label}: its manifest row is damaged")
                    continue
                at, length, size = numbers
                try:
                    block = decompress(data[at:at + length])
                except (zstandard.ZstdError, zlib.error, EOFError) as exc:
                    problems.append(f"{label}: its frame cannot be decompressed: {exc}")
                    continue
                raw, sha = _original_in(block, size, row["sha256"])
                if sha != row["sha256"] or len(raw) != size:
                    problems.append(f"{label}: content differs from the manifest")
                    continue
            else:
                name = row["file"]
                if name in ("", ".", "..") or "/" in name or (given := _whole_numbers(row, "size")) is None:
                    problems.append(f"{label}: its manifest row is damaged")
                    continue
                if name not in files:
                    try:
                        files[name] = (root / package.manifest).parent.joinpath(name).read_bytes()
                    except OSError as exc:
                        problems.append(f"{label}: {name}: {exc.strerror or exc}")
                        files[name] = None
                if (record := files[name]) is None:
                    continue
                if hashlib.sha256(record).hexdigest() != row["sha256"] or len(record) != given[0]:
                    problems.append(f"{label}: {name}: content differs from the manifest")
                    continue
                sha = "-"
            known = registered.get(row["item"])
            if known is None:
                problems.append(f"{label}: not in the register's record of this part")
            elif known.partition(" ")[2] != f"{row['letter_number']} {row['archive_number']}":
                problems.append(f"{label}: the register gives it to {known.split(' ')[1]}")
            elif known.partition(" ")[0] != sha:
                problems.append(f"{label}: the register's SHA-256 differs")
        return problems

    def _check_frames(self, package: ArchivePackage, path: Path, places: list[_Place],
                      registered: dict[str, str]) -> list[str]:
        """A package of one frame per message, read once front to back: this thread reads and
        hashes the file a piece at a time, and two worker threads decompress and check the frames
        that each piece holds whole."""
        digest = hashlib.sha256()
        problems: list[str] = []
        try:
            with open(path, "rb") as f:
                # A frame said to end past the file (cut short, or a damaged row's length: never
                # read, it could ask for more memory than there is) is named without reading it.
                end = os.fstat(f.fileno()).st_size
                beyond = [place for place in places if place.at + place.length > end]
                places = [place for place in places if place.at + place.length <= end]
                pieces = self._until_stopped(_pieces_of(f, places, digest))
                for found in _in_order(lambda piece: self._check_piece(path, *piece, registered), pieces,
                                       _CHECKING_WORKERS):
                    problems += found
                for rest in iter(lambda: f.read(_PIECE), b""):  # what follows the last letter: replies
                    digest.update(rest)
        except OSError as exc:
            return [f"cannot be read: {exc.strerror or exc}"]
        problems += [f"{place.label}: its frame is cut short" for place in beyond]
        if digest.hexdigest() != package.sha256:
            problems.insert(0, "SHA-256 differs from the one recorded when it was written")
        return problems

    def _check_piece(self, path: Path, data: bytes, start: int, places: list[_Place],
                     registered: dict[str, str]) -> list[str]:
        """The frames of `places` in `data` (package bytes from file offset `start`) decompressed
        and each letter checked against its manifest row and the register."""
        frames = [data[max(0, place.at - start):place.at + place.length - start] for place in places]
        problems: list[str] = []
        if path.name.endswith(".zst") and all(len(frame) == place.length
                                              for frame, place in zip(frames, places, strict=True)):
            # The whole piece decompressed in one call, outside the interpreter lock (each frame's
            # checksum checked); a piece with a damaged frame is read again one frame at a time
            # below, to name the frame.
            try:
                blocks = self._zstd_decompressor().multi_decompress_to_buffer(
                    cast(list[bytes | bytearray | memoryview], frames))
            except (zstandard.ZstdError, ValueError):  # ValueError: a header without its content size
                pass
            else:
                with self._hashing:
                    for i, place in enumerate(places):
                        segment = memoryview(blocks[i])  # type: ignore[arg-type]  # a BufferSegment has the buffer protocol
                        problems += _compare_place(place, *_original_in(segment, place.size, place.sha256), registered)
                return problems
        decompress = self._frame_decompressor(path)
        for frame, place in zip(frames, places, strict=True):
            if len(frame) != place.length:
                problems.append(f"{place.label}: its frame is cut short")
                continue
            try:
                block = decompress(frame)
            except (zstandard.ZstdError, zlib.error, EOFError) as exc:
                problems.append(f"{place.label}: its frame cannot be decompressed: {exc}")
                continue
            problems += _compare_place(place, *_original_in(block, place.size, place.sha256), registered)
        return problems

    def _decompress(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            if path.name.endswith(".zst"):
                return zstandard.ZstdDecompressor().stream_reader(f).read()
            return gzip.GzipFile(fileobj=f).read()

    def _release(self, package: ArchivePackage) -> None:
        """The package is re-read and right: the message store's copies can go.

        Recorded first, then deleted: a crash in between leaves a copy too many, never too few."""
        releasable = self.registry.releasable(package.id)
        self.registry.mark_released([letter_id for letter_id, _ in releasable])
        for _, raw_path in releasable:
            (self.config.state_dir / raw_path).unlink(missing_ok=True)

    def read(self, letter: Letter) -> bytes:
        """A letter's original from its package (once the message store's copy is released); from a
        copy of the package when the package cannot give it."""
        package = self.registry.archive_package(letter.archive_package_id or 0)
        if package is None or package.status == "purged":
            raise ArchiveError(f"{letter.number}: its original was destroyed or is not archived")
        failures: list[Exception] = []
        for root in (self.root, *self.copies):
            try:
                original = self._read_in(root, package, letter)
            # ValueError, KeyError, csv.Error: a damaged manifest (bytes that are not UTF-8, a column
            # or a number gone, a stray quote); ZstdError, zlib.error, EOFError: a damaged package of
            # one frame.
            except (OSError, ArchiveError, ValueError, KeyError, csv.Error, EOFError, zlib.error,
                    zstandard.ZstdError) as exc:
                failures.append(exc)
                continue
            if failures:
                log.error("ALERT archive: %s: %s; read from its copy in %s (run gateway archive verify)",
                          letter.number, failures[0], root)
            return original
        if isinstance(failures[0], ArchiveError):
            raise failures[0]
        # OSError too: its file gone or out of reach is what its reader (a page, a command) is told.
        raise ArchiveError(f"{letter.number}: {package.path} cannot be read: {failures[0]}") from failures[0]

    def _read_in(self, root: Path, package: ArchivePackage, letter: Letter) -> bytes:
        for row in _manifest_rows((root / package.manifest).read_text(encoding="utf-8")):
            if row["letter_number"] != letter.number:
                continue
            if package.kind == "fax":
                if row["file"] in ("", ".", "..") or "/" in row["file"]:  # a name, not a path
                    raise ArchiveError(f"{letter.number}: its manifest row in {package.path} is damaged")
                return self._as_registered(letter, (root / package.path / row["file"]).read_bytes())
            path = root / package.path
            if "frame_offset" not in row:  # a package of one frame for the month, as written before
                data = self._decompress(path)
                block = data[int(row["offset"]):int(row["offset"]) + int(row["length"])]
                return self._as_registered(letter, _message_of(block, int(row["size"])))
            if (place := _whole_numbers(row, "frame_offset", "frame_length")) is None:
                raise ArchiveError(f"{letter.number}: its manifest row in {package.path} is damaged")
            with open(path, "rb") as f:  # its own frame, and nothing else
                at, length = place
                if at + length > os.fstat(f.fileno()).st_size:  # a damaged row
                    raise ArchiveError(f"{letter.number}: its frame in {package.path} is cut short")
                f.seek(at)
                frame = f.read(length)
            try:
                block = self._frame_decompressor(path)(frame)
            except (zstandard.ZstdError, zlib.error, EOFError) as exc:
                raise ArchiveError(f"{letter.number}: its frame in {package.path} cannot be read: {exc}") from None
            raw, sha = _original_in(block, int(row["size"]), row["sha256"])
            if sha != row["sha256"]:
                raise ArchiveError(f"{letter.number}: its copy in {package.path} differs from the manifest")
            return self._as_registered(letter, bytes(raw), sha)
        raise ArchiveError(f"{letter.number}: not in the manifest of {package.path}")

    @staticmethod
    def _as_registered(letter: Letter, raw: bytes, sha: str | None = None) -> bytes:
        """The original only if it is the one the register holds (`sha`: its SHA-256, when known):
        a manifest row altered to name this letter must not hand over another letter's original."""
        if (sha or hashlib.sha256(raw).hexdigest()) != letter.raw_sha256:
            raise ArchiveError(f"{letter.number}: the original found in the archive is not the one registered "
                               "(its SHA-256 differs): run gateway archive verify")
        return raw

    # -- destruction ------------------------------------------------------
    def purge(self, *, approved_by: str, actor: str, now: datetime, dry_run: bool = False,
              approver_name: str = "", audit_actor: str | None = None) -> tuple[list[str], list[str]]:
        """Destroy packages whose every letter is archived (ended), past retention and none on legal hold.
        Returns (destroyed packages, packages kept with the reason). `approved_by`: the approving
        person's sign-in name; `audit_actor`: who runs it, as the audit log names them.

        The destruction is recorded first (the registry re-checks every hold under lock in that
        transaction), then the files go: a crash in between leaves files of a purged package,
        which the next purge removes, never a register pointing at files that are gone."""
        settings = self.config.model.archive
        due: list[ArchivePackage] = []
        kept: list[str] = []
        for package in self.registry.archive_packages(None):
            if package.status == "purged":
                continue
            # A late part is kept and destroyed with the letters its replies and circulations belong to.
            letters = (self.registry.late_letters(package.id) if package.kind == "late"
                       else self.registry.archived_letters(package.id))
            held = [letter.number for letter in letters if letter.legal_hold]
            # Packed with its month while still open: its store copy is its only working copy.
            working = [letter.number for letter in letters if letter.status != "archived"]
            # Each letter by its own category now (a fax may have been classified after packing).
            young = [(letter.number, years) for letter in letters
                     if _add_years(letter.received_at, years := settings.retention.get(
                         letter.category or "uncategorised", settings.retention_years)) > now]
            if held:
                kept.append(f"{package.path}: on legal hold ({', '.join(held[:5])})")
            elif working:
                kept.append(f"{package.path}: {len(working)} letter(s) still being worked on "
                            f"({', '.join(working[:5])})")
            elif young:
                kept.append(f"{package.path}: retention of {max(y for _, y in young)} years not over "
                            f"({len(young)} letter(s))")
            else:
                due.append(package)
        # What crashed runs left (`_remove_unrecorded`) is in no package of the register: after a
        # registry restored from an older backup it may be a letter's only copy. Named, not destroyed.
        if left := self.orphans():
            kept.append(f"orphans/: {left} file(s) set aside from runs that crashed, in no package of the "
                        "register: never destroyed by a purge; look through them and remove them by hand")
        if dry_run:
            return [p.path for p in due], kept
        with self._locked():
            destroyed_ids, refused = self.registry.record_destruction(
                [p.id for p in due], approved_by=approved_by, actor=actor, approver_name=approver_name,
                audit_actor=audit_actor or actor) if due else ([], [])
            kept += [f"{path}: on legal hold (placed meanwhile)" for path in refused]
            purged = [package for package in self.registry.archive_packages(None) if package.status == "purged"]
            for copy in self.copies:
                # A share not mounted holds nothing to remove here, and would keep its copies unseen.
                if purged and not os.path.isdir(copy):
                    log.error("ALERT archive: the copy folder %s is out of reach (not a folder: a share not "
                              "mounted?): the copies of destroyed packages in it are removed by the next purge", copy)
            for package in purged:  # this run's, and any a crash left with files
                self._delete_files(package)
        return [p.path for p in due if p.id in destroyed_ids], kept

    def _delete_files(self, package: ArchivePackage) -> None:
        for root in self.copies:
            try:
                _delete_package_files(root, package)
            except OSError as exc:  # the next purge tries again: it goes over every purged package
                log.error("ALERT archive: the copy of destroyed %s in %s cannot be removed: %s", package.path, root,
                          exc.strerror or exc)
        _delete_package_files(self.root, package)
        for letter in self.registry.archived_letters(package.id):
            (self.config.state_dir / letter.raw_path).unlink(missing_ok=True)


def _delete_package_files(root: Path, package: ArchivePackage) -> None:
    manifest = root / package.manifest
    for path in (root / package.path, manifest, circulation_path(manifest)):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _copy_file(origin: Path, copy: Path) -> None:
    with open(origin, "rb") as source, writing(copy) as out:
        shutil.copyfileobj(source, out, 1 << 20)


def circulation_path(manifest: Path) -> Path:
    """The circulation record beside a manifest: circulation-part-001.csv (its name does not start
    with part-, so a run never takes it for a crashed run's leftover)."""
    return manifest.with_name("circulation-" + manifest.name.replace(".manifest.csv", ".csv"))


@dataclass
class _Manifest:
    """A package's manifest as read for checking the package, and the register's hashes of its letters."""
    problem: str  # why the manifest cannot be read; empty when it was
    data: bytes
    text: str
    framed: tuple[list[_Place], list[str], int, list[str] | None] | None  # _frame_places(text), for mail
    registered: dict[str, str]  # archive number -> "SHA-256 letter-number", as the register gives them


@contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Read:
    """A chunk of letters read: their mbox blocks (each letter's, then its replies'), and for each
    letter (letter, its size, offset of its block counted from the chunk's start, index of its
    block); the blocks' total size."""
    blocks: list[bytes]
    letters: list[tuple[ToArchive, int, int, int]]
    mbox_size: int


@dataclass
class _Package:
    """A package written, durable and in place, waiting to be recorded: its manifest rows, its
    letters and the archive numbers they are to have."""
    month: str
    category: str
    kind: str
    part: int
    target: Path
    manifest: Path
    letters: list[ToArchive]
    numbers: list[str]
    rows: list[list[Any]]
    size: int
    sha256: str  # the package file's; empty for a folder of faxes (its manifest's is recorded)
    series: str
    last: int  # the archive series' last number before these letters
    replies: list[int]  # the sent replies it holds


def _chunked(letters: list[ToArchive]) -> Iterator[list[ToArchive]]:
    """The letters in chunks of at most CHUNK letters and, past its first letter, CHUNK_BYTES:
    a few chunks are in memory at once, however large the month's letters."""
    chunk: list[ToArchive] = []
    size = 0
    for letter in letters:
        if chunk and (len(chunk) == CHUNK or size + letter.raw_size > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(letter)
        size += letter.raw_size
    if chunk:
        yield chunk


def _row(number: str, letter: ToArchive, size: int, offset: int, length: int, file_name: str,
         frame_offset: int | str, frame_length: int | str) -> list[Any]:
    """A manifest row, in the order of MANIFEST_FIELDS."""
    return [number, letter.number, letter.received_at.isoformat(), letter.channel, letter.raw_sha256, size, offset,
            length, file_name, frame_offset, frame_length]


def _mbox_block(separator: bytes, data: bytes, start: int = 0) -> bytes:
    """The separator line, the message `data[start:]` ("From " lines quoted for mboxrd) and the
    line that ends it; the message is copied once, not sliced out of a larger read first."""
    body: bytes | memoryview = memoryview(data)[start:]
    if data.find(b"From ", start) >= 0:  # rare: quoted
        body = mbox_escape(bytes(body))
    return b"".join((separator, body, b"\n" if len(data) == start or data.endswith(b"\n") else b"\n\n"))


def _gzip_member(block: bytes) -> bytes:
    return gzip.compress(block, compresslevel=6, mtime=0)


def _gunzip_member(frame: bytes) -> bytes:
    return zlib.decompress(frame, wbits=31)


def _in_order(work: Callable[[T], R], jobs: Iterable[T], workers: int) -> Iterator[R]:
    """work(job) for each job on `workers` threads, the results yielded in the jobs' order. Only
    a few jobs are taken ahead of the consumer (the jobs iterable is read lazily), so memory
    stays bounded; when the consumer stops or fails, the jobs not started are cancelled."""
    with ThreadPoolExecutor(workers, thread_name_prefix="archive") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(work, job))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class _Place(NamedTuple):
    """A letter in a package of one frame per message, as its manifest row gives it."""
    at: int  # its frame's offset in the package
    length: int  # its frame's length
    size: int  # the letter's
    sha256: str
    archive_number: str
    letter_number: str

    @property
    def label(self) -> str:
        return f"{self.archive_number} ({self.letter_number})"


def _frame_places(text: str) -> tuple[list[_Place], list[str], int, list[str] | None] | None:
    """The letters of a manifest with frame columns, in the order their frames sit in the
    package; a problem for each row that gives no place (a damaged manifest); the number of
    rows; every row's archive number. None for a manifest of a package of one frame for the
    month (no frame columns)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    rows = [row for row in reader if row]
    if "frame_offset" not in header or not rows:
        return None
    column = {name: n for n, name in enumerate(header)}
    needed = ("frame_offset", "frame_length", "size", "sha256", "archive_number", "letter_number")
    if missing := [name for name in needed if name not in column]:
        return [], [f"the manifest has no column {', '.join(missing)}"], len(rows), None  # said once: enough
    # The header, not a row, says the package holds a frame per letter: a row without its frame
    # place is a damaged row, never a sign of a package of one frame for the month.
    at, length, size, sha, number, letter = (column[name] for name in needed)
    places: list[_Place] = []
    problems = []
    width = len(header)
    for row in rows:
        if len(row) < width:
            row += [""] * (width - len(row))  # a row cut short: empty values, which no check takes for right
        try:
            place = _Place(int(row[at]), int(row[length]), int(row[size]), row[sha], row[number], row[letter])
        except ValueError:
            place = None
        if place is None or min(place.at, place.length, place.size) < 0:
            problems.append(f"{row[number]} ({row[letter]}): its manifest row is damaged")
        else:
            places.append(place)
    places.sort(key=lambda place: place.at)
    return places, problems, len(rows), [row[number] for row in rows]


def _pieces_of(f: Any, places: list[_Place], digest: Any) -> Iterator[tuple[bytes, int, list[_Place]]]:
    """(bytes of the package, the file offset they start at, the frames that lie whole in them),
    reading the package once from the start, a piece at a time, and feeding every byte read to
    `digest`. The frames the file ends before come last, cut short."""
    buffer, start = b"", 0
    first, count = 0, len(places)
    while first < count:
        end, last = start + len(buffer), first
        while last < count and places[last].at + places[last].length <= end:
            last += 1
        if last > first:
            yield buffer, start, places[first:last]
            first = last
            continue
        at, length = places[first].at, places[first].length
        piece = f.read(max(_PIECE, at + length - end))
        if not piece:
            yield buffer, start, places[first:]
            return
        digest.update(piece)
        keep = min(max(0, at - start), len(buffer))  # the bytes before the next frame are done with
        buffer, start = buffer[keep:] + piece, start + keep


def _manifest_rows(text: str) -> list[dict[str, str]]:
    """The manifest's rows as dicts by column name (csv.DictReader does the same a few times slower)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    short = [""] * len(header)  # a row cut short reads as empty values, which no check takes for right
    return [dict(zip(header, row if len(row) >= len(header) else row + short[len(row):], strict=False))
            for row in reader if row]


def _message_of(block: bytes, size: int) -> bytes:
    body = block.split(b"\n", 1)[1] if b"\n" in block else b""  # the "From " separator line
    return mbox_unescape(body)[:size]


def _original_in(block: bytes | memoryview, size: int, sha256: str) -> tuple[bytes | memoryview, str]:
    """The letter in its mbox block, as `_message_of` gives it, and its SHA-256.

    Most blocks hold the letter as it came after the separator line: it is hashed there, in
    place. One whose hash differs there had "From " lines quoted (a quoted line differs from the
    letter's at its '>' or 'F', so a quoted block never hashes right in place), or is damaged: it
    is unquoted and hashed again."""
    view = memoryview(block)
    newline = bytes(view[:_SEPARATOR_MAX]).find(b"\n")
    if newline >= 0:
        message = view[newline + 1:newline + 1 + size]
        digest = hashlib.sha256(message).hexdigest()
        if digest == sha256 and len(message) == size:
            return message, digest
    unquoted = _message_of(bytes(view), size)
    return unquoted, hashlib.sha256(unquoted).hexdigest()


def _whole_numbers(row: dict[str, str], *names: str) -> list[int] | None:
    """The row's values in the columns `names`, whole numbers not below zero as written; None when
    one is not (a damaged manifest row)."""
    try:
        numbers = [int(row[name]) for name in names]
    except ValueError:
        return None
    return numbers if all(number >= 0 for number in numbers) else None


def _damaged(row: dict[str, str]) -> str:
    return f"{row['archive_number']} ({row['letter_number']}): its manifest row is damaged"


def _compare(row: dict[str, str], size: int, raw: bytes, registered: dict[str, str]) -> list[str]:
    """A letter read back against its manifest row (a package without frames, or of faxes; `size`:
    the row's) and the register."""
    place = _Place(0, 0, size, row["sha256"], row["archive_number"], row["letter_number"])
    return _compare_place(place, raw, hashlib.sha256(raw).hexdigest(), registered)


def _compare_place(place: _Place, raw: bytes | memoryview, sha: str, registered: dict[str, str]) -> list[str]:
    """A letter read back (and its SHA-256) against its manifest row and the register: the
    register's letter of that archive number, by its letter number too (a manifest whose letter
    numbers were swapped would give one letter's original for another's)."""
    if sha != place.sha256 or len(raw) != place.size:
        return [f"{place.label}: content differs from the manifest"]
    known = registered.get(place.archive_number)
    if known != f"{sha} {place.letter_number}":
        if known is not None and known.startswith(f"{sha} "):
            return [f"{place.label}: the register gives archive number {place.archive_number} to "
                    f"{known.partition(' ')[2]}"]
        return [f"{place.label}: the register's SHA-256 differs"]
    return []


def _listed_once(numbers: list[str], registered: dict[str, str]) -> list[str]:
    """Every archive number of the manifest once. With as many rows as the register has letters
    in the package, each found there (checked letter by letter), that is every one of them; a
    row copied over another's is one listed twice and one missing. Only then is it spelt out."""
    listed = set(numbers)
    if len(listed) == len(numbers):
        return []
    problems = [f"{number}: listed {count} times in the manifest"
                for number, count in Counter(numbers).items() if count > 1]
    return problems + [f"{number} ({value.partition(' ')[2]}): in the register, not in the manifest"
                       for number, value in registered.items() if number not in listed]


def _sha_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _add_years(when: datetime, years: int) -> datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February
        return when.replace(year=when.year + years, day=28)


def read_original(config: Config, registry: Registry, letter: Letter) -> bytes:
    """A letter's original bytes, from the message store or, once released, from the archive.
    Raises ArchiveError when neither holds it readable (destroyed with its package, damaged)."""
    if letter.raw_released:
        return Archiver(config, registry).read(letter)
    try:
        return read_raw(config.state_dir / letter.raw_path)
    except (OSError, DamagedItem) as exc:
        raise ArchiveError(f"{letter.number}: its original cannot be read: {exc}") from exc


CIRCULATION_FIELDS = ["archive_number", "letter_number", "circulation", "started_by", "started_at", "step", "reader",
                      "deadline", "signed_by", "signed_at", "instruction"]


def _circulation_rows(registry: Registry, letters: list[tuple[int, str, str]], only: set[int] | None = None,
                      finished: set[int] | None = None) -> list[dict[str, str]]:
    """The circulation record of letters being archived ((id, letter number, archive number); `only`:
    of these circulations alone), one row per reader, for the CSV beside the package's manifest; the
    finished circulations among them added to `finished`."""
    steps = CirculationRecords(registry).steps_of([letter_id for letter_id, _, _ in letters])
    rows = []
    for letter_id, number, archive_number in letters:
        for circ, step in steps.get(letter_id, []):
            if only is not None and circ.id not in only:
                continue
            if finished is not None and circ.status == "finished":
                finished.add(circ.id)
            rows.append({"archive_number": archive_number, "letter_number": number, "circulation": str(circ.id),
                         "started_by": circ.started_by, "started_at": circ.started_at.isoformat(),
                         "step": str(step.position), "reader": f"{step.kind}:{step.target}",
                         "deadline": step.deadline.isoformat() if step.deadline else "",
                         "signed_by": step.signed_by or "",
                         "signed_at": step.signed_at.isoformat() if step.signed_at else "",
                         "instruction": step.instruction})
    return rows
