"""Registration, in batches, in a process of its own.

Two kinds of items come here: those an SMTP session has just streamed into the
spool, whose sender waits for the answer, and durable items: those the spool workers
have claimed (from IMAP, the drop folder, `gateway ingest`, or a retry), and SMTP's
when `[smtp] acknowledge = "spooled"` (the sender has had its 250; the sessions made
them durable with one shared syncfs). Sessions that finish DATA at the
same moment share one syncfs of the spool and one registry transaction (group
commit). Items whose sender waits come sealed and renamed but not yet fsynced; nobody is told
they are accepted until their batch's sync has returned.

Normalising and registering are CPU work; in the event loop's process they
would compete with the SMTP sessions for the interpreter lock. So a batch is
done by a helper process (a fresh interpreter, so it shares no lock or thread
state with the daemon), while the daemon keeps each item's spool lock until the answer
comes back: recovery elsewhere can never take an item that is being
registered. If the helper dies, the daemon registers that batch itself (the
registry recognises anything the helper had already committed) and starts a
new helper a little later: the senders never notice.

A helper can die anywhere in a batch, also after its commit while it moves
the items out of work/ one by one (into the message store, or back to new/).
The daemon holds every item's lock, so whatever is still in work/ is untouched
and simply registered again; an item that has gone is answered from where the
helper put it (`settle_batch_of_dead_helper`), never read from work/ again.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import Config
from gateway.daemon.pipeline import Outcome, Pipeline
from gateway.faults import checkpoint
from gateway.registry import Registry
from gateway.spool import Spool, SpoolItem, read_raw
from gateway.stages import rulebook

log = logging.getLogger("gateway.daemon.registrar")

_RESTART_DELAY = 5.0
_START_TIMEOUT = 120.0

Entry = tuple[SpoolItem, "Future[Outcome]", bool]  # the item, its answer, already durable?


def register_batch(pipeline: Pipeline, items: list[SpoolItem], durable: bool) -> list[Outcome]:
    """Register a batch. Items that are not durable yet (their sender still waits for an
    answer) are made durable first with one sync, and dropped again if the registry cannot
    take them: the sender's retry is then the only copy. Durable items stay spooled."""
    if durable:
        return pipeline.process(items)
    try:
        pipeline.spool.sync()
    except OSError as exc:
        log.error("spool: cannot make items durable: %s", exc)
        for item in items:
            pipeline.spool.discard(item)
        return [Outcome(item.id, "unstored") for item in items]
    return pipeline.process(items, discard_when_unavailable=True)


def settle_batch_of_dead_helper(pipeline: Pipeline, items: list[SpoolItem], durable: bool) -> list[Outcome]:
    """Register, in the daemon, a batch whose helper died before answering (and has been reaped).

    Items still in work/ were not touched after any commit: registered again, the registry
    recognises what the helper had committed. Items that have gone were moved by the helper:
    answered from where they went."""
    outcomes: dict[str, Outcome] = {}
    again: list[SpoolItem] = []
    stored: set[str] = set()  # registered for certain: in the store, out of work/
    for item in items:
        if item.path.exists():
            again.append(item)
            continue
        moved = _moved_by_helper(pipeline.spool, item, durable)
        if moved is None:
            again.append(item)  # the registry answers with the number the helper gave it
            stored.add(item.id)
        else:
            outcomes[item.id] = moved
    for outcome in register_batch(pipeline, again, durable) if again else []:
        if outcome.result == "released" and outcome.item_id in stored:
            # The registry went away just now, but the helper's commit stands: a "try again"
            # would register the letter a second time. Accepted, its number not known here.
            outcome = Outcome(outcome.item_id, "known", reason=outcome.reason)
        outcomes[outcome.item_id] = outcome
    return [outcomes[item.id] for item in items]


