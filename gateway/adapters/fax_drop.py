"""The fax drop folder: files a fax machine or fax server writes, taken once they are complete.

Polled, not watched with inotify: fax machines write to network shares, where
inotify does not fire. A file is taken only when this watcher has seen its
size, modification time and inode stay the same for `stable_seconds` (a first
sighting proves nothing: a copy that keeps the source's old mtime is still
being written), and so has its information file; temporary and partial names
are never taken. An information file alone in the folder (its fax not yet
written, or taken before it came) waits three times `stable_seconds` for its
fax, and is then set aside in quarantine as what it is, never read as a fax.
An information file whose name fits two faxes (foo.info beside foo.tif and
foo.pdf, faxes by their content; foo.doc beside them is none) is neither's:
each is taken without it, and it stays in the folder, named once in an ALERT.
The file (and its information sidecar, if any, read together with it) leaves the
folder only after its bytes are durable in the spool, and only if it is still
the file read: another put under its name meanwhile stays, to be taken on its
own. A file that is not a readable TIFF or PDF fax goes, with its sidecar's
content and the reason, to the spool's quarantine (`gateway quarantine list`),
from where `retry` puts it through the pipeline again; it too leaves the folder
only once durable there: nothing is ever deleted unread. A file taken that
cannot be removed (a share the daemon may not write to) is named once in an
ALERT and remembered in the state directory by its name, size, modification
time and inode: while it stays so it is not read again, after a restart too.
Empty files, folders and links are never taken, and named once in the log.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.stages.fax.document import FaxUnreadable, read_fax
from gateway.stages.fax.facts import fax_facts, read_sidecar_text
from gateway.stages.fax.metadata import LONE_INFORMATION_WAIT, information_files, is_information_file, may_be_fax
from gateway.faults import checkpoint
from gateway.runner import Runner
from gateway.spool import Spool, SpoolError
from gateway.spool.durable import remove, write_file

log = logging.getLogger("gateway.stages.fax")

_State = tuple[int, int, int]  # size, mtime_ns, inode
_File = tuple[Path, _State]  # a file of the folder, and its state when it was read
LEFT_FILE = "fax-drop-left.json"  # in the state directory: the files taken that could not be removed


class FaxDropWatcher(Runner):
    """Polls the drop folder: one pass is one `scan()`."""

    def __init__(self, config: Config, spool: Spool, wake: Callable[[], None] | None = None):
        super().__init__("fax-drop", config, interval=config.model.fax.poll_seconds, logger=log)
        self.spool = spool
        # Fixed for the daemon's life: another folder takes a restart (reload keeps this one).
        self.folder = config.fax_drop_dir
        self._wake_spool = wake
        # name -> ((size, mtime_ns, inode), when this watcher first saw it so), for every file
        # of the folder at the last scan: faxes and information files alike.
        self._seen: dict[str, tuple[_State, float]] = {}
        self._named: set[str] = set()  # files left in the folder and said so in the log, once each
        # Information files whose name fitted more than one fax when one of them was taken: given to
        # none of them, left in the folder (named once in an ALERT) for as long as they are there.
        self._shared: set[str] = set()
        self._spool_failure: str | None = None  # logged once, not at every poll while the disk is full
        self.folder.mkdir(parents=True, exist_ok=True)
        # name -> state of the files taken (spooled or set aside) that could not be removed from the
        # folder: not read again while they are there unchanged.
        self._left_path = config.state_dir / LEFT_FILE
        self._left: dict[str, _State] = self._load_left()

    def run_once(self) -> float:
        self.scan()
        return self.config.model.fax.poll_seconds

    # -- one pass over the folder --------------------------------------
    def scan(self) -> int:
        """Take every complete fax; returns how many were taken."""
        settings = self.config.model.fax
        now = time.time()
        taken = 0
        current: dict[str, tuple[_State, float]] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.error("fax drop folder %s cannot be read: %s", self.folder, exc.strerror)
            return 0
        files: dict[str, os.DirEntry[str]] = {}
        left: set[str] = set()
        for entry in entries:
            if self._ignored(entry.name):
                continue
            if not entry.is_file(follow_symlinks=False):
                self._name_once(entry.name, "is not a plain file (a folder or a link): it is not taken")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            state = (st.st_size, st.st_mtime_ns, st.st_ino)
            if self._left.get(entry.name) == state:
                left.add(entry.name)  # taken already, and still there: it could not be removed
                continue
            seen = self._seen.get(entry.name)
            current[entry.name] = (state, seen[1] if seen is not None and seen[0] == state else now)
            files[entry.name] = entry

        def stable(name: str, times: int = 1) -> bool:
            # Seen unchanged for stable_seconds by this watcher, and its mtime as old: a file being
            # written keeps changing its size or mtime, and one first seen may be half a copy.
            state, since = current[name]
            before = self._seen.get(name)
            wait = times * settings.stable_seconds
            if before is None or before[0] != state or now - since < wait:
                return False
            age = now - state[1] / 1e9
            if age >= 0:
                return age >= wait
            # Dated in the future: the writer's clock is ahead (a share keeps the time it gave), and
            # the age proves nothing; unchanged for the wait is proof enough.
            log.warning("fax drop folder: %s is dated %.0f s ahead of this machine's clock (is the writer's "
                        "clock right?); taken as unchanged for %g s", name, -age, wait)
            return True

        if self._left.keys() - left:  # removed by hand, or changed since: forgotten
            self._left = {name: state for name, state in self._left.items() if name in left}
            self._save_left()
        self._shared.intersection_update(files)
        sidecars, shared = information_files(files, lambda name: may_be_fax(self.folder / name), self._shared)
        with_fax = {*sidecars.values(), *shared}
        for name in sorted(files):
            if self.stopping:
                break
            if is_information_file(name):
                if name not in with_fax and name not in self._shared and stable(name, LONE_INFORMATION_WAIT):
                    alone = (f"an information file ({name.rpartition('.')[2]}) without its fax: none came "
                             f"within {LONE_INFORMATION_WAIT * settings.stable_seconds:g} s")
                    lone: _File = (Path(files[name].path), current[name][0])
                    if (data := self._read(*lone)) is not None:
                        self._quarantine(lone, None, data, alone)
                    self._forget_gone(current, name)
                continue
            if current[name][0][0] == 0:
                if stable(name):
                    self._name_once(name, "is empty: it is left there")
                continue
            if (size := current[name][0][0]) > settings.max_file_bytes:
                # Not read: a fax is decoded whole in memory. The operator moves it, or raises the limit.
                if stable(name):
                    self._name_once(name, f"is {size} bytes, over [fax] max_file_bytes ({settings.max_file_bytes}): "
                                          "it is left there", alert=True)
                continue
            sidecar = sidecars.get(name)
            if not stable(name) or (sidecar is not None and not stable(sidecar)):
                continue
            notes = [self._not_read(info, fits) for info, fits in shared.items() if name in fits]
            notes = notes if sidecar is None else []  # foo.tif with its foo.tif.info misses nothing
            if self._take((Path(files[name].path), current[name][0]),
                          None if sidecar is None else (Path(files[sidecar].path), current[sidecar][0]), notes):
                taken += 1
            self._forget_gone(current, name, sidecar)
        self._seen = current
        self._named &= {entry.name for entry in entries}
        if taken and self._wake_spool is not None:
            self._wake_spool()
        return taken

    def _forget_gone(self, current: dict[str, tuple[_State, float]], *names: str | None) -> None:
        """Files taken (or set aside) are not seen again: another written under the same name, even
        of the same size and time on a reused inode, starts its wait afresh."""
        for name in names:
            if name is not None and not os.path.lexists(self.folder / name):
                current.pop(name, None)

    def _not_read(self, info: str, fits: list[str]) -> str:
        """An information file whose name fits several faxes, one of them about to be taken: it
        is left unread, named once in an ALERT; what the fax's letter records of it."""
        if info not in self._shared:
            self._shared.add(info)
            suffix = "." + info.rpartition(".")[2]
            log.error("ALERT fax drop folder: %s may be the information file of %s: it is given to neither and "
                      "left there; name it %s to have it taken with its fax", info, " or ".join(fits),
                      " or ".join(fax + suffix for fax in fits))
        return f"information file {info} not read: its name fits another fax as well (left in the drop folder)"

    def _ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.config.model.fax.ignore)

    def _name_once(self, name: str, what: str, *, alert: bool = False) -> None:
        if name not in self._named:
            self._named.add(name)
            if alert:
                log.error("ALERT fax drop folder: %s %s", name, what)
            else:
                log.warning("fax drop folder: %s %s", name, what)

    def _read(self, path: Path, state: _State) -> bytes | None:
        """The file's bytes, if they are still those of the state seen stable; None: next time."""
        try:
            data = path.read_bytes()
            after = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Named once, not at every poll: it is tried again at each, and taken once readable.
            self._name_once(path.name, f"cannot be read ({exc.strerror}): it is left there", alert=True)
            return None
        if (after.st_size, after.st_mtime_ns, after.st_ino) != state or len(data) != state[0]:
            return None  # written to while we read
        return data

    def _take(self, fax: _File, sidecar: _File | None, notes: Sequence[str]) -> bool:
        """The fax into the spool, or into quarantine when unreadable; `notes` are problems
        recorded with its facts (an information file left unread)."""
        path, state = fax
        data = self._read(path, state)
        if data is None:
            return False
        # The information file is read beside the fax's bytes, not after the decoding: one written
        # in its place meanwhile (a fax machine reusing its names) must not lend this fax its facts.
        info_text = None
        if sidecar is not None:
            info_text = read_sidecar_text(sidecar[0])
            if not self._unchanged(sidecar):
                return False  # rewritten since it was seen complete: next time
        try:
            document = read_fax(data, path.name)
        except FaxUnreadable as exc:
            self._quarantine(fax, sidecar, data, str(exc), notes, info_text)
            return False
        facts = fax_facts(self.config, path, document, None if sidecar is None else sidecar[0], info_text)
        facts["problems"] += notes
        meta = self._meta(path, data, state, facts)
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
        self._remove(item.id, fax, sidecar)
        log.info("fax %s taken: %d page(s), from %s (item %s)", path.name, document.page_count,
                 meta["fax"]["number"] or "an unknown number", item.id)
        return True

    @staticmethod
    def _meta(path: Path, data: bytes, state: _State, facts: dict[str, Any]) -> dict[str, Any]:
        # The key recognises this very file taken again (a crash before it left the folder); its
        # bytes' digest keeps another fax of the same name, size and mtime from passing for it.
        digest = hashlib.sha256(data).hexdigest()[:32]
        return {"channel": "fax", "intake": "fax-drop",
                "source_key": f"fax-drop:{path.name}:{state[0]}:{state[1]}:{digest}",
                "received_at": datetime.now(timezone.utc).isoformat(), "fax": facts}

    def _remove(self, item_id: str, *leaving: _File | None) -> None:
        # Durable in the spool: only now may the original leave the drop folder.
        for file in leaving:
            if file is None:
                continue
            path, state = file
            if not self._unchanged(file):
                # Another file put under its name since it was read (a fax machine reusing names) is
                # a fax of its own, unread: it stays, and is taken as a new one.
                if path.exists():
                    log.warning("fax drop folder: %s was replaced after it was read (item %s): the new file "
                                "stays, to be taken on its own", path.name, item_id)
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Remembered, so that it is not read, spooled and found known again at every poll.
                self._left[path.name] = state
                self._save_left()
                log.error("ALERT fax drop folder: %s is kept in the spool (item %s) but cannot be removed: %s; "
                          "it is left there and not taken again while unchanged: remove it by hand",
                          path.name, item_id, exc.strerror)

    @staticmethod
    def _unchanged(file: _File) -> bool:
        """The file under its name is still the one seen (same size, time and inode)."""
        path, state = file
        try:
            now = path.lstat()
        except FileNotFoundError:
            return False
        return (now.st_size, now.st_mtime_ns, now.st_ino) == state

    def _load_left(self) -> dict[str, _State]:
        """The files taken that could not be removed, as recorded for this folder."""
        try:
            record = json.loads(self._left_path.read_bytes())
            if record["folder"] != str(self.folder):
                return {}
            return {str(name): (int(size), int(mtime), int(inode))
                    for name, (size, mtime, inode) in record["files"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("%s cannot be read (%s): a fax taken and left in the drop folder is read once again",
                      self._left_path, exc)
            return {}

    def _save_left(self) -> None:
        try:
            if not self._left:
                remove(self._left_path)
                return
            # ASCII JSON: a name that is not UTF-8 comes back as the same lone surrogates.
            write_file(self._left_path, json.dumps({"folder": str(self.folder), "files": {
                name: list(state) for name, state in sorted(self._left.items())}}).encode())
        except OSError as exc:
            log.error("%s cannot be written: %s", self._left_path, exc.strerror or exc)

    def _quarantine(self, file: _File, sidecar: _File | None, data: bytes, reason: str,
                    notes: Sequence[str] = (), info_text: str | None = None) -> None:
        """Not a readable fax: into the spool's quarantine with everything known about it,
        where operators see it beside every other item set aside, and can retry it."""
        path, state = file
        info = None if sidecar is None else sidecar[0]
        if info_text is None:
            info_text = read_sidecar_text(info)
        facts = fax_facts(self.config, path, None, info, info_text)
        facts["problems"] += notes
        meta = self._meta(path, data, state, facts)
        meta["fax_drop"] = {"file_name": path.name, "reason": reason,
                            "sidecar_name": info.name if info is not None else None,
                            "sidecar": info_text}
        try:
            item_id = self.spool.quarantine_new(data, meta, f"fax drop file {path.name}: {reason}")
        except (SpoolError, OSError) as exc:
            log.error("fax %s is unreadable (%s) and cannot be set aside in quarantine: %s; it stays in the "
                      "drop folder", path.name, reason, exc)
            return
        checkpoint("before-fax-remove")
        self._remove(item_id, file, sidecar)
        log.error("fax %s set aside in quarantine as item %s: %s", path.name, item_id, reason)
