"""Borrowing from the archive (借阅): reading an archived letter's content for a while, with approval.

Once a letter is archived nobody reads its content in the register (gateway.services.access)
without a borrowing: a request with a reason and a period in days, approved by the head of the
letter's department, or for a confidential letter by one of its leaders in charge ([[departments]]
leaders; any leader when none is named). The grant lets that person read it in the browser until
the period ends or they return it, each read an audit row as always; a confidential letter only as
page previews (no download of its attachments or original). The reminder pass records grants that
ended as expired. The registry office and auditors see the register of all borrowings; heads and
leaders see the requests awaiting them. The web and the CLI come through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.circulation import CirculationRecords, StepRefused
from gateway.registry.models import Borrowing, Letter
from gateway.services.access import Access, Forbidden, Refused, step_text
from gateway.services.people import People, Principal
from gateway.stages.route import new_mail

INPUT_REFUSALS = frozenset({"need-reason", "reason-too-long", "bad-days", "comment-too-long"})
OPEN = ("requested", "granted")


@dataclass(frozen=True)
class BorrowingRow:
    """A borrowing as the register lists it."""

    borrowing: Borrowing
    letter: Letter

    @property
    def id(self) -> int:
        return self.borrowing.id


class Borrowings:
    def __init__(self, config: Config, registry: Registry, access: Access | None = None):
        self.config = config
        self.registry = registry
        self.access = access or Access(config, registry)
        self.records = CirculationRecords(registry)
        self.people = People(config, registry)

    # -- who approves ------------------------------------------------------------------
    def approver_kind(self, letter: Letter) -> str:
        return "leader" if letter.confidentiality == "confidential" else "head"

    def may_decide(self, who: Principal, letter: Letter, approver: str) -> bool:
        """The head of the letter's department; for a confidential letter, a leader in charge of it."""
        if who.is_operator:
            return True
        department = self.config.departments.get(letter.department or "")
        if approver == "head":
            return letter.department in who.headed
        if department is not None and department.leaders:
            return bool(who.emails.intersection(department.leaders))
        return who.has("leader")

    def _approvers(self, letter: Letter, approver: str) -> list[str]:
        department = self.config.departments.get(letter.department or "")
        if approver == "head":
            return [department.head] if department else []
        if department is not None and department.leaders:
            return list(department.leaders)
        return sorted({sorted(p.emails)[0] for p in self.people.list()
                       if "leader" in p.roles and p.emails and not p.disabled})

    # -- the borrower ------------------------------------------------------------------
    def request(self, who: Principal, number: str, *, reason: str, days: int, now: datetime | None = None) -> int:
        """Ask to read an archived letter for `days` days. Raises LookupError (no letter the person
        may know of), Refused (no reason, a period out of bounds, not archived, one open already)."""
        now = now or datetime.now(timezone.utc)
        letter = self.access.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if who.person_id is None:
            raise Forbidden("only a person of the register borrows (gateway archive borrow --as LOGIN)",
                            "borrow-person")
        reason = step_text(reason, "reason")
        reason = " ".join(reason.split())
        if not reason:
            raise Refused("give the reason for reading it", "need-reason")
        limit = self.config.model.borrowing.max_days
        if not 1 <= days <= limit:
            raise Refused(f"a period of 1 to {limit} days", "bad-days", limit=str(limit))
        approver = self.approver_kind(letter)
        if approver == "head" and letter.department in who.headed:
            # Nobody approves their own request: a head's goes to a leader in charge, as a
            # confidential letter's does, rather than waiting for ever on its own author.
            approver = "leader"
        mail = [new_mail(self.config, "borrowing", r, about="request", borrower=who.name, days=days,
                         reason=reason) for r in self._approvers(letter, approver)]
        try:
            bid = self.records.borrow(number, person_id=who.person_id, login=who.login, reason=reason,
                                      days=days, approver=approver, now=now, mail=mail)
        except StepRefused as exc:
            raise Refused(str(exc), "borrow-state", number=number) from None
        return bid

    def give_back(self, who: Principal, borrowing_id: int, *, now: datetime | None = None) -> Borrowing:
        """Return a borrowed letter before its period ends (the borrower, or the registry office)."""
        now = now or datetime.now(timezone.utc)
        found = self.records.borrowing(borrowing_id)
        if found is None or not (who.person_id == found[0].person_id or who.has("registry")):
            raise LookupError(f"no borrowing {borrowing_id}")
        try:
            return self.records.give_back(borrowing_id, actor=who.login, now=now)
        except StepRefused as exc:
            raise self._settled(borrowing_id, found[1].number, now, exc) from None

    # -- the approver ------------------------------------------------------------------
    def decide(self, who: Principal, borrowing_id: int, *, grant: bool, comment: str = "",
               now: datetime | None = None) -> Borrowing:
        """Grant (for the days asked, from now) or refuse a request. Raises LookupError,
        Forbidden (not theirs to approve) and Refused (decided already)."""
        now = now or datetime.now(timezone.utc)
        found = self.records.borrowing(borrowing_id)
        if found is None:
            raise LookupError(f"no borrowing {borrowing_id}")
        borrowing, letter = found
        if not self.may_decide(who, letter, borrowing.approver):
            if self.access.visible(who, letter.number) is None:
                # Ids run in order: a refusal must not tell anyone of a letter they cannot see.
                raise LookupError(f"no borrowing {borrowing_id}")
            whom = ("the head of its department" if borrowing.approver == "head"
                    else "a leader in charge of its department")
            raise Forbidden(f"only {whom} approves reading {letter.number}", f"forbidden-borrow-{borrowing.approver}",
                            number=letter.number)
        if grant and who.person_id is not None and who.person_id == borrowing.person_id:
            raise Forbidden("nobody approves their own request", "own-request")
        comment = step_text(comment, "comment")
        # In the organisation's time zone, as people read it in the event and the mail.
        ends_at = (now + timedelta(days=borrowing.days)).astimezone(self.config.calendar.tz).replace(microsecond=0) \
            if grant else None
        borrower = self.people.get(borrowing.login)
        to = sorted(borrower.emails)[:1] if borrower and borrower.emails else []
        mail = [new_mail(self.config, "borrowing", r, about="granted" if grant else "refused", comment=comment,
                         **({"until": ends_at.isoformat()} if ends_at else {})) for r in to]
        try:
            return self.records.decide(borrowing_id, grant=grant, actor=who.login, comment=comment, now=now,
                                       ends_at=ends_at, mail=mail)
        except StepRefused as exc:
            raise self._settled(borrowing_id, letter.number, now, exc) from None

    def _settled(self, borrowing_id: int, number: str, now: datetime, exc: StepRefused) -> Refused:
        """Why a step on a borrowing was refused under its lock: it was decided or ended meanwhile
        (the same form sent twice, or by a colleague), said with where it stands now."""
        found = self.records.borrowing(borrowing_id)
        status = found[0].status if found else "requested"
        if status == "granted" and found and found[0].ends_at is not None and found[0].ends_at <= now:
            status = "expired"  # over, though the reminder pass has not recorded it yet
        if status == "requested":
            return Refused(str(exc), "borrow-state", number=number)
        return Refused(f"the request to read {number} was settled already: {status}", "borrow-settled",
                       number=number, status=status)

    def awaiting(self, who: Principal) -> list[BorrowingRow]:
        """Requests waiting for this person's approval."""
        return [BorrowingRow(b, letter) for b, letter in self.records.borrowings(statuses=("requested",))
                if self.may_decide(who, letter, b.approver) and not who.is_operator and b.person_id != who.person_id]

    # -- the register ------------------------------------------------------------------
    def may_see_register(self, who: Principal) -> bool:
        return who.has("registry", "auditor")

    def register(self, who: Principal, *, limit: int = 500) -> list[BorrowingRow]:
        """Every borrowing, newest first: the registry office and auditors only."""
        if not self.may_see_register(who):
            raise Forbidden("only the registry office and auditors see the borrowing register", "forbidden-register")
        return [BorrowingRow(b, letter) for b, letter in self.records.borrowings(limit=limit)]

    def mine(self, who: Principal) -> list[BorrowingRow]:
        if who.person_id is None:
            return []
        return [BorrowingRow(b, letter) for b, letter in self.records.borrowings(person_id=who.person_id)]

    def of_letter(self, who: Principal, letter: Letter) -> list[BorrowingRow]:
        """A letter's borrowings as the person may see them: all of them for the registry office,
        auditors and its approvers; otherwise their own."""
        rows = [BorrowingRow(b, lt) for b, lt in self.records.borrowings(letter_id=letter.id)]
        if who.has("registry", "auditor") or any(self.may_decide(who, letter, r.borrowing.approver) for r in rows):
            return rows
        return [r for r in rows if r.borrowing.person_id == who.person_id]

    def expire(self, now: datetime) -> list[Borrowing]:
        """Grants whose period is over, recorded as expired (part of `gateway reminders run`)."""
        return self.records.expire(now)
