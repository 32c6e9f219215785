"""Tests for gateway.stages.normalise: decoding, body selection, attachments, hostile input."""

from __future__ import annotations

import base64
import hashlib
import quopri
import struct
import time
import zlib
from datetime import UTC, datetime, timedelta, timezone
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from gateway.stages.normalise import (
    Address,
    Normalised,
    decode_bytes,
    normalise,
    safe_filename,
    safe_join,
    summarise,
)
from gateway.stages.normalise.headers import decode_header_value, lenient_b64decode

# --- helpers -----------------------------------------------------------------------------------


def b_word(charset: str, data: bytes) -> bytes:
    """One RFC 2047 encoded word, base64."""
    return b"=?" + charset.encode() + b"?B?" + base64.b64encode(data) + b"?="


def message(headers: list[bytes], body: bytes = b"", *, sender: bool = True, date: bool = True) -> bytes:
    """Raw message bytes with CRLF line ends; adds From and Date unless given or turned off."""
    names = {h.split(b":", 1)[0].lower() for h in headers}
    defaults = [b"From: sender@example.org"] if sender and b"from" not in names else []
    if date and b"date" not in names:
        defaults.append(b"Date: Tue, 05 Mar 2024 09:30:00 +0800")
    return b"\r\n".join(defaults + headers) + b"\r\n\r\n" + body


