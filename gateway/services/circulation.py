"""Circulation with sign-off (传阅): a letter read and signed by people or departments in order.

The registry office or a leader starts it (a confidential letter only if they may read it) with
the readers in order: people (by sign-in name) or departments (their head signs for them). Only
the reader whose turn it is has it in their "to read" queue and may read its content
(gateway.services.access asks `CirculationRecords` for that); they sign it, with an optional
instruction (批示), and only then does the next reader get it. Nobody passes it on: the list is
fixed when it starts. Each reader has [circulation] reading_working_days working days; the
reminder pass (gateway.track.circulation) reminds a late reader and, after [reminders]
escalate_after reminders, tells the person who started it. A leader's instruction is mailed to the
handling department (the letter's), and so is the whole record when the last reader has signed.
The web, and the CLI come through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.config import Config
from gateway.registry import Registry, lifecycle
from gateway.registry.circulation import CirculationRecord, CirculationRecords, StepRefused
from gateway.registry.models import CirculationStep, Letter
from gateway.registry.plan import NewMail
from gateway.services.access import Access, Forbidden, Refused, typed_text
from gateway.services.people import People, Principal
from gateway.stages.route import new_mail

MAX_INSTRUCTION = 2000
# Refusals for what was filled in (the others: rights, turn and the letter's state).
INPUT_REFUSALS = frozenset({"need-readers", "too-many-readers", "unknown-reader", "reader-twice",
                            "instruction-too-long"})


@dataclass(frozen=True)
class Reader:
    """A reader of a circulation as named: a person (login) or a department (its head signs)."""

    kind: str  # person | department
    target: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.target}"


class Circulations:
    """Circulations, for one configuration and registry (and the web's Access, with its clock)."""

    def __init__(self, config: Config, registry: Registry, access: Access | None = None):
        self.config = config
        self.registry = registry
        self.access = access or Access(config, registry)
        self.records = CirculationRecords(registry)
        self.people = People(config, registry)

    # -- who -------------------------------------------------------------------------
    def may_start(self, who: Principal) -> bool:
        return who.has("registry", "leader")

    @staticmethod
    def is_turn(who: Principal, step: CirculationStep | None) -> bool:
        """Is it this person's turn: the step names them, or a department they head?"""
        if step is None:
            return False
        return (step.kind == "person" and step.target == who.login) or (
            step.kind == "department" and step.target in who.headed)

    def name(self, kind: str, target: str) -> str:
        """A reader in words: a person's name, a department's name."""
        if kind == "department":
            known = self.config.departments.get(target)
            return known.name if known else target
        record = self.people.get(target)
        return record.name if record else target

    def _principal_of(self, reader: Reader) -> Principal | None:
        """Who signs for a reader: the person, or the head of the department."""
        if reader.kind == "person":
            return self.people.principal(reader.target)
        head = self.config.departments[reader.target].head
        for record in self.people.list():
            if head in (e.lower() for e in record.emails) and not record.disabled:
                return self.people.principal(record.login)
        return self.people.principal_by_email(head)

    def _address(self, kind: str, target: str) -> str:
        if kind == "department":
            return self.config.departments[target].head
        record = self.people.get(target)
        return sorted(record.emails)[0] if record and record.emails and not record.disabled else ""

    def readers(self, names: list[str]) -> list[Reader]:
        """Readers from what was typed: `department:ID`, `person:LOGIN`, or a bare department id or
        sign-in name. Raises Refused naming the first that is no one."""
        out: list[Reader] = []
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            kind, _, value = name.partition(":") if name.startswith(("person:", "department:")) else ("", "", name)
            value = value.strip().lower() if kind != "department" else value.strip()
            if kind in ("", "department") and value in self.config.departments:
                out.append(Reader("department", value))
            elif kind in ("", "person") and self.people.principal(value) is not None:
                out.append(Reader("person", value))
            else:
                raise Refused(f"no person or department {name!r}", "unknown-reader", reader=name)
        return out

    # -- starting --------------------------------------------------------------------
    def start(self, who: Principal, number: str, names: list[str], *, now: datetime | None = None) -> int:
        """Circulate a letter to readers in order; the first one's turn starts now. Raises
        LookupError (no letter the person may know of), Forbidden and Refused (why not)."""
        now = now or datetime.now(timezone.utc)
        letter = self.access.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if not self.may_start(who):
            raise Forbidden("only the registry office and leaders start a circulation", "forbidden-circulate")
        if letter.confidentiality == "confidential" and not self.access.content_allowed(who, letter, now=now):
            # Circulating a letter is handing its content on: not by one who may not read it (the
            # registry office and leaders see a confidential letter's entry only, unless granted it).
            raise Forbidden(f"{letter.number} is confidential: only one allowed its content (a grant: gateway users "
                            "grant) may circulate it", "circulate-confidential", number=letter.number)
        # Counted before each is looked up: a list of thousands is refused at once, not resolved first.
        limit = self.config.model.circulation.max_readers
        if sum(1 for name in names if name.strip()) > limit:
            raise Refused(f"at most {limit} readers", "too-many-readers", limit=str(limit))
        readers = self.readers(names)
        if not readers:
            raise Refused("name the readers in order", "need-readers")
        twice = next((r for n, r in enumerate(readers) if r in readers[:n]), None)
        if twice is not None:
            raise Refused(f"{twice.key} is named twice: each reader signs once", "reader-twice",
                          reader=self.name(twice.kind, twice.target))
        if letter.confidentiality == "confidential":
            # Its readers must be allowed its content already: circulating it grants nothing.
            for reader in readers:
                signer = self._principal_of(reader)
                if signer is None or not self.access.content_allowed(signer, letter, now=now):
                    raise Refused(f"{letter.number} is confidential and {reader.key} may not read it: circulate it "
                                  "only to people allowed its content", "reader-confidential",
                                  reader=self.name(reader.kind, reader.target))
        deadline = self.config.calendar.deadline(now, self.config.model.circulation.reading_working_days)
        first = readers[0]
        mail = self._to_read(first, 1, len(readers), deadline)
        try:
            return self.records.start(number, actor=who.login, readers=[(r.kind, r.target) for r in readers],
                                      deadline=deadline, now=now, mail=mail, allowed=lifecycle.OPEN)
        except StepRefused as exc:
            raise Refused(str(exc), "circulation-state", number=number) from None

    def _to_read(self, reader: Reader, step: int, total: int, deadline: datetime) -> list[NewMail]:
        address = self._address(reader.kind, reader.target)
        return [new_mail(self.config, "circulation", address, about="to-read", step=step, readers=total,
                         deadline=deadline.isoformat())] if address else []

    # -- signing ---------------------------------------------------------------------
    def running(self, letter: Letter) -> CirculationRecord | None:
        return next((c for c in self.records.circulations(letter.id) if c.circulation.status == "running"), None)

    def sign(self, who: Principal, number: str, instruction: str = "", *, now: datetime | None = None,
             seen: str | None = None) -> CirculationStep | None:
        """Sign the letter as the current reader, with an optional instruction; the next reader's turn
        starts. Returns the next step (None: the circulation is finished). Raises LookupError,
        Forbidden (not a reader: it is never passed sideways) and Refused (not their turn yet,
        signed already, nothing circulating).

        `seen`: the step the signing form was for (`circulation-id.position`). A form sent twice,
        or kept open while the letter moved on, must not sign a later step that is the same
        person's turn again (a head signing in person and then for their department). None: not
        checked."""
        now = now or datetime.now(timezone.utc)
        letter = self.access.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if letter.status == "archived":
            raise self._archived(number)
        record = self.running(letter)
        if record is None:
            raise Refused(f"{number} is not being circulated", "no-circulation", number=number)
        step = record.current
        assert step is not None
        if seen is not None and seen != f"{record.circulation.id}.{step.position}":
            # The registry checks the position again under the circulation's lock (records.sign).
            raise Refused(f"{number}'s circulation moved on since the page was opened: nothing was signed",
                          "circulation-moved", number=number)
        if not self.is_turn(who, step):
            raise self._not_your_turn(who, record, step)
        instruction = typed_text(instruction)
        if len(instruction) > MAX_INSTRUCTION:
            raise Refused(f"an instruction of at most {MAX_INSTRUCTION} characters", "instruction-too-long",
                          limit=str(MAX_INSTRUCTION))
        following = next((s for s in record.steps if s.position == step.position + 1), None)
        deadline = self.config.calendar.deadline(now, self.config.model.circulation.reading_working_days)
        reader_name = f"{who.name} ({self.name(step.kind, step.target)})" if step.kind == "department" else who.name

        def mail(next_step: CirculationStep | None) -> list[NewMail]:
            out: list[NewMail] = []
            if instruction and who.has("leader"):
                out += self._department(letter, about="instruction", reader=reader_name, instruction=instruction)
            if next_step is not None:
                out += self._to_read(Reader(next_step.kind, next_step.target), next_step.position,
                                     len(record.steps), deadline)
            else:
                signed = [{"step": s.position, "reader": self.name(s.kind, s.target), "at": s.signed_at.isoformat()
                           if s.signed_at else "", "instruction": s.instruction} for s in record.steps
                          if s.position != step.position]
                signed.append({"step": step.position, "reader": reader_name, "at": now.isoformat(),
                               "instruction": instruction})
                starter = self.people.get(record.circulation.started_by)
                extra = sorted(starter.emails)[:1] if starter and starter.emails else []
                out += self._department(letter, about="finished", signed=signed, extra=extra)
            return out

        try:
            return self.records.sign(number, record.circulation.id, step.position, actor=who.login,
                                     instruction=instruction, now=now,
                                     next_deadline=deadline if following else now, mail=mail)
        except StepRefused as exc:
            now_letter = self.registry.letter(number)
            if now_letter is not None and now_letter.status == "archived":
                raise self._archived(number) from None
            raise Refused(str(exc), "circulation-state", number=number) from None

    @staticmethod
    def _archived(number: str) -> Refused:
        """A letter archived while it circulated: its content is read through a borrowing now, and
        its readers sign no more."""
        return Refused(f"{number} was archived: its circulation is signed no more", "circulation-archived",
                       number=number)

    def _not_your_turn(self, who: Principal, record: CirculationRecord, step: CirculationStep) -> Refused:
        mine = [s for s in record.steps if self.is_turn(who, s)]
        current = self.name(step.kind, step.target)
        if not mine:
            return Forbidden(f"only the readers it was circulated to sign it, in order; it is {current}'s turn "
                             "and it cannot be passed on to anyone else", "not-a-reader", reader=current)
        if all(s.signed_at is not None for s in mine):
            return Refused("you have signed it already", "signed-already")
        return Refused(f"it is {current}'s turn: it comes to you once they have signed", "not-your-turn",
                       reader=current)

    def _department(self, letter: Letter, *, about: str, extra: list[str] | None = None, **details: Any
                    ) -> list[NewMail]:
        """A notice to the handling department's owners (and `extra` addresses)."""
        department = self.config.departments.get(letter.department or "")
        to = list(department.owners) if department else []
        return [new_mail(self.config, "circulation", r, about=about, **details)
                for r in dict.fromkeys([*to, *(extra or [])]) if r]

    # -- what a person sees ------------------------------------------------------------
    def to_read(self, who: Principal) -> list[tuple[Letter, CirculationStep]]:
        """The person's "to read" queue: letters whose turn is theirs."""
        return self.records.to_read(who.login, who.headed)

    def of_letter(self, letter: Letter) -> list[CirculationRecord]:
        return self.records.circulations(letter.id)
