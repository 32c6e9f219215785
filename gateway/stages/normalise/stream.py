"""Large attachments in bounded memory: their base64 lines are never copied into the parse tree.

The standard parser keeps every line of a part as a string, joins them into one and, asked for
the content, encodes that to bytes and decodes it: a 25 MiB message costs several times its size.
So before the parser sees the message, every long run of base64 lines is held out: the parser
gets one short marker line in its place (a random token it cannot meet in the message itself),
and the run stays where it already is, in the raw message. The tree comes out as it would have,
only the payloads that held a run hold a marker instead. A base64 attachment is then decoded in
pieces straight from the raw bytes, hashed and sized as it goes, and decoded again only if
someone asks for its content. Anything unusual about such a payload (a stray character, padding
in the middle, a transfer encoding other than base64) is decoded exactly as before, from the
whole payload put back together.
"""
from __future__ import annotations

import binascii
import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from functools import cached_property
from email.feedparser import BytesFeedParser

import magic

# A run: whole lines of nothing but base64 characters, at least _MIN_RUN bytes of them. No such
# line can be a boundary ("--"), a header field (":"), a continuation (white space) or the blank
# line that ends a header, so to the parser a marker line is what the run was: lines of a body.
_MIN_RUN = 64 * 1024
# From the start of a stretch only (the look-behind): each stretch is scanned once.
_BASE64_STRETCH = re.compile(rb"(?<![A-Za-z0-9+/=\r\n])[A-Za-z0-9+/=\r\n]{%d,}" % _MIN_RUN)
_FEED_BYTES = 8192  # as the standard parser reads: lines are parsed as they come
_PIECE_BYTES = 1 << 20  # how much of a run is decoded at once
_NEWLINES = b"\r\n"


def _magic_bytes_max() -> int:
    """How much of a file libmagic reads to identify it: the prefix kept for `detected_type`."""
    try:
        return int(magic.Magic(mime=True).getparam(magic.MAGIC_PARAM_BYTES_MAX))
    except Exception:  # an older libmagic without the parameter reads 1 MiB
        return 1 << 20


MAGIC_BYTES = _magic_bytes_max()

Piece = str | memoryview


class Stash:
    """The runs held out of one message's parse (and of the messages attached to it that are
    parsed on their own), and how to find them again from a payload that holds their markers."""

    def __init__(self) -> None:
        self._token = secrets.token_hex(8)
        self._runs: list[memoryview] = []

    @cached_property
    def _marker(self) -> re.Pattern[str]:
        # Compiled only for a message that has runs: most have none.
        return re.compile("\x00GW%s\\.(\\d+)\x00" % self._token)

    def feed(self, parser: BytesFeedParser, raw: bytes) -> None:
        """Feed `raw` to the parser, each long run of base64 lines replaced by its marker."""
        view = memoryview(raw)
        position = 0
        for stretch in _BASE64_STRETCH.finditer(raw):
            start, end = stretch.span()
            if start and raw[start - 1] != 0x0A:  # it begins within a line: from the next one
                start = raw.find(b"\n", start, end) + 1
            while start < end and raw[start] in _NEWLINES:  # never the blank line ending a header
                start += 1
            end = raw.rfind(b"\n", start, end) + 1  # whole lines only
            if end - start < _MIN_RUN:
                continue
            ending = 2 if raw[end - 2:end] == b"\r\n" else 1
            _feed(parser, view[position:start])
            # The run's last line ending stays: a boundary after it takes it, as it would have.
            parser.feed(f"\x00GW{self._token}.{len(self._runs)}\x00".encode("ascii"))
            self._runs.append(view[start:end - ending])
            position = end - ending
        _feed(parser, view[position:])

    def holds(self, payload: str) -> bool:
        return bool(self._runs) and self._marker.search(payload) is not None

    def pieces(self, payload: str) -> list[Piece]:
        """The payload as it was: its own text, and the runs its markers stand for."""
        found: list[Piece] = []
        position = 0
        for marker in self._marker.finditer(payload):
            found.append(payload[position:marker.start()])
            found.append(self._runs[int(marker.group(1))])
            position = marker.end()
        found.append(payload[position:])
        return [piece for piece in found if len(piece)]

    def restore(self, payload: str) -> str:
        """The payload put back together (only for what is decoded the ordinary way)."""
        if not self.holds(payload):
            return payload
        return "".join(piece if isinstance(piece, str) else piece.tobytes().decode("ascii")
                       for piece in self.pieces(payload))

    def restore_bytes(self, data: bytes) -> list[bytes | memoryview]:
        """Serialised parts (an attached message written out again) with their runs in place."""
        text = data.decode("ascii", "surrogateescape")
        if not self.holds(text):
            return [data]
        return [piece.encode("ascii", "surrogateescape") if isinstance(piece, str) else piece
                for piece in self.pieces(text)]


def _feed(parser: BytesFeedParser, view: memoryview) -> None:
    for start in range(0, len(view), _FEED_BYTES):
        parser.feed(view[start:start + _FEED_BYTES].tobytes())


class NotStreamable(ValueError):
    """The payload is not plain base64: it is decoded the ordinary way instead."""


class Streamed:
    """Content that is never held whole: its size, SHA-256 and the prefix libmagic reads, found
    in one pass, and the content itself produced again on demand."""

    def __init__(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        # Not a method: what keeps the content readable must not keep the head alive too.
        self.read: Callable[[], bytes] = lambda: b"".join(chunks())
        digest = hashlib.sha256()
        head: list[bytes] = []
        size = kept = 0
        for chunk in chunks():
            digest.update(chunk)
            size += len(chunk)
            if kept < MAGIC_BYTES:
                head.append(chunk[:MAGIC_BYTES - kept])
                kept += len(head[-1])
        self.size = size
        self.sha256 = digest.hexdigest()
        self.head = b"".join(head)


def base64_chunks(pieces: list[Piece]) -> Iterator[bytes]:
    """Decode base64 pieces as the standard library decodes a whole payload that is valid
    base64 (every character of the alphabet, padding only at the very end); raises
    NotStreamable on anything else, which it would decode leniently and with defects."""
    carry = b""
    padded = False
    for piece in pieces:
        if isinstance(piece, str):
            if not piece.isascii():
                raise NotStreamable("8-bit characters")
            piece = memoryview(piece.encode("ascii"))
        for start in range(0, len(piece), _PIECE_BYTES):
            text = carry + piece[start:start + _PIECE_BYTES].tobytes().translate(None, _NEWLINES)
            whole = len(text) - len(text) % 4
            carry = text[whole:]
            if not whole:
                continue
            if padded:
                raise NotStreamable("data after padding")
            try:
                yield binascii.a2b_base64(text[:whole], strict_mode=True)
            except binascii.Error as exc:
                raise NotStreamable(str(exc)) from None
            padded = text[whole - 1:whole] == b"="
    if carry:
        raise NotStreamable("incomplete padding")


def raw_chunks(pieces: list[bytes | memoryview]) -> Iterator[bytes]:
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), _PIECE_BYTES):
            yield view[start:start + _PIECE_BYTES].tobytes()