def b64_lines(data: bytes) -> bytes:
    """Base64 in 76-character lines ending in CRLF, as mail carries it."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def mime_part(headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


def multipart(subtype: str, parts: list[bytes], boundary: bytes = b"b0undary") -> tuple[bytes, bytes]:
    """(Content-Type header, body) of a multipart entity."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"
    header = b"Content-Type: multipart/" + subtype.encode() + b'; boundary="' + boundary + b'"'
    return header, body


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\x10\x80\xf0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def pdf_bytes() -> bytes:
    """A minimal valid one-page PDF with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


# A minimal TNEF (winmail.dat) writer: signature, key, then attributes of
# level (1 message, 2 attachment), id (type << 16 | name), length, data, checksum.
TNEF_SIGNATURE = 0x223E9F78
ATT_TNEF_VERSION = 0x00089006
ATT_OEM_CODEPAGE = 0x00069007
ATT_MESSAGE_CLASS = 0x00078008
ATT_BODY = 0x0002800C
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F
ATT_ATTACHMENT = 0x00069005
PT_UNICODE = 0x001F
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_MIME_TAG = 0x370E


def tnef_attribute(level: int, attribute: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BII", level, attribute, len(data)) + data + struct.pack("<H", checksum)


def tnef_unicode_property(prop_id: int, text: str) -> bytes:
    value = text.encode("utf-16-le") + b"\x00\x00"
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("<HHII", PT_UNICODE, prop_id, 1, len(value)) + value + padding


def tnef_stream(codepage: int, body: bytes,
                attachments: list[tuple[bytes, bytes, dict[int, str]]]) -> bytes:
    """attachments: (attAttachTitle bytes in the code page, data, Unicode MAPI properties)."""
    out = struct.pack("<IH", TNEF_SIGNATURE, 0x0001)
    out += tnef_attribute(1, ATT_TNEF_VERSION, struct.pack("<I", 0x00010000))
    out += tnef_attribute(1, ATT_OEM_CODEPAGE, struct.pack("<II", codepage, 0))
    out += tnef_attribute(1, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\x00")
    out += tnef_attribute(1, ATT_BODY, body)
    for title, data, properties in attachments:
        out += tnef_attribute(2, ATT_ATTACH_REND_DATA, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
        out += tnef_attribute(2, ATT_ATTACH_TITLE, title + b"\x00")
        out += tnef_attribute(2, ATT_ATTACH_DATA, data)
        if properties:
            encoded = b"".join(tnef_unicode_property(k, v) for k, v in properties.items())
            out += tnef_attribute(2, ATT_ATTACHMENT, struct.pack("<I", len(properties)) + encoded)
    return out


def defects_mentioning(result: Normalised, *needles: str) -> list[str]:
    return [d for d in result.defects if all(n in d for n in needles)]


# --- charsets ----------------------------------------------------------------------------------


def test_gb2312_label_decodes_gbk_only_characters():
    """Text labelled gb2312 that uses GBK-only characters (镕, 喆) decodes exactly; the repair is named."""
    text = "朱镕基与陶喆"
    with pytest.raises(UnicodeEncodeError):
        text.encode("gb2312")
    for label in ("GBK", "x-gbk", "cp936"):
        assert decode_bytes(text.encode("gbk"), label) == (text, None)
    for label in ("gb2312", "euc-cn"):
        assert decode_bytes(text.encode("gbk"), label) == (
            text, f"charset '{label}' declared, decoded as gbk")


def test_big5_label_decodes_hkscs_characters():
    """Text labelled big5 or cp950 that uses HKSCS-only characters (㗎, 嘅, 嘢) decodes exactly."""
    text = "佢嘅嘢係咁㗎"
    for hkscs_only in "㗎嘅嘢":
        with pytest.raises(UnicodeEncodeError):
            hkscs_only.encode("big5")
        with pytest.raises(UnicodeEncodeError):
            hkscs_only.encode("cp950")
    assert decode_bytes(text.encode("big5hkscs"), "Big5-HKSCS") == (text, None)
    assert decode_bytes(text.encode("big5hkscs"), "big5") == (
        text, "charset 'big5' declared, decoded as big5-hkscs")
    assert decode_bytes(text.encode("big5hkscs"), "cp950") == (
        text, "charset 'cp950' declared, decoded as big5-hkscs+cp950")


def test_unknown_charset_is_decoded_best_effort_with_defect():
    """An unknown charset falls back to utf-8, then gb18030, then windows-1252, naming the charset."""
    assert decode_bytes("你好".encode(), "x-unknown") == (
        "你好", "unknown charset 'x-unknown', decoded as utf-8")
    assert decode_bytes("你好".encode("gb18030"), "utf-9") == (
        "你好", "unknown charset 'utf-9', decoded as gb18030")
    assert decode_bytes(b"caf\xe9 ", "bogus") == (
        "café ", "unknown charset 'bogus', decoded as windows-1252")


def test_bytes_to_bytes_codec_names_are_not_charsets():
    """A charset label naming a Python bytes codec (base64) is treated as unknown."""
    assert decode_bytes(b"abc", "base64") == ("abc", "unknown charset 'base64', decoded as utf-8")


def test_ascii_label_with_8bit_utf8_is_decoded_as_utf8():
    """us-ascii declared but UTF-8 sent: decoded as UTF-8 with a defect."""
    assert decode_bytes("Grüße".encode(), "us-ascii") == (
        "Grüße", "charset 'us-ascii' declared, decoded as utf-8")


def test_gbk_text_labelled_utf8_is_decoded_as_gb18030():
    """GBK text mislabelled utf-8 (almost every byte invalid) is decoded as gb18030."""
    assert decode_bytes("请尽快回复".encode("gbk"), "utf-8") == (
        "请尽快回复", "charset 'utf-8' declared, decoded as gb18030")


def test_utf8_with_one_bad_byte_keeps_utf8_and_replaces():
    """Mostly valid UTF-8 with one stray byte keeps UTF-8 and replaces only that byte."""
    data = "这是一段很长的中文文本。".encode() + b"\xff"
    assert decode_bytes(data, "utf-8") == (
        "这是一段很长的中文文本。\ufffd", "invalid bytes for charset 'utf-8', replaced")


def test_iso2022jp_with_windows_extensions():
    """ISO-2022-JP with NEC row 13 (①, ㈱), IBM extensions (髙) and half-width kana decodes."""
    standard = "会議のお知らせ".encode("iso2022_jp")
    assert decode_bytes(standard, "ISO-2022-JP") == ("会議のお知らせ", None)
    nec_ibm = b"\x1b$B-!-j\x1b(B \x1b$B|b66\x1b(B"  # ①㈱ 髙橋 as Windows (CP50221) writes them
    assert decode_bytes(nec_ibm, "iso-2022-jp") == ("①㈱ 髙橋", None)
    assert decode_bytes(b"\x1b(I1\x1b(B", "iso-2022-jp") == ("ｱ", None)


def test_iso2022cn_reads_gb2312_and_names_what_it_cannot():
    """ISO-2022-CN (RFC 1922): GB 2312 shifted out after ESC $ ) A, a line starting in ASCII again;
    CNS 11643 characters (G1 after ESC $ ) G, or single-shifted from G2, plane 2) read as the C
    library reads them, once replaced and counted; what can be read by neither is replaced and
    counted; what is not ISO-2022-CN at all is read as undeclared text, and said so."""
    gb = b"\x1b$)A\x0e\x56\x50\x4e\x44\x0f ok \x0e\x56\x50\r\nVP"  # shifted out to the line's end only
    assert decode_bytes(gb, "ISO-2022-CN") == ("中文 ok 中\r\nVP", None)
    cns = b"\x1b$)A\x0e\x56\x50\x0f \x1b$*H\x1bN\x21\x21 \x1b$)G\x0e\x44\x21\x7e\x7e\x0f."
    assert decode_bytes(cns, "iso-2022-cn") == (
        "中 乂 一\ufffd.", "1 character(s) of 'iso-2022-cn' not in GB 2312 or CNS 11643, replaced")
    # As glibc's iconv -t ISO-2022-CN-EXT writes traditional text (planes 1 and 2).
    tw = bytes.fromhex("1b2429470e6a577d24444b705021281b242a481b4e212144614723"
                       "0f206f6b0a1b242a481b4e2a250f")
    assert decode_bytes(tw, "iso-2022-cn-ext") == ("臺灣大學：乂丐丟 ok\n峇", None)
    assert decode_bytes("中文".encode(), "iso-2022-cn") == (
        "中文", "text is not valid 'iso-2022-cn' (8-bit bytes), decoded as utf-8")
    # Declared in the message, it is a guess for raw 8-bit text too, tried like any other charset.
    raw = message([b"Subject: =?ISO-2022-CN?B?" + base64.b64encode(b"\x1b$)A\x0e\x56\x50\x4e\x44\x0f") + b"?=",
                   b"To: " + "王五".encode("gbk") + b" <wang@example.org>"], b"x")
    result = normalise(raw)
    assert (result.subject, result.to) == ("中文", [Address("王五", "wang@example.org")])


def test_no_charset_raw_bytes_fall_back_with_defect():
    """Undeclared 8-bit text: UTF-8 silently, otherwise gb18030 with a defect."""
    assert decode_bytes("中文".encode(), None) == ("中文", None)
    assert decode_bytes("中文".encode("gbk"), None) == (
        "中文", "8-bit text without charset is not valid utf-8, decoded as gb18030")


# --- headers -----------------------------------------------------------------------------------


def test_encoded_words_split_inside_a_utf8_character_are_joined():
    """Two base64 words splitting a 3-byte UTF-8 character decode to the whole character."""
    data = "关于合作的函".encode()
    first, second = data[:4], data[4:]  # the cut falls inside 于 (bytes 3..5)
    subject = b"Subject: " + b_word("UTF-8", first) + b"\r\n " + b_word("utf-8", second)
    result = normalise(message([subject], b"x"))
    assert result.subject == "关于合作的函"
    assert result.defects == []


def test_encoded_words_split_inside_a_gbk_character_are_joined():
    """A gb2312-labelled subject split mid-character across words decodes, GBK-only chars too."""
    data = "朱镕基来函".encode("gbk")
    subject = b"Subject: " + b_word("gb2312", data[:3]) + b" " + b_word("GB2312", data[3:])
    assert normalise(message([subject])).subject == "朱镕基来函"


def test_encoded_word_whitespace_rules():
    """Whitespace between encoded words is dropped; between encoded and plain text it is kept."""
    subject = b"Subject: Re: =?utf-8?q?caf=C3=A9?=   =?utf-8?q?_au_lait?= tonight  =?utf-8?b?5Lit?="
    assert normalise(message([subject])).subject == "Re: café au lait tonight 中"


def test_raw_utf8_header_is_decoded():
    """A subject with raw 8-bit UTF-8 (no encoded words) decodes as UTF-8 without defects."""
    result = normalise(message(["Subject: 关于 2024 年度预算的请示".encode()]))
    assert result.subject == "关于 2024 年度预算的请示"
    assert result.defects == []


def test_raw_gbk_header_falls_back_to_gb18030_with_defect():
    """A raw 8-bit subject that is not UTF-8 is decoded as gb18030 and the defect names it."""
    result = normalise(message([b"Subject: " + "投诉：陶喆演唱会".encode("gbk")]))
    assert result.subject == "投诉：陶喆演唱会"
    assert result.defects == [
        "header Subject: raw 8-bit text without charset is not valid utf-8, decoded as gb18030"]


def test_gb2312_subject_with_gbk_only_characters():
    """An encoded-word subject declared gb2312 containing 镕 and 喆 decodes exactly."""
    subject = b"Subject: " + b_word("gb2312", "朱镕基致陶喆".encode("gbk"))
    assert normalise(message([subject])).subject == "朱镕基致陶喆"


def test_big5_subject_with_hkscs_characters():
    """An encoded-word subject declared big5 with HKSCS characters decodes exactly."""
    subject = b"Subject: " + b_word("big5", "查詢：佢嘅嘢㗎".encode("big5hkscs"))
    assert normalise(message([subject])).subject == "查詢：佢嘅嘢㗎"


def test_iso2022jp_subject_and_body():
    """An ISO-2022-JP encoded-word subject and a 7bit ISO-2022-JP body decode to Japanese."""
    subject = b"Subject: " + b_word("ISO-2022-JP", "見積書の送付について".encode("iso2022_jp"))
    body = "お世話になっております。\r\n見積書を添付いたします。\r\n".encode("iso2022_jp")
    raw = message([subject, b"Content-Type: text/plain; charset=ISO-2022-JP",
                   b"Content-Transfer-Encoding: 7bit"], body)
    result = normalise(raw)
    assert result.subject == "見積書の送付について"
    assert result.body_text == "お世話になっております。\n見積書を添付いたします。"
    assert result.defects == []


def test_unknown_charset_in_encoded_word_is_reported_with_header():
    """An encoded word with a bogus charset still yields text and a defect naming header and charset."""
    result = normalise(message([b"Subject: " + b_word("x-unknown", "测试".encode())]))
    assert result.subject == "测试"
    assert result.defects == ["header Subject: unknown charset 'x-unknown', decoded as utf-8"]


def test_addresses_are_decoded_with_groups_and_multiple_headers():
    """Display names decode (encoded words, raw 8-bit); groups flatten; all To headers count."""
    raw = message([
        b"From: " + b_word("gb2312", "张三".encode("gbk")) + b" <zhang.san@example.cn>",
        b"To: \"Li, Si\" <li.si@example.cn>, " + "王五".encode() + b" <wang@example.cn>",
        b"To: Team: a@example.org, =?utf-8?q?B=C3=B6b?= <b@example.org>;",
        b"Cc: undisclosed-recipients:;",
        b"Reply-To: reply@example.cn",
    ])
    result = normalise(raw)
    assert result.sender == Address("张三", "zhang.san@example.cn")
    assert result.to == [
        Address("Li, Si", "li.si@example.cn"),
        Address("王五", "wang@example.cn"),
        Address("", "a@example.org"),
        Address("Böb", "b@example.org"),
    ]
    assert result.cc == []
    assert result.reply_to == [Address("", "reply@example.cn")]
    assert result.defects == []


def test_address_inside_an_encoded_word_is_recovered():
    """A whole "Name <address>" hidden in one encoded word is recovered, with a defect."""
    encoded = b_word("utf-8", "张三 <zhang.san@example.cn>".encode())
    result = normalise(message([b"From: " + encoded]))
    assert result.sender == Address("张三", "zhang.san@example.cn")
    assert result.defects == [
        "header From: address hidden in encoded text '张三 <zhang.san@example.cn>'"]


def test_unquoted_comma_in_display_name_keeps_the_address():
    """An unquoted comma in a display name loses the first word but keeps the address."""
    result = normalise(message([b"To: Doe, John <john.doe@example.org>"]))
    assert result.to == [Address("John", "john.doe@example.org")]
    assert result.defects == ["header To: unparseable address in 'Doe, John <john.doe@example.org>'"]


def test_missing_from_uses_sender_and_records_defect():
    """Without From, the Sender header is used and the missing From is recorded."""
    result = normalise(message([b"Sender: clerk@example.org", b"Subject: x"], sender=False))
    assert result.sender == Address("", "clerk@example.org")
    assert result.defects == ["message: missing From header"]


def test_garbled_from_keeps_text_and_records_defect():
    """A From without a usable address keeps the text as the name and records a defect."""
    result = normalise(message([b"From: Finance Department"]))
    assert result.sender == Address("Finance Department", "")
    assert result.defects == ["header From: unparseable address in 'Finance Department'"]


def test_an_empty_from_is_named_like_a_missing_one():
    """A From field with nothing in it gave a letter without a sender and without a word why."""
    for fields, sender in (([b"From: ", b"Subject: x"], None),
                           ([b"From:\t\r\n ", b"Sender: clerk@example.org"], Address("", "clerk@example.org"))):
        result = normalise(message(fields, sender=False))
        assert (result.sender, result.defects) == (sender, ["header From: empty"])


def test_no_sender_at_all():
    """No From and no Sender gives sender None."""
    result = normalise(message([b"Subject: hello"], b"body", sender=False))
    assert result.sender is None
    assert result.defects == ["message: missing From header"]


def test_date_parsing():
    """Dates are timezone-aware; no zone means UTC with a defect; garbage is None with a defect."""
    result = normalise(message([b"Date: Tue, 05 Mar 2024 09:30:00 +0800"]))
    assert result.date == datetime(2024, 3, 5, 9, 30, tzinfo=timezone(timedelta(hours=8)))
    minus_zero = normalise(message([b"Date: Tue, 05 Mar 2024 09:30:00 -0000"]))
    assert minus_zero.date == datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
    assert minus_zero.defects == []
    no_zone = normalise(message([b"Date: Tue, 05 Mar 2024 09:30:00"]))
    assert no_zone.date == datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
    assert no_zone.defects == [
        "header Date: no time zone in 'Tue, 05 Mar 2024 09:30:00', assumed UTC"]
    garbage = normalise(message([b"Date: the day after tomorrow"]))
    assert garbage.date is None
    assert garbage.defects == ["header Date: unparseable date 'the day after tomorrow'"]
    missing = normalise(message([b"Subject: x"], date=False))
    assert missing.date is None
    assert missing.defects == ["message: missing Date header"]
    # A year as written: four digits are that year (the standard library would read 0001 as 2001);
    # three are counted from 1900, as RFC 5322 §4.3 says (clients of the year 2000 wrote 100).
    for early in (b"Mon, 1 Jan 0001 00:00:00 +0000", b"Sat, 01 Jan 0099 10:00:00 +0800",
                  b"Tue, 10 Mar 1026 10:00:00 +0800"):
        result = normalise(message([b"Date: " + early]))
        assert result.date is None
        year = early.split()[3].decode()
        assert result.defects == [f"header Date: the year {year} is not a year of this correspondence in "
                                  f"{early.decode()!r}"]
    y2k = normalise(message([b"Date: Sat, 01 Jan 100 10:00:00 +0800"]))
    assert y2k.date == datetime(2000, 1, 1, 10, tzinfo=timezone(timedelta(hours=8))) and y2k.defects == []
    two_digits = normalise(message([b"Date: Tue, 05 Mar 24 09:30:00 +0800"]))
    assert two_digits.date == datetime(2024, 3, 5, 9, 30, tzinfo=timezone(timedelta(hours=8)))
    for beyond in (b"Fri, 31 Dec 9999 23:59:59 -1400", b"Fri, 31 Dec 9999 14:00:00 -1000"):
        result = normalise(message([b"Date: " + beyond]))
        assert result.date is None
        assert result.defects == [f"header Date: a date beyond the calendar in UTC {beyond.decode()!r}"]


def test_message_ids_lose_their_brackets():
    """Message-ID, In-Reply-To and References are returned without angle brackets."""
    result = normalise(message([
        b"Message-ID: <abc.123@mail.example.org>",
        b"In-Reply-To: <prev@example.org>",
        b"References: <first@example.org>\r\n <prev@example.org>",
    ]))
    assert result.message_id == "abc.123@mail.example.org"
    assert result.in_reply_to == "prev@example.org"
    assert result.references == ["first@example.org", "prev@example.org"]
    assert normalise(message([])).message_id is None


def test_header_fields_are_decoded_and_in_order():
    """header_fields lists every top-level header in order, unfolded and decoded."""
    raw = (b"Received: from a\r\n\tby b\r\nFrom: sender@example.org\r\n"
           b"Subject: =?utf-8?b?5Lit5paH?=\r\nX-Note: " + "备注".encode() + b"\r\n\r\nbody")
    assert normalise(raw).header_fields == [
        ("Received", "from a by b"),
        ("From", "sender@example.org"),
        ("Subject", "中文"),
        ("X-Note", "备注"),
    ]


# --- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable", "8bit"])
def test_gb2312_body_in_each_transfer_encoding(encoding):
    """A gb2312-labelled body with GBK-only characters decodes in base64, QP and 8bit."""
    text = "尊敬的陶喆先生：\r\n关于朱镕基纪念馆的来函已收悉。\r\n"
    data = text.encode("gbk")
    encoded = {"base64": b64_lines(data), "quoted-printable": quopri.encodestring(data),
               "8bit": data}[encoding]
    raw = message([b"Content-Type: text/plain; charset=gb2312",
                   b"Content-Transfer-Encoding: " + encoding.encode()], encoded)
    result = normalise(raw)
    assert result.body_text == "尊敬的陶喆先生：\n关于朱镕基纪念馆的来函已收悉。"
    assert result.defects == ["message: charset 'gb2312' declared, decoded as gbk"]


def test_big5_body_with_hkscs_characters():
    """A big5-labelled base64 body with HKSCS characters decodes exactly."""
    raw = message([b"Content-Type: text/plain; charset=big5", b"Content-Transfer-Encoding: base64"],
                  b64_lines("你哋嘅報價單幾時有㗎？".encode("big5hkscs")))
    assert normalise(raw).body_text == "你哋嘅報價單幾時有㗎？"


def test_unknown_body_charset_is_reported_with_part_number():
    """A part with a bogus charset is decoded best-effort; the defect names the part."""
    plain = mime_part([b"Content-Type: text/plain; charset=x-foo"], "内容".encode("gbk"))
    header, body = multipart("mixed", [plain])
    result = normalise(message([header], body))
    assert result.body_text == "内容"
    assert result.defects == ["part 1: unknown charset 'x-foo', decoded as gb18030"]


HTML_DOCUMENT = (
    "<html><head><style>p { color: red }</style><script>alert('x')</script></head>"
    "<body><p>您好，</p><p>请见<b>附件</b>。</p><ul><li>第一项</li><li>第二项</li></ul></body></html>"
)


def test_html_only_mail_becomes_readable_text():
    """An HTML-only mail is rendered as text without tags, script or style."""
    raw = message([b"Content-Type: text/html; charset=utf-8"], HTML_DOCUMENT.encode())
    assert normalise(raw).body_text == "您好，\n\n请见附件。\n\n  * 第一项\n  * 第二项"


def test_html_charset_from_meta_tag():
    """An HTML part without a charset parameter uses the charset named in its meta tag."""
    html = '<html><head><meta charset="gb2312"></head><body>陶喆来信</body></html>'
    raw = message([b"Content-Type: text/html"], html.encode("gbk"))
    result = normalise(raw)
    assert result.body_text == "陶喆来信"
    assert result.defects == ["message: charset 'gb2312' declared, decoded as gbk"]


def test_alternative_prefers_plain_text():
    """multipart/alternative with text and HTML yields the plain text."""
    plain = mime_part([b"Content-Type: text/plain; charset=utf-8"], "纯文本版本".encode())
    html = mime_part([b"Content-Type: text/html; charset=utf-8"], "<p>网页版本</p>".encode())
    header, body = multipart("alternative", [plain, html])
    assert normalise(message([header], body)).body_text == "纯文本版本"


def test_alternative_with_empty_plain_uses_html():
    """multipart/alternative whose plain part is blank yields the HTML rendered as text."""
    plain = mime_part([b"Content-Type: text/plain; charset=utf-8"], b"\r\n  \r\n")
    html = mime_part([b"Content-Type: text/html; charset=utf-8"], HTML_DOCUMENT.encode())
    header, body = multipart("alternative", [plain, html])
    assert normalise(message([header], body)).body_text == (
        "您好，\n\n请见附件。\n\n  * 第一项\n  * 第二项")


def test_related_html_with_inline_image():
    """alternative(plain, related(html, image)): plain body, the inline image is an attachment."""
    image = png_bytes()
    plain = mime_part([b"Content-Type: text/plain"], b"See the logo.")
    html = mime_part([b"Content-Type: text/html"], b'<p>See <img src="cid:logo"></p>')
    img = mime_part([b"Content-Type: image/png", b"Content-ID: <logo>",
                     b"Content-Transfer-Encoding: base64"], b64_lines(image))
    related_header, related_body = multipart("related", [html, img], b"inner")
    header, body = multipart("alternative", [plain, mime_part([related_header], related_body)])
    result = normalise(message([header], body))
    assert result.body_text == "See the logo."
    assert [(a.filename, a.detected_type, a.content) for a in result.attachments] == [
        ("attachment-1.png", "image/png", image)]


# --- summary -----------------------------------------------------------------------------------


def test_summary_short_text_is_whole_and_collapsed():
    """Text within the limit is returned whole with whitespace collapsed."""
    assert summarise("  Dear Sir,\n\n  please   find\tattached. ") == "Dear Sir, please find attached."


def test_summary_cuts_at_last_sentence_end_that_fits():
    """A long text is cut after the last whole sentence that fits."""
    text = "First sentence. Second one! Third one is here? " + "x" * 100
    assert summarise(text, limit=50) == "First sentence. Second one! Third one is here?"


def test_summary_cjk_sentence_ends():
    """CJK 。！？ end sentences without a following space."""
    text = "您好！关于合同的问题，请尽快回复。我们将在三日内处理？" + "后续内容" * 20
    assert summarise(text, limit=20) == "您好！关于合同的问题，请尽快回复。"
    assert summarise(text, limit=10) == "您好！"


def test_summary_mid_sentence_cut_adds_ellipsis_within_limit():
    """Without a sentence end in reach, the text is cut at a word boundary and ends with '…'."""
    text = "This sentence goes on and on without ever ending because nobody stops it"
    result = summarise(text, limit=30)
    assert result == "This sentence goes on and on…"
    assert len(result) <= 30
    cjk = summarise("一" * 50, limit=10)
    assert cjk == "一" * 9 + "…"


def test_summary_ignores_dots_inside_numbers():
    """A dot not followed by whitespace (3.5, example.org) does not end a sentence."""
    text = "Version 3.5 of example.org is out now. " + "More text follows here." * 10
    assert summarise(text, limit=45) == "Version 3.5 of example.org is out now."


def test_normalise_fills_summary_from_body():
    """Normalised.summary is the summary of the body text."""
    result = normalise(message([], "请于周五前回复。谢谢！".encode()))
    assert result.summary == "请于周五前回复。谢谢！"


# --- attachments -------------------------------------------------------------------------------


def test_attachment_types_are_detected_from_content():
    """A PNG declared octet-stream is image/png; a PDF declared text/plain is application/pdf."""
    image, pdf = png_bytes(), pdf_bytes()
    outer = MIMEMultipart()
    outer["From"] = "sender@example.org"
    outer["Subject"] = "scans"
    outer.attach(MIMEText("two files attached", "plain", "utf-8"))
    png_part = MIMEApplication(image, "octet-stream")
    png_part.add_header("Content-Disposition", "attachment", filename="scan.dat")
    outer.attach(png_part)
    pdf_part = MIMEApplication(pdf, "octet-stream")
    pdf_part.replace_header("Content-Type", "text/plain")
    pdf_part.add_header("Content-Disposition", "attachment", filename="contract.txt")
    outer.attach(pdf_part)
    result = normalise(outer.as_bytes())
    assert result.body_text == "two files attached"
    assert [(a.filename, a.declared_type, a.detected_type, a.origin) for a in result.attachments] == [
        ("scan.dat", "application/octet-stream", "image/png", "mime"),
        ("contract.txt", "text/plain", "application/pdf", "mime"),
    ]
    assert result.attachments[0].content == image
    assert result.attachments[0].size == len(image)
    assert result.attachments[0].sha256 == hashlib.sha256(image).hexdigest()
    assert result.attachments[1].content == pdf
    assert result.attachments[1].sha256 == hashlib.sha256(pdf).hexdigest()


def test_attachment_names_rfc2231_and_encoded_words():
    """File names in RFC 2231 (gb2312, GBK-only char) and RFC 2047 form decode; duplicates get numbers."""
    name_2231 = "".join(f"%{b:02X}" for b in "陶喆合同.pdf".encode("gbk"))
    first = mime_part([b"Content-Type: application/pdf",
                       b"Content-Disposition: attachment; filename*=gb2312''" + name_2231.encode(),
                       b"Content-Transfer-Encoding: base64"], b64_lines(pdf_bytes()))
    second = mime_part([b'Content-Type: application/pdf; name="'
                        + b_word("utf-8", "陶喆合同.pdf".encode()) + b'"',
                        b"Content-Transfer-Encoding: base64"], b64_lines(pdf_bytes()))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"hi"), first, second])
    result = normalise(message([header], body))
    assert [(a.filename, a.original_filename) for a in result.attachments] == [
        ("陶喆合同.pdf", "陶喆合同.pdf"), ("陶喆合同-2.pdf", "陶喆合同.pdf")]
    assert result.defects == ["part 2 file name: charset 'gb2312' declared, decoded as gbk"]


def test_unnamed_attachment_gets_fallback_name():
    """A nameless non-text part gets a numbered name with an extension from its content."""
    part = mime_part([b"Content-Type: application/octet-stream", b"Content-Transfer-Encoding: base64"],
                     b64_lines(png_bytes()))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"hi"), part])
    result = normalise(message([header], body))
    assert [(a.filename, a.original_filename) for a in result.attachments] == [("attachment-1.png", "")]


def test_nested_message_and_its_attachments_are_listed():
    """An attached message is listed as .eml named by its subject, and its attachments follow."""
    pdf = pdf_bytes()
    inner_pdf = mime_part([b'Content-Type: application/pdf; name="invoice.pdf"',
                           b"Content-Transfer-Encoding: base64"], b64_lines(pdf))
    inner_header, inner_body = multipart(
        "mixed", [mime_part([b"Content-Type: text/plain"], b"inner text"), inner_pdf], b"inner")
    inner = message([b"Subject: " + b_word("utf-8", "发票".encode()), inner_header], inner_body)
    forwarded = mime_part([b"Content-Type: message/rfc822"], inner)
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"outer text"),
                                       forwarded])
    result = normalise(message([b"Subject: Fwd", header], body))
    assert result.body_text == "outer text"
    assert [(a.filename, a.declared_type, a.origin) for a in result.attachments] == [
        ("发票.eml", "message/rfc822", "mime"),
        ("invoice.pdf", "application/pdf", "message/rfc822"),
    ]
    assert result.attachments[0].content == inner
    assert result.attachments[1].content == pdf
    assert result.attachments[1].detected_type == "application/pdf"
    assert result.defects == []


def test_a_message_forwarded_as_an_attachment_alone_gives_the_letter_its_text():
    """A message forwarded as an attachment with no text of the outer message's own (Outlook's
    "forward as attachment", a scanner's or a colleague's mail passed on) gave a letter without
    text, which keyword rules cannot classify and search cannot find: its text is now the
    forwarded message's, the .eml still attached. The first forwarded message with text counts;
    an outer text of its own, even one word, keeps the forwarded text out."""
    alternative_header, alternative_body = multipart("alternative", [
        mime_part([b"Content-Type: text/plain; charset=utf-8"], "关于合同续签的函\r\n请于本周内回复。".encode()),
        mime_part([b"Content-Type: text/html; charset=utf-8"], "<p>关于合同续签的函</p>".encode())], b"alt")
    inner = message([b"Subject: " + b_word("utf-8", "合同续签".encode()), alternative_header], alternative_body)
    empty = message([b"Subject: nothing"], b"")
    header, body = multipart("mixed", [mime_part([b"Content-Type: message/rfc822"], empty),
                                       mime_part([b"Content-Type: message/rfc822"], inner)])
    result = normalise(message([b"Subject: Fwd: two", header], body))
    assert result.body_text == "关于合同续签的函\n请于本周内回复。"
    assert [a.filename for a in result.attachments] == ["nothing.eml", "合同续签.eml"]
    assert result.defects == []
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"FYI"),
                                       mime_part([b"Content-Type: message/rfc822"], inner)])
    assert normalise(message([b"Subject: Fwd", header], body)).body_text == "FYI"


def test_base64_encoded_attached_message_is_decoded():
    """A message/rfc822 part sent base64-encoded (against the RFC) is still expanded."""
    inner = message([b"Subject: inner", b'Content-Type: application/pdf; name="a.pdf"',
                     b"Content-Transfer-Encoding: base64"], b64_lines(pdf_bytes()))
    part = mime_part([b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: base64"],
                     b64_lines(inner))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"x"), part])
    result = normalise(message([header], body))
    assert [(a.filename, a.origin) for a in result.attachments] == [
        ("inner.eml", "mime"), ("a.pdf", "message/rfc822")]
    assert result.attachments[0].content == inner


def test_an_attached_message_labelled_base64_but_sent_as_it_is_is_kept_as_it_is():
    """A forwarded message/rfc822 part labelled base64 but written out as a message (a sender's bug)
    was decoded into noise: the forwarded mail and its attachment were lost from the letter. A
    message opens with a header field, whose ":" base64 never holds: it is taken as it came,
    expanded, and the label named."""
    inner = message([b"Subject: inner", b'Content-Type: application/pdf; name="a.pdf"',
                     b"Content-Transfer-Encoding: base64"], b64_lines(pdf_bytes()))
    part = mime_part([b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: base64"], inner)
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"x"), part])
    result = normalise(message([header], body))
    assert [(a.filename, a.origin) for a in result.attachments] == [
        ("inner.eml", "mime"), ("a.pdf", "message/rfc822")]
    assert result.attachments[0].content == inner
    assert result.attachments[1].content == pdf_bytes()
    assert result.defects == ["part 2: not base64 (a message under Content-Transfer-Encoding base64, its first "
                              "line a header field: content taken as is)"]


def test_tnef_files_get_names_in_the_stream_code_page():
    """winmail.dat is unpacked; a GBK title (code page 936) and a Unicode long name decode exactly."""
    pdf = pdf_bytes()
    stream = tnef_stream(936, "请查收会议纪要。".encode("gbk"), [
        ("会议纪要.txt".encode("gbk"), "纪要内容".encode("gbk"), {}),
        (b"REPORT~1.PDF", pdf, {PR_ATTACH_LONG_FILENAME: "年度报告.pdf",
                                PR_ATTACH_MIME_TAG: "application/pdf"}),
    ])
    tnef_part = mime_part([b'Content-Type: application/ms-tnef; name="winmail.dat"',
                           b"Content-Disposition: attachment; filename=winmail.dat",
                           b"Content-Transfer-Encoding: base64"], b64_lines(stream))
    header, body = multipart("mixed", [tnef_part])
    result = normalise(message([header], body))
    assert [(a.filename, a.origin, a.declared_type, a.content) for a in result.attachments] == [
        ("会议纪要.txt", "tnef", "application/octet-stream", "纪要内容".encode("gbk")),
        ("年度报告.pdf", "tnef", "application/pdf", pdf),
    ]
    assert result.attachments[1].detected_type == "application/pdf"
    assert result.body_text == "请查收会议纪要。"
    assert result.defects == []


def test_tnef_with_forged_property_counts_is_decoded_quickly():
    """Forged MAPI counts (four billion properties or values) are skipped, not looped over."""
    forged_count = struct.pack("<I", 0xFFFFFFFF)
    forged_multi_value = struct.pack("<IHHI", 1, 0x1002, 0x6000, 0xFFFFFFFF)  # multi-valued short
    stream = tnef_stream(1252, b"body", [(b"a.txt", b"data", {})])
    for forged in (forged_count, forged_multi_value):
        stream += tnef_attribute(2, ATT_ATTACHMENT, forged)
    part = mime_part([b"Content-Type: application/ms-tnef", b"Content-Transfer-Encoding: base64"],
                     b64_lines(stream))
    header, body = multipart("mixed", [part])
    started = time.monotonic()
    result = normalise(message([header], body))
    assert time.monotonic() - started < 2
    assert [(a.filename, a.content) for a in result.attachments] == [("a.txt", b"data")]
    assert result.defects == ["part 1: TNEF MAPI property list with impossible counts skipped"]


def test_tnef_without_files_is_listed_itself():
    """A winmail.dat carrying only a body stays listed, and its body becomes the text."""
    stream = tnef_stream(65001, "仅有正文".encode(), [])
    part = mime_part([b"Content-Type: application/ms-tnef; name=winmail.dat",
                      b"Content-Transfer-Encoding: base64"], b64_lines(stream))
    header, body = multipart("mixed", [part])
    result = normalise(message([header], body))
    assert [(a.filename, a.origin, a.content) for a in result.attachments] == [
        ("winmail.dat", "mime", stream)]
    assert result.body_text == "仅有正文"
    assert result.defects == []


def test_a_tnef_stream_cut_short_is_named_and_listed_as_it_came():
    """A winmail.dat cut off inside a file (in transit, or by another system's size limit): the file
    came out short without a word, and the container was not listed. The cut is named, and the
    winmail.dat is listed as it came beside what could be read of its files."""
    pdf = pdf_bytes()
    whole = tnef_stream(1252, b"see the report", [(b"a.txt", b"data", {}), (b"report.pdf", pdf, {})])
    stream = whole[:whole.index(pdf) + len(pdf) // 2]
    part = mime_part([b"Content-Type: application/ms-tnef; name=winmail.dat",
                      b"Content-Transfer-Encoding: base64"], b64_lines(stream))
    header, body = multipart("mixed", [part])
    result = normalise(message([header], body))
    assert [(a.filename, a.origin) for a in result.attachments][:2] == [("winmail.dat", "mime"), ("a.txt", "tnef")]
    assert result.attachments[0].content == stream and result.attachments[1].content == b"data"
    assert result.body_text == "see the report"
    assert "part 1: TNEF stream cut short inside an attribute; the winmail.dat is listed as it came" in result.defects


def test_tnef_body_does_not_replace_a_text_part():
    """When the message has its own text part, the TNEF body is not used."""
    stream = tnef_stream(1252, b"from tnef", [(b"a.txt", b"data", {})])
    tnef_part = mime_part([b"Content-Type: application/vnd.ms-tnef",
                           b"Content-Transfer-Encoding: base64"], b64_lines(stream))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"from mime"),
                                       tnef_part])
    result = normalise(message([header], body))
    assert result.body_text == "from mime"
    assert [a.filename for a in result.attachments] == ["a.txt"]


def test_broken_tnef_is_kept_as_attachment_with_defect():
    """A winmail.dat that is not TNEF stays an attachment and the failure is a defect."""
    part = mime_part([b"Content-Type: application/ms-tnef; name=winmail.dat"], b"not tnef at all")
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"x"), part])
    result = normalise(message([header], body))
    assert [(a.filename, a.content) for a in result.attachments] == [("winmail.dat", b"not tnef at all")]
    assert defects_mentioning(result, "part 2: TNEF could not be decoded")


def test_tnef_title_in_western_code_page():
    """A cp1252 title (code page 1252) with accents decodes exactly."""
    stream = tnef_stream(1252, b"Bonjour", [("Résumé 2024.docx".encode("cp1252"), b"x", {})])
    part = mime_part([b"Content-Type: application/ms-tnef", b"Content-Transfer-Encoding: base64"],
                     b64_lines(stream))
    header, body = multipart("mixed", [part])
    result = normalise(message([header], body))
    assert [a.filename for a in result.attachments] == ["Résumé 2024.docx"]
    assert result.body_text == "Bonjour"


def test_raw_8bit_attachment_name():
    """A file name parameter with raw 8-bit UTF-8 (no encoding) decodes exactly."""
    part = mime_part([b'Content-Type: application/pdf; name="' + "合同.pdf".encode() + b'"',
                      b"Content-Transfer-Encoding: base64"], b64_lines(pdf_bytes()))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"x"), part])
    result = normalise(message([header], body))
    assert [(a.filename, a.original_filename) for a in result.attachments] == [("合同.pdf", "合同.pdf")]
    assert result.defects == []


def test_named_text_part_is_an_attachment():
    """A text/plain part with a file name, or other text types, are attachments, not body."""
    named = mime_part([b"Content-Type: text/plain; name=notes.txt"], b"notes")
    calendar = mime_part([b"Content-Type: text/calendar"], b"BEGIN:VCALENDAR\r\nEND:VCALENDAR")
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"body"), named,
                                       calendar])
    result = normalise(message([header], body))
    assert result.body_text == "body"
    assert [(a.filename, a.declared_type, a.content) for a in result.attachments] == [
        ("notes.txt", "text/plain", b"notes"),
        ("attachment-2.ics", "text/calendar", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR"),
    ]


def test_delivery_status_report_is_kept():
    """A bounce's message/delivery-status part is listed with its fields as content."""
    status = mime_part([b"Content-Type: message/delivery-status"],
                       b"Reporting-MTA: dns; mx.example.org\r\n\r\n"
                       b"Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\n")
    header, body = multipart("report", [mime_part([b"Content-Type: text/plain"], b"bounced"), status])
    result = normalise(message([header], body))
    assert result.body_text == "bounced"
    assert [(a.filename, a.declared_type) for a in result.attachments] == [
        ("message-1.txt", "message/delivery-status")]
    assert result.attachments[0].content == (
        b"Reporting-MTA: dns; mx.example.org\r\n\r\n"
        b"Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\n\r\n")


def test_chain_of_attached_messages():
    """Messages attached inside attached messages are each listed, named by their subjects."""
    inner = message([b"Subject: leaf"], b"x")
    for level in range(3):
        inner = message([b"Subject: level %d" % level, b"Content-Type: message/rfc822"], inner)
    result = normalise(message([b"Subject: top", b"Content-Type: message/rfc822"], inner))
    assert [(a.filename, a.origin) for a in result.attachments] == [
        ("level 2.eml", "mime"), ("level 1.eml", "message/rfc822"),
        ("level 0.eml", "message/rfc822"), ("leaf.eml", "message/rfc822")]
    assert result.attachments[-1].content == message([b"Subject: leaf"], b"x")


def test_attached_message_keeps_its_given_file_name():
    """An attached message with its own file name keeps it instead of the subject."""
    part = mime_part([b"Content-Type: message/rfc822",
                      b"Content-Disposition: attachment; filename=\"original letter.eml\""],
                     message([b"Subject: ignored"], b"x"))
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"see attached"),
                                       part])
    result = normalise(message([header], body))
    assert [(a.filename, a.original_filename) for a in result.attachments] == [
        ("original letter.eml", "original letter.eml")]


