"""The spool's group commit: one sync shared by the threads that need it at the same time
(gateway.spool.durable.SharedSync), and Spool.commit_grouped on top of it."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.spool import Spool, SpoolError, read_item_file
from gateway.spool.durable import SharedSync


class SlowSync:
    """A sync that takes a while and records when each run started and ended."""

    def __init__(self, seconds: float = 0.05, fail_first: int = 0):
        self.seconds = seconds
        self.fail_first = fail_first
        self.runs: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def __call__(self) -> None:
        start = time.monotonic()
        time.sleep(self.seconds)
        with self._lock:
            self.runs.append((start, time.monotonic()))
            if len(self.runs) <= self.fail_first:
                raise OSError(5, "Input/output error")


def test_threads_arriving_together_share_a_few_syncs_each_started_after_their_call() -> None:
    slow = SlowSync()
    shared = SharedSync(slow)
    gate = threading.Barrier(16)

    def caller() -> tuple[float, float]:
        gate.wait()
        asked = time.monotonic()
        shared.sync()
        return asked, time.monotonic()

    with ThreadPoolExecutor(16) as pool:
        calls = list(pool.map(lambda _: caller(), range(16)))
    assert len(slow.runs) <= 3, slow.runs  # not one per caller
    for asked, returned in calls:
        # Covered by a sync that started after the caller asked and ended before it returned.
        assert any(asked <= start and end <= returned for start, end in slow.runs)


def test_a_failed_sync_covers_nobody() -> None:
    slow = SlowSync(seconds=0.01, fail_first=1)
    shared = SharedSync(slow)
    with pytest.raises(OSError):
        shared.sync()
    shared.sync()  # runs again, and succeeds
    assert len(slow.runs) == 2


def test_commit_grouped_leaves_the_item_claimed_sealed_and_synced(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "messages")
    synced: list[int] = []
    monkeypatch.setattr(spool, "sync", lambda: synced.append(1))
    spool._shared_sync = SharedSync(spool.sync)
    writer = spool.writer({"intake": "smtp"})
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    item = spool.commit_grouped(writer)
    try:
        assert synced == [1]
        assert item.path.parent.name == "work" and item._fd is not None  # still locked by us
        meta, raw = read_item_file(item.path)
        assert raw == b"Subject: hi\r\n\r\nbody\r\n" and meta["intake"] == "smtp"
    finally:
        item._unlock()


def test_commit_grouped_drops_the_item_when_the_sync_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never acknowledged, so nothing stays behind: the sender keeps its copy and retries."""
    spool = Spool(tmp_path / "spool", tmp_path / "messages")

    def failing() -> None:
        raise OSError(5, "Input/output error")

    spool._shared_sync = SharedSync(failing)
    writer = spool.writer({"intake": "smtp"})
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    with pytest.raises(SpoolError, match="cannot make item durable"):
        spool.commit_grouped(writer)
    assert [p for d in ("tmp", "new", "work") for p in (tmp_path / "spool" / d).iterdir()] == []
