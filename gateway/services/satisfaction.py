"""The sender's satisfaction: a rating of 1 to 5 for each result mail, by its link or by a reply.

The result mail to an outside sender ends with a one-time link to a public page of the web
register (gateway.outbound.outward makes and checks it) and with the offer to answer with a
number. Either way one rating per result mail is recorded, as a `rated` event on the letter;
one of [satisfaction] reopen_at_most or less reopens the letter to its department (the
policy: the case goes on until the sender is satisfied) and its head is told. The public page
is rate-limited per client address, counted in the audit log.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from gateway.config import Config
from gateway.outbound.outward import BadToken, ExpiredToken, check_rating_token
from gateway.registry import Registry
from gateway.registry.models import Letter, Rating
from gateway.registry.outward import AlreadyRated, FollowUp, OutwardRecords
from gateway.registry.plan import Registered
from gateway.services.access import typed_text
from gateway.services.incomplete import department_notice
from gateway.stages.route import letter_answer_days

__all__ = ["AlreadyRated", "BadToken", "ExpiredToken", "RatingPage", "Satisfaction", "Throttled"]

MAX_COMMENT = 2000
VISIT = "rate-page"  # the audit action of a visit to the public page


class Throttled(Exception):
    """Too many visits of the rating page from one client address."""


@dataclass(frozen=True)
class RatingPage:
    """What the public page shows for a link: the letter's number and subject line, and the
    rating if there is one. Nothing else of the letter."""

    number: str
    subject: str
    feedback_id: str
    rating: Rating | None
    # What the page needs to word a subject the gateway wrote (a fax's, a paper letter's) in its
    # language (web/shown.subject): only what that subject line itself says. Empty when it is withheld.
    channel: str = ""
    sender_name: str = ""
    sender_organisation: str = ""
    sender_address: str = ""
    fax_number: str | None = None
    fax_sender_name: str | None = None
    fax_pages: int | None = None


class Satisfaction:
    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.records = OutwardRecords(registry)

    # -- the public page ------------------------------------------------------------
    def visit(self, address: str) -> None:
        """Count a visit of the page; raises Throttled beyond [satisfaction] per_address_per_hour."""
        now = datetime.now(timezone.utc)
        limit = self.config.model.satisfaction.per_address_per_hour
        if self.records.visits(address, VISIT, now - timedelta(hours=1)) >= limit:
            raise Throttled(f"more than {limit} visits within the hour from {address}")
        self.registry.audit([{"at": now, "actor": "sender", "action": VISIT, "letter_id": None, "subject": "",
                              "address": address, "details": {}}])

    def page(self, token: str) -> RatingPage:
        """The link's page; raises BadToken (not ours, or no such result mail) and ExpiredToken."""
        checked = check_rating_token(self.config, token)
        found = self.records.result_mail(checked.message_id)
        if found is None:
            raise BadToken("no such result mail")
        number = found[0]
        letter = self.registry.letter(number)
        if letter is None:
            raise BadToken("no such letter")
        rating = self.records.rated(checked.message_id)
        if letter.confidentiality == "confidential":
            return RatingPage(number, "", checked.message_id, rating)
        return RatingPage(number, letter.subject, checked.message_id, rating, channel=letter.channel,
                          sender_name=letter.sender_name, sender_organisation=letter.sender_organisation,
                          sender_address=letter.sender_address, fax_number=letter.fax_number,
                          fax_sender_name=letter.fax_sender_name, fax_pages=letter.fax_pages)

    def by_link(self, token: str, score: int, comment: str, *, address: str) -> tuple[Rating, bool]:
        """Rate through the link. Raises BadToken, ExpiredToken, AlreadyRated and ValueError (no score)."""
        if score not in range(1, 6):
            raise ValueError("a score from 1 to 5")
        page = self.page(token)
        if page.rating is not None:
            raise AlreadyRated(f"{page.number}: this result was rated already")
        letter = self.registry.letter(page.number)
        assert letter is not None
        return self._rate(letter, page.feedback_id, score, comment, via="web", address=address)

    # -- a reply to the result mail -----------------------------------------------------
    def by_mail(self, letter: Letter, follow: FollowUp, *, keys: list[str], raw_sha256: str,
                raw_path: str) -> Registered:
        """A reply whose first line is a score (found by gateway.stages.answers)."""
        assert follow.score is not None and follow.feedback_id is not None
        known = self.records.known(keys)
        if known is not None:
            return known
        from gateway.stages.answers import parse_rating

        parsed = parse_rating(follow.text)
        comment = parsed[1] if parsed else ""
        if not follow.verified:
            return self.records.record_mail_event(letter.number, "rating-refused", follow.sender, {
                "score": follow.score, "comment": comment[:MAX_COMMENT], "via": "mail",
                "reason": "neither a reply to the result mail nor from a proven address (DKIM, DMARC, SMTP AUTH): "
                          "not counted",
                "raw_sha256": raw_sha256, "raw_path": raw_path}, keys)
        try:
            self._rate(letter, follow.feedback_id, follow.score, comment, via="mail", address="", keys=keys,
                       details={"from": follow.sender, "raw_sha256": raw_sha256, "raw_path": raw_path,
                                "message_id": follow.message_id})
        except AlreadyRated:
            return self.records.record_mail_event(letter.number, "rating-refused", follow.sender, {
                "score": follow.score, "comment": comment[:MAX_COMMENT], "via": "mail",
                "reason": "this result was rated already: one rating per result mail",
                "raw_sha256": raw_sha256, "raw_path": raw_path}, keys)
        now = self.registry.letter(letter.number)
        return Registered(letter.number, letter.id, "answer", now.status if now else letter.status)

    def _rate(self, letter: Letter, feedback_id: str, score: int, comment: str, *, via: str, address: str,
              keys: list[str] | None = None, details: dict[str, object] | None = None) -> tuple[Rating, bool]:
        # A form's line breaks come as CRLF, one character each in its maxlength: one here too.
        comment = typed_text(comment)[:MAX_COMMENT]
        calendar = self.config.calendar
        days = letter_answer_days(self.config, letter)

        def resume(_days: int | None, now: datetime) -> datetime | None:
            return calendar.deadline(now, days)  # a reopened case gets the answering time it was given again

        notify = department_notice(self.config, letter, "reopened", head=True, score=score, comment=comment)
        return self.records.rate(letter.number, feedback_id, score=score, comment=comment, via=via,
                                 actor="sender", address=address,
                                 reopen_at_most=self.config.model.satisfaction.reopen_at_most, resume=resume,
                                 notify=notify, keys=keys, details=dict(details or {}))
