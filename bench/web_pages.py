"""Server time of the web register's pages with 100,000 letters, beside a bare SQL query for the same rows.

Ours: HTTP requests to the web register (uvicorn on 127.0.0.1, signed in) for a department
member's queue (the department's letters, newest first, 50 a page, with the count), the
dashboard (for that member, and for the registry office who sees everything) and a Chinese
search (合同, found inside sentences). Each request runs the access checks, the queries through
the registry and the template; it is timed at the client on loopback.

Baseline: one bare SQL query (or two: a page and its count) for the same rows on the same
database in the same run, no access rules, no ORM, no template.

The letters are seeded with bulk INSERTs (letters, their events and the search index). SQLite
always; PostgreSQL too when its server binaries (initdb) are installed.

    .venv/bin/python bench/web_pages.py [--letters 100000] [--rounds 30]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import random
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from gateway.registry import Registry  # noqa: E402
from gateway.registry.models import Event, Letter  # noqa: E402
from gateway.registry.search import content_terms, entry_terms  # noqa: E402
from gateway.services.people import People  # noqa: E402
from gateway.stages import rulebook  # noqa: E402
from gateway.web.app import create_app  # noqa: E402
from gateway.web.server import WebServer  # noqa: E402

DEPARTMENTS = [f"d{i:02d}" for i in range(10)]
PASSWORD = "bench horse battery staple"
SUBJECTS = ["关于供货合同的续签", "会议通知", "年度预算草案", "人员招聘申请", "客户投诉：交货延迟", "报价单",
            "发票核对", "培训安排", "Request for quotation", "Invoice", "合作意向书", "设备维修申请"]
BODIES = ["请在本周五前确认合同条款。", "附件为会议议程，请按时参加。", "请审阅附件中的预算草案并提出意见。",
          "Please find the revised terms attached.", "我们对交货延迟表示不满，请尽快答复。"]
STATES = ["closed"] * 60 + ["archived"] * 10 + ["routed"] * 12 + ["acknowledged"] * 8 + ["in-progress"] * 6 + \
    ["answered"] * 2 + ["needs-triage"] * 2
OPEN = ("registered", "needs-triage", "routed", "acknowledged", "in-progress", "answered")


def config_text(state: Path, url: str) -> str:
    departments = "".join(textwrap.dedent(f"""
        [[departments]]
        id = "{d}"
        name = "Department {d}"
        owners = ["{d}.desk@example.org"]
        head = "{d}.head@example.org"
        addresses = ["{d}@example.org"]
        """) for d in DEPARTMENTS)
    return textwrap.dedent(f"""
        [gateway]
        state_dir = "{state}"
        timezone = "Asia/Shanghai"
        domains = ["example.org"]
        [registry]
        url = "{url}"
        [triage]
        department = "d00"
        [web]
        language = "zh"
        """) + departments


def seed(registry: Registry, count: int) -> None:
    """`count` letters over the past year, their events and search terms, in bulk."""
    rnd = random.Random(1)
    now = datetime.now(timezone.utc)
    batch = 5000
    for first in range(1, count + 1, batch):
        letters: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        terms = []
        for i in range(first, min(first + batch, count + 1)):
            received = now - timedelta(minutes=rnd.randrange(365 * 24 * 60))
            status = rnd.choice(STATES)
            department = None if status == "needs-triage" else rnd.choice(DEPARTMENTS)
            number = f"{received.year}-{i:06d}"
            subject = f"{rnd.choice(SUBJECTS)} {i}"
            body = rnd.choice(BODIES)
            sender = f"partner{i % 5000}@supplier.example"
            letters.append({
                "id": i, "number": number, "series": str(received.year), "seq": i,
                "channel": "fax" if i % 10 == 0 else "email", "intake": "smtp", "status": status,
                "sender_name": f"Partner {i % 5000}", "sender_address": sender, "recipients": {},
                "recipient": f"{department or 'nobody'}@example.org", "department": department, "subject": subject,
                "received_at": received, "summary": body[:100], "body_text": body,
                "category": "external.business", "urgency": "regular", "confidentiality": "normal",
                "deadline": received + timedelta(days=7), "tags": [], "envelope": {}, "defects": [], "flags": [],
                "trust": {}, "raw_sha256": hashlib.sha256(number.encode()).hexdigest(), "raw_size": 1000,
                "raw_path": f"bench/{i}.eml", "created_at": received, "updated_at": received,
                "archive_number": f"A-{i}" if status == "archived" else None})
            events.append({"letter_id": i, "at": received, "actor": "gateway", "action": "registered",
                           "from_department": None, "to_department": None, "details": {}})
            if department:
                events.append({"letter_id": i, "at": received, "actor": "gateway", "action": "routed",
                               "from_department": None, "to_department": department, "details": {}})
            if status in ("closed", "archived"):
                events.append({"letter_id": i, "at": received + timedelta(days=rnd.uniform(0.5, 9)),
                               "actor": "bench", "action": "closed", "from_department": None,
                               "to_department": None, "details": {}})
            terms.append((i, entry_terms(number=number, sender_name=f"Partner {i % 5000}", sender_address=sender),
                          content_terms(subject=subject, body_text=body)))
        with registry.write() as conn:
            conn.execute(insert(Letter), letters)
            conn.execute(insert(Event), events)
        registry.index_letters(terms)


def timed(call: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds, after a warm-up."""
    for _ in range(3):
        call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def sign_in(url: str, login: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=120)
    form = client.get("/signin").text
    token = re.search(r'name="csrf" value="([^"]*)"', form)
    assert token, "no sign-in form"
    done = client.post("/signin", data={"login": login, "password": PASSWORD, "csrf": token.group(1)})
    assert done.status_code == 303, done.text[:300]
    return client


