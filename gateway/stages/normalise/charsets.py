"""Turning bytes into text as a careful mail client does.

What each charset label means, and how text declared with it is decoded, is one table
(`CHARSETS`) with the reason for each row. Labels follow the web's Encoding Standard (WHATWG),
which records what real senders mean by them; where a label is routinely put on text in a wider
vendor encoding, the wider decoders are tried next (after UTF-8, which text that is valid UTF-8
practically always is) and their use is reported as a repair.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Charset:
    """What a family of labels means and how text declared with one of them is decoded."""

    labels: tuple[str, ...]  # lower case, '_' written '-'; the first names the family
    exact: tuple[str, ...]  # decoders for text that is what the label says: no defect
    repairs: tuple[str, ...]  # wider decoders tried next, narrowest first: each use is a defect
    reason: str
    # Single-byte charsets decode any bytes, so valid UTF-8 under their label (which text in them
    # practically never is) is taken for the mislabelled UTF-8 it is.
    single_byte: bool = False
    # The CJK double-byte charsets read most UTF-8 CJK text as other characters (合同 as GBK is
    # 鍚堝悓), so valid UTF-8 with a character of three or more bytes (U+0800 up: CJK, kana,
    # Hangul, full-width forms) outranks the label, as browsers' sniffers weigh it. Text really in
    # these charsets is valid UTF-8 of that kind only by a run of improbable byte pairs; short text
    # that is valid UTF-8 of two-byte characters only (陆路 in GBK reads as "½·") keeps the label.
    wide_utf8_outranks: bool = False

    @property
    def name(self) -> str:
        return self.labels[0]

    @property
    def decoders(self) -> tuple[str, ...]:
        return self.exact + self.repairs


# A guess for undeclared 8-bit text: (charset label, where it was declared, e.g. "of part 2").
Guess = tuple[str, str]

_LATIN1_LABELS = ("iso-8859-1", "iso8859-1", "iso88591", "iso-8859-1:1987", "latin1", "latin-1",
                  "l1", "cp819", "ibm819", "iso-ir-100", "csisolatin1", "8859-1")
_ASCII_LABELS = ("us-ascii", "ascii", "ansi-x3.4-1968", "us", "iso646-us", "csascii", "646",
                 "iso-ir-6", "ansi-x3.4-1986", "cp367", "ibm367")

CHARSETS: tuple[Charset, ...] = (
    Charset(_ASCII_LABELS, ("us-ascii",), ("windows-1252",), single_byte=True, reason=(
        "WHATWG: us-ascii means windows-1252; senders put smart quotes, € and … under it")),
    Charset(_LATIN1_LABELS, ("iso-8859-1",), ("windows-1252",), single_byte=True, reason=(
        "WHATWG: iso-8859-1 means windows-1252; its bytes 0x80-0x9F are never the C1 controls "
        "but Windows punctuation (… is 0x85, which would otherwise vanish as whitespace)")),
    Charset(("windows-1252", "cp1252", "x-cp1252", "ms-ansi"), ("windows-1252",), (),
            single_byte=True, reason="Windows Western; the five unassigned bytes are C1 controls"),
    Charset(("iso-8859-9", "iso8859-9", "iso88599", "latin5", "l5", "iso-ir-148", "csisolatin5"),
            ("iso-8859-9",), ("windows-1254",), single_byte=True,
            reason="WHATWG: iso-8859-9 means windows-1254, as with Latin-1"),
    Charset(("gb2312", "euc-cn", "x-euc-cn", "csgb2312", "gb-2312", "gb-2312-80", "gb2312-80",
             "chinese", "iso-ir-58", "csiso58gb231280"), ("gb2312",), ("gbk", "gb18030"),
            wide_utf8_outranks=True, reason=(
        "Chinese mail labelled gb2312 routinely uses GBK characters (镕, 喆) and cp936's €")),
    Charset(("gbk", "x-gbk", "cp936", "ms936", "windows-936"), ("gbk",), ("gb18030",),
            wide_utf8_outranks=True, reason=(
        "GBK as Windows writes it (code page 936, 0x80 is €), which the WHATWG gbk decoder keeps")),
    Charset(("gb18030",), ("gb18030",), (), wide_utf8_outranks=True, reason=(
        "WHATWG gb18030, 0x80 read as € like GBK")),
    Charset(("big5", "x-big5", "csbig5", "cn-big5", "x-x-big5"), ("big5",),
            ("big5-hkscs", "big5-hkscs+cp950"), wide_utf8_outranks=True, reason=(
        "Big5 mail routinely uses Hong Kong (HKSCS: 㗎, 嘅) and Windows (cp950: € at A3E1) "
        "extensions; HKSCS wins where the two disagree, as in the WHATWG big5 decoder")),
    Charset(("cp950", "ms950", "windows-950"), ("cp950",), ("big5-hkscs+cp950",),
            wide_utf8_outranks=True, reason=(
        "Windows Big5; HKSCS characters are its usual companions")),
    Charset(("big5-hkscs", "big5hkscs", "hkscs"), ("big5-hkscs",), ("big5-hkscs+cp950",),
            wide_utf8_outranks=True, reason="Hong Kong Big5; cp950's € and kana fill its gaps"),
    Charset(("shift-jis", "shift_jis", "sjis", "x-sjis", "ms-kanji", "csshiftjis", "windows-31j",
             "cp932", "ms932", "x-ms-cp932"), ("windows-31j",), (),
            wide_utf8_outranks=True, reason=(
        "WHATWG: Shift_JIS means windows-31j (NEC and IBM rows: ①, ㈱, 髙)")),
    Charset(("euc-kr", "cseuckr", "ks-c-5601-1987", "ks-c-5601-1989", "ks-c-5601", "ksc5601",
             "ksc-5601", "korean", "iso-ir-149", "csksc56011987", "cp949", "windows-949",
             "x-windows-949", "uhc"), ("windows-949",), (),
            wide_utf8_outranks=True, reason=(
        "WHATWG: euc-kr means windows-949 (Unified Hangul Code)")),
    Charset(("iso-2022-jp", "csiso2022jp", "iso-2022-jp-ms", "cp50220", "cp50221", "cp50222"),
            ("iso-2022-jp",), (), reason=(
        "JIS with half-width kana and Windows' NEC/IBM rows (code page 50221), see _decode_iso2022jp")),
    Charset(("iso-2022-cn", "csiso2022cn", "iso-2022-cn-ext"), ("iso-2022-cn",), (), reason=(
        "RFC 1922 (Python has no codec): GB 2312 and ISO-IR-165 decoded, see _decode_iso2022cn")),
    Charset(("euc-tw", "euctw", "x-euc-tw", "cseuctw"), ("euc-tw",), (), reason=(
        "CNS 11643 (Python has no codec): decoded by the C library's iconv, see _decode_euctw")),
    Charset(("utf-8", "utf8", "unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8",
             "x-unicode20utf8", "utf8mb4", "utf8mb3"), ("utf-8",), (), reason=(
        "WHATWG utf-8 labels; utf8mb4 and utf8mb3 as MySQL names it, in mail its programs send")),
    Charset(("iso-8859-8-i", "iso-8859-8-e", "csiso88598i", "logical"), ("iso-8859-8",), (),
            reason="Hebrew in logical or visual order: the same bytes"),
    Charset(("iso-8859-6-i", "iso-8859-6-e"), ("iso-8859-6",), (), reason="Arabic, as iso-8859-6"),
    Charset(("unicode-1-1-utf-7", "utf-7", "csunicode11utf7"), ("utf-7",), (), reason="RFC 2152"),
    Charset(("utf-16-le", "utf-16le", "unicode", "ucs-2", "iso-10646-ucs-2", "csunicode", "unicodefeff"),
            ("utf-16-le",), (), reason=(
        "WHATWG: Windows calls UTF-16LE 'Unicode' (code page 1200); UCS-2 is its subset")),
    Charset(("utf-16-be", "utf-16be", "unicodefffe"), ("utf-16-be",), (), reason="WHATWG utf-16be labels"),
)

_BY_LABEL: dict[str, Charset] = {label: entry for entry in CHARSETS for label in entry.labels}
_ISO2022JP = _BY_LABEL["iso-2022-jp"]
_ISO2022CN = _BY_LABEL["iso-2022-cn"]
_EUCTW = _BY_LABEL["euc-tw"]
_UTF8 = _BY_LABEL["utf-8"]
_LATIN_ROWS = (_BY_LABEL["us-ascii"], _BY_LABEL["iso-8859-1"], _BY_LABEL["windows-1252"])
_EIGHT_BIT_RUN = re.compile(rb"[\x80-\xff]+")
# CJK ideographs (and extension A), CJK symbols and punctuation (、。「」), full-width forms (，：！).
_CHINESE_TEXT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")

# Python codecs that are not charsets a sender could mean.
_NOT_MAIL_CHARSETS = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode"}
)

# Windows code pages as carried in TNEF and other Microsoft formats, mapped to mail labels.
_LABEL_BY_CODEPAGE: dict[int, str] = {
    874: "cp874", 932: "cp932", 936: "gbk", 949: "cp949", 950: "big5", 1200: "utf-16-le",
    1201: "utf-16-be", 10000: "mac-roman", 20127: "us-ascii", 20866: "koi8-r", 21866: "koi8-u",
    28603: "iso-8859-13", 28605: "iso-8859-15", 50220: "iso-2022-jp", 50221: "iso-2022-jp",
    50222: "iso-2022-jp", 51932: "euc-jp", 51949: "euc-kr", 52936: "hz-gb-2312",
    54936: "gb18030", 65000: "utf-7", 65001: "utf-8",
    **{28590 + n: f"iso-8859-{n}" for n in range(1, 10)},
}

# A byte-order mark outranks any label (WHATWG "decode"): the sender's software wrote it.
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"))
_FALLBACKS = ("gb18030", "windows-1252")  # after UTF-8 and any guesses; the last decodes anything
# A UTF-8 sequence of three or four bytes (a character from U+0800 up); validity is checked apart.
_WIDE_UTF8 = re.compile(rb"[\xe0-\xf4][\x80-\xbf]{2}")


def charset_for_windows_codepage(codepage: int) -> str:
    """The charset label for a Windows code page number (e.g. 936 -> 'gbk')."""
    return _LABEL_BY_CODEPAGE.get(codepage, f"cp{codepage}")


def _normalised_label(label: str) -> str:
    return label.strip().strip("\"'").lower().replace("_", "-")


@lru_cache(maxsize=512)
def charset_for(label: str) -> Charset | None:
    """The table row for `label`, or a row for a Python codec of that name; None if unknown."""
    normalised = _normalised_label(label)
    if normalised in _BY_LABEL:
        return _BY_LABEL[normalised]
    try:
        codec = codecs.lookup(normalised)
    except (LookupError, ValueError, TypeError):
        return None
    try:
        b"a".decode(codec.name)
    except UnicodeError:
        pass  # a text codec that merely rejects this byte
    except LookupError:
        return None  # a bytes-to-bytes codec such as base64 or zlib
    if codec.name in _NOT_MAIL_CHARSETS:
        return None
    if codec.name in _BY_LABEL:  # another spelling of a label in the table
        return _BY_LABEL[codec.name]
    module = sys.modules.get(getattr(codec.decode, "__module__", None) or "")
    return Charset((codec.name,), (codec.name,), (), reason="Python codec",
                   single_byte=hasattr(module, "decoding_table"))


def resolve_charset(label: str) -> str | None:
    """The name of the charset `label` means (e.g. 'GB_2312-80' -> 'gb2312'), None if unknown."""
    entry = charset_for(label)
    return entry.name if entry else None


# -- decoders -------------------------------------------------------------------------------------

def _single_byte_table(codec: str, *, c1_controls: bool) -> str:
    """A charmap table from `codec`: with C1 controls undefined, or with unassigned bytes as C1."""
    table = []
    for byte in range(256):
        try:
            char = bytes((byte,)).decode(codec)
        except UnicodeDecodeError:
            char = chr(byte)  # WHATWG windows-1252: the unassigned bytes are the C1 controls
        if not c1_controls and 0x80 <= byte <= 0x9F:
            char = "\ufffe"  # undefined: text labelled iso-8859-x never means a C1 control
        table.append(char)
    return "".join(table)


_CHARMAP_TABLES = {
    "iso-8859-1": _single_byte_table("latin-1", c1_controls=False),
    "iso-8859-9": _single_byte_table("iso8859-9", c1_controls=False),
    "windows-1252": _single_byte_table("cp1252", c1_controls=True),
}
_PYTHON_CODECS = {"us-ascii": "ascii", "windows-31j": "cp932", "windows-949": "cp949",
                  "big5-hkscs": "big5hkscs", "windows-1254": "cp1254", "iso-2022-jp": "iso2022_jp_ext"}


def _cp936_euro(exc: UnicodeError, replace: bool) -> tuple[str, int]:
    """cp936's single byte 0x80 (€), which Python's gbk and gb18030 codecs reject."""
    if isinstance(exc, UnicodeDecodeError):
        if exc.object[exc.start] == 0x80:
            return "€", exc.start + 1
        if replace:
            return "\ufffd", exc.end
    raise exc


def _cp950_gaps(exc: UnicodeError, replace: bool) -> tuple[str, int]:
    """cp950's characters where big5hkscs has none (€ at A3E1, a few kana)."""
    if isinstance(exc, UnicodeDecodeError):
        pair = exc.object[exc.start:exc.start + 2]
        try:
            char = pair.decode("cp950") if len(pair) == 2 and pair[0] >= 0x81 else ""
        except UnicodeDecodeError:
            char = ""
        if len(char) == 1:
            return char, exc.start + 2
        if replace:
            return "\ufffd", exc.end
    raise exc


