"""People's decisions on a letter: reassignment, the steps of its life, answers by e-mail, holds.

Reassignment is written once (`_move`) whether a person does it in the CLI or the web or by
answering a notification, so both get the same deadline, owner and triage handling.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from gateway.registry import lifecycle
from gateway.registry.archive import archived_when_ended
from gateway.registry.models import Event, IntakeKey, Letter, OutboxMail
from gateway.registry.plan import AnswerPlan, NewMail, Registered
from gateway.registry.replies import refuse_past_reply
from gateway.registry.store import Store, utcnow

# At most one notice of a refused command per letter, owner and this long: forged answers,
# each with different bytes, must not become a way to flood the owners.
REFUSAL_NOTICE_INTERVAL = timedelta(hours=1)


class Decisions(Store):
    def reassign(self, number: str, department: str, *, reason: str, actor: str, notify: list[NewMail],
                 deadline: datetime | None = None, by_mail: bool = False,
                 seen: lifecycle.Seen | None = None) -> tuple[str | None, str]:
        """A person moves a letter to another department. Returns (from, to).

        Recorded as a `reassigned` event with `by_person`, which the accuracy rate counts; the new
        department's owners are notified in the same transaction. `deadline` is used only when the
        letter has none yet (a fax moved before its text was read), and never while the letter
        waits for its sender (its deadline is paused until the materials arrive)."""
        with self.write() as conn:
            row = self._locked(conn, number)
            lifecycle.unmoved(number, row.department, row.owner, seen)
            lifecycle.check(number, row.status, "reassign")
            if row.department == department:
                raise lifecycle.Unchanged(f"{number} is already with {department}", "already-there", number=number,
                                          department=department)
            self._move(conn, row, department, reason=reason, actor=actor, notify=notify, deadline=deadline,
                       by_mail=by_mail, now=utcnow())
        return row.department, department

    def _move(self, conn: Connection, row: Any, department: str, *, reason: str, actor: str,
              notify: list[NewMail], deadline: datetime | None, by_mail: bool, now: datetime) -> None:
        refuse_past_reply(conn, row.id, row.number, "reassign")
        status = "routed" if row.status in ("registered", "needs-triage") else lifecycle.unacknowledged(row.status)
        # Decided here from the locked row, not by COALESCE in SQL: a bare bound datetime skips the
        # column's UTC conversion on SQLite. A letter awaiting its sender has no deadline on
        # purpose (paused, its remaining days kept with the request): moving it must not start one.
        keep = row.deadline is not None or row.status == "awaiting-sender"
        # The new department's owners own it now (a rule's owner belonged to the old one).
        conn.execute(update(Letter).where(Letter.id == row.id).values(
            department=department, status=status, updated_at=now, owner=None,
            deadline=row.deadline if keep else deadline,
            flags=[f for f in row.flags if f != "needs-triage"]))
        conn.execute(insert(Event), [self.event_row(row.id, now, actor, "reassigned", department,
                                                    {"reason": reason, "by_person": True,
                                                     **({"status": status} if row.status == "acknowledged"
                                                        else {}),
                                                     **({"by_mail": True} if by_mail else {}),
                                                     "notify": [m.recipient for m in notify]},
                                                    from_department=row.department)])
        if notify:
            conn.execute(insert(OutboxMail), [self.mail_row(row.id, m, now) for m in notify])

    def transition(self, number: str, action: str, *, actor: str, text: str = "",
                   on_close: list[NewMail] | None = None, by_mail: bool = False,
                   seen: lifecycle.Seen | None = None) -> tuple[str, str]:
        """A person's step in the letter's life (ack, progress, answer, close, note).

        `on_close` is the mail queued if the step closes the letter (its result for the sender),
        composed by the caller beforehand. Refused with TransitionRefused when the letter's state
        does not allow it, and LetterMoved when it is not with whom `seen` says (the department
        and owner the person's rights were decided for). Returns (state before, state after).
        """
        with self.write() as conn:
            row = self._locked(conn, number)
            lifecycle.unmoved(number, row.department, row.owner, seen)
            after = self._step(conn, row, action, actor=actor, text=text, on_close=on_close or [],
                               by_mail=by_mail, now=utcnow())
        return row.status, after

    def _step(self, conn: Connection, row: Any, action: str, *, actor: str, text: str, on_close: list[NewMail],
              by_mail: bool, now: datetime) -> str:
        move = lifecycle.check(row.number, row.status, action)
        refuse_past_reply(conn, row.id, row.number, action)
        after = move.to or row.status
        if move.to is not None:
            conn.execute(update(Letter).where(Letter.id == row.id).values(status=after, updated_at=now))
        conn.execute(insert(Event), [self.event_row(row.id, now, actor, move.name, None,
                                                    {"from": row.status, "to": after,
                                                     **({"by_mail": True} if by_mail else {}),
                                                     **({"text": text} if text else {})})])
        if move.to == "closed" and on_close:
            # The result of a closed letter, queued for its sender with the closing.
            conn.execute(insert(OutboxMail), [self.mail_row(row.id, m, now) for m in on_close])
            conn.execute(insert(Event), [self.event_row(row.id, now, "gateway", "feedback-queued", None,
                                                        {"to": [m.recipient for m in on_close]})])
        if after in lifecycle.ENDED and archived_when_ended(conn, row.id, now):
            after = "archived"
        return after

    @staticmethod
    def _locked(conn: Connection, number: str) -> Any:
        row = conn.execute(select(Letter.id, Letter.number, Letter.status, Letter.department, Letter.owner,
                                  Letter.flags, Letter.deadline)
                           .where(Letter.number == number).with_for_update()).first()
        if row is None:
            raise LookupError(f"no letter {number}")
        return row

    # -- answers from departments ---------------------------------------
    def answered_letter(self, numbers: list[str], message_ids: list[str]) -> str | None:
        """The letter a mail answers: a number in its subject, or our mail it replies to."""
        with self.read() as conn:
            if numbers:
                found = conn.execute(select(Letter.number).where(Letter.number.in_(numbers))).scalars().first()
                if found:
                    return str(found)
            if message_ids:
                wanted = [f"<{m.strip('<>')}>" for m in message_ids]
                found = conn.execute(select(Letter.number).join(OutboxMail, OutboxMail.letter_id == Letter.id)
                                     .where(OutboxMail.message_id.in_(wanted),
                                            OutboxMail.kind.in_(("notification", "reminder", "escalation")))
                                     ).scalars().first()
                if found:
                    return str(found)
        return None

    def apply_answer(self, plan: AnswerPlan) -> Registered:
        """Record a department's answer on its letter, and obey its command if its sender may give it.

        One transaction: the event(s), the change of state, the new owners' notifications and the
        intake keys that make a second arrival of the same mail recognisable. Whether the sender
        may command is decided here, under the letter's lock, from the plan's `entitled` table.
        """
        answer, now = plan.answer, utcnow()
        with self.write() as conn:
            known = conn.execute(select(IntakeKey.key, Letter.id, Letter.number, Letter.status)
                                 .join(Letter, IntakeKey.letter_id == Letter.id)
                                 .where(IntakeKey.key.in_(plan.keys))).first()
            if known is not None:
                return Registered(known.number, known.id, "known", known.status)
            row = self._locked(conn, answer.number)
            details: dict[str, Any] = {"from": answer.sender, "authenticated": plan.authenticated,
                                       "authenticated_by": plan.authenticated_by,
                                       "method": plan.method, "temperror": plan.temperror,
                                       "text": answer.text, "command": answer.command,
                                       "argument": answer.argument, "raw_sha256": plan.raw_sha256,
                                       "raw_path": plan.raw_path, "received_at": plan.received_at.isoformat()}
            refused = None
            if answer.automatic:
                details["automatic"] = answer.automatic
            if answer.command is None:
                pass
            elif unentitled := self._no_authority(row, plan):
                refused = f"{'; '.join(unentitled)}: recorded, not obeyed"
                # The owners hear of it, once: a second arrival of this mail stops at its intake key,
                # and another refused answer on this letter within the interval only counts.
                told = self._recently_told(conn, row.id, now)
                notices, suppressed = [], []
                for m in plan.refusal_notices.get(row.department or "", []):
                    if m.recipient.lower() in told:
                        suppressed.append(m.recipient)
                    else:
                        notices.append(NewMail(m.kind, m.recipient, {**m.details, "reason": refused}, m.message_id))
                if notices:
                    conn.execute(insert(OutboxMail), [self.mail_row(row.id, m, now) for m in notices])
                    details["refusal_notice"] = [m.recipient for m in notices]
                if suppressed:
                    details["notice_suppressed"] = suppressed
            else:
                try:
                    refused = self._obey(conn, row, plan, now)
                except lifecycle.TransitionRefused as exc:
                    refused = str(exc)
            details["obeyed"] = answer.command is not None and refused is None
            if refused:
                details["refused"] = refused
            conn.execute(insert(Event), [self.event_row(row.id, now, answer.sender, "answer", None, details)])
            conn.execute(insert(IntakeKey), [{"key": k, "letter_id": row.id, "at": now} for k in plan.keys])
            status = conn.execute(select(Letter.status).where(Letter.id == row.id)).scalar_one()
            return Registered(row.number, row.id, "answer", status)

    @staticmethod
    def _recently_told(conn: Connection, letter_id: int, now: datetime) -> set[str]:
        """Who was sent a notice of a refused command on this letter within the interval (read
        from its answer events, under the letter's lock)."""
        recent = conn.execute(select(Event.details).where(
            Event.letter_id == letter_id, Event.action == "answer",
            Event.at > now - REFUSAL_NOTICE_INTERVAL)).scalars()
        return {str(address).lower() for details in recent for address in (details or {}).get("refusal_notice", [])}

    @staticmethod
    def _no_authority(row: Any, plan: AnswerPlan) -> list[str]:
        """Why the answer's sender may not command this letter; empty when they may.

        All three must hold: the sender is authenticated, answered through a reply address signed
        for this letter and for them, and is an owner or the head of the letter's department or
        the letter's own owner (as the letter is now, under its lock) while not a disabled person."""
        who = plan.authenticated or plan.answer.sender.lower()
        reasons = []
        if who not in plan.entitled.get(row.department or "", set()):
            if who != (row.owner or "").lower():
                reasons.append(f"{who} is not an owner of {row.department}")
            elif who in plan.disabled:
                reasons.append(f"{who} is disabled in the web register")
        if plan.authenticated is None and plan.temperror:
            # A DNS failure is no proof of forgery: the sender may well be who they say.
            reasons.append(f"the sender {plan.answer.sender} could not be verified (DNS temporary error): "
                           f"send again")
        elif plan.authenticated is None:
            reasons.append(f"the sender {plan.answer.sender} is not authenticated (no SMTP AUTH allowed for "
                           f"that address, aligned DKIM or DMARC pass, or trusted Authentication-Results)")
        if plan.token_refusal is not None:
            reasons.append(plan.token_refusal)
        return reasons

    def _obey(self, conn: Connection, row: Any, plan: AnswerPlan, now: datetime) -> str | None:
        """Apply an answer's command; returns why it was not applied, or None."""
        answer = plan.answer
        if answer.command == "reassign":
            target = answer.argument
            lifecycle.check(row.number, row.status, "reassign")
            if target not in plan.departments:
                return f"no department {target!r}"
            if target == row.department:
                return f"{row.number} is already with {target}"
            self._move(conn, row, target, reason=answer.text[:500], actor=answer.sender, notify=plan.notify,
                       deadline=plan.deadline, by_mail=True, now=now)
            return None
        self._step(conn, row, str(answer.command), actor=answer.sender, text=answer.argument,
                   on_close=plan.feedback, by_mail=True, now=now)
        return None

    # -- legal hold -----------------------------------------------------
    def hold(self, number: str, *, on: bool, reason: str, actor: str, seen: lifecycle.Seen | None = None) -> None:
        now = utcnow()
        with self.write() as conn:
            row = conn.execute(select(Letter.id, Letter.legal_hold, Letter.department, Letter.owner)
                               .where(Letter.number == number).with_for_update()).first()
            if row is None:
                raise LookupError(f"no letter {number}")
            lifecycle.unmoved(number, row.department, row.owner, seen)
            if row.legal_hold == on:
                raise lifecycle.Unchanged(f"{number} is {'already' if on else 'not'} on legal hold",
                                          "hold-already-on" if on else "hold-already-off", number=number)
            conn.execute(update(Letter).where(Letter.id == row.id).values(legal_hold=on, updated_at=now))
            conn.execute(insert(Event), [self.event_row(row.id, now, actor, "hold" if on else "hold-released", None,
                                                        {"reason": reason})])
