"""`gateway status`."""
from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from gateway.cli.state import State, pass_state, print_json


# The exit status, as monitoring plugins (Nagios and its kin) have it.
OK, ATTENTION, NOT_RUNNING, UNKNOWN = 0, 1, 2, 3


class _StatusCommand(click.Command):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            # Not click's 2: a mistyped option says nothing of the daemon.
            exc.exit_code = UNKNOWN  # type: ignore[misc]  # click declares it on the class
            raise


@click.command(cls=_StatusCommand,
               epilog="Exit status: 0 the daemon runs and nothing needs an operator; 1 it runs and something "
                      "does (listed under \"needs attention\"); 2 the daemon is not running; 3 the status "
                      "could not be read (configuration invalid, registry unavailable or of another schema, "
                      "or a usage error).")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def status(state: State, as_json: bool) -> None:
    """The daemon, the spool, the register, the outbox, the archive and the health of every IMAP
    folder, and what needs an operator."""
    from gateway.services import operations

    from gateway.registry import RegistryUnavailable
    from gateway.registry.leases import cluster_status

    try:
        registry = state.registry()
        data = operations.status(state.config, state.spool(), registry)
    except SystemExit as exc:  # the reason is on stderr already
        raise SystemExit(UNKNOWN if exc.code else OK) from None
    except RegistryUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(UNKNOWN) from None
    data["nodes"] = [{**node, "started_at": node["started_at"].isoformat(),
                      "heartbeat_at": node["heartbeat_at"].isoformat(),
                      "last_jobs": {job: {**run, "finished_at": run["finished_at"] and run["finished_at"].isoformat()}
                                    for job, run in node["last_jobs"].items()}}
                     for node in cluster_status(registry, state.config.model.cluster.takeover_seconds)]
    code = NOT_RUNNING if not data["daemon"]["running"] else ATTENTION if data["attention"] else OK
    if as_json:
        print_json(data)
        click.get_current_context().exit(code)
    pid = data["daemon"]["pid"]
    spool = data["spool"]
    console = Console(markup=False)  # error texts from servers carry [brackets] of their own
    console.print(f"daemon: {'running, pid ' + str(pid) if pid else 'not running'}; {data['letters']} letter(s)")
    console.print(f"spool: {spool['waiting']} waiting, {spool['in_progress']} in progress, "
                  f"{spool['quarantined']} quarantined")
    out = data["outbox"]
    console.print(f"outbox: {out['pending']} pending, {out['dead']} dead-lettered, {out['sent']} sent; "
                  f"relay {out['relay'] or 'not configured'}")
    if data["imap"]:
        table = Table(title="IMAP folders")
        for column in ("account/folder", "last successful poll", "backlog", "failing", "last error"):
            table.add_column(column, overflow="fold")
        for row in data["imap"]:
            error = f"{row['last_error']} ({row['last_error_at']})" if row["last_error"] else ""
            table.add_row(f"{row['account']}/{row['folder']}", row["last_poll_at"] or "never",
                          "" if row["backlog"] is None else str(row["backlog"]), str(row["failing"]),
                          error)
        console.print(table)
    if data["nodes"]:
        nodes = Table(title="Nodes")
        for column in ("node", "state", "last heartbeat", "claimed outbox / OCR", "IMAP folders", "running jobs"):
            nodes.add_column(column, overflow="fold")
        for node in data["nodes"]:
            nodes.add_row(f"{node['name']} ({node['host']}, pid {node['pid']})", node["state"],
                          f"{node['heartbeat_at']} ({node['heartbeat_age_seconds']:.0f} s ago)",
                          f"{node['claims']['outbox']} / {node['claims']['ocr']}",
                          ", ".join(node["folders"]), ", ".join(node["jobs"]))
        console.print(nodes)
    if data["attention"]:
        console.print("needs attention:")
        for line in data["attention"]:
            console.print(f"  {line}")
    click.get_current_context().exit(code)