# Registered under names of our own: the codecs call them at each undecodable byte, in one pass.
codecs.register_error("gateway-cp936-euro", lambda exc: _cp936_euro(exc, replace=False))
codecs.register_error("gateway-cp936-euro-replace", lambda exc: _cp936_euro(exc, replace=True))
codecs.register_error("gateway-cp950-gaps", lambda exc: _cp950_gaps(exc, replace=False))
codecs.register_error("gateway-cp950-gaps-replace", lambda exc: _cp950_gaps(exc, replace=True))
_WITH_ERROR_HANDLER = {
    "gbk": ("gbk", "gateway-cp936-euro"),
    "gb18030": ("gb18030", "gateway-cp936-euro"),
    "big5-hkscs+cp950": ("big5hkscs", "gateway-cp950-gaps"),
}


def decode_with(data: bytes, decoder: str, errors: str = "strict") -> str:
    """Decode with one of the table's decoders (or a Python codec); `errors` is strict or replace."""
    if decoder in _CHARMAP_TABLES:
        return codecs.charmap_decode(data, errors, _CHARMAP_TABLES[decoder])[0]
    if decoder == "iso-2022-cn":  # no Python codec: text that fits it whole, as the codecs require
        try:
            text, replaced = _iso2022cn(data)
        except ValueError:
            text, replaced = data.decode("ascii", "replace"), -1
        if replaced == 0 or errors != "strict":
            return text
        raise UnicodeDecodeError(decoder, data, 0, len(data), "not GB 2312 or CNS 11643 text in ISO-2022-CN")
    if decoder == "euc-tw":  # no Python codec, as above
        text, replaced = _euctw(data)
        if replaced == 0 or errors != "strict":
            return text
        raise UnicodeDecodeError(decoder, data, 0, len(data), "not CNS 11643 text in EUC-TW")
    if decoder in _WITH_ERROR_HANDLER:
        codec, handler = _WITH_ERROR_HANDLER[decoder]
        return data.decode(codec, handler if errors == "strict" else f"{handler}-replace")
    return data.decode(_PYTHON_CODECS.get(decoder, decoder), errors)


