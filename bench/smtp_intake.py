"""Sustained SMTP intake, end to end (SMTP -> spool -> registered), against a same-run baseline.

Both servers are driven by Postfix's smtp-source. The gateway answers 250
only after the message is fsynced in the spool and registered (SQLite), so
when smtp-source finishes, every message is in the register.

Baseline: an aiosmtpd handler that only writes each message to its own file,
fsyncs it and answers 250.

    .venv/bin/python bench/smtp_intake.py [--count 1000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent

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


def smtp_source(port: int, sessions: int, count: int, size: int) -> float:
    start = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                    "-f", "bench@partner.example", "-t", "liaison@example.org", f"127.0.0.1:{port}"],
                   check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def baseline(sessions: int, count: int, size: int, workdir: Path) -> float:
    out = workdir / "baseline"
    out.mkdir()
    port = free_port()
    controller = Controller(FsyncHandler(out), hostname="127.0.0.1", port=port,
                            server_kwargs={"data_size_limit": 50 * 2 ** 20})
    controller.start()
    try:
        return count / smtp_source(port, sessions, count, size)
    finally:
        controller.stop()


def gateway(sessions: int, count: int, size: int, workdir: Path) -> tuple[float, float]:
    port = free_port()
    config = write_config(workdir, f"""
        [smtp]
        listen = ["127.0.0.1:{port}"]
        max_connections_per_minute = 0
    """)
    with running_daemon(config, workdir) as daemon:
        rate = count / smtp_source(port, sessions, count, size)
        # The daemon and its registrar helper together.
        pids = [daemon.pid] + [int(p) for task in Path(f"/proc/{daemon.pid}/task").iterdir()
                               for p in (task / "children").read_text().split()]
        peak_kib = sum(next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if line.startswith("VmHWM:")) for pid in pids)
        registered = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "letters", "list",
                                     "--json"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert registered.count('"number"') == count, "not every message was registered"
        return rate, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="4 KiB messages per run (100 KiB: a quarter)")
    parser.add_argument("--rounds", type=int, default=3, help="baseline and gateway runs per case, alternating")
    args = parser.parse_args()
    print(f"{'size':>8} {'sessions':>8} {'messages':>8} {'baseline msg/s':>15} {'gateway msg/s':>14} "
          f"{'ratio':>6} {'daemon peak MiB':>16}")
    medians = []
    for size, label in ((4096, "4 KiB"), (100 * 1024, "100 KiB")):
        count = args.count if size == 4096 else max(args.count // 4, 40)
        for sessions in (1, 8):
            ratios = []
            for _ in range(args.rounds):
                workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
                try:
                    os.sync()  # neither side pays for what the other left dirty
                    base = baseline(sessions, count, size, workdir)
                    os.sync()
                    ours, peak = gateway(sessions, count, size, workdir)
                finally:
                    shutil.rmtree(workdir)
                ratios.append(ours / base)
                print(f"{label:>8} {sessions:>8} {count:>8} {base:>15.0f} {ours:>14.0f} {ours / base:>6.2f} "
                      f"{peak:>16.0f}", flush=True)
            medians.append(f"{label} x {sessions}: {statistics.median(ratios):.2f}")
    print("median ratios: " + ", ".join(medians))


if __name__ == "__main__":
    main()
