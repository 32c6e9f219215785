"""The archive's records: packages, archive numbers, verification, release and destruction."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (Connection, Integer, String, Table, Text, case, column, func, insert, literal, literal_column,
                        null, select, table, type_coerce, update)
from sqlalchemy import cast as sql_cast

from gateway.registry import lifecycle
from gateway.registry.models import (ArchivePackage, Attachment, AuditRow, Circulation, DestructionRecord, Event,
                                     Letter, NumberSeries, Reply, UTCDateTime)
from gateway.registry.plan import LateItem, ToArchive
from gateway.registry.store import Store, utcnow


def archived_when_ended(conn: Connection, letter_id: int, now: datetime) -> str | None:
    """A letter ended now (closed, withdrawn) that was packed with its month while still open is
    archived, as the letters that had ended before the run were: from here on its content is read
    by borrowing. In the caller's transaction; returns its archive number (None: not packed)."""
    number = conn.execute(select(Letter.archive_number).where(Letter.id == letter_id)).scalar()
    if number is None:
        return None
    conn.execute(update(Letter).where(Letter.id == letter_id).values(status="archived", updated_at=now))
    conn.execute(insert(Event), [Store.event_row(letter_id, now, "gateway", "archived", None,
                                                 {"archive_number": number, "packed": "before it ended"})])
    return str(number)


class ArchiveSeriesMoved(Exception):
    """Another run gave archive numbers of the same month while this one was packing."""


