"""First sync of a full mailbox over IMAP, end to end (fetched, spooled, registered), against a same-run baseline.

A real Dovecot (the test suite's fixture) holds N messages of 4 KiB in one
user's INBOX. Baseline: imapclient fetching them in batches of 500 with
BODY.PEEK[] and writing each to its own file. Gateway: the daemon with one
IMAP account (first_import = "all"; after = "keep", so that every round and
the baseline see the same mailbox; spool batches of 200), timed from READY
until the mailbox is synced (every message durable in the spool and recorded
in the ledger), and until every message is in the register (the spool
workers register in a helper process while the sync goes on).

Before any ratio, both sides run once unmeasured (the first fetches of a freshly
loaded mailbox run several times faster than later ones, while Dovecot builds
its cache) and the baseline is repeated until three rounds in a row agree
within --tolerance; every round's baseline is printed beside its ratio.

    .venv/bin/python bench/imap_first_sync.py [--count 10000] [--rounds 3] [--tolerance 0.15]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import running_daemon, write_config  # noqa: E402  (bench/ is the script's folder, on sys.path)

from dovecot_server import DovecotServer  # noqa: E402


def message(n: int, size: int = 4096) -> bytes:
    head = (f"From: Partner {n} <p{n}@partner.example>\r\nTo: liaison@example.org\r\n"
            f"Subject: Inquiry number {n}\r\nMessage-ID: <bench-{n}@partner.example>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = f"Letter {n}: we would like to discuss the contract for the next quarter.\r\n"
    return (head + line * ((size - len(head)) // len(line))).encode()


def baseline(server: DovecotServer, user: str, workdir: Path) -> float:
    out = workdir / "baseline"
    out.mkdir()
    start = time.perf_counter()
    with server.client(user, timeout=300) as imap:
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search(["ALL"])
        for i in range(0, len(uids), 500):
            for uid, data in imap.fetch(uids[i:i + 500], ["BODY.PEEK[]"]).items():
                (out / f"{uid}.eml").write_bytes(data[b"BODY[]"])
    return len(uids) / (time.perf_counter() - start)


def gateway(server: DovecotServer, user: str, count: int, workdir: Path) -> tuple[float, float]:
    """Messages per second until the mailbox is synced (every message durable in the
    spool and in the ledger), and until every one is registered."""
    state = workdir / "state"
    (workdir / "pw").write_text(server.password(user))
    config = write_config(workdir, f"""
        [smtp]
        enabled = false
        [spool]
        batch_size = 200
        [imap]
        fetch_batch = 500
        [[imap.accounts]]
        name = "bench"
        host = "127.0.0.1"
        port = {server.port}
        tls = "plain"
        username = "{user}"
        password_file = "{workdir / 'pw'}"
        idle = false
        poll_seconds = 3600
        after = "keep"
    """)
    with running_daemon(config, workdir) as daemon:
        start = time.perf_counter()
        db = sqlite3.connect(state / "registry.sqlite3", timeout=30)
        deadline = start + 1800
        synced = 0.0
        while db.execute("SELECT count(*) FROM letters").fetchone()[0] < count:
            if time.perf_counter() > deadline or daemon.poll() is not None:
                raise RuntimeError("the gateway did not register every message")
            if not synced and db.execute("SELECT count(*) FROM imap_ledger WHERE outcome = 'spooled'"
                                         ).fetchone()[0] >= count:
                synced = time.perf_counter() - start
            time.sleep(0.02)
        registered = time.perf_counter() - start
        db.close()
        return count / (synced or registered), count / registered


def stable_baseline(server: DovecotServer, user: str, *, tolerance: float, limit: int) -> list[float]:
    """Baseline rounds until the last three agree within `tolerance` of their median (at most `limit`).

    The first fetches of a freshly loaded mailbox run at several times the speed of later ones
    (Dovecot builds its index cache as clients fetch, and the page cache fills): a ratio against
    one of those would mean nothing."""
    rounds: list[float] = []
    while len(rounds) < limit:
        with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
            os.sync()
            rounds.append(baseline(server, user, Path(tmp)))
        print(f"  baseline warm-up {len(rounds)}: {rounds[-1]:.0f} msg/s", flush=True)
        if len(rounds) >= 3 and _agree(rounds[-3:], tolerance):
            return rounds
    raise SystemExit(f"the baseline did not settle within {limit} rounds: {[round(r) for r in rounds]}")


def _agree(values: list[float], tolerance: float) -> bool:
    middle = statistics.median(values)
    return all(abs(v - middle) <= tolerance * middle for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages of 4 KiB in the mailbox")
    parser.add_argument("--rounds", type=int, default=3, help="baseline and gateway runs, alternating")
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="how far baseline rounds may stray from their median to count as stable")
    args = parser.parse_args()
    ratios: list[tuple[float, float]] = []
    bases: list[float] = []
    with DovecotServer() as server:
        server.start()
        user = "bench"
        server.add_user(user, "bench-password")
        server.append_many(user, (message(n) for n in range(args.count)))
        # Warm up both sides once, unmeasured (the gateway's first fetch also settles Dovecot's
        # cache), then repeat the baseline until it is stable.
        with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
            gateway(server, user, args.count, Path(tmp))
        settled = statistics.median(stable_baseline(server, user, tolerance=args.tolerance, limit=12)[-3:])
        print(f"baseline settled at {settled:.0f} msg/s")
        print(f"{'round':>5} {'messages':>8} {'baseline msg/s':>15} {'synced msg/s':>13} {'ratio':>6} "
              f"{'registered msg/s':>17} {'ratio':>6}")
        for round_ in range(1, args.rounds + 1):
            with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
                workdir = Path(tmp)
                # The spool's sync flushes the whole filesystem: flush what loading the mailbox and
                # the baseline left dirty first, so that neither side pays for the other.
                os.sync()
                base = baseline(server, user, workdir)
                os.sync()
                synced, registered = gateway(server, user, args.count, workdir)
            bases.append(base)
            ratios.append((synced / base, registered / base))
            print(f"{round_:>5} {args.count:>8} {base:>15.0f} {synced:>13.0f} {synced / base:>6.2f} "
                  f"{registered:>17.0f} {registered / base:>6.2f}", flush=True)
    spread = (max(bases) - min(bases)) / statistics.median(bases)
    print(f"median ratio: synced {statistics.median(r[0] for r in ratios):.2f}, "
          f"registered {statistics.median(r[1] for r in ratios):.2f} "
          f"(baseline median {statistics.median(bases):.0f} msg/s, spread {spread:.0%} over the rounds)")


if __name__ == "__main__":
    main()
