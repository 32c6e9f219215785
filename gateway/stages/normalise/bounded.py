"""The standard parser, held to the limits of one message.

The parser's work grows with every part, with every header field and, for each line, with the
depth of the part it lies in (each enclosing multipart tries its boundary on it). A hostile
message of 25 MiB can hold hundreds of thousands of parts or fields, or nest deep enough to make
each line cost hundreds of matches, and hold up all intake while it is parsed. So the parser
builds its parts through a factory that counts them: at the part after the last one allowed, or
at a part nested too deep, parsing stops and the tree built so far is what is examined. Header
fields beyond the allowed number are not kept and overlong ones are cut short.
"""

from __future__ import annotations

import re
from email import policy as email_policy
from email.errors import InvalidHeaderDefect
from email.message import Message, _parseparam  # type: ignore[attr-defined]
from email.feedparser import BytesFeedParser
from email.parser import BytesParser
from email.utils import decode_params
from typing import Any

from .model import Limits
from .stream import Stash


class Budget:
    """What one message may cost, shared by the message and any message attached to it that
    has to be parsed on its own (one sent base64-encoded, for instance)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parts = 0
        self.too_many_parts = False
        self.too_deep = False


class _Stop(Exception):
    """Raised inside the parser to end it where a limit was reached."""


# Beyond the allowed number of fields, the first of each of these is still kept: without them
# the structure, the sender or the subject would be lost to a few hundred fields put before them.
_ALWAYS_READ = frozenset({
    "content-type", "content-transfer-encoding", "content-disposition", "mime-version",
    "from", "sender", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
})
# Parameters Python's decode_params raises on, for every parameter of the field: an RFC 2231
# section number (name*0, name*1*, ...) too long for int(), which refuses more than 4300 digits,
# and name* beside numbered sections of the same name, which it cannot put in order.
_OVERLONG_SECTION = re.compile(r"\*[0-9]{10,}\*?$")
_RFC2231_NAME = re.compile(r"^(?P<name>\w+)\*(?:(?P<number>[0-9]+)\*?)?$", re.ASCII)  # as decode_params reads it


class BoundedMessage(Message):
    """A part that keeps at most so many header fields, each of at most so many bytes, and
    knows how deep it lies."""

    limits = Limits()
    depth = 0
    budget: Budget | None = None

    def __init__(self, policy: Any = email_policy.compat32) -> None:
        super().__init__(policy)
        self.fields_dropped = 0  # header fields beyond the limit, not kept
        self.fields_cut = 0  # header fields kept, but cut short
        self._always_read_seen: set[str] = set()

    def set_raw(self, name: str, value: Any) -> None:  # the parser stores each field with this
        key = name.strip().lower()
        if key in _ALWAYS_READ:
            if len(self) >= self.limits.max_header_fields and key in self._always_read_seen:
                self.fields_dropped += 1
                return
            self._always_read_seen.add(key)
        elif len(self) >= self.limits.max_header_fields:
            self.fields_dropped += 1
            return
        if isinstance(value, str) and len(name) + len(value) > self.limits.max_header_bytes:
            value = value[:max(self.limits.max_header_bytes - len(name), 0)]
            self.fields_cut += 1
        super().set_raw(name, value)

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:  # every get_param() reads here
        try:
            return super()._get_params_preserve(failobj, header)  # type: ignore[misc]
        except (ValueError, TypeError):
            pass
        items = [(name.strip(), value.strip())
                 for name, _equals, value in (item.partition("=") for item in _parseparam(self.get(header, "")))]
        numbered = {found["name"] for name, _value in items[1:]
                    if (found := _RFC2231_NAME.match(name)) and found["number"] and len(found["number"]) < 10}
        params = items[:1]  # the first is the value itself
        for name, value in items[1:]:
            found = _RFC2231_NAME.match(name)
            if _OVERLONG_SECTION.search(name):
                self._note_ignored(header, f"{name[:40]}... with a section number too long to read")
            elif found and not found["number"] and found["name"] in numbered:
                self._note_ignored(header, f"{name[:40]} beside numbered sections of the same name")
            else:
                params.append((name, value))
        return decode_params(params)

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type",
                  unquote: bool = True) -> Any:  # get_boundary, get_filename, get_content_charset read here
        value = super().get_param(param, failobj, header, unquote)
        if isinstance(value, tuple) and value[0] and "\x00" in value[0]:
            # An RFC 2231 value (boundary*=, filename*=, charset*=) whose own charset holds a NUL:
            # decoding with it raises ValueError, where the stdlib expects the LookupError of an
            # unknown charset. Read as one without a charset.
            return (None, *value[1:])
        return value

    def get_boundary(self, failobj: Any = None) -> Any:  # the parser splits a multipart with this
        boundary = super().get_boundary(failobj)
        if isinstance(boundary, str) and boundary.startswith('"'):
            # A quoted boundary the stdlib leaves quoted, its parts then never found: followed by a
            # comment (`boundary="b1" (MIME boundary)`, as RFC 2045 allows) or missing its closing
            # quote. No boundary holds a quote (RFC 2046), so the value is what the quotes enclose.
            if '"' not in boundary[1:]:
                detail = "content-type: boundary without its closing quote, read up to the end"
                if not any(str(defect) == detail for defect in self.defects):
                    self.defects.append(InvalidHeaderDefect(detail))
            boundary = boundary[1:].split('"', 1)[0]
        return boundary

    # The stdlib decodes 8-bit text with the charset parameter as it finds it: given in RFC 2231
    # form (charset*=), a tuple, which raises TypeError; with a NUL in it, ValueError. Read as the
    # stdlib reads a charset it does not know. (The generator reads an unsplit multipart here too.)
    def get_payload(self, i: Any = None, decode: bool = False) -> Any:
        stored = getattr(self, "_payload", None)
        if not decode and i is None and isinstance(stored, str) and self.get_content_maintype() == "multipart":
            # A multipart its boundary did not split keeps its 8-bit bytes as they came: decoded as
            # ASCII instead, the generator writing an attached message out again fails on U+FFFD.
            return stored
        try:
            return super().get_payload(i, decode)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            if decode or i is not None or not isinstance(stored, str):
                raise
            return stored.encode("ascii", "surrogateescape").decode("ascii", "replace")

    def _note_ignored(self, header: str, parameter: str) -> None:
        detail = f"{header}: parameter {parameter}, ignored"
        if not any(str(defect) == detail for defect in self.defects):
            self.defects.append(InvalidHeaderDefect(detail))

    def attach(self, payload: Any) -> None:  # the parser attaches each new part to its parent
        if isinstance(payload, BoundedMessage):
            payload.depth = self.depth + 1
            if payload.depth > self.limits.max_depth and self.budget is not None:
                self.budget.too_deep = True
                raise _Stop
        super().attach(payload)


_FEED_BYTES = 8192  # as the standard parser reads: lines are parsed as they come, not all held at once


def parse(raw: bytes, budget: Budget, *, depth: int = 0, stash: Stash | None = None) -> Message:
    """The message as far as the budget reaches; never raises because of a limit. With a
    stash, long runs of base64 lines stay out of the tree (see stream.py)."""
    limits = budget.limits
    made: list[BoundedMessage] = []
    probing = True  # the parser calls the factory once, when it is made, to see how to call it

    def factory(policy: Any = email_policy.compat32) -> BoundedMessage:
        message = BoundedMessage(policy)
        message.limits, message.budget, message.depth = limits, budget, depth
        if probing:
            return message
        if made and budget.parts >= limits.max_parts:
            budget.too_many_parts = True
            raise _Stop
        budget.parts += 1
        made.append(message)
        return message

    parser = BytesFeedParser(_factory=factory, policy=email_policy.compat32)
    probing = False
    try:
        if stash is not None:
            stash.feed(parser, raw)
        else:
            for start in range(0, len(raw), _FEED_BYTES):
                parser.feed(raw[start:start + _FEED_BYTES])
        return parser.close()
    except _Stop:
        # Every part made so far hangs from the first; those still open simply end here.
        return made[0]


def parse_headers(raw: bytes, limits: Limits) -> Message:
    """Only the header of the message, held to the same limits."""

    def factory(policy: Any = email_policy.compat32) -> BoundedMessage:
        message = BoundedMessage(policy)
        message.limits = limits
        return message

    return BytesParser(_class=factory, policy=email_policy.compat32).parsebytes(raw, headersonly=True)
