"""`gateway reminders`: reminders and escalations."""
from __future__ import annotations

from datetime import datetime

import click

from gateway.cli.state import RegisterDay, State, pass_state


@click.group()
def reminders() -> None:
    """Reminders before and at deadlines, and escalations (the daemon runs them periodically)."""


@reminders.command("run")
@click.option("--now", "at", type=RegisterDay(("%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d")),
              help="Decide as if it were this local time (default: now).")
@click.option("--dry-run", is_flag=True, help="Only show what would be sent.")
@pass_state
def reminders_run(state: State, at: datetime | None, dry_run: bool) -> None:
    """One pass: queue the reminders and escalations that are due, and print them."""
    from gateway.services.queries import local_moment
    from gateway.track import reminders as reminders_mod

    cfg = state.config
    done = reminders_mod.run(cfg, state.registry(), local_moment(cfg, at), dry_run=dry_run)
    for r in done:
        click.echo(f"{r.letter.number}: {'escalation' if r.kind == 'escalation' else 'reminder (' + r.kind + ')'} "
                   f"to {', '.join(m.recipient for m in r.mail)}{' (not sent: dry run)' if dry_run else ''}")
    if not done:
        click.echo("nothing due")
    elif not dry_run:
        state.wake_daemon()
