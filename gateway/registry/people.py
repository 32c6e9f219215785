"""People, their sessions and content grants, the audit log, and the letters a person's scope covers.

Who may see what is decided above (gateway/services/access.py) and arrives here as a `Scope`, plain
data the queries filter by, so that the rule lives in one place and every list, count and page
obeys the same one."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, false, func, insert, or_, select, true, union, update

from gateway.registry import lifecycle
from gateway.registry.models import (AuditRow, Borrowing, Event, Grant, Letter, OutboxMail, PasswordReset, Person,
                                     SavedView, WebSession)
from gateway.registry.plan import NewMail
from gateway.registry.store import Store, utcnow


@dataclass(frozen=True)
class Scope:
    """The letters a person may see at all (their register entries; content is decided per letter)."""

    everything: bool = False
    departments: frozenset[str] = frozenset()  # letters with, or once with, these departments
    owners: frozenset[str] = frozenset()  # letters assigned to these addresses
    person_id: int | None = None  # letters granted to this person
    current_only: bool = False  # only letters with the departments now, not once


@dataclass(frozen=True)
class ContentScope:
    """The letters (within a Scope) whose content a person may read, as plain data."""

    everything: bool = False
    ordinary: bool = False  # every letter that is not confidential
    related: frozenset[str] = frozenset()  # letters not confidential that are or were with these departments
    owners: frozenset[str] = frozenset()  # letters assigned to these addresses
    headed: frozenset[str] = frozenset()  # letters of the departments they head
    person_id: int | None = None  # letters granted to them
    # Set: an archived letter's content only through a borrowing of person_id's running at that moment.
    lent_at: datetime | None = None


def content_clause(scope: ContentScope) -> ColumnElement[bool]:
    if scope.everything:
        return true()
    clause = _content_rights(scope)
    if scope.lent_at is None:
        return clause
    lent = Letter.id.in_(select(Borrowing.letter_id).where(
        Borrowing.person_id == scope.person_id, Borrowing.status == "granted", Borrowing.ends_at > scope.lent_at))
    return or_(and_(Letter.status != "archived", clause), and_(Letter.status == "archived", lent))


def _content_rights(scope: ContentScope) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    if scope.ordinary:
        parts.append(Letter.confidentiality != "confidential")
    elif scope.related:
        departments = sorted(scope.related)
        parts.append(and_(Letter.confidentiality != "confidential",
                          or_(Letter.department.in_(departments),
                              Letter.id.in_(select(Event.letter_id).where(Event.to_department.in_(departments))))))
    if scope.owners:
        parts.append(func.lower(Letter.owner).in_(sorted(scope.owners)))
    if scope.headed:
        parts.append(Letter.department.in_(sorted(scope.headed)))
    if scope.person_id is not None:
        parts.append(Letter.id.in_(select(Grant.letter_id).where(Grant.person_id == scope.person_id)))
    return or_(*parts) if parts else false()


@dataclass(frozen=True)
class LetterFilter:
    statuses: tuple[str, ...] = ()
    category: str | None = None
    urgency: str | None = None
    channel: str | None = None
    departments: tuple[str, ...] = ()  # the current department is one of these
    owners: tuple[str, ...] = ()  # assigned to one of these addresses
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    deadline_before: datetime | None = None
    deadline_after: datetime | None = None
    overdue_at: datetime | None = None  # open and past the deadline at this moment
    # "timed": ended with a deadline and a close that stands (no reopening after it), the letters
    # the timeliness rate counts; "on-time": of those, closed by the deadline.
    closed: str | None = None
    nothing: bool = False  # matches no letter (a queue the person has none of)


SORTS: dict[str, Any] = {
    "received": (Letter.received_at, Letter.id), "-received": (Letter.received_at.desc(), Letter.id.desc()),
    "deadline": (Letter.deadline.is_(None), Letter.deadline, Letter.id),
    "-deadline": (Letter.deadline.is_(None), Letter.deadline.desc(), Letter.id.desc()),
    "number": (Letter.series, Letter.seq), "-number": (Letter.series.desc(), Letter.seq.desc()),
}
UNINDEXED_SORTS = ("deadline", "-deadline")  # letters without a deadline last: an order no index gives


def scope_clause(scope: Scope) -> ColumnElement[bool]:
    if scope.everything:
        return true()
    parts = _scope_parts(scope)
    return or_(*parts) if parts else false()


def _scope_parts(scope: Scope) -> list[ColumnElement[bool]]:
    """The letters a scope (not everything) covers, one clause for each way of being in it."""
    parts: list[ColumnElement[bool]] = []
    if scope.departments:
        departments = sorted(scope.departments)
        parts.append(Letter.department.in_(departments))
        if not scope.current_only:
            parts.append(Letter.id.in_(select(Event.letter_id).where(Event.to_department.in_(departments))))
    if scope.owners:
        parts.append(func.lower(Letter.owner).in_(sorted(scope.owners)))
    if scope.person_id is not None:
        parts.append(Letter.id.in_(select(Grant.letter_id).where(Grant.person_id == scope.person_id)))
    return parts


def scoped_by_parts(scope: Scope, dialect: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """`scope_clause(scope) AND condition`, on SQLite part by part: the letters of each part of the
    scope that meet the condition, as one set of ids. Against the OR of the parts, SQLite walks every letter
    the condition's index gives (for a department's overdue count, every open letter overdue in the
    register: with 100,000 letters 0.1-0.2 s) and reads each row to test the scope; part by part,
    each is found through an index of its own (a department's open letters by
    ix_letters_department_status_deadline, without reading a row). For counts and sums, and for
    rows in an order no index gives (all are found before they are sorted); rows in an order an
    index gives are found faster along that index, the OR tested as it goes, up to the page.

    PostgreSQL combines the parts' indexes for the OR itself (a BitmapOr), and took longer part by
    part (a department member's page count: 6 ms as one condition, 65 ms by parts): there it is
    the one condition."""
    if scope.everything:
        return condition
    if dialect == "postgresql":
        return and_(scope_clause(scope), condition)
    parts = _scope_parts(scope)
    if len(parts) <= 1:
        return and_(parts[0] if parts else false(), condition)
    # correlate(None): each part is a query of its own over letters, not a test of the outer row.
    return Letter.id.in_(union(*(select(Letter.id).where(part, condition).correlate(None) for part in parts)))


def filter_clause(f: LetterFilter) -> ColumnElement[bool]:
    if f.nothing:
        return false()
    parts: list[ColumnElement[bool]] = []
    if f.statuses:
        parts.append(Letter.status.in_(f.statuses))
    for column, value in ((Letter.category, f.category), (Letter.urgency, f.urgency), (Letter.channel, f.channel)):
        if value:
            parts.append(column == value)
    if f.departments:
        parts.append(Letter.department.in_(f.departments))
    if f.owners:
        parts.append(func.lower(Letter.owner).in_(f.owners))
    if f.since is not None:
        parts.append(Letter.received_at >= f.since)
    if f.until is not None:
        parts.append(Letter.received_at < f.until)
    if f.deadline_before is not None:
        parts.append(Letter.deadline < f.deadline_before)
    if f.deadline_after is not None:
        parts.append(Letter.deadline >= f.deadline_after)
    if f.overdue_at is not None:
        parts.append(and_(Letter.deadline < f.overdue_at, Letter.status.in_(lifecycle.OPEN)))
    if f.closed is not None:
        parts.append(closed_clause(f.closed))
    return and_(true(), *parts)


CLOSED_FILTERS = ("timed", "on-time")


def closed_clause(which: str) -> ColumnElement[bool]:
    """The letters the timeliness rate counts, as SQL for the dashboard's figures and the list they
    link to: a letter not open now, with a deadline (report.figures.on_time), whose last "closed"
    event stands, no reopening after it (report.figures._closed_at: a sender's low rating undoes
    the close before it, even when the letter ended otherwise since). `which`: "timed" for all of
    them, "on-time" for those closed by their deadline."""
    def last(action: str) -> Any:
        return (select(func.max(Event.at)).where(Event.letter_id == Letter.id, Event.action == action)
                .correlate(Letter).scalar_subquery())

    closed_at, reopened_at = last("closed"), last("reopened")
    parts = [Letter.status.not_in(lifecycle.OPEN), Letter.deadline.is_not(None), closed_at.is_not(None),
             or_(reopened_at.is_(None), closed_at > reopened_at)]
    if which == "on-time":
        parts.append(closed_at <= Letter.deadline)
    elif which != "timed":
        raise ValueError(f"no closed filter {which!r}")
    return and_(*parts)


class PeopleRecords(Store):
    # -- people ---------------------------------------------------------
    def person(self, login: str) -> Person | None:
        with self.session() as session:
            return session.scalars(select(Person).where(Person.login == login)).first()

    def person_by_id(self, person_id: int) -> Person | None:
        with self.session() as session:
            return session.get(Person, person_id)

    def people(self) -> list[Person]:
        with self.session() as session:
            return list(session.scalars(select(Person).order_by(Person.login)))

    def people_count(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count(Person.id))).scalar() or 0)

    def add_person(self, values: dict[str, Any], *, audit: dict[str, Any]) -> Person:
        """A new person, and the audit row saying who added them, in one transaction. Raises
        ValueError when the sign-in name is taken."""
        now = utcnow()
        with self.write() as conn:
            if conn.execute(select(Person.id).where(Person.login == values["login"])).first():
                raise ValueError(f"a person named {values['login']!r} exists already")
            conn.execute(insert(Person).values(created_at=now, updated_at=now, **values))
            conn.execute(insert(AuditRow).values(at=now, **audit))
        person = self.person(values["login"])
        assert person is not None
        return person

    def update_person(self, login: str, values: dict[str, Any], *, audit: dict[str, Any] | None,
                      end_sessions: bool = False, keep_session: str | None = None) -> None:
        """Change a person; with `end_sessions` (disabled, new password) every browser of theirs but
        the one `keep_session` names is signed out in the same transaction. Raises LookupError."""
        now = utcnow()
        with self.write() as conn:
            person_id = conn.execute(select(Person.id).where(Person.login == login)).scalar()
            if person_id is None:
                raise LookupError(f"no person named {login!r}")
            conn.execute(update(Person).where(Person.id == person_id).values(updated_at=now, **values))
            if end_sessions:
                conn.execute(update(WebSession).where(WebSession.person_id == person_id,
                                                      WebSession.ended_at.is_(None),
                                                      WebSession.token_hash != (keep_session or ""))
                             .values(ended_at=now))
            if audit is not None:
                conn.execute(insert(AuditRow).values(at=now, **audit))

    # -- content grants -------------------------------------------------
    def set_grant(self, person_id: int, letter_id: int, *, granted_by: str, reason: str, revoke: bool,
                  audit: dict[str, Any]) -> bool:
        """Grant (or revoke) one person the content of one letter. Returns whether anything changed."""
        now = utcnow()
        with self.write() as conn:
            existing = conn.execute(select(Grant.id).where(Grant.person_id == person_id,
                                                           Grant.letter_id == letter_id)).scalar()
            if revoke and existing is not None:
                conn.execute(delete(Grant).where(Grant.id == existing))
            elif not revoke and existing is None:
                conn.execute(insert(Grant).values(person_id=person_id, letter_id=letter_id, granted_by=granted_by,
                                                  reason=reason, at=now))
            else:
                return False
            conn.execute(insert(AuditRow).values(at=now, **audit))
        return True

    def granted(self, person_id: int, letter_id: int) -> bool:
        with self.read() as conn:
            return conn.execute(select(Grant.id).where(Grant.person_id == person_id,
                                                       Grant.letter_id == letter_id)).first() is not None

    # -- sessions -------------------------------------------------------
    def open_web_session(self, token_hash: str, person_id: int, csrf: str, address: str,
                         audit: dict[str, Any] | None, *, method: str, awaiting_code: bool = False,
                         user_agent: str = "") -> None:
        now = utcnow()
        with self.write() as conn:
            conn.execute(insert(WebSession).values(token_hash=token_hash, person_id=person_id, csrf=csrf,
                                                   address=address, created_at=now, last_seen_at=now,
                                                   method=method, awaiting_code=awaiting_code,
                                                   user_agent=user_agent[:200]))
            if audit is not None:
                conn.execute(insert(AuditRow).values(at=now, **audit))

    def admit_web_session(self, token_hash: str, audit: dict[str, Any]) -> bool:
        """A session that waited for its second step is signed in; False if it no longer waits."""
        now = utcnow()
        with self.write() as conn:
            admitted = conn.execute(update(WebSession).where(WebSession.token_hash == token_hash,
                                                             WebSession.awaiting_code.is_(True),
                                                             WebSession.ended_at.is_(None))
                                    .values(awaiting_code=False, last_seen_at=now))
            if not admitted.rowcount:
                return False
            conn.execute(insert(AuditRow).values(at=now, **audit))
            return True

    def ask_password_reset(self, person_id: int, token_hash: str, address: str, mail: NewMail,
                           audit: dict[str, Any]) -> None:
        """A reset link kept (by its hash) and its mail queued, in one transaction."""
        now = utcnow()
        with self.write() as conn:
            conn.execute(insert(PasswordReset).values(person_id=person_id, token_hash=token_hash, address=address[:64],
                                                      created_at=now))
            conn.execute(insert(OutboxMail).values(**self.mail_row(None, mail, now)))
            conn.execute(insert(AuditRow).values(at=now, **audit))

    def password_resets_since(self, person_id: int, since: datetime) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count(PasswordReset.id)).where(
                PasswordReset.person_id == person_id, PasswordReset.created_at >= since)).scalar() or 0)

    def password_reset(self, token_hash: str, since: datetime) -> Person | None:
        """The person of an unused reset link made after `since`, if it is one."""
        with self.session() as session:
            return session.scalars(select(Person).join(PasswordReset, PasswordReset.person_id == Person.id).where(
                PasswordReset.token_hash == token_hash, PasswordReset.used_at.is_(None),
                PasswordReset.created_at >= since)).first()

    def use_password_reset(self, token_hash: str, since: datetime, password_hash: str,
                           audit: dict[str, Any]) -> bool:
        """The new password of a reset link, once: the link and every other of theirs are used up and
        their browsers signed out, in one transaction. False if the link is used, lapsed or unknown."""
        now = utcnow()
        with self.write() as conn:
            person_id = conn.execute(update(PasswordReset).where(
                PasswordReset.token_hash == token_hash, PasswordReset.used_at.is_(None),
                PasswordReset.created_at >= since).values(used_at=now).returning(PasswordReset.person_id)).scalar()
            if person_id is None:
                return False
            conn.execute(update(PasswordReset).where(PasswordReset.person_id == person_id,
                                                     PasswordReset.used_at.is_(None)).values(used_at=now))
            conn.execute(update(Person).where(Person.id == person_id).values(password_hash=password_hash,
                                                                              updated_at=now))
            conn.execute(update(WebSession).where(WebSession.person_id == person_id,
                                                  WebSession.ended_at.is_(None)).values(ended_at=now))
            conn.execute(insert(AuditRow).values(at=now, **audit))
            return True

    def use_totp_step(self, person_id: int, step: int) -> bool:
        """Record that a code of this time step was used; False if it, or a later one, was already:
        one condition in one statement, so two sign-ins racing with the same code cannot both pass."""
        with self.write() as conn:
            used = conn.execute(update(Person).where(
                Person.id == person_id, Person.totp_enabled_at.is_not(None),
                or_(Person.totp_last_step.is_(None), Person.totp_last_step < step)).values(totp_last_step=step))
            return bool(used.rowcount)

    def use_recovery_code(self, person_id: int, code_hash: str) -> int | None:
        """Strike a recovery code off; returns how many are left, or None if it is not one of them."""
        with self.write() as conn:
            codes = conn.execute(select(Person.recovery_codes).where(Person.id == person_id)
                                 .with_for_update()).scalar()
            if not codes or code_hash not in codes:
                return None
            left = [c for c in codes if c != code_hash]
            conn.execute(update(Person).where(Person.id == person_id).values(recovery_codes=left))
            return len(left)

    def web_session(self, token_hash: str) -> WebSession | None:
        with self.session() as session:
            return session.get(WebSession, token_hash)

    def touch_web_session(self, token_hash: str, now: datetime) -> None:
        with self.write() as conn:
            conn.execute(update(WebSession).where(WebSession.token_hash == token_hash).values(last_seen_at=now))

    def open_web_sessions(self, person_id: int) -> list[WebSession]:
        """A person's browsers not signed out, the latest seen first (some may have lapsed)."""
        with self.session() as session:
            return list(session.scalars(select(WebSession).where(WebSession.person_id == person_id,
                                                                 WebSession.ended_at.is_(None),
                                                                 WebSession.awaiting_code.is_(False))
                                        .order_by(WebSession.last_seen_at.desc())))

    def end_other_web_sessions(self, person_id: int, keep: str, audit: dict[str, Any]) -> int:
        """Sign out every browser of a person but one; returns how many were signed out."""
        now = utcnow()
        with self.write() as conn:
            ended = conn.execute(update(WebSession).where(WebSession.person_id == person_id,
                                                          WebSession.ended_at.is_(None),
                                                          WebSession.token_hash != keep).values(ended_at=now))
            conn.execute(insert(AuditRow).values(at=now, **{**audit, "details": {**audit["details"],
                                                                                 "signed_out": ended.rowcount}}))
            return int(ended.rowcount)

    def end_web_session(self, token_hash: str, audit: dict[str, Any] | None) -> None:
        now = utcnow()
        with self.write() as conn:
            ended = conn.execute(update(WebSession).where(WebSession.token_hash == token_hash,
                                                          WebSession.ended_at.is_(None)).values(ended_at=now))
            if ended.rowcount and audit is not None:
                conn.execute(insert(AuditRow).values(at=now, **audit))

    # -- saved views ----------------------------------------------------
    def saved_views(self, person_id: int) -> list[SavedView]:
        with self.session() as session:
            return list(session.scalars(select(SavedView).where(SavedView.person_id == person_id)
                                        .order_by(SavedView.name)))

    def save_view(self, person_id: int, name: str, query: dict[str, Any]) -> int:
        """Save (or replace, by name) a view; returns its id."""
        now = utcnow()
        with self.write() as conn:
            existing = conn.execute(select(SavedView.id).where(SavedView.person_id == person_id,
                                                               SavedView.name == name)).scalar()
            if existing is not None:
                conn.execute(update(SavedView).where(SavedView.id == existing).values(query=query))
                return int(existing)
            return int(conn.execute(insert(SavedView).values(person_id=person_id, name=name, query=query,
                                                             created_at=now).returning(SavedView.id)).scalar_one())

    def delete_view(self, person_id: int, view_id: int) -> bool:
        with self.write() as conn:
            return bool(conn.execute(delete(SavedView).where(SavedView.id == view_id,
                                                             SavedView.person_id == person_id)).rowcount)

    # -- tags ---------------------------------------------------------------
    def add_tag(self, number: str, tag: str, *, actor: str, seen: lifecycle.Seen | None = None) -> bool:
        """Add a tag to a letter (an event); False when it has it already. Raises LookupError and
        LetterMoved (not with whom `seen` says)."""
        now = utcnow()
        with self.write() as conn:
            row = conn.execute(select(Letter.id, Letter.tags, Letter.department, Letter.owner)
                               .where(Letter.number == number).with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            lifecycle.unmoved(number, row.department, row.owner, seen)
            if tag in row.tags:
                return False
            conn.execute(update(Letter).where(Letter.id == row.id).values(tags=[*row.tags, tag], updated_at=now))
            conn.execute(insert(Event), [self.event_row(row.id, now, actor, "tagged", None, {"tag": tag})])
        return True

    # -- the audit log --------------------------------------------------
    def audit(self, rows: Sequence[dict[str, Any]]) -> None:
        now = utcnow()
        with self.write() as conn:
            conn.execute(insert(AuditRow), [{"at": now, "letter_id": None, "subject": "", "address": "",
                                             "details": {}, **row} for row in rows])

    def audit_rows(self, *, since: datetime | None = None, until: datetime | None = None,
                   actor: str | None = None, action: str | None = None, letter_id: int | None = None,
                   actions: tuple[str, ...] = (), limit: int = 500,
                   older_than: tuple[datetime, int] | None = None) -> list[tuple[AuditRow, str | None]]:
        """Audit rows, newest first, each with its letter's number; `older_than`: only those after
        this row (its time and id) in that order, for reading the log a chunk at a time."""
        stmt = (select(AuditRow, Letter.number).outerjoin(Letter, Letter.id == AuditRow.letter_id)
                .order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(limit))
        if older_than is not None:
            at, row_id = older_than
            stmt = stmt.where(or_(AuditRow.at < at, and_(AuditRow.at == at, AuditRow.id < row_id)))
        if since is not None:
            stmt = stmt.where(AuditRow.at >= since)
        if until is not None:
            stmt = stmt.where(AuditRow.at < until)
        if actor:
            stmt = stmt.where(AuditRow.actor == actor)
        if action:
            stmt = stmt.where(AuditRow.action == action)
        if letter_id is not None:
            stmt = stmt.where(AuditRow.letter_id == letter_id)
        if actions:
            stmt = stmt.where(AuditRow.action.in_(actions))
        with self.session() as session:
            return [(row, number) for row, number in session.execute(stmt)]

    def read_since(self, actor: str, letter_id: int, since: datetime, actions: tuple[str, ...]) -> bool:
        """Has this person read this letter (one of `actions`) since a moment?"""
        with self.read() as conn:
            return conn.execute(select(AuditRow.id).where(AuditRow.actor == actor, AuditRow.letter_id == letter_id,
                                                          AuditRow.action.in_(actions), AuditRow.at >= since)
                                .limit(1)).first() is not None

    def failures_since(self, since: datetime, *, actor: str | None = None, address: str | None = None,
                       action: str = "sign-in-failed") -> int:
        """Failed sign-ins (or other audited attempts) since a moment, for one account or one client address."""
        stmt = select(func.count(AuditRow.id)).where(AuditRow.action == action, AuditRow.at >= since)
        stmt = stmt.where(AuditRow.actor == actor) if actor is not None else stmt.where(AuditRow.address == address)
        with self.read() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def last_success(self, actor: str) -> datetime | None:
        with self.read() as conn:
            return conn.execute(select(func.max(AuditRow.at)).where(AuditRow.actor == actor,
                                                                    AuditRow.action == "sign-in")).scalar()

    # -- letters within a scope -----------------------------------------
    def letters_page(self, scope: Scope, letter_filter: LetterFilter, *, sort: str, offset: int,
                     limit: int) -> tuple[list[Letter], int]:
        """One page of the letters a scope covers, and how many there are in all: two queries."""
        by_parts = scoped_by_parts(scope, self.engine.dialect.name, filter_clause(letter_filter))
        where = by_parts if sort in UNINDEXED_SORTS else and_(scope_clause(scope), filter_clause(letter_filter))
        with self.session() as session:
            total = int(session.scalar(select(func.count(Letter.id)).where(by_parts)) or 0)
            rows = list(session.scalars(select(Letter).where(where).order_by(*SORTS[sort])
                                        .offset(offset).limit(limit)))
        return rows, total

    def letter_ids(self, scope: Scope, letter_filter: LetterFilter, *, sort: str) -> list[int]:
        """The ids of every letter a scope covers, in `sort`'s order: what an export holds, decided
        at once (pages read one after the other would skip a row whenever one before it left the
        filter meanwhile)."""
        by_parts = scoped_by_parts(scope, self.engine.dialect.name, filter_clause(letter_filter))
        where = by_parts if sort in UNINDEXED_SORTS else and_(scope_clause(scope), filter_clause(letter_filter))
        with self.read() as conn:
            return list(conn.execute(select(Letter.id).where(where).order_by(*SORTS[sort])).scalars())

    def letters_by_ids(self, ids: Sequence[int]) -> list[Letter]:
        """These letters in this order (one gone since is left out)."""
        with self.session() as session:
            found = {letter.id: letter for letter in session.scalars(select(Letter).where(Letter.id.in_(ids)))}
        return [found[i] for i in ids if i in found]

    def letters_count(self, scope: Scope, letter_filter: LetterFilter) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count(Letter.id))
                                    .where(scoped_by_parts(scope, self.engine.dialect.name,
                                                          filter_clause(letter_filter)))).scalar() or 0)

    def in_scope(self, scope: Scope, letter_id: int) -> bool:
        with self.read() as conn:
            return conn.execute(select(Letter.id).where(Letter.id == letter_id,
                                                        scope_clause(scope))).first() is not None

    def departments_of(self, letter_id: int) -> set[str]:
        """Every department a letter is or was with."""
        with self.read() as conn:
            past = conn.execute(select(Event.to_department).where(Event.letter_id == letter_id,
                                                                  Event.to_department.is_not(None))).scalars()
            now = conn.execute(select(Letter.department).where(Letter.id == letter_id)).scalar()
        return {d for d in (*past, now) if d}

    def assign(self, number: str, owner: str | None, *, actor: str, note: str,
               notify: list[NewMail], seen: lifecycle.Seen | None = None,
               acknowledged: bool = False) -> tuple[str | None, str | None]:
        """Assign a letter to a person (their address), or clear it; they are notified in the same
        transaction. Returns (before, after). Raises LookupError, Unchanged (already theirs), TransitionRefused
        (a closed letter) and LetterMoved (not with whom `seen` says: the assignee was checked
        against the department it was with).

        An acknowledged letter given to someone is `routed` again: its new owner has not
        acknowledged it (lifecycle.unacknowledged). `acknowledged`: the new owner has (their own
        acknowledgement stands, or they take it themselves, which is one)."""
        now = utcnow()
        with self.write() as conn:
            row = conn.execute(select(Letter.id, Letter.status, Letter.owner, Letter.department)
                               .where(Letter.number == number).with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            lifecycle.unmoved(number, row.department, row.owner, seen)
            if row.status not in lifecycle.OPEN:
                raise lifecycle.TransitionRefused(f"{number} is {row.status}: it cannot be assigned "
                                                  f"(only when {', '.join(lifecycle.OPEN)})")
            if (row.owner or "").lower() == (owner or ""):
                raise (lifecycle.Unchanged(f"{number} is already assigned to {owner}", "already-assigned",
                                           number=number, person=owner) if owner else
                       lifecycle.Unchanged(f"{number} has no one", "no-one-assigned", number=number))
            status = row.status if acknowledged or owner is None else lifecycle.unacknowledged(row.status)
            conn.execute(update(Letter).where(Letter.id == row.id).values(owner=owner, status=status,
                                                                          updated_at=now))
            conn.execute(insert(Event), [self.event_row(row.id, now, actor, "assigned", None,
                                                        {"from": row.owner, "to": owner,
                                                         **({"status": status} if status != row.status else {}),
                                                         **({"text": note} if note else {}),
                                                         "notify": [m.recipient for m in notify]})])
            if notify:
                conn.execute(insert(OutboxMail), [self.mail_row(row.id, m, now) for m in notify])
        return row.owner, owner
