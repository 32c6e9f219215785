"""`gateway letters`: the register, and a person's steps on a letter."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.panel import Panel
from rich.table import Table

from gateway.addressing import shown_address
from gateway.cli.lazy import LazyGroup
from gateway.cli.state import (COUNT, RegisterDay, State, as_option, by_option, fail, pass_state, principal, print_json,
                               print_trace, wide_console)


F = TypeVar("F", bound=Callable[..., Any])


def register_filters(command: F) -> F:
    """The filters `list` and `search` share: status, department, category, channel, received days."""
    for option in reversed([
        click.option("--status", help="A state, or open: any state before closed."), click.option("--department"),
        click.option("--category"),
        click.option("--channel", type=click.Choice(["email", "fax", "post", "courier", "front-desk"])),
        click.option("--since", type=RegisterDay(), help="Received on or after this day (local time)."),
        click.option("--until", type=RegisterDay(), help="Received before the end of this day."),
    ]):
        command = option(command)
    return command


def _address(address: str) -> str:
    """A sender's address as shown, its domain in Unicode where that is safe, then as the letter gave it."""
    shown = shown_address(address)
    return f"{shown} ({address})" if shown != address else address


def check_filters(state: State, status: str | None, department: str | None, category: str | None) -> None:
    """A misspelt filter is refused by name, not answered with no letters at all."""
    from gateway.config import CATEGORY_NAMES
    from gateway.registry.lifecycle import STATES

    for hint, value, known in (("--status", status, (*STATES, "open")),
                               ("--department", department, state.config.departments),
                               ("--category", category, CATEGORY_NAMES)):
        if value is None or value in known:
            continue
        # A department since removed from the configuration still has its letters.
        if hint == "--department" and state.registry().department_in_register(value):
            continue
        raise click.BadParameter(f"{value!r} is none of {', '.join(sorted(known))}", param_hint=hint)


# gateway letters reply|approve|return live in gateway/cli/replies.py
@click.group(cls=LazyGroup, lazy={"reply": "gateway.cli.replies:reply", "approve": "gateway.cli.replies:approve",
                                  "return": "gateway.cli.replies:give_back"})
def letters() -> None:
    """The register."""


@letters.command("list")
@register_filters
@click.option("--overdue", is_flag=True, help="Only open letters past their deadline.")
@click.option("--as-of", "as_of", type=RegisterDay(),
              help="With --overdue: overdue by the end of this day (local) instead of now.")
@click.option("--limit", type=COUNT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@as_option
@pass_state
def letters_list(state: State, status: str | None, department: str | None, category: str | None,
                 channel: str | None, since: datetime | None, until: datetime | None, overdue: bool,
                 as_of: datetime | None, limit: int | None, as_json: bool, as_login: str | None) -> None:
    """List letters, oldest first (with --as, those the person may see; subjects they may not read blank)."""
    from gateway.services import queries
    from gateway.services.access import Access

    check_filters(state, status, department, category)
    cfg = state.config
    registry = state.registry()
    who = principal(state, as_login)
    rows = queries.list_letters(cfg, registry, status=status, department=department, category=category,
                                channel=channel, since=since.date() if since else None,
                                until=until.date() if until else None, overdue=overdue,
                                as_of=as_of.date() if as_of else None, limit=limit,
                                scope=Access(cfg, registry).scope(who))
    readable = Access(cfg, registry).content_ids(who, rows)
    for r in rows:
        if r.id not in readable:
            r.subject = ""  # a detached copy: nothing is written back
    if as_json:
        print_json([queries.letter_summary(r) for r in rows])
        return
    tz = queries.local_zone(cfg)
    table = Table(title=f"{len(rows)} letter(s)")
    for column in ("Number", "Received", "Ch", "From", "Subject", "Dept", "Category", "Status", "Deadline", "Flags"):
        table.add_column(column, overflow="fold", no_wrap=column in ("Number", "Received", "Deadline"))
    for r in rows:
        sender = _from(r)
        urgent = "" if r.urgency == "regular" else f" ({r.urgency})"
        table.add_row(r.number, r.received_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), r.channel,
                      sender, r.subject or "(no subject)", r.department or "-", (r.category or "-") + urgent,
                      r.status, r.deadline.astimezone(tz).strftime("%Y-%m-%d") if r.deadline else "-",
                      " ".join(r.flags))
    wide_console().print(table)


