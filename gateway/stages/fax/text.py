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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from gateway.config import Config
from gateway.stages.route import route_letter
from gateway.registry import Registry, RegistryUnavailable

log = logging.getLogger("gateway.stages.fax")


def read_text(raw_path: str, languages: str, timeout: float) -> tuple[str, list[str], int, float]:
    """In a worker process: the text of every fax document in a stored letter.

    Returns the text, the defects, the pages read and the seconds it took.
    """
    from gateway.stages.fax.document import FaxUnreadable, read_fax
    from gateway.stages.fax.ocr import ocr_document
    from gateway.stages.normalise import normalise
    from gateway.spool import read_raw

    started = time.monotonic()
    raw = read_raw(Path(raw_path))
    try:
        read_fax(raw)
        documents = [raw]  # a fax file
    except FaxUnreadable:  # fax-to-email: the TIFF and PDF attachments
        documents = [a.content for a in normalise(raw).attachments]
    texts, defects, pages = [], [], 0
    for data in documents:
        try:
            kind = read_fax(data).kind
        except FaxUnreadable:
            continue
        result = ocr_document(data, kind, languages=languages, timeout=timeout)
        pages += result.pages
        defects += [f"fax: {d}" for d in result.defects]
        if result.text.strip():
            texts.append(result.text.strip())
    return "\n\n".join(texts), defects, pages, time.monotonic() - started


class TextReader:
    """Takes OCR jobs from the registry and runs them in the pool; one thread to feed it."""

    def __init__(self, config: Config, registry: Registry, poll_seconds: float = 2.0,
                 on_routed: Callable[[], None] | None = None):
        self.config = config
        self.on_routed = on_routed  # routing queues mail: wake the outbox
        self.registry = registry
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool: ProcessPoolExecutor | None = None  # made on the first job: most days have none
        self._running: dict[int, Future[tuple[str, list[str], int, float]]] = {}
        self._thread = threading.Thread(target=self._run, name="fax-text", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        # Jobs cut short stay in the registry and run again at the next start.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the daemon has threads, and a fork would copy their locks.
            self._pool = ProcessPoolExecutor(max_workers=self.config.model.fax.ocr_workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _run(self) -> None:
        settings = self.config.model.fax
        while not self._stop.is_set():
            try:
                self._collect()
                free = settings.ocr_workers - len(self._running)
                if free > 0:
                    for letter_id, raw_path in self.registry.ocr_jobs(free, set(self._running)):
                        path = str(self.config.state_dir / raw_path)
                        future = self._workers().submit(read_text, path, settings.ocr_languages,
                                                   settings.ocr_timeout_seconds)
                        future.add_done_callback(lambda _: self._wake.set())
                        self._running[letter_id] = future
            except RegistryUnavailable as exc:
                log.warning("fax text: registry unavailable: %s", exc)
            except Exception:
                log.exception("fax text: unexpected error")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _collect(self) -> None:
        for letter_id, future in list(self._running.items()):
            if not future.done():
                continue
            try:
                text, defects, pages, seconds = future.result()
            except Exception as exc:  # the worker died or the stored file is unreadable
                text, defects, pages, seconds = "", [f"fax: text not read: {type(exc).__name__}: {exc}"], 0, 0.0
            config = self.config
            number, status = self.registry.ocr_done(letter_id, text, config.model.normalise.summary_chars,
                                                    defects, pages, seconds,
                                                    route=lambda letter: route_letter(config, letter))
            del self._running[letter_id]
            log.info("%s text read: %d page(s), %d character(s) in %.1f s%s; %s", number, pages, len(text), seconds,
                     f", {len(defects)} defect(s)" if defects else "", status)
            if self.on_routed is not None:
                self.on_routed()
