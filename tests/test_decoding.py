"""A corpus of real-world-shaped letters, each built from known strings, decoded exactly.

Every case names the decoding trap it sets; the truth (subject, display name, attachment names and
SHA-256, body text, and the repairs reported) is checked by exact equality, by the parser and
through the register on SQLite and PostgreSQL as `gateway letters show --json` prints it.
"""

from __future__ import annotations

import base64
import codecs
import email
import email.message
import email.policy
import hashlib
import quopri
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Gateway
from gateway.stages.normalise import normalise

# --- builders ------------------------------------------------------------------------------------


def b_word(charset: str, text: str, encoding: str | None = None) -> bytes:
    """One RFC 2047 encoded word (base64) of `text` in `encoding` (default: the charset)."""
    data = text.encode(encoding or charset)
    return b"=?" + charset.encode() + b"?B?" + base64.b64encode(data) + b"?="


def letter(headers: list[bytes], body: bytes) -> bytes:
    """A letter to a department address with CRLF line ends; From/Date/To added unless given."""
    names = {h.split(b":", 1)[0].lower() for h in headers}
    defaults = [value for name, value in (
        (b"from", b"From: Sender <sender@partner.example>"),
        (b"to", b"To: liaison@example.org"),
        (b"date", b"Date: Tue, 05 Mar 2024 09:30:00 +0800"),
    ) if name not in names]
    return b"\r\n".join([*defaults, b"MIME-Version: 1.0", *headers]) + b"\r\n\r\n" + body


