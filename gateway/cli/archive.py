"""`gateway archive`: the monthly archive."""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gateway.cli.state import ROW_ID, State, actor, fail, pass_state, principal, print_json, wide_console


@click.group()
def archive() -> None:
    """The monthly archive: packages by month and category, verification, retention."""


def _month(value: str) -> str:
    from gateway.archive.packer import MONTH

    if not MONTH.match(value):
        raise click.BadParameter(f"{value!r} is not YYYY-MM", param_hint="--month")
    from gateway.registry.store import FIRST_DAY, LAST_DAY

    if not FIRST_DAY.year <= int(value[:4]) <= LAST_DAY.year:
        raise click.BadParameter(f"{value!r}: the year is outside {FIRST_DAY.year} to {LAST_DAY.year}",
                                 param_hint="--month")
    return value


@archive.command("run")
@click.option("--month", required=True, help="YYYY-MM: the month whose letters are archived.")
@click.option("--no-verify", is_flag=True, help="Do not re-read the new packages afterwards.")
@pass_state
def archive_run(state: State, month: str, no_verify: bool) -> None:
    """Pack a month's letters (idempotent: letters already archived are skipped; safe to run again)."""
    from gateway.archive.packer import ArchiveError, Archiver

    archiver = Archiver(state.config, state.registry())
    try:
        written = archiver.run(_month(month))
    except ArchiveError as exc:
        fail(str(exc))
    for w in written:
        if w.items:  # a late part
            click.echo(f"{w.package}: {w.items} reply(ies) or circulation(s) after their letter was packed, "
                       f"{w.size} bytes")
        else:
            click.echo(f"{w.package}: {w.letters} letter(s), {w.size} bytes")
    if not written:
        click.echo(f"{month}: nothing (more) to archive")
    if not no_verify:
        _report_checks(archiver.verify(month))


def _report_checks(checked: list[Any], orphans: tuple[int, Path] = (0, Path())) -> None:
    """Each package's check; with `orphans` (how many files crashed runs left, and where), a word
    for the operator on those too."""
    bad = uncopied = 0
    for c in checked:
        if c.ok:
            held = (f"{c.items} reply(ies) or circulation(s) after their letter was packed"
                    if c.package.kind == "late" else f"{c.package.letters} letter(s)")
            click.echo(f"{c.package.path}: verified ({held})")
        else:
            bad += 1
            for problem in c.problems:
                click.echo(f"error: {c.package.path}: {problem}", err=True)
        for folder in c.copied:
            click.echo(f"{c.package.path}: copied to {folder} and verified there")
        for repair in c.repaired:
            click.echo(f"warning: {c.package.path}: {repair}", err=True)
        uncopied += bool(c.copy_problems)
        for problem in c.copy_problems:
            click.echo(f"error: {c.package.path}: {problem}", err=True)
    if orphans[0]:
        click.echo(f"warning: orphans/: {orphans[0]} file(s) set aside from runs that crashed wait in {orphans[1]}, "
                   "in no package of the register (after a registry restored from an older backup, perhaps the "
                   "only copy of their letters): compare their manifests with the register (gateway archive list, "
                   "gateway letters show NUMBER) and remove them by hand once they are not needed; the gateway "
                   "never removes them", err=True)
    log = logging.getLogger("gateway.archive")
    if bad:
        log.error("ALERT archive: %d package(s) failed verification", bad)
    if uncopied:
        log.error("ALERT archive: %d package(s) without every copy (their originals are kept in the message store)",
                  uncopied)
    if bad or uncopied:
        sys.exit(1)


@archive.command("verify")
@click.option("--month", help="YYYY-MM (default: every package).")
@pass_state
def archive_verify(state: State, month: str | None) -> None:
    """Re-read every package and check every hash; then release the message store's copies."""
    from gateway.archive.packer import Archiver

    archiver = Archiver(state.config, state.registry())
    _report_checks(archiver.verify(_month(month) if month else None), (archiver.orphans(), archiver.root / "orphans"))


@archive.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def archive_list(state: State, as_json: bool) -> None:
    from gateway.services.queries import archive_packages

    rows = archive_packages(state.registry())
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} package(s) in {state.config.archive_dir}")
    for column in ("Month", "Category", "Kind", "Path", "Letters", "Size", "Status", "Verified"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["month"], r["category"], r["kind"], r["path"], str(r["letters"]), str(r["size"]), r["status"],
                      (r["verified_at"] or "")[:19])
    wide_console().print(table)


