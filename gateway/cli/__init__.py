"""The `gateway` command."""
from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gateway import config as config_mod
from gateway import logs
from gateway.config import Config, ConfigError

EX_TEMPFAIL = 75


class State:
    def __init__(self, config_arg: str | None):
        self.config_arg = config_arg
        self._config: Config | None = None
        self._with_rules = False

    @property
    def config(self) -> Config:
        """The configuration; the rules are read only by commands that classify."""
        if self._config is None:
            self._config = self._load(False)
        return self._config

    @property
    def config_with_rules(self) -> Config:
        if self._config is None or not self._with_rules:
            self._config = self._load(True)
            self._with_rules = True
        return self._config

    def _load(self, with_rules: bool) -> Config:
        try:
            config = config_mod.load(self.config_arg, with_rules=with_rules)
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(f"error: {issue}", err=True)
            sys.exit(2)
        logs.setup(config.model.logging.level, timestamps=config.model.logging.timestamps)
        return config

    def registry(self) -> Any:
        from gateway.registry import Registry, RegistryUnavailable

        registry = Registry.from_config(self.config)
        try:
            registry.upgrade()
        except RegistryUnavailable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EX_TEMPFAIL)
        return registry

    def letter(self, number: str) -> Any:
        """The letter with this number, or exit 1 saying there is none."""
        letter = self.registry().letter(number)
        if letter is None:
            click.echo(f"error: no letter {number}", err=True)
            sys.exit(1)
        return letter

    def spool(self) -> Any:
        from gateway.spool import Spool

        cfg = self.config
        return Spool(cfg.spool_dir, cfg.message_dir, max_attempts=cfg.model.spool.max_attempts)

    def link(self) -> Any:
        from gateway.daemon.events import DaemonLink

        return DaemonLink(self.config.endpoint(self.config.model.daemon.wakeup_endpoint))


pass_state = click.make_pass_decorator(State)


@click.group()
@click.option("--config", "config_arg", metavar="PATH", envvar=config_mod.ENV_VAR,
              help="Configuration file (default: $GATEWAY_CONFIG, else the checkout's config/gateway.toml, "
                   "else /etc/gateway/gateway.toml).")
@click.version_option(package_name="correspondence-gateway")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """Correspondence Gateway: receive, register, route and track letters."""
    ctx.obj = State(config_arg)


@main.command()
@pass_state
def run(state: State) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    from gateway.daemon.daemon import Daemon

    sys.exit(Daemon(state.config_with_rules, state.config_arg).run())


@main.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the configuration; print every error with file, key and reason."""
    try:
        cfg = config_mod.load(state.config_arg)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        click.echo(f"{len(exc.issues)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{cfg.path}: OK ({len(cfg.model.departments)} departments, state in {cfg.state_dir}, "
               f"registry {cfg.registry_url.split('@')[-1]})")
    rules = cfg.ruleset
    click.echo(f"{rules.file}: OK ({len(rules)} rule(s), {len(rules.keywords)} keyword(s), version {rules.version})")


def _daemon_pid(config: Config) -> int | None:
    """The pid of the daemon holding this state directory's lock, or None."""
    import fcntl
    import os

    path = config.run_dir / "gateway.pid"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_state
def status(state: State, as_json: bool) -> None:
    """The daemon, the spool, the register, and the health of every IMAP folder."""
    from gateway.registry.ledger import ImapLedger

    cfg = state.config
    spool = state.spool()
    registry = state.registry()
    pid = _daemon_pid(cfg)
    folders = {(r["account"], r["folder"]): r for r in ImapLedger(registry).status()}
    imap = []
    for account in cfg.model.imap.accounts:
        for folder in account.folders:
            row = folders.get((account.name, folder), {})
            imap.append({"account": account.name, "folder": folder, "host": account.host,
                         "last_poll_at": _iso(row.get("last_poll_at")), "last_error": row.get("last_error"),
                         "last_error_at": _iso(row.get("last_error_at")), "backlog": row.get("backlog"),
                         "failing": row.get("failing", 0), "uidvalidity": row.get("uidvalidity") or None,
                         "last_uid": row.get("last_uid")})
    outbox = registry.outbox_counts()
    data = {"daemon": {"running": pid is not None, "pid": pid}, "letters": registry.count(),
            "spool": {"waiting": len(spool.pending()), "quarantined": len(spool.quarantined())},
            "outbox": {"pending": outbox.get("pending", 0), "sent": outbox.get("sent", 0),
                       "dead": outbox.get("dead", 0), "relay": cfg.model.outbound.relay or None},
            "imap": imap}
    if as_json:
        _print_json(data)
        return
    console = Console()
    console.print(f"daemon: {'running, pid ' + str(pid) if pid else 'not running'}; {data['letters']} letter(s); "
                  f"spool: {data['spool']['waiting']} waiting, {data['spool']['quarantined']} quarantined")
    out = data["outbox"]
    console.print(f"outbox: {out['pending']} pending, {out['dead']} dead-lettered, {out['sent']} sent; "
                  f"relay {out['relay'] or 'not configured'}")
    if imap:
        table = Table(title="IMAP folders")
        for column in ("account/folder", "last successful poll", "backlog", "failing", "last error"):
            table.add_column(column, overflow="fold")
        for row in imap:
            error = f"{row['last_error']} ({row['last_error_at']})" if row["last_error"] else ""
            table.add_row(f"{row['account']}/{row['folder']}", row["last_poll_at"] or "never",
                          "" if row["backlog"] is None else str(row["backlog"]), str(row["failing"]),
                          error)
        console.print(table)


