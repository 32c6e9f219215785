"""The registry: gap-free numbers under concurrency, exactly one record per item, an append-only log."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from conftest import ROOT

from gateway.registry import Event, NewLetter, Registry
from gateway.registry.numbers import NumberTemplate


def new_letter(n: int, *, body: bytes | None = None, when: datetime | None = None,
               keys: list[str] | None = None, message_id: str | None = None) -> NewLetter:
    raw = body if body is not None else f"letter {n}".encode()
    sha = hashlib.sha256(raw).hexdigest()
    return NewLetter(intake_keys=keys or [f"spool:test-{n}"], channel="email", intake="file",
                     received_at=when or datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc),
                     raw_sha256=sha, raw_size=len(raw), raw_path=f"messages/{sha[:2]}/{sha}.msg",
                     subject=f"Letter {n}", message_id=message_id)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    reg = Registry(url, timezone_name="Asia/Shanghai")
    reg.upgrade()
    yield reg
    reg.close()


def test_numbers_follow_the_template_per_series(registry: Registry) -> None:
    """Numbers count from 1 in each year's series, using the local year of the organisation."""
    # 2026-12-31 17:00 UTC is already 2027 in Shanghai.
    results = registry.register([
        new_letter(1), new_letter(2),
        new_letter(3, when=datetime(2026, 12, 31, 17, 0, tzinfo=timezone.utc)),
        new_letter(4),
    ])
    assert [r.number for r in results] == ["2026-000001", "2026-000002", "2027-000001", "2026-000003"]
    assert all(r.outcome == "registered" for r in results)


def test_number_template_validation() -> None:
    """Templates need exactly one {seq} and only known fields; the series leaves the counter out."""
    t = NumberTemplate("GW-{year}{month}-{seq:04d}")
    when = datetime(2026, 3, 1)
    assert t.render(when, "fax", 7) == "GW-202603-0007"
    assert t.series(when, "fax") == "GW-202603-"
    assert NumberTemplate("收文〔{year}〕{seq}号").render(when, "post", 15) == "收文〔2026〕15号"
    for bad, reason in [("{year}", "exactly once"), ("{seq}{seq}", "exactly once"),
                        ("{year}-{seq:s}", "integer format"), ("{year-{seq}", "unexpected '{'"),
                        ("{who}-{seq}", "unknown field {who}"),
                        # A width that would make every number 100 MB is refused before any is made.
                        ("{seq:099999999d}", "numbers of at most 64 characters"),
                        ("{channel}-{year}-{month}-{day}-" + "x" * 40 + "-{seq}", r"\('front-desk-9998-12-31-x"),
                        ("{year}/{seq}", "may not hold '/'"), ("{year} {seq}", "may not hold ' '"),
                        ("[{year}]{seq}", "may not hold '\\['")]:
        with pytest.raises(ValueError, match=reason):
            NumberTemplate(bad)


def test_same_bytes_twice_give_one_letter_and_an_event(registry: Registry) -> None:
    """A second arrival of identical bytes is recorded as an event on the first letter."""
    [first] = registry.register([new_letter(1, body=b"same bytes")])
    [second] = registry.register([new_letter(2, body=b"same bytes", keys=["spool:other"])])
    assert second.outcome == "duplicate" and second.number == first.number
    assert registry.count() == 1
    letter = registry.letter(first.number)
    assert [e.action for e in letter.events] == ["received", "registered", "duplicate-arrival"]
    assert letter.events[2].details["keys"] == ["spool:other"]


def test_same_bytes_twice_in_one_batch(registry: Registry) -> None:
    """Identical bytes arriving in the same batch: the first is registered, the second recorded on it."""
    results = registry.register([new_letter(1, body=b"twin"), new_letter(2),
                                 new_letter(3, body=b"twin", keys=["spool:twin-2"])])
    assert [r.outcome for r in results] == ["registered", "registered", "duplicate"]
    assert results[2].number == results[0].number == "2026-000001"
    assert results[1].number == "2026-000002"
    assert [e.action for e in registry.letter("2026-000001").events][-1] == "duplicate-arrival"


def test_every_letter_of_a_large_batch_gets_its_own_id_events_and_keys(registry: Registry) -> None:
    """Forty letters in one batch, over two series and with a twin: each result names the row of
    its own letter, and that letter's events and intake key are its own (ids are paired with
    letters by number, whatever order the database returns them in)."""
    letters = [new_letter(n, when=datetime(2026, 12, 31, 17 if n % 3 == 0 else 1, 0, tzinfo=timezone.utc))
               for n in range(1, 41)]
    letters.append(new_letter(99, body=b"letter 7", keys=["spool:twin-of-7"]))
    results = registry.register(letters)
    assert [r.outcome for r in results] == ["registered"] * 40 + ["duplicate"]
    assert len({r.letter_id for r in results[:40]}) == 40
    assert results[40].letter_id == results[6].letter_id
    for n, result in enumerate(results[:40], start=1):
        letter = registry.letter(result.number)
        assert (letter.id, letter.subject) == (result.letter_id, f"Letter {n}")
        assert result.number.startswith("2027-" if n % 3 == 0 else "2026-")
        assert {e.letter_id for e in letter.events} == {result.letter_id}
        assert registry.register([new_letter(n)])[0] == replace(result, outcome="known")
    assert [e.action for e in registry.letter(results[6].number).events][-1] == "duplicate-arrival"


def test_same_intake_key_again_is_known_without_a_new_event(registry: Registry) -> None:
    """Re-registering an item already committed (crash before release) adds nothing."""
    [first] = registry.register([new_letter(1)])
    [again] = registry.register([new_letter(1)])
    assert again.outcome == "known" and again.number == first.number
    assert len(registry.letter(first.number).events) == 2


