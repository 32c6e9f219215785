"""Reading the text of registered faxes, in a bounded pool of worker processes.

OCR is slow (about a second a fine page in three languages) and CPU-bound, so it runs after
registration, off its path: a fax is registered at once (number, sender,
pages) and its text and summary follow. The pool has `[fax] ocr_workers`
processes, so a burst of faxes never takes more than that from the machine,
and e-mail intake goes on meanwhile. A failure leaves the letter without text
and with a recorded defect; it never blocks anything.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.stages.fax.ocr import DEFAULT_MIN_CONFIDENCE
from gateway.stages.normalise import Limits
from gateway.stages.reference import find_reference
from gateway.stages.route import route_with_text
from gateway.registry import Registry, RegistryUnavailable
from gateway.registry.leases import ClaimLost
from gateway.runner import Runner

log = logging.getLogger("gateway.stages.fax")

GIVE_UP_AFTER = 3  # failed attempts to store a fax's text before its job is given up
# A pool with nothing to read for this long is closed: each warm worker holds its models and the
# engine's memory arena (about 1.2 GB), and a burst of faxes that comes later pays a few seconds
# to start it again.
POOL_IDLE_SECONDS = 600.0


class TextRead(NamedTuple):
    text: str
    defects: list[str]
    pages: int
    seconds: float
    reading: dict[str, Any] | None  # reader, version, per-page confidence, low pages, header facts


def warm_up(reader: str) -> None:
    """A worker process's initializer: load the reader's models once and run them on a made-up
    page, so that neither is paid on a fax."""
    if reader != "tesseract":
        try:
            import cv2
            # One thread, as the engine has: the pool already has a process per core it may use.
            cv2.setNumThreads(1)
            from gateway.stages.fax.reader import warm_up_engine
            warm_up_engine()
        except Exception:  # reported with the first fax it cannot read, not here
            log.debug("the OCR engine did not load", exc_info=True)


def _started() -> None:
    """Nothing: submitted once per worker when the pool is made, so that every worker starts (and
    warms up) at once instead of when a second fax finds the first worker busy."""


def read_text(raw_path: str, languages: str, timeout: float, limits: Limits | None = None, *,
              reader: str = "auto", min_confidence: float = DEFAULT_MIN_CONFIDENCE,
              timezone: str = "UTC") -> TextRead:
    """In a worker process: the text of every fax document or scan in a stored letter (a
    fax-to-email message or a paper letter examined within the configured [normalise] limits),
    and how it was read.
    """
    from gateway.stages.fax.document import FaxUnreadable, read_fax, read_scan
    from gateway.stages.fax.metadata import FaxFacts, read_header_line
    from gateway.stages.fax.ocr import ocr_document
    from gateway.stages.normalise import normalise
    from gateway.spool import read_raw

    started = time.monotonic()
    raw = read_raw(Path(raw_path))
    try:
        read_fax(raw)
        documents = [raw]  # a fax file
    except FaxUnreadable:  # fax-to-email or a paper letter: the TIFF, PDF, JPEG and PNG attachments
        documents = [a.content for a in normalise(raw, limits=limits or Limits()).attachments]
    texts, defects, pages = [], [], 0
    readers: list[str] = []
    version = ""
    confidences: list[float | None] = []
    low: list[int] = []
    header: str | None = None
    for data in documents:
        try:
            kind = read_scan(data).kind  # a paper letter's scans may be pictures
        except FaxUnreadable:
            continue
        result = ocr_document(data, kind, languages=languages, timeout=timeout, reader=reader,
                              min_confidence=min_confidence)
        # Page numbers run on across the documents of one letter.
        low += [pages + number for number in result.low_confidence]
        pages += result.pages
        defects += [f"fax: {d}" for d in result.defects]
        readers.append(result.reader)
        version = version or result.version
        confidences += result.confidences
        header = header or result.header
        if result.text.strip():
            texts.append(result.text.strip())
    reading: dict[str, Any] | None = None
    if readers:
        reading = {"reader": "ppocr+tesseract" if "ppocr+tesseract" in readers else readers[0],
                   "version": version, "confidences": confidences, "low_confidence": low, "header": header}
        if header:
            facts = FaxFacts()
            read_header_line(header, facts, ZoneInfo(timezone))
            reading.update(number=facts.number, sent_at=facts.received)
    return TextRead("\n\n".join(texts), defects, pages, time.monotonic() - started, reading)


class TextReader(Runner):
    """Takes OCR jobs from the registry and runs them in the pool; one pass collects the
    finished jobs and hands the free workers new ones.

    A job whose result cannot be stored (the registry refuses it) is a failed attempt,
    counted on the job; after `GIVE_UP_AFTER` of them the registry gives it up (the letter is
    flagged `ocr-failed` and a `text-not-read` event says why). Either way its worker is free again.
    """

    def __init__(self, config: Config, registry: Registry, poll_seconds: float = 2.0,
                 on_routed: Callable[[], None] | None = None):
        super().__init__("fax-text", config, interval=poll_seconds, logger=log, expected=(RegistryUnavailable,))
        self.on_routed = on_routed  # routing queues mail: wake the outbox
        self.registry = registry
        self._pool: ProcessPoolExecutor | None = None  # made on the first job: most days have none
        self._running: dict[int, Future[TextRead]] = {}
        self._idle_since: float | None = None  # monotonic time the pool last had nothing to read
        # After the pool broke with several faxes in it: how many faxes to read one at a time, so
        # that one breaking the pool each time is found and given up, not those read beside it.
        self._alone = 0

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        # Jobs cut short stay in the registry and run again at the next start.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the daemon has threads, and a fork would copy their locks. Each
            # worker loads the reader's models once, when it starts.
            settings = self.config.model.fax
            self._pool = ProcessPoolExecutor(max_workers=settings.ocr_workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=warm_up, initargs=(settings.ocr_reader,))
            for _ in range(settings.ocr_workers):
                self._pool.submit(_started)
        return self._pool

    def _close_idle_pool(self) -> None:
        if self._running or self._pool is None:
            self._idle_since = None
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= POOL_IDLE_SECONDS:
            log.info("OCR workers closed after %.0f s without a fax to read", now - self._idle_since)
            self._pool.shutdown(wait=False)
            self._pool = None
            self._idle_since = None

    def run_once(self) -> None:
        settings = self.config.model.fax
        self._collect()
        free = settings.ocr_workers - len(self._running)
        if self._alone:
            free = 0 if self._running else 1
        if free > 0:
            jobs = self.registry.ocr_jobs(free, set(self._running))
            self._alone = max(0, self._alone - len(jobs))
            for letter_id, raw_path in jobs:
                path = str(self.config.state_dir / raw_path)
                future = self._workers().submit(read_text, path, settings.ocr_languages,
                                                settings.ocr_timeout_seconds, Limits.of(self.config.model.normalise),
                                                reader=settings.ocr_reader, min_confidence=settings.ocr_min_confidence,
                                                timezone=self.config.model.gateway.timezone)
                future.add_done_callback(lambda _: self.wake())
                self._running[letter_id] = future
        self._close_idle_pool()

    def _collect(self) -> None:
        if any(f.done() and isinstance(f.exception(), BrokenProcessPool) for f in self._running.values()):
            self._pool_broke()
        for letter_id, future in list(self._running.items()):
            if not future.done():
                continue
            try:
                text, defects, pages, seconds, reading = future.result()
            except Exception as exc:  # the worker died or the stored file is unreadable
                text, defects, pages, seconds = "", [f"fax: text not read: {type(exc).__name__}: {exc}"], 0, 0.0
                reading = None
            try:
                number, status = self._store(letter_id, text, defects, pages, seconds, reading)
            except RegistryUnavailable:
                raise  # not the job's fault: its result waits here, and the pass backs off
            except ClaimLost:
                # Too late: the claim expired and another node reads the fax; its result counts.
                del self._running[letter_id]
                log.info("the text of letter %d read here is dropped: another node took the job over", letter_id)
                continue
            except Exception as exc:
                # The worker is free again; a job not given up is offered again by ocr_jobs() and read anew.
                del self._running[letter_id]
                self.unit_failed(f"the text of letter {letter_id}", f"cannot be stored: {type(exc).__name__}: {exc}",
                                 partial(self.registry.ocr_failed, letter_id, give_up_after=GIVE_UP_AFTER))
                continue
            del self._running[letter_id]
            log.info("%s text read: %d page(s), %d character(s) in %.1f s%s%s; %s", number, pages, len(text), seconds,
                     f", {len(defects)} defect(s)" if defects else "",
                     f", page(s) {reading['low_confidence']} to check" if reading and reading["low_confidence"] else "",
                     status)
            if self.on_routed is not None:
                self.on_routed()

    def _pool_broke(self) -> None:
        """A worker ended abruptly (the kernel's OOM killer, an engine crashing on a fax): every fax
        in the pool fails with it, none by its own fault but maybe one, and the pool takes no more.
        A new pool is made at the next fax; those faxes are read again."""
        broken, self._running = list(self._running), {}
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if len(broken) == 1:  # read alone: its own doing
            self.unit_failed(f"the text of letter {broken[0]}", "its reader ended abruptly (killed, or it crashed)",
                             partial(self.registry.ocr_failed, broken[0], give_up_after=GIVE_UP_AFTER))
            return
        log.warning("an OCR worker ended abruptly (killed, or it crashed) while %d faxes were read; they are read "
                    "again, one at a time", len(broken))
        self.registry.ocr_release(broken)
        self._alone = max(self._alone, len(broken))

    def _store(self, letter_id: int, text: str, defects: list[str], pages: int, seconds: float,
               reading: dict[str, Any] | None) -> tuple[str, str]:
        letter = self.registry.letter_by_id(letter_id)
        if letter is None:
            raise LookupError(f"letter {letter_id} is not in the register")
        if reading and reading.get("number") and letter.fax_number is None:
            letter.fax_number = reading["number"]  # rules on the fax number see the header line's
        # Classified and routed on its text before the registry's transaction, which applies it.
        summary, routing = route_with_text(self.config, letter, text)
        return self.registry.ocr_done(letter_id, text, summary=summary, defects=defects, pages=pages,
                                      seconds=seconds, routing=routing, reading=reading,
                                      reference="" if letter.sender_reference else find_reference(letter.subject, text))