@main.group()
def db() -> None:
    """The registry's schema."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply pending schema migrations."""
    from gateway.registry import schema

    registry = state.registry()
    click.echo(f"registry {registry.safe_url} is at revision {schema.current_revision(registry.engine)}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def ingest(state: State, files: tuple[Path, ...]) -> None:
    """Push message files (.eml) and fax files (TIFF, PDF) through the same pipeline as the daemon."""
    from gateway.faults import checkpoint
    from gateway.daemon.pipeline import Pipeline
    from gateway.spool import SpoolError

    cfg = state.config_with_rules
    spool, registry, link = state.spool(), state.registry(), state.link()
    pipeline = Pipeline(cfg, spool, registry, link.publish)
    failures = tempfail = 0
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}", err=True)
            failures += 1
            continue
        meta: dict[str, Any] = {"channel": "email", "intake": "file",
                                "source": {"path": str(path.resolve()), "size": len(raw)}}
        if raw[:4] in (b"II*\0", b"MM\0*") or raw[:5] == b"%PDF-":  # a fax file, not a message
            from gateway.adapters.fax_drop import fax_facts
            from gateway.stages.fax.document import FaxUnreadable, read_fax
            from gateway.stages.fax.metadata import find_sidecar

            try:
                meta.update(channel="fax", fax=fax_facts(cfg, path, read_fax(raw, path.name), find_sidecar(path)))
            except FaxUnreadable as exc:
                click.echo(f"{path}: {exc}", err=True)
                failures += 1
                continue
        try:
            item = spool.enqueue(raw, meta, claim=True)
        except SpoolError as exc:
            click.echo(f"{path}: {exc}", err=True)
            failures += 1
            continue
        checkpoint("after-spool")
        [outcome] = pipeline.process([item])
        if outcome.number:
            word = {"registered": "registered as", "duplicate": "already registered as",
                    "known": "already registered as", "answer": "an answer, recorded on"}[outcome.result]
            click.echo(f"{path}: {word} {outcome.number}")
        elif outcome.result == "released":
            tempfail += 1
            link.wake()
            click.echo(f"{path}: spooled as item {outcome.item_id}; the registry is unavailable, "
                       f"the daemon registers it when it is back ({outcome.reason})", err=True)
        else:
            failures += 1
            click.echo(f"{path}: {outcome.result} (item {outcome.item_id}): {outcome.reason}", err=True)
    link.close()
    registry.close()
    sys.exit(1 if failures else EX_TEMPFAIL if tempfail else 0)


# -- letters --------------------------------------------------------------
@main.group()
def letters() -> None:
    """The register."""


def _day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def letter_summary(letter: Any) -> dict[str, Any]:
    return {"number": letter.number, "status": letter.status, "channel": letter.channel,
            "received_at": _iso(letter.received_at), "sender_name": letter.sender_name,
            "sender_address": letter.sender_address, "department": letter.department,
            "category": letter.category, "urgency": letter.urgency, "subject": letter.subject,
            "deadline": _iso(letter.deadline), "flags": letter.flags}