def test_attached_message_with_an_unsplit_8bit_multipart_is_listed_with_its_bytes():
    """A forwarded message whose multipart its boundary does not split, with 8-bit text in it: the
    parser keeps the bytes, but writing the message out again failed on them, and the attachment
    went unlisted ('could not be read'). It is listed, its 8-bit bytes as they came."""
    inner = (b"Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"X\"\r\n\r\n"
             b"--Y\r\nContent-Type: text/plain\r\n\r\nGr\xfc\xdfe \xe4\xbd\xa0\r\n--Y--\r\n")
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"see attached"),
                                       mime_part([b"Content-Type: message/rfc822"], inner)])
    result = normalise(message([header], body))
    assert [a.filename for a in result.attachments] == ["inner.eml"]
    assert b"Gr\xfc\xdfe \xe4\xbd\xa0\r\n--Y--" in result.attachments[0].content
    assert not [defect for defect in result.defects if "could not be read" in defect], result.defects


def test_attached_message_without_subject_or_name_is_named_as_a_message():
    """Without a subject or a file name, an attached message is still a message-N.eml that a mail
    program opens, not the message-N.txt libmagic's text/plain for it would make."""
    inner = b"To: liaison@example.org\r\nMessage-ID: <inner@partner.example>\r\n\r\nforwarded text\r\n"
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"see attached"),
                                       mime_part([b"Content-Type: message/rfc822"], inner)])
    result = normalise(message([header], body))
    assert [(a.filename, a.declared_type, a.detected_type) for a in result.attachments] == [
        ("message-1.eml", "message/rfc822", "text/plain")]