def part(headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


def mixed(*parts: bytes, subtype: str = "mixed") -> tuple[bytes, bytes]:
    """(Content-Type header, body) of a multipart entity."""
    body = b"".join(b"--BOUNDARY\r\n" + p + b"\r\n" for p in parts) + b"--BOUNDARY--\r\n"
    return b"Content-Type: multipart/" + subtype.encode() + b'; boundary="BOUNDARY"', body


def multipart_letter(headers: list[bytes], *parts: bytes) -> bytes:
    content_type, body = mixed(*parts)
    return letter([*headers, content_type], body)


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def attachment(disposition: bytes, content: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return part([b"Content-Type: " + content_type, b"Content-Disposition: " + disposition,
                 b"Content-Transfer-Encoding: base64"], b64(content))


def text_part(charset: bytes, body: bytes, encoding: bytes = b"base64", extra: bytes = b"") -> bytes:
    payload = {b"base64": b64(body), b"quoted-printable": quopri.encodestring(body)}.get(encoding, body)
    return part([b"Content-Type: text/plain; charset=" + charset + extra,
                 b"Content-Transfer-Encoding: " + encoding], payload)


def percent(text: str, charset: str = "utf-8") -> bytes:
    return "".join(f"%{byte:02X}" for byte in text.encode(charset)).encode()


@dataclass
class Case:
    """A letter and the exact truth it must decode to."""

    raw: bytes
    subject: str
    sender_name: str
    body: str
    attachments: list[tuple[str, bytes]] = field(default_factory=list)  # (name, content)
    defects: list[str] = field(default_factory=list)

    @property
    def attachment_truth(self) -> list[tuple[str, str]]:
        return [(name, hashlib.sha256(content).hexdigest()) for name, content in self.attachments]


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SHEET = b"PK\x03\x04 a spreadsheet, as far as this test cares"
SCAN = b"\x89PNG\r\n\x1a\n not really an image"

# --- the classes of the issue --------------------------------------------------------------------


RAW_8BIT_BIG5 = ("raw 8-bit text without charset is not valid utf-8, decoded as big5, "
                 "the charset declared in the message")


def big5_raw_file_names() -> Case:
    """Raw 8-bit Big5 names (許功蓋: every second byte is 0x5C, one right before the closing
    quote), read in the charset the message declares, not guessed as UTF-8 or GB18030."""
    body = "附件為許功蓋報價單，請查收。"
    raw = multipart_letter(
        [b"From: " + "許先生".encode("big5") + b" <hsu@partner.example>",
         b"Subject: " + b_word("big5", "報價單：許功蓋")],
        text_part(b"big5", body.encode("big5")),
        attachment(b'attachment; filename="' + "許功蓋報價.pdf".encode("big5") + b'"', PDF,
                   b"application/pdf"),
        attachment(b'attachment; filename="' + "功蓋".encode("big5") + b'"', SCAN),
    )
    return Case(raw, "報價單：許功蓋", "許先生", body, [("許功蓋報價.pdf", PDF), ("功蓋", SCAN)], [
        f"header From: {RAW_8BIT_BIG5}", f"part 2 file name: {RAW_8BIT_BIG5}",
        f"part 3 file name: {RAW_8BIT_BIG5}"])


def rfc2231_over_plain() -> Case:
    """filename="????.xlsx" beside filename*= (webmail): the RFC 2231 value wins, in
    Content-Disposition and Content-Type alike, continuations included."""
    raw = multipart_letter(
        [b"Subject: budget"],
        text_part(b"utf-8", "见附件。".encode()),
        attachment(b'attachment; filename="????.xlsx"; filename*=UTF-8\'\'' + percent("预算表.xlsx"),
                   SHEET),
        part([b'Content-Type: application/pdf; name="=?utf-8?B?5bm05bqm5oql5ZGKLnBkZg==?="; '
              b"name*0*=utf-8''" + percent("年度") + b"; name*1*=" + percent("报告.pdf"),
              b"Content-Transfer-Encoding: base64"], b64(PDF)),
    )
    return Case(raw, "budget", "Sender", "见附件。", [("预算表.xlsx", SHEET), ("年度报告.pdf", PDF)], [
        "part 2 file name: filename='????.xlsx' and filename*='预算表.xlsx' differ, filename* used"])


def rfc2231_continuation_gap() -> Case:
    """filename*0*, *1*, *3 with *2 lost on the way: the sections that came are joined in order
    (the last carries the extension), the gap named; not the name cut at the gap."""
    raw = multipart_letter(
        [b"Subject: minutes"],
        text_part(b"utf-8", "纪要见附件。".encode()),
        attachment(b"attachment; filename*0*=utf-8''" + percent("会议") + b"; filename*1*=" + percent("纪要")
                   + b"; filename*3=.pdf", PDF, b"application/pdf"),
    )
    return Case(raw, "minutes", "Sender", "纪要见附件。", [("会议纪要.pdf", PDF)], [
        "part 2 file name: filename* continuation(s) 2 missing, the others joined"])


def eight_bit_inside_encoded_words() -> Case:
    """Raw UTF-8 bytes inside Q encoded words (RFC 2047 allows none, some mailers send them): the
    display name and subject read as the bytes say, each named once; they cost the letter its
    sender, recipients and date before."""
    raw = letter([b"From: =?utf-8?q?Caf\xc3\xa9_Lyon?= <cafe@partner.example>",
                  b"Subject: =?utf-8?q?Men\xc3\xbc_f\xc3\xbcr_Montag?=", b"Content-Type: text/plain; charset=utf-8"],
                 "Guten Tag.".encode())
    inside = "8-bit text inside, kept as it is"
    return Case(raw, "Menü für Montag", "Café Lyon", "Guten Tag.", [], [
        f"header From: encoded word '=?utf-8?q?Café_Lyon?=': {inside}",
        f"header Subject: encoded word '=?utf-8?q?Menü_für_Montag?=': {inside}"])


def rfc2231_charset_parameters() -> Case:
    """charset*= (RFC 2231 form) on an 8-bit attachment, a charset*= whose own charset holds a NUL
    on an 8-bit text, and a plain charset holding a NUL on an 8-bit attachment: Python's parser
    raises reading each (a tuple where it expects a name; a NUL in a codec name), which lost the
    attachment, or the text."""
    binary = b"\x89PNG\x1a\xff\xfe\x00\x80 8-bit content"
    raw = multipart_letter(
        [b"Subject: charsets"],
        part([b"Content-Type: text/plain; charset*=utf%00-8''gb2312", b"Content-Transfer-Encoding: 8bit"],
             "请查收附件。".encode("gb2312")),
        part([b"Content-Type: application/octet-stream; charset*=utf-8''utf-8",
              b"Content-Disposition: attachment; filename=data.bin", b"Content-Transfer-Encoding: 8bit"], binary),
        part([b'Content-Type: application/octet-stream; charset="utf\x00-8"',
              b"Content-Disposition: attachment; filename=more.bin", b"Content-Transfer-Encoding: 8bit"], binary),
    )
    return Case(raw, "charsets", "Sender", "请查收附件。", [("data.bin", binary), ("more.bin", binary)])


def iso2022cn(text: str) -> bytes:
    """GB 2312 text in ISO-2022-CN (RFC 1922): designated on each line that needs it, shifted out
    for Chinese, shifted in for ASCII."""
    lines = []
    for line in text.split("\n"):
        out, designated, shifted = b"", False, False
        for char in line:
            if char.isascii():
                out += (b"\x0f" if shifted else b"") + char.encode()
                shifted = False
                continue
            out += (b"" if designated else b"\x1b$)A") + (b"" if shifted else b"\x0e")
            out += bytes(byte & 0x7F for byte in char.encode("gb2312"))
            designated = shifted = True
        lines.append(out + (b"\x0f" if shifted else b""))
    return b"\r\n".join(lines)


def iso2022cn_subject_and_body() -> Case:
    """ISO-2022-CN, which Python has no codec for: subject and body were an unknown charset read as
    ASCII, escape sequences and all ("$)AVPND")."""
    raw = letter([b"Subject: =?ISO-2022-CN?B?" + base64.b64encode(iso2022cn("关于 2024 年会议的通知")) + b"?=",
                  b"Content-Type: text/plain; charset=ISO-2022-CN", b"Content-Transfer-Encoding: 7bit"],
                 iso2022cn("各部门：\n请于周一上午 9 时准时参加。"))
    return Case(raw, "关于 2024 年会议的通知", "Sender", "各部门：\n请于周一上午 9 时准时参加。")


FLOWED_DELSP = (
    "各位同事：\r\n"
    "关于下周一的会议安 \r\n排如下，请准时出 \r\n席。\r\n"
    "The meeting  \r\nstarts at nine.\r\n"
    "> 原文第一 \r\n> 行内容\r\n"
)


def flowed_delsp_yes() -> Case:
    """format=flowed; delsp=yes: the space before each soft break is deleted, lines joined."""
    raw = letter([b"Subject: flowed", b'Content-Type: text/plain; charset="utf-8"; format=flowed; delsp=yes',
                  b"Content-Transfer-Encoding: 8bit"], FLOWED_DELSP.encode())
    return Case(raw, "flowed", "Sender", "各位同事：\n关于下周一的会议安排如下，请准时出席。\n"
                "The meeting starts at nine.\n> 原文第一行内容")


FLOWED = (
    "请于本周五前 \r\n提交报告。\r\n"
    "Please send the \r\nreport by Friday.\r\n"
    "회의는 \r\n월요일입니다.\r\n"
    " From here on, stuffed.\r\n"
    "-- \r\n张三\r\n"
)


def flowed_without_delsp() -> Case:
    """format=flowed without delsp: the space stays in spaced scripts (English, Korean) and goes
    between Chinese characters; space-stuffing and the signature separator are respected."""
    raw = letter([b"Subject: flowed", b"Content-Type: text/plain; charset=gb18030; format=flowed",
                  b"Content-Transfer-Encoding: base64"], b64(FLOWED.encode("gb18030")))
    return Case(raw, "flowed", "Sender", "请于本周五前提交报告。\nPlease send the report by Friday.\n"
                "회의는 월요일입니다.\nFrom here on, stuffed.\n-- \n张三")


def windows_1252_under_latin1_labels() -> Case:
    """iso-8859-1 and us-ascii labels on windows-1252 text: smart quotes, dashes, € and … (0x85,
    which a Latin-1 decoder turns into a line break that whitespace collapsing swallows)."""
    raw = multipart_letter(
        [b"From: =?us-ascii?Q?Caf=E9_=93Chez_Nous=94?= <chez@partner.example>",
         b"Subject: =?iso-8859-1?Q?=93Offer=94_=96_=80100=85_d=E9j=E0?="],
        text_part(b"iso-8859-1", "Résumé attached.".encode("latin-1"), b"quoted-printable"),
        text_part(b'"ISO-8859-1"', "We can’t wait – see you soon…\r\nPrice: € 20".encode("cp1252"),
                  b"quoted-printable"),
    )
    return Case(raw, "“Offer” – €100… déjà", "Café “Chez Nous”",
                "Résumé attached.\n\nWe can’t wait – see you soon…\nPrice: € 20", [], [
                    "header From: charset 'us-ascii' declared, decoded as windows-1252",
                    "header Subject: charset 'iso-8859-1' declared, decoded as windows-1252",
                    "part 2: charset 'iso-8859-1' declared, decoded as windows-1252"])


def meaningful_spaces() -> Case:
    """U+3000 and no-break spaces in subject, display name and file name are kept; only ASCII
    whitespace and folding are collapsed."""
    raw = multipart_letter(
        [b"From: " + "山田\u3000太郎".encode() + b" <yamada@partner.example>",
         b"Subject: " + b_word("utf-8", "会議通知\u3000第二期") + b"\r\n \t  Price\xc2\xa0list"],
        text_part(b"utf-8", "\u3000\u3000お世話になっております。".encode()),
        attachment(b"attachment; filename*=utf-8''" + percent("議事録\u3000最終版.pdf"), PDF,
                   b"application/pdf"),
    )
    return Case(raw, "会議通知\u3000第二期 Price\u00a0list", "山田\u3000太郎",
                "\u3000\u3000お世話になっております。", [("議事録\u3000最終版.pdf", PDF)])


def vendor_extensions() -> Case:
    """big5 text with cp950's € (A3E1) and gb2312 text with cp936's single-byte € (0x80)."""
    raw = multipart_letter(
        [b"Subject: " + b_word("big5", "報價：€100", "cp950")],
        text_part(b"big5", "價格：€100（含稅）".encode("cp950")),
        text_part(b"gb2312", b"\xb5\xa5\xbc\xdb\xa3\xba\x8050"),  # 单价：€50 as Windows writes it
    )
    return Case(raw, "報價：€100", "Sender", "價格：€100（含稅）\n\n单价：€50", [], [
        "header Subject: charset 'big5' declared, decoded as big5-hkscs+cp950",
        "part 1: charset 'big5' declared, decoded as big5-hkscs+cp950",
        "part 2: charset 'gb2312' declared, decoded as gbk"])


def bom_against_label() -> Case:
    """A byte-order mark outranks the label: UTF-8 under gb2312, UTF-16LE under us-ascii."""
    raw = multipart_letter(
        [b"Subject: bom"],
        text_part(b"gb2312", codecs.BOM_UTF8 + "这是带签名的正文。".encode()),
        text_part(b"us-ascii", codecs.BOM_UTF16_LE + "附言：请回复。".encode("utf-16-le")),
    )
    return Case(raw, "bom", "Sender", "这是带签名的正文。\n\n附言：请回复。", [], [
        "part 1: charset 'gb2312' declared, byte-order mark says utf-8, decoded as utf-8",
        "part 2: charset 'us-ascii' declared, byte-order mark says utf-16-le, decoded as utf-16-le"])


# --- classes handled before, kept pinned ---------------------------------------------------------


def gbk_under_gb2312() -> Case:
    """gb2312 labels on GBK text (镕, 喆): subject split mid-character, body, RFC 2231 name."""
    subject = "朱镕基致陶喆".encode("gbk")
    raw = multipart_letter(
        [b"From: " + b_word("gb2312", "陶喆", "gbk") + b" <tao@partner.example>",
         b"Subject: =?gb2312?B?" + base64.b64encode(subject[:3]) + b"?=\r\n =?GB2312?B?"
         + base64.b64encode(subject[3:]) + b"?="],
        text_part(b"gb2312", "尊敬的陶喆先生：\r\n来函已收悉。".encode("gbk"), b"quoted-printable"),
        attachment(b"attachment; filename*=gb2312''" + percent("陶喆合同.pdf", "gbk"), PDF),
    )
    repair = "charset 'gb2312' declared, decoded as gbk"
    return Case(raw, "朱镕基致陶喆", "陶喆", "尊敬的陶喆先生：\n来函已收悉。", [("陶喆合同.pdf", PDF)], [
        f"header From: {repair}", f"header Subject: {repair.replace('gb2312', 'GB2312', 1)}",
        f"part 1: {repair}",
        f"part 2 file name: {repair}"])


def hkscs_under_big5() -> Case:
    """big5 labels on Hong Kong text (㗎, 嘅, 嘢)."""
    raw = letter([b"Subject: " + b_word("big5", "查詢：佢嘅嘢㗎", "big5hkscs"),
                  b"Content-Type: text/plain; charset=big5", b"Content-Transfer-Encoding: base64"],
                 b64("你哋嘅報價單幾時有㗎？".encode("big5hkscs")))
    repair = "charset 'big5' declared, decoded as big5-hkscs"
    return Case(raw, "查詢：佢嘅嘢㗎", "Sender", "你哋嘅報價單幾時有㗎？", [], [
        f"header Subject: {repair}", f"message: {repair}"])


def iso2022jp_windows_rows() -> Case:
    """ISO-2022-JP with Windows' NEC and IBM rows (①, ㈱, 髙) in a name, subject and body."""
    raw = letter([b"From: =?ISO-2022-JP?B?" + base64.b64encode(b"\x1b$B-j|b66\x1b(B") + b"?= <t@partner.example>",
                  b"Subject: " + b_word("ISO-2022-JP", "見積書の送付について", "iso2022_jp"),
                  b"Content-Type: text/plain; charset=ISO-2022-JP", b"Content-Transfer-Encoding: 7bit"],
                 "お世話になっております。\r\n".encode("iso2022_jp") + b"\x1b$B-!\x1b(B")
    return Case(raw, "見積書の送付について", "㈱髙橋", "お世話になっております。\n①")


def raw_utf8_headers() -> Case:
    """Raw 8-bit UTF-8 in subject, display name and file name (no encoding at all)."""
    raw = multipart_letter(
        [b"From: " + "王五".encode() + b" <wang@partner.example>",
         b"Subject: " + "关于 2024 年度预算的请示".encode()],
        text_part(b"utf-8", "请审阅。".encode(), b"8bit"),
        attachment(b'attachment; filename="' + "预算（草案）.pdf".encode() + b'"', PDF),
    )
    return Case(raw, "关于 2024 年度预算的请示", "王五", "请审阅。", [("预算（草案）.pdf", PDF)])


def gbk_labelled_utf8() -> Case:
    """GBK text labelled utf-8, almost every byte invalid: read as gb18030, reported."""
    raw = letter([b"Subject: x", b"Content-Type: text/plain; charset=utf-8",
                  b"Content-Transfer-Encoding: 8bit"], "请尽快回复，谢谢。".encode("gbk"))
    return Case(raw, "x", "Sender", "请尽快回复，谢谢。", [],
                ["message: charset 'utf-8' declared, decoded as gb18030"])


def utf8_under_gb_labels() -> Case:
    """UTF-8 labelled gb2312 or gbk, as web forms and scripts send it: gb18030 (a wider decoder
    for those labels) would read most of it as other characters (会议 as 浼氳), valid UTF-8 wins."""
    raw = multipart_letter(
        [b"Subject: " + b_word("gbk", "关于会议通知", "utf-8")],
        text_part(b"gb2312", "您好，附件是我们的报价单，请查收。谢谢！".encode(), b"8bit"),
        attachment(b"attachment; filename*=gb2312''" + percent("会议纪要.docx"), SHEET),
    )
    return Case(raw, "关于会议通知", "Sender", "您好，附件是我们的报价单，请查收。谢谢！", [("会议纪要.docx", SHEET)], [
        "header Subject: charset 'gbk' declared, decoded as utf-8",
        "part 1: charset 'gb2312' declared, decoded as utf-8",
        "part 2 file name: charset 'gb2312' declared, decoded as utf-8"])


def utf8_that_is_also_valid_gbk() -> Case:
    """UTF-8 labelled gbk or Shift_JIS that the label's decoder reads without an error, as other
    characters (合同 as 鍚堝悓, 请查收合同 as 隸ｷ譟･謾ｶ蜷亥酔): valid UTF-8 with characters of
    three bytes outranks a double-byte label."""
    for text, label in (("关于合同", "gbk"), ("请查收合同", "cp932")):
        text.encode().decode(label)  # the trap: the label's decoder accepts these bytes
    raw = letter([b"Subject: " + b_word("gbk", "关于合同", "utf-8"),
                  b"Content-Type: text/plain; charset=shift_jis", b"Content-Transfer-Encoding: 8bit"],
                 "请查收合同".encode())
    return Case(raw, "关于合同", "Sender", "请查收合同", [], [
        "header Subject: charset 'gbk' declared, decoded as utf-8",
        "message: charset 'shift_jis' declared, decoded as utf-8"])


def gbk_that_is_also_valid_utf8() -> Case:
    """Real GBK whose bytes happen to be valid UTF-8 of two-byte characters (陆路 would read as
    "½·"): the label stands, as it does for GBK text that is not valid UTF-8."""
    raw = letter([b"Subject: " + b_word("gbk", "陆路运输"),
                  b"Content-Type: text/plain; charset=gbk", b"Content-Transfer-Encoding: 8bit"],
                 "陆路".encode("gbk"))
    "陆路".encode("gbk").decode("utf-8")  # the trap: these GBK bytes are valid UTF-8
    return Case(raw, "陆路运输", "Sender", "陆路")


def windows_unicode_labels() -> Case:
    """UTF-16LE without a byte-order mark under Windows' label "unicode" and under "ucs-2": read as
    UTF-8 they gave the text's ASCII with NULs between and its Chinese as other characters."""
    raw = letter([b"Subject: =?ucs-2?B?" + base64.b64encode("合同续签".encode("utf-16-le")) + b"?=",
                  b"Content-Type: text/plain; charset=unicode", b"Content-Transfer-Encoding: base64"],
                 b64("请查收 contract 2026。".encode("utf-16-le")))
    return Case(raw, "合同续签", "Sender", "请查收 contract 2026。")


def mysql_utf8_labels() -> Case:
    """utf8mb4 and utf8mb3, MySQL's names for UTF-8, as mail sent from a web application's database
    names it: the text was right, yet each part said its charset was unknown."""
    raw = letter([b"Subject: =?utf8mb4?B?" + base64.b64encode("合同续签".encode()) + b"?=",
                  b"Content-Type: text/plain; charset=utf8mb3", b"Content-Transfer-Encoding: 8bit"],
                 "请查收合同。".encode())
    return Case(raw, "合同续签", "Sender", "请查收合同。")


def gbk_under_latin1_labels() -> Case:
    """Chinese in GBK sent as iso-8859-1 (an old Foxmail or Outlook Express set up): read as Latin-1
    it was 'ÄúºÃ£¬ºÏÍ¬...'. 8-bit bytes only in pairs, side by side, reading as Chinese: GBK."""
    raw = letter([b"Subject: =?iso-8859-1?B?" + base64.b64encode("关于合同续签".encode("gbk")) + b"?=",
                  b"Content-Type: text/plain; charset=iso-8859-1", b"Content-Transfer-Encoding: 8bit"],
                 "您好，合同已收到。Thanks".encode("gbk"))
    return Case(raw, "关于合同续签", "Sender", "您好，合同已收到。Thanks", [], [
        "header Subject: charset 'iso-8859-1' declared, decoded as gbk",
        "message: charset 'iso-8859-1' declared, decoded as gbk"])


def latin1_that_is_also_valid_gbk() -> Case:
    """Western text whose accented letters stand alone or in pairs (São João, ÆØ), valid GBK all the
    same: the label stands, as it does for text that is not valid GBK."""
    text = "São João, ÆØ 5 kg"
    assert text.encode("latin-1").decode("gbk")  # the trap: these bytes are valid GBK
    raw = letter([b"Subject: =?iso-8859-1?Q?S=E3o_Jo=E3o?=",
                  b"Content-Type: text/plain; charset=iso-8859-1", b"Content-Transfer-Encoding: 8bit"],
                 text.encode("latin-1"))
    return Case(raw, "São João", "Sender", text)


def shift_jis_windows_characters() -> Case:
    """Shift_JIS labels mean windows-31j: ① and ～ as Windows writes them."""
    raw = letter([b"Subject: " + b_word("shift_jis", "納期①", "cp932"),
                  b"Content-Type: text/plain; charset=Shift_JIS", b"Content-Transfer-Encoding: 8bit"],
                 "①　午前９時～正午".encode("cp932"))
    return Case(raw, "納期①", "Sender", "①　午前９時～正午")


def euc_kr_unified_hangul() -> Case:
    """euc-kr labels mean windows-949: syllables outside KS X 1001 (똠) decode."""
    raw = letter([b"Subject: " + b_word("euc-kr", "똠방각하", "cp949"),
                  b"Content-Type: text/plain; charset=euc-kr", b"Content-Transfer-Encoding: base64"],
                 b64("회의는 월요일입니다. 똠".encode("cp949")))
    return Case(raw, "똠방각하", "Sender", "회의는 월요일입니다. 똠")


def html_meta_charset() -> Case:
    """HTML without a charset parameter, its <meta> naming gb2312 for GBK text."""
    html = '<html><head><meta charset="gb2312"></head><body><p>陶喆来信</p></body></html>'
    raw = letter([b"Subject: html", b"Content-Type: text/html"], html.encode("gbk"))
    return Case(raw, "html", "Sender", "陶喆来信", [], ["message: charset 'gb2312' declared, decoded as gbk"])


# --- real-world messages: CPython's email test data (PSF licence), from the installed stdlib -----

def cpython_message(name: str) -> bytes:
    """A message of CPython's email test suite, kept beside the tests (see its README)."""
    return (Path(__file__).parent / "data" / "cpython-email" / name).read_bytes()


def stdlib_attachments(raw: bytes) -> list[tuple[str, bytes]]:
    """(file name, content) as the stdlib's own parser reads them: an independent truth."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return [(str(a.get_filename()), a.get_payload(decode=True)) for a in parsed.iter_attachments()
            if a.get_filename()]


def cpython_msg_07() -> Case:
    """CPython msg_07.txt: a GIF beside a us-ascii text part."""
    raw = cpython_message("msg_07.txt")
    return Case(raw, "Here is your dingus fish", "Barry", "Hi there,\n\nThis is the dingus fish.",
                stdlib_attachments(raw))


def cpython_msg_22() -> Case:
    """CPython msg_22.txt: format=flowed us-ascii parts between two JPEGs, no subject."""
    raw = cpython_message("msg_22.txt")
    return Case(raw, "", "", "Text text text.\n\nText text text.", stdlib_attachments(raw))


def cpython_msg_32() -> Case:
    """CPython msg_32.txt: the charset itself given in RFC 2231 form (ansi-x3.4-1968)."""
    raw = cpython_message("msg_32.txt")
    return Case(raw, "Re: Limiting Perl CPU Utilization...", "Anne Person", "Some message.")


def cpython_msg_46() -> Case:
    """CPython msg_46.txt: a Groupwise forward, the whole message a message/rfc822: its text is
    the forwarded message's."""
    raw = cpython_message("msg_46.txt")
    return Case(raw, "GroupwiseForwardingTest", "Sender", "Testing email forwarding with Groupwise 1.2.2010",
                [("GroupwiseForwardingTest.eml", raw.split(b"\n\n", 1)[1])])


CASES = {case.__name__: case for case in (
    big5_raw_file_names, rfc2231_over_plain, rfc2231_continuation_gap, eight_bit_inside_encoded_words,
    rfc2231_charset_parameters, iso2022cn_subject_and_body, flowed_delsp_yes, flowed_without_delsp,
    windows_1252_under_latin1_labels, meaningful_spaces, vendor_extensions, bom_against_label,
    gbk_under_gb2312, hkscs_under_big5, iso2022jp_windows_rows, raw_utf8_headers, gbk_labelled_utf8,
    utf8_under_gb_labels, utf8_that_is_also_valid_gbk, gbk_that_is_also_valid_utf8, windows_unicode_labels,
    mysql_utf8_labels,
    gbk_under_latin1_labels, latin1_that_is_also_valid_gbk, shift_jis_windows_characters, euc_kr_unified_hangul,
    html_meta_charset,
    cpython_msg_07, cpython_msg_22, cpython_msg_32, cpython_msg_46,
)}


@pytest.mark.parametrize("name", CASES)
def test_corpus_decodes_exactly(name: str) -> None:
    case = CASES[name]()
    result = normalise(case.raw)
    assert result.subject == case.subject
    assert result.sender is not None and result.sender.name == case.sender_name
    assert [(a.filename, a.sha256) for a in result.attachments] == case.attachment_truth
    assert result.body_text == case.body
    assert result.defects == case.defects


END_TO_END = ("big5_raw_file_names", "rfc2231_over_plain", "rfc2231_continuation_gap", "eight_bit_inside_encoded_words",
              "rfc2231_charset_parameters", "iso2022cn_subject_and_body", "flowed_delsp_yes", "flowed_without_delsp",
              "windows_1252_under_latin1_labels", "meaningful_spaces", "vendor_extensions", "bom_against_label",
              "gbk_under_gb2312", "utf8_under_gb_labels", "utf8_that_is_also_valid_gbk",
              "gbk_under_latin1_labels", "cpython_msg_07")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_register_stores_and_shows_the_decoded_truth(backend: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    """What is stored is what is shown: `letters show --json` gives every case's truth exactly."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else ""
    gateway = Gateway(tmp_path, registry_url=url)
    files = []
    for name in END_TO_END:
        path = tmp_path / f"{name}.eml"
        path.write_bytes(CASES[name]().raw)
        files.append(str(path))
    output = gateway.run("ingest", *files).stdout
    numbers = dict(re.findall(r"^(\S+)\.eml: registered as (\S+)$", output.replace(f"{tmp_path}/", ""), re.M))
    assert sorted(numbers) == sorted(END_TO_END)
    for name in END_TO_END:
        case = CASES[name]()
        shown = gateway.show_json(numbers[name])
        assert shown["subject"] == case.subject, name
        assert shown["sender_name"] == case.sender_name, name
        assert shown["body_text"] == case.body, name
        attachments = shown["attachments"]
        assert isinstance(attachments, list)
        assert [(a["filename"], a["sha256"]) for a in attachments] == case.attachment_truth, name
        assert shown["defects"] == case.defects, name


def test_a_quoted_big5_display_name_ending_in_a_backslash_byte_is_one_clean_address() -> None:
    """蓋 is A5 5C in Big5: inside a quoted display name its second byte must not escape the quote."""
    raw = (b'From: "' + "許功蓋".encode("big5") + b'" <hsu@example.tw>\r\nTo: liaison@example.org\r\n'
           b"Subject: x\r\nDate: Mon, 23 Nov 2026 09:00:00 +0800\r\nContent-Type: text/plain; charset=big5\r\n\r\n"
           + "您好".encode("big5") + b"\r\n")
    parsed = normalise(raw, summary_chars=100)
    assert parsed.sender is not None
    assert (parsed.sender.name, parsed.sender.address) == ("許功蓋", "hsu@example.tw")
    assert parsed.defects == ["header From: raw 8-bit text without charset is not valid utf-8, decoded as big5, "
                              "the charset declared in the message"]


@pytest.mark.parametrize(("text", "collapsed"), [
    (" \t Price\r\n\f\vlist \n", "Price list"),
    ("会議通知\u3000\u3000第二期", "会議通知\u3000\u3000第二期"),  # ideographic spaces are written on purpose
    ("Price\u00a0list\u2028next\x85end", "Price\u00a0list\u2028next\x85end"),  # no-break, line and NEL kept
    ("a\x1cb\x1fc", "a\x1cb\x1fc"),  # str.split() would cut at these separators; they are not whitespace here
    ("bad \udc80 byte\t\t kept", "bad \udc80 byte kept"),  # a lone surrogate survives the round trip
    ("", ""),
    (" \r\n\t ", ""),
])
def test_only_runs_of_ascii_whitespace_are_collapsed(text: str, collapsed: str) -> None:
    from gateway.stages.normalise.headers import collapse_whitespace

    assert collapse_whitespace(text) == collapsed


@pytest.mark.parametrize(("name", "charset", "used"), [
    ("陳大文", "big5", "big5 (its characters common in Big5, rare in GBK)"),
    ("中華電信股份有限公司", "big5", "big5 (its characters common in Big5, rare in GBK)"),
    ("张伟", "gbk", "gb18030"),
    ("朱镕基", "gbk", "gb18030"),  # a GBK character beyond GB 2312
    ("國際貿易", "gbk", "gb18030"),  # traditional characters written in GBK
    ("臺灣", "gbk", "gb18030"),  # ... whose Big5 reading needs Hong Kong's rows
])
def test_a_raw_display_name_without_any_charset_is_told_big5_or_gbk(name: str, charset: str, used: str) -> None:
    """GBK reads almost any Big5 pair, as other characters: a Big5 name without a charset anywhere
    came out as GB18030 mojibake (陳大文 as 陈, a private-use character and a kana). The reading
    whose pairs fall in its charset's common rows wins; GBK keeps every tie."""
    raw = (b'From: "' + name.encode(charset) + b'" <sender@partner.example>\r\nTo: liaison@example.org\r\n'
           b"Subject: x\r\nDate: Mon, 23 Nov 2026 09:00:00 +0800\r\n\r\nHello\r\n")
    parsed = normalise(raw, summary_chars=100)
    assert parsed.sender is not None
    assert (parsed.sender.name, parsed.sender.address) == (name, "sender@partner.example")
    assert parsed.defects == [f"header From: raw 8-bit text without charset is not valid utf-8, decoded as {used}"]


def test_euc_tw_is_read_for_its_cns_11643_characters() -> None:
    """EUC-TW (CNS 11643, Taiwan's national standard), for which Python has no codec, was an unknown
    charset: its text came out as GB18030 mojibake. It is read as the C library's iconv reads it,
    planes 1 and 2 alike (乂 is plane 2, four bytes); a byte that is no CNS 11643 is replaced and
    counted, the rest read."""
    text = "臺灣大學通知：會議改期。乂丐丟"
    data = bytes.fromhex("ead7fda4c4cbf0d0ddd7cfa1a1a8e4c4fabecad1dfe6a1a48ea2a1a1c4e1c7a3")  # iconv -t EUC-TW
    raw = letter([b"From: " + data[:4] + b" <office@ntu.example.tw>", b"Subject: =?euc-tw?B?"
                  + base64.b64encode(data[:12]) + b"?=", b"Content-Type: text/plain; charset=x-euc-tw",
                  b"Content-Transfer-Encoding: 8bit"], data + b"\r\n")
    parsed = normalise(raw)
    assert (parsed.subject, parsed.body_text) == (text[:6], text)
    assert parsed.sender is not None and parsed.sender.name == "臺灣"
    assert parsed.defects == ["header From: raw 8-bit text without charset is not valid utf-8, decoded as euc-tw, "
                              "the charset declared in the message"]
    spoiled = data[:4] + b"\xff" + data[4:]
    parsed = normalise(letter([b"Subject: x", b"Content-Type: text/plain; charset=euc-tw"], spoiled))
    assert parsed.body_text == "臺灣\ufffd大學通知：會議改期。乂丐丟"
    assert parsed.defects == ["message: 1 character(s) of 'euc-tw' not in CNS 11643, replaced"]


@pytest.mark.parametrize(("name", "charset", "used"), [
    ("陳大文", "big5", "big5 (its characters common in Big5, rare in GBK)"),
    ("张伟", "gbk", "gbk"),
    ("Hélène Ärger", "latin-1", None),  # Western names keep the declared charset
])
@pytest.mark.parametrize("declared", ["us-ascii", "iso-8859-1"])
def test_a_raw_chinese_name_beside_a_western_charset_is_read_as_chinese(name: str, charset: str, used: str | None,
                                                                        declared: str) -> None:
    """Mailers label an ASCII text us-ascii (or iso-8859-1) beside a Chinese name written raw in the
    header; that charset, tried first, read the name as Western mojibake (³¯¤j¤å). Raw 8-bit text is
    taken for Chinese as a text under a Western label is: pairs side by side, nothing but Chinese."""
    raw = (b'From: "' + name.encode(charset) + b'" <sender@partner.example>\r\nTo: liaison@example.org\r\n'
           b"Subject: x\r\nDate: Mon, 23 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=" + declared.encode() + b"\r\n\r\nHello\r\n")
    parsed = normalise(raw, summary_chars=100)
    assert parsed.sender is not None and parsed.sender.name == name
    shown = "windows-1252" if declared == "us-ascii" else declared
    assert parsed.defects == ["header From: raw 8-bit text without charset is not valid utf-8, decoded as "
                              + (used if used else f"{shown}, the charset declared in the message")]
