"""Sustained SMTP intake, end to end (SMTP -> spool -> registered), against a same-run baseline.

Both servers are driven by Postfix's smtp-source. The gateway runs in both of its
`[smtp] acknowledge` modes: "registered" answers 250 once the message is fsynced in
the spool and registered (SQLite); "spooled" once it is fsynced in the spool, the
registration following. For each, two figures: messages a second as smtp-source sees
them (until its last 250), and until the last message is in the register (the
registry polled from here), each divided by the baseline's rate.

Baseline: an aiosmtpd handler that only writes each message to its own file,
fsyncs it and answers 250. Rounds alternate baseline, registered, spooled; the
ratios printed last are medians over the rounds. Peak memory is the daemon's and
its helper processes' high-water marks, added up.

    .venv/bin/python bench/smtp_intake.py [--count 1000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import subprocess
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

from aiosmtpd.controller import Controller

from daemon import running_daemon, write_config  # noqa: E402  (bench/ is the script's folder, on sys.path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FsyncHandler:
    def __init__(self, directory: Path):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.count += 1
        path = self.directory / f"{self.count}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, envelope.original_content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return "250 OK"


def smtp_source(port: int, sessions: int, count: int, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                             "-f", "bench@partner.example", "-t", "liaison@example.org", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finished(source: subprocess.Popen[bytes]) -> None:
    _, err = source.communicate(timeout=1800)
    if source.returncode:
        raise RuntimeError(f"smtp-source failed: {err.decode(errors='replace')}")


def baseline(sessions: int, count: int, size: int, workdir: Path) -> float:
    """Messages a second (until the last 250)."""
    out = workdir / "baseline"
    out.mkdir(parents=True)
    port = free_port()
    controller = Controller(FsyncHandler(out), hostname="127.0.0.1", port=port,
                            server_kwargs={"data_size_limit": 50 * 2 ** 20})
    controller.start()
    try:
        start = time.perf_counter()
        finished(smtp_source(port, sessions, count, size))
        return count / (time.perf_counter() - start)
    finally:
        controller.stop()


def registered(registry: Path) -> int:
    try:
        with closing(sqlite3.connect(f"file:{registry}?mode=ro", uri=True, timeout=5)) as db:
            return int(db.execute("SELECT count(*) FROM letters").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


def peak_mib(pid: int) -> float:
    """The daemon's and its children's (the registrar helpers') peak resident memory, added up."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # a thread that ended meanwhile: its children belong to the others
    return sum(next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                    if line.startswith("VmHWM:")) for p in pids) / 1024


def gateway(mode: str, sessions: int, count: int, size: int, workdir: Path) -> tuple[float, float, float]:
    """(messages a second until the last 250, until the last registered, peak MiB)."""
    workdir.mkdir()
    port = free_port()
    config = write_config(workdir, f"""
        [smtp]
        listen = ["127.0.0.1:{port}"]
        max_connections_per_minute = 0
        acknowledge = "{mode}"
    """)
    registry = workdir / "state" / "registry.sqlite3"
    with running_daemon(config, workdir) as daemon:
        start = time.perf_counter()
        source = smtp_source(port, sessions, count, size)
        acked = None
        while True:
            if acked is None and source.poll() is not None:
                acked = time.perf_counter() - start
            if acked is not None and registered(registry) >= count:
                break
            time.sleep(0.01)
        done = time.perf_counter() - start
        finished(source)
        peak = peak_mib(daemon.pid)
    assert registered(registry) == count, "not every message was registered once"
    return count / acked, count / done, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="4 KiB messages per run (100 KiB: a quarter)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per case, alternating baseline and modes")
    args = parser.parse_args()
    print(f"{'size':>8} {'sessions':>8} {'messages':>8} {'baseline msg/s':>15} {'mode':>10} {'acked msg/s':>12} "
          f"{'ratio':>6} {'registered msg/s':>17} {'ratio':>6} {'peak MiB':>9}")
    summary = []
    for size, label in ((4096, "4 KiB"), (100 * 1024, "100 KiB")):
        count = args.count if size == 4096 else max(args.count // 4, 40)
        for sessions in (1, 8):
            ratios: dict[str, list[tuple[float, float]]] = {"registered": [], "spooled": []}
            bases, peaks = [], []
            for _ in range(args.rounds):
                workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
                try:
                    os.sync()  # no run pays for what the one before left dirty
                    base = baseline(sessions, count, size, workdir / "base")
                    bases.append(base)
                    for mode in ratios:
                        os.sync()
                        acked, done, peak = gateway(mode, sessions, count, size, workdir / mode)
                        peaks.append(peak)
                        ratios[mode].append((acked / base, done / base))
                        print(f"{label:>8} {sessions:>8} {count:>8} {base:>15.0f} {mode:>10} {acked:>12.0f} "
                              f"{acked / base:>6.2f} {done:>17.0f} {done / base:>6.2f} {peak:>9.0f}", flush=True)
                finally:
                    shutil.rmtree(workdir)
            summary.append(f"{label} x {sessions} (baseline {statistics.median(bases):.0f} msg/s, peak "
                           f"{max(peaks):.0f} MiB): " + "; ".join(
                               f"{mode} acked {statistics.median(a for a, _ in r):.2f} registered "
                               f"{statistics.median(d for _, d in r):.2f}" for mode, r in ratios.items()))
    print("median ratios:")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