def letter_detail(letter: Any, outbox: list[Any] | None = None) -> dict[str, Any]:
    out = letter_summary(letter)
    out.update({
        "owner": letter.owner, "tags": letter.tags, "classification": letter.classification,
        "archive_number": letter.archive_number, "archived_at": _iso(letter.archived_at),
        "legal_hold": letter.legal_hold, "raw_released": letter.raw_released, "purged_at": _iso(letter.purged_at),
        "outbox": [outbox_row(m) for m in outbox or []],
        "intake": letter.intake, "recipient": letter.recipient, "recipients": letter.recipients,
        "sent_at": _iso(letter.sent_at), "message_id": letter.message_id, "summary": letter.summary,
        "confidentiality": letter.confidentiality, "deadline": _iso(letter.deadline),
        "series": letter.series, "seq": letter.seq, "created_at": _iso(letter.created_at),
        "updated_at": _iso(letter.updated_at), "body_text": letter.body_text,
        "raw_sha256": letter.raw_sha256, "raw_size": letter.raw_size, "raw_path": letter.raw_path,
        "envelope": letter.envelope, "defects": letter.defects, "flags": letter.flags,
        "fax": {"number": letter.fax_number, "caller_id": letter.fax_caller_id,
                "sender_name": letter.fax_sender_name, "pages": letter.fax_pages,
                "sent_at": _iso(letter.fax_sent_at)},
        "attachments": [{"filename": a.filename, "original_filename": a.original_filename,
                         "declared_type": a.declared_type, "detected_type": a.detected_type,
                         "size": a.size, "sha256": a.sha256, "origin": a.origin} for a in letter.attachments],
        "events": [{"at": _iso(e.at), "actor": e.actor, "action": e.action,
                    "from_department": e.from_department, "to_department": e.to_department,
                    "details": e.details} for e in letter.events],
    })
    return out


def outbox_row(mail: Any) -> dict[str, Any]:
    return {"id": mail.id, "letter_id": mail.letter_id, "kind": mail.kind, "recipient": mail.recipient,
            "status": mail.status, "attempts": mail.attempts, "created_at": _iso(mail.created_at),
            "next_attempt_at": _iso(mail.next_attempt_at), "sent_at": _iso(mail.sent_at),
            "last_error": mail.last_error, "message_id": mail.message_id}


def print_trace(console: Console, trace: dict[str, Any] | None, title: str = "Decision") -> None:
    """The decision trace: which rules matched, on what, and what each set."""
    if not trace:
        console.print(Panel("not classified yet (a fax is classified once its text is read)",
                            title=title, title_align="left"))
        return
    lines = []
    for m in trace.get("matched", []):
        sets = ", ".join(f"{k}={v if not isinstance(v, list) else ' '.join(v)}" for k, v in m["set"].items())
        lines.append(f"rule {m['rule']!r} (line {m.get('line')}){'' if m.get('stop') else ', continue'}: "
                     f"{sets or 'nothing new'}")
        lines += [f"    because {e}" for e in m["evidence"]]
        lines += [f"    kept {k}: {why}" for k, why in (m.get("kept") or {}).items()]
    if not trace.get("matched"):
        lines.append("no rule matched")
    for skipped in trace.get("skipped", []):
        lines.append(f"rule {skipped['rule']!r} (line {skipped.get('line')}) not decided: {skipped['reason']}")
    if trace.get("triage"):
        t = trace["triage"]
        lines.append(f"triage: {t['reason']}; likely departments: {', '.join(t['candidates']) or 'none found'}")
    result = trace.get("result", {})
    lines.append("result: " + ", ".join(f"{k}={v}" for k, v in result.items()
                                       if v not in (None, [], "") and k != "tags")
                 + (f", tags={' '.join(result['tags'])}" if result.get("tags") else ""))
    lines.append(f"rules version {trace.get('rules')}")
    console.print(Panel("\n".join(lines), title=title, title_align="left"))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@letters.command("list")
@click.option("--status")
@click.option("--department")
@click.option("--category")
@click.option("--channel", type=click.Choice(["email", "fax"]))
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Received on or after this day (local time).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Received before the end of this day.")
@click.option("--overdue", is_flag=True, help="Only open letters past their deadline.")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]),
              help="With --overdue: overdue by the end of this day (local) instead of now.")
