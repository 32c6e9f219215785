"""Departments answer by e-mail: a reply to a notification whose first line is a command.

A mail is an answer when its subject names a registered letter in brackets
(`Re: [2026-000123] ...`, as notifications are titled) or its In-Reply-To or
References point at mail the gateway sent about a letter. Its first line of
its own text (quoted lines and blank lines skipped) may be a command:

    received               the department has the letter (acknowledged)
    in progress            work has begun
    done: <result>         dealt with; <result> is recorded (closed)
    reassign <department>  to another department, whose owners are notified
    note: <text>           a remark

Chinese forms are understood too (收到, 办理中, 办结: ..., 转 <department>).
An answer is obeyed only when it comes from one of the letter's department's
people (its owners, head and members) or the letter's own owner, authenticated
and through the reply address issued to them; anyone else's is recorded on the
letter, not obeyed. Whatever happens, the text is kept as an event and
the mail itself in the message store.

A letter's sender writes back too (`sender_follow_up`): with the materials a
request asked for (a supplement, recorded on the letter, never a letter of its
own), or with a rating of the result, a first line of 1 to 5 (the rest is the
comment). A supplement names its letter by replying to our request or by the
number in its subject; it resumes the letter only when it replies to our
request or comes from the letter's sender, proven (DKIM, DMARC, SMTP AUTH): a
From header alone is anyone's to write. A rating counts only from the address
the result went to (or the letter's sender), and when it replies to the result
mail or names the letter's number from a proven address.
"""
from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

from gateway.addressing import canonical
from gateway.registry.outward import FollowUp, SenderThread
from gateway.registry.plan import NewAttachment
from gateway.stages.addresses import is_internal
from gateway.stages.autoreply import no_reply_reason
from gateway.stages.normalise import Normalised


_BRACKETED = re.compile(r"\[([^\[\]\s]{3,64})\]")
FORWARD = re.compile(r"^\s*(?:(?:re|aw|回复|回覆)\s*[:：]\s*)*(?:fwd?|fw|转发|轉寄|转|wg)\s*[:：]", re.I)
_COMMANDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?:received|ack(?:nowledged)?|收到|已收到)[.!。！]?$", re.I), "ack"),
    (re.compile(r"^(?:in[ -]progress|progress|working on it|办理中|辦理中|处理中|處理中)[.!。！]?$", re.I), "progress"),
    (re.compile(r"^(?:done|closed|办结|辦結|已办结|已辦結)\s*[:：]\s*(?P<text>.+)$", re.I), "close"),
    (re.compile(r"^(?:reassign(?:\s+to)?|转|轉|转交|轉交)\s*[:：]?\s*(?P<text>[A-Za-z0-9][A-Za-z0-9_.-]*)\s*$", re.I),
     "reassign"),
    (re.compile(r"^(?:note|备注|備註)\s*[:：]\s*(?P<text>.+)$", re.I), "note"),
]



_SIGNATURE_B = re.compile(r"(?:^|;)\s*b\s*=([^;]*)")


def signature_keys(header_fields: list[tuple[str, str]]) -> list[str]:
    """A key for each DKIM signature of a mail (its b= value): the same signed mail again has the
    same keys, whatever headers were added above it or changed outside what the signature covers
    (a second Message-ID, say), so a signed answer is obeyed once."""
    keys = []
    for name, value in header_fields:
        found = _SIGNATURE_B.search(value) if name.strip().lower() == "dkim-signature" else None
        if found and (signed := "".join(found.group(1).split())):
            try:
                # The signature itself, not how it is written: base64 leaves bits of the last
                # character unread, so one signature can be written several ways, each verifying.
                signature = base64.b64decode(signed)
            except ValueError:
                signature = signed.encode()
            keys.append("answer-signature:" + hashlib.sha256(signature).hexdigest()[:40])
    return keys


def bracketed_numbers(subject: str) -> list[str]:
    return _BRACKETED.findall(subject)


# Where the quoted mail begins when its lines carry no ">" (an HTML reply rendered as text), as
# mail programs write it: "On ... wrote:", "在 ...写道：" (Chinese Gmail, Foxmail), Outlook's
# "-----Original Message-----", "-----原始邮件-----" or its line of underscores, a header block.
# A line "...写道：" counts only with a date or an address in it, as mail programs write it ("他写道："
# above a quotation of one's own is text); Outlook's line is 32 underscores.
_QUOTE_START = re.compile(r"^(?:On .+ wrote:|.*[0-9@].*写道[:：]$"
                          r"|-{3,}\s*(?:Original Message|原始邮件|原始郵件)\s*-{3,}"
                          r"|_{30,}$|(?:发件人|寄件者)[:：]|From:\s)", re.I)