def page(client: httpx.Client, path: str) -> Callable[[], Any]:
    def call() -> None:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    return call


def bare(registry: Registry, *queries: str) -> Callable[[], Any]:
    def call() -> None:
        with registry.engine.connect() as conn:
            for query in queries:
                conn.execute(text(query)).all()
    return call


def run(label: str, url: str, workdir: Path, count: int, rounds: int) -> None:
    config_path = workdir / "gateway.toml"
    config_path.write_text(config_text(workdir / "state", url))
    config = rulebook.load(str(config_path), with_rules=False)
    registry = Registry.from_config(config)
    registry.upgrade()
    start = time.perf_counter()
    seed(registry, count)
    if registry.engine.dialect.name == "postgresql":
        # As autovacuum would soon after a bulk load: without statistics the planner guesses.
        with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    print(f"\n{label}: {count} letters seeded in {time.perf_counter() - start:.0f} s")
    people = People(config, registry)
    people.add("mia", name="Mia", emails=("mia@example.org",), departments=("d03",), roles=("member",),
               password=PASSWORD, actor="bench")
    people.add("rex", name="Rex", emails=("rex@example.org",), roles=("registry",), password=PASSWORD, actor="bench")
    server = WebServer(create_app(config, registry=registry), "127.0.0.1:0")
    server.start()
    postgres = registry.engine.dialect.name == "postgresql"
    open_states = ", ".join(f"'{s}'" for s in OPEN)
    search_bare = (
        ["SELECT letter_id FROM letter_search WHERE tsv @@ to_tsquery('simple', '''合同''') "
         "ORDER BY ts_rank_cd(tsv, to_tsquery('simple', '''合同''')) DESC LIMIT 50",
         "SELECT count(*) FROM letter_search WHERE tsv @@ to_tsquery('simple', '''合同''')"] if postgres else
        ["SELECT rowid FROM letter_search WHERE letter_search MATCH '\"合同\"' ORDER BY bm25(letter_search) LIMIT 50",
         "SELECT count(*) FROM letter_search WHERE letter_search MATCH '\"合同\"'"])
    mia, rex = sign_in(server.url, "mia"), sign_in(server.url, "rex")
    cases = [
        ("queue: a department, 50 a page", page(mia, "/letters?queue=departments"),
         bare(registry, "SELECT * FROM letters WHERE department = 'd03' ORDER BY received_at DESC LIMIT 50",
              "SELECT count(*) FROM letters WHERE department = 'd03'")),
        ("dashboard: a member", page(mia, "/dashboard"),
         bare(registry, f"SELECT department, status, count(*) FROM letters WHERE department = 'd03' "
                        f"AND status IN ({open_states}) GROUP BY department, status")),
        ("dashboard: registry office", page(rex, "/dashboard"),
         bare(registry, f"SELECT department, status, count(*) FROM letters WHERE status IN ({open_states}) "
                        "GROUP BY department, status")),
        ("search 合同: registry office", page(rex, "/search?q=合同"), bare(registry, *search_bare)),
    ]
    print(f"{'page':<32} {'ours p50':>9} {'p95':>8} {'bare p50':>9} {'p95':>8} {'ratio p50':>10}")
    try:
        for name, ours, baseline in cases:
            base50, base95 = timed(baseline, rounds)
            try:
                our50, our95 = timed(ours, rounds)
            except AssertionError as exc:
                print(f"{name:<32} not served: {exc}")
                continue
            print(f"{name:<32} {our50:>7.1f}ms {our95:>6.1f}ms {base50:>7.1f}ms {base95:>6.1f}ms "
                  f"{our50 / base50:>9.1f}×")
    finally:
        mia.close()
        rex.close()
        server.stop()
        registry.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-web-"))
    try:
        (workdir / "sqlite").mkdir()
        run("SQLite", "", workdir / "sqlite", args.letters, args.rounds)
        if glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from conftest import PostgresServer

            server = PostgresServer()
            try:
                server.start()
                (workdir / "postgres").mkdir()
                run("PostgreSQL", server.create_database().replace("postgresql://", "postgresql+psycopg://"),
                    workdir / "postgres", args.letters, args.rounds)
            finally:
                server.destroy()
        else:
            print("\nPostgreSQL: not installed (no initdb); skipped")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