@click.option("--limit", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def letters_list(state: State, status: str | None, department: str | None, category: str | None,
                 channel: str | None, since: datetime | None, until: datetime | None, overdue: bool,
                 as_of: datetime | None, limit: int | None, as_json: bool) -> None:
    """List letters, oldest first."""
    tz = ZoneInfo(state.config.model.gateway.timezone)
    registry = state.registry()
    rows = registry.letters(
        status=status, department=department, category=category, channel=channel,
        since=_day_start(since.date(), tz) if since else None,
        until=_day_start(until.date() + timedelta(days=1), tz) if until else None, limit=limit,
        overdue_at=(_day_start(as_of.date() + timedelta(days=1), tz) if as_of else datetime.now(timezone.utc))
        if overdue else None)
    if as_json:
        _print_json([letter_summary(r) for r in rows])
        return
    table = Table(title=f"{len(rows)} letter(s)")
    for column in ("Number", "Received", "Ch", "From", "Subject", "Dept", "Category", "Status", "Deadline", "Flags"):
        table.add_column(column, overflow="fold", no_wrap=column in ("Number", "Received", "Deadline"))
    for r in rows:
        sender = r.sender_address or r.fax_number or r.sender_name or "-"
        urgent = "" if r.urgency == "regular" else f" ({r.urgency})"
        table.add_row(r.number, r.received_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), r.channel,
                      sender, r.subject or "(no subject)", r.department or "-", (r.category or "-") + urgent,
                      r.status, r.deadline.astimezone(tz).strftime("%Y-%m-%d") if r.deadline else "-",
                      " ".join(r.flags))
    Console(width=max(Console().width, 120)).print(table)


@letters.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def letters_show(state: State, number: str, as_json: bool) -> None:
    """Every field of one letter, its attachments and its events."""
    letter = state.letter(number)
    detail = letter_detail(letter, state.registry().outbox(letter_id=letter.id))
    if as_json:
        _print_json(detail)
        return
    tz = ZoneInfo(state.config.model.gateway.timezone)
    console = Console(width=max(Console().width, 120))
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    for key, value in detail.items():
        if key in ("attachments", "events", "recipients", "envelope", "fax", "body_text", "classification",
                   "outbox"):
            continue
        if key.endswith("_at") or key == "deadline":
            value = datetime.fromisoformat(value).astimezone(tz).isoformat(" ") if value else None
        fields.add_row(key, "-" if value in (None, "", []) else
                       ("; ".join(value) if isinstance(value, list) else str(value)))
    fields.add_row("recipients", json.dumps(detail["recipients"], ensure_ascii=False))
    if detail["envelope"]:
        fields.add_row("envelope", json.dumps(detail["envelope"], ensure_ascii=False))
    if letter.channel == "fax":
        fields.add_row("fax", json.dumps(detail["fax"], ensure_ascii=False))
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


def _actor(by: str | None) -> str:
    import getpass
    import os

    return by or os.environ.get("SUDO_USER") or getpass.getuser()


@letters.command("reassign")
@click.argument("number")
@click.argument("department")
@click.option("--reason", required=True, help="Why: recorded in the letter's events.")
@click.option("--by", help="Who decides (default: the user running the command).")
@pass_state
def letters_reassign(state: State, number: str, department: str, reason: str, by: str | None) -> None:
    """Move a letter to another department; its owners are notified. Counts against classification accuracy."""
    from gateway.stages.route import new_mail
    from gateway.registry.lifecycle import TransitionRefused

    cfg = state.config
    if department not in cfg.departments:
        click.echo(f"error: no department {department!r} (known: {', '.join(sorted(cfg.departments))})", err=True)
        sys.exit(1)
    if not reason.strip():
        raise click.BadParameter("say why", param_hint="--reason")
    registry = state.registry()
    notify = [new_mail(cfg, "notification", owner, department=department, reassigned=True)
              for owner in cfg.departments[department].owners]
    letter = state.letter(number)
    # Used only when the letter has no deadline yet (a fax routed before its text was read).
    deadline = cfg.calendar.deadline(letter.received_at, cfg.model.deadlines.answer_within(letter.category,
                                                                                          letter.urgency))
    try:
        before, after = registry.reassign(number, department, reason=reason.strip(), actor=_actor(by), notify=notify,
                                          deadline=deadline)
    except (LookupError, ValueError, TransitionRefused) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    link = state.link()
    link.wake()
    link.close()
    click.echo(f"{number}: {before} -> {after}; {', '.join(m.recipient for m in notify)} notified")


def _step(state: State, number: str, action: str, text: str, by: str | None) -> None:
    from gateway.stages.route import feedback
    from gateway.registry.lifecycle import TransitionRefused

    registry = state.registry()

    def on_close(letter_id: int, result: str) -> list[Any]:
        letter = registry.letter_by_id(letter_id)
        return feedback(state.config, letter, result) if letter is not None else []
    try:
        before, after = registry.transition(number, action, actor=_actor(by), text=text.strip(), on_close=on_close)
    except (LookupError, TransitionRefused) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{number}: {before} -> {after}" if before != after else f"{number}: note recorded ({after})")
    if after == "closed":
        link = state.link()
        link.wake()  # the result may be on its way to the sender
        link.close()