def own_text(body: str, limit: int = 4000) -> str:
    """The answer without the quoted notification below it."""
    lines = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if _QUOTE_START.match(stripped):
            break
        lines.append(line.rstrip())
    return "\n".join(lines).strip()[:limit]


def parse_command(text: str) -> tuple[str | None, str]:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    for pattern, command in _COMMANDS:
        match = pattern.match(first)
        if match:
            argument = (match.groupdict().get("text") or "").strip()
            return command, argument.lower() if command == "reassign" else argument
    return None, ""


# "4", "2 - too slow", "5分", "3。还行": a score from 1 to 5 first, then the comment.
_RATING = re.compile(r"^([1-5])(?![0-9.,])\s*(?:分|points?|/\s*5)?\s*[-–—:：.。,，;；!！]*\s*(?P<comment>.*)$",
                     re.I | re.S)
FindSenderThread = Callable[[list[str], list[str]], "SenderThread | None"]


def parse_rating(text: str) -> tuple[int, str] | None:
    """(score, comment) when the first line of its own is a score from 1 to 5."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    match = _RATING.match(lines[0])
    if match is None:
        return None
    comment = "\n".join([match.group("comment").strip(), *lines[1:]]).strip()
    return int(match.group(1)), comment


def sender_follow_up(*, subject: str, sender: str, message_ids: list[str], body: str, message_id: str | None,
                     internal: bool, automatic: bool, proven: bool, find: FindSenderThread) -> FollowUp | None:
    """Is this a letter's sender writing back about it (a supplement, a rating)? None: it is
    not (a department's answer, or correspondence of its own).

    `proven`: the trust verdict proved the From address (DKIM, DMARC, SMTP AUTH). A From header
    alone is anyone's to write: a mail that only names the letter's number counts (resumes the
    letter, rates its result) when its From is proven; a reply to our request or result mail
    counts by itself, since only who received that mail knows its Message-ID (random)."""
    if FORWARD.match(subject) or not sender:
        return None
    numbers = bracketed_numbers(subject)
    if not numbers and not message_ids:
        return None
    thread = find(numbers, message_ids)
    if thread is None:
        return None
    sender = sender.lower()
    from_sender = bool(thread.sender_address) and canonical(sender) == canonical(thread.sender_address)
    text = own_text(body)
    named = thread.number in numbers
    rating = parse_rating(text) if thread.feedback_id and not automatic else None
    if rating is not None and thread.replied_to != "request" and (thread.replied_to == "feedback" or named) \
            and (from_sender or canonical(sender) == canonical(thread.feedback_to or "")):
        return FollowUp(thread.number, "rating", sender, text, thread.replied_to == "feedback" or proven,
                        "reply" if thread.replied_to else "number",
                        subject=subject, message_id=message_id, score=rating[0], feedback_id=thread.feedback_id)
    if automatic:
        return None  # an automatic reply (an absence notice) supplies nothing
    if thread.replied_to == "request" or (thread.status == "awaiting-sender" and named
                                          and (from_sender or not internal)):
        # Anyone outside may write quoting the number: recorded on the letter; only the sender,
        # proven, or a reply in our request's thread, resumes it. Nothing else rests on a follow-up.
        return FollowUp(thread.number, "supplement", sender, text,
                        thread.replied_to == "request" or (from_sender and proven),
                        "reply" if thread.replied_to == "request" else "number", subject=subject,
                        message_id=message_id)
    return None


def follow_up_of(parsed: Normalised, *, envelope_from: str | None, domains: list[str], proven_address: str | None,
                 find: FindSenderThread) -> FollowUp | None:
    """`sender_follow_up` for a normalised mail, its attachments with it; `proven_address`: the
    From address as the trust verdict proved it (None when it did not)."""
    if parsed.sender is None:
        return None
    headers: dict[str, list[str]] = {}
    for name, value in parsed.header_fields:
        headers.setdefault(name.lower(), []).append(value)
    follow = sender_follow_up(
        subject=parsed.subject, sender=parsed.sender.address,
        message_ids=[i for i in [parsed.in_reply_to, *parsed.references] if i], body=parsed.body_text,
        message_id=parsed.message_id, internal=is_internal(parsed.sender.address, domains),
        automatic=no_reply_reason(headers, parsed.sender.address, envelope_from, own_mail=False) is not None,
        proven=bool(proven_address) and canonical(proven_address or "") == canonical(parsed.sender.address),
        find=find)
    if follow is not None and follow.kind == "supplement":
        follow.attachments = [NewAttachment(a.filename, a.original_filename, a.declared_type, a.detected_type,
                                            a.size, a.sha256, a.origin) for a in parsed.attachments]
    return follow