def test_shared_or_missing_message_id_gives_separate_letters(registry: Registry) -> None:
    """Message-ID is a hint, not a key: different bytes are different letters."""
    results = registry.register([
        new_letter(1, message_id="same@example.org"), new_letter(2, message_id="same@example.org"),
        new_letter(3), new_letter(4),
    ])
    assert [r.outcome for r in results] == ["registered"] * 4
    assert len({r.number for r in results}) == 4


def test_rolled_back_registration_leaves_no_gap(registry: Registry) -> None:
    """A transaction that fails gives its number back: the next letter takes it."""
    [a] = registry.register([new_letter(1)])
    bad = new_letter(2)
    bad.received_at = datetime(2026, 11, 23, 10, 0)  # naive: refused inside the transaction
    with pytest.raises(Exception, match="naive datetime"):  # noqa: B017
        registry.register([new_letter(3), bad])
    [b] = registry.register([new_letter(4)])
    assert (a.number, b.number) == ("2026-000001", "2026-000002")


def test_events_are_append_only(registry: Registry) -> None:
    """The database refuses to change or delete an event."""
    [r] = registry.register([new_letter(1)])
    with registry.sessions.begin() as session:
        assert session.scalars(select(Event).where(Event.letter_id == r.letter_id)).first() is not None
    for statement in ("UPDATE events SET actor = 'mallory'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with registry.sessions.begin() as session:
                session.execute(text(statement))
    assert len(registry.letter(r.number).events) == 2


def test_filters(registry: Registry) -> None:
    """Listing filters by status, channel, department and a date range."""
    base = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
    letters = [new_letter(i, when=base + timedelta(days=i)) for i in range(5)]
    letters[1].department = "business"
    letters[2].channel = "fax"
    registry.register(letters)
    assert [letter.subject for letter in registry.letters(department="business")] == ["Letter 1"]
    assert [letter.subject for letter in registry.letters(channel="fax")] == ["Letter 2"]
    between = registry.letters(since=base + timedelta(days=1), until=base + timedelta(days=3))
    assert [letter.subject for letter in between] == ["Letter 1", "Letter 2"]
    assert len(registry.letters(status="registered")) == 5
    assert registry.letters(status="closed") == []


_WRITER = """
import hashlib, json, sys
from datetime import datetime, timezone
from gateway.registry import NewLetter, Registry
url, who, count, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reg = Registry(url)
out = []
for i in range(count):
    # Every 10th letter has the same bytes in both processes: exactly one may win.
    raw = f"shared {i}".encode() if i % 10 == 0 and i // 10 < shared else f"{who} {i}".encode()
    sha = hashlib.sha256(raw).hexdigest()
    new = NewLetter(intake_keys=[f"spool:{who}-{i}"], channel="email", intake="file",
                    received_at=datetime(2026, 5, 1, tzinfo=timezone.utc), raw_sha256=sha,
                    raw_size=len(raw), raw_path="x")
    [r] = reg.register([new])
    out.append([r.number, r.outcome, sha])
print(json.dumps(out))
"""


def _concurrent_writers(url: str, count: int, shared: int) -> None:
    setup = Registry(url)
    setup.upgrade()
    setup.close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, who, str(count), str(shared)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for who in ("a", "b")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results += json.loads(out)
    registered = [r for r in results if r[1] == "registered"]
    duplicates = [r for r in results if r[1] == "duplicate"]
    numbers = sorted(int(r[0].split("-")[1]) for r in registered)
    # No duplicate and no gap: exactly 1..N.
    assert numbers == list(range(1, 2 * count - shared + 1))
    assert len(duplicates) == shared
    by_sha = {r[2]: r[0] for r in registered}
    assert all(by_sha[d[2]] == d[0] for d in duplicates)
    reg = Registry(url)
    assert reg.count() == 2 * count - shared
    reg.close()


def test_two_processes_on_postgresql_never_duplicate_or_skip_a_number(pg_url: str) -> None:
    """Two processes registering 1,500 letters each into one PostgreSQL registry: numbers 1..N exactly."""
    _concurrent_writers(pg_url, 1500, 50)


def test_two_processes_on_sqlite_never_duplicate_or_skip_a_number(tmp_path: Path) -> None:
    """The same on the embedded SQLite registry."""
    _concurrent_writers(f"sqlite:///{tmp_path / 'r.sqlite3'}", 400, 20)


def test_schema_head_constant_matches_the_migrations(tmp_path: Path) -> None:
    """schema.HEAD is the newest Alembic revision, and a fresh database is upgraded to it."""
    from gateway.registry import schema

    assert schema.HEAD == schema.head_revision()
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    assert reg.upgrade() is True
    assert schema.current_revision(reg.engine) == schema.HEAD
    assert reg.upgrade() is False
    reg.close()


def test_a_packages_letters_are_found_through_an_index(tmp_path: Path) -> None:
    """Verifying, releasing and destroying a package look its letters up by package, not by reading
    every letter of every year."""
    from sqlalchemy import event

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    reg.upgrade()
    reg.register([new_letter(1)])
    statements: list[tuple[str, object]] = []
    event.listen(reg.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append((sql, params)))
    assert reg.archived_hashes(7) == {}
    assert reg.releasable(7) == []
    assert reg.record_destruction([7], approved_by="leader", actor="operator") == ([], [])
    by_package = [(sql, params) for sql, params in statements if "archive_package_id" in sql.split("WHERE", 1)[-1]]
    assert len(by_package) == 3, statements
    with reg.engine.connect() as conn:
        for sql, params in by_package:
            plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "INDEX ix_letters_archive_package" in plan, (sql, plan)
    reg.close()