def _from(letter: Any) -> str:
    """The table's one "From" column: the register entry's sender, its address (or fax number)
    first, since a name alone may not tell two senders apart."""
    from gateway.services.queries import letter_sender

    name, address = letter_sender(letter)
    return shown_address(address) or name or "-"


@letters.command("search")
@click.argument("query")
@register_filters
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@as_option
@by_option
@pass_state
def letters_search(state: State, query: str, status: str | None, department: str | None, category: str | None,
                   channel: str | None, since: datetime | None, until: datetime | None, limit: int, as_json: bool,
                   as_login: str | None, by: str | None) -> None:
    """Full-text search: subject, text (a fax's read text too), sender, attachment names, numbers.

    Chinese words are found inside sentences and in either script (合同, 投訴 = 投诉); Latin words
    by prefix; every word must occur. Best match first; an audited search."""
    from gateway.services import queries
    from gateway.services.access import Access, QueueQuery

    check_filters(state, status, department, category)
    registry = state.registry()
    access = Access(state.config, registry)
    filters = QueueQuery(queue="all", status=status, department=department, category=category, channel=channel,
                         since=since.date() if since else None, until=until.date() if until else None,
                         per_page=limit)
    page = access.search(principal(state, as_login, by), query, filters, address="cli")
    rows = page.rows
    for r in rows:
        if r.id not in page.content:
            r.subject = ""  # a detached copy: nothing is written back
    if as_json:
        print_json({"query": query, "matches": page.total, "letters": [queries.letter_summary(r) for r in rows]})
        return
    tz = queries.local_zone(state.config)
    table = Table(title=f"{page.total} letter(s) match {query!r}" + (f", the best {len(rows)} shown"
                                                                  if page.total > len(rows) else ""))
    for column in ("Number", "Received", "Ch", "From", "Subject", "Dept", "Status"):
        table.add_column(column, overflow="fold", no_wrap=column in ("Number", "Received"))
    for r in rows:
        table.add_row(r.number, r.received_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), r.channel,
                      _from(r), r.subject or "-",
                      r.department or "-", r.status)
    wide_console().print(table)


