"""Archiving throughput in MB/s for a month of 4 KiB messages, beside the same compressor on the same bytes.

Setup (not timed): N letters of about 4 KiB in three categories are put in a
SQLite registry and the message store as the daemon leaves them.

Timed, ours: `Archiver.run(month)`: read each stored original and check it
against its seal, write the mboxrd packages through zstd (level 3) with a CSV
manifest each, fsync and rename them, and record the packages and every
letter's archive number in the registry.
Timed, baseline: the same zstd compressor (level 3) over the same message
bytes, already in memory, into one file, fsynced.
Also shown, not in the ratio: `Archiver.verify(month)`, which re-reads and
re-hashes every message.

    .venv/bin/python bench/archive.py [--count 100000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
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


def populate(config: config_mod.Config, count: int) -> list[bytes]:
    spool = Spool(config.spool_dir, config.message_dir)
    registry = Registry.from_config(config)
    registry.upgrade()
    rng = random.Random(1)
    raws = [message(n, rng) for n in range(count)]
    rows = []
    when = datetime(2026, 3, 10, 2, 0, tzinfo=timezone.utc)
    for n, raw in enumerate(raws):
        sha = hashlib.sha256(raw).hexdigest()
        path = spool.stored_path(sha)
        header = json.dumps({"id": str(n)}).encode()
        path.write_bytes(MAGIC + f"{len(raw):016d} {sha}".encode() + b" " + header + b"\n" + raw)
        rows.append({"number": f"2026-{n + 1:06d}", "series": "2026-", "seq": n + 1, "channel": "email",
                     "intake": "smtp", "status": "closed", "received_at": when, "raw_sha256": sha,
                     "raw_size": len(raw), "raw_path": str(path.relative_to(config.state_dir)),
                     "category": CATEGORIES[n % 3], "created_at": when, "updated_at": when, "subject": f"Letter {n}",
                     "recipients": {}, "envelope": {}, "defects": [], "flags": [], "tags": []})
    with registry.writer.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(Letter.__table__.insert(), rows[start:start + 5000])
    registry.close()
    os.sync()
    return raws


def baseline(raws: list[bytes], target: Path) -> float:
    started = time.perf_counter()
    with open(target, "wb") as f:
        with zstandard.ZstdCompressor(level=3).stream_writer(f, closefd=False) as out:
            for raw in raws:
                out.write(raw)
        os.fsync(f.fileno())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bench-archive-") as tmp:
        work = Path(tmp)
        config = config_mod.load(write_config(work, ""))
        started = time.perf_counter()
        raws = populate(config, args.count)
        megabytes = sum(len(r) for r in raws) / 1e6
        print(f"{args.count} letters, {megabytes:.1f} MB, set up in {time.perf_counter() - started:.1f} s")
        base = baseline(raws, work / "baseline.zst")
        os.sync()
        registry = Registry.from_config(config)
        archiver = Archiver(config, registry)
        started = time.perf_counter()
        written = archiver.run("2026-03")
        ours = time.perf_counter() - started
        assert sum(w.letters for w in written) == args.count, written
        started = time.perf_counter()
        checked = archiver.verify("2026-03")
        verify = time.perf_counter() - started
        assert all(c.ok for c in checked)
        packed = sum(w.size for w in written) / 1e6
        print(f"baseline (zstd level 3, same bytes, in memory): {megabytes / base:8.1f} MB/s")
        print(f"gateway archive run:                           {megabytes / ours:8.1f} MB/s "
              f"({packed:.1f} MB in {len(written)} package(s))")
        print(f"gateway archive verify (not in the ratio):     {megabytes / verify:8.1f} MB/s")
        print(f"ratio gateway / baseline: {base / ours:.2f}")


if __name__ == "__main__":
    main()
