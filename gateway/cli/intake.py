"""`gateway ingest`: files through the same pipeline as the daemon; with --channel, the files are
the scans of one paper letter."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from gateway.cli.state import EX_TEMPFAIL, State, actor, by_option, fail, pass_state

if TYPE_CHECKING:
    from gateway.registry import Registry
    from gateway.services.paper import PaperRefused

_REGISTERED = {"registered": "registered as", "duplicate": "already registered as",
               "known": "already registered as", "answer": "an answer, recorded on"}
_PAPER_OPTIONS = ("sender", "organisation", "address", "phone", "email", "subject", "received_at", "note",
                  "reference")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--channel", type=click.Choice(["post", "courier", "front-desk"]),
              help="The files are the scans (PDF, TIFF, JPEG, PNG) of ONE paper letter that came this way.")
@click.option("--sender", help="A paper letter's sender (name); needed with --channel.")
@click.option("--organisation", default="", help="The sender's organisation.")
@click.option("--address", default="", help="The sender's postal address.")
@click.option("--phone", default="", help="The sender's telephone number.")
@click.option("--email", default="", help="The sender's e-mail address: receipts go only there.")
@click.option("--subject", default="", help="The letter's subject (default: channel, sender and pages).")
@click.option("--received-at", default="", help="When it arrived, e.g. '2026-11-22 09:30' (default: now; "
                                                "the organisation's time zone unless an offset is given).")
@click.option("--note", default="", help="A note of the registry office.")
@click.option("--reference", default="", help="The sender's reference (来文字号) printed on the letter, "
                                               "e.g. 国办发〔2026〕12号.")
@by_option
@pass_state
def ingest(state: State, files: tuple[Path, ...], channel: str | None, sender: str | None, organisation: str,
           address: str, phone: str, email: str, subject: str, received_at: str, note: str, reference: str,
           by: str | None) -> None:
    """Push message files (.eml) and fax files (TIFF, PDF) through the same pipeline as the daemon.

    With --channel post|courier|front-desk the files are the scans of one paper letter instead."""
    if channel is not None:
        _paper(state, files, channel, sender or "", organisation, address, phone, email, subject, received_at,
               note, reference, by)
        return
    given = [name for name, value in zip(_PAPER_OPTIONS, (sender, organisation, address, phone, email, subject,
                                                          received_at, note, reference), strict=True) if value]
    if given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} describes a paper letter: give --channel too")
    if by is not None:
        # Nothing would record it: a message or fax file is registered as the daemon registers it.
        raise click.UsageError("--by names the clerk who registers a paper letter (with --channel); a message "
                               "or fax file is registered by the gateway as it came, under no one's name: "
                               "leave --by out")
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
            click.echo(f"{_shown(path)}: {done.reason}", err=True)
        elif done.number:
            click.echo(f"{_shown(path)}: {_REGISTERED[done.result]} {done.number}")
        elif done.result == "released":
            tempfail += 1
            link.wake()
            click.echo(f"{_shown(path)}: spooled as item {done.item_id}; the registry is unavailable, "
                       f"the daemon registers it when it is back ({done.reason})", err=True)
        else:
            failures += 1
            click.echo(f"{_shown(path)}: {done.result} (item {done.item_id}): {done.reason}", err=True)
    link.close()
    registry.close()
    sys.exit(1 if failures else EX_TEMPFAIL if tempfail else 0)


def _paper(state: State, files: tuple[Path, ...], channel: str, sender: str, organisation: str, address: str,
           phone: str, email: str, subject: str, received_at: str, note: str, reference: str,
           by: str | None) -> None:
    """The files as the scans of one paper letter, through the service the web page uses."""
    from zoneinfo import ZoneInfo

    from gateway.daemon.pipeline import Pipeline
    from gateway.services.paper import (MAX_SCAN_BYTES, FieldError, PaperLetter, PaperRefused, Scan, parse_received,
                                        register_paper)
    from gateway.spool import SpoolError

    cfg = state.config_with_rules
    scans = []
    size = 0
    for path in files:
        try:
            # As `ingest_file`: a pipe or a device given by mistake would hold the command (or fill
            # the memory, /dev/zero) before any check; so would a file far past the letter's limit.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    click.echo(f"error: {_shown(path)}: not a regular file (a pipe or a device?)", err=True)
                    sys.exit(1)
                size += info.st_size
                if size > MAX_SCAN_BYTES:
                    _refused(PaperRefused([FieldError("scans", "the files together exceed %(limit)s MiB",
                                                      {"limit": MAX_SCAN_BYTES // 2**20})]))
                with os.fdopen(fd, "rb", closefd=False) as file:
                    scans.append(Scan(path.name, file.read()))
            finally:
                os.close(fd)
        except OSError as exc:
            click.echo(f"error: {_shown(path)}: cannot read: {exc.strerror}", err=True)
            sys.exit(1)
    try:
        when = parse_received(received_at, ZoneInfo(cfg.model.gateway.timezone)) if received_at else None
    except PaperRefused as refused:
        _refused(refused)
    letter = PaperLetter(channel=channel, sender_name=sender, scans=scans, organisation=organisation,
                         address=address, phone=phone, email=email, subject=subject, note=note, received_at=when,
                         reference=reference)
    spool, registry, link = state.spool(), state.registry(), state.link()
    try:
        done = register_paper(cfg, spool, Pipeline(cfg, spool, registry, link.publish), letter,
                              by=_operator(state, registry, by), intake="file")
        if done.result == "released":
            link.wake()  # a running daemon registers it as soon as the registry is back
    except PaperRefused as refused:
        _refused(refused)
    except SpoolError as exc:
        click.echo(f"error: not taken: {exc}", err=True)
        sys.exit(EX_TEMPFAIL if exc.full else 1)
    finally:
        link.close()
        registry.close()
    names = ", ".join(_shown(p) for p in files)
    if done.number:
        click.echo(f"{names}: {_REGISTERED[done.result]} {done.number} ({channel}, {done.pages} page(s))")
    elif done.result == "released":
        click.echo(f"{names}: spooled as item {done.item_id}; the registry is unavailable, "
                   f"the daemon registers it when it is back ({done.reason})", err=True)
        sys.exit(EX_TEMPFAIL)
    else:
        click.echo(f"{names}: {done.result} (item {done.item_id}): {done.reason}", err=True)
        sys.exit(1)


def _operator(state: State, registry: Registry, by: str | None) -> str:
    """The name the letter is registered under: the operator's own (People.operator), checked before
    anything is spooled. A registry gone since it was opened spools nothing either: exit 75, run it again."""
    from gateway.registry import RegistryUnavailable
    from gateway.services.people import People

    try:
        return People(state.config, registry).operator(by, actor(None)).login
    except ValueError as exc:
        fail(f"--by: {exc}: a person registers a paper letter as themselves, on the web page (/paper); "
             "--by names yourself")
    except RegistryUnavailable as exc:
        fail(f"not taken, --by could not be checked: {exc}; nothing was spooled, run it again", EX_TEMPFAIL)


def _shown(path: Path) -> str:
    """A file's path as a terminal should show it: bytes of another encoding and controls (a line
    break in a name) escaped, never written raw."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _refused(refused: PaperRefused) -> NoReturn:
    for error in refused.errors:
        click.echo(f"error: {_option(error.field)}: {error}", err=True)
    sys.exit(1)


def _option(field: str) -> str:
    return {"sender_name": "--sender", "scans": "FILES", "channel": "--channel"}.get(
        field, f"--{field.replace('_', '-')}")