@letters.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True)
@as_option
@by_option
@pass_state
def letters_show(state: State, number: str, as_json: bool, as_login: str | None, by: str | None) -> None:
    """Every field of one letter, its attachments and its events (an audited read of its content)."""
    from dataclasses import asdict

    from gateway.services import queries
    from gateway.services.access import Access
    from gateway.stages.verdict import describe

    registry = state.registry()
    access = Access(state.config, registry)
    view = access.letter(principal(state, as_login, by), number, address="cli")
    if view is None:
        fail(f"no letter {number}")
    if not view.rights.content:
        # The register entry the web page shows, and why the content is not shown.
        entry = {**asdict(access.entry(view.letter)), "content": f"not yours to read: {Access.withheld(view.letter)}"}
        entry["received_at"] = queries.iso(view.letter.received_at)
        if as_json:
            print_json(entry)
        else:
            entry["sender_address"] = _address(entry["sender_address"])
            for key, value in entry.items():
                click.echo(f"{key}: {'-' if value in (None, '', []) else value}")
        return
    letter, detail = view.letter, queries.letter_detail(view.letter, registry.outbox(letter_id=view.letter.id),
                                                        queries.ocr_reading(registry, view.letter.id))
    if as_json:
        print_json(detail)
        return
    tz = queries.local_zone(state.config)
    console = wide_console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    for key, value in detail.items():
        if key in ("attachments", "events", "recipients", "envelope", "fax", "body_text", "classification",
                   "outbox", "trust", "text_read"):
            continue
        if key.endswith("_at") or key == "deadline":
            value = datetime.fromisoformat(value).astimezone(tz).isoformat(" ") if value else None
        if key == "sender_address":
            value = _address(value)
        fields.add_row(key, "-" if value in (None, "", []) else
                       ("; ".join(value) if isinstance(value, list) else str(value)))
    fields.add_row("recipients", json.dumps(detail["recipients"], ensure_ascii=False))
    if detail["envelope"]:
        fields.add_row("envelope", json.dumps(detail["envelope"], ensure_ascii=False))
    if letter.channel == "fax":
        fields.add_row("fax", json.dumps(detail["fax"], ensure_ascii=False))
    if letter.channel == "email" or detail["trust"]:
        fields.add_row("Sender verified", describe(detail["trust"]))
    if detail["text_read"]:
        fields.add_row("Text read", _text_read(detail["text_read"]))
    console.print(fields)
    print_trace(console, letter.classification)
    console.print(Panel(letter.body_text or "(no text)", title="Text", title_align="left"))
    attachments = Table(title="Attachments")
    for column in ("#", "Name", "Detected type", "Size", "SHA-256"):
        attachments.add_column(column, overflow="fold")
    for i, a in enumerate(detail["attachments"], 1):
        attachments.add_row(str(i), a["filename"], a["detected_type"], str(a["size"]), a["sha256"])
    console.print(attachments)
    events = Table(title="Events")
    for column in ("At", "Actor", "Action", "From", "To", "Details"):
        events.add_column(column, overflow="fold")
    for e in detail["events"]:
        events.add_row(datetime.fromisoformat(e["at"]).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
                       e["actor"], e["action"], e["from_department"] or "", e["to_department"] or "",
                       json.dumps(e["details"], ensure_ascii=False))
    console.print(events)
    if detail["outbox"]:
        mails = Table(title="Mail sent about it")
        for column in ("#", "Kind", "To", "Status", "Attempts", "Last error"):
            mails.add_column(column, overflow="fold")
        for m in detail["outbox"]:
            mails.add_row(str(m["id"]), m["kind"], m["recipient"], m["status"], str(m["attempts"]),
                          m["last_error"] or "")
        console.print(mails)


@letters.command("reassign")
@click.argument("number")
@click.argument("department")
@click.option("--reason", required=True, help="Why: recorded in the letter's events.")
@click.option("--by", help="Who decides (default: the user running the command).")
@as_option
@pass_state
def letters_reassign(state: State, number: str, department: str, reason: str, by: str | None,
                     as_login: str | None) -> None:
    """Move a letter to another department; its owners are notified. Counts against classification accuracy."""
    if not reason.strip():
        raise click.BadParameter("say why", param_hint="--reason")
    owners = state.config.departments[department].owners if department in state.config.departments else []
    _act(state, number, "reassign", reason, by, as_login, department=department)
    click.echo(f"{', '.join(owners)} notified")


def _act(state: State, number: str, action: str, text: str, by: str | None, as_login: str | None,
         **options: Any) -> str:
    """One step through the access service: refused with the reason when the person may not."""
    from gateway.services.access import Access, Refused

    access = Access(state.config, state.registry())
    try:
        done = access.act(principal(state, as_login, by), number, action, text=text, address="cli", **options)
    except LookupError as exc:
        fail(str(exc))
    except Refused as exc:
        fail(str(exc))
    click.echo(done.replace("→", "->"))
    if action in ("close", "reassign"):
        state.wake_daemon()  # the result or the notification may be on its way
    return done


def _step(state: State, number: str, action: str, text: str, by: str | None, as_login: str | None = None) -> None:
    _act(state, number, action, text, by, as_login)


@letters.command("ack")
@click.argument("number")
@click.option("--text", default="", help="A remark, recorded with the event.")
@by_option
@as_option
@pass_state
def letters_ack(state: State, number: str, text: str, by: str | None, as_login: str | None) -> None:
    """The department has received the letter (routed -> acknowledged)."""
    _step(state, number, "ack", text, by, as_login)