_BY = click.option("--by", help="Who (default: the user running the command).")


@letters.command("ack")
@click.argument("number")
@click.option("--text", default="", help="A remark, recorded with the event.")
@_BY
@pass_state
def letters_ack(state: State, number: str, text: str, by: str | None) -> None:
    """The department has received the letter (routed -> acknowledged)."""
    _step(state, number, "ack", text, by)


@letters.command("progress")
@click.argument("number")
@click.option("--text", default="")
@_BY
@pass_state
def letters_progress(state: State, number: str, text: str, by: str | None) -> None:
    """Work on the letter has begun (-> in-progress)."""
    _step(state, number, "progress", text, by)


@letters.command("answer")
@click.argument("number")
@click.option("--text", default="", help="What was answered.")
@_BY
@pass_state
def letters_answer(state: State, number: str, text: str, by: str | None) -> None:
    """The department has answered the sender (-> answered)."""
    _step(state, number, "answer", text, by)


@letters.command("close")
@click.argument("number")
@click.option("--result", required=True, help="The outcome, recorded with the event.")
@_BY
@pass_state
def letters_close(state: State, number: str, result: str, by: str | None) -> None:
    """The letter is dealt with (-> closed)."""
    if not result.strip():
        raise click.BadParameter("say what the outcome was", param_hint="--result")
    _step(state, number, "close", result, by)


@letters.command("note")
@click.argument("number")
@click.argument("text")
@_BY
@pass_state
def letters_note(state: State, number: str, text: str, by: str | None) -> None:
    """Record a remark on the letter; its state does not change."""
    if not text.strip():
        raise click.BadParameter("an empty note", param_hint="TEXT")
    _step(state, number, "note", text, by)


@letters.command("extract")
@click.argument("number")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_state
def letters_extract(state: State, number: str, directory: Path) -> None:
    """Write a letter's attachments into DIRECTORY, under their safe names."""
    from gateway.archive.packer import read_original
    from gateway.stages.normalise import normalise, safe_join

    letter = state.letter(number)
    raw = read_original(state.config, state.registry(), letter)
    directory.mkdir(parents=True, exist_ok=True)
    if letter.is_fax_file:  # the fax itself is the document
        target = safe_join(directory, letter.attachments[0].filename)
        target.write_bytes(raw)
        click.echo(str(target))
        return
    parsed = normalise(raw)
    for attachment in parsed.attachments:  # names are safe and unique within a letter
        target = safe_join(directory, attachment.filename)
        target.write_bytes(attachment.content)
        click.echo(str(target))


@main.command("smtp-passwd")
@click.argument("user")
@click.password_option("--password", prompt="Password", help="Read from the terminal when not given.")
def smtp_passwd(user: str, password: str) -> None:
    """Print a line for [smtp] auth_users_file: USER and a salted scrypt hash."""
    from gateway.adapters.smtp import hash_password

    if ":" in user or not user.strip():
        raise click.BadParameter("a user name without ':'", param_hint="USER")
    click.echo(f"{user}:{hash_password(password)}")


