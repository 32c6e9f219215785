"""Running the gateway: is the daemon up, what waits in the spool, the outbox and the fax drop
folder, how every IMAP folder and the archive's copies fare, what needs an operator, and the
spool's quarantine."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.ledger import ImapLedger
from gateway.registry.models import OutboxMail
from gateway import running
from gateway.running import daemon_pid
from gateway.services.queries import iso
from gateway.spool import QuarantinedItem, Spool
from gateway.stages.fax.metadata import LONE_INFORMATION_WAIT


# The spool is backing up when an item has waited this long (since it was spooled, or since its
# last failed attempt's back-off ended): the daemon registers one in seconds, so the registry is
# away or a worker is stuck.
BACKING_UP_SECONDS = 15 * 60
# A package is verified in the run that writes it; one written this long ago and never verified
# was left by a run that stopped before verifying.
UNVERIFIED_AFTER = timedelta(days=1)
# Mail queued this long and not delivered, its last attempt failed: a greylisting relay has taken
# it by then (the retries come after 1, 2, 4 and 8 minutes by default), so the relay refuses the
# gateway or cannot be reached.
OUTBOX_FAILING_SECONDS = 15 * 60


def fax_left_seconds(config: Config) -> float:
    """How long a file may sit unchanged in the fax drop folder before it is one the watcher
    leaves there (too large, empty, taken but not removable, an information file fitting two
    faxes): at least the spool's quarter of an hour, and longer than the watcher's own waits."""
    fax = config.model.fax
    return max(BACKING_UP_SECONDS, LONE_INFORMATION_WAIT * fax.stable_seconds + 2 * fax.poll_seconds)


def overview(config: Config, spool: Spool, registry: Registry, now: datetime | None = None) -> dict[str, Any]:
    """The daemon, the spool, the register, the outbox, the archive's packages and copies, the
    fax drop folder and every configured IMAP folder. The ages of packages, mails and fax files
    are reckoned at `now` (this moment unless given)."""
    pid = daemon_pid(config)
    folders = {(r["account"], r["folder"]): r for r in ImapLedger(registry).status()}
    imap = []
    for account in config.model.imap.accounts:
        for folder in account.folders:
            row = folders.get((account.name, folder), {})
            imap.append({"account": account.name, "folder": folder, "host": account.host,
                         "last_poll_at": iso(row.get("last_poll_at")), "last_error": row.get("last_error"),
                         "last_error_at": iso(row.get("last_error_at")), "backlog": row.get("backlog"),
                         "failing": row.get("failing", 0), "uidvalidity": row.get("uidvalidity") or None,
                         "last_uid": row.get("last_uid")})
    outbox = registry.outbox_counts()
    now = now or datetime.now(timezone.utc)
    failing, failing_error = registry.outbox_failing(now - timedelta(seconds=OUTBOX_FAILING_SECONDS))
    return {"daemon": {"running": pid is not None, "pid": pid}, "letters": registry.count(),
            "spool": {"waiting": len(spool.pending()), "in_progress": len(spool.claimed()),
                      "quarantined": spool.quarantined_count(), "oldest_age_seconds": round(spool.oldest_age())},
            "outbox": {"pending": outbox.get("pending", 0), "sent": outbox.get("sent", 0),
                       "dead": outbox.get("dead", 0), "failing": failing, "failing_error": failing_error,
                       "relay": config.model.outbound.relay or None},
            "archive": {**registry.archive_problems(now - UNVERIFIED_AFTER),
                        "copies": archive_copies(config, registry)},
            "fax_drop": fax_drop(config, now),
            "imap": imap}


def status(config: Config, spool: Spool, registry: Registry, now: datetime | None = None) -> dict[str, Any]:
    """The overview, and what of it all needs an operator ("attention", in English words)."""
    data = overview(config, spool, registry, now)
    data["daemon"]["configuration"] = running_configuration(config)
    data["attention"] = [in_words(item) for item in [*attention(config, data, spool.free_bytes()),
                                                     *configuration_attention(config, data["daemon"]["configuration"])]]
    return data


def running_configuration(config: Config) -> dict[str, Any] | None:
    """The running daemon's configuration as it published it: the file it read, the settings only
    a restart changes whose values in `config` (the file now) it does not run with, and its last
    reload (`at`, and `refused`: the file's errors, or None when taken). None when no daemon runs."""
    state = running.published(config)
    if state is None:
        return None
    return {"file": state.get("file"), "restart_needed": running.restart_pending(config, state),
            "reload": state.get("reload")}


def configuration_attention(config: Config, configuration: dict[str, Any] | None) -> list[Attention]:
    """A refused reload (the daemon runs with the configuration it had before), and settings edited
    in `config`'s file that only a restart puts in force."""
    if configuration is None:
        return []
    out = []
    reload = configuration["reload"] or {}
    if reload.get("refused"):
        out.append(Attention("reload-refused", {"at": reload["at"], "errors": reload["refused"]}))
    if configuration["restart_needed"]:
        out.append(Attention("restart-needed", {"names": configuration["restart_needed"],
                                                "file": str(config.path)}))
    return out


def served_configuration_attention(config: Config) -> list[Attention]:
    """`configuration_attention` for a page served with `config`: a web register the daemon serves
    runs with its restart-only values, not the file's, so the file is read again to compare (a
    file that does not load says nothing of its own: its errors are a reload's to refuse)."""
    from gateway.config import ConfigError, load

    state = running.published(config)
    if state is None:
        return []
    try:
        names = running.restart_pending(load(config.path, check_dirs=False), state)
    except ConfigError:
        names = []
    return configuration_attention(config, {"restart_needed": names, "reload": state.get("reload")})


def archive_copies(config: Config, registry: Registry) -> list[dict[str, Any]]:
    """Each of `[archive] copies`: whether the folder is there, and how many verified packages it
    lacks (their package or manifest file). A stat or two per package: packages are monthly."""
    copies = config.archive_copies
    if not copies:
        return []
    files = registry.verified_files()
    out = []
    for copy in copies:
        if not os.path.isdir(copy):  # a share not mounted, say: every package is missing from it
            out.append({"folder": str(copy), "present": False, "missing": len(files)})
            continue
        missing = sum(1 for package, manifest in files
                      if not (os.path.exists(copy / package) and os.path.exists(copy / manifest)))
        out.append({"folder": str(copy), "present": True, "missing": missing})
    return out


def fax_drop(config: Config, now: datetime) -> dict[str, Any] | None:
    """The fax drop folder (None when [fax] is not enabled) and how many files have sat in it
    unchanged for longer than `fax_left_seconds`: those the watcher leaves there. Names it never
    takes (`[fax] ignore`: files still being written), folders and links are not counted."""
    settings = config.model.fax
    if not settings.enabled:
        return None
    folder = config.fax_drop_dir
    since = now.timestamp() - fax_left_seconds(config)
    left = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if any(fnmatch.fnmatch(entry.name, pattern) for pattern in settings.ignore):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                # ctime as well: a copy that keeps its source's old mtime is new all the same.
                if max(st.st_mtime, st.st_ctime) < since:
                    left += 1
    except OSError:  # not made yet (the daemon makes it), or not readable by this user
        pass
    return {"folder": str(folder), "left": left, "minutes": round(fax_left_seconds(config) / 60)}


@dataclass(frozen=True)
class Attention:
    """One thing that needs an operator: what it is (`kind`) and the values its words take. The
    command line words it in English (`in_words`), the operations page in the reader's language."""
    kind: str
    values: dict[str, Any]


def attention(config: Config, state: dict[str, Any], free_bytes: int) -> list[Attention]:
    """What in `state` (as `overview` gives it) and the spool's free space needs an operator;
    empty when nothing does. Whether the daemon runs is apart."""
    out = []
    spool, outbox, archive = state["spool"], state["outbox"], state["archive"]
    if spool["quarantined"]:
        out.append(Attention("quarantined", {"n": spool["quarantined"]}))
    if spool["oldest_age_seconds"] >= BACKING_UP_SECONDS:
        out.append(Attention("spool-backing-up", {"minutes": spool["oldest_age_seconds"] // 60}))
    floor = config.model.spool.min_free_bytes
    if free_bytes < floor:
        out.append(Attention("spool-disk-full", {"free": free_bytes, "floor": floor}))
    fax = state["fax_drop"]
    if fax is not None and fax["left"]:
        out.append(Attention("fax-left", {"n": fax["left"], "folder": fax["folder"], "minutes": fax["minutes"]}))
    if outbox["dead"]:
        out.append(Attention("mail-dead", {"n": outbox["dead"]}))
    if outbox["failing"]:
        out.append(Attention("mail-failing", {"n": outbox["failing"], "minutes": OUTBOX_FAILING_SECONDS // 60,
                                              "error": outbox["failing_error"], "relay": outbox["relay"]}))
    for row in state["imap"]:
        if row["last_error"]:
            out.append(Attention("imap-failing", {"account": row["account"], "folder": row["folder"],
                                                  "since": row["last_error_at"], "error": row["last_error"]}))
    if archive["corrupt"]:
        out.append(Attention("archive-corrupt", {"n": archive["corrupt"]}))
    if archive["unverified"]:
        out.append(Attention("archive-unverified", {"n": archive["unverified"]}))
    for copy in archive["copies"]:
        if not copy["present"]:
            out.append(Attention("archive-copy-folder-missing", {"folder": copy["folder"]}))
        elif copy["missing"]:
            out.append(Attention("archive-copies-missing", {"n": copy["missing"], "folder": copy["folder"]}))
    return out


def in_words(item: Attention) -> str:
    """The item in English, with the command to look further (or to put it right)."""
    v = item.values
    match item.kind:
        case "quarantined":
            return f"{v['n']} item(s) in quarantine (gateway quarantine list)"
        case "spool-backing-up":
            return f"the spool is backing up: its oldest item has waited {v['minutes']} min"
        case "spool-disk-full":
            return (f"the spool's disk has {v['free']} bytes free, below [spool] min_free_bytes ({v['floor']}): "
                    "new mail is refused")
        case "fax-left":
            return (f"{v['n']} file(s) in the fax drop folder {v['folder']} not taken for over {v['minutes']} min "
                    "(the daemon's log names each and why it stays)")
        case "mail-dead":
            return f"{v['n']} mail(s) dead-lettered (gateway outbox list --status dead)"
        case "mail-failing":
            return (f"{v['n']} mail(s) queued over {v['minutes']} min ago and not delivered, the relay failing: "
                    f"{v['error']} (gateway outbox list --status pending)")
        case "imap-failing":
            return f"IMAP folder {v['account']}/{v['folder']} failing since {v['since']}: {v['error']}"
        case "archive-corrupt":
            return f"{v['n']} archive package(s) failed verification (gateway archive verify)"
        case "archive-unverified":
            return (f"{v['n']} archive package(s) written over a day ago and never verified "
                    "(gateway archive verify)")
        case "archive-copy-folder-missing":
            return (f"the archive copy folder {v['folder']} is not there (a share not mounted?): once it is, "
                    "gateway archive verify writes the copies")
        case "reload-refused":
            return (f"the reload at {v['at']} was refused; the daemon runs with the configuration it had before "
                    f"(systemctl reload gateway once the file is right): {'; '.join(v['errors'])}")
        case "restart-needed":
            return (f"{', '.join(v['names'])} differ in {v['file']} from what the running daemon uses: only a "
                    "restart puts them in force (systemctl restart gateway)")
        case "archive-copies-missing":
            return (f"{v['n']} verified archive package(s) missing from the copy folder {v['folder']} "
                    "(gateway archive verify writes them again)")
    raise ValueError(f"no words for {item.kind}")


def quarantine_row(item: QuarantinedItem) -> dict[str, Any]:
    return {"id": item.id, "reason": item.reason, "attempts": item.attempts,
            "quarantined_at": item.quarantined_at, "intake": item.meta.get("intake")}


def quarantine_detail(spool: Spool, item_id: str) -> tuple[QuarantinedItem, dict[str, Any]]:
    """A quarantined item and everything known about it. Raises LookupError."""
    try:
        item = spool.quarantined_item(item_id)
    except KeyError:
        raise LookupError(f"no quarantined item {item_id}") from None
    return item, {"id": item.id, "path": str(item.path), "reason": item.reason, "attempts": item.attempts,
                  "quarantined_at": item.quarantined_at, "history": item.history, "meta": item.meta}


@dataclass(frozen=True)
class Retried:
    item_id: str
    found: bool  # False: no quarantined item by that id


def retry_quarantined(spool: Spool, item_ids: list[str] | None) -> list[Retried]:
    """Put items back in the spool: those named, or every quarantined item when None."""
    ids = [q.id for q in spool.quarantined()] if item_ids is None else item_ids
    done = []
    for item_id in ids:
        try:
            spool.retry(item_id)
            done.append(Retried(item_id, True))
        except KeyError:
            done.append(Retried(item_id, False))
    return done


def requeue_mail(registry: Registry, mail_id: int, actor: str) -> OutboxMail:
    """Queue a dead-lettered mail again, once what stopped it is fixed: sent at once, its attempts
    counted afresh. Raises LookupError (no such mail) or ValueError (it is not dead-lettered)."""
    return registry.outbox_requeue(mail_id, actor)
