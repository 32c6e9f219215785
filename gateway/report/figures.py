"""The figures the organisation is judged by, for a month or a quarter.

Letters belong to the period in which they were received (local time). Times
come from the events of each letter:

- timeliness rate: of the period's letters that were closed and have a
  deadline, the share closed by it; a letter without one (a backlog letter
  imported without --notify, which the old system handled) is in neither;
- time to acknowledge: from registration to the department's acknowledgement;
  time to close: from receipt to closing (mean and 90th percentile, hours);
- overdue: the period's letters still open past their deadline at the report's
  moment (the end of the period, or now if it has not ended), the deadline they
  had then: a request for missing materials, a resumption or a reopening since
  changes nothing;
- accuracy rate: of the period's letters that were routed by the rules, the
  share not re-routed by a person afterwards;
- archive completeness: of the period's letters due for archiving (received in
  a month that has ended), the share that has an archive number;
- volumes by channel: e-mail, fax and the paper channels (post, courier,
  front desk) each on their own, and paper as a whole;
- incomplete submissions: the period's letters whose sender was asked for
  missing materials, and how that ended (supplemented, withdrawn, gone on
  without them, still awaiting the sender at the report's moment);
- satisfaction: each rated letter counts with its sender's latest rating (a
  dissatisfied sender's case goes on, and their last word is the one that
  stands); mean score and the share of satisfied senders (4 or 5), overall,
  per department and per category;
- reopened: letters a sender's low rating reopened, and how often;
- replies under approval: drafts submitted, approved (the whole chain) and
  returned to their handler; the time to approve, from a draft's submission
  to the last approval of its chain (mean and 90th percentile, hours);
- circulation timeliness per reader: of the steps that reached a reader in the
  period and were due by the report's moment, the share signed within their
  deadline (a step still unsigned past its deadline counts as late);
- borrowings: requests made in the period, and how they stand (granted,
  refused, returned, expired, awaiting a decision).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from gateway.registry import Registry
from gateway.registry.models import Borrowing, CirculationStep, Event, Letter
from gateway.registry.store import FIRST_DAY, LAST_DAY

PAPER_CHANNELS = ("post", "courier", "front-desk")
SATISFIED = 4  # a rating of 4 or 5 of 5

PERIOD = re.compile(r"^(\d{4})-(?:(0[1-9]|1[0-2])|Q([1-4]))$")


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime  # UTC
    end: datetime  # UTC, exclusive

    @classmethod
    def parse(cls, value: str, timezone_name: str) -> Period:
        match = PERIOD.match(value)
        if not match:
            raise ValueError(f"{value!r} is neither a month (YYYY-MM) nor a quarter (YYYY-Qn)")
        year = int(match.group(1))
        if not FIRST_DAY.year <= year <= LAST_DAY.year:
            raise ValueError(f"{value!r}: the year is outside {FIRST_DAY.year} to {LAST_DAY.year}")
        first = int(match.group(2)) if match.group(2) else (int(match.group(3)) - 1) * 3 + 1
        months = 1 if match.group(2) else 3
        tz = ZoneInfo(timezone_name)
        last = first + months
        start = datetime.combine(datetime(year, first, 1).date(), time.min, tz)
        end = datetime.combine(datetime(year + (last > 12), (last - 1) % 12 + 1, 1).date(), time.min, tz)
        return cls(value, start.astimezone(timezone.utc), end.astimezone(timezone.utc))

    def days(self, timezone_name: str) -> tuple[date, date]:
        """The period's first and last local day (the organisation's dates, not UTC's)."""
        tz = ZoneInfo(timezone_name)
        return self.start.astimezone(tz).date(), (self.end.astimezone(tz) - timedelta(microseconds=1)).date()


def on_time(closed_at: datetime, deadline: datetime) -> bool:
    """Timeliness: a letter closed by its deadline. Only a letter with a deadline counts in the
    rate: a backlog letter imported without --notify has none (the old system handled it) and is
    neither on time nor late."""
    return closed_at <= deadline


def _stats(hours: list[float]) -> dict[str, float | int | None]:
    if not hours:
        return {"count": 0, "mean_hours": None, "p90_hours": None}
    ordered = sorted(hours)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {"count": len(ordered), "mean_hours": round(sum(ordered) / len(ordered), 2), "p90_hours": round(p90, 2)}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _satisfaction(scores: list[int]) -> dict[str, Any]:
    satisfied = sum(score >= SATISFIED for score in scores)
    return {"rated": len(scores), "mean": round(sum(scores) / len(scores), 2) if scores else None,
            "satisfied": satisfied, "share_satisfied": _rate(satisfied, len(scores))}


def _incomplete_outcome(events: list[Any], moment: datetime) -> str | None:
    """How the letter's last request for missing materials ended by `moment` (None: never asked)."""
    outcome = None
    for event in events:
        if event.at > moment:
            break
        if event.action == "incomplete":
            outcome = "awaiting"
        elif outcome == "awaiting" and event.action in ("supplemented", "withdrawn", "proceeded"):
            outcome = event.action
    return outcome


