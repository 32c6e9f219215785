"""The runner contract every background loop follows, and a unit of work that keeps failing."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import Gateway, wait_for
from fax_samples import ENGLISH, tiff_fax
from gateway.stages import rulebook
from gateway.adapters.fax_drop import FaxDropWatcher
from gateway.daemon.pipeline import Pipeline
from gateway.registry import Registry
from gateway.runner import Runner, Unavailable
from gateway.spool import Spool
from gateway.stages.fax.text import GIVE_UP_AFTER, TextReader

pytestmark = pytest.mark.timeout(120)
log = logging.getLogger("gateway.test.runner")


class Scripted(Runner):
    """A loop whose passes do what the test says, one entry of `script` each."""

    def __init__(self, script: list[object], interval: float = 30.0):
        super().__init__("scripted", None, interval=interval, logger=log, backoff_min=0.05, backoff_max=0.2)
        self.script = script
        self.passes: list[float] = []
        self.ran = threading.Event()

    def run_once(self) -> bool | float | None:
        self.passes.append(time.monotonic())
        self.ran.set()
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[return-value]


def test_a_pass_with_work_is_followed_at_once_and_an_idle_one_waits_for_a_wake_up() -> None:
    runner = Scripted([True, True, None])
    runner.start()
    try:
        wait_for(lambda: len(runner.passes) == 3, 5, "three passes back to back")
        time.sleep(0.3)
        assert len(runner.passes) == 3  # idle: waits the interval (30 s) ...
        runner.wake()
        wait_for(lambda: len(runner.passes) == 4, 5, "a pass after the wake-up")  # ... or a wake-up
        assert runner.alive()
    finally:
        runner.stop(5)
    assert not runner.alive()


def test_a_pass_may_say_when_the_next_one_is_due() -> None:
    runner = Scripted([0.3])
    runner.start()
    try:
        wait_for(lambda: len(runner.passes) == 2, 5, "the second pass")
        assert runner.passes[1] - runner.passes[0] >= 0.29
    finally:
        runner.stop(5)


def test_a_failing_pass_is_logged_and_backed_off_and_the_loop_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    runner = Scripted([RuntimeError("a bug"), Unavailable("registry down"), Unavailable("registry down"),
                       Unavailable("registry down"), None])
    runner.start()
    try:
        wait_for(lambda: len(runner.passes) == 5, 10, "the loop going on after failures")
        gaps = [b - a for a, b in zip(runner.passes, runner.passes[1:], strict=False)]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.19  # doubling from backoff_min
        assert gaps[3] >= 0.19  # capped at backoff_max
        assert runner.alive() and runner.failures == 0
    finally:
        runner.stop(5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "unexpected error" in errors[0].getMessage()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "registry down" in warnings[0]  # the same reason is not repeated
    assert any("working again after 4 failed pass(es)" in r.getMessage() for r in caplog.records)


def test_a_stop_cuts_a_backoff_short() -> None:
    runner = Scripted([Unavailable("down")])
    runner.backoff_min = runner.backoff_max = 60.0
    runner.start()
    runner.ran.wait(5)
    started = time.monotonic()
    runner.stop(5)
    assert not runner.alive() and time.monotonic() - started < 2


def test_a_unit_given_up_is_an_alert(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    runner = Scripted([])
    attempts: list[str] = []

    def record(reason: str) -> bool:
        attempts.append(reason)
        return len(attempts) >= 2

    assert runner.unit_failed("job 7", "disk says no", record) is False
    assert runner.unit_failed("job 7", "disk says no", record) is True
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [(logging.WARNING, "scripted: job 7 failed, will be tried again: disk says no"),
                        (logging.ERROR, "ALERT scripted: job 7 given up: disk says no")]


FAX = """
[fax]
poll_seconds = 0.2
stable_seconds = 0
ocr_workers = 1
"""


def test_an_ocr_result_that_cannot_be_stored_is_given_up_and_frees_its_worker(tmp_path: Path) -> None:
    """The registry refuses the text (here a trigger refuses its event): each failure counts,
    the worker is free again, and after GIVE_UP_AFTER the letter is flagged and an event says why."""
    gateway = Gateway(tmp_path, extra=FAX)
    config = rulebook.load(str(gateway.config))
    registry = Registry.from_config(config)
    registry.upgrade()
    spool = Spool(config.spool_dir, config.message_dir)
    fax = config.fax_drop_dir / "refused.tif"
    fax.parent.mkdir(parents=True, exist_ok=True)
    fax.write_bytes(tiff_fax([ENGLISH]))
    os.utime(fax, (time.time() - 60, time.time() - 60))
    watcher = FaxDropWatcher(config, spool)
    assert watcher.scan() == 0 and watcher.scan() == 1  # seen once, then taken unchanged
    [outcome] = Pipeline(config, spool, registry).process(spool.claim(1))
    assert outcome.result == "registered"
    db = sqlite3.connect(config.state_dir / "registry.sqlite3", timeout=30)
    db.execute("CREATE TRIGGER refuse_text BEFORE INSERT ON events WHEN NEW.action = 'text-read' "
               "BEGIN SELECT RAISE(ABORT, 'the disk refuses the text'); END")
    db.commit()

    reader = TextReader(config, registry, poll_seconds=0.2)
    reader.start()
    try:
        wait_for(lambda: db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0] == 0, 90, "the job given up")
        wait_for(lambda: not reader._running, 10, "the worker free")
        assert reader.alive()
    finally:
        reader.stop()
        registry.close()
    flags, = db.execute("SELECT flags FROM letters").fetchone()
    assert "ocr-failed" in flags and "ocr-pending" not in flags
    [(details,)] = db.execute("SELECT details FROM events WHERE action = 'text-not-read'").fetchall()
    assert f'"attempts": {GIVE_UP_AFTER}' in details and "the disk refuses the text" in details
    db.close()
