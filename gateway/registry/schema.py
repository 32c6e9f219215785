"""Schema migrations (Alembic), applied by `gateway db upgrade` and at start-up."""
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
HEAD = "0016"


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
            conn.execute(text("SELECT pg_advisory_xact_lock(724311)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return True
