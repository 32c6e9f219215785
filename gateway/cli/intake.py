"""`gateway ingest`: files through the same pipeline as the daemon."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.state import EX_TEMPFAIL, State, pass_state

_REGISTERED = {"registered": "registered as", "duplicate": "already registered as",
               "known": "already registered as", "answer": "an answer, recorded on"}


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def ingest(state: State, files: tuple[Path, ...]) -> None:
    """Push message files (.eml) and fax files (TIFF, PDF) through the same pipeline as the daemon."""
    from gateway.daemon.pipeline import Pipeline
    from gateway.services.intake import ingest_file

    cfg = state.config_with_rules
    spool, registry, link = state.spool(), state.registry(), state.link()
    pipeline = Pipeline(cfg, spool, registry, link.publish)
    failures = tempfail = 0
    for path in files:
        done = ingest_file(cfg, spool, pipeline, path)
        if done.result == "refused":
            failures += 1
            click.echo(f"{path}: {done.reason}", err=True)
        elif done.number:
            click.echo(f"{path}: {_REGISTERED[done.result]} {done.number}")
        elif done.result == "released":
            tempfail += 1
            link.wake()
            click.echo(f"{path}: spooled as item {done.item_id}; the registry is unavailable, "
                       f"the daemon registers it when it is back ({done.reason})", err=True)
        else:
            failures += 1
            click.echo(f"{path}: {done.result} (item {done.item_id}): {done.reason}", err=True)
    link.close()
    registry.close()
    sys.exit(1 if failures else EX_TEMPFAIL if tempfail else 0)
