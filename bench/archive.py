"""Archiving a month of 4 KiB messages, beside `tar -I 'zstd -3'` over the same message files.

Setup (not timed): N letters of about 4 KiB in three categories are put in a
SQLite registry and the message store as the daemon leaves them; the registry
is copied aside so that every round archives the same month from scratch.

Timed, baseline (what a system administrator would script): `tar -I 'zstd -3'
-cf month.tar.zst` over the same message-store files, then an fsync of the
package.
Timed, ours: `Archiver.run(month)`: read each stored original and check it
against its seal, write one zstd frame (level 3) per message into the
category's mboxrd package with a CSV manifest, fsync and rename, and record
the packages and every letter's archive number in the registry. Then,
separately, `Archiver.verify(month)`: re-read every package, check its
SHA-256 and every message's against the manifest and the register
(release_after_verify is off, so every round finds the same message store).

Measured, the ceiling: the CPU time of the least work any archive run that
keeps the promises above must do, each part on its own in its tightest form:
compressing the same messages (already in memory) one zstd frame each, level 3
with checksums; reading each stored file in one system call and hashing it
(the seal check); and recording the archive numbers in a copy of the registry
(one temporary table, one UPDATE ... FROM and one INSERT ... SELECT of the
events, one transaction, straight through sqlite3). Spread perfectly over the
two cores, these take (sum of the three) / 2 seconds; baseline time over that
is the best ratio any such run could reach on this machine.

Rounds alternate which side goes first; the figures are medians over rounds,
the ratios baseline time / our time (above 1: faster than the baseline).

    .venv/bin/python bench/archive.py [--count 100000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemon import write_config  # noqa: E402
from gateway import config as config_mod  # noqa: E402
from gateway.archive.packer import Archiver  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from gateway.registry.models import Letter  # noqa: E402
from gateway.spool import MAGIC, Spool  # noqa: E402

WORDS = ("contract delivery order invoice quarter meeting schedule payment shipment quotation revised terms "
         "合同 交货 订单 发票 季度 会议 安排 付款 报价 条款 请 确认 本周 下周 谢谢").split()
CATEGORIES = ("external.business", "external.inquiry_complaint", "external.official")
MONTH = "2026-03"


def message(n: int, rng: random.Random, size: int = 4096) -> bytes:
    head = (f"From: Partner {n % 97} <p{n % 97}@partner.example>\r\nTo: liaison@example.org\r\n"
            f"Subject: Letter {n}\r\nMessage-ID: <{n}@partner.example>\r\n"
            "Date: Tue, 10 Mar 2026 10:00:00 +0800\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    body = []
    length = len(head)
    while length < size:
        line = (" ".join(rng.choice(WORDS) for _ in range(12)) + "\r\n").encode()
        body.append(line)
        length += len(line)
    return head + b"".join(body)


def populate(config: config_mod.Config, count: int) -> tuple[list[str], int]:
    """The month's letters in the registry and the message store: (their files, relative to the
    state directory; their raw bytes in total)."""
    spool = Spool(config.spool_dir, config.message_dir)
    registry = Registry.from_config(config)
    registry.upgrade()
    rng = random.Random(1)
    rows = []
    files = []
    total = 0
    when = datetime(2026, 3, 10, 2, 0, tzinfo=timezone.utc)
    for n in range(count):
        raw = message(n, rng)
        sha = hashlib.sha256(raw).hexdigest()
        path = spool.stored_path(sha)
        header = json.dumps({"id": str(n)}).encode()
        path.write_bytes(MAGIC + f"{len(raw):016d} {sha}".encode() + b" " + header + b"\n" + raw)
        files.append(str(path.relative_to(config.state_dir)))
        total += len(raw)
        rows.append({"number": f"2026-{n + 1:06d}", "series": "2026-", "seq": n + 1, "channel": "email",
                     "intake": "smtp", "status": "closed", "received_at": when, "raw_sha256": sha,
                     "raw_size": len(raw), "raw_path": files[-1],
                     "category": CATEGORIES[n % 3], "created_at": when, "updated_at": when, "subject": f"Letter {n}",
                     "recipients": {}, "envelope": {}, "defects": [], "flags": [], "tags": []})
    with registry.writer.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(Letter.__table__.insert(), rows[start:start + 5000])
    registry.close()
    os.sync()
    return files, total


def baseline(config: config_mod.Config, file_list: Path, target: Path) -> float:
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(["tar", "-I", "zstd -3", "-cf", str(target), "-C", str(config.state_dir), "-T", str(file_list)],
                   check=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def least_work(config: config_mod.Config, snapshot: Path, files: list[str], messages: list[bytes]) -> dict[str, float]:
    """CPU seconds of each part of the least work an archive run must do (see the module's text)."""
    spent: dict[str, float] = {}
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    started = time.process_time()
    for first in range(0, len(messages), 1024):
        compressor.multi_compress_to_buffer(messages[first:first + 1024], threads=1)
    spent["frames"] = time.process_time() - started
    started = time.process_time()
    for name in files:
        fd = os.open(os.path.join(config.state_dir, name), os.O_RDONLY)
        try:
            hashlib.sha256(os.read(fd, 1 << 20)).digest()
        finally:
            os.close(fd)
    spent["reading"] = time.process_time() - started
    copy = snapshot.with_name("least.sqlite3")
    shutil.copyfile(snapshot, copy)
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        ids = [row[0] for row in db.execute("SELECT id FROM letters ORDER BY id")]
        started = time.process_time()
        db.execute("BEGIN")
        db.execute("CREATE TEMPORARY TABLE assign (position INTEGER PRIMARY KEY, letter_id INTEGER, number TEXT)")
        db.executemany("INSERT INTO assign VALUES (?, ?, ?)", ((n, id_, f"A{n:06d}") for n, id_ in enumerate(ids)))
        db.execute("UPDATE letters SET archive_number = assign.number, archived_at = '2026-04-01 00:00:00.000000', "
                   "archive_package_id = 1, updated_at = '2026-04-01 00:00:00.000000', status = 'archived' "
                   "FROM assign WHERE letters.id = assign.letter_id")
        db.execute("INSERT INTO events (letter_id, at, actor, action, details) SELECT letter_id, "
                   "'2026-04-01 00:00:00.000000', 'gateway', 'archived', json_object('archive_number', number) "
                   "FROM assign ORDER BY position")
        db.execute("COMMIT")
        spent["recording"] = time.process_time() - started
    finally:
        db.close()
        copy.unlink()
    return spent


def fresh_registry(config: config_mod.Config, snapshot: Path) -> None:
    """The registry as populated, no package recorded; no archive folder."""
    database = config.state_dir / "registry.sqlite3"
    for leftover in (database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(snapshot, database)
    shutil.rmtree(config.archive_dir, ignore_errors=True)
    os.sync()


def ours(config: config_mod.Config, count: int) -> tuple[float, float, int]:
    """(seconds to archive, seconds to verify, bytes written)."""
    registry = Registry.from_config(config)
    try:
        archiver = Archiver(config, registry)
        started = time.perf_counter()
        written = archiver.run(MONTH)
        run = time.perf_counter() - started
        assert sum(w.letters for w in written) == count, written
        started = time.perf_counter()
        checked = archiver.verify(MONTH)
        verify = time.perf_counter() - started
        assert checked and all(c.ok for c in checked), [c.problems[:3] for c in checked]
        return run, verify, sum(w.size for w in written)
    finally:
        registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="baseline and gateway runs, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bench-archive-") as tmp:
        work = Path(tmp)
        config = config_mod.load(write_config(work, "[archive]\nrelease_after_verify = false\n"))
        started = time.perf_counter()
        files, total = populate(config, args.count)
        megabytes = total / 1e6
        file_list = work / "files.txt"
        file_list.write_text("\n".join(files) + "\n")
        snapshot = work / "registry.snapshot"
        shutil.copyfile(config.state_dir / "registry.sqlite3", snapshot)
        print(f"{args.count} letters, {megabytes:.1f} MB of messages, set up in {time.perf_counter() - started:.1f} s")
        rng = random.Random(1)  # as populate() made them
        messages = [message(n, rng) for n in range(args.count)]
        bases, runs, verifies, ceilings, run_ratios, verify_ratios, ceiling_ratios = [], [], [], [], [], [], []
        for round_ in range(args.rounds):
            fresh_registry(config, snapshot)
            if round_ % 2:
                run, verify, packed = ours(config, args.count)
                base = baseline(config, file_list, work / "month.tar.zst")
            else:
                base = baseline(config, file_list, work / "month.tar.zst")
                run, verify, packed = ours(config, args.count)
            least = least_work(config, snapshot, files, messages)
            ceiling = sum(least.values()) / 2
            tarred = (work / "month.tar.zst").stat().st_size
            print(f"round {round_ + 1}: tar+zstd {base:.2f} s ({tarred / 1e6:.1f} MB), archive run {run:.2f} s "
                  f"({packed / 1e6:.1f} MB), verify {verify:.2f} s; least CPU: "
                  + ", ".join(f"{part} {seconds:.2f} s" for part, seconds in least.items())
                  + f", on two cores {ceiling:.2f} s")
            ceilings.append(ceiling)
            ceiling_ratios.append(base / ceiling)
            bases.append(base)
            runs.append(run)
            verifies.append(verify)
            run_ratios.append(base / run)
            verify_ratios.append(base / verify)
        base, run, verify, ceiling = (statistics.median(v) for v in (bases, runs, verifies, ceilings))
        print(f"baseline (tar -I 'zstd -3' + fsync, same files): {megabytes / base:8.1f} MB/s  {base:.2f} s")
        print(f"gateway archive run:                            {megabytes / run:8.1f} MB/s  {run:.2f} s")
        print(f"gateway archive verify:                         {megabytes / verify:8.1f} MB/s  {verify:.2f} s")
        print(f"ceiling (least work, two cores):                {megabytes / ceiling:8.1f} MB/s  {ceiling:.2f} s")
        print(f"median ratio: run {statistics.median(run_ratios):.2f}, verify {statistics.median(verify_ratios):.2f}; "
              f"ceiling {statistics.median(ceiling_ratios):.2f} (the most any such run could reach here)")

if __name__ == "__main__":
    main()
