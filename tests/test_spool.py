"""The spool: durable before acknowledged, claimed under a lock, recovered after a crash."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT

from gateway.spool import DamagedItem, Spool, SpoolError, read_item_file


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", tmp_path / "messages", max_attempts=3)


def test_enqueue_is_visible_only_when_complete(spool: Spool) -> None:
    """A streamed item is in tmp/ while written and appears in new/ with its bytes and meta on commit."""
    writer = spool.writer({"intake": "smtp"})
    writer.write(b"Subject: x\r\n\r\n")
    assert spool.pending() == []
    assert len(os.listdir(spool.root / "tmp")) == 1
    writer.write(b"body\r\n")
    item = writer.commit()
    assert spool.pending() == [f"{item.id}.0"]
    assert os.listdir(spool.root / "tmp") == []
    meta, raw = read_item_file(spool.root / "new" / f"{item.id}.0")
    assert raw == b"Subject: x\r\n\r\nbody\r\n"
    assert meta["intake"] == "smtp" and meta["id"] == item.id and meta["received_at"]


def test_claim_is_oldest_first_and_exclusive(spool: Spool) -> None:
    """Claims come in arrival order; a second claimer gets nothing that is already taken."""
    ids = [spool.enqueue(f"m{i}".encode(), {}).id for i in range(5)]
    first = spool.claim(3)
    assert [i.id for i in first] == ids[:3]
    second = spool.claim(10)
    assert [i.id for i in second] == ids[3:]
    assert spool.claim(10) == []
    assert first[0].raw == b"m0"


def test_finish_keeps_the_raw_copy_once(spool: Spool) -> None:
    """Finishing moves the file into the message store; the same bytes again are not stored twice."""
    a = spool.enqueue(b"same", {})
    b = spool.enqueue(b"same", {})
    [ia, ib] = spool.claim(2)
    stored = spool.finish(ia, "ab" * 32)
    assert stored is not None and read_item_file(stored)[1] == b"same"
    assert spool.finish(ib, "ab" * 32) == stored
    assert os.listdir(spool.root / "work") == []
    assert os.listdir(stored.parent) == [stored.name]
    assert a.id != b.id


def test_recovery_leaves_an_item_its_worker_finished_while_it_looked(spool: Spool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The rescan opens a claimed item, its worker finishes it and lets go, then the rescan gets the
    lock: the file is in the message store now, nothing is left to requeue (nor to trip over)."""
    import fcntl

    import gateway.spool as spool_module

    spool.enqueue(b"Subject: done\r\n\r\nbody\r\n", {})
    [item] = spool.claim(1)
    real_flock = fcntl.flock

    def worker_finishes_first(fd: int, operation: int) -> None:
        if item.path.exists():
            spool.finish(item, "cd" * 32)
        real_flock(fd, operation)

    monkeypatch.setattr(spool_module.fcntl, "flock", worker_finishes_first)
    assert spool.recover() == (0, 0)
    monkeypatch.setattr(spool_module.fcntl, "flock", real_flock)
    assert os.listdir(spool.root / "work") == os.listdir(spool.root / "new") == []
    assert read_item_file(spool.stored_path("cd" * 32))[1] == b"Subject: done\r\n\r\nbody\r\n"


