"""`gateway status`."""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from gateway.cli.state import State, pass_state, print_json


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_state
def status(state: State, as_json: bool) -> None:
    """The daemon, the spool, the register, and the health of every IMAP folder."""
    from gateway.services import operations

    from gateway.registry.leases import cluster_status

    registry = state.registry()
    data = operations.status(state.config, state.spool(), registry)
    data["nodes"] = [{**node, "started_at": node["started_at"].isoformat(),
                      "heartbeat_at": node["heartbeat_at"].isoformat(),
                      "last_jobs": {job: {**run, "finished_at": run["finished_at"] and run["finished_at"].isoformat()}
                                    for job, run in node["last_jobs"].items()}}
                     for node in cluster_status(registry, state.config.model.cluster.takeover_seconds)]
    if as_json:
        print_json(data)
        return
    pid = data["daemon"]["pid"]
    console = Console(markup=False)  # error texts from servers carry [brackets] of their own
    console.print(f"daemon: {'running, pid ' + str(pid) if pid else 'not running'}; {data['letters']} letter(s); "
                  f"spool: {data['spool']['waiting']} waiting, {data['spool']['quarantined']} quarantined")
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
