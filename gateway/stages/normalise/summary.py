"""A short content summary for the register: the opening sentences of the letter."""

from __future__ import annotations

import re

from .headers import collapse_whitespace

ELLIPSIS = "…"
# A sentence ends at ASCII . ! ? followed by a space or the end, or at CJK 。！？ (which need no
# space); closing quotes and brackets right after the mark belong to the sentence.
_SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*(?=\s|$)|[。！？][」』”’）)]*""")


def summarise(text: str, limit: int = 300) -> str:
    """The first whole sentences of `text` that fit in `limit` characters, whitespace collapsed.

    When not even the first sentence fits, it is cut and ends with '…'; the result is never
    longer than `limit`.
    """
    if limit <= 0:
        return ""
    # Only the opening matters; collapse a generous prefix unless it is mostly whitespace.
    prefix = text[:8 * limit + 64]
    collapsed = collapse_whitespace(prefix)  # ASCII whitespace only: U+3000 indents are text
    if len(collapsed) <= limit + 1 and len(prefix) < len(text):
        collapsed = collapse_whitespace(text)
    if len(collapsed) <= limit:
        return collapsed
    ends = [match.end() for match in _SENTENCE_END.finditer(collapsed, 0, limit + 1)]
    fitting = [end for end in ends if end <= limit]
    if fitting:
        return collapsed[:fitting[-1]]
    cut = collapsed[:limit - 1]
    last_space = cut.rfind(" ")
    # Prefer a word boundary for spaced scripts; CJK text has none and is cut anywhere.
    if collapsed[limit - 1] != " " and last_space > limit // 2:
        cut = cut[:last_space]
    return cut.rstrip() + ELLIPSIS
