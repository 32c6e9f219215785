"""`gateway outbox`: mail the gateway sends."""
from __future__ import annotations

import sys

import click
from rich.table import Table

from gateway.cli.state import COUNT, ROW_ID, State, actor, pass_state, print_json, wide_console


@click.group()
def outbox() -> None:
    """Mail the gateway sends: notifications and receipts."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "sent", "dead"]))
@click.option("--limit", type=COUNT, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def outbox_list(state: State, status: str | None, limit: int, as_json: bool) -> None:
    from gateway.services.queries import outbox_mail, outbox_row

    mails, numbers = outbox_mail(state.registry(), status=status, limit=limit)
    if as_json:
        print_json([outbox_row(m) for m in mails])
        return
    table = Table(title=f"{len(mails)} mail(s)")
    for column in ("#", "Letter", "Kind", "To", "Status", "Attempts", "Next try", "Last error"):
        table.add_column(column, overflow="fold")
    for m in mails:
        table.add_row(str(m.id), numbers.get(m.letter_id, "-"), m.kind, m.recipient, m.status, str(m.attempts),
                      m.next_attempt_at.isoformat(" ", "seconds") if m.status == "pending" else "",
                      m.last_error or "")
    wide_console().print(table)


@outbox.command("retry")
@click.argument("mail_ids", nargs=-1, type=ROW_ID, required=True)
@pass_state
def outbox_retry(state: State, mail_ids: tuple[int, ...]) -> None:
    """Queue dead-lettered mail again (after fixing what stopped it)."""
    from gateway.services.operations import requeue_mail

    registry = state.registry()
    failed = 0
    for mail_id in mail_ids:
        try:
            mail = requeue_mail(registry, mail_id, actor(None))
            click.echo(f"{mail_id}: {mail.kind} to {mail.recipient} queued again")
        except (LookupError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            failed += 1
    state.wake_daemon()
    sys.exit(1 if failed else 0)
