"""`gateway quarantine`: items that failed repeatedly."""
from __future__ import annotations

import json
import logging
import sys

import click
from rich.table import Table

from gateway.cli.state import State, fail, pass_state, print_json, wide_console


@click.group()
def quarantine() -> None:
    """Items that failed repeatedly, kept with their raw bytes and the reason."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_list(state: State, as_json: bool) -> None:
    from gateway.services.operations import quarantine_row

    items = state.spool().quarantined()
    if as_json:
        print_json([quarantine_row(q) for q in items])
        return
    table = Table(title=f"{len(items)} quarantined item(s)")
    for column in ("Item", "Quarantined", "Attempts", "Intake", "Reason"):
        table.add_column(column, overflow="fold")
    for q in items:
        table.add_row(q.id, q.quarantined_at[:19], str(q.attempts), str(q.meta.get("intake", "?")), q.reason)
    wide_console().print(table)


@quarantine.command("show")
@click.argument("item_id")
@click.option("--raw", is_flag=True, help="Write the raw bytes to stdout.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_show(state: State, item_id: str, raw: bool, as_json: bool) -> None:
    from gateway.services.operations import quarantine_detail
    from gateway.spool import read_raw

    try:
        item, data = quarantine_detail(state.spool(), item_id)
    except LookupError as exc:
        fail(str(exc))
    if raw:
        sys.stdout.buffer.write(read_raw(item.path))
        return
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")


@quarantine.command("retry")
@click.argument("item_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every quarantined item.")
@pass_state
def quarantine_retry(state: State, item_ids: tuple[str, ...], retry_all: bool) -> None:
    """Put items back in the spool; the daemon (woken now) processes them."""
    from gateway.services.operations import retry_quarantined

    if not retry_all and not item_ids:
        raise click.UsageError("name at least one item, or --all")
    done = retry_quarantined(state.spool(), None if retry_all else list(item_ids))
    if not done:  # --all on an empty quarantine: nothing to do is no error
        click.echo("no quarantined items")
        return
    for retried in done:
        if retried.found:
            click.echo(f"{retried.item_id}: back in the spool")
        else:
            click.echo(f"error: no quarantined item {retried.item_id}", err=True)
    state.wake_daemon()
    logging.getLogger("gateway.cli").debug("woke the daemon")
    sys.exit(0 if all(r.found for r in done) else 1)
