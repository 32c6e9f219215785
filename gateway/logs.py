"""Logging for journald and terminals alike.

Under systemd (JOURNAL_STREAM is set) each line starts with a `<N>` syslog
priority, which journald turns into the entry's level, and carries no
timestamp of its own. Elsewhere lines carry a timestamp and the level name.
Loggers are per subsystem (gateway.intake, gateway.daemon.pipeline, ...) and lines
about a letter start with its number.
"""
from __future__ import annotations

import logging
import os
import re
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# What a message must not carry as it is: line breaks (a sender's subject or a fax's file name
# could start a line that reads as an entry of its own), other control characters, and the
# direction controls that reorder what a terminal shows.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char) or f"\\u{ord(char):04x}"


class LineFormatter(logging.Formatter):
    """One entry, one line: the message's unsafe characters are written as escapes. A traceback
    (exc_info), which the code itself appends, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _UNSAFE.sub(_escaped, record.message)
        return super().formatMessage(record)


class JournalFormatter(LineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        # Continuation lines (tracebacks) keep the priority too.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup(level: str = "INFO", *, timestamps: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    elif timestamps:
        handler.setFormatter(LineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(LineFormatter("%(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries speak only when something is wrong.
    # aiosmtpd's "mail.log" logs every command at INFO; our intake logs what matters.
    logging.getLogger("mail.log").addFilter(_drop_aiosmtpd_self_warning)
    for noisy in ("apscheduler", "alembic", "sqlalchemy", "mail.log", "imapclient", "pypdf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _drop_aiosmtpd_self_warning(record: logging.LogRecord) -> bool:
    # aiosmtpd warns about its own use of a deprecated attribute on every AUTH.
    return "login_data is deprecated" not in str(record.msg)
