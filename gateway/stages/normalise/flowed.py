"""RFC 3676 format=flowed text, joined back into the paragraphs the sender wrote."""

from __future__ import annotations

import unicodedata

_SIGNATURE_SEPARATOR = "-- "  # never flowed (RFC 3676 §4.3)
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))


def unflow(text: str, delsp: bool) -> str:
    """Join soft line breaks (a line ending in a space) with the next line of the same quote depth.

    With delsp=yes the space marking the break is deleted (RFC 3676 §4.2). Without it the space is
    text, except between two Chinese or Japanese characters: those scripts put no spaces between
    words, so a space there only marks where the sender's program wrapped the line.
    """
    lines: list[str] = []
    # The paragraph being joined, as its pieces (none empty), joined once when it ends: adding each
    # line to one string would copy the paragraph at every line, in time growing with its square.
    paragraph: list[str] | None = None
    paragraph_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:].removeprefix(" ")  # space-stuffing (§4.4)
        if paragraph is not None and depth == paragraph_depth:
            _join(paragraph, content, delsp)
        else:
            if paragraph is not None:  # a soft break before a change of quote depth ends it anyway
                lines.append(_quoted(paragraph_depth, _end_soft_break("".join(paragraph), delsp)))
            paragraph, paragraph_depth = [content] if content else [], depth
        if not content.endswith(" ") or content == _SIGNATURE_SEPARATOR:
            lines.append(_quoted(paragraph_depth, "".join(paragraph)))
            paragraph = None
    if paragraph is not None:
        lines.append(_quoted(paragraph_depth, _end_soft_break("".join(paragraph), delsp)))
    return "\n".join(lines)


def _join(pieces: list[str], after_break: str, delsp: bool) -> None:
    """Adds the line after a soft break to a paragraph's pieces, the last of which ends in the
    break's space: dropped with delsp=yes, or between two characters of an unspaced script."""
    tail = pieces[-1][-2:] if pieces and len(pieces[-1]) >= 2 else "".join(pieces[-2:])[-2:]
    last = tail[-2:-1]
    if delsp or (last and after_break and _unspaced_script(last) and _unspaced_script(after_break[0])):
        if pieces:
            pieces[-1] = pieces[-1][:-1]
            if not pieces[-1]:
                pieces.pop()
    if after_break:
        pieces.append(after_break)


def _end_soft_break(paragraph: str, delsp: bool) -> str:
    return paragraph[:-1] if delsp and paragraph.endswith(" ") else paragraph


def _unspaced_script(char: str) -> bool:
    """A wide character of a script written without spaces between words (not Korean)."""
    code = ord(char)
    if any(low <= code <= high for low, high in _HANGUL_RANGES):
        return False
    return unicodedata.east_asian_width(char) in ("W", "F")


def _quoted(depth: int, content: str) -> str:
    if not depth:
        return content
    return ">" * depth + (" " + content if content else "")
