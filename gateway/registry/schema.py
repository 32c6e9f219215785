"""Schema migrations (Alembic), applied by `gateway db upgrade` only.

Daemons and commands check the registry's revision against theirs (`check`) and refuse to work
on an older or a newer one: with several nodes on one registry, a node started with a newer
release must not change the schema under the others. Only an empty database (a first start)
is set up without being asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The newest revision in migrations/versions (a test keeps the two in step).
# Known here so that the common case, an up-to-date schema, needs one query
# and no import of Alembic, which costs a command-line call a noticeable pause.
HEAD = "0032"


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> bool:
    """Bring the schema to the newest revision; returns True when something was applied."""
    if current_revision(engine) == HEAD:
        return False
    from alembic import command

    cfg = _alembic_config()
    with engine.execution_options(write=True).begin() as conn:
        # Two processes starting at once must not both run the migration.
        if conn.dialect.name == "postgresql":
            # A migration waits as long as it takes, for another's migration and for the tables'
            # locks, rather than fail after the minute every other statement waits at most.
            conn.execute(text("SET LOCAL lock_timeout = 0"))
            conn.execute(text("SELECT pg_advisory_xact_lock(724311)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return True


class SchemaMismatch(Exception):
    """The registry's schema is not the one this gateway was written for."""


def _order(revision: str) -> int:
    return int(revision) if revision.isdigit() else -1


def check(engine: Engine) -> bool:
    """Refuse a registry whose schema is older or newer than HEAD; set up an empty one. Returns True
    when it was set up now."""
    current = current_revision(engine)
    if current == HEAD:
        return False
    if current is None:
        with engine.connect() as conn:
            tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        if not tables:
            return upgrade(engine)  # a new registry: nothing to migrate, nobody else on it yet
        raise SchemaMismatch("the registry has tables but no schema revision: it was not made by this gateway")
    if _order(current) > _order(HEAD):
        raise SchemaMismatch(f"the registry's schema is {current}, which is newer than this gateway's ({HEAD}): "
                             "run the gateway release that upgraded it")
    raise SchemaMismatch(f"the registry's schema is {current}, this gateway needs {HEAD}: run `gateway db upgrade`")
