"""The reminder pass reads only what it decides with: its memory does not grow with the size of
the open letters' bodies. A few thousand open letters, on SQLite and on PostgreSQL."""
from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import Gateway, PostgresServer, make_message
from gateway.config import load
from gateway.registry import Registry
from gateway.track import reminders

pytestmark = pytest.mark.timeout(300)

LETTERS = 3000
BODY_BYTES = 32 * 1024


def seeded(tmp: Path, registry_url: str) -> tuple[Gateway, Registry]:
    """One letter taken in through `gateway ingest`, then copied in SQL to LETTERS open letters."""
    gateway = Gateway(tmp, registry_url=registry_url)
    (tmp / "one.eml").write_bytes(make_message(1, subject="Contract"))
    gateway.run("ingest", str(tmp / "one.eml"))
    registry = Registry.from_config(load(gateway.config))
    with registry.write() as conn:
        names = [name for name in conn.execute(text("SELECT * FROM letters LIMIT 0")).keys() if name != "id"]
        fresh = {"number": "'L-' || n.i", "seq": "n.i + 100", "raw_sha256": "'copy-' || n.i"}
        conn.execute(text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
            f"INSERT INTO letters ({', '.join(names)}) "
            f"SELECT {', '.join(fresh.get(name, 'letters.' + name) for name in names)} "
            "FROM letters CROSS JOIN n WHERE letters.number = '2026-000001'"), {"count": LETTERS - 1})
    return gateway, registry


def set_bodies(registry: Registry, size: int) -> None:
    with registry.write() as conn:
        repeated = ("repeat('x', :size)" if registry.engine.dialect.name == "postgresql"
                    else "replace(hex(zeroblob(:half)), '00', 'xy')")
        conn.execute(text(f"UPDATE letters SET body_text = {repeated}"), {"size": size, "half": size // 2})


def peak_of_pass(gateway: Gateway, registry: Registry) -> tuple[int, int]:
    """Peak Python memory of one reminder pass (nothing sent: a dry run), and how many are due."""
    config = load(gateway.config)
    now = datetime.now(timezone.utc) + timedelta(days=60)  # every letter overdue
    tracemalloc.start()
    try:
        due = reminders.run(config, registry, now, dry_run=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, len(due)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        yield server.create_database()


def test_the_reminder_pass_does_not_hold_the_letters_bodies(tmp_path: Path, registry_url: str) -> None:
    gateway, registry = seeded(tmp_path, registry_url)
    try:
        set_bodies(registry, 64)
        peak_of_pass(gateway, registry)  # the first pass compiles its statements
        small, due = peak_of_pass(gateway, registry)
        assert due >= LETTERS  # an overdue reminder for each (and, after enough, escalations)
        set_bodies(registry, BODY_BYTES)
        large, due_again = peak_of_pass(gateway, registry)
        assert due_again == due
        grown = large - small
        # Holding the bodies would take LETTERS * BODY_BYTES = 96 MiB more.
        assert grown < 4 * 1024 * 1024, f"peak {small / 2**20:.1f} MiB -> {large / 2**20:.1f} MiB"
        assert large < 40 * 1024 * 1024, f"peak {large / 2**20:.1f} MiB for {LETTERS} letters"
    finally:
        registry.close()
