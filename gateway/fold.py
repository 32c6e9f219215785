"""Text folded for matching: case folded, and traditional Chinese characters mapped to simplified.

Used by the rules (gateway/stages/classify) and the register's search index (gateway/registry/
search.py) alike, so it stands apart from both. Both sides are folded the same way, so 投訴 finds 投诉 and
"Complaint" finds "COMPLAINT". The character table is OpenCC's (TSCharacters),
applied one character to one character so that positions in the folded text are
positions in the original (what the decision trace quotes).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _t2s() -> dict[int, int]:
    table: dict[int, int] = {}
    text = resources.files("opencc").joinpath("dictionary/TSCharacters.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        traditional, _, simplified = line.partition("\t")
        first = simplified.split(" ")[0]
        if len(traditional) == 1 and len(first) == 1:
            table[ord(traditional)] = ord(first)
    return table


def lower(text: str) -> str:
    """Lower case, always the same length as `text`."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few letters (İ) lower to two characters
        lowered = "".join(c.lower()[:1] for c in text)
    return lowered


@lru_cache(maxsize=1)
def _traditional() -> frozenset[str]:
    return frozenset(chr(traditional) for traditional, simple in _t2s().items() if traditional != simple)


def simplified(text: str) -> str:
    """Traditional Chinese characters mapped to simplified, one for one."""
    # Most text has no traditional character. Mapping looks every character up in a dict
    # (~90 ns each beyond ASCII); telling that there is none to map costs half of that, and
    # nothing for ASCII, which the table does not touch.
    if text.isascii() or _traditional().isdisjoint(text):
        return text
    return text.translate(_t2s())


def fold(text: str) -> str:
    """Lower case, simplified script, and always the same length as `text`."""
    lowered = lower(text)
    return lowered if lowered.isascii() else simplified(lowered)
