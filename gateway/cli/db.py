"""`gateway db`: the registry's schema, changed by this command only."""
from __future__ import annotations

import sys

import click

from gateway.cli.state import EX_TEMPFAIL, State, pass_state


@click.group()
def db() -> None:
    """The registry's schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply pending schema migrations (the only command that changes the schema). With several
    nodes, stop them all, upgrade once, then start them with the new release."""
    from gateway.registry import RegistryUnavailable, schema

    registry = state.registry(check_schema=False)
    try:
        before = schema.current_revision(registry.engine)
        if before is not None and before.isdigit() and int(before) > int(schema.HEAD):
            click.echo(f"error: the registry's schema is {before}, newer than this gateway's ({schema.HEAD}): "
                       "nothing to do here; run the release that upgraded it", err=True)
            sys.exit(1)
        registry.upgrade()
        after = schema.current_revision(registry.engine)
    except RegistryUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    change = f"upgraded from {before or 'an empty database'}" if before != after else "already up to date"
    click.echo(f"registry {registry.safe_url} is at revision {after} ({change})")


@db.command("status")
@pass_state
def db_status(state: State) -> None:
    """The registry's schema revision against this gateway's (changes nothing)."""
    from gateway.registry import RegistryUnavailable, schema

    registry = state.registry(check_schema=False)
    try:
        current = schema.current_revision(registry.engine)
    except RegistryUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    verdict = "up to date" if current == schema.HEAD else "run `gateway db upgrade`" if current else "empty"
    click.echo(f"registry {registry.safe_url}: schema {current or 'none'}, this gateway's {schema.HEAD} ({verdict})")
    if current != schema.HEAD:
        sys.exit(1)
