"""A person's steps on a letter: reassign, acknowledge, progress, answer, close, note, hold, and
the same steps given by answering a notification by e-mail."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.addressing import canonical
from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.lifecycle import ACTIONS, Seen
from gateway.registry.models import Letter
from gateway.registry.plan import Answer, AnswerPlan, NewMail, Registered
from gateway.services.people import People


# Moves with a path of their own, which changes the deadline or a request to the sender with the
# state (gateway.services.incomplete, gateway.services.satisfaction): never a bare step.
OWN_PATHS = frozenset({"reassign", "incomplete", "supplement", "withdraw", "proceed", "reopen"})


class UnknownDepartment(ValueError):
    """The department named is not configured."""


class LetterSteps:
    """The steps on letters, for one configuration and registry."""

    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry

    def notifications(self, department: str) -> list[NewMail]:
        """The mail telling a department's owners that a letter was moved to them."""
        from gateway.stages.route import new_mail  # composing mail: not for commands that only read

        return [new_mail(self.config, "notification", owner, department=department, reassigned=True)
                for owner in self.config.departments[department].owners]

    def deadline(self, letter: Letter) -> datetime | None:
        """The deadline a letter gets when a person routes it before any rule set one (a fax moved
        before its text was read): by its category and urgency, counted from its arrival."""
        days = self.config.model.deadlines.answer_within(letter.category, letter.urgency)
        return self.config.calendar.deadline(letter.received_at, days)

    def reassign(self, number: str, department: str, *, reason: str, actor: str,
                 seen: Seen | None = None) -> tuple[str | None, str, list[NewMail]]:
        """Move a letter to another department; its owners are notified. Returns (from, to, mail).

        Raises LookupError (no such letter), UnknownDepartment, ValueError (already there, no
        reason) and TransitionRefused (a closed letter)."""
        if department not in self.config.departments:
            known = ", ".join(sorted(self.config.departments))
            raise UnknownDepartment(f"no department {department!r} (known: {known})")
        if not reason.strip():
            raise ValueError("a reassignment needs a reason")
        letter = self._letter(number)
        notify = self.notifications(department)
        before, after = self.registry.reassign(number, department, reason=reason.strip(), actor=actor,
                                               notify=notify, deadline=self.deadline(letter), seen=seen)
        return before, after, notify

    def step(self, number: str, action: str, *, actor: str, text: str = "",
             seen: Seen | None = None) -> tuple[str, str]:
        """A step in the letter's life (ack, progress, answer, close, note). Returns (before, after).

        Raises LookupError and TransitionRefused."""
        if action not in ACTIONS or action in OWN_PATHS:
            raise ValueError(f"no step {action!r}")
        from gateway.stages.route import feedback

        letter = self._letter(number)
        # Composed before the transaction; queued only if the step really closes the letter.
        result_mail = feedback(self.config, letter, text.strip()) if ACTIONS[action].to == "closed" else []
        return self.registry.transition(number, action, actor=actor, text=text.strip(), on_close=result_mail,
                                        seen=seen)

    def hold(self, number: str, *, on: bool, reason: str, actor: str, seen: Seen | None = None) -> None:
        self.registry.hold(number, on=on, reason=reason, actor=actor, seen=seen)

    def record_answer(self, answer: Answer, *, keys: list[str], raw_sha256: str, raw_path: str,
                      received_at: datetime, trust: dict[str, Any] | None = None) -> Registered:
        """A department's answer by e-mail: recorded on its letter, its command obeyed only if its
        sender is authenticated (`trust`, the check stage's verdict; none: not authenticated),
        answered through a reply address signed for this letter and for them, and is entitled
        (decided by the registry under the letter's lock). A command refused for want of
        authority is told to the department's owners."""
        from gateway.stages.route import feedback, new_mail

        letter = self._letter(answer.number)
        departments = self.config.departments
        authenticated = canonical(str(trust["address"])) if trust and trust.get("authenticated") \
            and trust.get("address") else None
        people = People(self.config, self.registry)
        plan = AnswerPlan(answer=answer, keys=keys, raw_sha256=raw_sha256, raw_path=raw_path,
                          received_at=received_at,
                          # Who may act, as the access service says (gateway/services/access.py);
                          # the registry applies it to the letter's department under its lock.
                          entitled=people.department_addresses(), disabled=people.disabled_addresses(),
                          departments=set(departments), authenticated=authenticated,
                          authenticated_by=str(trust.get("method")) if authenticated and trust else None,
                          method=str(trust["method"]) if trust and trust.get("method") else None,
                          temperror=bool(trust and trust.get("temperror")),
                          token_refusal=self._token_refusal(answer, authenticated or answer.sender))
        if answer.command is not None:
            language = self.config.model.receipts.default_language
            plan.refusal_notices = {
                d.id: [new_mail(self.config, "refused-command", owner, language=language, sender=answer.sender,
                                authenticated=authenticated, command=answer.command,
                                argument=answer.argument[:300], received_at=received_at.isoformat())
                       for owner in d.owners] for d in departments.values()}
        if answer.command == "reassign" and answer.argument in departments:
            plan.notify = self.notifications(answer.argument)
            plan.deadline = self.deadline(letter)
        elif answer.command is not None and ACTIONS.get(answer.command) is not None \
                and ACTIONS[answer.command].to == "closed":
            plan.feedback = feedback(self.config, letter, answer.argument)
        return self.registry.apply_answer(plan)

    def _token_refusal(self, answer: Answer, address: str) -> str | None:
        """Why none of the answer's reply addresses vouches for (its letter, `address`), or None."""
        from gateway.stages.tokens import check_reply_token, find_reply_tokens

        tokens = find_reply_tokens(self.config, answer.reply_addresses)
        if not tokens and answer.unvouched_addresses:
            return (f"the reply address {answer.unvouched_addresses[0]} is named only where what proved the sender "
                    "does not reach (the envelope, or a To or Cc the DKIM signature does not cover): anyone "
                    "holding a signed mail of theirs could have sent it there")
        if not tokens:
            return "no reply token: commands count only through the reply address of a notification or reminder"
        reasons = []
        for token in tokens:
            reason = check_reply_token(self.config, token, answer.number, address)
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(reasons)

    def _letter(self, number: str) -> Letter:
        letter = self.registry.letter(number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        return letter
