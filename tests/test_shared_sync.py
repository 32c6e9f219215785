"""The spool's group commit: one sync shared by the threads that need it at the same time
(gateway.spool.durable.SharedSync), the same for the coroutines of an event loop (LoopSync), and
what becomes of an item whose sync failed."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.spool import Spool, SpoolError, read_item_file
from gateway.spool.durable import LoopSync, SharedSync


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


def test_coroutines_waiting_together_share_a_few_syncs_each_started_after_their_call() -> None:
    slow = SlowSync()
    shared = LoopSync(slow, "test-sync")

    async def caller() -> tuple[float, float]:
        asked = time.monotonic()
        await shared.sync()
        return asked, time.monotonic()

    async def callers() -> list[tuple[float, float]]:
        first = [asyncio.ensure_future(caller()) for _ in range(8)]
        await asyncio.sleep(0.01)  # while the first sync runs
        return await asyncio.gather(*first, *(caller() for _ in range(8)))

    calls = asyncio.run(callers())
    assert len(slow.runs) <= 3, slow.runs  # not one per caller
    for asked, returned in calls:
        assert any(asked <= start and end <= returned for start, end in slow.runs)


class HeldSync:
    """Syncs in turn: the first is held until released, the second fails (EIO), the rest work."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = threading.Event()

    def __call__(self) -> None:
        self.runs += 1
        if self.runs == 1:
            self.release.wait(10)
        elif self.runs == 2:
            raise OSError(5, "Input/output error")


async def asking_meanwhile(shared: LoopSync, held: HeldSync, callers: int) -> tuple[asyncio.Future[None],
                                                                                    list[asyncio.Future[None]]]:
    """The first caller, whose sync is held, and `callers` more who asked while it was held: the
    next sync covers them all."""
    first = asyncio.ensure_future(shared.sync())
    while not held.runs:  # the first sync has started
        await asyncio.sleep(0.001)
    more = [asyncio.ensure_future(shared.sync()) for _ in range(callers)]
    await asyncio.sleep(0)  # each of them has asked
    return first, more


def test_a_failed_loop_sync_fails_every_caller_it_covered_and_the_next_sync_runs_again() -> None:
    held = HeldSync()
    shared = LoopSync(held, "test-sync")

    async def callers() -> list[BaseException | None]:
        first, more = await asking_meanwhile(shared, held, 4)
        held.release.set()
        await first
        failed = await asyncio.gather(*more, return_exceptions=True)
        await shared.sync()  # a third sync, which works
        return failed

    failed = asyncio.run(callers())
    assert [type(error) for error in failed] == [OSError] * 4
    assert held.runs == 3


def test_a_loop_sync_serves_the_next_event_loop_once_the_first_has_closed() -> None:
    slow = SlowSync(seconds=0.01)
    shared = LoopSync(slow, "test-sync")
    asyncio.run(shared.sync())
    asyncio.run(shared.sync())
    assert len(slow.runs) == 2


def test_a_cancelled_caller_leaves_the_others_covered_by_the_same_sync() -> None:
    held = HeldSync()
    shared = LoopSync(held, "test-sync")

    async def callers() -> list[BaseException | None]:
        first, (left, stays) = await asking_meanwhile(shared, held, 2)
        left.cancel()
        held.release.set()
        await first
        return await asyncio.gather(left, stays, return_exceptions=True)

    outcomes = asyncio.run(callers())
    assert isinstance(outcomes[0], asyncio.CancelledError) and isinstance(outcomes[1], OSError)
    assert held.runs == 2


def test_an_item_whose_sync_failed_is_abandoned_leaving_nothing(tmp_path: Path) -> None:
    """Never acknowledged, so nothing stays behind: the sender keeps its copy and retries."""
    spool = Spool(tmp_path / "spool", tmp_path / "messages")
    writer = spool.writer({"intake": "smtp"})
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    item = writer.commit(claim=True, durable=False)
    assert item.path.parent.name == "work" and read_item_file(item.path)[1] == b"Subject: hi\r\n\r\nbody\r\n"
    error = spool.abandon(item, OSError(5, "Input/output error"))
    assert isinstance(error, SpoolError) and "cannot make item durable" in str(error)
    assert [p for d in ("tmp", "new", "work") for p in (tmp_path / "spool" / d).iterdir()] == []
    assert spool.recover() == (0, 0)
