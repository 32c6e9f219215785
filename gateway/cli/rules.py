"""`gateway rules`: trying the classification rules without registering anything."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gateway.cli.state import RegisterDay, State, pass_state, print_json, print_trace, wide_console


@click.group()
def rules() -> None:
    """Try the classification rules without registering anything."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ocr", is_flag=True, help="Read the text of fax files first (slow), as the daemon does.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def rules_test(state: State, files: tuple[Path, ...], ocr: bool, as_json: bool) -> None:
    """Classify message files (.eml) and fax files (TIFF, PDF) and print why."""
    from gateway.services.rules import classify_file

    cfg = state.config_with_rules
    registry = state.registry()
    console = wide_console()
    results: list[dict[str, Any]] = []
    unreadable = 0
    for path in files:
        tested = classify_file(cfg, registry, path, ocr=ocr)
        if tested.unreadable is not None:
            click.echo(f"{path}: {tested.unreadable}", err=True)
            unreadable += 1
            continue
        routing = tested.routing
        if routing is None:  # a department's answer to one of our letters
            results.append({"file": str(path), "answers": tested.answers})
            if not as_json:
                console.print(f"{path}: an answer to {tested.answers}: recorded on that letter, not classified")
            continue
        receipt = (f"a receipt ({routing.receipt.details['language']}) to {routing.receipt.recipient}"
                   if routing.receipt else f"no receipt: {routing.no_receipt}")
        notify = [m.recipient for m in routing.mail]
        results.append({"file": str(path), "trace": routing.trace, "status": routing.status,
                        "notify": notify, "receipt": receipt})
        if not as_json:
            print_trace(console, routing.trace, title=f"{path}")
            console.print(f"  -> {routing.status} to {routing.department}; notify {', '.join(notify)}; {receipt}")
    registry.close()
    if as_json:
        print_json(results)
    if unreadable:  # the others were classified all the same; a script must still learn of it
        sys.exit(1)


@rules.command("replay")
@click.option("--since", type=RegisterDay(), required=True,
              help="Letters received on or after this day.")
@click.option("--until", type=RegisterDay(), help="Received before the end of this day.")
@click.option("--all", "show_all", is_flag=True, help="List every letter, not only those that would change.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def rules_replay(state: State, since: datetime, until: datetime | None, show_all: bool, as_json: bool) -> None:
    """How the current rules would classify past letters; lists those that would change. Changes nothing."""
    from gateway.services.rules import replay

    done = replay(state.config_with_rules, state.registry(), since=since.date(),
                  until=until.date() if until else None, show_all=show_all)
    if as_json:
        print_json({"replayed": done.replayed, "would_change": done.would_change, "letters": done.letters,
                    "rules_version": done.rules_version})
        return
    table = Table(title=f"{done.replayed} letter(s) replayed with rules {done.rules_version}; "
                        f"{done.would_change} would change")
    for column in ("Number", "Changes", "Rules then", "Rules now"):
        table.add_column(column, overflow="fold")
    for r in done.letters:
        table.add_row(r["number"], "; ".join(f"{f}: {a} -> {b}" for f, (a, b) in r["changes"].items()) or "same",
                      ", ".join(r["rules_then"]) or "-", ", ".join(r["rules_now"]) or "-")
    wide_console().print(table)