def _approval_hours(events: list[Any], moment: datetime) -> tuple[Counter[str], list[float]]:
    """A letter's replies: how many were submitted, fully approved and returned, and the hours from
    each approved draft's (last) submission to its last approval."""
    counts: Counter[str] = Counter()
    hours: list[float] = []
    submitted: dict[Any, datetime] = {}
    for event in events:
        if event.at > moment:
            break
        draft = (event.details or {}).get("draft")
        if event.action == "reply-submitted":
            counts["submitted"] += 1
            submitted[draft] = event.at
        elif event.action == "reply-returned":
            counts["returned"] += 1
        elif event.action == "reply-approved" and (event.details or {}).get("complete"):
            counts["approved"] += 1
            if draft in submitted:
                hours.append((event.at - submitted[draft]).total_seconds() / 3600)
    return counts, hours


def _score(event: Any) -> int | None:
    score = (event.details or {}).get("score")
    return score if isinstance(score, int) and 1 <= score <= 5 else None


def _closed_at(events: list[Event], until: datetime) -> datetime | None:
    """When the letter was closed as of `until`, or None if it was open then: a reopening (a sender's
    low rating) undoes the close before it, and a later close counts from its own time."""
    closed_at = None
    for event in events:
        if event.at > until:
            break
        if event.action == "closed":
            closed_at = event.at
        elif event.action == "reopened":
            closed_at = None
    return closed_at


def _deadline_at(deadline: datetime | None, events: list[Event], moment: datetime) -> datetime | None:
    """The letter's deadline at `moment`, from its deadline now: a request for missing materials
    since paused the one it had then (kept in the request's event), a letter resumed since had
    none while it waited, and a reopening since replaced the one it had (kept in its event)."""
    for event in reversed(events):
        if event.at <= moment:
            break
        details = event.details or {}
        if event.action == "incomplete":
            paused = details.get("paused_deadline")
            deadline = datetime.fromisoformat(paused) if paused else None
        elif event.action == "proceeded" or (event.action == "supplemented" and details.get("to") == "in-progress"):
            deadline = None
        elif event.action == "reopened" and "replaced_deadline" in details:
            replaced = details["replaced_deadline"]
            deadline = datetime.fromisoformat(replaced) if replaced else None
    return deadline


