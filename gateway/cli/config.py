"""`gateway check-config`."""
from __future__ import annotations

import sys

import click

from gateway import running
from gateway.addressing import needs_smtputf8
from gateway.cli.state import State, pass_state
from gateway.config import ConfigError, smtputf8_warning
from gateway.stages import rulebook


@click.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration; print every error with file, key and reason."""
    try:
        cfg = rulebook.load(state.config_arg)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        click.echo(f"{len(exc.issues)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{cfg.path}: OK ({len(cfg.model.departments)} departments, state in {cfg.state_dir}, "
               f"registry {cfg.registry_url.split('@')[-1]})")
    for warning in cfg.cluster_warnings():  # a PostgreSQL registry: other nodes may share it
        click.echo(f"warning: {cfg.path}: {warning}", err=True)
    for warning in cfg.address_warnings():  # the relay's SMTPUTF8 is known only when it answers
        click.echo(f"warning: {cfg.path}: {warning}", err=True)
    restart = running.difference_warning(cfg)  # a restart-only setting edited while the daemon runs
    if restart is not None:
        click.echo(f"warning: {restart}", err=True)
    rules = cfg.ruleset
    click.echo(f"{rules.file}: OK ({len(rules)} rule(s), {len(rules.keywords)} keyword(s), version {rules.version})")
    for n, rule in enumerate(rules.rules):
        owner = rule.actions.get("owner")
        if isinstance(owner, str) and needs_smtputf8(owner):
            click.echo(f"warning: {rules.file}:{rule.line}: rules[{n}].set.owner: {smtputf8_warning(owner)}", err=True)
