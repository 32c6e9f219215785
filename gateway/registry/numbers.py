"""Letter numbers: a configurable template, one gap-free counter per series.

The template is a Python format string. `{seq}` (with an optional width such
as `{seq:06d}`) is the running number; the other fields name the series, so
"{year}-{seq:06d}" gives one series per year: 2026-000001, 2026-000002, ...
"""
from __future__ import annotations

import re
import string
from datetime import datetime

FIELDS = {"year", "month", "day", "channel"}
_SEQ = "seq"
MAX_LENGTH = 64  # the register's column, and what a subject's [number] is looked for as
# A number names its letter in subjects ([2026-000123]), reply addresses and the web register's
# links: no spaces, brackets, slashes or characters a link would have to escape.
_NOT_IN_A_NUMBER = re.compile(r"[\s\[\]/\\?#%<>\"'`{}|^]")
_WIDTH = re.compile(r"\D*(\d+)")


class NumberTemplate:
    def __init__(self, template: str):
        fields = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"letter number template {template!r}: {exc}") from None
        for _literal, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in FIELDS | {_SEQ}:
                raise ValueError(f"letter number template {template!r}: unknown field {{{field}}}"
                                 f" (allowed: {', '.join(sorted(FIELDS | {_SEQ}))})")
            if conversion:
                raise ValueError(f"letter number template {template!r}: conversions are not allowed")
            if field == _SEQ and spec and not spec.endswith("d"):
                raise ValueError(f"letter number template {template!r}: {{seq}} needs an integer format like 06d")
            fields.append(field)
        if fields.count(_SEQ) != 1:
            raise ValueError(f"letter number template {template!r}: must contain {{seq}} exactly once")
        widths = [int(m.group(1)) for _, field, spec, _ in parsed if field and spec and (m := _WIDTH.match(spec))]
        if len(template) > 4 * MAX_LENGTH or any(width > MAX_LENGTH for width in widths):
            raise ValueError(f"letter number template {template!r}: numbers of at most {MAX_LENGTH} characters")
        self.template = template
        # The series key is the template with the counter taken out.
        self._series_template = "".join(
            lit + ("" if f is None or f == _SEQ else "{" + f + (":" + s if s else "") + "}")
            for lit, f, s, _ in parsed
        )

        # The longest number it can give (a billion letters in a series, the longest channel).
        widest = self.render(datetime(9998, 12, 31), "front-desk", 999_999_999)
        if len(widest) > MAX_LENGTH:
            raise ValueError(f"letter number template {template!r}: numbers of at most {MAX_LENGTH} characters "
                             f"({widest!r} has {len(widest)})")
        if unsafe := _NOT_IN_A_NUMBER.search(widest):
            raise ValueError(f"letter number template {template!r}: a number may not hold {unsafe.group()!r} "
                             "(it names the letter in subjects, reply addresses and links)")

    def _fields(self, received_at: datetime, channel: str) -> dict[str, str]:
        return {"year": f"{received_at.year:04d}", "month": f"{received_at.month:02d}",
                "day": f"{received_at.day:02d}", "channel": channel}

    def series(self, received_at: datetime, channel: str) -> str:
        return self._series_template.format(**self._fields(received_at, channel))

    def render(self, received_at: datetime, channel: str, seq: int) -> str:
        return self.template.format(seq=seq, **self._fields(received_at, channel))


# PostgreSQL's "deadlock detected" and "could not serialize access": two transactions met,
# neither is wrong, and the one that lost is simply run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def conflict(exc: BaseException) -> bool:
    """Did a transaction lose a deadlock or a serialisation race (retry it), rather than meet a
    database that is away or a row that is wrong?"""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES
