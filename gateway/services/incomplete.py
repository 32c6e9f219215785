"""Incomplete submissions: asking a letter's sender for what is missing, and what comes back.

The registry office or the letter's department marks a letter incomplete, naming what is missing
and the day it is needed by. The sender is asked by mail (or, with no address to write to, the
person is told to reach them another way, and that is recorded); the letter waits as
awaiting-sender with its deadline paused. The sender's follow-up (a reply to our request, or a
mail with the letter's number in its subject) is recorded on the letter as a supplement and
resumes it; a day passed without one reminds the department once, and it may withdraw the letter
or go on without the materials.
The web, the CLI and the daemon all come through here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.lifecycle import LetterMoved, ReplyInHand, TransitionRefused
from gateway.registry.models import Letter, SenderRequest
from gateway.registry.outward import FollowUp, OutwardRecords, Resume
from gateway.registry.plan import NewMail, Registered
from gateway.services.access import Access, Forbidden, Refused, step_text
from gateway.services.people import Principal
from gateway.stages.autoreply import safe_address
from gateway.stages.route import new_mail

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
MAX_ITEMS = 20
# Refusals for what was filled in (the others: rights and the letter's state).
INPUT_REFUSALS = frozenset({"need-missing", "too-many-missing", "missing-too-long", "need-date", "not-a-date",
                            "date-passed", "date-far", "too-long"})
MAX_ITEM_CHARS = 300


@dataclass(frozen=True)
class Marked:
    """What marking a letter incomplete did: the request, and whom it was sent to ('' when the
    sender has no address and must be reached another way)."""

    request: SenderRequest
    sent_to: str


def language_of(letter: Letter) -> str:
    """The sender's language as their letter shows it: Chinese when it holds any Chinese."""
    return "zh" if _CJK.search(letter.subject) or _CJK.search(letter.body_text[:2000]) else "en"


def request_address(letter: Letter) -> str:
    """Where the sender can be asked by mail; '' when nowhere (a fax, or a paper letter with only a phone)."""
    address = (letter.sender_address or "").strip().lower()
    return address if address and safe_address(address) else ""


def _day(text: str) -> date | None:
    """The day a form gives (YYYY-MM-DD), None for none; one that names no day (2026-02-30) is
    refused as such, not taken for a day left out."""
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refused(f"the day it is needed by, “{text[:40]}”, is not a date (YYYY-MM-DD)", "not-a-date",
                      value=text[:40]) from None


class Incomplete:
    """Incomplete submissions, for one configuration and registry."""

    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.records = OutwardRecords(registry)
        self.access = Access(config, registry)

    def may(self, who: Principal, letter: Letter) -> bool:
        """The registry office and the letter's department (its people, head and owner) may."""
        return (who.is_operator or who.has("registry") or letter.department in who.departments
                or (letter.owner or "").lower() in who.emails)

    def _letter(self, who: Principal, number: str, action: str) -> Letter:
        letter = self.access.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if not self.may(who, letter):
            department = self.access.department_name(letter.department)
            raise Forbidden(f"only the people of department {department} and the registry office may {action} "
                            f"{number}", f"forbidden-{action}", department=department, number=number)
        return letter

    def _moved(self, exc: LetterMoved) -> Refused:
        return Refused(str(exc), "moved", number=exc.number, department=self.access.department_name(exc.department))

    def mark(self, who: Principal, number: str, *, missing: list[str], by: date | str | None) -> Marked:
        """Mark a letter incomplete: the sender is asked for `missing` by the end of day `by` (a
        date, or as a form sends it: YYYY-MM-DD, "" for none).

        Raises LookupError (no letter the person may know of), Forbidden (not theirs to ask) and
        Refused (nothing named, no day, one that is no date or already past, a state that does
        not allow it)."""
        letter = self._letter(who, number, "incomplete")
        items = [" ".join(m.split()) for m in missing if m.strip()]
        if not items:
            raise Refused("name what is missing", "need-missing")
        if any(len(item) > MAX_ITEM_CHARS for item in items):
            # Refused, not cut: the sender would be asked for half of what is meant.
            raise Refused(f"each missing item in at most {MAX_ITEM_CHARS} characters", "missing-too-long",
                          limit=str(MAX_ITEM_CHARS))
        if len(items) > MAX_ITEMS:
            raise Refused(f"at most {MAX_ITEMS} missing items", "too-many-missing", limit=str(MAX_ITEMS))
        if isinstance(by, str):
            by = _day(by)
        if by is None:
            raise Refused("give the day it is needed by", "need-date")
        calendar = self.config.calendar
        due_at = datetime.combine(by, time(23, 59, 59), calendar.tz)
        if due_at <= datetime.now(calendar.tz):
            raise Refused(f"{by.isoformat()} has passed: give a later day", "date-passed", day=by.isoformat())
        if by > datetime.now(calendar.tz).date() + timedelta(days=366):
            raise Refused(f"{by.isoformat()} is more than a year away: give a nearer day", "date-far",
                          day=by.isoformat())
        address = request_address(letter)
        mail = new_mail(self.config, "request", address, language=language_of(letter), missing=items,
                        by=by.isoformat()) if address else None

        def remaining(deadline: datetime | None, now: datetime) -> int | None:
            if deadline is None:
                return None
            return calendar.working_days_between(now, deadline) if deadline > now else 0

        try:
            # Under the letter's lock, it must still be with whom the rights were decided for.
            request = self.records.mark_incomplete(number, actor=who.login, missing=items, due_at=due_at,
                                                   remaining=remaining, recipient=address, request=mail,
                                                   seen=(letter.department, letter.owner))
        except LetterMoved as exc:
            raise self._moved(exc) from None
        except ReplyInHand as exc:
            raise Refused(str(exc), "reply-in-hand", number=number, action="incomplete") from None
        except (TransitionRefused, ValueError) as exc:  # asked already (a second tab, a second click)
            raise self.access.overtaken(exc, letter, "incomplete") from None
        return Marked(request, address)

    def withdraw(self, who: Principal, number: str, *, reason: str = "") -> tuple[str, str]:
        """Close a letter whose sender never sent what was missing (awaiting-sender -> withdrawn)."""
        letter = self._letter(who, number, "withdraw")
        reason = step_text(reason)
        try:
            return self.records.withdraw(number, actor=who.login, reason=reason,
                                         seen=(letter.department, letter.owner))
        except LetterMoved as exc:
            raise self._moved(exc) from None
        except TransitionRefused as exc:
            raise self.access.overtaken(exc, letter, "withdraw") from None

    def proceed(self, who: Principal, number: str, *, reason: str = "") -> tuple[str, str, datetime | None]:
        """Go on without the materials the sender did not send (awaiting-sender -> in-progress): the
        request is settled and the deadline counted on from the working days the letter had left,
        as a supplement would. Returns (before, after, the deadline)."""
        letter = self._letter(who, number, "proceed")
        reason = step_text(reason)
        try:
            return self.records.proceed(number, actor=who.login, reason=reason,
                                        resume=resumed_deadline(self.config), seen=(letter.department, letter.owner))
        except LetterMoved as exc:
            raise self._moved(exc) from None
        except TransitionRefused as exc:
            raise self.access.overtaken(exc, letter, "proceed") from None

    def request(self, number: str) -> SenderRequest | None:
        """The letter's latest request to its sender, if it had any."""
        return self.records.waiting_request(number)

    # -- the reminder pass ---------------------------------------------------------


class SenderMail:
    """A letter's sender writing back (found by gateway.stages.answers): a supplement or a rating."""

    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.records = OutwardRecords(registry)

    def record(self, follow: FollowUp, *, keys: list[str], raw_sha256: str, raw_path: str,
               received_at: datetime) -> Registered:
        letter = self.registry.letter(follow.number)
        if letter is None:
            raise LookupError(f"no letter {follow.number}")
        if follow.kind == "rating":
            from gateway.services.satisfaction import Satisfaction

            return Satisfaction(self.config, self.registry).by_mail(letter, follow, keys=keys, raw_sha256=raw_sha256,
                                                                     raw_path=raw_path)
        return self.records.supplement(follow, keys=keys, raw_sha256=raw_sha256, raw_path=raw_path,
                                       received_at=received_at, resume=resumed_deadline(self.config),
                                       notify=department_notice(self.config, letter, "supplemented",
                                                                sender=follow.sender,
                                                                attachments=[a.filename for a in follow.attachments]))


def resumed_deadline(config: Config) -> Resume:
    """The deadline of a letter that stops waiting for its sender: the working days it had left,
    counted again from now (none when it had no deadline)."""
    calendar = config.calendar

    def resume(days: int | None, now: datetime) -> datetime | None:
        return calendar.deadline(now, days) if days is not None else None
    return resume


def department_notice(config: Config, letter: Letter, about: str, *, head: bool = False, **details: object
                      ) -> list[NewMail]:
    """A notice to the letter's people (its owner, else its department's owners; or the head)."""
    department = config.departments.get(letter.department or "")
    if department is None:
        return []
    to = [department.head] if head else ([letter.owner] if letter.owner else list(department.owners))
    return [new_mail(config, "sender-notice", r, about=about, **details) for r in dict.fromkeys(to) if r]


def supplement_content(config: Config, letter: Letter, sha256: str) -> bytes | None:
    """The bytes of an attachment a supplement brought (origin "supplement"): it is in the
    supplement's own mail, kept in the message store, not in the letter's original."""
    from gateway.spool import DamagedItem, read_raw
    from gateway.stages.normalise import Limits, normalise

    for event in reversed(letter.events):
        raw_path = event.details.get("raw_path") if event.action == "supplemented" else None
        if not raw_path:
            continue
        try:
            raw = read_raw(config.state_dir / str(raw_path))
        except (OSError, DamagedItem):
            continue
        for attachment in normalise(raw, limits=Limits.of(config.model.normalise)).attachments:
            if attachment.sha256 == sha256:
                return attachment.content
    return None