# -- quarantine -----------------------------------------------------------
@main.group()
def quarantine() -> None:
    """Items that failed repeatedly, kept with their raw bytes and the reason."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_list(state: State, as_json: bool) -> None:
    items = state.spool().quarantined()
    if as_json:
        _print_json([{"id": q.id, "reason": q.reason, "attempts": q.attempts,
                      "quarantined_at": q.quarantined_at, "intake": q.meta.get("intake")} for q in items])
        return
    table = Table(title=f"{len(items)} quarantined item(s)")
    for column in ("Item", "Quarantined", "Attempts", "Intake", "Reason"):
        table.add_column(column, overflow="fold")
    for q in items:
        table.add_row(q.id, q.quarantined_at[:19], str(q.attempts), str(q.meta.get("intake", "?")), q.reason)
    Console(width=max(Console().width, 120)).print(table)


@quarantine.command("show")
@click.argument("item_id")
@click.option("--raw", is_flag=True, help="Write the raw bytes to stdout.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_show(state: State, item_id: str, raw: bool, as_json: bool) -> None:
    from gateway.spool import read_raw

    try:
        q = state.spool().quarantined_item(item_id)
    except KeyError:
        click.echo(f"error: no quarantined item {item_id}", err=True)
        sys.exit(1)
    if raw:
        sys.stdout.buffer.write(read_raw(q.path))
        return
    data = {"id": q.id, "path": str(q.path), "reason": q.reason, "attempts": q.attempts,
            "quarantined_at": q.quarantined_at, "history": q.history, "meta": q.meta}
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")


@quarantine.command("retry")
@click.argument("item_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every quarantined item.")
@pass_state
def quarantine_retry(state: State, item_ids: tuple[str, ...], retry_all: bool) -> None:
    """Put items back in the spool; the daemon (woken now) processes them."""
    spool = state.spool()
    ids = [q.id for q in spool.quarantined()] if retry_all else list(item_ids)
    if not ids:
        raise click.UsageError("name at least one item, or --all")
    missing = 0
    for item_id in ids:
        try:
            spool.retry(item_id)
            click.echo(f"{item_id}: back in the spool")
        except KeyError:
            click.echo(f"error: no quarantined item {item_id}", err=True)
            missing += 1
    link = state.link()
    link.wake()
    link.close()
    logging.getLogger("gateway.cli").debug("woke the daemon")
    sys.exit(1 if missing else 0)



# -- rules ----------------------------------------------------------------
@main.group()
def rules() -> None:
    """Try the classification rules without registering anything."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ocr", is_flag=True, help="Read the text of fax files first (slow), as the daemon does.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def rules_test(state: State, files: tuple[Path, ...], ocr: bool, as_json: bool) -> None:
    """Classify message files (.eml) and fax files (TIFF, PDF) and print why."""
    from gateway.stages.classify.facts import Facts, facts_from_mail
    from gateway.stages.route import plan

    cfg = state.config_with_rules
    console = Console(width=max(Console().width, 120))
    results = []
    for path in files:
        raw = path.read_bytes()
        envelope_from = None
        if raw[:4] in (b"II*\0", b"MM\0*") or raw[:5] == b"%PDF-":
            from gateway.adapters.fax_drop import fax_facts
            from gateway.stages.fax.document import FaxUnreadable, read_fax
            from gateway.stages.fax.metadata import find_sidecar

            try:
                facts_of_fax = fax_facts(cfg, path, read_fax(raw, path.name), find_sidecar(path))
            except FaxUnreadable as exc:
                click.echo(f"{path}: {exc}", err=True)
                continue
            text = ""
            if ocr:
                from gateway.stages.fax.text import read_text

                text = read_text(str(path), cfg.model.fax.ocr_languages, cfg.model.fax.ocr_timeout_seconds)[0]
            facts = Facts("fax", sender_name=facts_of_fax.get("sender_name") or "", body=text,
                          subject=f"Fax from {facts_of_fax.get('number') or 'an unknown number'}",
                          fax_number=facts_of_fax.get("number"))
        else:
            from gateway.stages.normalise import normalise

            parsed = normalise(raw)
            channel = "fax" if parsed.sender and cfg.model.fax.email.is_fax_service(parsed.sender.address) else "email"
            facts = facts_from_mail(parsed, channel=channel, envelope_rcpts=[], mailbox_department=None)
        decision = cfg.ruleset.classify(facts)
        routing = plan(cfg, decision, received_at=datetime.now(timezone.utc), sender=facts.sender_address,
                       subject=facts.subject, body=facts.body, channel=facts.channel, headers=facts.headers,
                       envelope_from=envelope_from, backlog=False)
        receipt = (f"a receipt ({routing.receipt.details['language']}) to {routing.receipt.recipient}"
                   if routing.receipt else f"no receipt: {routing.no_receipt}")
        notify = ", ".join(m.recipient for m in routing.mail)
        results.append({"file": str(path), "trace": decision.trace(), "status": routing.status,
                        "notify": [m.recipient for m in routing.mail], "receipt": receipt})
        if not as_json:
            print_trace(console, decision.trace(), title=f"{path}")
            console.print(f"  -> {routing.status} to {routing.department}; notify {notify}; {receipt}")
    if as_json:
        _print_json(results)


