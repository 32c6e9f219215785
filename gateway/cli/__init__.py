"""The `gateway` command: one module per command group; each command parses its arguments,
calls a service (gateway.services) and prints. A command group's module is imported only when
it runs (or help lists it), so that a quick read of the register starts quickly."""
from __future__ import annotations

import click

from gateway import config as config_mod
from gateway.cli.lazy import LazyGroup
from gateway.cli.state import EX_TEMPFAIL, State

__all__ = ["EX_TEMPFAIL", "State", "main"]

COMMANDS = {
    "archive": "gateway.cli.archive:archive",
    "check-config": "gateway.cli.config:check_config",
    "db": "gateway.cli.db:db",
    "import": "gateway.cli.backlog:import_backlog",
    "ingest": "gateway.cli.intake:ingest",
    "keys": "gateway.cli.keys:keys",
    "letters": "gateway.cli.letters:letters",
    "outbox": "gateway.cli.outbox:outbox",
    "quarantine": "gateway.cli.quarantine:quarantine",
    "reminders": "gateway.cli.reminders:reminders",
    "report": "gateway.cli.report:report",
    "rules": "gateway.cli.rules:rules",
    "run": "gateway.cli.run:run",
    "smtp-passwd": "gateway.cli.smtp:smtp_passwd",
    "status": "gateway.cli.status:status",
    "users": "gateway.cli.users:users",
    "web": "gateway.cli.web:web",
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.option("--config", "config_arg", metavar="PATH", envvar=config_mod.ENV_VAR,
              help="Configuration file (default: $GATEWAY_CONFIG, else the checkout's config/gateway.toml, "
                   "else /etc/gateway/gateway.toml).")
@click.version_option(package_name="correspondence-gateway")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """Correspondence Gateway: receive, register, route and track letters."""
    if config_arg == "":  # `--config "$UNSET"`: not the default file, taken without a word
        raise click.BadParameter("an empty path names no file", param_hint="--config")
    ctx.obj = State(config_arg)