def _first_fit(data: bytes, decoders: Iterable[str]) -> tuple[str, str] | None:
    for decoder in decoders:
        try:
            return decode_with(data, decoder), decoder
        except UnicodeDecodeError:
            continue
    return None


# -- decoding -------------------------------------------------------------------------------------

def decode_bytes(data: bytes, charset: str | None,
                 guesses: Sequence[Guess] = ()) -> tuple[str, str | None]:
    """Decode `data` declared as `charset`; returns (text, defect or None).

    Never raises. A byte-order mark outranks the label. Text that does not fit the label is
    decoded as UTF-8 if it is valid UTF-8, else with the table's wider decoders; undeclared or
    unknown-charset text as UTF-8, then by `guesses` (charsets the message declares elsewhere),
    then Big5 where it reads better than GBK, gb18030 and windows-1252. Every such repair is the
    returned defect, naming what was declared and used.
    """
    label = (charset or "").strip()
    shown = repr(label[:40])
    for bom, bom_charset in _BOMS:
        if data.startswith(bom):
            return _decode_after_bom(data[len(bom):], bom_charset, label, shown)
    if not label:
        return _decode_undeclared(data, guesses, "8-bit text without charset is not valid utf-8")
    entry = charset_for(label)
    if entry is None:
        return _decode_undeclared(data, guesses, f"unknown charset {shown}", always_report=True)
    if entry is _ISO2022JP:
        return _decode_iso2022jp(data, shown)
    if entry is _ISO2022CN:
        return _decode_iso2022cn(data, shown)
    if entry is _EUCTW:
        return _decode_euctw(data, shown)
    if entry.single_byte and not data.isascii():
        try:
            return data.decode("utf-8"), f"charset {shown} declared, decoded as utf-8"
        except UnicodeDecodeError:
            pass
        if entry in _LATIN_ROWS:
            chinese = _chinese_under_latin_label(data)
            if chinese is not None:
                return chinese[0], f"charset {shown} declared, decoded as {chinese[1]}"
    if entry.wide_utf8_outranks and _WIDE_UTF8.search(data):
        try:
            return data.decode("utf-8"), f"charset {shown} declared, decoded as utf-8"
        except UnicodeDecodeError:
            pass
    fit = _first_fit(data, entry.exact)
    if fit is not None:
        return fit[0], None
    # Valid UTF-8 is strong evidence of a mislabelled part, stronger than a wider decoder's fit:
    # gb18030 decodes most UTF-8 Chinese (会议 as 浼氳), so UTF-8 sent as "gb2312" is tried first.
    # gb18030 validity is weak evidence, so it is only tried when text labelled utf-8 is mostly
    # invalid (GBK sent as "utf-8").
    if entry is not _UTF8:
        try:
            return data.decode("utf-8"), f"charset {shown} declared, decoded as utf-8"
        except UnicodeDecodeError:
            pass
    fit = _first_fit(data, entry.repairs)
    if fit is not None:
        return fit[0], f"charset {shown} declared, decoded as {fit[1]}"
    replaced = decode_with(data, entry.decoders[-1], "replace")
    if entry is _UTF8 and _mostly_invalid(data, replaced):
        try:
            return decode_with(data, "gb18030"), f"charset {shown} declared, decoded as gb18030"
        except UnicodeDecodeError:
            pass
    return replaced, f"invalid bytes for charset {shown}, replaced"


