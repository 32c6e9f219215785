"""Running the gateway: is the daemon up, what waits in the spool and the outbox, how every IMAP
folder fares, and the spool's quarantine."""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.ledger import ImapLedger
from gateway.services.queries import iso
from gateway.spool import QuarantinedItem, Spool


def daemon_pid(config: Config) -> int | None:
    """The pid of the daemon holding this state directory's lock; -1 if it is held but the pid
    file is unreadable; None when no daemon runs."""
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


# The spool is backing up when an item has waited this long (since it was spooled, or since its
# last failed attempt's back-off ended): the daemon registers one in seconds, so the registry is
# away or a worker is stuck.
BACKING_UP_SECONDS = 15 * 60
# A package is verified in the run that writes it; one written this long ago and never verified
# was left by a run that stopped before verifying.
UNVERIFIED_AFTER = timedelta(days=1)


def status(config: Config, spool: Spool, registry: Registry) -> dict[str, Any]:
    """The daemon, the spool, the register, the outbox, the archive's packages, every configured
    IMAP folder, and what of it all needs an operator ("attention", in words)."""
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
    data = {"daemon": {"running": pid is not None, "pid": pid}, "letters": registry.count(),
            "spool": {"waiting": len(spool.pending()), "in_progress": len(spool.claimed()),
                      "quarantined": spool.quarantined_count(), "oldest_age_seconds": round(spool.oldest_age())},
            "outbox": {"pending": outbox.get("pending", 0), "sent": outbox.get("sent", 0),
                       "dead": outbox.get("dead", 0), "relay": config.model.outbound.relay or None},
            "archive": registry.archive_problems(datetime.now(timezone.utc) - UNVERIFIED_AFTER),
            "imap": imap}
    data["attention"] = attention(config, data, spool.free_bytes())
    return data


def attention(config: Config, state: dict[str, Any], free_bytes: int) -> list[str]:
    """What in `state` (as status gives it) and the spool's free space needs an operator, each in
    words with the command to look further; empty when nothing does. Whether the daemon runs is
    apart."""
    out = []
    spool, outbox, archive = state["spool"], state["outbox"], state["archive"]
    if spool["quarantined"]:
        out.append(f"{spool['quarantined']} item(s) in quarantine (gateway quarantine list)")
    if spool["oldest_age_seconds"] >= BACKING_UP_SECONDS:
        out.append(f"the spool is backing up: its oldest item has waited {spool['oldest_age_seconds'] // 60} min")
    floor = config.model.spool.min_free_bytes
    if free_bytes < floor:
        out.append(f"the spool's disk has {free_bytes} bytes free, below [spool] min_free_bytes ({floor}): "
                   "new mail is refused")
    if outbox["dead"]:
        out.append(f"{outbox['dead']} mail(s) dead-lettered (gateway outbox list --status dead)")
    for row in state["imap"]:
        if row["last_error"]:
            out.append(f"IMAP folder {row['account']}/{row['folder']} failing since {row['last_error_at']}: "
                       f"{row['last_error']}")
    if archive["corrupt"]:
        out.append(f"{archive['corrupt']} archive package(s) failed verification (gateway archive verify)")
    if archive["unverified"]:
        out.append(f"{archive['unverified']} archive package(s) written over a day ago and never verified "
                   "(gateway archive verify)")
    return out


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
