"""The IMAP ledger: which server messages are settled, and how each folder is doing.

A message is settled once its bytes are durable (registered, recognised, or
left to the spool's retries) and the account's action has been applied on the
server. Keyed by account, folder, UIDVALIDITY and UID: a UIDVALIDITY the
ledger has not seen means every UID in the folder is new to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from gateway.registry.store import RegistryUnavailable, Store
from gateway.registry.models import ImapFolder, ImapMessage, IntakeKey


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    last_uid: int
    importing_until: int | None = None  # set while the first import is under way
    last_poll_at: datetime | None = None  # the last sync that settled the folder
    # The first import's newest UID (or the import's after a UIDVALIDITY change), kept after it
    # ends: what it left failing and fetches later is still backlog.
    backlog_until: int | None = None
    # While an import after a UIDVALIDITY change is under way: read mail from this day on is in
    # its scope too, also when it is resumed on another connection.
    seen_since: date | None = None


@dataclass(frozen=True)
class Settled:
    uid: int
    outcome: str
    action: str
    number: str | None = None
    item_id: str | None = None
    size: int | None = None
    reason: str | None = None


# A spooled message's action on the server not done yet: "pending-move" until the MOVE is
# ("pending-copy" while a move without MOVE has begun its COPY, "pending-expunge" once the COPY is
# done, until the original is expunged).
PENDING = "pending-"
# Such an action never done, closed out when the folder's UIDVALIDITY changed ("void-move"): the
# UIDs it was for mean nothing now. A message still there is looked at again under the new
# UIDVALIDITY, recognised by its bytes, and its action done there.
VOID = "void-"
# A message to fetch again (its spool item lost with another node) whose move was cut off after its
# COPY was begun: a copy may be in move_to already, looked for before its move is done again.
COPY_BEGUN = "copy-begun"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ImapLedger:
    def __init__(self, registry: Store):
        self.registry = registry

    def _upsert(self, conn: Any, table: type, values: list[dict[str, Any]] | dict[str, Any],
                keys: list[str], update_columns: list[str], *, forward: str | None = None) -> None:
        """Insert or update; the column `forward` (a position) only ever moves forward within
        one UIDVALIDITY, so that a node finishing late never sets a folder back."""
        ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
        set_: dict[str, Any] = {c: getattr(ins.excluded, c) for c in update_columns}
        if forward is not None:
            current, new = getattr(table, forward), getattr(ins.excluded, forward)
            set_[forward] = case((table.uidvalidity != ins.excluded.uidvalidity, new),  # type: ignore[attr-defined]
                                 (new > current, new), else_=current)
        conn.execute(ins.on_conflict_do_update(index_elements=keys, set_=set_), values)

    def folder(self, account: str, folder: str) -> FolderState | None:
        with self.registry.read() as conn:
            row = conn.execute(select(ImapFolder.uidvalidity, ImapFolder.last_uid, ImapFolder.importing_until,
                                      ImapFolder.last_poll_at, ImapFolder.backlog_until,
                                      ImapFolder.import_seen_since).where(
                ImapFolder.account == account, ImapFolder.folder == folder)).first()
        return (FolderState(row.uidvalidity, row.last_uid, row.importing_until, row.last_poll_at, row.backlog_until,
                            row.import_seen_since)
                if row and row.uidvalidity else None)

    def attempts(self, account: str, folder: str, uidvalidity: int) -> dict[int, tuple[int, str]]:
        """UIDs that could not be fetched yet: how often that was tried, and the last reason."""
        with self.registry.read() as conn:
            rows = conn.execute(select(ImapMessage.uid, ImapMessage.attempts, ImapMessage.reason).where(
                ImapMessage.account == account, ImapMessage.folder == folder,
                ImapMessage.uidvalidity == uidvalidity, ImapMessage.outcome == "failing"))
            return {row.uid: (row.attempts, row.reason or "") for row in rows}

    def failing(self, account: str, folder: str, uidvalidity: int, uid: int, attempts: int, reason: str) -> None:
        """Count a failed fetch on its own (the connection is about to be given up)."""
        row = {"account": account, "folder": folder, "uidvalidity": uidvalidity, "uid": uid, "outcome": "failing",
               "number": None, "item_id": None, "size": None, "action": "none", "attempts": attempts,
               "reason": reason, "at": _now()}
        with self.registry.write() as conn:
            self._upsert(conn, ImapMessage, row, ["account", "folder", "uidvalidity", "uid"],
                         ["outcome", "attempts", "reason", "at"])

    def settle(self, account: str, folder: str, uidvalidity: int, settled: list[Settled],
               *, last_uid: int, backlog: int, failing: dict[int, tuple[int, str]] | None = None,
               importing_until: int | None = None, backlog_until: int | None = None,
               seen_since: date | None = None, was: int | None) -> bool:
        """Record settled messages, failed fetches and the folder's new position in one transaction.

        `importing_until`, `backlog_until` and `seen_since` are the folder's import scope
        (FolderState's fields of those names), written as given. `was`: the folder's UIDVALIDITY
        in the ledger when this sync began (None: none yet). Should the ledger have another one
        now, neither that nor `uidvalidity`, another node synced the folder under a new UIDVALIDITY
        meanwhile (it took the folder over while this one finished a batch): this sync's position
        would set the folder back to the old one, and is not written; its messages are recorded,
        their actions void (as `void_actions`) until done. False then."""
        now = _now()
        rows: list[dict[str, Any]] = [{"account": account, "folder": folder, "uidvalidity": uidvalidity, "uid": s.uid,
                 "outcome": s.outcome, "number": s.number, "item_id": s.item_id, "size": s.size,
                 "action": s.action, "attempts": 0, "reason": s.reason, "at": now} for s in settled]
        rows += [{"account": account, "folder": folder, "uidvalidity": uidvalidity, "uid": uid,
                  "outcome": "failing", "number": None, "item_id": None, "size": None, "action": "none",
                  "attempts": attempts, "reason": reason, "at": now}
                 for uid, (attempts, reason) in (failing or {}).items()]
        # A failed fetch keeps the row's action: a message to fetch again may carry COPY_BEGUN.
        failing_rows, rows = rows[len(settled):], rows[:len(settled)]
        with self.registry.write() as conn:
            now_at = conn.execute(select(ImapFolder.uidvalidity).where(
                ImapFolder.account == account, ImapFolder.folder == folder).with_for_update()).scalar()
            stale = bool(now_at) and now_at not in (uidvalidity, was)
            if stale:
                for row in rows:
                    if row["action"].startswith(PENDING):
                        row["action"] = VOID + row["action"].removeprefix(PENDING)
                        row["reason"] = (f"the folder's UIDVALIDITY changed (now {now_at}) before this action "
                                         "was done")
            if rows:
                self._upsert(conn, ImapMessage, rows, ["account", "folder", "uidvalidity", "uid"],
                             ["outcome", "number", "item_id", "size", "action", "attempts", "reason", "at"])
            if failing_rows:
                self._upsert(conn, ImapMessage, failing_rows, ["account", "folder", "uidvalidity", "uid"],
                             ["outcome", "number", "item_id", "size", "attempts", "reason", "at"])
            if stale:
                return False
            self._upsert(conn, ImapFolder, {
                "account": account, "folder": folder, "uidvalidity": uidvalidity, "last_uid": last_uid,
                "importing_until": importing_until, "backlog_until": backlog_until, "import_seen_since": seen_since,
                "last_poll_at": now, "last_error": None, "last_error_at": None,
                "backlog": backlog, "updated_at": now}, ["account", "folder"],
                ["uidvalidity", "last_uid", "importing_until", "backlog_until", "import_seen_since", "last_poll_at",
                 "last_error", "last_error_at", "backlog", "updated_at"], forward="last_uid")
        return True

    def pending_actions(self, account: str, folder: str, uidvalidity: int) -> dict[int, str]:
        """Messages spooled whose action on the server is still to be done (it failed, or the
        process stopped before it): UID -> the action ("seen", "move", "delete")."""
        with self.registry.read() as conn:
            rows = conn.execute(select(ImapMessage.uid, ImapMessage.action).where(
                ImapMessage.account == account, ImapMessage.folder == folder, ImapMessage.uidvalidity == uidvalidity,
                ImapMessage.action.startswith(PENDING)))
            return {int(uid): action.removeprefix(PENDING) for uid, action in rows}

    def void_actions(self, account: str, folder: str, uidvalidity: int) -> dict[str, int]:
        """Close out the actions still to do under any UIDVALIDITY other than `uidvalidity` (the
        folder's present one): they can never be done by their UIDs. How many, by action."""
        with self.registry.write() as conn:
            where = (ImapMessage.account == account, ImapMessage.folder == folder,
                     ImapMessage.uidvalidity != uidvalidity, ImapMessage.action.startswith(PENDING))
            counts: dict[str, int] = {}
            for action, count in conn.execute(select(ImapMessage.action, func.count()).where(*where)
                                              .group_by(ImapMessage.action)):
                counts[action.removeprefix(PENDING)] = int(count)
            conn.execute(update(ImapMessage).where(*where).values(
                action=func.replace(ImapMessage.action, PENDING, VOID),
                reason=f"the folder's UIDVALIDITY changed (now {uidvalidity}) before this action was done",
                at=_now()))
        return counts

    def unregistered(self, account: str, folder: str, uidvalidity: int, uids: list[int]) -> dict[int, str]:
        """Of `uids`, those spooled whose action is still to do (a move's COPY begun or done too: the
        original is still in the folder until its expunge), and whose letter the registry does not
        have (no intake key for the message's source): UID -> the spool item that holds it, on
        whichever node spooled it."""
        with self.registry.read() as conn:
            rows = {int(uid): str(item) for uid, item in conn.execute(
                select(ImapMessage.uid, ImapMessage.item_id).where(
                    ImapMessage.account == account, ImapMessage.folder == folder,
                    ImapMessage.uidvalidity == uidvalidity, ImapMessage.uid.in_(uids),
                    ImapMessage.outcome == "spooled", ImapMessage.item_id.is_not(None),
                    ImapMessage.action.startswith(PENDING)))}
            keys = {f"imap:{account}:{folder}:{uidvalidity}:{uid}": uid for uid in rows}
            known = set(conn.execute(select(IntakeKey.key).where(IntakeKey.key.in_(list(keys)))).scalars())
        return {uid: rows[uid] for key, uid in keys.items() if key not in known}

    def fetch_again(self, account: str, folder: str, uidvalidity: int, uids: list[int], reason: str) -> None:
        """These messages are fetched and spooled again at the sync's next pass (as a failed fetch
        is), their action done after that; one whose move had begun its COPY is marked COPY_BEGUN."""
        begun = ImapMessage.action.in_([PENDING + "copy", PENDING + "expunge"])
        with self.registry.write() as conn:
            conn.execute(update(ImapMessage).where(
                ImapMessage.account == account, ImapMessage.folder == folder,
                ImapMessage.uidvalidity == uidvalidity, ImapMessage.uid.in_(uids)).values(
                outcome="failing", action=case((begun, COPY_BEGUN), else_="none"), item_id=None, attempts=0,
                reason=reason, at=_now()))

    def copies_begun(self, account: str, folder: str, uidvalidity: int, uids: list[int]) -> set[int]:
        """Of `uids`, those fetched again whose move had begun its COPY (COPY_BEGUN)."""
        with self.registry.read() as conn:
            return {int(uid) for uid in conn.execute(select(ImapMessage.uid).where(
                ImapMessage.account == account, ImapMessage.folder == folder,
                ImapMessage.uidvalidity == uidvalidity, ImapMessage.uid.in_(uids),
                ImapMessage.action == COPY_BEGUN)).scalars()}

    def void_copies(self, account: str, folder: str, uidvalidity: int) -> dict[tuple[int, int], int]:
        """Moves cut off after their COPY was begun ("void-copy": perhaps done) or done ("void-expunge")
        and closed out by a change of UIDVALIDITY: each one's copy may be in move_to, its original
        still in the folder under a new UID. (UIDVALIDITY, UID) -> the message's size."""
        with self.registry.read() as conn:
            rows = conn.execute(select(ImapMessage.uidvalidity, ImapMessage.uid, ImapMessage.size).where(
                ImapMessage.account == account, ImapMessage.folder == folder,
                ImapMessage.uidvalidity != uidvalidity, ImapMessage.action.in_([VOID + "expunge", VOID + "copy"]),
                ImapMessage.size.is_not(None)))
            return {(int(row.uidvalidity), int(row.uid)): int(row.size) for row in rows}

    def copies_found(self, account: str, folder: str, uidvalidity: int, found: dict[int, tuple[int, int]]) -> None:
        """Those void copies whose originals were found under `uidvalidity` (new UID -> the copy's
        (UIDVALIDITY, UID)) and only expunged there: their moves are done."""
        with self.registry.write() as conn:
            for uid, (old_uidvalidity, old_uid) in found.items():
                conn.execute(update(ImapMessage).where(
                    ImapMessage.account == account, ImapMessage.folder == folder,
                    ImapMessage.uidvalidity == old_uidvalidity, ImapMessage.uid == old_uid).values(
                    action="move", at=_now(),
                    reason=f"its copy was made under UIDVALIDITY {old_uidvalidity}; the original was expunged "
                           f"under UIDVALIDITY {uidvalidity} (UID {uid}) without a second copy"))

    def actions_done(self, account: str, folder: str, uidvalidity: int, done: dict[int, str]) -> None:
        """The server has done these messages' actions (UID -> action)."""
        by_action: dict[str, list[int]] = {}
        for uid, action in done.items():
            by_action.setdefault(action, []).append(uid)
        with self.registry.write() as conn:
            for action, uids in by_action.items():
                for first in range(0, len(uids), 1000):
                    conn.execute(update(ImapMessage).where(
                        ImapMessage.account == account, ImapMessage.folder == folder,
                        ImapMessage.uidvalidity == uidvalidity, ImapMessage.uid.in_(uids[first:first + 1000]))
                        .values(action=action))

    def failed(self, account: str, folder: str, error: str) -> None:
        self._health(account, folder, {"last_error": error[:2000], "last_error_at": _now()})

    def _health(self, account: str, folder: str, values: dict[str, Any]) -> None:
        # A folder that was never synced (a login that fails from the start) gets a row
        # with UIDVALIDITY 0, which the next sync reads as "first import".
        now = _now()
        row = {"account": account, "folder": folder, "uidvalidity": 0, "last_uid": 0, "importing_until": None,
               "last_poll_at": None,
               "last_error": None, "last_error_at": None, "backlog": 0, "updated_at": now, **values}
        try:
            with self.registry.write() as conn:
                self._upsert(conn, ImapFolder, row, ["account", "folder"], [*values, "updated_at"])
        except (DBAPIError, RegistryUnavailable):
            pass  # health is best effort; the registry being down is logged elsewhere

    def status(self) -> list[dict[str, Any]]:
        with self.registry.read() as conn:
            # Only the folder's present UIDVALIDITY counts: the UIDs of an earlier one mean nothing now.
            unfetchable = dict(conn.execute(
                select(ImapMessage.account + "/" + ImapMessage.folder, func.count())
                .join(ImapFolder, (ImapFolder.account == ImapMessage.account)
                      & (ImapFolder.folder == ImapMessage.folder)
                      & (ImapFolder.uidvalidity == ImapMessage.uidvalidity))
                .where(ImapMessage.outcome.in_(["unfetchable", "failing"]))
                .group_by(ImapMessage.account, ImapMessage.folder)).all())
            rows = conn.execute(select(ImapFolder.__table__).order_by(ImapFolder.account, ImapFolder.folder))
            return [{"account": r.account, "folder": r.folder, "uidvalidity": r.uidvalidity,
                     "last_uid": r.last_uid, "last_poll_at": r.last_poll_at, "last_error": r.last_error,
                     "last_error_at": r.last_error_at, "backlog": r.backlog,
                     "failing": unfetchable.get(f"{r.account}/{r.folder}", 0)}
                    for r in rows]
