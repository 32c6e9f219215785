"""From a classification decision to what changes on the letter and what mail it causes.

The result is applied by the registry in the transaction that registers (or
routes) the letter, so a letter is never routed without its notification
queued, nor a notification queued for a letter that was rolled back.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from gateway.config import Config
from gateway.registry.plan import NewMail, Routing
from gateway.spool import DamagedItem, read_raw
from gateway.stages.addresses import is_internal
from gateway.stages.autoreply import answers_our_mail, no_reply_reason
from gateway.stages.classify.facts import Facts, facts_from_letter, headers_of
from gateway.stages.classify.rules import Decision
from gateway.stages.normalise.summary import summarise
from gateway.stages.tokens import has_loop_marker, loop_content, loop_marker_state

if TYPE_CHECKING:
    from gateway.registry.models import Letter

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_MARKER_FLAGS = {"forged": ["forged-loop-marker"], "reforged": ["forged-loop-marker"], "copied": ["copied-loop-marker"],
                 "recopied": ["copied-loop-marker"], "to-sender": ["receipt-loop-marker"]}
# A letter taken over by `gateway import` (beside "backlog", which stops its receipt) is IMPORTED; without
# --notify also QUIET: the old system handled it, so no department is notified and it gets no deadline
# (no reminders, never overdue). With --notify its deadline counts from the import, not from its old date.
IMPORTED, QUIET = "imported", "no-notifications"
RETURNED_OURS = "returns-our-mail"  # a delivery report on mail the gateway sent


def new_mail(config: Config, kind: str, recipient: str, **details: Any) -> NewMail:
    domain = config.model.outbound.from_address.rpartition("@")[2]
    return NewMail(kind, recipient, details, f"<{uuid.uuid4().hex}@{domain}>")


def plan(config: Config, decision: Decision, *, received_at: datetime, sender: str, subject: str, body: str,
         channel: str, headers: dict[str, list[str]], envelope_from: str | None, backlog: bool,
         flags: Sequence[str] = (), returned: Sequence[dict[str, list[str]]] = (), loop_content: str = "") -> Routing:
    departments = config.departments
    department = departments[decision.department or config.model.triage.department]
    urgency = decision.urgency or "regular"
    days = answer_days(config, decision.category, urgency, decision.deadline_days)
    start = max(received_at, datetime.now(timezone.utc)) if IMPORTED in flags else received_at
    deadline = None if QUIET in flags else config.calendar.deadline(start, days)
    owners = [decision.owner] if decision.owner else list(department.owners)
    mail = [new_mail(config, "notification", owner, department=department.id) for owner in owners]
    no_notification = None
    marker = loop_marker_state(config, headers, content=loop_content)
    # A delivery report on a notification of ours (its owner's mailbox is gone, say): notifying
    # that owner again would bring another report, and so on for ever. Registered, for the
    # registry office to see whose mail failed. A report may return only the headers: what the
    # mail said cannot be checked there.
    returns_ours = marker != "ours" and any(loop_marker_state(config, fields, content=None) == "ours"
                                            for fields in returned)
    if marker == "ours":
        # Our own internal mail came back in (a forward, an owner's rule): registered, never
        # answered and never forwarded again, or each notification would beget another. A
        # receipt's marker ("to-sender") never gets here, nor an internal mail's copied onto
        # another ("copied"): its holder could hide any letter.
        mail, no_notification = [], "the gateway's own mail came back (X-Gateway-Loop)"
    elif marker == "recopied":
        # Our mail about a letter that came with a copied marker, come back changed (a relay's
        # footer): telling its owners again would send them one more such mail, which may come
        # back changed again, for ever. Flagged for the registry office to see.
        mail, no_notification = [], "the gateway's own mail about a copied loop marker came back (X-Gateway-Loop)"
    elif marker == "reforged":
        # The same for a relay that gives each mail a Message-ID of its own: our mail about the
        # letter its first pass made (its marker then verified against nothing) came back so again.
        mail, no_notification = [], "the gateway's own mail about a forged loop marker came back (X-Gateway-Loop)"
    elif returns_ours:
        mail, no_notification = [], "a delivery report on the gateway's own mail (X-Gateway-Loop)"
    elif QUIET in flags:
        mail, no_notification = [], "backlog import (gateway import without --notify)"
    reply_to = reply_address(sender, headers, envelope_from)
    receipt, reason = None, _no_receipt(config, sender, reply_to, channel, headers, envelope_from, backlog,
                                        own_mail=marker in ("ours", "copied", "recopied", "reforged", "to-sender")
                                        or returns_ours)
    if reason is None:
        language = "zh" if _CJK.search(subject) or _CJK.search(body[:2000]) else (
            "en" if subject or body else config.model.receipts.default_language)
        receipt = new_mail(config, "receipt", reply_to.lower(), language=language)
    triage = decision.needs_triage
    return Routing(
        status="needs-triage" if triage else "routed", department=department.id, category=decision.category,
        urgency=urgency, confidentiality=decision.confidentiality or "normal",
        owner=decision.owner, tags=list(decision.tags), deadline=deadline, trace=decision.trace(),
        # A marker naming us that does not verify suppressed nothing, and a receipt's marker only
        # the receipt; the letter says which it had.
        flags=(["needs-triage"] if triage else []) + (_MARKER_FLAGS.get(marker, []) if marker else [])
        + ([RETURNED_OURS] if returns_ours else []),
        mail=mail, receipt=receipt, no_receipt=reason,
        receipt_cap=config.model.receipts.per_sender_per_day,
        receipt_domain_cap=config.model.receipts.per_domain_per_hour,
        receipt_hourly_cap=config.model.receipts.per_hour, no_notification=no_notification)


def answer_days(config: Config, category: str | None, urgency: str, rule_days: int | None) -> int:
    """The working days a letter is given to be answered in: a rule's `deadline_days`, else its
    category's shortened by its urgency ([deadlines])."""
    return rule_days if rule_days is not None else config.model.deadlines.answer_within(category, urgency)


