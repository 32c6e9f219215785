"""The spool: the first of the two places where durability lives.

An item is one file: a header line `GWSPOOL1 <json meta>\\n` followed by the
raw bytes exactly as received. Its life, by directory:

    tmp/         being written (locked by the writer; unlocked leftovers are debris)
    new/         durable and waiting: written, fsynced, renamed, directory fsynced
    work/        claimed by a worker, which holds an flock on it while processing
    quarantine/  failed too often; a `<id>.reason.json` beside it says why

Every rename, unlink and directory that must survive a power cut goes through
`gateway.spool.durable`, the one module of durable-file primitives.

File names are `<id>.<attempts>`; ids sort by arrival time. A worker that
dies releases its flock with its process, so `recover()` can tell an
abandoned claim from a live one and puts only the abandoned back in `new/`.
Finishing an item renames the file into the message store (`messages/`),
where it stays as the raw copy of the registered letter.

Failed attempts set the file's mtime into the future as a "not before" time,
so a failing item backs off without another file to keep in step.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from gateway.spool.durable import DirectorySync, fsync_dir, make_dirs, move, move_all, remove, write_file

log = logging.getLogger("gateway.spool")
_libc = ctypes.CDLL(None, use_errno=True)

MAGIC = b"GWSPOOL1 "
_SEAL_AT = len(MAGIC)
_UNSEALED = b"-" * 16 + b" " + b"-" * 64
_SEAL_LEN = len(_UNSEALED)


class DamagedItem(ValueError):
    """A spool file whose bytes do not match its seal: written but never completed."""
_DIRS = ("tmp", "new", "work", "quarantine")


class SpoolError(Exception):
    """The spool cannot take an item (disk full, permissions): nothing was accepted."""

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.errno = code  # of the OSError behind it

    @property
    def full(self) -> bool:
        """Out of space or quota: it passes by itself once space returns."""
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def readable_text(text: str) -> str:
    """`text` made readable if it is not Unicode: a file name the filesystem holds as bytes that
    are not UTF-8 (b"fax\\xff.tif") comes from os as lone surrogates, which neither UTF-8 nor the
    registry can store; it is kept as the text "fax\\xff.tif". What an intake looks up by such a
    name must be made readable the same way, to match what the spool wrote."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _readable(value: Any) -> Any:
    """`value` with every text that is not Unicode made readable (readable_text)."""
    if isinstance(value, str):
        return readable_text(value)
    if isinstance(value, dict):
        return {_readable(k): _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


def _json_bytes(value: Any, **options: Any) -> tuple[bytes, Any]:
    """`value` as UTF-8 JSON, and the value the bytes hold (made readable if it had to be)."""
    try:
        return json.dumps(value, ensure_ascii=False, **options).encode(), value
    except UnicodeEncodeError:
        value = _readable(value)
        return json.dumps(value, ensure_ascii=False, **options).encode(), value


def _failed(spool: Spool, what: str, exc: OSError) -> SpoolError:
    return SpoolError(f"spool {spool.root}: {what}: {exc.strerror or exc}", code=exc.errno)


_ITEM_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,99}")


def new_item_id() -> str:
    # Nanosecond time first so that a sorted listing is arrival order.
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def _split_name(name: str) -> tuple[str, int] | None:
    item_id, dot, attempts = name.rpartition(".")
    if not dot or not attempts.isdigit() or not item_id:
        return None
    return item_id, int(attempts)


def _syncfs(path: Path) -> None:
    """syncfs(2): everything written to the filesystem holding `path` is durable once it returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


_ONE_READ = 1 << 18  # files up to this size are read in one system call


def read_item_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """Split a spool or message-store file into its meta and its raw bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size <= _ONE_READ:
            # Most letters: one read, no buffered file object (a month's archive reads a hundred
            # thousand of them). Asking one byte more tells a file that grew meanwhile.
            data = os.read(fd, size + 1)
            if len(data) <= size:
                head_end = data.find(b"\n") + 1 or len(data)  # as readline: no newline, all is the head
                return _parse(data[:head_end], data[head_end:], path)
            os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as fh:
            # The header line and the bytes read apart: slicing one read would hold a large
            # message twice at once.
            head = fh.readline()
            raw = fh.read()
    finally:
        os.close(fd)
    return _parse(head, raw, path)