# --- file names --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("../../etc/passwd", "passwd"),
    ("/etc/passwd", "passwd"),
    ("C:\\Windows\\x.exe", "x.exe"),
    ("a\x00b.txt", "ab.txt"),
    ("..", "attachment"),
    (".", "attachment"),
    ("", "attachment"),
    ("...hidden", "hidden"),
    ("evil\r\nname.txt", "evilname.txt"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("com1.tar.gz", "_com1.tar.gz"),
    ("com0.txt", "_com0.txt"),
    ("LPT0", "_LPT0"),
    ("COM\u00b9.txt", "_COM\u00b9.txt"),  # Windows counts the superscript digits too
    ("lpt\u00b3.pdf", "_lpt\u00b3.pdf"),
    ("conin$.log", "_conin$.log"),
    ("CONOUT$", "_CONOUT$"),
    ("com10.txt", "com10.txt"),
    ("contract.pdf", "contract.pdf"),
    ("report\u202egpj.exe", "reportgpj.exe"),
    ('what?*<>|".doc', "what______.doc"),
    ("关于合作的函（草案）.docx", "关于合作的函（草案）.docx"),
    ("=?utf-8?b?5ZCI5ZCMLnBkZg==?=", "合同.pdf"),
    ("utf-8''%E5%90%88%E5%90%8C.pdf", "合同.pdf"),
    ("gb2312''%BA%CF%CD%AC.pdf", "合同.pdf"),
])
def test_safe_filename(name, expected):
    """Hostile and encoded names become safe, readable file names."""
    assert safe_filename(name) == expected


