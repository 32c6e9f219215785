"""The commands that read the register: they never change the schema, they import only what they
use, and the listing's filters are answered from an index (no sort of every matching letter)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from conftest import ROOT, Gateway, make_message
from gateway.config import load
from gateway.registry import Registry, schema

READ_COMMANDS = (("letters", "list", "--limit", "50"), ("letters", "show", "2026-000001"), ("status",))


def schema_of(url: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The revision and every table's and index's definition."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            ddl = [(name, sql or "") for name, sql in conn.execute(
                text("SELECT name, sql FROM sqlite_master ORDER BY type, name"))]
    finally:
        engine.dispose()
    return revision, ddl


def test_read_commands_on_an_older_schema_name_db_upgrade_and_change_nothing(gateway: Gateway) -> None:
    from alembic import command

    url = load(str(gateway.config)).registry_url  # makes the state directory
    engine = create_engine(url)
    config = schema._alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0018")  # the release before this one's
    engine.dispose()
    before = schema_of(url)
    assert before[0] == "0018"
    for args in READ_COMMANDS:
        done = gateway.run(*args, check=False)
        # status: 3, the status could not be read (its exit status is for monitoring)
        assert done.returncode == (3 if args == ("status",) else 1), (args, done.stdout, done.stderr)
        assert f"the registry's schema is 0018, this gateway needs {schema.HEAD}: run `gateway db upgrade`" \
            in done.stderr, (args, done.stderr)
    assert schema_of(url) == before  # not migrated, not touched
    gateway.run("db", "upgrade")
    assert schema_of(url)[0] == schema.HEAD
    assert json.loads(gateway.run("letters", "list", "--json").stdout) == []


def test_read_commands_import_only_what_they_use(gateway: Gateway) -> None:
    """Listing, showing and the status load no rules, no classifier, no trust check (DNS), no
    daemon, archive or web register, no migrations, and hash no password."""
    gateway.run("db", "upgrade")
    gateway.run("ingest", str(write_message(gateway)))
    number = gateway.list_json()[0]["number"]
    probe = """
import contextlib, io, json, sys
from gateway.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(sys.argv[1:], standalone_mode=False)
print(json.dumps(sorted(sys.modules)))
"""
    heavy = ("gateway.stages.rulebook", "gateway.stages.classify", "gateway.stages.route", "gateway.stages.check",
             "gateway.stages.normalise", "gateway.daemon", "gateway.archive", "gateway.web", "gateway.adapters",
             "gateway.cli.archive", "gateway.cli.run", "alembic", "dns", "dkim", "spf")
    for args in (("letters", "list", "--limit", "50"), ("letters", "show", number), ("status",)):
        done = subprocess.run([sys.executable, "-c", probe, "--config", str(gateway.config), *args],
                              capture_output=True, text=True, env=gateway.env(), cwd=ROOT, timeout=120)
        assert done.returncode == 0, (args, done.stderr)
        modules: list[str] = json.loads(done.stdout.splitlines()[-1])
        imported = [m for m in modules if m.startswith(heavy)]
        assert not imported, (args, imported)
    shown = gateway.run("letters", "show", number).stdout
    assert "Sender verified" in shown  # the trust verdict is still described


def write_message(gateway: Gateway) -> Path:
    path = gateway.state.parent / "one.eml"
    path.write_bytes(make_message(1, subject="A quick read"))
    return path


def test_every_command_is_listed_and_found() -> None:
    from click import Context

    from gateway.cli import COMMANDS, main

    context = Context(main)
    assert main.list_commands(context) == sorted(COMMANDS)
    for name in COMMANDS:
        assert main.get_command(context, name) is not None, name
    letters = main.get_command(context, "letters")
    assert letters is not None
    assert {"list", "show", "reply", "approve", "return"} <= set(letters.list_commands(context))  # type: ignore[attr-defined]


@pytest.mark.parametrize("filters", [{"status": "routed"}, {"category": "external.business"},
                                     {"department": "sales"}, {"channel": "fax"}, {}])
def test_a_filtered_listing_is_read_in_order_from_an_index(tmp_path: Path, filters: dict[str, Any]) -> None:
    """SQLite walks an index in arrival order and stops at the limit: no temporary sort of every
    letter that matches."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite3'}", timezone_name="Asia/Shanghai")
    registry.upgrade()
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM letters" in statement:
            statements.append((statement, parameters))

    event.listen(registry.engine, "before_cursor_execute", seen)
    registry.letters(limit=50, **filters)
    event.remove(registry.engine, "before_cursor_execute", seen)
    assert len(statements) == 1
    statement, parameters = statements[0]
    with registry.engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    registry.close()
    assert not [step for step in plan if "TEMP B-TREE" in step or step.startswith("SCAN letters") and
                "INDEX" not in step], plan


def test_a_subject_that_looks_like_markup_is_listed_as_written(gateway: Gateway) -> None:
    gateway.run("db", "upgrade")
    path = gateway.state.parent / "markup.eml"
    path.write_bytes(make_message(2, subject="[/x] offer [bold]now"))
    gateway.run("ingest", str(path))
    listed = gateway.run("letters", "list").stdout
    assert "[/x] offer" in listed and "[bold]now" in listed
