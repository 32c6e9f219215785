"""`gateway keys`: the secret behind signed reply addresses and the loop marker."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click

from gateway.cli.state import State, fail, pass_state, print_json


@click.group()
def keys() -> None:
    """The reply-address keys (in <state_dir>/keys/replies.json)."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@pass_state
def list_keys(state: State, as_json: bool) -> None:
    """The current key and the retired ones, with until when each still counts (no secrets shown)."""
    from gateway.stages.tokens import KeyFileError, keyring

    config = state.config
    try:
        ring = keyring(config)
    except KeyFileError as exc:
        fail(str(exc))
    grace = timedelta(days=config.model.replies.previous_key_grace_days)
    now = datetime.now(timezone.utc)
    rows = [{"id": ring.current.id, "state": "current", "created_at": ring.current.created_at.isoformat(),
             "retired_at": None, "accepted_until": None}]
    for key in ring.previous:
        retired = key.retired_at or key.created_at
        until = retired + grace
        rows.append({"id": key.id, "state": "accepted" if key.secret is not None and now <= until else "expired",
                     "created_at": key.created_at.isoformat(), "retired_at": retired.isoformat(),
                     "accepted_until": until.isoformat()})
    if as_json:
        print_json(rows)
        return
    for row in rows:
        note = f", accepted until {str(row['accepted_until'])[:16]}" if row["state"] == "accepted" else ""
        click.echo(f"{row['id']}  {row['state']:<8}  created {str(row['created_at'])[:16]}{note}")


@keys.command("rotate")
@pass_state
def rotate_keys(state: State) -> None:
    """Make a new current key. Reply addresses signed with the old one still count for
    [replies] previous_key_grace_days; the daemon picks the new key up by itself."""
    from gateway.stages.tokens import KeyFileError, rotate

    config = state.config
    try:
        ring, retired = rotate(config)
    except KeyFileError as exc:
        fail(str(exc))
    click.echo(f"new key {ring.current.id}; key {retired.id} is accepted for "
               f"{config.model.replies.previous_key_grace_days:g} more day(s)")


@keys.command("reply-address")
@click.argument("number")
@click.argument("recipient")
@pass_state
def reply_address(state: State, number: str, recipient: str) -> None:
    """The signed reply address RECIPIENT answers letter NUMBER at (what their notifications carry)."""
    from gateway.stages.autoreply import safe_address
    from gateway.stages.tokens import KeyFileError, reply_address as address_for

    if not safe_address(recipient):
        raise click.BadParameter("a plain address", param_hint="RECIPIENT")
    registry = state.registry()
    if registry.letter(number) is None:
        fail(f"no letter {number}")
    try:
        click.echo(address_for(state.config, number, recipient))
    except KeyFileError as exc:
        fail(str(exc))