def test_safe_filename_fallback_is_used_for_empty_results():
    """The caller's fallback is used when nothing usable is left."""
    assert safe_filename("../", "attachment-3.bin") == "attachment-3.bin"


def test_safe_filename_limits_length_and_keeps_extension():
    """Long names are cut to 200 UTF-8 bytes on a character boundary, keeping the extension."""
    latin = safe_filename("a" * 500 + ".pdf")
    assert latin == "a" * 196 + ".pdf"
    cjk = safe_filename("报" * 100 + ".docx")
    assert cjk == "报" * 65 + ".docx"
    assert len(cjk.encode()) <= 200


def test_safe_join_stays_inside_root(tmp_path):
    """safe_join returns a child of root for plain names and refuses anything escaping it."""
    root = tmp_path.resolve()
    joined = safe_join(root, safe_filename("../../etc/passwd"))
    assert joined == root / "passwd"
    assert joined.parent == root
    assert safe_join(root, "年度报告.pdf").parent == root
    for hostile in ("../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../x", "a\x00b"):
        with pytest.raises(ValueError):
            safe_join(root, hostile)


def test_safe_join_refuses_symlink_escape(tmp_path):
    """A symlink inside root pointing outside it is not followed out of root."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        safe_join(root, "link/file.txt")
    with pytest.raises(ValueError):
        safe_join(root, "link")


def test_every_hostile_name_joins_inside_root(tmp_path):
    """safe_filename output always joins to a direct child of root."""
    root = tmp_path.resolve()
    for name in ("../../etc/passwd", "/etc/passwd", "C:\\Windows\\x.exe", "a\x00b.txt", "..", "",
                 "x" * 1000, "\n\n", "..\\..\\boot.ini", "報告" * 200 + ".pdf"):
        assert safe_join(root, safe_filename(name)).parent == root


# --- malformed input ---------------------------------------------------------------------------


def test_empty_input():
    """Empty bytes give an empty result with defects, not an exception."""
    result = normalise(b"")
    assert (result.sender, result.subject, result.body_text, result.attachments) == (None, "", "", [])
    assert result.defects == ["message: empty", "message: missing From header",
                              "message: missing Date header"]


def test_no_headers_at_all():
    """A message without any header lines keeps its text as body and records defects."""
    result = normalise("这只是一段文字，没有任何邮件头。\r\n".encode())
    assert result.body_text == "这只是一段文字，没有任何邮件头。"
    assert result.defects[0] == "message: no header fields"
    assert "message: missing From header" in result.defects


def test_binary_garbage_never_raises():
    """Random binary input yields a result with defects and text free of control characters."""
    garbage = bytes(range(256)) * 20 + b"\x00\xff" * 1000
    result = normalise(garbage)
    assert result.defects
    assert "\x00" not in result.body_text
    for prefix in (b"From: a@b\r\n\r\n", b"Content-Type: multipart/mixed\r\n\r\n",
                   b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"):
        assert isinstance(normalise(prefix + garbage), Normalised)


def test_terminal_controls_never_reach_the_register():
    """ESC and the C1 controls (U+009B is CSI on its own, as ESC [ is) are dropped from the
    subject, names and text, which commands print to a terminal; NEL is a line break."""
    hostile = "hi \x1b[31m red \x9b31m C1 \x90q\x9c end".encode()
    raw = (b"From: =?utf-8?b?" + base64.b64encode("Ma\x9bllory".encode()) + b"?= <m@attacker.example>\r\n"
           b"To: liaison@example.org\r\nSubject: =?utf-8?b?" + base64.b64encode(hostile) + b"?=\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + hostile + "\x85second line".encode())
    result = normalise(raw)
    assert result.subject == "hi [31m red 31m C1 q end"
    assert result.sender is not None and result.sender.name == "Mallory"
    assert result.body_text == "hi [31m red 31m C1 q end\nsecond line"


def test_missing_closing_boundary():
    """A multipart without its closing boundary keeps parts read so far and records the defect."""
    raw = message([b'Content-Type: multipart/mixed; boundary="zz"'],
                  b"--zz\r\nContent-Type: text/plain\r\n\r\nstill here\r\n--zz\r\n"
                  b"Content-Type: application/pdf; name=a.pdf\r\n\r\n%PDF-1.4 truncated")
    result = normalise(raw)
    assert result.body_text == "still here"
    assert [a.filename for a in result.attachments] == ["a.pdf"]
    assert "message: close boundary not found" in result.defects


def test_multipart_without_boundary_parameter():
    """A multipart with no boundary parameter is read as text and the defect recorded."""
    raw = message([b"Content-Type: multipart/mixed"], b"just some text")
    result = normalise(raw)
    assert result.body_text == "just some text"
    assert "message: no boundary in multipart" in result.defects


def test_bad_base64_body_is_decoded_leniently_with_defect():
    """A base64 body with invalid characters still decodes and records the parser's defect."""
    raw = message([b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: base64"],
                  base64.b64encode("正文".encode()) + b"!!")
    result = normalise(raw)
    assert result.body_text == "正文"
    assert result.defects == ["message: invalid base64 characters"]


def test_unknown_transfer_encoding_is_reported():
    """An unknown Content-Transfer-Encoding is used as is, with a defect."""
    raw = message([b"Content-Transfer-Encoding: x-magic"], b"plain words")
    result = normalise(raw)
    assert result.body_text == "plain words"
    assert result.defects == [
        "message: unknown Content-Transfer-Encoding 'x-magic', content taken as is"]


@pytest.mark.parametrize("content", [b"Please call me back.", b"begin 644 a.txt\r\n%%% damaged\r\nend"])
def test_content_that_is_no_uuencode_is_kept_and_named(content: bytes) -> None:
    """Python's decoder hands content labelled uuencode that it cannot read back as it came, without a
    word: kept so, and named; real uuencode is decoded."""
    raw = message([b"Content-Type: text/plain", b"Content-Transfer-Encoding: x-uuencode"], content)
    result = normalise(raw)
    assert result.body_text == content.decode().replace("\r\n", "\n")
    assert result.defects == ["message: not uuencoded (Content-Transfer-Encoding uuencode, but no uuencoded file "
                              "could be read from it: content taken as is)"]
    raw = message([b"Content-Type: text/plain", b"Content-Transfer-Encoding: x-uuencode"],
                  b"begin 644 a.txt\r\n#86)C\r\n`\r\nend\r\n")
    assert (normalise(raw).body_text, normalise(raw).defects) == ("abc", [])


def test_bad_base64_in_a_part_names_the_part():
    """Decoding defects in a nested part are reported with that part's number."""
    broken = mime_part([b"Content-Type: application/pdf; name=a.pdf",
                        b"Content-Transfer-Encoding: base64"], b"JVBERi0xLjQK*!*")
    header, body = multipart("mixed", [mime_part([b"Content-Type: text/plain"], b"x"), broken])
    result = normalise(message([header], body))
    assert result.attachments[0].content == b"%PDF-1.4\n"
    assert result.defects == ["part 2: invalid base64 characters"]


def test_stack_exhausting_nesting_keeps_headers():
    """Nesting deep enough to exhaust the parser's stack stops at the depth limit, headers kept."""
    part = mime_part([b"Content-Type: text/plain"], b"innermost")
    for level in range(1200):
        header, body = multipart("mixed", [part], b"b%d" % level)
        part = mime_part([header], body)
    result = normalise(message([b"Subject: deep", header], body))
    assert result.subject == "deep"
    assert result.sender == Address("", "sender@example.org")
    assert result.defects[0] == ("message: MIME parts nested more than 40 deep; the part found there and "
                                 "everything after it were not examined (they are in the original)")


def test_deeply_nested_multipart_does_not_raise():
    """Pathological nesting stops at a depth limit with a defect instead of failing."""
    part = mime_part([b"Content-Type: text/plain"], b"innermost")
    for level in range(60):
        header, body = multipart("mixed", [part], b"b%d" % level)
        part = mime_part([header], body)
    result = normalise(message([header], body))
    assert defects_mentioning(result, "nested more than 40 deep")


def test_a_second_from_subject_date_or_message_id_is_named_among_the_defects():
    """The first is read; a second From (a way to show a mail program one sender and a filter
    another) is named with its value, never dropped unseen."""
    raw = (b"From: alice@partner.example\r\nFrom: Mallory <m@evil.example>\r\n"
           b"To: a@example.org\r\nTo: b@example.org\r\n"
           b"Subject: one\r\nSubject: two\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\nDate: garbage\r\n"
           b"Message-ID: <a@partner.example>\r\n\r\nbody\r\n")
    result = normalise(raw)
    assert (result.sender.address if result.sender else None, result.subject) == ("alice@partner.example", "one")
    assert [a.address for a in result.to] == ["a@example.org", "b@example.org"]  # every To is read
    assert result.defects == [
        "message: 2 From header fields; the first was read (also: Mallory <m@evil.example>)",
        "message: 2 Subject header fields; the first was read (also: two)",
        "message: 2 Date header fields; the first was read (also: garbage)"]


def test_a_second_content_type_encoding_or_disposition_is_named_among_the_defects():
    """Which of two Content-Types is read decides whether a filter and a mail program see a text or
    a multipart with a hidden part; which of two dispositions, whether a file is called evil.exe
    or good.pdf. The first is read, as the stdlib does; the others are named, in the message and in
    each part."""
    raw = message([b"Subject: two types", b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8",
                   b'Content-Type: multipart/mixed; boundary="B"', b"Content-Transfer-Encoding: 8bit",
                   b"Content-Transfer-Encoding: base64"],
                  b"--B\r\nContent-Type: text/plain\r\n\r\nhidden\r\n--B--\r\n")
    result = normalise(raw)
    assert result.body_text == "--B\nContent-Type: text/plain\n\nhidden\n--B--"
    assert result.defects == [
        'message: 2 Content-Type header fields; the first was read (also: multipart/mixed; boundary="B")',
        "message: 2 Content-Transfer-Encoding header fields; the first was read (also: base64)"]

    part = (b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=evil.exe\r\n"
            b"Content-Disposition: inline; filename=good.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b64_lines(b"%PDF-1.4"))
    raw = message([b"Subject: two dispositions", b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="B"'],
                  b"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\n" + part + b"--B--\r\n")
    result = normalise(raw)
    assert [a.filename for a in result.attachments] == ["evil.exe"]
    assert result.defects == [
        "part 2: 2 Content-Disposition header fields; the first was read (also: inline; filename=good.pdf)"]


def test_characters_dropped_from_base64_are_named():
    value, defects = decode_header_value("pre =?utf-8?B?@@@@?= post =?utf-8?B?5ZCI5ZCM?=")
    assert value == "pre  post 合同"
    assert defects == ["encoded word '=?utf-8?B?@@@@?=': 4 character(s) that are not base64 dropped"]
    assert lenient_b64decode(b"aGVs\r\nbG8=\r\n") == (b"hello", None)  # line breaks and padding are no defect


def test_invalid_quoted_printable_is_kept_and_named():
    """An "=" that starts no escape is kept as written, as decoders do, and named once among the
    defects with how many there are; valid escapes and soft line breaks are no defect."""
    headers = [b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: quoted-printable"]
    result = normalise(message(headers, b"Total =3D 5 =E4=BD=A0, 50=ZZ off, =\r\nsoft break; padded=  \r\nend=\r\n"))
    assert "Total = 5 你, 50=ZZ off, soft break; padded=  \nend" in result.body_text
    assert result.defects == [
        "message: invalid quoted printable (2 \"=\" starting no escape, kept as written; the first: '=ZZ')"]
    clean = normalise(message(headers, b"Total =3D 5 =E4=BD=A0, soft=\r\nbreak\r\n"))
    assert clean.defects == [] and "Total = 5 你, softbreak" in clean.body_text


def test_an_invitation_is_the_text_only_where_no_text_part_is_there():
    """The event is the letter's text only for a letter that is an invitation and nothing else;
    beside a text part it is an attachment as before. Whatever the .ics holds, nothing raises."""
    events = "".join(f"BEGIN:VEVENT\r\nSUMMARY:Meeting {n}\r\nDTSTART;VALUE=DATE:2026120{n % 9 + 1}\r\n"
                     f"ORGANIZER;CN=\"unclosed:mailto:x@example.org\r\nno colon here\r\nEND:VEVENT\r\n"
                     for n in range(25))
    ics = f"BEGIN:VCALENDAR\r\nMETHOD:CANCEL\r\n{events}END:VCALENDAR\r\n"
    head = ("From: a@partner.example\r\nTo: liaison@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            "Date: Mon, 23 Nov 2026 09:00:00 +0800\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n')
    calendar = f"--B\r\nContent-Type: application/ics; name=invite.ics\r\n\r\n{ics}\r\n"
    alone = normalise((head + calendar + "--B--\r\n").encode())
    texts = alone.body_text.split("\n\n")
    assert texts[:2] == ["Cancelled: Meeting 0\nWhen: 2026-12-01", "Cancelled: Meeting 1\nWhen: 2026-12-02"]
    assert len(texts) == 21 and texts[-1] == "(5 more events in the calendar file)"
    assert [a.filename for a in alone.attachments] == ["invite.ics"] and alone.defects == []
    with_text = normalise((head + "--B\r\nContent-Type: text/plain\r\n\r\nSee the invitation.\r\n"
                           + calendar + "--B--\r\n").encode())
    assert with_text.body_text == "See the invitation."
    assert [a.filename for a in with_text.attachments] == ["invite.ics"]
    forwarded = normalise((head + "--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: fwd\r\n"
                           "Content-Type: text/calendar\r\n\r\n" + ics + "\r\n--B--\r\n").encode())
    assert forwarded.body_text == ""  # an attached message's text is its own, its invitation too
    assert [a.filename for a in forwarded.attachments] == ["fwd.eml", "attachment-2.ics"]


def test_a_from_with_several_addresses_names_those_not_taken_as_the_sender():
    """RFC 5322 allows several authors in one From; the register has one sender. The others were
    dropped without a word (a mail program shows them all); they are named in a defect."""
    result = normalise(message([b"From: Zhang <zhang@partner.example>, =?utf-8?B?5p2O5Zub?= <li@partner.example>,"
                                b"\r\n wang@partner.example"], sender=False))
    assert result.sender == Address("Zhang", "zhang@partner.example")
    assert result.defects == ["header From: 3 addresses; the first is the sender "
                              "(also: li@partner.example, wang@partner.example)"]


@pytest.mark.parametrize("disposition", [b'Content-Disposition: inline; filename="letter.txt"', b""])
def test_an_inline_text_file_that_is_the_only_text_is_the_letters_text(disposition: bytes) -> None:
    """A text part sent inline with a file name (a mail program's "insert file") and no other text
    gave a letter without text; mail clients show it as the letter and list it as a file: so here."""
    letter = "合同已收到，请审阅。\r\nRegards"
    text_part = mime_part([b'Content-Type: text/plain; charset=gbk; name="letter.txt"',
                           b"Content-Transfer-Encoding: base64", *([disposition] if disposition else [])],
                          b64_lines(letter.encode("gbk")))
    scan = mime_part([b"Content-Type: application/pdf", b'Content-Disposition: attachment; filename="scan.pdf"',
                      b"Content-Transfer-Encoding: base64"], b64_lines(b"%PDF-1.4\n%%EOF\n"))
    header, body = multipart("mixed", [text_part, scan])
    result = normalise(message([header], body))
    assert result.body_text == letter.replace("\r\n", "\n")
    assert [(a.filename, a.content) for a in result.attachments] == [
        ("letter.txt", letter.encode("gbk")), ("scan.pdf", b"%PDF-1.4\n%%EOF\n")]
    assert result.defects == []
    # Beside a text of the letter's own, it is a file only.
    own = mime_part([b"Content-Type: text/plain"], b"See the files.")
    header, body = multipart("mixed", [own, text_part, scan])
    assert normalise(message([header], body)).body_text == "See the files."
