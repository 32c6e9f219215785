"""The mail the gateway writes: notifications to departments and receipts to senders.

Nothing taken from an incoming message reaches a header as it came: values
are stripped of CR, LF and other control characters, shortened, and set
through the `email` package, which encodes them; addresses must be plain
addr-specs. A subject carrying "\r\nBcc: someone" becomes one harmless line.

A recipient whose local part is not ASCII (`李明@example.org`) is written to as RFC 6531/6532
have it: its mail in UTF-8 headers (email.policy.SMTPUTF8), sent only through a relay that offers
SMTPUTF8 (gateway.outbound.sender). A domain in Unicode alone is written in A-labels, which any
relay carries.
"""
from __future__ import annotations

import re
import string
import unicodedata
from datetime import datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.mime.message import MIMEMessage
from email.policy import SMTP, SMTPUTF8, Policy, compat32
from email.headerregistry import Address
from email.utils import format_datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from gateway.addressing import ascii_domain
from gateway.config import Config
from gateway.registry.models import Letter, OutboxMail
from gateway.stages.autoreply import safe_address
from gateway.stages.tokens import AFTER_COPY, AFTER_FORGED, loop_content, loop_marker, reply_address

_CONTROLS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_MESSAGE_ID = re.compile(r"^<?([^<>\s\"]{1,250})>?$")


