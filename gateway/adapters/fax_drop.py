"""The fax drop folder: files a fax machine or fax server writes, taken once they are complete.

Polled, not watched with inotify: fax machines write to network shares, where
inotify does not fire. A file is taken only when its size and modification
time have stayed the same for `stable_seconds`; temporary and partial names
are never taken. The file (and its information sidecar, if any) leaves the
folder only after its bytes are durable in the spool. A file that is not a
readable TIFF or PDF fax goes to `quarantine/` in the drop folder with a
`.reason.txt` beside it: nothing is ever deleted unread.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.stages.fax.document import FaxDocument, FaxUnreadable, read_fax
from gateway.stages.fax.metadata import FaxFacts, find_sidecar, read_filename, read_sidecar, read_tiff_tags
from gateway.faults import checkpoint
from gateway.spool import Spool, SpoolError

log = logging.getLogger("gateway.stages.fax")

QUARANTINE = "quarantine"


def fax_facts(config: Config, path: Path, document: FaxDocument, sidecar: Path | None) -> dict[str, Any]:
    """Everything known about a fax file, for its spool item: sidecar, then TIFF tags, then name."""
    tz = ZoneInfo(config.model.gateway.timezone)
    facts = FaxFacts()
    if sidecar is not None:
        try:
            read_sidecar(sidecar.read_text(encoding="utf-8", errors="replace"), facts, f"sidecar {sidecar.name}", tz)
        except OSError as exc:
            facts.problems.append(f"sidecar {sidecar.name} cannot be read: {exc.strerror}")
    read_tiff_tags(document.tags, facts, tz)
    settings = config.model.fax
    read_filename(path.name, settings.filename_pattern, settings.filename_time_format, facts, tz)
    return {**facts.as_meta(), "file_name": path.name, "kind": document.kind, "pages": document.page_count,
            "resolution": sorted({p.resolution for p in document.pages})}


class FaxDropWatcher:
    def __init__(self, config: Config, spool: Spool, wake: Callable[[], None] | None = None):
        self.config = config
        self.spool = spool
        self.folder = config.fax_drop_dir
        self._wake = wake
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last scan
        self._thread = threading.Thread(target=self._run, name="fax-drop", daemon=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / QUARANTINE).mkdir(exist_ok=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # a bug or a vanished share must not end the watcher
                log.exception("fax drop folder %s: scan failed", self.folder)
            self._stop.wait(self.config.model.fax.poll_seconds)

    # -- one pass over the folder --------------------------------------
    def scan(self) -> int:
        """Take every complete fax; returns how many were taken."""
        settings = self.config.model.fax
        now = time.time()
        taken = 0
        current: dict[str, tuple[int, int]] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.error("fax drop folder %s cannot be read: %s", self.folder, exc.strerror)
            return 0
        names = {e.name for e in entries}
        for entry in sorted(entries, key=lambda e: e.name):
            if self._stop.is_set():
                break
            name = entry.name
            if not entry.is_file(follow_symlinks=False) or self._ignored(name) or self._is_sidecar(name, names):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            state = (st.st_size, st.st_mtime_ns)
            current[name] = state
            # Complete: unchanged since the last scan (or first seen already old), and quiet
            # for long enough. A fax being written keeps changing its size or mtime.
            quiet = now - st.st_mtime >= settings.stable_seconds
            unchanged = self._seen.get(name, state) == state
            if st.st_size == 0 or not quiet or not unchanged:
                continue
            if self._take(Path(entry.path), state):
                taken += 1
        self._seen = current
        if taken and self._wake is not None:
            self._wake()
        return taken

    def _ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.config.model.fax.ignore)

    @staticmethod
    def _is_sidecar(name: str, names: set[str]) -> bool:
        stem, dot, suffix = name.rpartition(".")
        if f".{suffix}" not in (".info", ".qf", ".txt") or not dot:
            return False
        # foo.info beside foo.tif, or foo.tif.info beside foo.tif
        return stem in names or any(n.rpartition(".")[0] == stem for n in names if n != name)

    def _take(self, path: Path, state: tuple[int, int]) -> bool:
        try:
            data = path.read_bytes()
            after = path.stat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("fax %s cannot be read: %s", path.name, exc.strerror)
            return False
        if (after.st_size, after.st_mtime_ns) != state or len(data) != state[0]:
            return False  # written to while we read: next time
        sidecar = find_sidecar(path)
        try:
            document = read_fax(data, path.name)
        except FaxUnreadable as exc:
            self._quarantine(path, sidecar, str(exc))
            return False
        meta = {
            "channel": "fax", "intake": "fax-drop",
            "source_key": f"fax-drop:{path.name}:{state[0]}:{state[1]}",
            "received_at": datetime.now(timezone.utc).isoformat(),
            "fax": fax_facts(self.config, path, document, sidecar),
        }
        try:
            item = self.spool.enqueue(data, meta)
        except SpoolError as exc:
            log.error("fax %s not taken: %s", path.name, exc)
            return False
        checkpoint("before-fax-remove")
        # Durable in the spool: only now may the original leave the drop folder.
        for leaving in (path, sidecar):
            if leaving is not None:
                try:
                    leaving.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.error("fax %s is spooled (item %s) but cannot be removed from the drop folder: %s; "
                              "it will be recognised if taken again", leaving.name, item.id, exc.strerror)
        log.info("fax %s taken: %d page(s), from %s (item %s)", path.name, document.page_count,
                 meta["fax"]["number"] or "an unknown number", item.id)
        return True

    def _quarantine(self, path: Path, sidecar: Path | None, reason: str) -> None:
        target_dir = self.folder / QUARANTINE
        target = target_dir / path.name
        n = 1
        while target.exists():
            target = target_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        try:
            target.with_name(target.name + ".reason.txt").write_text(
                f"{datetime.now(timezone.utc).isoformat()} {path.name}: {reason}\n", encoding="utf-8")
            os.rename(path, target)
            if sidecar is not None:
                os.rename(sidecar, target_dir / (target.name + sidecar.suffix))
        except OSError as exc:
            log.error("fax %s is unreadable (%s) and cannot be moved to quarantine: %s", path.name, reason,
                      exc.strerror)
            return
        log.error("fax %s set aside in %s: %s", path.name, target, reason)
