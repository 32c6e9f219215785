"""HTML rendered as text by inscriptis, in time linear in the length of its lines.

inscriptis keeps the line being written as one string and appends each run of text to it with
`+=` on an attribute, which copies the whole line every time: a paragraph of 3 MB written in many
small runs (text between inline tags) took seconds per megabyte, growing with the square of its
length. Its line is replaced here by one that gathers the runs in a list and joins them when the
line is read, with the same text as the result.
"""

from __future__ import annotations

from html import unescape

import inscriptis.model.canvas
from inscriptis import Inscriptis
from inscriptis.model.canvas.block import Block
from inscriptis.model.canvas.prefix import Prefix
from lxml.etree import ParserError
from lxml.html import HTMLParser, document_fromstring


class LinearBlock(Block):
    """inscriptis's Block with its text held as pieces; only non-empty pieces are kept, so that
    "no pieces" means what an empty string meant there."""

    def __init__(self, idx: int, prefix: Prefix) -> None:
        super().__init__(idx, prefix)
        self._pieces: list[str] = []

    def merge_normal_text(self, text: str) -> None:
        normalized_text = []
        for ch in text:
            if not ch.isspace():
                normalized_text.append(ch)
                self.collapsable_whitespace = False
            elif not self.collapsable_whitespace:
                normalized_text.append(" ")
                self.collapsable_whitespace = True
        if normalized_text:
            if not self._pieces:
                normalized_text.insert(0, self.prefix.first)
            self._append(unescape("".join(normalized_text)))

    def merge_pre_text(self, text: str) -> None:
        self._append(unescape("".join((self.prefix.first, text.replace("\n", "\n" + self.prefix.rest)))))
        self.collapsable_whitespace = False

    def _append(self, text: str) -> None:
        if text:
            self._pieces.append(text)
            self.idx += len(text)

    def is_empty(self) -> bool:
        return len(self.content) == 0

    @property
    def content(self) -> str:
        text = "".join(self._pieces)
        if self.collapsable_whitespace and text.endswith(" "):
            text = text[:-1]
            self.idx -= 1
        self._pieces = [text] if text else []
        return text

    def new_block(self) -> Block:
        self.prefix.consumed = False
        return LinearBlock(idx=self.idx + 1, prefix=self.prefix)


# Every canvas (the document's and each table cell's) starts its first line with the name the
# canvas module imported; each later line comes from new_block(), so all of them are linear.
inscriptis.model.canvas.Block = LinearBlock


def html_to_text(html: str) -> str:
    """HTML rendered as text by inscriptis, from a tree lxml parses without libxml2's limit of
    256 nested elements: with it, everything past that depth is dropped without a word (a letter
    whose text sits inside 300 <div>s would read as its first paragraph). A tree too deep for the
    renderer's recursion raises, and the caller strips the tags instead."""
    if not html:
        return ""
    parser = HTMLParser(huge_tree=True)
    try:
        tree = document_fromstring(html, parser=parser)
    except ParserError:  # as inscriptis does: text without any element
        tree = document_fromstring(f"<pre>{html}</pre>", parser=parser)
    return str(Inscriptis(tree).get_text())