def clean(value: str | None, limit: int = 200) -> str:
    """One line of plain text, safe in a template (and, through `header_text`, in a header)."""
    text = _CONTROLS.sub(" ", value or "").strip()
    text = re.sub(r" {2,}", " ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header_text(value: str | None, limit: int = 250) -> str:
    """`clean`, and safe from a second decoding. The email package decodes RFC 2047 encoded-words
    ("=?utf-8?b?...?=") in any value set on a header: a sender's subject, decoded once when it
    came in, may decode to another encoded-word, of "\r\nBcc: ..." say, which would become real
    header lines of our own mail. "=?" is broken with a zero-width space, which shows nothing."""
    return clean(value, limit).replace("=?", "=\u200b?")


def our_from(config: Config) -> Address:
    """The From of our mail: `[outbound] from_name` and `from_address`. An Address, not a string:
    the email package encodes its name whole, where a string's name with a comma and Chinese
    ("Office, 收发室") would be written as two addresses."""
    out = config.model.outbound
    return Address(display_name=header_text(out.from_name, 80), addr_spec=out.from_address)


def in_thread_of(message: EmailMessage, letter: Letter) -> None:
    """In-Reply-To and References naming the letter's Message-ID, where it is one that can be
    written as it is: no spaces, brackets or quotes, and no encoded-word (see `header_text`)."""
    original = _MESSAGE_ID.match(letter.message_id or "")
    if original and "=?" not in original.group(1):
        message["In-Reply-To"] = f"<{original.group(1)}>"
        message["References"] = f"<{original.group(1)}>"


class ComposeError(Exception):
    """This mail cannot be written (an unsafe address, a missing letter): dead-letter it."""


def deliverable(recipient: str) -> str:
    """The recipient as its mail is addressed (RCPT TO and To): as written when it is ASCII; else in
    NFC with its domain in A-labels, so that only a local part that is not ASCII needs SMTPUTF8.
    Raises ComposeError for anything but a plain addr-spec."""
    if not safe_address(recipient):
        raise ComposeError(f"recipient {recipient!r} is not a plain address")
    if recipient.isascii():
        return recipient
    local, _, domain = unicodedata.normalize("NFC", recipient).rpartition("@")
    return f"{local}@{ascii_domain(domain)}"


def policy_for(address: str) -> Policy:
    """How mail to `deliverable(address)` is written: headers in UTF-8 (RFC 6532) when the address is
    not ASCII, for an address cannot be an encoded-word; else as always, 7-bit headers."""
    return SMTP if address.isascii() else SMTPUTF8


def _base(config: Config, mail: OutboxMail, subject: str, auto: str, letter: Letter) -> EmailMessage:
    to = deliverable(mail.recipient)
    message = EmailMessage(policy=policy_for(to))
    message["From"] = our_from(config)
    message["To"] = to
    message["Subject"] = header_text(subject)
    message["Date"] = format_datetime(datetime.now(ZoneInfo(config.model.gateway.timezone)))
    message["Message-ID"] = mail.message_id
    # RFC 3834: mark it as automatic, so that well-behaved systems do not answer it.
    message["Auto-Submitted"] = auto
    # Signed over this mail's kind and Message-ID, and by sealed() over what it says: only our own
    # internal mail coming back spares the owners a notification; a receipt's marker (an outsider
    # holds it) stops only a receipt.
    message["X-Gateway-Loop"] = loop_marker(config, mail.message_id, kind=mail.kind,
                                            after_copy="copied-loop-marker" in (letter.flags or []),
                                            after_forged=letter.number if "forged-loop-marker" in (letter.flags or [])
                                            else None)
    message["X-Gateway-Letter"] = letter.number
    return message


def sealed(config: Config, kind: str, message: EmailMessage) -> bytes:
    """The mail as it is sent, its loop marker signed over what it says as well: a copy of the
    marker and the Message-ID on any other mail is then not taken for ours come back
    (gateway.stages.tokens.loop_content)."""
    if message["X-Gateway-Loop"] is None:
        return message.as_bytes()
    content = loop_content(message.as_bytes())  # read back as a receiver reads it
    # Whether it is about a letter with a copied or forged marker _base() wrote into the marker: kept.
    after_copy = AFTER_COPY in str(message["X-Gateway-Loop"])
    after_forged = str(message["X-Gateway-Letter"]) if AFTER_FORGED in str(message["X-Gateway-Loop"]) else None
    message.replace_header("X-Gateway-Loop", loop_marker(config, str(message["Message-ID"]), kind=kind,
                                                         content=content, after_copy=after_copy,
                                                         after_forged=after_forged))
    return message.as_bytes()


def _answerable(config: Config, message: EmailMessage, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """A mail its recipient may answer with a command: the reply address signed for this letter
    and this recipient, the only way an answer by mail is obeyed."""
    message["Reply-To"] = reply_address(config, letter.number, mail.recipient)
    return message


def _local(config: Config, when: datetime | None) -> str:
    if when is None:
        return "none set"
    return when.astimezone(ZoneInfo(config.model.gateway.timezone)).strftime("%Y-%m-%d %H:%M")


def kept_from_mail(letter: Letter) -> bool:
    """Whether what the letter says stays out of mail about it: a confidential letter's people are
    not all its readers, and an archived letter has none without a borrowing."""
    return letter.confidentiality == "confidential" or letter.status == "archived"


def mail_subject(letter: Letter) -> str:
    """The letter's subject as a mail about it may name it."""
    if letter.confidentiality == "confidential":
        return "Confidential letter"
    return "Archived letter" if letter.status == "archived" else clean(letter.subject, 120)


def _sender(letter: Letter) -> str:
    if letter.channel == "fax" and not letter.sender_address:
        name = clean(letter.fax_sender_name or letter.sender_name, 80)
        return f"fax {clean(letter.fax_number, 40) or 'from an unknown number'}{f' ({name})' if name else ''}"
    name = clean(letter.sender_name, 80)
    address = clean(letter.sender_address, 120) or "(no address)"
    return f"{name} <{address}>" if name else address


def _register_link(config: Config, letter: Letter) -> str:
    """Where the recipient reads the letter: its page in the web register, when its address is known."""
    base = config.model.web.base_url
    return f"  {base}/letters/{letter.number}" if base else f"  gateway letters show {letter.number}"


def notification(config: Config, mail: OutboxMail, letter: Letter, raw: bytes | None,
                 original_as_file: bool = False) -> EmailMessage:
    department = config.departments.get(letter.department or "")
    dept_name = department.name if department else (letter.department or "?")
    zone = config.model.gateway.timezone
    assigned_by = (mail.details or {}).get("assigned_by")
    headline = (f"Letter {letter.number} of {dept_name} was assigned to you by {clean(str(assigned_by), 80)}."
                if assigned_by else None)
    if letter.confidentiality == "confidential":
        # Only what lets the owner find it in the register: no subject, no text, no attachment.
        message = _answerable(config, _base(config, mail, f"[{letter.number}] Confidential letter",
                                            "auto-generated", letter), mail, letter)
        message.set_content("\n".join([
            headline or f"A confidential letter was routed to {dept_name}.",
            "",
            f"Number:    {letter.number}",
            f"From:      {_sender(letter)}",
            f"Deadline:  {_local(config, letter.deadline)} ({zone})" if letter.deadline else "Deadline:  none set",
            "",
            "Its content is not sent by mail; read it in the register:",
            _register_link(config, letter),
        ]) + "\n")
        return message
    message = _answerable(config, _base(config, mail, f"[{letter.number}] {letter.subject or '(no subject)'}",
                                        "auto-generated", letter), mail, letter)
    trace = letter.classification or {}
    lines = [
        headline if headline else
        f"Letter {letter.number} was routed to {dept_name}."
        if letter.status != "needs-triage" else
        f"Letter {letter.number} needs triage: no rule decided which department owns it.",
        "",
        f"Number:      {letter.number}",
        f"Received:    {_local(config, letter.received_at)} ({zone}) by {letter.channel} ({letter.intake})",
        f"From:        {_sender(letter)}",
        f"To:          {clean(letter.recipient, 200) or '-'}",
        f"Subject:     {clean(letter.subject, 300) or '(no subject)'}",
        f"Category:    {letter.category or 'not decided'}",
        f"Urgency:     {letter.urgency}",
        f"Deadline:    {_local(config, letter.deadline)}",
    ]
    if letter.fax_pages is not None:
        lines.append(f"Pages:       {letter.fax_pages}")
    if letter.flags:
        lines.append(f"Flags:       {', '.join(letter.flags)}")
    if letter.tags:
        lines.append(f"Tags:        {', '.join(letter.tags)}")
    for n, attachment in enumerate(letter.attachments):
        lines.append(f"{'Attachments:' if n == 0 else '':<13}{clean(attachment.filename, 120)} "
                     f"({attachment.detected_type}, {attachment.size} bytes)")
    lines += ["", "Why:"] + [f"  rule {m['rule']!r} (line {m.get('line')}): {'; '.join(m['evidence'])}"
                             for m in trace.get("matched", [])]
    if trace.get("triage"):
        triage = trace["triage"]
        candidates = ", ".join(triage.get("candidates") or []) or "none found"
        lines.append(f"  {triage.get('reason')}; likely departments: {candidates}")
    if letter.summary:
        lines += ["", "Summary:", letter.summary]
    limit = config.model.outbound.attach_original_max_bytes
    attach = raw is not None and 0 < len(raw) <= limit
    lines += ["", "The original is attached." if attach else
              f"The original ({letter.raw_size} bytes) is not attached; it is in the register."]
    if config.model.web.base_url:
        lines += ["", "In the register:", _register_link(config, letter)]
    message.set_content("\n".join(lines) + "\n")
    if attach:
        assert raw is not None
        if letter.is_fax_file:
            name = letter.attachments[0].filename if letter.attachments else "fax"
            kind = (letter.attachments[0].detected_type if letter.attachments else "") or "application/octet-stream"
            maintype, _, subtype = kind.partition("/")
            message.add_attachment(raw, maintype=maintype, subtype=subtype or "octet-stream", filename=name)
        elif original_as_file or not _fits_rfc822(raw):
            message.add_attachment(raw, maintype="application", subtype="octet-stream", filename="original.eml")
        else:
            message.make_mixed()
            # typeshed lets an EmailMessage attach only its own kind; any Message is attached alike at run time.
            message.attach(_rfc822(raw))  # type: ignore[arg-type]
    return message


# A line longer than SMTP carries (RFC 5321 4.5.3.1.6: 998 octets and CRLF), or a NUL. Tried at line
# starts only, so a long original is read once.
_UNSENDABLE_LINE = re.compile(rb"^[^\r\n]{999}|\x00", re.M)


def _fits_rfc822(raw: bytes) -> bool:
    """Whether the original can go as a message/rfc822 part, which is sent as it is (RFC 2046
    allows it no transfer encoding): a relay refuses a line past 998 octets, so such an original
    goes as a file (base64), or the department would never hear of the letter."""
    return _UNSENDABLE_LINE.search(raw) is None


def _rfc822(raw: bytes) -> MIMEMessage:
    # compat32 keeps a malformed original as it came instead of failing on it.
    part = MIMEMessage(message_from_bytes(raw, policy=compat32), "rfc822")
    part.add_header("Content-Disposition", "attachment", filename="original.eml")
    return part


def template(config: Config, kind: str, language: str) -> tuple[str, str]:
    """(subject template, body template) from the configured folder, else the built-in ones.

    The folder must hold the receipt and feedback templates (the configuration check says so);
    any other kind it does not hold (refused-command) is taken from the built-in ones."""
    folder = config.resolve(config.model.receipts.templates)
    name = f"{kind}.{language}.txt"
    own = folder is not None and (kind in ("receipt", "feedback") or (folder / name).exists())
    text = ((folder / name).read_text(encoding="utf-8") if own and folder is not None else
            resources.files("gateway.outbound").joinpath("templates", name).read_text(encoding="utf-8"))
    head, _, body = text.partition("\n\n")
    if not head.lower().startswith("subject:"):
        raise ComposeError(f"template {name}: the first line must be 'Subject: ...'")
    return head.split(":", 1)[1].strip(), body


def receipt(config: Config, mail: OutboxMail, letter: Letter, kind: str = "receipt") -> EmailMessage:
    """A receipt naming the letter number, or (kind "feedback") the result of a closed letter."""
    language = str(mail.details.get("language", config.model.receipts.default_language))
    subject, body = template(config, kind, language)
    department = config.departments.get(letter.department or "")
    values: dict[str, Any] = {
        "number": letter.number, "subject": clean(letter.subject, 200) or "-",
        "received": _local(config, letter.received_at),
        "department": clean(department.name if department else letter.department, 100),
        "organisation": clean(config.model.outbound.from_name, 100),
        "result": str(mail.details.get("result", "")).replace("\r", "")}
    message = _base(config, mail, string.Template(subject).safe_substitute(values), "auto-replied", letter)
    in_thread_of(message, letter)
    text = string.Template(body).safe_substitute(values)
    if kind == "feedback":  # the sender is asked whether they are satisfied
        from gateway.outbound.outward import invitation

        text = text.rstrip("\n") + "\n\n" + invitation(config, mail, language)
    message.set_content(text)
    return message


_REMINDER_LINES = {
    "unacknowledged": "has not been acknowledged yet (acknowledge it: gateway letters ack {number})",
    "before": "is due on {deadline}",
    "overdue": "is overdue: it was due on {deadline}",
}


def reminder(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """A reminder to the owners, or an escalation to the department head; never the letter's content."""
    kind = str(mail.details.get("reminder", "overdue"))
    department = config.departments.get(letter.department or "")
    dept_name = department.name if department else (letter.department or "?")
    deadline = _local(config, letter.deadline)
    subject = mail_subject(letter)
    if kind == "escalation":
        title = f"[{letter.number}] Escalation: overdue since {deadline}"
        first = (f"Letter {letter.number}, routed to {dept_name}, is overdue (due {deadline}) after "
                 f"{mail.details.get('count', '?')} reminder(s) to its owners.")
    else:
        line = _REMINDER_LINES.get(kind, _REMINDER_LINES["overdue"]).format(number=letter.number, deadline=deadline)
        title = f"[{letter.number}] Reminder: {'overdue' if kind == 'overdue' else 'due ' + deadline}"
        first = f"Letter {letter.number} {line}."
    message = _answerable(config, _base(config, mail, title, "auto-generated", letter), mail, letter)
    message.set_content("\n".join([
        first, "",
        f"Number:    {letter.number}",
        f"Subject:   {subject or '(no subject)'}",
        f"From:      {_sender(letter)}",
        f"Status:    {letter.status}",
        f"Deadline:  {deadline} ({config.model.gateway.timezone})",
        f"Reminder:  {mail.details.get('count', '?')}",
        "",
        f"See it with: gateway letters show {letter.number}",
    ]) + "\n")
    return message


def refusal(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    """To a department's owners: a command by mail on one of their letters was not obeyed, and why.

    No reply address: nothing in it is to be answered with a command."""
    language = str(mail.details.get("language", config.model.receipts.default_language))
    subject, body = template(config, "refused-command", language)
    department = config.departments.get(letter.department or "")
    received = mail.details.get("received_at")
    values: dict[str, Any] = {
        "number": letter.number,
        "subject": clean(letter.subject, 200) if letter.confidentiality != "confidential" else "-",
        "department": clean(department.name if department else letter.department, 100),
        "sender": clean(str(mail.details.get("sender", "")), 200) or "-",
        "authenticated": clean(str(mail.details.get("authenticated") or "-"), 200),
        "command": clean(" ".join(str(mail.details.get(k) or "") for k in ("command", "argument")), 300),
        "reason": clean(str(mail.details.get("reason", "")), 1000),
        "received": _local(config, datetime.fromisoformat(received)) if isinstance(received, str) else "-",
        "organisation": clean(config.model.outbound.from_name, 100)}
    message = _base(config, mail, string.Template(subject).safe_substitute(values), "auto-generated", letter)
    message.set_content(string.Template(body).safe_substitute(values))
    return message


def password_reset(config: Config, mail: OutboxMail) -> EmailMessage:
    """The link for someone who forgot their password: to their own address, about no letter."""
    language = str(mail.details.get("language", "zh"))
    subject, body = template(config, "password-reset", language if language in ("zh", "en") else "zh")
    details = mail.details
    values = {"name": clean(str(details.get("name", "")), 100), "login": clean(str(details.get("login", "")), 64),
              "link": clean(str(details.get("link", "")), 400), "minutes": str(details.get("minutes", "")),
              "asked_from": clean(str(details.get("asked_from", "")), 64),
              "organisation": clean(config.model.outbound.from_name, 100)}
    to = deliverable(mail.recipient)
    message = EmailMessage(policy=policy_for(to))
    message["From"] = our_from(config)
    message["To"] = to
    message["Subject"] = header_text(string.Template(subject).safe_substitute(values))
    message["Date"] = format_datetime(datetime.now(ZoneInfo(config.model.gateway.timezone)))
    message["Message-ID"] = mail.message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Gateway-Loop"] = loop_marker(config, mail.message_id, kind=mail.kind)
    message.set_content(string.Template(body).safe_substitute(values))
    return message
