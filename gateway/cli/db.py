"""`gateway db`: the registry's schema."""
from __future__ import annotations

import click

from gateway.cli.state import State, pass_state


@click.group()
def db() -> None:
    """The registry's schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply pending schema migrations."""
    from gateway.registry import schema

    registry = state.registry()  # upgrades it
    click.echo(f"registry {registry.safe_url} is at revision {schema.current_revision(registry.engine)}")
