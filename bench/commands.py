"""Wall time of the commands that read the register, on 100,000 letters, beside a bare process
running the same SQL.

Ours: `gateway letters list --limit 50`, `gateway letters show NUMBER` and `gateway status`, each
a whole process as a person runs it (start, configuration, schema check, queries, printed table),
timed from start to exit, output to a pipe; twice: as they run by default, handed to the warm
command server (gateway/launcher.py), and in-process (GATEWAY_COMMAND_SERVER=off), which is what
every command costs without the server. The first command, which starts the server and runs
in-process, is timed once.

Baseline: `python -c "import sqlite3; ..."`, the same interpreter starting and running the SQL the
command needs (the page of letters; the letter, its attachments and events; the counts) on the
same database: what no command can beat.

Rounds alternate ours and the baseline; medians are printed with the ratio (baseline time /
ours: 1.0 would be as fast as the bare query) and PASS/FAIL against the 0.3 s target. The CPU
column counts this benchmark's own children only: for the server's commands, the client alone. A
reference line shows what importing the libraries every command needs (click, pydantic,
SQLAlchemy's ORM) costs on this machine, with no query at all.

Bytecode is cached in a temporary directory (PYTHONPYCACHEPREFIX), as an installed gateway's
is; one untimed run of each command comes first. The letters are seeded as bench/web_pages.py
seeds them (bulk INSERTs).

    .venv/bin/python bench/commands.py [--letters 100000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from web_pages import config_text, seed  # noqa: E402

from gateway.config import load  # noqa: E402
from gateway.registry import Registry  # noqa: E402

TARGET = 0.3  # seconds, the whole process

BARE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
for query in sys.argv[2:]:
    conn.execute(query).fetchall()
"""


CPU: dict[tuple[str, ...], list[float]] = {}  # CPU seconds (user + system) by (server switch, *argv)


def wall(argv: list[str], env: dict[str, str]) -> float:
    """The process's wall time; its CPU time is kept in CPU (less swayed by other work on the machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # `gateway status` says by its exit status how things stand: 2, no daemon runs here.
    if done.returncode != 0 and not (argv[-1] == "status" and done.returncode in (1, 2)):
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    CPU.setdefault((env.get("GATEWAY_COMMAND_SERVER", ""), *argv), []).append(cpu)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bench-commands-") as tmp:
        workdir = Path(tmp)
        database = workdir / "registry.sqlite3"
        config_path = workdir / "gateway.toml"
        config_path.write_text(config_text(workdir / "state", f"sqlite:///{database}"))
        registry = Registry.from_config(load(str(config_path)))
        registry.upgrade()
        start = time.perf_counter()
        seed(registry, args.letters)
        with registry.engine.connect() as conn:
            letter_id, number = conn.execute(text("SELECT id, number FROM letters ORDER BY id LIMIT 1 OFFSET :n"),
                                             {"n": args.letters // 2}).one()
        registry.close()
        print(f"{args.letters} letters seeded in {time.perf_counter() - start:.0f} s; SQLite, {os.cpu_count()} cores")

        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        # The server's socket in this run's directory: a fresh server, gone with the directory.
        env.pop("XDG_RUNTIME_DIR", None)
        env["TMPDIR"] = str(workdir)
        in_process = {**env, "GATEWAY_COMMAND_SERVER": "off"}
        gateway = [sys.executable, "-m", "gateway", "--config", str(config_path)]
        bare = [sys.executable, "-c", BARE, str(database)]
        commands = [
            ("letters list --limit 50", ["letters", "list", "--limit", "50"],
             bare + ["SELECT * FROM letters ORDER BY received_at, id LIMIT 50"]),
            (f"letters show {number}", ["letters", "show", number],
             bare + [f"SELECT * FROM letters WHERE number = '{number}'",
                     f"SELECT * FROM attachments WHERE letter_id = {letter_id}",
                     f"SELECT * FROM events WHERE letter_id = {letter_id} ORDER BY at, id",
                     f"SELECT * FROM outbox WHERE letter_id = {letter_id}"]),
            ("status", ["status"],
             bare + ["SELECT count(*) FROM letters", "SELECT status, count(*) FROM outbox GROUP BY status",
                     "SELECT * FROM imap_folders", "SELECT * FROM nodes",
                     "SELECT count(*) FROM archive_packages WHERE status = 'corrupt'",
                     "SELECT count(*) FROM archive_packages WHERE status = 'written' AND created_at < '2026-01-01'"]),
        ]
        cases = [(f"{label}, {mode}", gateway + words, baseline, mode_env)
                 for mode, mode_env in (("server", env), ("in-process", in_process))
                 for label, words, baseline in commands]
        floor = [sys.executable, "-c", "import click, pydantic, sqlalchemy.orm"]
        for _, ours, baseline, _ in cases[len(commands):]:  # untimed: bytecode compiled, files in the page cache
            wall(ours, in_process)
            wall(baseline, env)
        first = wall(cases[0][1], env)  # starts the server, runs in-process
        for _ in range(100):  # until the server has loaded and listens
            if list((workdir / f"gateway-commands-{os.getuid()}").glob("*.sock")):
                break
            time.sleep(0.1)
        wall(cases[0][1], env)
        wall(floor, env)
        CPU.clear()
        times: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label, *_ in cases}
        floors: list[float] = []
        for _ in range(args.rounds):
            for label, ours, baseline, mode_env in cases:
                times[label][0].append(wall(ours, mode_env))
                times[label][1].append(wall(baseline, env))
            floors.append(wall(floor, env))

    print(f"\nmedians of {args.rounds} alternating rounds, wall time of the whole process")
    print(f"{'command':<42} {'gateway':>9} {'bare SQL':>9} {'ratio':>6}  target {TARGET} s   "
          "CPU: gateway, bare SQL")
    for (label, ours, baseline, mode_env), (ours_times, bare_times) in zip(cases, times.values(), strict=True):
        ours_s, bare_s = statistics.median(ours_times), statistics.median(bare_times)
        verdict = "PASS" if ours_s < TARGET else "FAIL"
        print(f"{label:<42} {ours_s:>8.3f}s {bare_s:>8.3f}s {bare_s / ours_s:>6.2f}  {verdict}        "
              f"{statistics.median(CPU[(mode_env.get('GATEWAY_COMMAND_SERVER', ''), *ours)]):.3f}s, "
              f"{statistics.median(CPU[('', *baseline)]):.3f}s")
    print(f"the first command, which starts the server and runs in-process: {first:.3f}s")
    print(f"reference, import click, pydantic, sqlalchemy.orm: {statistics.median(floors):.3f}s wall, "
          f"{statistics.median(CPU[('', *floor)]):.3f}s CPU")


if __name__ == "__main__":
    main()