class ArchiveRecords(Store):
    def letters_to_archive(self, start: datetime, end: datetime) -> list[ToArchive]:
        """The month's letters not archived yet: only what packing needs (a month can be large: the
        times are read as the driver gives them, and made aware here, at a fraction of the cost)."""
        with self.read() as conn:
            rows = conn.execute(select(Letter.id, Letter.number, type_coerce(Letter.received_at, String),
                                       Letter.channel, Letter.category, Letter.raw_path, Letter.raw_sha256,
                                       Letter.raw_size)
                                .where(Letter.received_at >= start, Letter.received_at < end,
                                       Letter.archive_number.is_(None))
                                .order_by(Letter.received_at, Letter.id)).all()
            faxes = dict(conn.execute(select(Attachment.letter_id, Attachment.filename)
                                      .join(Letter, Attachment.letter_id == Letter.id)
                                      .where(Letter.received_at >= start, Letter.received_at < end,
                                             Letter.archive_number.is_(None), Letter.channel == "fax",
                                             Attachment.origin == "fax")).all())
        return [ToArchive(id_, number, _utc(received), channel, category, raw_path, raw_sha256, raw_size,
                          faxes.get(id_))
                for id_, number, received, channel, category, raw_path, raw_sha256, raw_size in rows]

    def oldest_unarchived(self, start: datetime | None, end: datetime) -> datetime | None:
        """When the oldest letter received in [start, end) that no package holds yet was received
        (None: there is none). Looked up through the archive numbers' index: the letters without one
        are the last month or two, however large the register."""
        month = [Letter.archive_number.is_(None), Letter.received_at < end]
        if start is not None:
            month.append(Letter.received_at >= start)
        with self.read() as conn:
            oldest = conn.execute(select(func.min(type_coerce(Letter.received_at, String))).where(*month)).scalar()
        return None if oldest is None else _utc(oldest)

    def unverified_months(self, before: str) -> list[str]:
        """The months before `before` ("YYYY-MM") with a package written and never verified (its
        run stopped between packing and verifying), oldest first."""
        with self.read() as conn:
            return list(conn.execute(select(ArchivePackage.month).distinct().where(
                ArchivePackage.status == "written", ArchivePackage.month < before)
                .order_by(ArchivePackage.month)).scalars())

    def archive_problems(self, written_before: datetime) -> dict[str, int]:
        """How many packages failed their check ("corrupt"), and how many were written before
        `written_before` and never checked ("unverified": their run stopped before verifying)."""
        with self.read() as conn:
            counted = select(func.count()).select_from(ArchivePackage)
            corrupt = conn.execute(counted.where(ArchivePackage.status == "corrupt")).scalar_one()
            unverified = conn.execute(counted.where(ArchivePackage.status == "written",
                                                    ArchivePackage.created_at < written_before)).scalar_one()
        return {"corrupt": int(corrupt), "unverified": int(unverified)}

    def verified_files(self) -> list[tuple[str, str]]:
        """(package, manifest) of every verified package, as paths relative to the archive folder:
        what each of `[archive] copies` must hold."""
        with self.read() as conn:
            return [(path, manifest) for path, manifest in conn.execute(
                select(ArchivePackage.path, ArchivePackage.manifest).where(ArchivePackage.status == "verified"))]

    def archive_extras(self, start: datetime, end: datetime) -> tuple[set[int], set[int]]:
        """Of the month's letters not archived yet, (those with sent replies, those circulated): the
        few whose packages carry more than the original. Asked once, not letter by letter."""
        month = (Letter.received_at >= start, Letter.received_at < end, Letter.archive_number.is_(None))
        with self.read() as conn:
            replied = set(conn.execute(select(Reply.letter_id).distinct().join(Letter, Reply.letter_id == Letter.id)
                                       .where(*month, Reply.status == "sent", Reply.message.is_not(None))).scalars())
            circulated = set(conn.execute(select(Circulation.letter_id).distinct()
                                          .join(Letter, Circulation.letter_id == Letter.id).where(*month)).scalars())
        return replied, circulated

    def sent_replies(self, letter_ids: list[int]) -> dict[int, list[tuple[int, bytes]]]:
        """(reply id, its mail byte for byte as mailed) of these letters' sent replies, oldest first,
        by letter (as gateway.registry.replies.ReplyRecords.sent_messages gives them one letter at a
        time)."""
        if not letter_ids:
            return {}
        out: dict[int, list[tuple[int, bytes]]] = {}
        with self.read() as conn:
            for first in range(0, len(letter_ids), 1000):
                for reply_id, letter_id, message in conn.execute(
                        select(Reply.id, Reply.letter_id, Reply.message).where(
                            Reply.letter_id.in_(letter_ids[first:first + 1000]), Reply.status == "sent",
                            Reply.message.is_not(None)).order_by(Reply.id)):
                    if message:
                        out.setdefault(letter_id, []).append((reply_id, message))
        return out

    @staticmethod
    def _late(*where: Any) -> tuple[Any, Any]:
        """The statements for what was sent (replies) or finished (circulations) after its letter
        was packed and no package holds yet. Found through ix_replies_archive_package and
        ix_circulations_archive_package (a NULL package id and the status): only what waits, however
        many replies and circulations the register holds."""
        packed = (Letter.archive_number.is_not(None), Letter.purged_at.is_(None), *where)
        letter = (Letter.number, Letter.archive_number, Letter.category)
        replies = (select(Reply.id, Reply.letter_id, *letter, Reply.sent_at, Reply.message)
                   .join(Letter, Reply.letter_id == Letter.id)
                   .where(Reply.archive_package_id.is_(None), Reply.status == "sent", Reply.message.is_not(None),
                          *packed).order_by(Reply.id))
        circulations = (select(Circulation.id, Circulation.letter_id, *letter, Circulation.finished_at, null())
                        .join(Letter, Circulation.letter_id == Letter.id)
                        .where(Circulation.archive_package_id.is_(None), Circulation.status == "finished", *packed)
                        .order_by(Circulation.id))
        return replies, circulations

    def late_items(self, start: datetime, end: datetime) -> list[LateItem]:
        """Of the letters received in [start, end) and packed, the replies sent and the circulations
        finished after their letter was packed, that no package holds yet: replies first, each kind
        oldest first."""
        replies, circulations = self._late(Letter.received_at >= start, Letter.received_at < end)
        with self.read() as conn:
            return [LateItem(kind, item_id, letter_id, number, archive_number, category,
                             _utc(at) if at is not None else utcnow(), message)
                    for kind, stmt in (("reply", replies), ("circulation", circulations))
                    for item_id, letter_id, number, archive_number, category, at, message in conn.execute(stmt)
                    if kind == "circulation" or message]

    def late_received(self, end: datetime) -> list[datetime]:
        """When the letters received before `end` with late items (`late_items`) were received: the
        months an archive run has something to add to."""
        replies, circulations = self._late(Letter.received_at < end)
        with self.read() as conn:
            return [_utc(row[0]) for stmt in (replies, circulations)
                    for row in conn.execute(stmt.with_only_columns(Letter.received_at).order_by(None).distinct())]

    def archive_paths(self, month: str) -> set[str]:
        with self.read() as conn:
            rows = conn.execute(select(ArchivePackage.path, ArchivePackage.manifest)
                                .where(ArchivePackage.month == month))
            return {p for row in rows for p in row}

    def next_archive_part(self, month: str, category: str, kind: str) -> int:
        # A late part's files are named as a mail package's (part-003.mbox.zst): they count together.
        kinds = ("mail", "late") if kind in ("mail", "late") else (kind,)
        with self.read() as conn:
            last = conn.execute(select(func.max(ArchivePackage.part)).where(
                ArchivePackage.month == month, ArchivePackage.category == category,
                ArchivePackage.kind.in_(kinds))).scalar()
            return int(last or 0) + 1

    def series_last(self, series: str) -> int:
        with self.read() as conn:
            return int(conn.execute(select(NumberSeries.last_seq).where(NumberSeries.series == series)).scalar() or 0)

    def archive_commit(self, *, package: dict[str, Any], assignments: list[tuple[int, str]], series: str,
                       expected_last: int, replies: list[int] | None = None,
                       circulations: list[int] | None = None) -> int:
        """Record a written package and give its letters their archive numbers, in one transaction;
        with the sent replies and the finished circulations it holds beside them."""
        now = utcnow()
        with self.write() as conn:
            last = self.advance(conn, series, len(assignments))
            if last != expected_last + len(assignments):
                raise ArchiveSeriesMoved(f"archive series {series} moved while packing (at {last})")
            package_id = conn.execute(insert(ArchivePackage).returning(ArchivePackage.id), [
                {**package, "created_at": now, "status": "written", "verified_at": None, "purged_at": None},
            ]).scalar_one()
            self._assign_archive_numbers(conn, package_id, package["path"], assignments, now)
            self._hold_items(conn, package_id, replies or [], circulations or [])
            return int(package_id)

    def archive_commit_late(self, *, package: dict[str, Any], replies: list[int], circulations: list[int]) -> int:
        """Record a late part (replies sent and circulations finished after their letters were
        packed) and what it holds, in one transaction, with an `archived-late` event on each of
        their letters naming the part. Raises ArchiveSeriesMoved, recording nothing, when a package
        was given one of them meanwhile."""
        now = utcnow()
        with self.write() as conn:
            package_id = conn.execute(insert(ArchivePackage).returning(ArchivePackage.id), [
                {**package, "kind": "late", "letters": 0, "created_at": now, "status": "written",
                 "verified_at": None, "purged_at": None},
            ]).scalar_one()
            if self._hold_items(conn, package_id, replies, circulations) != len(replies) + len(circulations):
                raise ArchiveSeriesMoved(f"{package['path']}: what it holds was packed meanwhile")
            held: dict[int, dict[str, Any]] = {}
            for model, key in ((Reply, "replies"), (Circulation, "circulations")):
                for (letter_id,) in conn.execute(select(model.letter_id).where(model.archive_package_id == package_id)):
                    counts = held.setdefault(letter_id, {"package": package["path"], "replies": 0, "circulations": 0})
                    counts[key] += 1
            if held:
                conn.execute(insert(Event), [self.event_row(letter_id, now, "gateway", "archived-late", None, details)
                                             for letter_id, details in sorted(held.items())])
            return int(package_id)

    @staticmethod
    def _hold_items(conn: Connection, package_id: int, replies: list[int], circulations: list[int]) -> int:
        """The replies and circulations given to the package, each only if no package holds it yet;
        how many were."""
        held = 0
        for model, ids in ((Reply, replies), (Circulation, circulations)):
            for first in range(0, len(ids), 1000):
                held += conn.execute(update(model).where(
                    model.id.in_(ids[first:first + 1000]), model.archive_package_id.is_(None)).values(
                    archive_package_id=package_id)).rowcount
        return held

    def late_hashes(self, package_id: int) -> dict[str, str]:
        """What the register says a late part holds: "reply 12" → "SHA-256 letter-number
        archive-number" (the reply's mail as sent), "circulation 3" → "- letter-number
        archive-number"."""
        letter = (Letter.number, Letter.archive_number)
        with self.read() as conn:
            replies = conn.execute(select(Reply.id, Reply.message, *letter).join(Letter, Reply.letter_id == Letter.id)
                                   .where(Reply.archive_package_id == package_id)).all()
            circulations = conn.execute(select(Circulation.id, *letter)
                                        .join(Letter, Circulation.letter_id == Letter.id)
                                        .where(Circulation.archive_package_id == package_id)).all()
        return {**{f"reply {id_}": f"{hashlib.sha256(message or b'').hexdigest()} {number} {archive_number}"
                   for id_, message, number, archive_number in replies},
                **{f"circulation {id_}": f"- {number} {archive_number}"
                   for id_, number, archive_number in circulations}}

    def late_letters(self, package_id: int) -> list[Letter]:
        """The letters whose replies or circulations a late part holds."""
        with self.session() as session:
            ids = select(Reply.letter_id).where(Reply.archive_package_id == package_id).union(
                select(Circulation.letter_id).where(Circulation.archive_package_id == package_id))
            return list(session.scalars(select(Letter).where(Letter.id.in_(ids)).order_by(Letter.id)))

    @staticmethod
    def _assign_archive_numbers(conn: Connection, package_id: int, path: str, assignments: list[tuple[int, str]],
                                now: datetime) -> None:
        """Every letter's archive number and its `archived` event, in the caller's transaction.

        A month can hold a hundred thousand letters: the pairs go into a temporary table through the
        driver (plain integers and strings, no per-row work in SQLAlchemy), and one UPDATE ... FROM
        and one INSERT ... SELECT do the rest inside the database."""
        postgresql = conn.dialect.name == "postgresql"
        if postgresql:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE archive_assign (position INTEGER PRIMARY KEY, "
                                 "letter_id INTEGER NOT NULL, archive_number TEXT NOT NULL) ON COMMIT DROP")
        else:  # SQLite has no ON COMMIT DROP; the table is dropped below, or rolled back with the rest
            conn.exec_driver_sql("CREATE TEMPORARY TABLE archive_assign (position INTEGER PRIMARY KEY, "
                                 "letter_id INTEGER NOT NULL, archive_number TEXT NOT NULL)")
        mark = _placeholder(conn)
        conn.exec_driver_sql(f"INSERT INTO archive_assign (position, letter_id, archive_number) "
                             f"VALUES ({mark}, {mark}, {mark})",
                             [(n, letter_id, number) for n, (letter_id, number) in enumerate(assignments)])
        assign = table("archive_assign", column("position", Integer), column("letter_id", Integer),
                       column("archive_number", Text))
        letters = cast(Table, Letter.__table__)
        conn.execute(update(letters).where(letters.c.id == assign.c.letter_id).values(
            archive_number=assign.c.archive_number, archived_at=now, archive_package_id=package_id,
            updated_at=now, status=case((letters.c.status.in_(lifecycle.ENDED), "archived"),
                                        else_=letters.c.status)))
        # Typed, not left for PostgreSQL to guess: jsonb_build_object takes arguments of any type.
        details = (func.jsonb_build_object if postgresql else func.json_object)(
            literal_column("'archive_number'"), assign.c.archive_number, literal_column("'package'"),
            sql_cast(literal(path), Text))
        conn.execute(insert(Event).from_select(
            ["letter_id", "at", "actor", "action", "from_department", "to_department", "details"],
            select(assign.c.letter_id, literal(now, UTCDateTime), literal_column("'gateway'"),
                   literal_column("'archived'"), null(), null(), details).order_by(assign.c.position)))
        if not postgresql:
            conn.exec_driver_sql("DROP TABLE temp.archive_assign")

    def archive_packages(self, month: str | None) -> list[ArchivePackage]:
        stmt = select(ArchivePackage).order_by(ArchivePackage.month, ArchivePackage.category, ArchivePackage.kind,
                                               ArchivePackage.part)
        if month is not None:
            stmt = stmt.where(ArchivePackage.month == month)
        with self.session() as session:
            return list(session.scalars(stmt))

    def archive_package(self, package_id: int) -> ArchivePackage | None:
        with self.session() as session:
            return session.get(ArchivePackage, package_id)

    def archive_checked(self, package_id: int, problems: list[str]) -> None:
        now = utcnow()
        with self.write() as conn:
            conn.execute(update(ArchivePackage).where(
                ArchivePackage.id == package_id, ArchivePackage.status != "purged").values(
                status="corrupt" if problems else "verified", verified_at=None if problems else now))

    def archived_hashes(self, package_id: int) -> dict[str, str]:
        """Archive number → "SHA-256 letter-number" of every letter in the package: a month's
        hundred thousand read through the driver (plain strings, no per-row work in SQLAlchemy,
        and one string a letter for the check to compare with what it read)."""
        with self.read() as conn:
            mark = _placeholder(conn)
            # A packed letter always has its archive number: both are written in one transaction.
            rows = conn.exec_driver_sql(f"SELECT archive_number, raw_sha256 || ' ' || number FROM letters WHERE "
                                        f"archive_package_id = {mark} AND archive_number IS NOT NULL", (package_id,))
            return dict(rows.cursor.fetchall()) if rows.cursor is not None else {}

    def archived_letters(self, package_id: int) -> list[Letter]:
        with self.session() as session:
            return list(session.scalars(select(Letter).where(Letter.archive_package_id == package_id)))

    def releasable(self, package_id: int) -> list[tuple[int, str]]:
        with self.read() as conn:
            # Open letters keep their copy: they are still being worked on (text to read, answers).
            return [(r[0], r[1]) for r in conn.execute(select(Letter.id, Letter.raw_path).where(
                Letter.archive_package_id == package_id, Letter.raw_released.is_(False),
                Letter.status.in_((*lifecycle.ENDED, "archived"))))]

    def mark_released(self, letter_ids: list[int]) -> None:
        if not letter_ids:
            return
        with self.write() as conn:
            for start in range(0, len(letter_ids), 1000):
                conn.execute(update(Letter).where(Letter.id.in_(letter_ids[start:start + 1000]))
                             .values(raw_released=True))

    def record_destruction(self, package_ids: list[int], *, approved_by: str, actor: str,
                           approver_name: str = "", audit_actor: str | None = None) -> tuple[list[int], list[str]]:
        """Mark packages destroyed and write the destruction record and its audit row, re-checking
        legal holds under lock. Returns (package ids destroyed, paths refused because a hold was
        placed meanwhile)."""
        now = utcnow()
        with self.write() as conn:
            letters = conn.execute(select(Letter.id, Letter.number, Letter.archive_number, Letter.legal_hold,
                                          Letter.archive_package_id)
                                   .where(Letter.archive_package_id.in_(package_ids)).with_for_update()).all()
            held = {letter.archive_package_id for letter in letters if letter.legal_hold}
            packages = conn.execute(select(ArchivePackage.id, ArchivePackage.path)
                                    .where(ArchivePackage.id.in_(package_ids), ArchivePackage.status != "purged")
                                    .with_for_update()).all()
            refused = [p.path for p in packages if p.id in held]
            chosen = [p for p in packages if p.id not in held]
            ids = [p.id for p in chosen]
            letters = [letter for letter in letters if letter.archive_package_id in ids]
            if not ids:
                return [], refused
            conn.execute(update(ArchivePackage).where(ArchivePackage.id.in_(ids)).values(
                status="purged", purged_at=now))
            conn.execute(update(Letter).where(Letter.archive_package_id.in_(ids)).values(
                purged_at=now, updated_at=now))
            record = conn.execute(insert(DestructionRecord).returning(DestructionRecord.id), [{
                "at": now, "approved_by": approved_by, "actor": actor, "packages": [p.path for p in chosen],
                "letters": [[letter.number, letter.archive_number] for letter in letters]}]).scalar_one()
            if letters:
                conn.execute(insert(Event), [self.event_row(letter.id, now, actor, "destroyed", None,
                                                         {"approved_by": approved_by, "record": int(record)})
                                             for letter in letters])
            conn.execute(insert(AuditRow), [{
                "at": now, "actor": audit_actor or actor, "action": "destroyed", "letter_id": None,
                "subject": approved_by, "address": "",
                "details": {"approved_by": approved_by, "name": approver_name, "record": int(record),
                            "packages": [p.path for p in chosen], "letters": len(letters)}}])
            return ids, refused

    def destruction_records(self) -> list[DestructionRecord]:
        with self.session() as session:
            return list(session.scalars(select(DestructionRecord).order_by(DestructionRecord.id)))


def _utc(value: datetime | str) -> datetime:
    """A time as the driver gives it (PostgreSQL: aware; SQLite: the naive UTC text UTCDateTime
    stored), made aware and UTC as UTCDateTime reads it."""
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")  # a month of them: a sixth of .replace(tzinfo=)'s cost
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _placeholder(conn: Connection) -> str:
    """The driver's own parameter mark, for statements sent through it (exec_driver_sql)."""
    return "%s" if conn.dialect.name == "postgresql" else "?"