def compute(registry: Registry, period: Period, timezone_name: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    moment = min(now, period.end)
    tz = ZoneInfo(timezone_name)
    this_month = now.astimezone(tz).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first, last = period.days(timezone_name)
    with registry.session() as session:
        letters = list(session.scalars(
            select(Letter).where(Letter.received_at >= period.start, Letter.received_at < period.end)
            .options(selectinload(Letter.events)).order_by(Letter.received_at, Letter.id)))
        steps = list(session.scalars(select(CirculationStep).where(
            CirculationStep.reached_at >= period.start, CirculationStep.reached_at < period.end)))
        borrowings = list(session.scalars(select(Borrowing).where(
            Borrowing.requested_at >= period.start, Borrowing.requested_at < period.end)))

    by_channel: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    by_department: Counter[str] = Counter()
    closed = within = routed = rerouted = due_archive = archived = 0
    to_ack: list[float] = []
    to_close: list[float] = []
    overdue = []
    incomplete: Counter[str] = Counter()
    scores: list[int] = []
    scores_by: dict[str, dict[str, list[int]]] = {"department": {}, "category": {}}
    reopened_letters = reopened_times = 0
    replies: Counter[str] = Counter()
    to_approve: list[float] = []
    for letter in letters:
        by_channel[letter.channel] += 1
        by_category[letter.category or "uncategorised"] += 1
        by_department[letter.department or "-"] += 1
        events = sorted(letter.events, key=lambda e: (e.at, e.id))
        outcome = _incomplete_outcome(events, moment)
        if outcome is not None:
            incomplete["requested"] += 1
            incomplete[outcome] += 1
        latest = next((score for e in reversed(events)
                       if e.action == "rated" and e.at <= moment and (score := _score(e)) is not None), None)
        if latest is not None:
            scores.append(latest)
            scores_by["department"].setdefault(letter.department or "-", []).append(latest)
            scores_by["category"].setdefault(letter.category or "uncategorised", []).append(latest)
        reply_counts, reply_hours = _approval_hours(events, moment)
        replies.update(reply_counts)
        to_approve += reply_hours
        reopenings = sum(e.action == "reopened" and e.at <= moment for e in events)
        reopened_letters += reopenings > 0
        reopened_times += reopenings
        registered = next((e.at for e in events if e.action == "registered"), letter.received_at)
        acked = next((e.at for e in events if e.action == "acknowledged"), None)
        closed_at = _closed_at(events, now)  # the close that stands: a reopening undoes the one before it
        if acked is not None:
            to_ack.append((acked - registered).total_seconds() / 3600)
        if closed_at is not None:
            to_close.append((closed_at - letter.received_at).total_seconds() / 3600)
            if letter.deadline is not None:  # on time or late only by a deadline
                closed += 1
                within += on_time(closed_at, letter.deadline)
        routed_at = next((e.at for e in events if e.action == "routed"), None)
        if routed_at is not None:
            routed += 1
            if any(e.action == "reassigned" and (e.details or {}).get("by_person") and e.at >= routed_at
                   for e in events):
                rerouted += 1
        if letter.received_at.astimezone(tz) < this_month:  # its month has ended: due for archiving
            due_archive += 1
            archived += letter.archive_number is not None
        open_at_moment = _closed_at(events, moment) is None
        deadline = _deadline_at(letter.deadline, events, moment)  # not the one a later request or resumption set
        if open_at_moment and deadline is not None and deadline < moment:
            overdue.append({"number": letter.number, "department": letter.department, "category": letter.category,
                            "deadline": deadline.astimezone(tz).isoformat(), "status": letter.status,
                            "subject": letter.subject if letter.confidentiality != "confidential" else "(confidential)",
                            "days_overdue": round((moment - deadline).total_seconds() / 86400, 1)})
    return {
        # The bounds in the organisation's time zone: the same instants, its own dates.
        "period": period.name, "from": period.start.astimezone(tz).isoformat(),
        "until": period.end.astimezone(tz).isoformat(), "first_day": first.isoformat(),
        "last_day": last.isoformat(), "timezone": timezone_name,
        "as_of": moment.isoformat(), "letters": len(letters),
        "volumes": {"channel": dict(sorted(by_channel.items())), "category": dict(sorted(by_category.items())),
                    "department": dict(sorted(by_department.items()))},
        "paper": sum(by_channel[channel] for channel in PAPER_CHANNELS),
        "timeliness": {"closed": closed, "closed_within_deadline": within, "rate": _rate(within, closed)},
        "time_to_acknowledge": _stats(to_ack),
        "time_to_close": _stats(to_close),
        "overdue": overdue,
        "accuracy": {"routed": routed, "rerouted_by_a_person": rerouted, "rate": _rate(routed - rerouted, routed)},
        "archive": {"due": due_archive, "archived": archived, "completeness": _rate(archived, due_archive)},
        "incomplete": {"requested": incomplete["requested"], "supplemented": incomplete["supplemented"],
                       "withdrawn": incomplete["withdrawn"], "proceeded": incomplete["proceeded"],
                       "awaiting": incomplete["awaiting"]},
        "satisfaction": {**_satisfaction(scores),
                         **{f"by_{dimension}": {key: _satisfaction(values) for key, values in sorted(groups.items())}
                            for dimension, groups in scores_by.items()}},
        "reopened": {"letters": reopened_letters, "times": reopened_times},
        "replies": {"submitted": replies["submitted"], "approved": replies["approved"],
                    "returned": replies["returned"]},
        "time_to_approve": _stats(to_approve),
        "circulation": _circulation(steps, moment),
        "borrowings": _borrowings(borrowings, moment),
    }


def _circulation(steps: list[CirculationStep], moment: datetime) -> dict[str, Any]:
    """Per reader ("person:login" or "department:id"): steps due, signed within the deadline, late."""
    readers: dict[str, Counter[str]] = {}
    for step in steps:
        signed = step.signed_at is not None and step.signed_at <= moment
        if not signed and (step.deadline is None or step.deadline >= moment):
            continue  # not yet due
        counts = readers.setdefault(f"{step.kind}:{step.target}", Counter())
        counts["due"] += 1
        on_time = signed and (step.deadline is None or step.signed_at <= step.deadline)  # type: ignore[operator]
        counts["on_time" if on_time else "late"] += 1
    per_reader = {reader: {"due": c["due"], "on_time": c["on_time"], "late": c["late"],
                           "rate": _rate(c["on_time"], c["due"])} for reader, c in sorted(readers.items())}
    total = sum(readers.values(), Counter())
    return {"due": total["due"], "on_time": total["on_time"], "rate": _rate(total["on_time"], total["due"]),
            "by_reader": per_reader}


def _borrowings(borrowings: list[Borrowing], moment: datetime) -> dict[str, int]:
    out = Counter({"requested": len(borrowings)})
    for borrowing in borrowings:
        if borrowing.status == "requested":
            out["awaiting"] += 1
        elif borrowing.status == "refused":
            out["refused"] += 1
        else:  # granted, and perhaps returned or over since
            out["granted"] += 1
            if borrowing.status in ("returned", "expired"):
                out[borrowing.status] += 1
    return {key: out[key] for key in ("requested", "granted", "refused", "returned", "expired", "awaiting")}
