"""What a normalised message looks like to the rest of the gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Address:
    name: str  # display name, decoded; '' if none
    address: str  # addr-spec as given; '' if unparseable


@dataclass
class Attachment:
    filename: str  # safe to use as a file name; unique within the message; never empty
    original_filename: str  # decoded name as the sender gave it; '' if none
    declared_type: str  # Content-Type the message claims
    detected_type: str  # from the content itself (libmagic over the whole content)
    size: int
    sha256: str  # hex
    origin: str  # 'mime', 'tnef' (from winmail.dat) or 'message/rfc822' (inside an attached message)
    # A large attachment is not held decoded: its content is decoded again from the message
    # each time it is asked for.
    read: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def content(self) -> bytes:
        return self.read()


@dataclass
class Normalised:
    sender: Address | None  # From (first), else Sender, else None
    to: list[Address]
    cc: list[Address]
    reply_to: list[Address]
    subject: str  # decoded, whitespace collapsed; '' if missing
    date: datetime | None  # timezone-aware; None if missing or unparseable
    message_id: str | None  # without angle brackets
    in_reply_to: str | None
    references: list[str]
    body_text: str  # text/plain preferred, else HTML rendered as text
    summary: str
    attachments: list[Attachment]
    defects: list[str]  # human-readable, each naming where it was found
    header_fields: list[tuple[str, str]]  # all top-level headers, decoded, in order
    sender_field: str = ""  # where `sender`'s address was read: "From", "Sender", or "" for none


@dataclass(frozen=True)
class Limits:
    """How much of one message is examined. Whatever lies beyond is named in a defect; it is
    never lost, since the original is kept as it came."""

    max_parts: int = 1000  # MIME parts (attached messages and their parts included) and attachments
    max_depth: int = 40  # how deep parts may nest inside one another
    max_header_fields: int = 500  # fields in the header of the message or of any one part
    max_header_bytes: int = 65536  # one header field, its continuation lines included

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits configured in `[normalise]` (a NormaliseSection, or anything like it)."""
        return cls(max_parts=settings.max_parts, max_depth=settings.max_depth,
                   max_header_fields=settings.max_header_fields, max_header_bytes=settings.max_header_bytes)
