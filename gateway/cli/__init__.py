"""The `gateway` command: one module per command group; each command parses its arguments,
calls a service (gateway.services) and prints."""
from __future__ import annotations

import click

from gateway import config as config_mod
from gateway.cli.archive import archive
from gateway.cli.backlog import import_backlog
from gateway.cli.config import check_config
from gateway.cli.db import db
from gateway.cli.intake import ingest
from gateway.cli.keys import keys
from gateway.cli.letters import letters
from gateway.cli.outbox import outbox
from gateway.cli.quarantine import quarantine
from gateway.cli.replies import COMMANDS as REPLY_COMMANDS
from gateway.cli.reminders import reminders
from gateway.cli.report import report
from gateway.cli.rules import rules
from gateway.cli.run import run
from gateway.cli.smtp import smtp_passwd
from gateway.cli.status import status
from gateway.cli.users import users
from gateway.cli.web import web
from gateway.cli.state import EX_TEMPFAIL, State

__all__ = ["EX_TEMPFAIL", "State", "main"]


@click.group()
@click.option("--config", "config_arg", metavar="PATH", envvar=config_mod.ENV_VAR,
              help="Configuration file (default: $GATEWAY_CONFIG, else the checkout's config/gateway.toml, "
                   "else /etc/gateway/gateway.toml).")
@click.version_option(package_name="correspondence-gateway")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """Correspondence Gateway: receive, register, route and track letters."""
    ctx.obj = State(config_arg)


for command in (run, check_config, status, db, ingest, letters, quarantine, rules, outbox, reminders, archive,
                report, smtp_passwd, keys, users, web, import_backlog):
    main.add_command(command)
for command in REPLY_COMMANDS:  # gateway letters reply|approve|return
    letters.add_command(command)