def read_raw(path: Path) -> bytes:
    return read_item_file(path)[1]


class Sealed(NamedTuple):
    """A stored original as read_sealed gives it: the bytes read, where the original starts in
    them, and its SHA-256 (checked against the seal)."""
    data: bytes
    start: int
    sha256: str

    @property
    def raw(self) -> memoryview:
        return memoryview(self.data)[self.start:]


def read_sealed(path: str | Path) -> Sealed:
    """A spool or message-store file's original checked against its seal, as read_item_file
    checks it, without its meta and without copying it out of the one read of a small file: the
    archive reads a month of them and copies each once, into its mbox block."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1) if size <= _ONE_READ else b""
    finally:
        os.close(fd)
    if not data or len(data) > size:  # large, or grown meanwhile: read as every other reader does
        meta, raw = read_item_file(Path(path))
        return Sealed(raw, 0, meta["sha256"])
    start = data.find(b"\n") + 1 or len(data)
    return Sealed(data, start, _sealed(data[:start], memoryview(data)[start:], path).decode())


def _sealed(head: bytes, raw: bytes | memoryview, path: str | Path) -> bytes:
    """The SHA-256 in the header line `head`, once `raw` is checked against it."""
    if not head.startswith(MAGIC):
        raise DamagedItem(f"{path}: not a spool item (bad header)")
    seal = head[_SEAL_AT:_SEAL_AT + _SEAL_LEN]
    if seal == _UNSEALED or not head.endswith(b"\n"):
        raise DamagedItem(f"{path}: incomplete spool item (never sealed)")
    length, _, sha = seal.partition(b" ")
    if not length.isdigit() or int(length) != len(raw) or hashlib.sha256(raw).hexdigest().encode() != sha:
        raise DamagedItem(f"{path}: damaged spool item ({len(raw)} bytes do not match the seal)")
    return sha


def _parse(head: bytes, raw: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    sha = _sealed(head, raw, path)
    try:
        meta = json.loads(head[_SEAL_AT + _SEAL_LEN + 1:-1])
    except ValueError:
        raise DamagedItem(f"{path}: damaged spool item (unreadable header)") from None
    meta["sha256"] = sha.decode()
    return meta, raw


@dataclass
class SpoolItem:
    id: str
    attempts: int
    path: Path
    meta: dict[str, Any]
    _fd: int | None = field(default=None, repr=False)
    _raw: bytes | None = field(default=None, repr=False)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self.meta, self._raw = read_item_file(self.path)
        return self._raw

    def forget_raw(self) -> None:
        self._raw = None

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class QuarantinedItem:
    id: str
    path: Path
    reason: str
    attempts: int
    quarantined_at: str
    meta: dict[str, Any]
    history: list[str]


class SpoolWriter:
    """Streams one item to tmp/; nothing is visible until commit() returns."""

    def __init__(self, spool: Spool, meta: dict[str, Any]):
        self._spool = spool
        self.id = new_item_id()
        self._tmp = spool.root / "tmp" / f"{self.id}.0"
        self.size = 0
        meta = {**meta, "id": self.id}
        meta.setdefault("received_at", datetime.now(timezone.utc).isoformat())
        header, self.meta = _json_bytes(meta, separators=(",", ":"))
        try:
            self._fh: BinaryIO = open(self._tmp, "xb")
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fh.write(MAGIC + _UNSEALED + b" " + header + b"\n")
            self._hash = hashlib.sha256()
        except OSError as exc:
            self.abort()
            raise _failed(spool, "cannot create item", exc) from exc

    def write(self, chunk: bytes) -> None:
        try:
            self._fh.write(chunk)
            self._hash.update(chunk)
        except OSError as exc:
            self.abort()
            raise _failed(self._spool, "cannot write item", exc) from exc
        self.size += len(chunk)

    def commit(self, *, claim: bool = False, durable: bool = True) -> SpoolItem:
        """Seal and make durable in new/ (or in work/, still locked by us, when claim=True).

        durable=False (claimed items only) leaves the fsync to the caller, who
        makes a whole batch durable at once with Spool.sync() before
        acknowledging any of it.
        """
        assert durable or claim
        target = self._spool.root / ("work" if claim else "new") / f"{self.id}.0"
        try:
            self._fh.flush()
            os.pwrite(self._fh.fileno(), f"{self.size:016d} {self._hash.hexdigest()}".encode(), _SEAL_AT)
            if claim:
                # Rename first: the file fsync then commits the rename in the same
                # journal transaction, and the directory fsync finds nothing left to
                # do. Until fsync returns nothing is acknowledged; a crash before
                # that leaves a locked-then-abandoned item whose seal does not
                # match, which recover() drops.
                os.rename(self._tmp, target)
                if durable:
                    os.fsync(self._fh.fileno())
            else:
                # Waiting items must be complete the moment they are visible in new/.
                os.fsync(self._fh.fileno())
                os.rename(self._tmp, target)
            if durable:
                self._spool.dir_sync["work" if claim else "new"].sync()
        except OSError as exc:
            self.abort()
            _unlink_quietly(target)
            raise _failed(self._spool, "cannot commit item", exc) from exc
        item = SpoolItem(self.id, 0, target, {**self.meta, "sha256": self._hash.hexdigest()})
        if claim:
            # Keep the lock the writer already holds: recover() must not take it from us.
            item._fd = os.dup(self._fh.fileno())
        self._fh.close()
        return item

    def abort(self) -> None:
        """Drop the partial item. Never raises: it runs while an error is being handled, most
        often ENOSPC, which closing the file would raise again while flushing its buffer."""
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            try:
                fh.close()
            except OSError:
                pass  # the descriptor (and its lock) is closed all the same; the bytes go with the file
        _unlink_quietly(self._tmp)


def _copy_into(src: Path, dst: Path) -> bool:
    """`src` copied to `dst` on another filesystem, as durable as a link would be: written and
    fsynced under a temporary name beside `dst`, then linked into place, so that `dst` is never a
    partial copy and bytes already there are never replaced (False: `dst` existed). The caller syncs
    the folder before it removes `src`."""
    if dst.exists():
        return False
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(src, "rb") as source, open(tmp, "wb") as copy:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
            copy.flush()
            os.fsync(copy.fileno())
        os.link(tmp, dst)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _unlink_quietly(path: Path) -> None:
    """Remove a file nobody was told about; a leftover is logged, recover() clears tmp/ later."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("cannot remove %s: %s", path, exc.strerror or exc)


