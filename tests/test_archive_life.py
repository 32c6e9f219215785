"""An archived letter's life after its month was packed: a letter packed while still open and
ended later, a package altered after it was written, destruction, and borrowing what is gone."""
from __future__ import annotations

import csv
import hashlib
import io
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zstandard
from alembic import command
from sqlalchemy import update
from smtp_sink import SmtpSink
from web_support import PEOPLE, Person, Site

from gateway.archive.packer import ArchiveError, Archiver, circulation_path
from gateway.registry import schema
from gateway.registry.models import ArchivePackage, Letter, Reply
from gateway.registry.replies import ReplyRecords
from gateway.services.access import Refused
from gateway.services.borrowing import Borrowings
from gateway.services.circulation import Circulations
from gateway.services.people import Principal
from gateway.services.replies import Replies

OPERATOR = Principal.operator("test")


@pytest.fixture
def packed(tmp_path: Path) -> Iterator[tuple[Site, Archiver]]:
    """March packed with four letters closed and the rest (an inquiry among them) still open."""
    site = Site(tmp_path)
    site.add_people()
    site.add_letters()
    for name in ("business", "secret", "office", "urgent"):
        site.access.act(OPERATOR, site.letters[name], "close", text="done")
    sql(site, "UPDATE letters SET received_at = '2026-03-10 02:00:00.000000'")
    archiver = Archiver(site.config, site.registry)
    archiver.run("2026-03")
    assert all(checked.ok for checked in archiver.verify())
    yield site, archiver
    site.close()


def sql(site: Site, statement: str, *args: object) -> None:
    with sqlite3.connect(site.gateway.state / "registry.sqlite3") as db:
        db.execute(statement, args)


def test_a_letter_packed_while_open_is_archived_when_it_ends(packed: tuple[Site, Archiver]) -> None:
    """Ended after its month was packed, it is archived as those ended before were: its content is
    read by borrowing from then on, not by anyone who could read it while it was being worked on."""
    site, _ = packed
    number = site.letters["inquiry"]
    sam = site.people.principal("sam")
    open_letter = site.registry.letter(number)
    assert open_letter is not None and open_letter.archive_number and open_letter.status == "routed"
    assert site.access.content_allowed(sam, open_letter)  # still his department's work
    site.access.act(OPERATOR, number, "close", text="answered at last")
    ended = site.registry.letter(number)
    assert ended is not None and ended.status == "archived"
    actions = [e.action for e in ended.events]
    assert actions[-1] == "archived" and "closed" in actions
    assert ended.events[-1].details == {"archive_number": ended.archive_number, "packed": "before it ended"}
    assert not site.access.content_allowed(sam, ended)
    assert Borrowings(site.config, site.registry).request(sam, number, reason="a follow-up", days=2)


def test_an_altered_manifest_is_found_and_gives_no_letter_for_another(packed: tuple[Site, Archiver]) -> None:
    """Two letters' numbers swapped in a manifest, then a row copied over another: verify names
    each, and reading a letter never hands over another letter's original."""
    site, archiver = packed
    business, secret = site.letters["business"], site.letters["secret"]
    letter = site.registry.letter(business)
    assert letter is not None
    package = site.registry.archive_package(letter.archive_package_id or 0)
    assert package is not None
    manifest = site.config.archive_dir / package.manifest
    original = manifest.read_text()
    rows = list(csv.reader(io.StringIO(original)))
    column = rows[0].index("letter_number")
    numbers = [row[column] for row in rows[1:]]
    first, second = numbers.index(business) + 1, numbers.index(secret) + 1
    rows[first][column], rows[second][column] = rows[second][column], rows[first][column]
    manifest.write_text(written(rows))
    [checked] = [c for c in archiver.verify() if c.package.id == package.id]
    assert not checked.ok
    assert any(f"({secret}): the register gives archive number" in problem for problem in checked.problems)
    with pytest.raises(ArchiveError, match="not the one registered"):
        archiver.read(letter)
    rows = list(csv.reader(io.StringIO(original)))
    rows[first] = list(rows[second])  # one letter's row twice, the other's gone
    manifest.write_text(written(rows))
    [checked] = [c for c in archiver.verify() if c.package.id == package.id]
    assert any("listed 2 times in the manifest" in problem for problem in checked.problems)
    assert any(f"({business}): in the register, not in the manifest" in problem for problem in checked.problems)


