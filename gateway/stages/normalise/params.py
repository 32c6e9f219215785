"""MIME header parameters (RFC 2045 §5.1, RFC 2231) read from the raw bytes.

The stdlib reads parameters from text it has already decoded and treats a backslash in a quoted
string as an escape. In Big5, GBK and Shift_JIS the second byte of a character can be 0x5C
(許 is B3 5C), so a raw 8-bit name such as "蓋" swallows its closing quote there. This reader
keeps the bytes and takes a backslash right after an 8-bit byte as that second byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_BACKSLASH, _QUOTE, _SEMICOLON, _EQUALS = 0x5C, 0x22, 0x3B, 0x3D
_BLANKS = b" \t\r\n"
# name, name*, name*0, name*0*, name*1, ... (RFC 2231 §3, §4)
# A section number of ten digits or more is no continuation anyone sent (and int() refuses more
# than 4300 digits): such a parameter is not read, as bounded.py does for the parser.
_SECTION = re.compile(r"^(?P<name>[^*]+)(?:\*(?P<number>[0-9]{1,9}))?(?P<encoded>\*)?$")
_OVERLONG_SECTION = re.compile(r"^(?P<name>[^*]+)\*[0-9]{10,}\*?$")


@dataclass(frozen=True)
class ExtendedValue:
    """An RFC 2231 value: the octets after percent-decoding and the charset it names."""

    octets: bytes
    charset: str  # '' if none was given
    missing: tuple[str, ...] = ()  # continuation numbers skipped before the last that came ("1", "3-7")


@dataclass(frozen=True)
class Parameter:
    extended: ExtendedValue | None  # name*=... or continuations name*0...
    plain: bytes | None  # name=... as sent (quotes removed, 8-bit bytes kept)
    ignored: tuple[str, ...] = ()  # forms of it not read, each as the parser's defect words it


def read_parameter(header_value: bytes, wanted: str) -> Parameter:
    """The RFC 2231 and plain forms of parameter `wanted` in one header's raw value."""
    plain: bytes | None = None
    whole: bytes | None = None  # name*=, unnumbered
    sections: dict[int, tuple[bytes, bool]] = {}
    ignored: list[str] = []
    for name, value in _parameters(header_value):
        section = _SECTION.match(name)
        if section is None or section["name"] != wanted:
            overlong = _OVERLONG_SECTION.match(name)
            if overlong and overlong["name"] == wanted:
                ignored.append(f"{name[:40]}... with a section number too long to read")
            continue
        if section["number"] is not None:
            sections.setdefault(int(section["number"]), (value, bool(section["encoded"])))
        elif section["encoded"]:
            whole = value if whole is None else whole
        else:
            plain = value if plain is None else plain
    if not sections and whole is not None:
        sections[0] = (whole, True)
    elif whole is not None:  # beside numbered sections, name*= is not read (as bounded.py does)
        ignored.append(f"{wanted}* beside numbered sections of the same name")
    return Parameter(_joined(sections) if sections else None, plain, tuple(ignored))


def _joined(sections: dict[int, tuple[bytes, bool]]) -> ExtendedValue:
    """Continuations in number order, encoded ones percent-decoded. A number missing between them
    is noted, and those after it are joined all the same (as Python's own decode_params does): the
    last one usually carries the extension."""
    octets = bytearray()
    charset = ""
    missing: list[str] = []
    previous = -1
    for number in sorted(sections):
        if number > previous + 1:
            missing.append(str(number - 1) if number == previous + 2 else f"{previous + 1}-{number - 1}")
        previous = number
        value, encoded = sections[number]
        if encoded:
            if number == 0 and value.count(b"'") >= 2:
                declared, _language, value = value.split(b"'", 2)
                charset = declared.decode("ascii", "replace").strip()
            value = unquote_to_bytes(value)
        octets += value
    return ExtendedValue(bytes(octets), charset, tuple(missing))


def _parameters(data: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, value) for every parameter after the header's main value."""
    found: list[tuple[str, bytes]] = []
    index = _end_of_main_value(data)
    end = len(data)
    while index < end:
        if data[index] == _SEMICOLON or data[index] in _BLANKS:
            index += 1
            continue
        name_end = index
        while name_end < end and data[name_end] not in (_EQUALS, _SEMICOLON):
            name_end += 1
        name = data[index:name_end].strip(_BLANKS).lower().decode("ascii", "replace")
        if name_end >= end or data[name_end] == _SEMICOLON:
            index = name_end  # a name without a value
            continue
        index = name_end + 1
        while index < end and data[index] in _BLANKS:
            index += 1
        if index < end and data[index] == _QUOTE:
            value, index = _quoted_string(data, index + 1)
        else:
            value_end = data.find(b";", index)
            value_end = end if value_end < 0 else value_end
            value, index = data[index:value_end].strip(_BLANKS), value_end
        found.append((name, value))
    return found


def _end_of_main_value(data: bytes) -> int:
    semicolon = data.find(b";")
    return len(data) if semicolon < 0 else semicolon


def _quoted_string(data: bytes, index: int) -> tuple[bytes, int]:
    """The content of a quoted string starting after its opening quote, and the index after it."""
    content = bytearray()
    end = len(data)
    while index < end:
        byte = data[index]
        if byte == _QUOTE:
            return bytes(content), index + 1
        if byte == _BACKSLASH and index + 1 < end and not (index and data[index - 1] >= 0x80):
            content.append(data[index + 1])  # a quoted pair (RFC 5322 §3.2.4)
            index += 2
            continue
        content.append(byte)  # after an 8-bit byte, 0x5C is the second byte of a character
        index += 1
    return bytes(content), end  # no closing quote: the rest is the value