class Spool:
    def __init__(self, root: Path, message_dir: Path, *, max_attempts: int = 5):
        self.root = root
        self.message_dir = message_dir
        self.max_attempts = max_attempts
        make_dirs(*(root / name for name in _DIRS), message_dir)
        self.dir_sync = {name: DirectorySync(root / name) for name in ("new", "work")}
        # The store's 256 fan-out folders exist up front: no mkdir on the hot path.
        # "ff" is made last, after the others are durable: its presence says they all are.
        if not (message_dir / "ff").is_dir():
            for n in range(255):
                (message_dir / f"{n:02x}").mkdir(exist_ok=True)
            fsync_dir(message_dir)
            make_dirs(message_dir / "ff")

    # -- intake ---------------------------------------------------------
    def writer(self, meta: dict[str, Any]) -> SpoolWriter:
        return SpoolWriter(self, meta)

    def abandon(self, item: SpoolItem, exc: OSError) -> SpoolError:
        """An item committed with durable=False whose sync failed: never acknowledged, so it is
        removed (the sender keeps its copy and retries); returns the error to report."""
        try:
            self.discard(item)
        except OSError as cleanup_error:
            log.error("cannot remove spool item %s: %s", item.path, cleanup_error.strerror or cleanup_error)
        return _failed(self, "cannot make item durable", exc)

    def enqueue(self, raw: bytes | Iterable[bytes], meta: dict[str, Any], *, claim: bool = False) -> SpoolItem:
        """Make an item durable. Returns only after fsync; raises SpoolError otherwise."""
        writer = self.writer(meta)
        for chunk in ([raw] if isinstance(raw, bytes) else raw):
            writer.write(chunk)
        return writer.commit(claim=claim)

    def free_bytes(self) -> int:
        """Space left on the spool's filesystem for an unprivileged writer (the daemon's user)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # -- workers --------------------------------------------------------
    def pending(self) -> list[str]:
        return sorted(os.listdir(self.root / "new"))

    def claimed(self) -> list[str]:
        """The items in work/: being processed, or left by a worker that stopped (the next
        recover() puts those back in line)."""
        return sorted(os.listdir(self.root / "work"))

    def holds(self, item_id: str) -> bool:
        """Whether the item waits in new/ or is being worked on (under any attempt's name)."""
        return item_id in self.held()

    def held(self) -> set[str]:
        """The ids of the items waiting in new/ or being worked on: one listing for many questions
        (a spool with a backlog of thousands is listed once, not once an item)."""
        return {parsed[0] for folder in ("new", "work") for name in os.listdir(self.root / folder)
                if (parsed := _split_name(name)) is not None}

    def quarantines(self, item_id: str) -> bool:
        """Whether the item was set aside in quarantine."""
        return _ITEM_ID.fullmatch(item_id) is not None and (self.root / "quarantine" / f"{item_id}.item").exists()

    def oldest_age(self) -> float:
        """Seconds since the oldest item waiting or in work was spooled (0 when there is none)."""
        oldest = None
        for name in ("new", "work"):
            try:
                with os.scandir(self.root / name) as entries:
                    for entry in entries:
                        try:
                            mtime = entry.stat().st_mtime
                        except FileNotFoundError:
                            continue
                        oldest = mtime if oldest is None else min(oldest, mtime)
            except FileNotFoundError:
                continue
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def claim(self, limit: int) -> list[SpoolItem]:
        """Take up to `limit` waiting items, oldest first, each locked to this process."""
        claimed: list[SpoolItem] = []
        now = time.time()
        new_dir, work_dir = self.root / "new", self.root / "work"
        for name in self.pending():
            if len(claimed) >= limit:
                break
            parsed = _split_name(name)
            if parsed is None:
                continue
            item_id, attempts = parsed
            src = new_dir / name
            try:
                fd = os.open(src, os.O_RDONLY)  # flock needs no write access
            except FileNotFoundError:
                continue  # another worker took it
            except OSError as exc:
                log.error("cannot open spool item %s: %s", src, exc.strerror)
                continue
            try:
                if attempts and os.fstat(fd).st_mtime > now:
                    os.close(fd)
                    continue  # still backing off
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                dst = work_dir / name
                # The lock travels with the inode; if the rename fails the
                # other claimer won and has already moved or finished it.
                # Not made durable on purpose: a claim a crash undoes leaves the
                # item in new/, where it is simply claimed again.
                os.rename(src, dst)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.ENOENT):
                    log.error("cannot claim spool item %s: %s", src, exc.strerror)
                continue
            claimed.append(SpoolItem(item_id, attempts, dst, {}, _fd=fd))
        return claimed

    def finish(self, item: SpoolItem, sha256: str) -> Path:
        """Processing is committed: keep the file as the raw copy, or drop it if one exists."""
        self.finish_all([(item, sha256)])
        return self.stored_path(sha256)

    def finish_all(self, finished: list[tuple[SpoolItem, str]]) -> None:
        """A batch is committed: each file becomes its letter's raw copy in the message store
        (or goes, if the store has those bytes already), with one sync for the batch.

        The copy's new name is made durable before the old one goes: a second name (link),
        then the store folders synced, then the spool's name removed, unsynced. A power cut
        before that sync loses only the new name; one after it may bring the old name back,
        and recover() finds the item in work/, the registry recognises it by its intake key,
        and it is finished again. Renaming instead would let another item's sync of work/
        make the removal durable before the new name is: the bytes would be in neither place.
        Raises OSError (every item is unlocked; what was linked stays, which is harmless)."""
        try:
            folders: set[Path] = set()
            for item, sha256 in finished:
                stored = self.stored_path(sha256)
                try:
                    os.link(item.path, stored)
                    folders.add(stored.parent)
                except FileExistsError:
                    pass  # the same bytes arrived before: their copy is the letter's
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    # The store is on another filesystem (one that several nodes mount): a copy.
                    if _copy_into(item.path, stored):
                        folders.add(stored.parent)
            if len(folders) == 1:
                fsync_dir(folders.pop())
            elif folders:
                # A batch's copies spread over many store folders (named by hash): one syncfs of
                # the store's filesystem makes all their names durable, where a fsync each would
                # wait for the disk once per folder.
                _syncfs(self.message_dir)
            for item, _ in finished:
                item.path.unlink(missing_ok=True)
        finally:
            for item, _ in finished:
                item._unlock()
        for item, _ in finished:
            # An item retried from quarantine leaves its reason file behind until now.
            self.forget_reason(item.id)

    def stored_path(self, sha256: str) -> Path:
        return self.message_dir / sha256[:2] / f"{sha256}.msg"

    def whereabouts(self, item: SpoolItem) -> str:
        """Where another process put a claimed item that left work/: "released" (back in new/
        untouched), "retry" (back in new/ after a failed attempt), "quarantined", "stored" (in the
        message store: registered) or "gone" (discarded)."""
        if (self.root / "new" / item.path.name).exists():
            return "released"
        if (self.root / "new" / f"{item.id}.{item.attempts + 1}").exists():
            return "retry"
        if (self.root / "quarantine" / f"{item.id}.item").exists():
            return "quarantined"
        sha256 = item.meta.get("sha256")
        if sha256 and self.stored_path(sha256).exists():
            return "stored"
        return "gone"

    def fail(self, item: SpoolItem, reason: str, *, backoff_seconds: float = 5.0) -> bool:
        """A processing attempt failed. Returns True when the item went to quarantine."""
        attempts = item.attempts + 1
        try:
            if attempts >= self.max_attempts:
                self._quarantine(item.path, item.id, attempts, reason)
                return True
            dst = self.root / "new" / f"{item.id}.{attempts}"
            delay = backoff_seconds * 2 ** (attempts - 1)
            os.utime(item.path, (time.time(), time.time() + delay))
            move(item.path, dst)  # the attempt count is in the name: it must survive a crash
            return False
        finally:
            item._unlock()

    def release(self, item: SpoolItem) -> None:
        """Give an item back untouched (shutdown before it was processed)."""
        self.release_all([item])

    def release_all(self, items: list[SpoolItem]) -> None:
        """Give items back untouched, with one sync of work/ and new/ for them all (a batch of
        IMAP's thousands would otherwise wait for the disk twice per item)."""
        try:
            move_all([(item.path, self.root / "new" / item.path.name) for item in items])
        finally:
            for item in items:
                item._unlock()

    def sync(self) -> None:
        """Make every item written so far durable: one syncfs(2) for a batch
        instead of a file and a directory fsync for each item."""
        _syncfs(self.root)

    def discard(self, item: SpoolItem) -> None:
        """Drop an item that its sender was told to send again (SMTP 4xx)."""
        try:
            # Durably: an item its sender will send again must not come back after a crash.
            remove(item.path)
        finally:
            item._unlock()

    def recover(self) -> tuple[int, int]:
        """Return abandoned claims to new/ and clear debris; (requeued, quarantined)."""
        requeued = quarantined = 0
        for name in sorted(os.listdir(self.root / "work")):
            parsed = _split_name(name)
            path = self.root / "work" / name
            if parsed is None:
                continue
            with self._try_lock(path) as locked:
                if not locked:
                    continue  # a live worker holds it
                item_id, attempts = parsed
                try:
                    read_item_file(path)
                except DamagedItem as exc:
                    # Acknowledgement comes only after the fsync that completes an
                    # item, so a damaged one was most likely never acknowledged;
                    # it is kept for an operator all the same.
                    log.warning("quarantined a damaged item (cut short before it was acknowledged?): %s", exc)
                    self._quarantine(path, item_id, attempts, str(exc))
                    quarantined += 1
                    continue
                attempts += 1  # the attempt that was cut short counts
                if attempts >= self.max_attempts:
                    self._quarantine(path, item_id, attempts,
                                     f"processing was interrupted {attempts} times (the process died)")
                    quarantined += 1
                else:
                    move(path, self.root / "new" / f"{item_id}.{attempts}")
                    requeued += 1
        stale = time.time() - 60  # a writer locks its file right after creating it; leave young ones be
        for name in os.listdir(self.root / "tmp"):
            path = self.root / "tmp" / name
            try:
                if path.stat().st_mtime > stale:
                    continue
            except FileNotFoundError:
                continue
            with self._try_lock(path) as locked:
                if locked:  # never acknowledged: the sender still has it, nothing to make durable
                    path.unlink(missing_ok=True)
        return requeued, quarantined

    @contextmanager
    def _try_lock(self, path: Path) -> Iterator[bool]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.error("cannot open spool item %s: %s", path, exc.strerror)
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            # Its holder may have finished with it between the open and the lock (moved it into
            # the message store, or removed it): then there is nothing here to recover.
            try:
                still_here = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                still_here = False
            yield still_here
        finally:
            os.close(fd)

    # -- quarantine -----------------------------------------------------
    def quarantine_new(self, raw: bytes, meta: dict[str, Any], reason: str) -> str:
        """Set aside something an intake could not take whole, straight into quarantine."""
        writer = self.writer(meta)
        writer.write(raw)
        item = writer.commit(claim=True)
        try:
            self._quarantine(item.path, item.id, 0, reason)
        except OSError as exc:
            # Not set aside: the intake keeps its original, and no half-entry stays behind
            # for recover() to take for an ordinary item.
            qdir = self.root / "quarantine"
            for leftover in (item.path, qdir / f"{item.id}.item", qdir / f"{item.id}.reason.json"):
                _unlink_quietly(leftover)
            raise _failed(self, "cannot quarantine item", exc) from exc
        finally:
            item._unlock()
        return item.id

    def _quarantine(self, path: Path, item_id: str, attempts: int, reason: str) -> None:
        qdir = self.root / "quarantine"
        reason_file = qdir / f"{item_id}.reason.json"
        history: list[str] = []
        if reason_file.exists():
            history = json.loads(reason_file.read_text(encoding="utf-8")).get("history", [])
        record = {"id": item_id, "reason": reason, "attempts": attempts,
                  "quarantined_at": datetime.now(timezone.utc).isoformat(),
                  "history": history + [reason]}
        # The reason first: a quarantined item is never without one.
        write_file(reason_file, _json_bytes(record, indent=2)[0])
        move(path, qdir / f"{item_id}.item")

    def quarantined(self) -> list[QuarantinedItem]:
        out = []
        for name in sorted(os.listdir(self.root / "quarantine")):
            # A file someone copied in by hand ("... (copy).item") is no item of the spool's.
            if name.endswith(".item") and _ITEM_ID.fullmatch(name.removesuffix(".item")):
                out.append(self.quarantined_item(name.removesuffix(".item")))
        return out

    def quarantined_count(self) -> int:
        """How many items are in quarantine, without reading them."""
        return sum(1 for name in os.listdir(self.root / "quarantine")
                   if name.endswith(".item") and _ITEM_ID.fullmatch(name.removesuffix(".item")))

    def quarantined_item(self, item_id: str) -> QuarantinedItem:
        qdir = self.root / "quarantine"
        # An id as typed (a command's argument, a form's field): a name of one folder entry, not a
        # path, and short enough for a file name (the spool's own are 29 characters).
        if not _ITEM_ID.fullmatch(item_id):
            raise KeyError(item_id)
        path = qdir / f"{item_id}.item"
        if not path.exists():
            raise KeyError(item_id)
        try:
            record = json.loads((qdir / f"{item_id}.reason.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"reason": "(reason file missing)", "attempts": 0, "quarantined_at": "", "history": []}
        try:
            meta, _ = read_item_file(path)
        except ValueError as exc:
            meta = {"error": str(exc)}
        return QuarantinedItem(item_id, path, record["reason"], record["attempts"],
                               record["quarantined_at"], meta, record.get("history", []))

    def retry(self, item_id: str) -> None:
        """Put a quarantined item back in line with a fresh attempt count."""
        item = self.quarantined_item(item_id)
        move(item.path, self.root / "new" / f"{item_id}.0")
        # The reason file stays as history until the item is processed (see finish()).

    def forget_reason(self, item_id: str) -> None:
        remove(self.root / "quarantine" / f"{item_id}.reason.json")
