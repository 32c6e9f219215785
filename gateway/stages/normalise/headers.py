"""Header decoding: RFC 2047 encoded words, raw 8-bit values, addresses, dates, message ids."""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime

from .charsets import Guess, decode_bytes, resolve_charset
from .model import Address

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# Control characters are dropped from decoded header text, C1 ones too (U+009B is a terminal's
# CSI, as ESC [ is); tabs and line breaks (NEL among them) become spaces.
# The explicit direction controls (embeddings, overrides, isolates) go too: they reorder what
# follows them, so a display name "\u202emoc.knab@ecivres" reads as a bank's address, and the
# address shown after it is turned round. The marks (LRM, RLM) reorder nothing and stay.
_DIRECTION_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_HEADER_CONTROLS = {code: None for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord(ch): " " for ch in "\t\r\n\x85"} | {ord(ch): None for ch in _DIRECTION_CONTROLS}
_HAS_CONTROL = re.compile(rf"[\x00-\x1f\x7f-\x9f{_DIRECTION_CONTROLS}]")
_DIRECTION_CONTROL = re.compile(f"[{_DIRECTION_CONTROLS}]")
_WHITESPACE = re.compile(r"\s")
# "Name <local@domain>" or "local@domain" with nothing that needs the full RFC 5322 parser.
_ADDR_SPEC = r"[^\s<>\"(),;:\\]+@[^\s<>\"(),;:\\]+"
_SIMPLE_MAILBOX = re.compile(rf"\s*(?:([^<>\"(),;:\\]*?)\s*<({_ADDR_SPEC})>|({_ADDR_SPEC}))\s*")
_NEEDS_FULL_PARSER = re.compile(r"[\"(\\:;]")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
_ZONE_MINUS_ZERO = re.compile(r"-0000\b")
# The year of a date-time as written ("10 Mar 2026 10:00"): the standard library reads any year
# below 100 as two digits, so "0001" would come back as 2001.
_WRITTEN_YEAR = re.compile(r"\b\d{1,2}\s+[A-Za-z]+\s+(\d+)\s")


def unfold(value: str) -> str:
    """Join folded header lines (RFC 5322 §2.2.3); stray line breaks go too."""
    return value.replace("\r", "").replace("\n", "")


def decode_header_value(value: str, guesses: Sequence[Guess] = ()) -> tuple[str, list[str]]:
    """Decode a header value as the stdlib parser stores it (raw 8-bit bytes as surrogates).

    Raw 8-bit text is read as UTF-8, else in the charsets the message declares (`guesses`).
    Returns (text, defects). Adjacent encoded words in the same charset are joined as bytes
    before decoding, so a multibyte character split across two words comes out whole.
    """
    value = unfold(value)
    if value.isascii() and "=?" not in value:
        return _clean_header_text(value), []
    defects: list[str] = []
    pieces: list[str] = []
    run_label: str | None = None
    run_key: str | None = None
    run_bytes = bytearray()

    def flush_run() -> None:
        nonlocal run_label, run_key
        if run_label is not None:
            text, defect = decode_bytes(bytes(run_bytes), run_label)
            pieces.append(text)
            if defect:
                defects.append(defect)
        run_label = run_key = None
        run_bytes.clear()

    position = 0
    after_encoded_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position:match.start()]
        # RFC 2047 §6.2: whitespace between two encoded words is not part of the text.
        if gap and not (after_encoded_word and gap.isspace()):
            flush_run()
            pieces.append(_decode_raw(gap, defects, guesses))
        label = match.group(1).split("*", 1)[0]  # drop an RFC 2231 language suffix
        key = resolve_charset(label) or label.lower()
        if run_key is not None and key != run_key:
            flush_run()
        data, defect = _decode_encoded_text(match.group(2), match.group(3))
        if defect:
            # Raw 8-bit bytes in the word (surrogates) shown as UTF-8, as the address headers give them.
            word = match.group(0).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            defects.append(f"encoded word {word[:60]!r}: {defect}")
        run_label, run_key = label, key
        run_bytes += data
        position = match.end()
        after_encoded_word = True
    flush_run()
    pieces.append(_decode_raw(value[position:], defects, guesses))
    return clean_header_text("".join(pieces), defects), defects