@letters.command("progress")
@click.argument("number")
@click.option("--text", default="")
@by_option
@as_option
@pass_state
def letters_progress(state: State, number: str, text: str, by: str | None, as_login: str | None) -> None:
    """Work on the letter has begun (-> in-progress)."""
    _step(state, number, "progress", text, by, as_login)


@letters.command("answer")
@click.argument("number")
@click.option("--text", default="", help="What was answered.")
@by_option
@as_option
@pass_state
def letters_answer(state: State, number: str, text: str, by: str | None, as_login: str | None) -> None:
    """The department has answered the sender (-> answered)."""
    _step(state, number, "answer", text, by, as_login)


@letters.command("close")
@click.argument("number")
@click.option("--result", required=True, help="The outcome, recorded with the event.")
@by_option
@as_option
@pass_state
def letters_close(state: State, number: str, result: str, by: str | None, as_login: str | None) -> None:
    """The letter is dealt with (-> closed)."""
    if not result.strip():
        raise click.BadParameter("say what the outcome was", param_hint="--result")
    _step(state, number, "close", result, by, as_login)


@letters.command("note")
@click.argument("number")
@click.argument("text")
@by_option
@as_option
@pass_state
def letters_note(state: State, number: str, text: str, by: str | None, as_login: str | None) -> None:
    """Record a remark on the letter; its state does not change."""
    if not text.strip():
        raise click.BadParameter("an empty note", param_hint="TEXT")
    _step(state, number, "note", text, by, as_login)


@letters.command("reference")
@click.argument("number")
@click.argument("reference")
@by_option
@as_option
@pass_state
def letters_reference(state: State, number: str, reference: str, by: str | None, as_login: str | None) -> None:
    """Put the letter's sender's reference (来文字号) right, e.g. 国办发〔2026〕12号; "" clears it."""
    _step(state, number, "reference", reference, by, as_login)


@letters.command("hold")
@click.argument("number")
@click.option("--reason", required=True)
@click.option("--release", is_flag=True, help="Lift the hold instead.")
@by_option
@as_option
@pass_state
def letters_hold(state: State, number: str, reason: str, release: bool, by: str | None,
                 as_login: str | None) -> None:
    """Put a letter on legal hold: its archive package is never destroyed while it lasts."""
    _act(state, number, "hold", reason, by, as_login, on=not release)


@letters.command("extract")
@click.argument("number")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@as_option
@by_option
@pass_state
def letters_extract(state: State, number: str, directory: Path, as_login: str | None, by: str | None) -> None:
    """Write a letter's attachments into DIRECTORY, under their safe names (an audited read)."""
    from gateway.archive.packer import ArchiveError
    from gateway.services.access import Access, Forbidden

    who = principal(state, as_login, by)
    try:
        written = Access(state.config, state.registry()).extract(who, number, directory, address="cli")
    except (LookupError, Forbidden, ArchiveError) as exc:  # ArchiveError: its archived copy is gone or damaged
        fail(str(exc))
    for target in written:
        click.echo(str(target))


@letters.command("incomplete")
@click.argument("number")
@click.option("--missing", "missing", multiple=True, required=True,
              help="What the sender must still send (repeat for each item).")
@click.option("--by", "by_day", required=True, type=RegisterDay(),
              help="The day it is needed by (local time, YYYY-MM-DD).")
@click.option("--actor", "by", help="Who decides (default: the user running the command).")
@as_option
@pass_state
def letters_incomplete(state: State, number: str, missing: tuple[str, ...], by_day: datetime, by: str | None,
                       as_login: str | None) -> None:
    """Materials are missing: ask the sender for them by a day; the letter waits (-> awaiting-sender),
    its deadline paused."""
    from gateway.services.access import Refused
    from gateway.services.incomplete import Incomplete

    try:
        marked = Incomplete(state.config, state.registry()).mark(principal(state, as_login, by), number,
                                                                 missing=list(missing), by=by_day.date())
    except (LookupError, Refused) as exc:
        fail(str(exc))
    if marked.sent_to:
        click.echo(f"{number}: awaiting the sender; the request goes to {marked.sent_to}")
        state.wake_daemon()
    else:
        click.echo(f"{number}: awaiting the sender; there is no e-mail address to ask them at: contact them by "
                   "other means (recorded on the letter)")


