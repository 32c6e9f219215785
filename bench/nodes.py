"""SMTP intake into one node against two nodes on the same PostgreSQL registry.

Each case registers the same number of 4 KiB messages (Postfix's smtp-source), on a fresh
database of one PostgreSQL cluster: once all into one node, once split in half over two
nodes (each with its own spool and state directory, sharing the message store) at the same
time. Ratio = two nodes' messages per second / one node's. Alongside: how busy the machine's
CPUs were during the run, and the CPU time PostgreSQL and the gateway processes took, which
say what limits intake here.

    .venv/bin/python bench/nodes.py [--count 600] [--sessions 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import PostgresServer  # noqa: E402
from daemon import running_daemon, write_config  # noqa: E402  (bench/ is the script's folder, on sys.path)
from smtp_intake import finished, free_port, smtp_source  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_busy() -> tuple[float, float]:
    """The machine's busy and total CPU seconds since boot (all CPUs)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def cpu_seconds(match: str) -> float:
    """CPU seconds used so far by every process whose command line contains `match`."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if match.encode() not in (proc / "cmdline").read_bytes():
                continue
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(stat[11]) + int(stat[12])) / TICK
    return total


def run(nodes: int, count: int, sessions: int, server: PostgresServer,
        workdir: Path) -> tuple[float, float, float, float]:
    """Messages per second, CPU utilisation, PostgreSQL and gateway CPU seconds per 1000 messages."""
    url = server.create_database()
    shared = workdir / "shared"
    ports = [free_port() for _ in range(nodes)]
    configs = []
    for n, port in enumerate(ports):
        nodedir = workdir / f"node{n}"
        nodedir.mkdir()
        configs.append(write_config(nodedir, f"""
            [registry]
            url = "{url}"
            [node]
            name = "bench{n}"
            [storage]
            messages_dir = "{shared / 'messages'}"
            archive_dir = "{shared / 'archive'}"
            [smtp]
            listen = ["127.0.0.1:{port}"]
            max_connections_per_minute = 0
            [web]
            enabled = false
            [metrics]
            enabled = false
        """))
    subprocess.run([sys.executable, "-m", "gateway", "--config", str(configs[0]), "db", "upgrade"],
                   check=True, capture_output=True, cwd=ROOT)
    with ExitStack() as stack:
        for n, config in enumerate(configs):
            stack.enter_context(running_daemon(config, workdir / f"node{n}"))
        os.sync()
        busy0, total0 = cpu_busy()
        pg0, gw0 = cpu_seconds("postgres"), cpu_seconds("gateway")
        start = time.perf_counter()
        with ThreadPoolExecutor(nodes) as pool:
            list(pool.map(lambda port: finished(smtp_source(port, max(1, sessions // nodes), count // nodes, 4096)),
                          ports))
        elapsed = time.perf_counter() - start
        busy1, total1 = cpu_busy()
        pg1, gw1 = cpu_seconds("postgres"), cpu_seconds("gateway")
        with psycopg.connect(url) as conn:
            registered = conn.execute("SELECT count(*) FROM letters").fetchone()
        assert registered == (count,), f"{registered} of {count} messages registered"
    per_k = 1000 / count
    return count / elapsed, (busy1 - busy0) / (total1 - total0), (pg1 - pg0) * per_k, (gw1 - gw0) * per_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=600, help="4 KiB messages per run")
    parser.add_argument("--sessions", type=int, default=8, help="SMTP sessions in all (split over the nodes)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = PostgresServer()
    server.start()
    print(f"{os.cpu_count()} CPU(s); {args.count} messages of 4 KiB, {args.sessions} SMTP session(s) in all")
    print(f"{'nodes':>5} {'msg/s':>8} {'CPU busy':>9} {'PG cpu-s/1k':>12} {'gateway cpu-s/1k':>17}")
    ratios = []
    try:
        for _ in range(args.rounds):
            rates = {}
            for nodes in (1, 2):
                workdir = Path(tempfile.mkdtemp(prefix="gw-bench-nodes-"))
                try:
                    rate, busy, pg, gw = run(nodes, args.count, args.sessions, server, workdir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                rates[nodes] = rate
                print(f"{nodes:>5} {rate:>8.0f} {busy:>8.0%} {pg:>12.1f} {gw:>17.1f}", flush=True)
            ratios.append(rates[2] / rates[1])
            print(f"ratio two nodes / one node: {ratios[-1]:.2f}", flush=True)
    finally:
        server.destroy()
    print(f"median ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
