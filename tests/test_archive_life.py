"""An archived letter's life after its month was packed: a letter packed while still open and
ended later, a package altered after it was written, destruction, and borrowing what is gone."""
from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from web_support import Site

from gateway.archive.packer import ArchiveError, Archiver
from gateway.registry import schema
from gateway.services.access import Refused
from gateway.services.borrowing import Borrowings
from gateway.services.people import Principal

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
