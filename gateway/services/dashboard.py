"""The dashboard's figures for one person: counted in SQL over the letters their work scope covers
(Access.work_scope decides it), each with the queue that lists the same letters.

A figure's `url` opens `/letters` with filters giving exactly its count, unless `exact` is False:
then the queue is the nearest one the queue filters can express (it shows more letters), and
the page says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, func, select

from gateway.config import Config
from gateway.registry import Registry, lifecycle
from gateway.registry.models import Letter
from gateway.registry.people import closed_clause, scoped_by_parts
from gateway.report.figures import Period
from gateway.services.access import Access
from gateway.services.people import Principal
from gateway.spool import Spool

CHANNELS = ("email", "fax")
# The open states, in the order a letter goes through them.
WORK_STATES = ("registered", "needs-triage", "routed", "acknowledged", "in-progress", "awaiting-sender", "answered")


def queue_url(queue: str = "all", **filters: str) -> str:
    return "/letters?" + urlencode({"queue": queue, **{k: v for k, v in filters.items() if v}})


@dataclass(frozen=True)
class Figure:
    count: int
    url: str | None = None  # the queue behind the number
    exact: bool = True  # the queue lists exactly `count` letters


@dataclass
class DepartmentFigures:
    id: str
    name: str
    open: Figure
    by_status: dict[str, Figure]  # open letters by state (each exact)
    overdue: Figure
    due_this_week: Figure


@dataclass
class Timeliness:
    month: str  # YYYY-MM
    closed: Figure  # letters received this month and closed
    on_time: Figure  # of those, closed by their deadline
    rate: float | None


@dataclass
class Dashboard:
    today: date
    week_end: date  # the last day of this week (Sunday)
    intake: dict[str, Figure]  # today's letters by channel
    intake_total: Figure
    departments: list[DepartmentFigures]
    open_total: Figure
    overdue_total: Figure
    due_this_week_total: Figure
    timeliness: Timeliness
    triage: Figure
    quarantined: Figure | None = None  # administrators and the registry office
    dead_letters: Figure | None = None
    statuses: tuple[str, ...] = field(default=WORK_STATES)


def _between(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(column >= start, column < end)


def compute(config: Config, registry: Registry, access: Access, who: Principal,
            now: datetime | None = None) -> Dashboard:
    now = now or datetime.now(timezone.utc)
    tz = ZoneInfo(config.model.gateway.timezone)
    local = now.astimezone(tz)
    today = local.date()
    tomorrow = today + timedelta(days=1)
    day_start = datetime.combine(today, datetime.min.time(), tz).astimezone(timezone.utc)
    day_end = datetime.combine(tomorrow, datetime.min.time(), tz).astimezone(timezone.utc)
    week_end = today + timedelta(days=6 - today.weekday())  # Sunday
    week_stop = datetime.combine(week_end + timedelta(days=1), datetime.min.time(), tz).astimezone(timezone.utc)
    month = Period.parse(f"{today.year}-{today.month:02d}", config.model.gateway.timezone)
    month_first = month.days(config.model.gateway.timezone)[0]
    work_scope = access.work_scope(who)
    dialect = registry.engine.dialect.name
    # Each figure's queue lists what the figure counts: the person's work scope (the overdue queue
    # is that scope already); for those who see the whole register it is the whole register.
    work_only = "" if work_scope.everything else "1"

    def url(queue: str = "all", **filters: str) -> str:
        return queue_url(queue, **filters, work=work_only)

    is_open = Letter.status.in_(lifecycle.OPEN)
    overdue = and_(Letter.deadline.is_not(None), Letter.deadline < now)
    due = and_(Letter.deadline.is_not(None), Letter.deadline >= now, Letter.deadline < week_stop)
    with registry.read() as conn:
        intake = dict(conn.execute(
            select(Letter.channel, func.count(Letter.id))
            .where(scoped_by_parts(work_scope, dialect, _between(Letter.received_at, day_start, day_end)))
            .group_by(Letter.channel)).all())
        work = conn.execute(
            select(Letter.department, Letter.status, func.count(Letter.id),
                   func.sum(case((overdue, 1), else_=0)), func.sum(case((due, 1), else_=0)))
            .where(scoped_by_parts(work_scope, dialect, is_open))
            .group_by(Letter.department, Letter.status)).all()
        in_triage = scoped_by_parts(work_scope, dialect, Letter.status == "needs-triage")
        triage = int(conn.execute(select(func.count(Letter.id)).where(in_triage)).scalar() or 0)
        # The timeliness rate: the letters received this month whose close stands (the list its
        # figures link to applies the same clause).
        closed_count, on_time_count = conn.execute(
            select(func.count(), func.sum(case((closed_clause("on-time"), 1), else_=0)))
            .where(scoped_by_parts(work_scope, dialect, and_(_between(Letter.received_at, month.start, month.end),
                                                   closed_clause("timed"))))).one()
    today_text = today.isoformat()
    week_text = (week_end + timedelta(days=1)).isoformat()  # deadline_before: the day after the week

    per: dict[str | None, dict[str, list[int]]] = {}
    for department, status, count, late, soon in work:
        per.setdefault(department, {})[status] = [int(count), int(late or 0), int(soon or 0)]
    totals = [sum(v[i] for states in per.values() for v in states.values()) for i in range(3)]
    known = config.departments
    # Letters without a department (triage) count in the totals, not in a department's row.
    order = [d for d in known if d in per] + sorted(d for d in per if d is not None and d not in known)
    departments = []
    for dep in order:
        states = per[dep]
        total = sum(v[0] for v in states.values())
        departments.append(DepartmentFigures(
            id=dep, name=known[dep].name if dep in known else dep,
            open=Figure(total, url(department=dep, status="open", sort="deadline")),
            by_status={s: Figure(states[s][0], url(department=dep, status=s))
                       for s in (*WORK_STATES, *sorted(set(states) - set(WORK_STATES))) if s in states},
            overdue=Figure(sum(v[1] for v in states.values()), queue_url("overdue", department=dep)),
            # Due by Sunday and not yet late: the queue's days also hold today's letters already late.
            due_this_week=Figure(sum(v[2] for v in states.values()),
                                 url(department=dep, status="open", deadline_after=today_text,
                                     deadline_before=week_text, sort="deadline"),
                                 exact=False)))
    queues = access.queues(who)
    # The timeliness figures' letters: received this month, with a deadline and a close that stands.
    month_days = {"since": month_first.isoformat(), "until": month.days(config.model.gateway.timezone)[-1].isoformat()}
    board = Dashboard(
        today=today, week_end=week_end,
        intake={c: Figure(int(intake.get(c, 0)), url(channel=c, since=today_text, until=today_text))
                for c in (*CHANNELS, *sorted(set(intake) - set(CHANNELS)))},
        intake_total=Figure(sum(int(v) for v in intake.values()), url(since=today_text, until=today_text)),
        departments=departments,
        open_total=Figure(totals[0], url(status="open", sort="deadline")),
        overdue_total=Figure(totals[1], queue_url("overdue")),
        due_this_week_total=Figure(totals[2], url(status="open", deadline_after=today_text,
                                                  deadline_before=week_text, sort="deadline"), exact=False),
        timeliness=Timeliness(
            month=f"{today.year}-{today.month:02d}",
            closed=Figure(int(closed_count or 0), url(closed="timed", **month_days)),
            on_time=Figure(int(on_time_count or 0), url(closed="on-time", **month_days)),
            rate=round(int(on_time_count or 0) / closed_count, 4) if closed_count else None),
        triage=Figure(triage, url("triage") if "triage" in queues else url(status="needs-triage")))
    if who.has("admin", "registry"):
        spool = Spool(config.spool_dir, config.message_dir, max_attempts=config.model.spool.max_attempts)
        operations = "/operations" if who.has("admin") else None
        board.quarantined = Figure(len(spool.quarantined()), operations + "#quarantine" if operations else None)
        board.dead_letters = Figure(registry.outbox_counts().get("dead", 0),
                                    operations + "#dead" if operations else None)
    return board
