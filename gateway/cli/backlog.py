"""`gateway import PATH`: a backlog from another mail system, through the same pipeline as the daemon.

It acts as the server's operator, like `gateway ingest`: whoever may run it can read the state
directory and the database anyway.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from gateway.cli.state import COUNT, EX_TEMPFAIL, State, pass_state

if TYPE_CHECKING:
    from gateway.services.backlog import Summary

EX_INTERRUPTED = 130
_PLAIN_EVERY = 5.0  # seconds between progress lines when the output is not a terminal


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--notify", is_flag=True,
              help="Notify the departments and give the letters deadlines counted from now, as for new mail "
                   "(default: registered quietly, no deadline). Senders never get a receipt.")
@click.option("--limit", type=COUNT, metavar="N",
              help="Take in at most N messages not yet registered, then stop (run again for the next N).")
@click.option("--batch", "batch_size", type=click.IntRange(1, 5000), default=500, show_default=True, metavar="N",
              help="Messages registered per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def import_backlog(state: State, path: Path, notify: bool, limit: int | None, batch_size: int,
                   as_json: bool) -> None:
    """Import a backlog: an mbox file, a Maildir (cur/ and new/) or a folder of .eml files.

    Every message is registered as a backlog letter (flag `backlog`): no receipt to its sender and,
    unless --notify, no notification and no deadline. Run it again after a crash or Ctrl-C: what
    is registered is skipped, what was cut short is taken from the spool; nothing comes twice.
    It acts as the server's operator, like `gateway ingest`. Exit status: 0 all registered, 1 some
    quarantined or refused, 75 the registry or the spool could not take more (run again later),
    130 interrupted."""
    from gateway.daemon.pipeline import Pipeline
    from gateway.services.backlog import BacklogImport, SourceError, open_source

    cfg = state.config_with_rules
    try:
        source = open_source(path, ZoneInfo(cfg.model.gateway.timezone))
    except SourceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    spool, registry = state.spool(), state.registry()
    # One line per letter would drown the progress; warnings and errors still show.
    logging.getLogger("gateway.daemon.pipeline").setLevel(logging.WARNING)
    job = BacklogImport(spool, Pipeline(cfg, spool, registry), registry, source, notify=notify,
                        batch_size=batch_size, limit=limit)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        if job.stop:  # a second Ctrl-C: stop now; the batch in hand stays in the spool for the next run
            raise KeyboardInterrupt
        job.stop = True
        click.echo("\nstopping after the batch in hand (Ctrl-C again to stop at once)", err=True)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    err = Console(stderr=True)
    try:
        with _progress(err, source.kind, str(source.path)) as report:
            summary = job.run(report)
    except KeyboardInterrupt:
        click.echo("interrupted: the batch in hand stays in the spool; run the import again to finish it",
                   err=True)
        sys.exit(EX_INTERRUPTED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        registry.close()
    seconds = time.monotonic() - started
    code = (EX_INTERRUPTED if summary.interrupted else EX_TEMPFAIL if summary.unavailable
            else 1 if summary.quarantined or summary.quarantined_before or summary.refused else 0)
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "seconds": round(seconds, 2), "exit_status": code},
                              ensure_ascii=False, indent=2))
    else:
        _print_summary(summary, seconds, code)
    if summary.waiting or summary.interrupted:
        state.wake_daemon()  # a running daemon registers what waits in the spool
    sys.exit(code)


class _progress:
    """A rich progress bar on a terminal; otherwise a plain line every few seconds (logs, pipes)."""

    def __init__(self, console: Console, kind: str, path: str):
        self.console = console
        self.label = f"{kind} {path}"
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last = 0.0
        self.final_shown = False
        self.started = time.monotonic()

    def __enter__(self) -> Callable[[Summary], None]:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} msg/s"), TimeElapsedColumn(),
                                TextColumn("left"), TimeRemainingColumn(), console=self.console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task("import", total=None, rate="-")
        else:
            self.console.print(f"importing {self.label}", highlight=False, soft_wrap=True)
        return self.update

    def update(self, summary: Summary) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = summary.done / elapsed
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, total=summary.total, completed=summary.done, rate=f"{rate:,.0f}")
            return
        now = time.monotonic()
        if now - self.last < _PLAIN_EVERY and (summary.done < summary.total or self.final_shown):
            return
        self.last, self.final_shown = now, summary.done >= summary.total
        left = (summary.total - summary.done) / rate if rate > 0 else 0.0
        share = 100 * summary.done / summary.total if summary.total else 100.0
        self.console.print(f"import: {summary.done}/{summary.total} ({share:.0f}%), {rate:,.0f} msg/s, "
                           f"about {_duration(left)} left", highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _print_summary(summary: Summary, seconds: float, code: int) -> None:
    from gateway.services.backlog import NOT_EML, first_named
    rate = summary.seen / seconds if seconds > 0 else 0.0
    recovered = f" ({summary.recovered} of them left in the spool by an earlier run)" if summary.recovered else ""
    lines = [f"messages in the source: {summary.total}, looked at: {summary.seen} "
             f"in {_duration(seconds)} ({rate:,.0f} msg/s)",
             f"registered:          {summary.registered}{recovered}",
             f"already registered:  {summary.already}"]
    if summary.folders_not_read:
        lines.append(f"folders not read:    {', '.join(summary.folders_not_read)} "
                     "(each is imported by its own path)")
    if summary.files_not_read:
        lines.append(f"files not read:      {len(summary.files_not_read)} ({NOT_EML}): "
                     f"{first_named(summary.files_not_read)}")
    if summary.answers:
        lines.append(f"answers recorded:    {summary.answers}")
    lines.append(f"quarantined:         {len(summary.quarantined)}")
    lines += [f"  {where}: {reason}" for where, reason in list(summary.quarantined.items())[:50]]
    if summary.quarantined_before:
        lines.append(f"quarantined before:  {summary.quarantined_before} (gateway quarantine list, then retry)")
    lines.append(f"refused:             {len(summary.refused)}")
    lines += [f"  {where}: {reason}" for where, reason in list(summary.refused.items())[:50]]
    if summary.waiting:
        lines.append(f"waiting in the spool: {summary.waiting} (the daemon or the next run registers them)")
    if summary.unavailable:
        lines.append(f"stopped: {summary.unavailable}")
    if summary.interrupted:
        lines.append("interrupted: run the import again to go on")
    lines.append(f"exit status {code}")
    click.echo("\n".join(lines))
