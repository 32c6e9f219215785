"""Durable files: the one place outside the registry where bytes are made to survive a power cut.

The rules, for a filesystem that may drop anything not yet synced:

- a file's bytes are durable once the file is fsynced; fsync it *before* renaming
  it into place, or a crash can leave the new name pointing at missing bytes;
- a name (created, renamed, unlinked) is durable once its directory is fsynced:
  fsync the directory *after* the rename, and both directories when it moved;
- a new directory exists only once its parent is fsynced.

The spool, the message store, the quarantine and the archive use these and
nothing else; no other module calls fsync or renames a file into place.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["DirectorySync", "LoopSync", "SharedSync", "fsync_dir", "make_dirs", "move", "move_all", "remove",
           "write_file", "writing"]


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(*paths: Path) -> None:
    """mkdir -p, with every directory created made durable in its parent."""
    parents: set[Path] = set()
    for path in paths:
        missing: list[Path] = []
        for candidate in (path, *path.parents):
            if candidate.is_dir():
                break
            missing.append(candidate)
        for directory in reversed(missing):
            directory.mkdir(exist_ok=True)
            parents.add(directory.parent)
    for parent in sorted(parents):
        fsync_dir(parent)


@contextmanager
def writing(path: Path) -> Iterator[BinaryIO]:
    """Stream a file into place: written under a hidden temporary name beside it,
    fsynced, renamed, the directory fsynced. Until the block ends without an
    exception nothing is visible under `path`; on an exception the temporary
    file is removed and `path` is untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    out = open(tmp, "wb")
    try:
        yield out
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.rename(tmp, path)
    except BaseException:
        try:
            out.close()
        except OSError:
            pass  # ENOSPC again while flushing the buffer: the descriptor is closed all the same
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_file(path: Path, data: bytes) -> None:
    """Write a whole file durably (tmp, fsync, rename, fsync the directory)."""
    with writing(path) as out:
        out.write(data)


def move(src: Path, dst: Path) -> None:
    """Rename durably: the new name, and the old one's disappearance, both survive a crash."""
    move_all([(src, dst)])


def move_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename many files durably with one fsync per directory involved, not two per file.
    Every rename is tried; the first error is raised after the directories are synced."""
    folders: set[Path] = set()
    error: OSError | None = None
    for src, dst in moves:
        try:
            os.rename(src, dst)
        except OSError as exc:
            error = error or exc
            continue
        folders.update((src.parent, dst.parent))
    for folder in sorted(folders):
        fsync_dir(folder)
    if error is not None:
        raise error


def remove(path: Path) -> bool:
    """Unlink durably; False when there was nothing to remove (and nothing to sync)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


class SharedSync:
    """One sync shared by the threads that need it at the same time (group commit).

    Each caller takes a ticket after its writes; a sync that starts after that
    ticket covers it. While one sync runs, every caller arriving meanwhile waits
    for the next one, which then covers them all: N threads pay for about two
    syncs, not N. A sync that fails covers nobody: the next caller runs it again,
    and the one that ran it gets the error.
    """

    def __init__(self, sync: Callable[[], None]):
        self._sync = sync
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested
                self._cond.release()
                try:
                    self._sync()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, covers)


class DirectorySync(SharedSync):
    """fsync a directory, shared by threads that renamed into it at the same time:
    a rename is durable once its directory is fsynced."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(lambda: fsync_dir(path))


class LoopSync:
    """Group commit for coroutines: a thread of its own runs the syncs, each covering every caller
    that asked before it started, and wakes each waiting event loop once per sync.

    SharedSync does the same for threads, but a coroutine waiting there needs a thread to wait in:
    handing each message to a thread and back cost two thread switches and two wake-ups of the
    loop, which on two cores took more CPU than the sync itself. A sync that fails covers nobody:
    every caller it would have covered gets the error, and the next caller starts a new one.
    """

    def __init__(self, sync: Callable[[], None], name: str):
        self._sync = sync
        self._name = name
        self._asked = threading.Condition()
        self._waiting: list[asyncio.Future[None]] = []
        self._thread: threading.Thread | None = None

    async def sync(self) -> None:
        """Return once a sync that started after this call has ended; raise its error if it failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._asked:
            self._waiting.append(done)
            if self._thread is None:
                # A daemon thread: it holds nothing but callers' futures, which die with their loop.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._asked.notify()
        await done

    def _run(self) -> None:
        while True:
            with self._asked:
                while not self._waiting:
                    self._asked.wait()
                covered, self._waiting = self._waiting, []
            error: BaseException | None = None
            try:
                self._sync()
            except Exception as exc:  # every waiter hears of it; the thread goes on for the next ones
                error = exc
            for loop in {future.get_loop() for future in covered}:  # one wake-up for each loop waiting
                try:
                    loop.call_soon_threadsafe(_settle, [f for f in covered if f.get_loop() is loop], error)
                except RuntimeError:
                    pass  # that loop has closed: nobody waits for these any more


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
