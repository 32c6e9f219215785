"""The mail of replies under approval: the reply to a letter's sender, and the notices to its
approvers and handler (a step waiting, a reminder, a reply returned).

The reply is written once, when its last approver approves, and kept byte for byte with the
reply (gateway.registry.replies): the outbox sends those bytes, however often it tries, and the
archive keeps the same bytes with the letter.
"""
from __future__ import annotations

import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.outbound.compose import (ComposeError, _local, _sender, clean, deliverable, header_text, in_thread_of,
                                      our_from, policy_for, sealed)
from gateway.registry import Registry
from gateway.registry.models import Letter, OutboxMail, ReplyAttachment
from gateway.registry.plan import NewMail
from gateway.registry.replies import ReplyRecords
from gateway.stages.normalise.filenames import safe_media_type
from gateway.stages.tokens import loop_marker

KINDS = frozenset({"sender-reply", "approval"})
_RE = re.compile(r"^\s*((re|aw|sv|回复|答复)\s*[:：]\s*)+", re.I)


def reply_subject(letter: Letter) -> str:
    """"Re: [number] subject", the sender's own "Re:" prefixes not doubled."""
    subject = _RE.sub("", clean(letter.subject, 200)).strip()
    return f"Re: [{letter.number}] {subject}".rstrip()


def reply_message(config: Config, letter: Letter, text: str, attachments: list[ReplyAttachment],
                  mail: NewMail) -> bytes:
    """The reply to the sender, as it will be sent: our From, in the thread of their letter."""
    message = _headers(config, mail.recipient, mail.message_id, reply_subject(letter), letter, "sender-reply")
    in_thread_of(message, letter)
    message.set_content(text.rstrip("\n") + "\n")
    for attachment in attachments:
        maintype, _, subtype = safe_media_type(attachment.content_type or "").partition("/")
        message.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return message.as_bytes()


def _headers(config: Config, recipient: str, message_id: str, subject: str, letter: Letter,
             kind: str) -> EmailMessage:
    to = deliverable(recipient)
    message = EmailMessage(policy=policy_for(to))
    message["From"] = our_from(config)
    message["To"] = to
    message["Subject"] = header_text(subject)
    message["Date"] = format_datetime(datetime.now(ZoneInfo(config.model.gateway.timezone)))
    message["Message-ID"] = message_id
    # As on all our mail: an approval notice forwarded back in by its approver's rule is known
    # as ours (no new letter's notification), a reply to the sender stops their auto-responder's
    # receipt (see compose._base).
    message["X-Gateway-Loop"] = loop_marker(config, message_id, kind=kind)
    message["X-Gateway-Letter"] = letter.number
    return message


_NOTICES = {
    "waiting": ("Reply awaiting your approval",
                "A reply to letter {number} waits for your approval ({role}, step {step})."),
    "reminder": ("Reminder: reply awaiting your approval",
                 "A reply to letter {number} has waited for your approval ({role}) since {since}."),
    "returned": ("Reply returned",
                 "The reply you drafted to letter {number} was returned to you. The approver's comment:\n\n"
                 "{comment}\n\nChange it and submit it again."),
}


def compose(config: Config, registry: Registry, mail: OutboxMail, letter: Letter) -> bytes:
    if mail.kind == "sender-reply":
        message = ReplyRecords(registry).message_by_id(mail.message_id)
        if not message:
            raise ComposeError(f"the reply {mail.message_id} is not in the register")
        return message
    return sealed(config, mail.kind, notice(config, mail, letter))


def notice(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """To an approver or the reply's handler: never the reply's or the letter's content."""
    about = str(mail.details.get("about", ""))
    if about not in _NOTICES:
        raise ComposeError(f"no notice about {about!r}")
    title, first = _NOTICES[about]
    since = mail.details.get("since")
    values = {"number": letter.number, "role": clean(str(mail.details.get("role", "")), 20),
              "step": clean(str(mail.details.get("step", "")), 5) or "-",
              "since": _local(config, datetime.fromisoformat(since)) if isinstance(since, str) else "-",
              "comment": "\n".join("  " + clean(line, 500) for line in
                                   str(mail.details.get("comment") or "-").splitlines()[:40])}
    if letter.confidentiality == "confidential":
        values["comment"] = "  (not sent by mail: read it in the register)"
    subject = clean(letter.subject, 120) if letter.confidentiality != "confidential" else "Confidential letter"
    base = config.model.web.base_url
    lines = [first.format(**values), "", f"Number:    {letter.number}", f"Subject:   {subject or '(no subject)'}",
             f"From:      {_sender(letter)}", "", "In the register:",
             f"  {base}/letters/{letter.number}" if base else f"  gateway letters show {letter.number}"]
    message = _headers(config, mail.recipient, mail.message_id, f"[{letter.number}] {title}", letter, "approval")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: not to be answered automatically
    message.set_content("\n".join(lines) + "\n")
    return message