@rules.command("replay")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Letters received on or after this day.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Received before the end of this day.")
@click.option("--all", "show_all", is_flag=True, help="List every letter, not only those that would change.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def rules_replay(state: State, since: datetime, until: datetime | None, show_all: bool, as_json: bool) -> None:
    """How the current rules would classify past letters; lists those that would change. Changes nothing."""
    from gateway.stages.route import letter_facts

    cfg = state.config_with_rules
    tz = ZoneInfo(cfg.model.gateway.timezone)
    registry = state.registry()
    rows = registry.letters(since=_day_start(since.date(), tz),
                            until=_day_start(until.date() + timedelta(days=1), tz) if until else None,
                            with_attachments=True)
    fields = ("category", "department", "urgency", "confidentiality")
    report = []
    for letter in rows:
        if letter.classification is None:
            continue  # not classified yet: a fax waiting for its text
        decision = cfg.ruleset.classify(letter_facts(cfg, letter))
        then = letter.classification.get("result", {})
        now = decision.trace()["result"]
        changes = {f: [then.get(f), now.get(f)] for f in fields if then.get(f) != now.get(f)}
        if changes or show_all:
            report.append({"number": letter.number, "changes": changes,
                           "rules_then": [m["rule"] for m in letter.classification.get("matched", [])],
                           "rules_now": [m["rule"] for m in decision.matched],
                           "department_now": letter.department,
                           "reassigned_by_person": letter.department != then.get("department")})
    changed = sum(1 for r in report if r["changes"])
    if as_json:
        _print_json({"replayed": len(rows), "would_change": changed, "letters": report,
                     "rules_version": cfg.ruleset.version})
        return
    console = Console(width=max(Console().width, 120))
    table = Table(title=f"{len(rows)} letter(s) replayed with rules {cfg.ruleset.version}; {changed} would change")
    for column in ("Number", "Changes", "Rules then", "Rules now"):
        table.add_column(column, overflow="fold")
    for r in report:
        table.add_row(r["number"], "; ".join(f"{f}: {a} -> {b}" for f, (a, b) in r["changes"].items()) or "same",
                      ", ".join(r["rules_then"]) or "-", ", ".join(r["rules_now"]) or "-")
    console.print(table)


# -- outbox ---------------------------------------------------------------
@main.group()
def outbox() -> None:
    """Mail the gateway sends: notifications and receipts."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "sent", "dead"]))
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def outbox_list(state: State, status: str | None, limit: int, as_json: bool) -> None:
    registry = state.registry()
    mails = registry.outbox(status=status, limit=limit)
    if as_json:
        _print_json([outbox_row(m) for m in mails])
        return
    table = Table(title=f"{len(mails)} mail(s)")
    for column in ("#", "Letter", "Kind", "To", "Status", "Attempts", "Next try", "Last error"):
        table.add_column(column, overflow="fold")
    numbers = {letter.id: letter.number for letter in registry.letters_by_id({m.letter_id for m in mails})}
    for m in mails:
        table.add_row(str(m.id), numbers.get(m.letter_id, "-"), m.kind, m.recipient, m.status, str(m.attempts),
                      m.next_attempt_at.isoformat(" ", "seconds") if m.status == "pending" else "",
                      m.last_error or "")
    Console(width=max(Console().width, 120)).print(table)


@outbox.command("retry")
@click.argument("mail_ids", nargs=-1, type=int, required=True)
@pass_state
def outbox_retry(state: State, mail_ids: tuple[int, ...]) -> None:
    """Queue dead-lettered mail again (after fixing what stopped it)."""
    registry = state.registry()
    failed = 0
    for mail_id in mail_ids:
        try:
            mail = registry.outbox_requeue(mail_id, _actor(None))
            click.echo(f"{mail_id}: {mail.kind} to {mail.recipient} queued again")
        except (LookupError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            failed += 1
    link = state.link()
    link.wake()
    link.close()
    sys.exit(1 if failed else 0)


# -- reminders ------------------------------------------------------------
@main.group()
def reminders() -> None:
    """Reminders before and at deadlines, and escalations (the daemon runs them periodically)."""


@reminders.command("run")
@click.option("--now", "at", type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"]),
              help="Decide as if it were this local time (default: now).")
@click.option("--dry-run", is_flag=True, help="Only show what would be sent.")
@pass_state
def reminders_run(state: State, at: datetime | None, dry_run: bool) -> None:
    """One pass: queue the reminders and escalations that are due, and print them."""
    from gateway.track import reminders as reminders_mod

    cfg = state.config
    tz = ZoneInfo(cfg.model.gateway.timezone)
    now = at.replace(tzinfo=tz) if at else datetime.now(timezone.utc)
    done = reminders_mod.run(cfg, state.registry(), now, dry_run=dry_run)
    for r in done:
        click.echo(f"{r.letter.number}: {'escalation' if r.kind == 'escalation' else 'reminder (' + r.kind + ')'} "
                   f"to {', '.join(m.recipient for m in r.mail)}{' (not sent: dry run)' if dry_run else ''}")
    if not done:
        click.echo("nothing due")
    elif not dry_run:
        link = state.link()
        link.wake()
        link.close()


# -- the archive ----------------------------------------------------------
@main.group()
def archive() -> None:
    """The monthly archive: packages by month and category, verification, retention."""


def _month(value: str) -> str:
    from gateway.archive.packer import MONTH

    if not MONTH.match(value):
        raise click.BadParameter(f"{value!r} is not YYYY-MM", param_hint="--month")
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
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for w in written:
        click.echo(f"{w.package}: {w.letters} letter(s), {w.size} bytes")
    if not written:
        click.echo(f"{month}: nothing (more) to archive")
    if not no_verify:
        _report_checks(archiver.verify(month))


def _report_checks(checked: list[Any]) -> None:
    bad = 0
    for c in checked:
        if c.ok:
            click.echo(f"{c.package.path}: verified ({c.package.letters} letter(s))")
        else:
            bad += 1
            for problem in c.problems:
                click.echo(f"error: {c.package.path}: {problem}", err=True)
    if bad:
        logging.getLogger("gateway.archive").error("ALERT archive: %d package(s) failed verification", bad)
        sys.exit(1)


@archive.command("verify")
@click.option("--month", help="YYYY-MM (default: every package).")
@pass_state
def archive_verify(state: State, month: str | None) -> None:
    """Re-read every package and check every hash; then release the message store's copies."""
    from gateway.archive.packer import Archiver

    _report_checks(Archiver(state.config, state.registry()).verify(_month(month) if month else None))


@archive.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def archive_list(state: State, as_json: bool) -> None:
    registry = state.registry()
    packages = registry.archive_packages(None)
    rows = [{"month": p.month, "category": p.category, "kind": p.kind, "part": p.part, "path": p.path,
             "manifest": p.manifest, "letters": p.letters, "size": p.size, "sha256": p.sha256, "status": p.status,
             "created_at": _iso(p.created_at), "verified_at": _iso(p.verified_at)} for p in packages]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} package(s) in {state.config.archive_dir}")
    for column in ("Month", "Category", "Kind", "Path", "Letters", "Size", "Status", "Verified"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["month"], r["category"], r["kind"], r["path"], str(r["letters"]), str(r["size"]), r["status"],
                      (r["verified_at"] or "")[:19])
    Console(width=max(Console().width, 120)).print(table)