def test_failures_back_off_then_quarantine(spool: Spool) -> None:
    """A failing item waits before its next try, and after max_attempts sits in quarantine with its reasons."""
    item = spool.enqueue(b"poison", {"intake": "file"})
    [claimed] = spool.claim(1)
    assert spool.fail(claimed, "boom 1", backoff_seconds=60) is False
    assert spool.claim(1) == []  # backing off
    os.utime(spool.root / "new" / f"{item.id}.1", (time.time(), time.time() - 1))
    [claimed] = spool.claim(1)
    assert claimed.attempts == 1
    assert spool.fail(claimed, "boom 2", backoff_seconds=0) is False
    [claimed] = spool.claim(1)
    assert spool.fail(claimed, "boom 3") is True
    (spool.root / "quarantine" / f"{item.id} (copy).item").write_bytes(b"copied in by hand")
    [q] = spool.quarantined()  # the hand-made copy is no item of the spool's, and breaks nothing
    assert q.id == item.id and q.reason == "boom 3" and q.attempts == 3
    assert q.meta["intake"] == "file"
    assert read_item_file(q.path)[1] == b"poison"
    spool.retry(item.id)
    assert spool.quarantined() == []
    [again] = spool.claim(1)
    assert again.attempts == 0 and again.raw == b"poison"
    assert spool.fail(again, "boom 4", backoff_seconds=0) is False


def test_quarantine_history_survives_a_retry(spool: Spool) -> None:
    """An item quarantined twice keeps the reasons of both times."""
    spool.max_attempts = 1
    item = spool.enqueue(b"x", {})
    spool.fail(spool.claim(1)[0], "first")
    spool.retry(item.id)
    spool.fail(spool.claim(1)[0], "second")
    assert spool.quarantined_item(item.id).history == ["first", "second"]
    with pytest.raises(KeyError):
        spool.quarantined_item("../../etc/passwd")


_HOLDER = """
import sys, time
from pathlib import Path
from gateway.spool import Spool
s = Spool(Path(sys.argv[1]), Path(sys.argv[2]), max_attempts=3)
items = s.claim(10)
print(len(items), flush=True)
time.sleep(600)
"""


