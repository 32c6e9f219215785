"""`gateway run`: the daemon in the foreground."""
from __future__ import annotations

import sys

import click

from gateway.cli.state import State, pass_state


@click.command()
@pass_state
def run(state: State) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from gateway.daemon.daemon import Daemon

    sys.exit(Daemon(state.config_with_rules, state.config_arg).run())