def _moved_by_helper(spool: Spool, item: SpoolItem, durable: bool) -> Outcome | None:
    """Where the helper put an item it took out of work/: None when it is in the message store,
    where `finish` moves it only after the registry committed; the item then reads its raw bytes
    from there. The daemon still holds the item's lock, so nobody else has moved it since."""
    place = spool.whereabouts(item)
    if place == "released":
        return Outcome(item.id, "released", reason="given back to the spool (the registry was unavailable)")
    if place == "retry":
        return Outcome(item.id, "retry", reason="failed; back in the spool for a later attempt")
    if place == "quarantined":
        return Outcome(item.id, "quarantined", reason="failed too often")
    if place == "stored":
        item._raw = read_raw(spool.stored_path(item.meta["sha256"]))
        return None
    if durable:
        # A claimed item's content is not known here (the helper read it), and a durable
        # item is never discarded: it was registered and is in the store.
        return Outcome(item.id, "known")
    # Discarded because the registry could not take it: the sender's copy is the only one.
    return Outcome(item.id, "released", reason="the registry was unavailable")


class Registrar:
    """Registers items in batches through a helper process. With `large_item_bytes`, items larger
    than that go through a second registrar (its own thread and helper): parsing one huge or
    hostile message can take seconds, and the senders of ordinary mail must not wait behind it.
    With `spool_lanes` above 1, the spool workers' full batches are shared among that many
    registrars (worker n uses lane n mod spool_lanes, the first being this one): a first IMAP sync
    or a backlog in the spool is then registered on as many cores, where one helper doing all the
    work (parsing, checking, classifying) would leave the others idle. The registry takes their
    commits one after the other, as it takes those of several nodes.

    The helpers of the lanes beyond this one are started by their first item and stopped after
    `large_item_idle_seconds` without one: most hours have neither a large item nor a backlog, and
    a helper holds some 75 MiB."""

    def __init__(self, pipeline: Pipeline, batch_size: int, *, helper: bool = True, large_item_bytes: int = 0,
                 large_item_idle_seconds: float = 600.0, spool_lanes: int = 1, lane: str = ""):
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.large_item_bytes = large_item_bytes
        self.lane = lane  # "" for ordinary items, "large" for the lane of large ones, "spool-N" for a worker's
        self._large = Registrar(pipeline, max(1, batch_size // 8), helper=helper, lane="large",
                                large_item_idle_seconds=large_item_idle_seconds) if large_item_bytes else None
        self._spool_lanes = [self, *(Registrar(pipeline, batch_size, helper=helper, lane=f"spool-{n}",
                                               large_item_idle_seconds=large_item_idle_seconds)
                                     for n in range(2, spool_lanes + 1))]
        self._idle_seconds = large_item_idle_seconds
        self._queue: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._helper: _Helper | None = None
        self._use_helper = helper
        self._on_demand = lane != ""
        self._helper_failed_at = 0.0
        self._closing = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"registrar-{lane}" if lane else "registrar",
                                        daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        self._ready.wait(timeout)
        if self._large is not None:
            self._large.wait_ready(timeout)

    async def register(self, item: SpoolItem) -> Outcome:
        """For the event loop: one item, answered when its batch is done."""
        return await asyncio.wrap_future(self._submit(item, durable=False))

    def follow(self, item: SpoolItem) -> None:
        """For the event loop: a durable item whose sender has been answered already, registered
        in the next batch without anyone waiting. The pipeline logs what became of it; an item
        the registry cannot take now stays in the spool for a later attempt."""
        self._submit(item, durable=True)

    def register_all(self, items: list[SpoolItem], *, durable: bool = True, worker: int = 0) -> list[Outcome]:
        """For a thread (spool worker number `worker`): durable items, registered in the same group
        commits as the other items of their lane. A full batch (a backlog) goes to the worker's
        lane; a smaller one to the first, whose helper is always running: a letter that comes
        alone never waits for a helper to start."""
        lane = self._spool_lanes[worker % len(self._spool_lanes)] if len(items) >= self.batch_size else self
        futures = [self._submit(item, durable=durable, lane=lane) for item in items]
        return [f.result() for f in futures]

    def _submit(self, item: SpoolItem, *, durable: bool, lane: Registrar | None = None) -> Future[Outcome]:
        lane = lane or self
        if self._large is not None:
            try:
                if item.path.stat().st_size > self.large_item_bytes:
                    lane = self._large
            except OSError:
                pass  # the registration itself says what is wrong with the item
        future: Future[Outcome] = Future()
        lane._queue.put((item, future, durable))
        return future

    def close(self) -> None:
        self._closing = True
        self._queue.put(None)
        self._thread.join()
        for other in [self._large, *self._spool_lanes[1:]]:
            if other is not None:
                other.close()

    # -- the registrar thread --------------------------------------------
    def _run(self) -> None:
        if self._use_helper and not self._on_demand:
            self._start_helper()
        self._ready.set()
        try:
            while True:
                try:
                    # Without a helper, wake up to start a new one even when idle; with one started
                    # on demand, wake up to stop it when it has been idle long enough.
                    first = self._queue.get(timeout=_RESTART_DELAY if self._helper_missing() else
                                            self._idle_seconds if self._on_demand and self._helper else None)
                except queue.Empty:
                    if self._on_demand and self._helper is not None:
                        log.info("registrar helper%s (pid %d) stopped: idle", self._for, self._helper.pid)
                        self._helper.stop()
                        self._helper = None
                    self._start_helper_when_due()
                    continue
                if first is None:
                    return
                batch: list[Entry] = [first]
                others: list[Entry] = []
                stop = False
                while len(batch) < self.batch_size:
                    try:
                        entry = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if entry is None:
                        stop = True
                        break
                    # A batch is all of one kind: durable items or items whose sender waits.
                    (batch if entry[2] == first[2] else others).append(entry)
                self._register(batch)
                if others:
                    self._register(others)
                if stop:
                    return
        finally:
            if self._helper is not None:
                self._helper.stop()

    def _register(self, batch: list[Entry]) -> None:
        items = [item for item, _, _ in batch]
        durable = batch[0][2]
        try:
            outcomes = self._by_helper(items, durable)
            if outcomes is None:
                outcomes = register_batch(self.pipeline, items, durable)
            by_id = {o.item_id: o for o in outcomes}
            for item, future, _ in batch:
                item._unlock()  # after the helper is done with it, not before
                if not future.done():  # a session that timed out no longer waits
                    future.set_result(by_id[item.id])
        except Exception as exc:
            # A bug. Senders still waiting are told to retry, so their copies go;
            # durable items go back to the spool for a later attempt.
            log.exception("registrar: unexpected error")
            for item, future, _ in batch:
                if item._fd is not None:
                    try:
                        (self.pipeline.spool.release if durable else self.pipeline.spool.discard)(item)
                    except OSError as cleanup_error:  # the registrar thread must live on for the next batches
                        log.error("spool item %s: %s", item.id, cleanup_error)
                if not future.done():
                    future.set_exception(exc)

    @property
    def _for(self) -> str:
        """What the lane's helper is for, as its log lines say it."""
        if self.lane == "large":
            return " for large items"
        return f" for spool lane {self.lane.removeprefix('spool-')}" if self.lane else ""

    def _helper_missing(self) -> bool:
        """A helper that should be running is not (one started on demand is missed only by an item)."""
        return self._use_helper and self._helper is None and not self._on_demand

    def _start_helper_when_due(self, *, for_items: bool = False) -> None:
        wanted = self._helper_missing() or (for_items and self._use_helper and self._helper is None)
        if wanted and not self._closing and time.monotonic() - self._helper_failed_at >= _RESTART_DELAY:
            self._start_helper()

    def _by_helper(self, items: list[SpoolItem], durable: bool) -> list[Outcome] | None:
        """The batch's outcomes; None when there is no helper to do it."""
        self._start_helper_when_due(for_items=True)
        if self._helper is None:
            return None
        try:
            outcomes, events = self._helper.register(self.pipeline.config, items, durable)
        except Exception as exc:  # died, or talks nonsense: either way it must not touch these items again
            log.error("registrar helper%s (pid %s) failed (%s); this batch is registered by the daemon itself",
                      self._for, self._helper.pid, str(exc) or type(exc).__name__)
            self._helper.kill()  # reaped: from here on it moves no more files
            self._helper = None
            self._helper_failed_at = time.monotonic()
            return settle_batch_of_dead_helper(self.pipeline, items, durable)
        for topic, body in events:
            try:
                self.pipeline.publish(topic, body)
            except Exception:
                log.exception("event %s not published", topic)
        return outcomes

    def _start_helper(self) -> None:
        try:
            self._helper = _Helper(self.pipeline.config, self.lane)
            log.info("registrar helper%s started (pid %d)", self._for, self._helper.pid)
        except (OSError, EOFError, TimeoutError) as exc:
            log.error("cannot start the registrar helper%s, registering in the daemon: %s", self._for, exc)
            self._helper = None
            self._helper_failed_at = time.monotonic()


class _Helper:
    """The daemon's end of the helper process: `python -m gateway.daemon.registrar FD [LANE]` (the
    lane only names the process for `ps`)."""

    def __init__(self, config: Config, lane: str = ""):
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "gateway.daemon.registrar", str(theirs.fileno()),
                                              *([lane] if lane else [])],
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self.pid = self._process.pid
        self._config = config
        self._conn.send(rulebook.portable(config))
        if not self._conn.poll(_START_TIMEOUT):
            self.stop()
            raise TimeoutError(f"no answer within {_START_TIMEOUT:.0f} s")
        self._conn.recv()  # "ready", or EOFError when it could not start

    def register(self, config: Config, items: list[SpoolItem],
                 durable: bool) -> tuple[list[Outcome], list[tuple[str, Any]]]:
        if config is not self._config:  # reloaded: departments and addresses may have changed
            self._conn.send(("config", rulebook.portable(config)))
            self._config = config
        self._conn.send(("batch", ([(i.id, i.attempts, str(i.path), i.meta) for i in items], durable)))
        answer: tuple[list[Outcome], list[tuple[str, Any]]] = self._conn.recv()
        return answer

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()
        self._conn.close()

    def stop(self) -> None:
        try:
            self._conn.send(("stop", None))
        except OSError:
            pass
        self._conn.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _die_with_parent() -> None:
    # If the daemon is killed, so is the helper, at once, as one process would be.
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _helper_main(fd: int) -> None:
    _die_with_parent()
    conn = Connection(fd)
    try:
        config = rulebook.restored(conn.recv())
    except EOFError:
        return
    # systemd signals the whole control group; the daemon decides when the helper stops.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logs.setup(config.model.logging.level, timestamps=config.model.logging.timestamps)
    events: list[tuple[str, Any]] = []
    spool = Spool(config.spool_dir, config.message_dir, max_attempts=config.model.spool.max_attempts)
    registry = Registry.from_config(config)
    pipeline = Pipeline(config, spool, registry, lambda topic, body: events.append((topic, body)))
    conn.send("ready")
    try:
        while True:
            try:
                kind, body = conn.recv()
            except EOFError:
                return
            if kind == "stop":
                return
            if kind == "config":
                pipeline.config = rulebook.restored(body)
                continue
            entries, durable = body
            items = [SpoolItem(item_id, attempts, Path(path), meta) for item_id, attempts, path, meta in entries]
            outcomes = register_batch(pipeline, items, durable)
            checkpoint("registrar-helper-before-answer")  # done, items moved out of work/, nobody told
            conn.send((outcomes, events[:]))
            events.clear()
    finally:
        registry.close()


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]))