@archive.command("purge")
@click.option("--approved-by", help="Who approved the destruction (required to destroy anything).")
@click.option("--dry-run", is_flag=True, help="Only show what would be destroyed.")
@pass_state
def archive_purge(state: State, approved_by: str | None, dry_run: bool) -> None:
    """Destroy packages past their category's retention, never letters on legal hold; records who approved."""
    from gateway.archive.packer import Archiver

    if not dry_run and not (approved_by or "").strip():
        click.echo("error: destruction needs --approved-by NAME (or --dry-run to see what is due)", err=True)
        sys.exit(2)
    destroyed, kept = Archiver(state.config, state.registry()).purge(
        approved_by=(approved_by or "").strip(), actor=_actor(None), now=datetime.now(timezone.utc), dry_run=dry_run)
    for path in destroyed:
        click.echo(f"{path}: {'would be destroyed' if dry_run else 'destroyed'}")
    for reason in kept:
        click.echo(f"kept {reason}")
    if not destroyed:
        click.echo("nothing is past retention")


@letters.command("hold")
@click.argument("number")
@click.option("--reason", required=True)
@click.option("--release", is_flag=True, help="Lift the hold instead.")
@_BY
@pass_state
def letters_hold(state: State, number: str, reason: str, release: bool, by: str | None) -> None:
    """Put a letter on legal hold: its archive package is never destroyed while it lasts."""
    try:
        state.registry().hold(number, on=not release, reason=reason, actor=_actor(by))
    except (LookupError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{number}: {'hold lifted' if release else 'on legal hold'}")


# -- reports --------------------------------------------------------------
@main.command()
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
        output.write_text(text, encoding="utf-8")
        click.echo(f"{output}: {fmt}, {figures['letters']} letter(s)")