def written(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def test_a_package_with_a_letter_still_worked_on_is_not_destroyed(packed: tuple[Site, Archiver]) -> None:
    site, archiver = packed
    triage = site.registry.letter(site.letters["triage"])
    assert triage is not None and triage.status == "needs-triage"
    sql(site, "UPDATE letters SET received_at = '2010-03-10 02:00:00.000000' WHERE archive_package_id = ?",
        triage.archive_package_id)
    destroyed, kept = archiver.purge(approved_by="Director Wang", actor="test", now=datetime.now(timezone.utc))
    package = site.registry.archive_package(triage.archive_package_id or 0)
    assert package is not None and package.path not in destroyed
    assert f"{package.path}: 1 letter(s) still being worked on ({triage.number})" in kept
    assert (site.config.state_dir / triage.raw_path).exists()


def test_a_destroyed_letter_is_not_lent_and_its_page_still_opens(packed: tuple[Site, Archiver]) -> None:
    site, archiver = packed
    number = site.letters["business"]
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "archived"
    books = Borrowings(site.config, site.registry)
    waiting = books.request(site.people.principal("rita"), number, reason="an audit", days=2)
    sql(site, "UPDATE letters SET received_at = '2010-03-10 02:00:00.000000' WHERE archive_package_id = ?",
        letter.archive_package_id)
    destroyed, _ = archiver.purge(approved_by="Director Wang", actor="test", now=datetime.now(timezone.utc))
    assert destroyed
    with pytest.raises(Refused, match="destroyed with its archive package"):
        books.request(site.people.principal("sam"), number, reason="curious", days=2)
    with pytest.raises(Refused, match="destroyed with its archive package"):
        books.decide(OPERATOR, waiting, grant=True)
    client = site.sign_in("rita")
    assert client.get(f"/letters/{number}").status_code == 200
    assert site.access.formatted(OPERATOR, number) is None
    assert site.access.original(OPERATOR, number, address="") is None


def test_the_upgrade_archives_letters_packed_open_and_ended_before_it(packed: tuple[Site, Archiver]) -> None:
    """A registry of the release before: a letter packed open and closed since stayed closed."""
    site, _ = packed
    number = site.letters["inquiry"]
    alembic = schema._alembic_config()
    with site.registry.engine.begin() as conn:  # the schema of that release, later revisions undone
        alembic.attributes["connection"] = conn
        command.downgrade(alembic, "0019")
    sql(site, "UPDATE letters SET status = 'closed' WHERE number = ?", number)  # as that release left it
    assert schema.upgrade(site.registry.engine)
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "archived"
    assert letter.events[-1].action == "archived" and letter.events[-1].actor == "gateway"


def test_an_archived_letters_page_shows_no_empty_steps(packed: tuple[Site, Archiver]) -> None:
    """A member has no step on an archived letter: the page shows no Steps card at all rather
    than an empty one; the registry office, who may put it under legal hold, has the card."""
    site, _ = packed
    number = site.letters["business"]
    assert 'class="card actions"' not in site.sign_in("sam").get(f"/letters/{number}").text
    assert 'class="card actions"' in site.sign_in("rita").get(f"/letters/{number}").text


REPLIES = '[outbound]\nrelay = "{relay}"\nfrom_address = "gateway@example.org"\nfrom_name = "Example Org"\n'


@pytest.fixture(params=["sqlite", "postgresql"])
def answered(tmp_path: Path, sink: SmtpSink, request: pytest.FixtureRequest) -> Iterator[tuple[Site, Archiver]]:
    """March packed with its letters still open: the office letter with a reply sent before, the
    business letter in a circulation that leo has still to sign."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    site = Site(tmp_path, extra=REPLIES.format(relay=sink.address), registry_url=url)
    site.add_people((*PEOPLE, Person("olga", emails=("office.head@example.org",))))
    site.add_letters()
    reply(site, site.letters["office"], "Thank you, see you next week.")
    rita = site.people.principal("rita")
    assert rita is not None
    Circulations(site.config, site.registry).start(rita, site.letters["business"], ["leo"])
    with site.registry.write() as conn:
        conn.execute(update(Letter).values(received_at=datetime(2026, 3, 10, 2, tzinfo=timezone.utc)))
    archiver = Archiver(site.config, site.registry)
    archiver.run("2026-03")
    assert all(checked.ok for checked in archiver.verify())
    yield site, archiver
    site.close()


def reply(site: Site, number: str, text: str) -> None:
    """A reply drafted by gina, approved by olga (the office's head), and sent."""
    replies = Replies(site.config, site.registry)
    gina, olga = site.people.principal("gina"), site.people.principal("olga")
    assert gina is not None and olga is not None
    replies.draft(gina, number, text=text)
    replies.submit(gina, number)
    assert replies.approve(olga, number) == "sent"


def answered_late(site: Site) -> None:
    """After March was packed: a reply to the urgent letter, and leo signs the business letter."""
    reply(site, site.letters["urgent"], "签署完毕，谢谢。")
    leo = site.people.principal("leo")
    assert leo is not None
    assert Circulations(site.config, site.registry).sign(leo, site.letters["business"], "Go ahead.") is None


def late_parts(site: Site) -> list[ArchivePackage]:
    return [p for p in site.registry.archive_packages("2026-03") if p.kind == "late"]


def held(site: Site, table: str) -> list[tuple[int, int | None]]:
    with site.registry.read() as conn:
        return [(row[0], row[1]) for row in conn.exec_driver_sql(f"SELECT id, archive_package_id FROM {table} "
                                                                 "ORDER BY id")]


def test_a_reply_sent_and_a_circulation_finished_after_packing_go_into_a_part_of_their_own(
        answered: tuple[Site, Archiver]) -> None:
    site, archiver = answered
    office, urgent, business = (site.registry.letter(site.letters[name]) for name in ("office", "urgent", "business"))
    assert office is not None and urgent is not None and business is not None
    assert urgent.archive_number and business.archive_number
    files = sorted(f for f in (site.config.archive_dir / "2026").rglob("*") if f.is_file())
    before = {f: f.read_bytes() for f in files}
    [(first, first_package)] = held(site, "replies")
    [(circulation, unheld)] = held(site, "circulations")
    assert first_package == office.archive_package_id and unheld is None  # still running when packed
    assert archiver.run("2026-03") == [] and archiver.months_behind("2026-05") == []  # nothing came meanwhile
    answered_late(site)
    assert archiver.months_behind("2026-05") == ["2026-03"]  # the daemon's run of April packs them first

    written = archiver.run("2026-03")
    assert urgent.category == business.category  # one category: one part holds both
    assert [(w.letters, w.items) for w in written] == [(0, 2)]
    [part] = late_parts(site)
    assert (part.part, part.letters) == (2, 0) and part.path.endswith("/part-002.mbox.zst")
    # Packages already written are not rewritten.
    assert {f: f.read_bytes() for f in files} == before
    # Each letter's history says where its later items went.
    for name, counts in (("urgent", (1, 0)), ("business", (0, 1)), ("office", None)):
        letter = site.registry.letter(site.letters[name])
        assert letter is not None
        events = [e.details for e in letter.events if e.action == "archived-late"]
        assert events == ([{"package": part.path, "replies": counts[0], "circulations": counts[1]}] if counts else [])
    second = held(site, "replies")[1][0]
    assert held(site, "replies") == [(first, first_package), (second, part.id)]
    assert held(site, "circulations") == [(circulation, part.id)]

    reply_row, circulation_row = manifest(site, part)
    # The reply: a frame of its own, its manifest row naming its letter.
    assert (reply_row["archive_number"], reply_row["letter_number"], reply_row["item"]) == (
        urgent.archive_number, urgent.number, f"reply {second}")
    data = (site.config.archive_dir / part.path).read_bytes()
    at, length = int(reply_row["frame_offset"]), int(reply_row["frame_length"])
    assert at + length == len(data)
    sent = ReplyRecords(site.registry).message(second)
    assert sent and zstandard.ZstdDecompressor().decompress(data[at:]).split(b"\n", 1)[1].startswith(sent)
    assert hashlib.sha256(sent).hexdigest() == reply_row["sha256"]
    # The circulation: its record beside the manifest, which names it and its letter.
    assert (circulation_row["archive_number"], circulation_row["letter_number"], circulation_row["item"],
            circulation_row["file"]) == (business.archive_number, business.number, f"circulation {circulation}",
                                         "circulation-part-002.csv")
    record = circulation_path(site.config.archive_dir / part.manifest)
    assert hashlib.sha256(record.read_bytes()).hexdigest() == circulation_row["sha256"]
    [signed] = list(csv.DictReader(io.StringIO(record.read_text())))
    assert (signed["archive_number"], signed["reader"], signed["signed_by"], signed["instruction"]) == (
        business.archive_number, "person:leo", "leo", "Go ahead.")

    checked = archiver.verify("2026-03")
    assert all(c.ok for c in checked) and [c.items for c in checked if c.package.kind == "late"] == [2]
    assert archiver.run("2026-03") == [] and archiver.months_behind("2026-05") == []  # each once
    listed = site.gateway.run("archive", "verify", "--month", "2026-03").stdout
    assert f"{part.path}: verified (2 reply(ies) or circulation(s) after their letter was packed)" in listed
    # Kept and destroyed with its letters: both still being worked on.
    due, kept = archiver.purge(approved_by="leo", actor="test", now=datetime(2100, 1, 1, tzinfo=timezone.utc),
                               dry_run=True)
    assert part.path not in due
    assert f"{part.path}: 2 letter(s) still being worked on ({business.number}, {urgent.number})" in kept, kept

    # A reply altered in its part, a circulation record altered, or a register that gives the reply
    # to another letter: each is found.
    path = site.config.archive_dir / part.path
    path.write_bytes(data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:])
    record_text = record.read_bytes()
    record.write_bytes(record_text.replace(b"Go ahead.", b"Go ahead!"))
    [bad] = [c for c in archiver.verify("2026-03") if c.package.kind == "late"]
    assert bad.problems[0] == "SHA-256 differs from the one recorded when it was written"
    assert bad.problems[1].startswith(f"reply {second} ({urgent.number}): "), bad.problems
    assert bad.problems[2:] == [f"circulation {circulation} ({business.number}): circulation-part-002.csv: content "
                                "differs from the manifest"]
    path.write_bytes(data)
    record.write_bytes(record_text)
    with site.registry.write() as conn:
        conn.execute(update(Reply).where(Reply.id == second).values(letter_id=business.id))
    [bad] = [c for c in archiver.verify("2026-03") if c.package.kind == "late"]
    assert bad.problems == [f"reply {second} ({urgent.number}): the register gives it to {business.number}"]


def test_a_late_part_of_a_circulation_alone_opens_with_ordinary_tools(answered: tuple[Site, Archiver]) -> None:
    """No reply in it: its mail file is one empty frame, which `zstd -dc` opens (as a mail program
    an empty mailbox), not a file of no frames, which it refuses."""
    site, archiver = answered
    leo = site.people.principal("leo")
    assert leo is not None
    Circulations(site.config, site.registry).sign(leo, site.letters["business"], "Noted.")
    assert [w.items for w in archiver.run("2026-03")] == [1]
    [part] = late_parts(site)
    [row] = manifest(site, part)
    assert row["item"].startswith("circulation ") and row["file"] == "circulation-part-002.csv"
    opened = subprocess.run(["zstd", "-dc", str(site.config.archive_dir / part.path)], capture_output=True)
    assert (opened.returncode, opened.stdout) == (0, b"")
    assert all(c.ok for c in archiver.verify("2026-03"))


def test_a_late_part_is_copied_and_its_copy_checked_as_a_package_is(answered: tuple[Site, Archiver],
                                                                     tmp_path: Path) -> None:
    site, archiver = answered
    answered_late(site)
    archiver.run("2026-03")
    copy = tmp_path / "second-disk"
    copy.mkdir()
    archiver.copies = [copy]
    checked = archiver.verify("2026-03")
    assert all(c.ok and c.copied == [str(copy)] for c in checked)
    [part] = late_parts(site)
    names = [part.path, part.manifest, str(circulation_path(Path(part.manifest)))]
    assert all((copy / name).read_bytes() == (site.config.archive_dir / name).read_bytes() for name in names)
    record = copy / names[2]
    right = record.read_bytes()
    record.write_bytes(right.replace(b"Go ahead.", b"Go ahead!"))  # the copy of its circulation record altered
    [late] = [c for c in archiver.verify("2026-03") if c.package.kind == "late"]
    assert late.ok and not late.copy_problems and record.read_bytes() == right
    assert late.repaired[0].startswith(f"its copy in {copy} was written again; it had: circulation ")


def test_a_crash_between_writing_a_late_part_and_recording_it_loses_and_doubles_nothing(
        answered: tuple[Site, Archiver]) -> None:
    site, archiver = answered
    answered_late(site)
    crashed = site.gateway.run("archive", "run", "--month", "2026-03", check=False,
                               env=site.gateway.env(GATEWAY_CRASH_AT="archive-before-commit"))
    assert crashed.returncode == -9
    assert late_parts(site) == []
    assert [package for _, package in held(site, "replies")][1:] == [None]
    assert [package for _, package in held(site, "circulations")] == [None]
    folder = site.config.archive_dir / "2026" / "03"
    assert list(folder.rglob("part-002.mbox.zst"))  # written, never recorded

    resumed = site.gateway.run("archive", "run", "--month", "2026-03")
    assert "set aside in" in resumed.stderr
    [aside] = list((site.config.archive_dir / "orphans").iterdir())
    assert list(aside.rglob("part-002.mbox.zst"))
    [part] = late_parts(site)
    assert part.part == 2 and part.status == "verified"  # the run verifies what it packed
    replies, circulations = held(site, "replies"), held(site, "circulations")
    assert [package for _, package in replies[1:] + circulations] == [part.id, part.id]
    assert [row["item"] for row in manifest(site, part)] == [f"reply {replies[1][0]}",
                                                              f"circulation {circulations[0][0]}"]
    assert archiver.run("2026-03") == []


def test_the_upgrade_counts_what_packages_written_before_hold(answered: tuple[Site, Archiver]) -> None:
    """A registry of the release before: the replies sent before their letter was packed are in its
    package; a circulation then still running is not (its record there stops where it stood)."""
    site, archiver = answered
    alembic = schema._alembic_config()
    with site.registry.engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.downgrade(alembic, "0027")
    assert schema.upgrade(site.registry.engine)
    office = site.registry.letter(site.letters["office"])
    assert office is not None
    [(_, package)] = held(site, "replies")
    assert package == office.archive_package_id and [p for _, p in held(site, "circulations")] == [None]
    assert archiver.run("2026-03") == []
    answered_late(site)
    assert [w.items for w in archiver.run("2026-03")] == [2]


def test_the_late_items_are_found_through_an_index(answered: tuple[Site, Archiver]) -> None:
    """A run asks, for each month, only what waits: never a walk through every reply or circulation."""
    site, _ = answered
    sqlite = site.registry.engine.dialect.name == "sqlite"
    replies, circulations = site.registry._late(Letter.received_at < datetime(2026, 4, 1, tzinfo=timezone.utc))
    with site.registry.read() as conn:
        # A few rows: PostgreSQL would read them whole. Asked not to, it still does when no index serves.
        if not sqlite:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for stmt, table, index in ((replies, "replies", "ix_replies_archive_package"),
                                   (circulations, "circulations", "ix_circulations_archive_package")):
            sql_text = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                f"{'EXPLAIN QUERY PLAN' if sqlite else 'EXPLAIN'} {sql_text}"))
            assert (f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan if sqlite
                    else f"Seq Scan on {table}" not in plan), plan


def manifest(site: Site, package: ArchivePackage) -> list[dict[str, str]]:
    with open(site.config.archive_dir / package.manifest, newline="") as f:
        return list(csv.DictReader(f))