@archive.command("purge")
@click.option("--approved-by", metavar="LOGIN",
              help="The leader who approved the destruction, by their sign-in name (required to destroy anything).")
@click.option("--dry-run", is_flag=True,
              help="Only show what would be destroyed (with --approved-by, the approver is checked as for the purge).")
@pass_state
def archive_purge(state: State, approved_by: str | None, dry_run: bool) -> None:
    """Destroy packages past their category's retention, never letters on legal hold; records who approved."""
    from gateway.archive.packer import Archiver
    from gateway.services.people import DESTRUCTION_APPROVER, People

    approver = None
    # A dry run naming its approver checks them as the purge does: its yes means the purge would go ahead.
    if not dry_run or approved_by is not None:
        if not (approved_by or "").strip():
            fail("destruction needs --approved-by LOGIN, a person of the web register with the "
                 f"{DESTRUCTION_APPROVER} role (or --dry-run to see what is due)", code=2)
        try:
            approver = People(state.config, state.registry()).approver(approved_by or "", DESTRUCTION_APPROVER)
        except LookupError as exc:
            fail(f"--approved-by: {exc}: destruction is approved by a person of the web register with the "
                 f"{DESTRUCTION_APPROVER} role", code=2)
    destroyed, kept = Archiver(state.config, state.registry()).purge(
        approved_by=approver.login if approver else "", approver_name=approver.name if approver else "",
        actor=actor(None), audit_actor=f"cli:{actor(None)}", now=datetime.now(timezone.utc), dry_run=dry_run)
    for path in destroyed:
        click.echo(f"{path}: {'would be destroyed' if dry_run else 'destroyed'}")
    for reason in kept:
        click.echo(f"kept {reason}")
    if not destroyed:
        click.echo("nothing is past retention")


# -- borrowing from the archive (借阅) --------------------------------------------------------
_AS = click.option("--as", "as_login", metavar="LOGIN", required=True, help="Who acts (a person of the web register).")


@archive.command("borrow")
@click.argument("number")
@click.option("--reason", required=True, help="Why the archived letter is to be read.")
@click.option("--days", type=int, required=True, help="For how many days ([borrowing] max_days at most).")
@_AS
@pass_state
def archive_borrow(state: State, number: str, reason: str, days: int, as_login: str) -> None:
    """Ask to read an archived letter: the head of its department (a confidential one: a leader in
    charge) approves; prints the request's id."""
    from gateway.services.access import Refused
    from gateway.services.borrowing import Borrowings

    try:
        borrowing_id = Borrowings(state.config, state.registry()).request(principal(state, as_login), number,
                                                                         reason=reason, days=days)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    click.echo(f"{number}: borrowing {borrowing_id} requested, awaiting approval")
    state.wake_daemon()


@archive.command("grant")
@click.argument("borrowing_id", type=ROW_ID)
@click.option("--refuse", is_flag=True, help="Refuse the request instead.")
@click.option("--comment", default="", help="A remark for the borrower.")
@_AS
@pass_state
def archive_grant(state: State, borrowing_id: int, refuse: bool, comment: str, as_login: str) -> None:
    """Grant (or --refuse) a borrowing request, as its approver: the period counts from now."""
    from gateway.services.access import Refused
    from gateway.services.borrowing import Borrowings

    try:
        done = Borrowings(state.config, state.registry()).decide(principal(state, as_login), borrowing_id,
                                                                 grant=not refuse, comment=comment)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    until = f" until {done.ends_at.isoformat(timespec='minutes')}" if done.ends_at else ""
    click.echo(f"borrowing {borrowing_id}: {done.status}{until}")
    state.wake_daemon()


@archive.command("return")
@click.argument("borrowing_id", type=ROW_ID)
@_AS
@pass_state
def archive_return(state: State, borrowing_id: int, as_login: str) -> None:
    """Return a borrowed letter before its period ends."""
    from gateway.services.access import Refused
    from gateway.services.borrowing import Borrowings

    try:
        Borrowings(state.config, state.registry()).give_back(principal(state, as_login), borrowing_id)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    click.echo(f"borrowing {borrowing_id}: returned")