def _chinese_under_latin_label(data: bytes) -> tuple[str, str] | None:
    """Chinese text under a Western label (old Foxmail and Outlook Express set ups send Chinese
    as iso-8859-1) as (text, what it was read as), or None. Western text has its non-ASCII letters
    alone or in pairs between ASCII ones (café, ção); Chinese has them in pairs, side by side. So
    only text whose 8-bit bytes all come in runs of even length, one of them four bytes or more
    (two Chinese characters in a row), that reads as nothing but Chinese characters and full-width
    punctuation is taken for Chinese: Big5 where it reads better (_big5_rather_than_gbk), else GBK.
    A Big5 character's second byte may be an ASCII letter (陳 is B3 AF, 大 A4 6A), so for Big5 the
    pairs are counted, not the runs of 8-bit bytes: two side by side somewhere."""
    big5 = _big5_reading(data)
    # Stricter than for text without any label: every pair in Big5's common rows ("Hélène Ärger"
    # has pairs too, E9 6C and C4 72, but the first is a rare one).
    if (big5 is not None and big5[1] == 0 < big5[2] and _all_chinese(big5[0])
            and any(len(unit) >= 4 and unit[0] >= 0x80 for unit in _BIG5_UNITS.findall(data))):
        return big5[0], _BIG5_USED
    runs = _EIGHT_BIT_RUN.findall(data)
    if any(len(run) % 2 for run in runs) or not any(len(run) >= 4 for run in runs):
        return None
    try:
        gbk = data.decode("gbk")
    except UnicodeDecodeError:
        return None
    return (gbk, "gbk") if _all_chinese(gbk) else None


