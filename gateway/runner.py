"""One contract for every background loop of the daemon.

A loop is a `Runner` subclass that says what one pass does (`run_once`); the
thread, the wake-ups, the interval, logging a failed pass and backing off
after it live here and nowhere else:

    run_once()      one pass; returns True when there was work (run again at
                    once), a number of seconds until the next pass, or
                    False/None for "wait the interval (or a wake-up)"
    reload(config)  take a new configuration (at the next pass)
    alive()         the thread runs (the systemd watchdog asks)
    stop()          end after the current pass and wait for it

A pass that raises is logged (a warning for the expected kind, such as a
registry that cannot be reached, with a traceback for anything else) and the
next one waits, doubling up to `backoff_max` while passes keep failing; a
wake-up does not cut a backoff short, a stop does.

One unit of work (an item, a job, a file) failing is not the loop's failure:
`unit_failed()` records the failed attempt through the unit's owner, which
counts attempts durably and gives the unit up after a bounded number
(quarantine, dead letter, "text could not be read"), and logs it the same way
for every loop, as an ALERT once given up.

Imported by layers below the daemon: it imports nothing of the gateway.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Runner", "Unavailable"]


class Unavailable(Exception):
    """The pass could not be done for a reason outside it (a peer that is down): back off, quietly."""


class Runner:
    #: seconds `stop()` waits for the current pass to end
    stop_timeout: float = 30.0

    def __init__(self, name: str, config: Any, *, interval: float, logger: logging.Logger,
                 expected: tuple[type[Exception], ...] = (), backoff_min: float = 1.0,
                 backoff_max: float = 60.0):
        self.name = name
        self.config = config
        self.interval = interval
        self.log = logger
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.failures = 0  # consecutive failed passes
        self.last_error: str | None = None
        self._expected: tuple[type[Exception], ...] = (Unavailable, *expected)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the contract ------------------------------------------------------
    def run_once(self) -> bool | float | None:
        raise NotImplementedError

    def reload(self, config: Any) -> None:
        self.config = config
        self.wake()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.stop_timeout if timeout is None else timeout)

    # -- for the owner and the pass ----------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now (or as soon as the current one ends)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """A long pass checks this between units of work and returns early."""
        return self._stop.is_set()

    def unit_failed(self, unit: str, reason: str, record: Callable[[str], bool]) -> bool:
        """One unit of work failed. `record(reason)` counts the attempt where the unit lives and
        returns True when it was given up (bounded retries); returns what `record` said."""
        given_up = record(reason)
        if given_up:
            self.log.error("ALERT %s: %s given up: %s", self.name, unit, reason)
        else:
            self.log.warning("%s: %s failed, will be tried again: %s", self.name, unit, reason)
        return given_up

    def backoff(self) -> float:
        """Seconds to wait after the current run of failed passes."""
        return min(self.backoff_max, self.backoff_min * 2 ** max(0, self.failures - 1))

    # -- the loop ----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before the pass: a wake-up that comes during it starts the next one at once.
            self._wake.clear()
            try:
                outcome = self.run_once()
            except self._expected as exc:
                self.failures += 1
                delay = self.backoff()
                # Logged when the reason changes, then every tenth time: no flood while a peer is down.
                if str(exc) != self.last_error or self.failures % 10 == 0:
                    self.log.warning("%s: %s; next try in %.0f s (attempt %d)", self.name, exc, delay, self.failures)
                self.last_error = str(exc)
                self._stop.wait(delay)
                continue
            except Exception as exc:  # a bug or a vanished resource must not end the loop
                self.failures += 1
                delay = self.backoff()
                self.log.exception("%s: unexpected error; next try in %.0f s", self.name, delay)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(delay)
                continue
            if self.failures:
                self.log.info("%s: working again after %d failed pass(es)", self.name, self.failures)
                self.failures = 0
                self.last_error = None
            if outcome is True:
                continue
            delay = self.interval if outcome is None or outcome is False else float(outcome)
            if delay > 0:
                self._wake.wait(delay)
