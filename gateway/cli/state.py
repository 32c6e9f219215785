"""What every command shares: the configuration and the connections it opens, and output helpers."""
from __future__ import annotations

import getpass
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.panel import Panel

from gateway import config as config_mod
from gateway import logs
from gateway.config import Config, ConfigError

if TYPE_CHECKING:
    from gateway.daemon.events import DaemonLink
    from gateway.registry import Registry
    from gateway.services.people import Principal
    from gateway.spool import Spool

EX_TEMPFAIL = 75


class State:
    def __init__(self, config_arg: str | None):
        self.config_arg = config_arg
        self._config: Config | None = None
        self._with_rules = False
        self._warned = False

    @property
    def config(self) -> Config:
        """The configuration; the rules are read only by commands that classify."""
        if self._config is None:
            self._config = self._load(False)
        return self._config

    @property
    def config_with_rules(self) -> Config:
        if self._config is None or not self._with_rules:
            self._config = self._load(True)
            self._with_rules = True
        return self._config

    def _load(self, with_rules: bool) -> Config:
        try:
            if with_rules:
                from gateway.stages import rulebook  # compiling rules: only for commands that classify

                config = rulebook.load(self.config_arg)
            else:
                config = config_mod.load(self.config_arg)
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(f"error: {issue}", err=True)
            sys.exit(2)
        logs.setup(config.model.logging.level, timestamps=config.model.logging.timestamps)
        return config

    def warn_if_daemon_differs(self) -> None:
        """Say once, on stderr, when the running daemon uses other values than the file of settings
        only a restart changes ([storage], the timezone, ...): this command uses the file's."""
        if self._warned:
            return
        self._warned = True
        from gateway import running

        warning = running.difference_warning(self.config)
        if warning is not None:
            click.echo(f"warning: {warning}", err=True)

    def registry(self, *, check_schema: bool = True) -> Registry:
        """The registry, refused (exit 1) when its schema is older or newer than this gateway's;
        only `gateway db upgrade` changes it. An empty database is set up."""
        from gateway.registry import Registry, RegistryUnavailable
        from gateway.registry.schema import SchemaMismatch

        registry = Registry.from_config(self.config)
        self.warn_if_daemon_differs()
        try:
            if check_schema:
                registry.check_schema()
        except RegistryUnavailable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EX_TEMPFAIL)
        except SchemaMismatch as exc:
            click.echo(f"error: registry {registry.safe_url}: {exc}", err=True)
            sys.exit(1)
        return registry

    def spool(self) -> Spool:
        from gateway import storage
        from gateway.spool import Spool

        from gateway import running

        cfg = self.config
        self.warn_if_daemon_differs()
        # The shared message store, before the spool makes a local one; while a daemon runs, the
        # store is the one it mounted at its start: a [storage] edited since takes its restart, and
        # a command must not move the store from under it.
        if running.daemon_pid(cfg) is None:
            try:
                storage.mount(cfg)
            except storage.StorageError as exc:
                fail(str(exc))
        return Spool(cfg.spool_dir, cfg.message_dir, max_attempts=cfg.model.spool.max_attempts)

    def link(self) -> DaemonLink:
        from gateway.daemon.events import DaemonLink

        return DaemonLink(self.config.endpoint(self.config.model.daemon.wakeup_endpoint))

    def wake_daemon(self) -> None:
        """Tell a running daemon there is work (mail to send, items to process); harmless if none runs."""
        link = self.link()
        link.wake()
        link.close()


pass_state = click.make_pass_decorator(State)

by_option = click.option("--by", help="Who (default: the user running the command).")
as_option = click.option("--as", "as_login", metavar="LOGIN",
                         help="Act as this person of the web register, with their rights only "
                              "(default: the server's operator, who may do everything).")


def actor(by: str | None) -> str:
    return by or os.environ.get("SUDO_USER") or getpass.getuser()


def principal(state: State, as_login: str | None, by: str | None = None) -> Principal:
    """Who a command acts as: a person named with --as (their rights), or the operator at the
    server's shell (every right; named by --by or the login user, never by a person's sign-in name
    or the register's own names: People.operator). Either way, reads of content are audited under
    that name."""
    from gateway.services.people import People

    if as_login is not None and by is not None:
        # One of them is recorded; the other would be dropped without a word.
        raise click.UsageError("--as LOGIN acts as that person, under their name; --by NAME names the operator "
                               "at the shell: give one of them")
    people = People(state.config, state.registry())
    if as_login is None:
        try:
            return people.operator(by, actor(None))
        except ValueError as exc:
            fail(f"--by: {exc}: --as LOGIN acts as a person, with their rights; --by names yourself")
    person = people.principal(as_login)
    if person is None:
        fail(f"no enabled person named {as_login!r} (gateway users list)")
    return person


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def wide_console() -> Console:
    """A console for tables of what senders wrote: no markup, so that a subject such as
    "[/x] offer" is printed as it is instead of styling the table or failing."""
    return Console(width=max(Console().width, 120), markup=False)


def print_trace(console: Console, trace: dict[str, Any] | None, title: str = "Decision") -> None:
    """The decision trace: which rules matched, on what, and what each set."""
    if not trace:
        console.print(Panel("not classified yet (a fax is classified once its text is read)",
                            title=title, title_align="left"))
        return
    lines = []
    for m in trace.get("matched", []):
        sets = ", ".join(f"{k}={v if not isinstance(v, list) else ' '.join(v)}" for k, v in m["set"].items())
        lines.append(f"rule {m['rule']!r} (line {m.get('line')}){'' if m.get('stop') else ', continue'}: "
                     f"{sets or 'nothing new'}")
        lines += [f"    because {e}" for e in m["evidence"]]
        lines += [f"    kept {k}: {why}" for k, why in (m.get("kept") or {}).items()]
    if not trace.get("matched"):
        lines.append("no rule matched")
    for skipped in trace.get("skipped", []):
        lines.append(f"rule {skipped['rule']!r} (line {skipped.get('line')}) not decided: {skipped['reason']}")
    if trace.get("triage"):
        t = trace["triage"]
        lines.append(f"triage: {t['reason']}; likely departments: {', '.join(t['candidates']) or 'none found'}")
    result = trace.get("result", {})
    lines.append("result: " + ", ".join(f"{k}={v}" for k, v in result.items()
                                       if v not in (None, [], "") and k != "tags")
                 + (f", tags={' '.join(result['tags'])}" if result.get("tags") else ""))
    lines.append(f"rules version {trace.get('rules')}")
    console.print(Panel("\n".join(lines), title=title, title_align="left"))


# A count or a row id the registry can hold (its integers are 64-bit): a larger one is refused by
# name instead of failing in the database driver.
COUNT = click.IntRange(1, 2**63 - 1)
ROW_ID = COUNT


class RegisterDay(click.DateTime):
    """A day (or a moment, with `formats`) within the register's years: a year 1 or 9999 is
    refused by name, not left to overflow in a query."""

    def __init__(self, formats: tuple[str, ...] = ("%Y-%m-%d",)) -> None:
        super().__init__(list(formats))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from datetime import datetime

        from gateway.registry.store import FIRST_DAY, LAST_DAY, in_register  # only when a day is given

        moment = super().convert(value, param, ctx)
        if isinstance(moment, datetime) and not in_register(moment.date()):
            self.fail(f"{value}: outside the register's days ({FIRST_DAY} to {LAST_DAY})", param, ctx)
        return moment