def _all_chinese(text: str) -> bool:
    return all(_CHINESE_TEXT.fullmatch(char) for char in text if not char.isascii())


def _decode_after_bom(data: bytes, bom_charset: str, label: str,
                      shown: str) -> tuple[str, str | None]:
    declared = resolve_charset(label) if label else None
    agrees = not label or declared == bom_charset or (
        declared == "utf-16" and bom_charset.startswith("utf-16"))
    defect = None if agrees else f"charset {shown} declared, byte-order mark says {bom_charset}"
    try:
        return data.decode(bom_charset), f"{defect}, decoded as {bom_charset}" if defect else None
    except UnicodeDecodeError:
        replaced = f"invalid bytes for {bom_charset}, replaced"
        return data.decode(bom_charset, "replace"), f"{defect}, {replaced}" if defect else replaced


def _mostly_invalid(data: bytes, replaced: str) -> bool:
    eight_bit = len(data) - len(data.translate(None, bytes(range(0x80, 0x100))))
    return replaced.count("\ufffd") * 5 > eight_bit


def _decode_undeclared(data: bytes, guesses: Sequence[Guess], problem: str,
                       always_report: bool = False) -> tuple[str, str | None]:
    """UTF-8, then the guesses, then the fallbacks; `problem` opens the defect."""
    try:
        text = data.decode("utf-8")
        return text, f"{problem}, decoded as utf-8" if always_report else None
    except UnicodeDecodeError:
        pass
    # Multibyte guesses first: a single-byte charset decodes any bytes, right or wrong.
    entries = [(entry, source) for label, source in guesses
               if (entry := charset_for(label)) is not None and entry is not _UTF8]
    ordered = ([pair for pair in entries if not pair[0].single_byte]
               + [pair for pair in entries if pair[0].single_byte])
    for entry, source in ordered:
        if entry in _LATIN_ROWS:
            # A Western charset declared for the message's text says little of its raw 8-bit
            # headers: mailers label an ASCII body us-ascii beside a Chinese name written raw.
            chinese = _chinese_under_latin_label(data)
            if chinese is not None:
                return chinese[0], f"{problem}, decoded as {chinese[1]}"
        fit = _first_fit(data, entry.decoders)
        if fit is not None:
            return fit[0], f"{problem}, decoded as {fit[1]}, the charset {source}"
    big5 = _big5_rather_than_gbk(data)
    if big5 is not None:
        return big5, f"{problem}, decoded as {_BIG5_USED}"
    fit = _first_fit(data, _FALLBACKS)
    assert fit is not None  # windows-1252 decodes any bytes
    return fit[0], f"{problem}, decoded as {fit[1]}"