def _decode_encoded_text(encoding: str, text: str) -> tuple[bytes, str | None]:
    # Encoded text is ASCII by definition, but mailers put raw 8-bit bytes in it all the same
    # (surrogates here), or text already decoded from them (address headers): both as UTF-8 bytes.
    raw = text.encode("utf-8", "surrogateescape")
    if encoding in "qQ":
        return binascii.a2b_qp(raw, header=True), None if text.isascii() else "8-bit text inside, kept as it is"
    return lenient_b64decode(raw)


def lenient_b64decode(data: bytes) -> tuple[bytes, str | None]:
    """Base64 that ignores stray characters and missing padding; (bytes, defect or None). Line
    breaks and padding are no defect; any other character dropped is named."""
    alphabet_only = _NOT_BASE64.sub(b"", data)
    problems = []
    stray = len(data) - len(alphabet_only) - sum(data.count(c) for c in (b"=", b"\r", b"\n", b" ", b"\t"))
    if stray > 0:
        problems.append(f"{stray} character(s) that are not base64 dropped")
    if len(alphabet_only) % 4 == 1:
        alphabet_only = alphabet_only[:-1]
        problems.append("truncated base64")
    defect = "; ".join(problems) or None
    padded = alphabet_only + b"=" * (-len(alphabet_only) % 4)
    return binascii.a2b_base64(padded), defect


def _decode_raw(text: str, defects: list[str], guesses: Sequence[Guess]) -> str:
    """Text outside encoded words: ASCII, or raw 8-bit bytes carried as surrogates."""
    if text.isascii():
        return text
    # Surrogates map back to the original bytes; any real non-ASCII characters become UTF-8.
    data = text.encode("utf-8", "surrogateescape")
    decoded, defect = decode_bytes(data, None, guesses)
    if defect:
        defects.append(f"raw {defect}")
    return decoded


def _clean_header_text(text: str) -> str:
    text = text.replace("\t", " ")  # folding leaves tabs in most long headers
    return text.translate(_HEADER_CONTROLS) if _HAS_CONTROL.search(text) else text


def clean_header_text(text: str, defects: list[str]) -> str:
    """Decoded header text (or a file name as given) without controls; direction controls
    removed are named in `defects`, since they change how the text reads."""
    found = sorted(set(_DIRECTION_CONTROL.findall(text)))
    if found:
        names = ", ".join(f"U+{ord(ch):04X}" for ch in found)
        defects.append(f"direction control character(s) {names} removed")
    return _clean_header_text(text)


def collapse_whitespace(text: str) -> str:
    """Runs of ASCII whitespace as one space, none at the ends; other spaces are kept.

    Only ASCII whitespace (and folding, already spaces) is collapsed: U+3000 and no-break spaces in
    Chinese and Japanese names and subjects are written on purpose. Splitting the UTF-8 cuts at
    ASCII whitespace alone (space, tab, CR, LF, FF, VT: the bytes of no other character), in C, four
    times as fast as replacing the runs with a pattern (every letter's summary pays it)."""
    return b" ".join(text.encode("utf-8", "surrogatepass").split()).decode("utf-8", "surrogatepass")


