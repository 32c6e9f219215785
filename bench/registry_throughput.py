"""Throughput of spool -> normalise -> register on SQLite, beside a baseline run in the same process.

Ours: every message is written to the spool (fsync, rename, directory fsync),
claimed, normalised (MIME walk, charset handling, attachment hashing, summary)
and registered (number, letter row, events, intake key) in batches, the
spool copy then renamed into the message store.

Baseline: the standard `email` parser (policy.default) on the same bytes,
reading From/To/Subject/Date/Message-ID and the body, plus one bare SQLite
insert of one row per message, committed per message (WAL, synchronous=FULL).

    .venv/bin/python bench/registry_throughput.py [--count N]
"""
from __future__ import annotations

import argparse
import email
import email.policy
import hashlib
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.stages import rulebook  # noqa: E402
from gateway.daemon.pipeline import Pipeline  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from gateway.spool import Spool  # noqa: E402


def make_messages(count: int, size: int) -> list[bytes]:
    out = []
    para = ("Dear colleagues, further to our meeting we send the revised terms of the supply contract. "
            "请在本周五前确认合同条款。\n")
    for i in range(count):
        body = (para * (size // len(para.encode()) + 1))[: size - 400]
        msg = (f"From: Partner {i} <partner{i}@supplier.example>\r\nTo: sales@example.org\r\n"
               f"Subject: =?utf-8?b?5ZCI5ZCM?= contract {i}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\n"
               f"Message-ID: <bench-{i}-{size}@supplier.example>\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}")
        out.append(msg.replace("\n", "\r\n").encode())
    return out


def baseline(messages: list[bytes], workdir: Path) -> float:
    db = sqlite3.connect(workdir / "baseline.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE letters (id INTEGER PRIMARY KEY, sender TEXT, recipient TEXT, subject TEXT,"
               " sent TEXT, message_id TEXT, body TEXT, sha256 TEXT)")
    start = time.perf_counter()
    for raw in messages:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(("plain", "html"))
        db.execute("BEGIN")
        db.execute("INSERT INTO letters (sender, recipient, subject, sent, message_id, body, sha256)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (str(msg["From"]), str(msg["To"]), str(msg["Subject"]), str(msg["Date"]),
                    str(msg["Message-ID"]), body.get_content() if body else "", hashlib.sha256(raw).hexdigest()))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return len(messages) / elapsed


def gateway(messages: list[bytes], workdir: Path) -> float:
    cfg_path = workdir / "gateway.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        [gateway]
        state_dir = "{workdir / 'state'}"
        [triage]
        department = "office"
        [[departments]]
        id = "office"
        name = "Office"
        owners = ["office@example.org"]
        head = "head@example.org"
        addresses = ["sales@example.org"]
    """))
    cfg = rulebook.load(cfg_path)
    spool = Spool(cfg.spool_dir, cfg.message_dir)
    registry = Registry.from_config(cfg)
    registry.upgrade()
    pipeline = Pipeline(cfg, spool, registry)
    batch = cfg.model.spool.batch_size
    start = time.perf_counter()
    for raw in messages:
        spool.enqueue(raw, {"intake": "bench", "channel": "email"})
    done = 0
    while items := spool.claim(batch):
        done += sum(o.result == "registered" for o in pipeline.process(items))
    elapsed = time.perf_counter() - start
    registry.close()
    assert done == len(messages), f"registered {done} of {len(messages)}"
    return len(messages) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="messages per size (default 1000)")
    args = parser.parse_args()
    print(f"{'size':>8} {'messages':>9} {'baseline msg/s':>15} {'gateway msg/s':>14} {'ratio':>6}")
    for size, label in ((4 * 1024, "4 KiB"), (100 * 1024, "100 KiB")):
        count = args.count if size < 50_000 else max(args.count // 4, 50)
        messages = make_messages(count, size)
        workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        try:
            base = baseline(messages, workdir)
            ours = gateway(messages, workdir)
        finally:
            shutil.rmtree(workdir)
        print(f"{label:>8} {count:>9} {base:>15.0f} {ours:>14.0f} {ours / base:>6.2f}")


if __name__ == "__main__":
    main()
