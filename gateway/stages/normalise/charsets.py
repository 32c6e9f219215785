"""Turning bytes into text with the charset fallbacks that real mail needs."""

from __future__ import annotations

import codecs
from functools import lru_cache

# Mail routinely declares a narrower charset than it actually uses: GBK text labelled gb2312,
# HKSCS text labelled big5, Shift_JIS with Windows extensions labelled shift_jis. Decoding with
# the superset gives the same result for conforming text and the right one for the rest.
_SUPERSET_BY_LABEL: dict[str, str] = {
    **dict.fromkeys(
        ("gb2312", "gbk", "x-gbk", "cp936", "ms936", "windows-936", "euc-cn", "x-euc-cn",
         "csgb2312", "gb-2312-80", "gb2312-80", "chinese", "gb18030"),
        "gb18030",
    ),
    **dict.fromkeys(
        ("big5", "x-big5", "csbig5", "cn-big5", "big5-hkscs", "big5hkscs", "cp950", "ms950",
         "windows-950", "x-x-big5"),
        "big5hkscs",
    ),
    **dict.fromkeys(
        ("shift-jis", "shift_jis", "sjis", "x-sjis", "ms-kanji", "csshiftjis", "windows-31j",
         "cp932", "ms932"),
        "cp932",
    ),
    **dict.fromkeys(
        ("euc-kr", "cseuckr", "ks-c-5601-1987", "ks-c-5601", "ksc5601", "korean", "cp949",
         "windows-949", "x-windows-949"),
        "cp949",
    ),
    **dict.fromkeys(("iso-2022-jp", "csiso2022jp", "iso-2022-jp-ms", "cp50220", "cp50221",
                     "cp50222"), "iso-2022-jp"),
    # Labels Python does not know but whose meaning is clear.
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-8-e": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "iso-8859-6-e": "iso8859_6",
    "unicode-1-1-utf-7": "utf-7",
}

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

_ISO2022JP = "iso-2022-jp"
_BEST_EFFORT_ORDER = ("utf-8", "gb18030", "latin-1")


def charset_for_windows_codepage(codepage: int) -> str:
    """The charset label for a Windows code page number (e.g. 936 -> 'gbk')."""
    return _LABEL_BY_CODEPAGE.get(codepage, f"cp{codepage}")


@lru_cache(maxsize=512)
def resolve_charset(label: str) -> str | None:
    """The Python codec to decode text declared as `label`, or None if it is unknown."""
    normalised = label.strip().strip("\"'").lower().replace("_", "-")
    if normalised in _SUPERSET_BY_LABEL:
        return _SUPERSET_BY_LABEL[normalised]
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
    return codec.name


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """Decode `data` declared as `charset`; returns (text, defect or None).

    Never raises. An unknown charset or bytes that do not fit the declared one are decoded
    best-effort (utf-8, then gb18030, then latin-1) and the defect says what was done.
    """
    label = (charset or "").strip()
    if not label:
        return _decode_undeclared(data)
    shown = repr(label[:40])
    codec = resolve_charset(label)
    if codec is None:
        text, used = _best_effort(data)
        return text, f"unknown charset {shown}, decoded as {used}"
    if codec == _ISO2022JP:
        return _decode_iso2022jp(data, shown)
    try:
        return data.decode(codec), None
    except UnicodeError:
        pass
    if codec == "ascii":
        text, used = _best_effort(data)
        return text, f"charset {shown} declared but 8-bit bytes found, decoded as {used}"
    # Valid UTF-8 is strong evidence of a mislabelled part; gb18030 validity is weak evidence,
    # so it is only tried when text labelled utf-8 is mostly invalid (GBK sent as "utf-8").
    if codec != "utf-8":
        try:
            return data.decode("utf-8"), f"text is not valid {shown}, decoded as utf-8"
        except UnicodeDecodeError:
            pass
    replaced = data.decode(codec, "replace")
    if codec == "utf-8" and _mostly_invalid(data, replaced):
        try:
            return data.decode("gb18030"), f"text is not valid {shown}, decoded as gb18030"
        except UnicodeDecodeError:
            pass
    return replaced, f"invalid bytes for charset {shown}, replaced"


def _mostly_invalid(data: bytes, replaced: str) -> bool:
    eight_bit = len(data) - len(data.translate(None, bytes(range(0x80, 0x100))))
    return replaced.count("\ufffd") * 5 > eight_bit


def _decode_undeclared(data: bytes) -> tuple[str, str | None]:
    if data.isascii():
        return data.decode("ascii"), None
    text, used = _best_effort(data)
    if used == "utf-8":
        return text, None
    return text, f"8-bit text without charset is not valid utf-8, decoded as {used}"


def _best_effort(data: bytes) -> tuple[str, str]:
    for codec in _BEST_EFFORT_ORDER[:-1]:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    return data.decode(_BEST_EFFORT_ORDER[-1]), _BEST_EFFORT_ORDER[-1]


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
