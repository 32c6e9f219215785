"""The fax drop folder: files a fax machine or fax server writes, taken once they are complete.

Polled, not watched with inotify: fax machines write to network shares, where
inotify does not fire. A file is taken only when its size and modification
time have stayed the same for `stable_seconds`; temporary and partial names
are never taken. The file (and its information sidecar, if any) leaves the
folder only after its bytes are durable in the spool. A file that is not a
readable TIFF or PDF fax goes, with its sidecar's content and the reason, to
the spool's quarantine (`gateway quarantine list`), from where `retry` puts it
through the pipeline again; it too leaves the folder only once durable there:
nothing is ever deleted unread.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.stages.fax.document import FaxUnreadable, read_fax
from gateway.stages.fax.facts import fax_facts, read_sidecar_text
from gateway.stages.fax.metadata import find_sidecar
from gateway.faults import checkpoint
from gateway.runner import Runner
from gateway.spool import Spool, SpoolError

log = logging.getLogger("gateway.stages.fax")


class FaxDropWatcher(Runner):
    """Polls the drop folder: one pass is one `scan()`."""

    def __init__(self, config: Config, spool: Spool, wake: Callable[[], None] | None = None):
        super().__init__("fax-drop", config, interval=config.model.fax.poll_seconds, logger=log)
        self.spool = spool
        # Fixed for the daemon's life: another folder takes a restart (reload keeps this one).
        self.folder = config.fax_drop_dir
        self._wake_spool = wake
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last scan
        self._spool_failure: str | None = None  # logged once, not at every poll while the disk is full
        self.folder.mkdir(parents=True, exist_ok=True)

    def run_once(self) -> float:
        self.scan()
        return self.config.model.fax.poll_seconds

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
            if self.stopping:
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
        if taken and self._wake_spool is not None:
            self._wake_spool()
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
            self._quarantine(path, sidecar, data, state, str(exc))
            return False
        meta = self._meta(path, state, fax_facts(self.config, path, document, sidecar))
        try:
            item = self.spool.enqueue(data, meta)
        except SpoolError as exc:
            # The file stays in the folder and is taken at a later poll, once the spool can take it.
            if str(exc) != self._spool_failure:
                log.error("fax %s not taken, it stays in the drop folder: %s", path.name, exc)
            self._spool_failure = str(exc)
            return False
        if self._spool_failure is not None:
            log.warning("the spool takes faxes again")
            self._spool_failure = None
        checkpoint("before-fax-remove")
        self._remove(path, sidecar, item.id)
        log.info("fax %s taken: %d page(s), from %s (item %s)", path.name, document.page_count,
                 meta["fax"]["number"] or "an unknown number", item.id)
        return True

    @staticmethod
    def _meta(path: Path, state: tuple[int, int], facts: dict[str, Any]) -> dict[str, Any]:
        return {"channel": "fax", "intake": "fax-drop",
                "source_key": f"fax-drop:{path.name}:{state[0]}:{state[1]}",
                "received_at": datetime.now(timezone.utc).isoformat(), "fax": facts}

    @staticmethod
    def _remove(path: Path, sidecar: Path | None, item_id: str) -> None:
        # Durable in the spool: only now may the original leave the drop folder.
        for leaving in (path, sidecar):
            if leaving is not None:
                try:
                    leaving.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.error("fax %s is spooled (item %s) but cannot be removed from the drop folder: %s; "
                              "it will be recognised if taken again", leaving.name, item_id, exc.strerror)

    def _quarantine(self, path: Path, sidecar: Path | None, data: bytes, state: tuple[int, int],
                    reason: str) -> None:
        """Not a readable fax: into the spool's quarantine with everything known about it,
        where operators see it beside every other item set aside, and can retry it."""
        meta = self._meta(path, state, fax_facts(self.config, path, None, sidecar))
        meta["fax_drop"] = {"file_name": path.name, "reason": reason,
                            "sidecar_name": sidecar.name if sidecar is not None else None,
                            "sidecar": read_sidecar_text(sidecar)}
        try:
            item_id = self.spool.quarantine_new(data, meta, f"fax drop file {path.name}: {reason}")
        except (SpoolError, OSError) as exc:
            log.error("fax %s is unreadable (%s) and cannot be set aside in quarantine: %s; it stays in the "
                      "drop folder", path.name, reason, exc)
            return
        checkpoint("before-fax-remove")
        self._remove(path, sidecar, item_id)
        log.error("fax %s set aside in quarantine as item %s: %s", path.name, item_id, reason)