_BIG5_USED = "big5 (its characters common in Big5, rare in GBK)"
# Text that is valid Big5, in step: runs of ASCII and runs of double-byte pairs.
_BIG5_UNITS = re.compile(rb"[\x00-\x7f]+|(?:[\x81-\xfe][\x40-\x7e\xa1-\xfe])+")
# A double-byte pair as Big5 has it; GBK (and GB18030's two-byte form) accepts every one of them.
_BIG5_PAIR = re.compile(rb"[\x81-\xfe][\x40-\x7e\xa1-\xfe]")


def _big5_rather_than_gbk(data: bytes) -> str | None:
    """Undeclared text that is Big5 rather than GBK, decoded; else None.

    GBK reads almost every Big5 pair as some other character (Big5 陳大文 as 陈, a private-use
    character and a kana), so validity tells nothing. Where their pairs fall does: text written in
    one of them keeps mostly to its common rows (GB 2312's symbols A1-A3 and hanzi B0-F7, with
    trail bytes A1-FE; Big5's symbols and level-1 hanzi, A140-C67E), while the wrong reading puts
    pairs outside them. Big5 is taken only where fewer of its pairs fall outside: a tie keeps GBK,
    whose GB 2312 text puts none outside."""
    reading = _big5_reading(data)
    return reading[0] if reading is not None and reading[1] < reading[2] else None


def _big5_reading(data: bytes) -> tuple[str, int, int] | None:
    """`data` read as Big5, with how many of its pairs fall outside Big5's common rows and outside
    GB 2312's (see _big5_rather_than_gbk); None where it is no Big5 proper."""
    if data.isascii():
        return None
    try:
        text = decode_with(data, "big5-hkscs+cp950")
    except UnicodeDecodeError:
        return None
    rare_in_gbk = rare_in_big5 = 0
    for pair in _BIG5_PAIR.findall(data):  # strict Big5 above: ASCII and these pairs, in step
        lead, trail = pair
        if not 0xA1 <= lead <= 0xF9:
            return None  # outside Big5 proper (Hong Kong or Windows extensions): too weak a reading
        if not ((0xA1 <= lead <= 0xA3 or 0xB0 <= lead <= 0xF7) and trail >= 0xA1):
            rare_in_gbk += 1
        if not (0xA1 <= lead <= 0xC5 or (lead == 0xC6 and trail <= 0x7E)):
            rare_in_big5 += 1
    return text, rare_in_big5, rare_in_gbk


def _decode_iso2022jp(data: bytes, shown: str) -> tuple[str, str | None]:
    # iso2022_jp_ext adds half-width katakana to the standard codec. Windows senders also use
    # the NEC and IBM extension rows (①, ㈱, 髙, ...), which no Python codec accepts; those
    # are decoded the way Windows does (code page 50221), via Shift_JIS.
    try:
        return data.decode("iso2022_jp_ext"), None
    except UnicodeDecodeError:
        pass
    try:
        return _jis_via_cp932(data), None
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        return data.decode("iso2022_jp_2"), None
    except UnicodeDecodeError:
        pass
    if not data.isascii():
        for codec in ("utf-8", "cp932"):
            try:
                return data.decode(codec), f"text is not valid {shown}, decoded as {codec}"
            except UnicodeDecodeError:
                continue
    return data.decode("iso2022_jp_ext", "replace"), f"invalid bytes for charset {shown}, replaced"


# ISO-2022-CN designations (RFC 1922 §3): GB 2312 or ISO-IR-165 (GB 2312 and more) as G1, read as
# GB 2312; CNS 11643 plane 1 as G1, plane 2 as G2, planes 3-7 (ISO-2022-CN-EXT) as G3. A CNS
# character is read as its EUC-TW form (SS2, 0xA0 + plane, the pair with the high bit set).
_GB_DESIGNATIONS = (b"\x1b$)A", b"\x1b$)E")
_CNS_DESIGNATIONS = {b"\x1b$)G": 1, b"\x1b$*H": 2, **{b"\x1b$+" + bytes((final,)): plane
                                                     for plane, final in enumerate(b"IJKLM", 3)}}
