"""The reminder pass for circulation and borrowing.

- `circulation-reminded`: the reader whose turn it is, once their working days to read are over,
  and again every [reminders] repeat_working_days while they have not signed;
- `circulation-escalated`: once, after [reminders] escalate_after reminders, a word to whoever
  started the circulation (else the registry office);
- `borrow-expired`: a borrowing whose period is over is recorded as ended (reading it stopped at
  the end of the period already: gateway.services.access looks at the period itself).

Each is one transaction (the step's count, the event and the mail), like the letters' reminders.
"""
from __future__ import annotations

from datetime import datetime

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.circulation import CirculationRecords
from gateway.registry.reminders import OpenLetter
from gateway.stages.route import new_mail
from gateway.track.reminders import Reminder


def _address(config: Config, registry: Registry, kind: str, target: str) -> str:
    """Where a reader is written to: a person's first address, a department's head."""
    if kind == "department":
        department = config.departments.get(target)
        return department.head if department else ""
    person = registry.person(target)
    return sorted(person.emails)[0] if person and person.emails and not person.disabled else ""


def _name(config: Config, registry: Registry, kind: str, target: str) -> str:
    if kind == "department":
        department = config.departments.get(target)
        return department.name if department else target
    person = registry.person(target)
    return person.name or target if person else target


def _starter(registry: Registry, login: str) -> list[str]:
    person = registry.person(login)
    if person and person.emails and not person.disabled:
        return sorted(person.emails)[:1]
    return sorted({sorted(p.emails)[0] for p in registry.people() if "registry" in p.roles and p.emails
                   and not p.disabled})


def due(config: Config, registry: Registry, now: datetime, *, dry_run: bool = False) -> list[Reminder]:
    settings = config.model.reminders
    calendar = config.calendar
    records = CirculationRecords(registry)
    out: list[Reminder] = []
    for current in records.due_steps():
        step = current.step
        if step.deadline is None or now <= step.deadline:
            continue
        reader = f"{step.kind}:{step.target}"
        details = {"circulation": current.circulation_id, "step": step.position, "reader": reader,
                   "deadline": step.deadline.isoformat()}
        letter = OpenLetter(current.letter_id, current.number, "circulation", current.department, None,
                            step.reached_at or step.deadline, step.deadline)
        count = step.reminders
        if step.reminded_at is None or calendar.working_days_between(step.reminded_at, now) >= \
                settings.repeat_working_days:
            count += 1
            address = _address(config, registry, step.kind, step.target)
            mail = [new_mail(config, "circulation", address, about="reminder", count=count,
                             deadline=step.deadline.isoformat())] if address else []
            if dry_run or records.remind(step.id, kind="reminded", letter_id=current.letter_id, mail=mail, now=now,
                                         details={**details, "count": count}, seen_reminded_at=step.reminded_at):
                out.append(Reminder(letter, "circulation", mail, count))
            else:
                continue  # another pass reminded it meanwhile, and decides its escalation
        if count >= settings.escalate_after and step.escalated_at is None:
            mail = [new_mail(config, "circulation", r, about="escalation",
                             reader=_name(config, registry, step.kind, step.target), count=count,
                             deadline=step.deadline.isoformat()) for r in _starter(registry, current.started_by)]
            if dry_run or records.remind(step.id, kind="escalated", letter_id=current.letter_id, mail=mail, now=now,
                                         details={**details, "to": [m.recipient for m in mail]}):
                out.append(Reminder(letter, "circulation-escalation", mail, count))
    return out


def expire_borrowings(registry: Registry, now: datetime, *, dry_run: bool = False) -> int:
    """Record borrowings whose period is over as expired; how many."""
    records = CirculationRecords(registry)
    return len(records.expiring(now)) if dry_run else len(records.expire(now))
