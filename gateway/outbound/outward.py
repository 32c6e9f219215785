"""The mail of the outward loop: the request to a sender for missing materials, the notices to a
letter's department about what its sender did, and the rating link in a result mail.

The rating link is `<[web] base_url>/rate/<token>`: the token names the result mail (its
Message-ID) and when it was queued, under an HMAC with the reply keys (gateway.stages.tokens),
so that it cannot be made up or moved to another mail, and it expires after
[satisfaction] link_days. It is computed again from the outbox row at every attempt, so a mail
sent twice carries the same link.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

from gateway.config import Config
from gateway.outbound.compose import (ComposeError, _answerable, _base, _local, _sender, clean, kept_from_mail,
                                      in_thread_of, mail_subject, template)
from gateway.registry.models import Letter, OutboxMail
from gateway.stages.tokens import _usable_key, keyring

KINDS = frozenset({"request", "sender-notice"})
_MAC_CHARS = 22


# -- the rating link ------------------------------------------------------------------
@dataclass(frozen=True)
class RatingToken:
    message_id: str  # the result mail's, with its angle brackets
    issued: datetime


class BadToken(Exception):
    """Not a rating link of ours (made up, altered or cut short)."""


class ExpiredToken(Exception):
    """A rating link of ours, older than [satisfaction] link_days."""


def _mac(secret: bytes, message_id: str, issued: int) -> str:
    digest = hmac.new(secret, f"rate\x00{message_id}\x00{issued}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:_MAC_CHARS]


def rating_token(config: Config, message_id: str, issued: datetime) -> str:
    key = keyring(config).current
    assert key.secret is not None
    mid = f"<{message_id.strip().strip('<>')}>"
    stamp = int(issued.timestamp())
    encoded = base64.urlsafe_b64encode(mid.encode()).decode().rstrip("=")
    return f"{encoded}.{stamp:x}.{key.id}{_mac(key.secret, mid, stamp)}"


def check_rating_token(config: Config, token: str, now: datetime | None = None) -> RatingToken:
    """The result mail a link is for; raises BadToken or ExpiredToken."""
    try:
        encoded, stamp_hex, signed = token.split(".")
        mid = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        stamp = int(stamp_hex, 16)
        issued = datetime.fromtimestamp(stamp, timezone.utc)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        raise BadToken("not a rating link") from None
    key_id, mac = signed[:4], signed[4:]
    # A retired key counts for [replies] previous_key_grace_days, as for reply addresses: a
    # rotation because the secret may have leaked must stop links signed with it too.
    ring = keyring(config)
    key, reason = _usable_key(config, key_id, now)
    if key is None and any(k.id == key_id for k in ring.previous):
        raise ExpiredToken(f"the link no longer counts: {reason}")
    if key is None or key.secret is None or not hmac.compare_digest(_mac(key.secret, mid, stamp).encode(),
                                                                    mac.encode()):
        raise BadToken("not a rating link of ours")
    if (now or datetime.now(timezone.utc)) - issued > timedelta(days=config.model.satisfaction.link_days):
        raise ExpiredToken(f"the link expired {config.model.satisfaction.link_days} days after it was sent")
    return RatingToken(mid, issued)


def rating_link(config: Config, mail: OutboxMail, language: str) -> str | None:
    """The link, naming the result mail's language: the page then words the letter's subject in it."""
    base = config.model.web.base_url
    return f"{base}/rate/{rating_token(config, mail.message_id, mail.created_at)}?lang={language}" if base else None


_REPLY_ONLY = {
    "en": "Were you satisfied with how your letter was handled? Answer this mail with a number from 1 (not at all)\n"
          "to 5 (fully) on its first line, and a comment below if you like. If you are not satisfied, we take\n"
          "the matter up again.\n",
    "zh": "您对本次办理是否满意？请直接回复本邮件，在第一行写上 1（很不满意）至 5（非常满意）的分数，\n"
          "下面可写留言。如您不满意，我们将继续办理。\n",
}


def invitation(config: Config, mail: OutboxMail, language: str) -> str:
    """The paragraph a result mail ends with: how to rate the handling."""
    language = language if language in _REPLY_ONLY else "en"
    link = rating_link(config, mail, language)
    if link is None:
        return _REPLY_ONLY[language]
    _subject, body = template(config, "rate-invitation", language)
    return string.Template(body).safe_substitute({"link": link})


# -- the request and the notices -----------------------------------------------------
def compose(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    if mail.kind == "request":
        return request(config, mail, letter)
    if mail.kind == "sender-notice":
        return notice(config, mail, letter)
    raise ComposeError(f"no mail of kind {mail.kind!r} here")


def _day(config: Config, value: Any) -> str:
    try:
        return _local(config, datetime.fromisoformat(str(value)))[:10]
    except ValueError:
        return clean(str(value), 20)


def request(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """To the sender: what is missing from their letter, and by when. In the thread of their letter
    and titled with its number, so that their answer finds it."""
    language = str(mail.details.get("language", config.model.receipts.default_language))
    subject, body = template(config, "request", language)
    department = config.departments.get(letter.department or "")
    missing = [clean(str(m), 300) for m in mail.details.get("missing", [])]
    values = {
        "number": letter.number, "subject": clean(letter.subject, 200) or "-",
        "received": _local(config, letter.received_at),
        "department": clean(department.name if department else letter.department, 100),
        "organisation": clean(config.model.outbound.from_name, 100),
        "missing": "\n".join(f"  {n}. {m}" for n, m in enumerate(missing, 1)),
        "by": clean(str(mail.details.get("by", "")), 20)}
    message = _base(config, mail, string.Template(subject).safe_substitute(values), "auto-generated", letter)
    in_thread_of(message, letter)
    message.set_content(string.Template(body).safe_substitute(values))
    return message


_NOTICES = {
    "supplemented": ("Supplement received from the sender",
                     "The sender of letter {number} sent the materials asked for ({sender}); the letter is in\n"
                     "progress again and its deadline is {deadline}."),
    "expired": ("The sender did not send the missing materials",
                "The sender of letter {number} was asked for materials by {by} and has not sent them.\n"
                "Withdraw the letter (gateway letters withdraw {number}, or on its page in the register), or go on\n"
                "without them (gateway letters proceed {number}, or on its page): it is in progress again and\n"
                "its deadline counts on from the working days it had left."),
    "reopened": ("Reopened: the sender is not satisfied",
                 "The sender of letter {number} rated its handling {score} of 5; the letter is in progress again\n"
                 "and its deadline is {deadline}. Their comment:\n\n{comment}"),
}


def notice(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """To the letter's people: what its sender did. Never the letter's content."""
    about = str(mail.details.get("about", ""))
    if about not in _NOTICES:
        raise ComposeError(f"no notice about {about!r}")
    title, first = _NOTICES[about]
    values = {"number": letter.number, "sender": clean(str(mail.details.get("sender") or _sender(letter)), 200),
              "deadline": f"{_local(config, letter.deadline)} ({config.model.gateway.timezone})",
              "by": _day(config, mail.details.get("by", "")),
              "score": clean(str(mail.details.get("score", "?")), 4),
              "comment": "\n".join("  " + clean(line, 500) for line in
                                   str(mail.details.get("comment") or "-").splitlines()[:40])}
    # What was asked for, the files that came and the comment stay in the register.
    private = kept_from_mail(letter)
    if private:
        values["comment"] = "  (not sent by mail: read it in the register)"
    lines = [first.format(**values), ""]
    missing = [clean(str(m), 300) for m in mail.details.get("missing", [])]
    if missing:
        lines += ["Missing:"] + ([f"  {len(missing)} item(s), named in the register"] if private else
                                 [f"  {n}. {m}" for n, m in enumerate(missing, 1)]) + [""]
    attachments = [clean(str(a), 120) for a in mail.details.get("attachments", [])]
    if attachments:
        lines += ["Attachments added:"] + ([f"  {len(attachments)} file(s), named in the register"] if private
                                           else [f"  {a}" for a in attachments]) + [""]
    subject = mail_subject(letter)
    lines += [f"Number:    {letter.number}", f"Subject:   {subject or '(no subject)'}",
              f"Status:    {letter.status}", "", "In the register:",
              f"  {config.model.web.base_url}/letters/{letter.number}" if config.model.web.base_url
              else f"  gateway letters show {letter.number}"]
    message = _answerable(config, _base(config, mail, f"[{letter.number}] {title}", "auto-generated", letter),
                          mail, letter)
    message.set_content("\n".join(lines) + "\n")
    return message
