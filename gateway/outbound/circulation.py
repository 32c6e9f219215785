"""The mail of circulation and borrowing: a reader's turn, reminders, a word to the starter about a
late reader, a leader's instruction and the finished circulation for the handling department, and
borrowing requests and decisions. Never a letter's text; a confidential letter's subject neither."""
from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from typing import Any

from gateway.config import Config
from gateway.outbound.compose import ComposeError, _base, _local, clean, kept_from_mail, mail_subject
from gateway.registry.models import Letter, OutboxMail

KINDS = frozenset({"circulation", "borrowing"})

_TITLES = {
    "to-read": "To read and sign",
    "reminder": "Reminder: your reading is overdue",
    "escalation": "A reader has not signed in time",
    "instruction": "Instruction (批示) for your department",
    "finished": "Circulation finished",
    "request": "Borrowing request awaiting your approval",
    "granted": "Borrowing granted",
    "refused": "Borrowing refused",
}


def _when(config: Config, value: Any) -> str:
    try:
        return f"{_local(config, datetime.fromisoformat(str(value)))} ({config.model.gateway.timezone})"
    except ValueError:
        return "-"


def compose(config: Config, mail: OutboxMail, letter: Letter) -> EmailMessage:
    details = mail.details or {}
    about = str(details.get("about", ""))
    if about not in _TITLES:
        raise ComposeError(f"no {mail.kind} mail about {about!r}")
    # Who gets these mails is not always a reader of the letter (the handling department's owners,
    # a borrower refused): instructions stay in the register where its content does.
    private = kept_from_mail(letter)
    subject = mail_subject(letter)
    kept = "(not sent by mail: read it in the register)"
    reader = clean(str(details.get("reader", "")), 120)
    lines: list[str] = []
    if about == "to-read":
        lines += [f"Letter {letter.number} is circulated to you: read it and sign it in the register by "
                  f"{_when(config, details.get('deadline'))}.",
                  f"You are reader {details.get('step')} of {details.get('readers')}; the next reader gets it "
                  "once you have signed."]
    elif about == "reminder":
        lines += [f"Letter {letter.number} waits for your signature since "
                  f"{_when(config, details.get('deadline'))} (reminder {details.get('count')})."]
    elif about == "escalation":
        lines += [f"Letter {letter.number}, which you circulated, waits for {reader} since "
                  f"{_when(config, details.get('deadline'))}, after {details.get('count')} reminder(s)."]
    elif about == "instruction":
        lines += [f"{reader} signed letter {letter.number} with this instruction for your department:", ""]
        lines += [f"  {kept}"] if private else [
            "  " + clean(line, 500) for line in str(details.get("instruction", "")).splitlines()[:40]]
    elif about == "finished":
        lines += [f"Every reader has signed letter {letter.number}:", ""]
        for item in details.get("signed", [])[:50]:
            text = clean(str(item.get("instruction") or ""), 500)
            text = kept if text and private else text
            lines.append(f"  {item.get('step')}. {clean(str(item.get('reader', '')), 120)}, "
                         f"{_when(config, item.get('at'))}" + (f": {text}" if text else ""))
    elif about == "request":
        lines += [f"{clean(str(details.get('borrower', '')), 120)} asks to read archived letter {letter.number} "
                  f"for {details.get('days')} day(s).", "", "Reason:",
                  "  " + clean(str(details.get("reason", "")), 1000), "",
                  "Grant or refuse it in the register (Borrowing: awaiting my approval), or with",
                  f"  gateway archive grant {details.get('borrowing')} --as LOGIN"]
    else:
        lines += [f"Your request to read archived letter {letter.number} was {about}"
                  + (f"; you may read it until {_when(config, details.get('until'))}." if about == "granted" else ".")]
        if details.get("comment"):
            lines += ["", "Comment: " + clean(str(details.get("comment")), 1000)]
    base = config.model.web.base_url
    lines += ["", f"Number:    {letter.number}", f"Subject:   {subject or '(no subject)'}", "", "In the register:",
              f"  {base}/letters/{letter.number}" if base else f"  gateway letters show {letter.number}"]
    message = _base(config, mail, f"[{letter.number}] {_TITLES[about]}", "auto-generated", letter)
    message.set_content("\n".join(lines) + "\n")
    return message