_SINGLE_SHIFTS = {b"\x1bN": "G2", b"\x1bO": "G3"}  # SS2, SS3: one CNS character from G2 or G3


def _decode_iso2022cn(data: bytes, shown: str) -> tuple[str, str | None]:
    try:
        text, replaced = _iso2022cn(data)
    except ValueError as exc:  # not ISO-2022-CN at all
        return _decode_undeclared(data, (), f"text is not valid {shown} ({exc})", always_report=True)
    return text, f"{replaced} character(s) of {shown} not in GB 2312 or CNS 11643, replaced" if replaced else None


def _iso2022cn(data: bytes) -> tuple[str, int]:
    """ISO-2022-CN: shifted-out pairs are GB 2312 (its bytes less 0x80) or CNS 11643 plane 1, and
    single-shifted ones CNS 11643 planes 2-7, as designated. Returns the text and how many
    characters could not be read (replaced); raises ValueError on what ISO-2022-CN cannot hold
    (8-bit bytes, other escapes)."""
    out: list[str] = []
    # What each set holds: 0 is GB 2312, 1-7 the planes of CNS 11643, None nothing designated.
    planes: dict[str, int | None] = {"G1": None, "G2": None, "G3": None}
    shifted_out = False
    replaced = 0
    index, end = 0, len(data)
    while index < end:
        byte = data[index]
        if byte == _ESC:
            sequence = bytes(data[index:index + 4])
            if sequence[:3] in (b"\x1b(B", b"\x1b(J"):  # ASCII as G0: not RFC 1922's, but harmless
                index += 3
                continue
            if sequence in _GB_DESIGNATIONS:
                planes["G1"] = 0
                index += 4
                continue
            if sequence in _CNS_DESIGNATIONS:
                plane = _CNS_DESIGNATIONS[sequence]
                planes["G1" if plane == 1 else "G2" if plane == 2 else "G3"] = plane
                index += 4
                continue
            if sequence[:2] in _SINGLE_SHIFTS:
                char = _cns_pair(planes[_SINGLE_SHIFTS[sequence[:2]]], sequence[2:4])
                if char is None:
                    char, replaced = "\ufffd", replaced + 1
                out.append(char)
                index += 4
                continue
            raise ValueError(f"escape sequence {sequence!r}")
        if byte >= 0x80:
            raise ValueError("8-bit bytes")
        if byte in (_SHIFT_OUT, _SHIFT_IN):
            shifted_out = byte == _SHIFT_OUT
        elif byte in (0x0A, 0x0D):
            shifted_out = False  # RFC 1922: a line starts in ASCII
            out.append(chr(byte))
        elif shifted_out and 0x21 <= byte <= 0x7E:
            pair = bytes(data[index:index + 2])
            char = _gb2312_pair(pair) if planes["G1"] == 0 else _cns_pair(planes["G1"], pair)
            if char is None:
                char, replaced = "\ufffd", replaced + 1
            out.append(char)
            index += 2
            continue
        else:
            out.append(chr(byte))
        index += 1
    return "".join(out), replaced


def _gb2312_pair(pair: bytes) -> str | None:
    if len(pair) != 2:
        return None
    try:
        return bytes((pair[0] | 0x80, pair[1] | 0x80)).decode("gb2312")
    except UnicodeDecodeError:
        return None


def _cns_pair(plane: int | None, pair: bytes) -> str | None:
    """A CNS 11643 character of `plane` given as two 7-bit bytes, None where it cannot be read."""
    if not plane or len(pair) != 2 or not all(0x21 <= byte <= 0x7E for byte in pair):
        return None
    return _cns_character(bytes((0x8E, 0xA0 + plane, pair[0] | 0x80, pair[1] | 0x80)))


# EUC-TW: ASCII; CNS 11643 plane 1 as two bytes A1-FE; any plane as SS2 (8E), A1-B0 for planes
# 1-16, and two bytes A1-FE. What fits none of these is one invalid byte.
_EUCTW_UNIT = re.compile(rb"[\x00-\x7f]+|[\xa1-\xfe]{2}|\x8e[\xa1-\xb0][\xa1-\xfe]{2}|.", re.S)