def test_recover_takes_only_abandoned_claims(spool: Spool, tmp_path: Path) -> None:
    """A claim held by a live process is left alone; once that process is SIGKILLed, recover() requeues it."""
    item = spool.enqueue(b"letter", {})
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(spool.root), str(spool.message_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        assert spool.recover() == (0, 0)
        assert os.listdir(spool.root / "work") == [f"{item.id}.0"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert spool.recover() == (1, 0)
    [again] = spool.claim(1)
    assert again.id == item.id and again.attempts == 1 and again.raw == b"letter"


def test_recover_quarantines_an_item_that_keeps_killing_the_process(spool: Spool) -> None:
    """An item whose processing died max_attempts times goes to quarantine instead of looping forever."""
    item = spool.enqueue(b"deadly", {})
    for _ in range(3):
        [claimed] = spool.claim(1)
        claimed._unlock()  # as if the process had died holding it
        spool.recover()
    [q] = spool.quarantined()
    assert q.id == item.id
    assert q.reason == "processing was interrupted 3 times (the process died)"


def test_recover_clears_unacknowledged_partial_writes(spool: Spool) -> None:
    """A half-written item of a dead writer is removed; one still being written is not."""
    live = spool.writer({})
    live.write(b"partial")
    dead = spool.root / "tmp" / "123-dead.0"
    dead.write_bytes(b"GWSPOOL1 {}\npart")
    young = spool.root / "tmp" / "456-young.0"
    young.write_bytes(b"GWSPOOL1 {}\npart")
    os.utime(dead, (time.time() - 120, time.time() - 120))
    os.utime(live._tmp, (time.time() - 120, time.time() - 120))
    spool.recover()
    # Unlocked and old: debris. Locked: being written. Young: maybe not locked yet.
    assert sorted(os.listdir(spool.root / "tmp")) == sorted([f"{live.id}.0", "456-young.0"])
    young.unlink()
    assert os.listdir(spool.root / "tmp") == [f"{live.id}.0"]
    live.write(b" and the rest")
    assert live.commit().raw == b"partial and the rest"


def test_enqueue_into_a_missing_spool_fails_cleanly(spool: Spool) -> None:
    """When the spool cannot be written, SpoolError is raised and nothing is left behind."""
    os.rename(spool.root / "tmp", spool.root / "tmp-gone")
    with pytest.raises(SpoolError, match="cannot create item"):
        spool.enqueue(b"x", {})
    os.rename(spool.root / "tmp-gone", spool.root / "tmp")
    assert spool.pending() == [] and os.listdir(spool.root / "tmp") == []


def test_enqueue_on_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    """ENOSPC while writing: SpoolError, and no partial file stays in tmp/ or new/."""
    full = tmp_path / "full"
    full.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs to fill: {proc.stderr.decode()}")
    try:
        spool = Spool(full / "spool", full / "messages")
        with pytest.raises(SpoolError):
            spool.enqueue(b"x" * 200_000, {})
        assert os.listdir(full / "spool" / "tmp") == [] and spool.pending() == []
        assert spool.enqueue(b"small", {}).raw == b"small"
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_seal_catches_damaged_bytes(spool: Spool) -> None:
    """A spool file whose bytes no longer match its seal is refused when read, naming the file."""
    item = spool.enqueue(b"original bytes", {})
    path = spool.root / "new" / f"{item.id}.0"
    data = path.read_bytes()
    path.write_bytes(data[:-5] + b"XXXXX")
    [claimed] = spool.claim(1)
    with pytest.raises(DamagedItem, match="do not match the seal"):
        _ = claimed.raw
    assert spool.fail(claimed, "damaged") is False  # it stays visible until quarantined


@pytest.mark.parametrize("one_read", [1 << 18, 0], ids=["one read", "buffered"])
def test_an_item_file_reads_the_same_in_one_read_or_buffered(spool: Spool, monkeypatch: pytest.MonkeyPatch,
                                                              one_read: int) -> None:
    """Small files are read in one system call, large ones header line and bytes apart: the same
    meta and bytes either way, and the same refusals of a file cut short or damaged."""
    import gateway.spool as spool_module
    monkeypatch.setattr(spool_module, "_ONE_READ", one_read)
    raw = b"Subject: x\r\n\r\n" + b"line\n" * 2000 + b"no newline at the end"
    item = spool.enqueue(raw, {"intake": "smtp"})
    path = spool.root / "new" / f"{item.id}.0"
    meta, read = read_item_file(path)
    assert read == raw and meta["intake"] == "smtp" and meta["id"] == item.id
    data = path.read_bytes()
    header = data[:data.index(b"\n")]
    path.write_bytes(header)  # the header line without its newline
    with pytest.raises(DamagedItem, match="incomplete spool item"):
        read_item_file(path)
    path.write_bytes(b"not a spool file")
    with pytest.raises(DamagedItem, match="not a spool item"):
        read_item_file(path)
    path.write_bytes(data[:-1])
    with pytest.raises(DamagedItem, match="do not match the seal"):
        read_item_file(path)


def test_recover_sets_aside_a_claimed_item_cut_short_before_its_fsync(spool: Spool) -> None:
    """Killed between rename and fsync of a claimed item: it is not processed, but kept in quarantine."""
    writer = spool.writer({"intake": "smtp"})
    writer.write(b"Subject: x\r\n\r\nbody")
    item = writer.commit(claim=True)
    path = spool.root / "work" / f"{item.id}.0"
    # What a crash could leave: the rename made it, the data did not.
    path.write_bytes(path.read_bytes()[:-4])
    item._unlock()
    assert spool.recover() == (0, 1)
    assert os.listdir(spool.root / "work") == [] and spool.pending() == []
    [q] = spool.quarantined()
    assert q.id == item.id and "do not match the seal" in q.reason
    # An intact abandoned claim is requeued, as before.
    intact = spool.enqueue(b"intact", {}, claim=True)
    intact._unlock()
    assert spool.recover() == (1, 0)


def test_an_unreadable_item_does_not_stop_the_others() -> None:
    """A file the daemon's user cannot open is logged and skipped; the next item is still claimed."""
    base = Path(tempfile.mkdtemp(prefix="gw-spool-"))
    try:
        spool = Spool(base / "spool", base / "messages")
        first = spool.enqueue(b"one", {})
        second = spool.enqueue(b"two", {})
        for path in [base, *base.rglob("*")]:
            os.chown(path, 65534, 65534)
        bad = spool.root / "new" / f"{first.id}.0"
        os.chown(bad, 0, 0)  # left behind by a command run as root
        os.chmod(bad, 0o600)
        pid = os.fork()
        if pid == 0:  # the daemon's unprivileged user
            os.setgid(65534)
            os.setuid(65534)
            try:
                claimed = Spool(spool.root, spool.message_dir).claim(10)
                spool.recover()
                os._exit(0 if [c.id for c in claimed] == [second.id] else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(base)


def test_a_batch_made_durable_with_one_sync(spool: Spool) -> None:
    """Claimed items committed without their own fsync become durable with one Spool.sync() for the batch."""
    items = []
    for n in range(3):
        writer = spool.writer({"intake": "smtp"})
        writer.write(f"message {n}".encode())
        items.append(writer.commit(claim=True, durable=False))
    spool.sync()
    assert sorted(os.listdir(spool.root / "work")) == sorted(f"{i.id}.0" for i in items)
    assert [i.raw for i in items] == [b"message 0", b"message 1", b"message 2"]
    unclaimed = spool.writer({})
    with pytest.raises(AssertionError):
        unclaimed.commit(durable=False)  # only claimed items may wait for a batch sync
    unclaimed.abort()


def test_a_batch_released_at_once_is_waiting_again_even_if_one_of_it_is_gone(spool: Spool) -> None:
    """release_all gives every item back to new/ under its own name, unlocked, claimable again;
    one that vanished meanwhile is an error only after the others are back."""
    items = []
    for n in range(4):
        writer = spool.writer({"intake": "imap"})
        writer.write(f"message {n}".encode())
        items.append(writer.commit(claim=True, durable=False))
    spool.sync()
    items[1].path.unlink()
    with pytest.raises(FileNotFoundError):
        spool.release_all(items)
    back = [items[0], items[2], items[3]]
    assert spool.pending() == [f"{i.id}.0" for i in back]
    assert os.listdir(spool.root / "work") == []
    assert [i.raw for i in spool.claim(10)] == [b"message 0", b"message 2", b"message 3"]


DURABLE_STEPS = """
import sys
from pathlib import Path
from gateway.spool import Spool
root = Path(sys.argv[1])
spool = Spool(root / "spool", root / "messages", max_attempts=2)
spool.enqueue(b"x", {})
[item] = spool.claim(1); spool.fail(item, "first", backoff_seconds=0)
[item] = spool.claim(1); spool.fail(item, "second", backoff_seconds=0)
spool.retry(item.id)
[item] = spool.claim(1); spool.finish(item, "ab" * 32)
spool.quarantine_new(b"y", {}, "set aside at once")
batch = []
for n in range(3):
    writer = spool.writer({})
    writer.write(b"batch %d" % n)
    batch.append(writer.commit(claim=True, durable=False))
spool.sync()
spool.release_all(batch)
"""


def test_every_name_that_must_survive_a_power_cut_is_synced(tmp_path: Path) -> None:
    """Under strace: each file is fsynced before it is renamed into place, and every directory
    an item was created in, renamed into or out of, or removed from is fsynced afterwards.
    Left to chance, because recovery makes them good: a claim (new/ to work/; undone, the item
    waits) and finishing a registered item (work/ to the message store; undone, recover() finds it
    in work/ and the registry recognises it)."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=rename,renameat,renameat2,fsync,syncfs,unlink,mkdir",
                    "-o", str(trace), sys.executable, "-c", DURABLE_STEPS, str(tmp_path)],
                   check=True, cwd=ROOT, timeout=60)
    base = str(tmp_path)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if base in line]
    synced_at: dict[str, list[int]] = {}
    whole_filesystem_at: list[int] = []  # syncfs(2): everything written before it is durable
    for n, call in enumerate(calls):
        if call.startswith("fsync("):
            synced_at.setdefault(call.split("<", 1)[1].split(">", 1)[0], []).append(n)
        elif call.startswith("syncfs("):
            whole_filesystem_at.append(n)

    def synced_after(path: str, n: int) -> bool:
        return any(at > n for at in [*synced_at.get(path, []), *whole_filesystem_at])

    checked = 0
    for n, call in enumerate(calls):
        if call.startswith("rename("):
            src, dst = call.split('"')[1], call.split('"')[3]
            if os.path.dirname(src).endswith("/new") and os.path.dirname(dst).endswith("/work"):
                continue  # a claim
            if os.path.dirname(src).endswith("/work") and "/messages/" in dst:
                continue  # finishing a registered item
            if os.path.dirname(src).endswith("/tmp") and os.path.dirname(dst).endswith("/work"):
                # Committed claimed: renamed first, then synced, and acknowledged only after (recover()
                # sets aside one cut short in between, its seal not matching).
                assert synced_after(dst, n), f"claimed item never synced: {call}"
            elif os.path.basename(src).startswith(".") or os.path.dirname(src).endswith("/tmp"):
                # A file just written (an item moved on was synced under its first name).
                assert any(at < n for at in synced_at.get(src, [])), f"renamed before its bytes were synced: {call}"
            assert synced_after(os.path.dirname(dst), n), f"directory not synced after {call}"
            if not os.path.dirname(src).endswith("/tmp"):  # tmp/ holds nothing anyone relies on
                assert synced_after(os.path.dirname(src), n), f"source directory not synced after {call}"
            checked += 1
        elif call.startswith(("unlink(", "mkdir(")):
            path = call.split('"')[1]
            assert synced_after(os.path.dirname(path), n), f"directory not synced after {call}"
            checked += 1
    assert checked > 10


def test_a_store_on_another_filesystem_gets_a_synced_copy(tmp_path: Path) -> None:
    """A message store that several nodes mount is on another filesystem than the local spool: the
    raw copy is written and fsynced under a temporary name there, linked into place (never over bytes
    already stored), and only then does the spool's file go."""
    shared = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="gateway-store-"))
    try:
        assert os.stat(shared).st_dev != os.stat(tmp_path).st_dev  # tmpfs against the disk
        script = (f"from pathlib import Path\nfrom gateway.spool import Spool\n"
                  f"s = Spool(Path({str(tmp_path / 'spool')!r}), Path({str(shared / 'messages')!r}))\n"
                  f"for n in range(2): s.enqueue(b'same', {{}})\n"
                  f"a, b = s.claim(2)\ns.finish(a, 'cd' * 32)\ns.finish(b, 'cd' * 32)\n")
        trace = tmp_path / "trace"
        subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync,link,linkat,unlink,unlinkat", "-o", str(trace),
                        sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
        stored = shared / "messages" / "cd" / f"{'cd' * 32}.msg"
        assert read_item_file(stored)[1] == b"same"
        assert os.listdir(stored.parent) == [stored.name]  # once, and no temporary copy left
        assert os.listdir(tmp_path / "spool" / "work") == []
        calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if str(shared) in line
                 or str(tmp_path / "spool" / "work") in line]
        copy_synced = next(n for n, c in enumerate(calls) if c.startswith("fsync(") and ".tmp>" in c)
        linked = next(n for n, c in enumerate(calls)
                      if c.startswith(("link(", "linkat(")) and ".tmp" in c and c.endswith(" 0"))
        folder_synced = next(n for n, c in enumerate(calls) if c.startswith("fsync(") and f"{stored.parent}>)" in c)
        spool_removed = min(n for n, c in enumerate(calls) if c.startswith(("unlink(", "unlinkat(")) and "/work/" in c)
        assert copy_synced < linked < folder_synced < spool_removed, calls
    finally:
        shutil.rmtree(shared)