def parse_addresses(raw_values: list[str], header: str,
                    guesses: Sequence[Guess] = ()) -> tuple[list[Address], list[str]]:
    """Addresses from all occurrences of one address header; groups are flattened."""
    addresses: list[Address] = []
    defects: list[str] = []
    for raw in raw_values:
        unfolded = unfold(raw)
        if not unfolded.strip():
            continue
        if not unfolded.isascii():
            # Raw 8-bit bytes are decoded before the address parser sees them: in Big5, GBK or
            # Shift_JIS a character's second byte can be a backslash (許功蓋), which the parser
            # would take as an escape inside a quoted display name.
            raw_defects: list[str] = []
            unfolded = _decode_raw(unfolded, raw_defects, guesses)
            defects.extend(f"header {header}: {d}" for d in raw_defects)
        found: list[Address] = []
        unparseable = False
        try:
            mailboxes = _mailboxes(unfolded)
        except RecursionError:
            # The standard parser reads each nested comment "((((...))))" one level deeper: such a
            # field exhausts the stack. Named, it costs that field, not the letter's whole header.
            defects.append(f"header {header}: unparseable address in "
                           f"{decode_header_value(unfolded, guesses)[0][:200]!r}")
            continue
        for name, addr_spec in mailboxes:
            addr_spec = addr_spec.strip()
            if _is_addr_spec(addr_spec):
                display_name, name_defects = decode_header_value(name, guesses)
                address, address_defects = decode_header_value(addr_spec, guesses)
                found.append(Address(collapse_whitespace(display_name), address))
                defects.extend(f"header {header}: {d}" for d in name_defects + address_defects)
            elif name or addr_spec:
                unparseable = True
        if unparseable:
            shown, _ = decode_header_value(unfolded, guesses)
            problem = "unparseable address in"
            if not found and shown != unfolded:
                # Some mailers encode the whole "Name <address>" as one encoded word.
                found = [Address(collapse_whitespace(name), addr_spec.strip())
                         for name, addr_spec in _mailboxes(shown) if _is_addr_spec(addr_spec.strip())]
                if found:
                    problem = "address hidden in encoded text"
            defects.append(f"header {header}: {problem} {shown[:200]!r}")
        addresses.extend(found)
    return addresses, defects


def _mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs; common simple lists skip the slow full parser."""
    if not _NEEDS_FULL_PARSER.search(value):
        pairs = []
        for entry in value.split(","):
            if not entry.strip():
                continue
            simple = _SIMPLE_MAILBOX.fullmatch(entry)
            if simple is None:
                break
            pairs.append((simple.group(1) or "", simple.group(2) or simple.group(3)))
        else:
            return pairs
    return getaddresses([value])


def _is_addr_spec(candidate: str) -> bool:
    local, at, domain = candidate.rpartition("@")
    return bool(at and local and domain) and not _WHITESPACE.search(candidate)


def parse_date(raw: str | None) -> tuple[datetime | None, str | None]:
    """(timezone-aware date or None, defect or None)."""
    if raw is None or not raw.strip():
        return None, "message: missing Date header"
    value = decode_header_value(raw)[0].strip()
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None, f"header Date: unparseable date {value[:100]!r}"
    if (written := _WRITTEN_YEAR.search(value)) and len(year := written.group(1)) >= 3:
        if len(year) == 3:  # RFC 5322 §4.3: a three-digit year is counted from 1900 (clients of 2000 wrote 100)
            try:
                parsed = parsed.replace(year=1900 + int(year))
            except ValueError:  # 29 February of a year that has none
                return None, f"header Date: unparseable date {value[:100]!r}"
        elif int(year) < 1900:
            return None, f"header Date: the year {year} is not a year of this correspondence in {value[:100]!r}"
    if parsed.tzinfo is not None:
        try:
            parsed.astimezone(UTC)  # kept in UTC: 31 Dec 9999 23:00 -1400 is a moment of the year 10000
        except OverflowError:
            return None, f"header Date: a date beyond the calendar in UTC {value[:100]!r}"
        return parsed, None
    # "-0000" means UTC with the sender's zone unknown (RFC 5322 §3.3); no zone at all is a defect.
    parsed = parsed.replace(tzinfo=UTC)
    if _ZONE_MINUS_ZERO.search(value):
        return parsed, None
    return parsed, f"header Date: no time zone in {value[:100]!r}, assumed UTC"


def message_ids(value: str | None) -> list[str]:
    """Message ids (from a decoded header value) without angle brackets, in order.

    Bare tokens are returned if no brackets were used.
    """
    if value is None:
        return []
    found = _MESSAGE_ID.findall(value)
    return found if found else value.split()