def _decode_euctw(data: bytes, shown: str) -> tuple[str, str | None]:
    text, count = _euctw(data)
    if not count:
        return text, None
    if _iconv(b"a", b"EUC-TW") is None:
        return text, (f"{count} character(s) of {shown} replaced: this system's C library has no EUC-TW "
                      "converter (the original keeps them)")
    return text, f"{count} character(s) of {shown} not in CNS 11643, replaced"


def _euctw(data: bytes) -> tuple[str, int]:
    """EUC-TW as the C library's iconv reads it (CNS 11643 planes 1-7), whole where it can; else
    unit by unit, each character it cannot read replaced. Returns the text and how many were."""
    whole = _iconv(data, b"EUC-TW")
    if whole is not None:
        return whole, 0
    out: list[str] = []
    replaced = 0
    for unit in _EUCTW_UNIT.findall(data):
        if unit[0] < 0x80:
            out.append(unit.decode("ascii"))
            continue
        char = _cns_character(unit)
        if char is None:
            replaced += 1
        out.append(char or "\ufffd")
    return "".join(out), replaced


@lru_cache(maxsize=16384)
def _cns_character(unit: bytes) -> str | None:
    return _iconv(unit, b"EUC-TW") if len(unit) > 1 else None


def _iconv(data: bytes, codec: bytes) -> str | None:
    """`data` converted from `codec` to text by the C library's iconv (glibc's covers charsets
    Python has none for); None where it has no such converter or `data` is not valid in it."""
    libc = _libc()
    if libc is None:
        return None
    handle = libc.iconv_open(b"UTF-8", codec)
    if handle in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        source = ctypes.create_string_buffer(data, len(data))
        target = ctypes.create_string_buffer(4 * len(data) + 16)  # UTF-8: at most 4 bytes a byte
        source_at, source_left = ctypes.c_char_p(ctypes.addressof(source)), ctypes.c_size_t(len(data))
        target_at, target_left = ctypes.c_char_p(ctypes.addressof(target)), ctypes.c_size_t(len(target))
        done = libc.iconv(handle, ctypes.byref(source_at), ctypes.byref(source_left),
                          ctypes.byref(target_at), ctypes.byref(target_left))
        if done == ctypes.c_size_t(-1).value or source_left.value:
            return None
        return target.raw[:len(target) - target_left.value].decode("utf-8")
    finally:
        libc.iconv_close(handle)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.iconv_open.restype = ctypes.c_void_p
        libc.iconv_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.iconv.restype = ctypes.c_size_t
        buffer, left = ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)
        libc.iconv.argtypes = [ctypes.c_void_p, buffer, left, buffer, left]
        libc.iconv_close.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_ASCII, _KANJI, _KANA = 0, 1, 2
_JIS_ESCAPES = {
    b"\x1b(B": _ASCII, b"\x1b(J": _ASCII, b"\x1b(I": _KANA, b"\x1b$@": _KANJI, b"\x1b$B": _KANJI,
}
_SHIFT_OUT, _SHIFT_IN, _ESC = 0x0E, 0x0F, 0x1B


def _jis_via_cp932(data: bytes) -> str:
    """Decode ISO-2022-JP as code page 50221 does; raises ValueError on anything else."""
    sjis = bytearray()
    mode = _ASCII
    shifted_out = False
    index, end = 0, len(data)
    while index < end:
        byte = data[index]
        if byte == _ESC:
            sequence = bytes(data[index:index + 3])
            if sequence not in _JIS_ESCAPES:
                raise ValueError(f"unsupported escape sequence {sequence!r}")
            mode = _JIS_ESCAPES[sequence]
            index += 3
            continue
        if byte in (_SHIFT_OUT, _SHIFT_IN):
            shifted_out = byte == _SHIFT_OUT
            index += 1
            continue
        if byte >= 0x80:
            raise ValueError("8-bit byte in ISO-2022-JP")
        if byte < 0x21 or byte == 0x7F:
            sjis.append(byte)
        elif shifted_out or mode == _KANA:
            if byte > 0x5F:
                raise ValueError("byte outside the half-width katakana range")
            sjis.append(byte + 0x80)
        elif mode == _KANJI:
            if index + 1 >= end or not 0x21 <= data[index + 1] <= 0x7E:
                raise ValueError("truncated JIS X 0208 character")
            sjis += _jis_to_shift_jis(byte, data[index + 1])
            index += 1
        else:
            sjis.append(byte)
        index += 1
    return sjis.decode("cp932")


def _jis_to_shift_jis(first: int, second: int) -> bytes:
    lead = ((first + 1) >> 1) + (0x70 if first <= 0x5E else 0xB0)
    if first & 1:
        trail = second + (0x1F if second < 0x60 else 0x20)
    else:
        trail = second + 0x7E
    return bytes((lead, trail))
