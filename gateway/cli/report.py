"""`gateway report`."""
from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.state import State, pass_state


@click.command()
@click.option("--month", help="YYYY-MM")
@click.option("--quarter", help="YYYY-Qn")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "json"]), default="html", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_state
def report(state: State, month: str | None, quarter: str | None, fmt: str, output: Path | None) -> None:
    """Volumes, timeliness, times to acknowledge and close, overdue letters, accuracy and archive completeness."""
    from gateway.report import render
    from gateway.report.figures import Period, compute

    if (month is None) == (quarter is None):
        raise click.UsageError("give one of --month YYYY-MM and --quarter YYYY-Qn")
    cfg = state.config
    try:
        period = Period.parse(month or quarter or "", cfg.model.gateway.timezone)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month/--quarter") from None
    figures = compute(state.registry(), period, cfg.model.gateway.timezone)
    text = {"json": render.as_json, "csv": render.as_csv,
            "html": lambda r: render.as_html(r, cfg.model.outbound.from_name)}[fmt](figures)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="--output") from None
        click.echo(f"{output}: {fmt}, {figures['letters']} letter(s)")
