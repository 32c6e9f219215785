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
An answer is obeyed only when it comes from an owner or the head of the
letter's department (or the letter's own owner); anyone else's is recorded on
the letter, not obeyed. Whatever happens, the text is kept as an event and
the mail itself in the message store.
"""
from __future__ import annotations

import re


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



def bracketed_numbers(subject: str) -> list[str]:
    return _BRACKETED.findall(subject)


def own_text(body: str, limit: int = 4000) -> str:
    """The answer without the quoted notification below it."""
    lines = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if re.match(r"^(?:On .+ wrote:|-----\s*Original Message\s*-----|发件人[:：]|From:\s)", stripped):
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