def letter_answer_days(config: Config, letter: Letter) -> int:
    """The working days a letter was given when it was routed, for a deadline it gets again (a
    reopening): the rule's `deadline_days` its classification records, else by its category."""
    days = ((letter.classification or {}).get("result") or {}).get("deadline_days")
    return answer_days(config, letter.category, letter.urgency, days if isinstance(days, int) else None)


def route(config: Config, facts: Facts, *, received_at: datetime, envelope_from: str | None,
          backlog: bool, flags: Sequence[str] = ()) -> Routing:
    """Classify by the rules in force and plan the mail that routing causes."""
    decision = config.ruleset.classify(facts)
    return plan(config, decision, received_at=received_at, sender=facts.sender_address, subject=facts.subject,
                body=facts.body, channel=facts.channel, headers=facts.headers, envelope_from=envelope_from,
                backlog=backlog, flags=flags, returned=facts.returned_headers, loop_content=facts.loop_content)


def letter_facts(config: Config, letter: Letter) -> Facts:
    """The facts of a registered letter, its headers read again from the stored original."""
    headers: dict[str, list[str]] = {}
    content = ""
    if not letter.is_fax_file:  # a fax file has no headers
        try:
            raw = read_raw(config.state_dir / letter.raw_path)
            headers = headers_of(raw)
            content = loop_content(raw) if has_loop_marker(config, headers) else ""
        except (OSError, DamagedItem):
            pass
    return facts_from_letter(letter, headers, config.departments, loop_content=content)


def route_letter(config: Config, letter: Letter) -> Routing:
    """Classify and plan a registered letter (a fax whose text was just read)."""
    return route(config, letter_facts(config, letter), received_at=letter.received_at,
                 envelope_from=(letter.envelope or {}).get("mail_from"), backlog="backlog" in letter.flags,
                 flags=letter.flags)


def route_with_text(config: Config, letter: Letter, text: str) -> tuple[str, Routing | None]:
    """A fax letter whose text was just read: the summary of that text, and its routing, decided
    now (before the registry's transaction) unless the letter was routed already."""
    summary = summarise(text, config.model.normalise.summary_chars) if text.strip() else ""
    if letter.status != "registered":
        return summary, None
    letter.body_text = f"{letter.body_text.rstrip()}\n\n{text}".strip() if letter.body_text.strip() else text
    return summary, route_letter(config, letter)


def loop_id_seen(config: Config, headers: dict[str, list[str]]) -> bool:
    """Does this mail carry a verified X-Gateway-Loop marker of any kind of our mail, so that
    no automatic reply may go to it? Anyone can write the header; only we can sign it."""
    return loop_marker_state(config, headers, content=None) in ("ours", "copied", "recopied", "reforged",
                                                                "to-sender")


def reply_address(sender: str, headers: dict[str, list[str]], envelope_from: str | None) -> str:
    """Where an automatic reply goes (RFC 3834 section 4): the envelope sender or Return-Path,
    else the From address."""
    if envelope_from:
        return envelope_from.strip().strip("<>").strip()
    return_path = (headers.get("return-path") or [""])[0].strip()
    if return_path:
        return return_path.strip("<>").strip()
    return sender


def _no_receipt(config: Config, sender: str, reply_to: str, channel: str, headers: dict[str, list[str]],
                envelope_from: str | None, backlog: bool, *, own_mail: bool) -> str | None:
    settings = config.model.receipts
    if not settings.enabled or settings.per_sender_per_day == 0:
        return "receipts are switched off"
    if backlog:
        return "backlog import"
    if channel == "fax":
        return "a fax: no address to answer"
    if any(is_internal(address, config.model.gateway.domains) for address in (sender, reply_to)):
        return "internal sender"
    if config.model.outbound.from_address in (sender.lower(), reply_to.lower()):
        return "our own address"
    if answers_our_mail(headers, config.model.outbound.from_address.rpartition("@")[2]):
        # An answer to a receipt is answered by no receipt, or two auto-responders play ping-pong.
        return "an answer to our own mail (In-Reply-To/References)"
    return no_reply_reason(headers, reply_to, envelope_from, own_mail=own_mail)


def feedback(config: Config, letter: Letter, result: str) -> list[NewMail]:
    """The result of a closed inquiry or complaint, for its sender (when it may be answered): by
    e-mail, and for a paper letter when the registry office recorded an e-mail address."""
    if letter.category != "external.inquiry_complaint" or letter.channel == "fax":
        return []
    facts = letter_facts(config, letter)
    envelope_from = (letter.envelope or {}).get("mail_from")
    reply_to = reply_address(facts.sender_address, facts.headers, envelope_from)
    for address in (facts.sender_address, reply_to):
        if not address.strip() or is_internal(address, config.model.gateway.domains):
            return []
    if no_reply_reason(facts.headers, reply_to, envelope_from,
                       own_mail=loop_id_seen(config, facts.headers)) is not None:
        return []
    language = "zh" if _CJK.search(letter.subject) or _CJK.search(letter.body_text[:2000]) else "en"
    return [new_mail(config, "feedback", reply_to.lower(), language=language, result=result[:4000])]