@letters.command("withdraw")
@click.argument("number")
@click.option("--reason", default="", help="A remark, recorded with the event.")
@by_option
@as_option
@pass_state
def letters_withdraw(state: State, number: str, reason: str, by: str | None, as_login: str | None) -> None:
    """The sender never sent the missing materials: close the letter as withdrawn."""
    from gateway.services.access import Refused
    from gateway.services.incomplete import Incomplete

    try:
        before, after = Incomplete(state.config, state.registry()).withdraw(principal(state, as_login, by), number,
                                                                            reason=reason)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    click.echo(f"{number}: {before} -> {after}")


@letters.command("proceed")
@click.argument("number")
@click.option("--reason", default="", help="A remark, recorded with the event.")
@by_option
@as_option
@pass_state
def letters_proceed(state: State, number: str, reason: str, by: str | None, as_login: str | None) -> None:
    """Go on without the missing materials: the letter is in progress again, its deadline counted on
    from the working days it had left."""
    from gateway.services.access import Refused
    from gateway.services.incomplete import Incomplete
    from gateway.services.queries import local_zone

    try:
        before, after, deadline = Incomplete(state.config, state.registry()).proceed(
            principal(state, as_login, by), number, reason=reason)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    due = f", deadline {deadline.astimezone(local_zone(state.config)):%Y-%m-%d %H:%M}" if deadline else ""
    click.echo(f"{number}: {before} -> {after}{due}")


@letters.command("circulate")
@click.argument("number")
@click.option("--reader", "readers", multiple=True, required=True,
              help="A reader, in order (repeat): a sign-in name, or a department id (its head signs for it).")
@by_option
@as_option
@pass_state
def letters_circulate(state: State, number: str, readers: tuple[str, ...], by: str | None,
                      as_login: str | None) -> None:
    """Circulate a letter to readers in order (the registry office or a leader): each reads and signs
    it within [circulation] reading_working_days, and only then does the next one get it."""
    from gateway.services.access import Refused
    from gateway.services.circulation import Circulations

    try:
        Circulations(state.config, state.registry()).start(principal(state, as_login, by), number, list(readers))
    except (LookupError, Refused) as exc:
        fail(str(exc))
    click.echo(f"{number}: circulated to {', '.join(readers)}; {readers[0]} reads it first")
    state.wake_daemon()


@letters.command("sign")
@click.argument("number")
@click.option("--instruction", default="", help="An instruction (批示) for the handling department.")
@click.option("--as", "as_login", metavar="LOGIN", required=True,
              help="The reader whose turn it is (a person of the web register).")
@pass_state
def letters_sign(state: State, number: str, instruction: str, as_login: str) -> None:
    """Sign a circulated letter as the reader whose turn it is; the next reader gets it."""
    from gateway.services.access import Refused
    from gateway.services.circulation import Circulations

    circulations = Circulations(state.config, state.registry())
    try:
        following = circulations.sign(principal(state, as_login), number, instruction)
    except (LookupError, Refused) as exc:
        fail(str(exc))
    if following is None:
        click.echo(f"{number}: signed; every reader has signed: the circulation is finished")
    else:
        click.echo(f"{number}: signed; {circulations.name(following.kind, following.target)} "
                   f"({following.target}) reads it next")
    state.wake_daemon()


def _text_read(reading: dict[str, Any]) -> str:
    """How a fax's or scan's text was read, on one line: reader, each page's confidence, pages to check."""
    pages = ", ".join(f"p.{n} {'-' if c is None else f'{c * 100:.0f}%'}"
                      for n, c in enumerate(reading["confidences"], 1))
    line = f"{reading['version'] or reading['reader']} ({reading['reader']}); {pages or 'no page read'}"
    if reading["low_confidence"]:
        line += (f"; low confidence on page(s) {', '.join(map(str, reading['low_confidence']))}: "
                 "compare with the original")
    return line
