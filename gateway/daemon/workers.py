"""The spool workers: each claims a batch of waiting items and registers it."""
from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.config import Config
from gateway.daemon.pipeline import Outcome, Pipeline
from gateway.daemon.registrar import Registrar
from gateway.runner import Runner, Unavailable
from gateway.spool import Spool, SpoolItem

log = logging.getLogger("gateway.daemon")


class SpoolWorker(Runner):
    """One pass: claim up to a batch and register it; at once again while there is work,
    else at the next wake-up or rescan."""

    def __init__(self, n: int, config: Config, spool: Spool, pipeline: Pipeline, registrar: Registrar | None,
                 count: Callable[[list[Outcome]], None]):
        super().__init__(f"worker-{n}", config, interval=config.model.spool.rescan_seconds, logger=log,
                         backoff_max=30.0)
        self.spool = spool
        self.pipeline = pipeline
        self.number = n
        self.registrar = registrar
        self.count = count
        self._alone = 0  # passes left that take one item at a time (see run_once)

    def run_once(self) -> bool | float:
        settings = self.config.model.spool
        items = self.spool.claim(1 if self._alone else settings.batch_size)
        if not items:
            return settings.rescan_seconds
        self._alone = max(0, self._alone - 1)
        try:
            # Through the registrar's helper process when there is one: the CPU work
            # then leaves this process (and its intakes) alone.
            outcomes = (self.registrar.register_all(items, worker=self.number) if self.registrar is not None
                        else self.pipeline.process(items))
        except Exception as exc:
            # The pipeline handles an item's faults itself; this is a bug. The items it has
            # not finished go back, and one that keeps tripping it must not loop for ever.
            self._unexpected(items, f"{type(exc).__name__}: {exc}")
            raise
        self.count(outcomes)
        if any(o.result == "released" for o in outcomes):
            raise Unavailable("the registry cannot take items now; they wait in the spool")
        return True

    def _unexpected(self, items: list[SpoolItem], reason: str) -> None:
        held = [item for item in items if item._fd is not None and item.path.exists()]
        if len(items) > 1:
            # Which one trips it is unknown: each is taken again on its own, without an attempt counted.
            self.spool.release_all(held)
            self._alone = len(items)
            return
        for item in held:
            def fail(why: str, item: SpoolItem = item) -> bool:
                return self.spool.fail(item, why)  # counted in its name; quarantined after max_attempts
            self.unit_failed(f"item {item.id}", f"unexpected error: {reason}", fail)
