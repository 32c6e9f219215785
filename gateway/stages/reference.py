"""The sender's reference (来文字号): the number an organisation gives its own document, by which
both sides cite it — 国办发〔2026〕12号, 京应急函[2026]3号. The registry office records it for a
paper letter; for mail it is found in the subject, or else near the top of the text, where an
official document carries it under its heading (GB/T 9704)."""
from __future__ import annotations

import re

LONGEST = 100  # characters; the register's column holds no more
# A line break, another control or a direction control: none has a place in a one-line value a
# person types (a reference, a sender's name), where it would start a header line of its own or,
# pasted with a name, reorder how it reads (U+202E: "moc.knab").
ONE_LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The issuer's abbreviation (Chinese characters, 1 to 16), the year in brackets of any of the
# shapes seen in practice (〔〕 is the standard's, [] 【】 （） () by hand or by a mail program), the
# serial number, and 号.
_REFERENCE = re.compile(r"[\u4e00-\u9fff]{1,16}\s*[〔\[【（(]\s*((?:19|20)\d{2})\s*[〕\]】）)]\s*(\d{1,6})\s*号")
_TEXT_SEARCHED = 2000  # characters of the text from the top; a reference lower down cites another document
# Words a subject puts before a document it cites (关于转发国办发〔2026〕12号文件的通知): not the issuer's.
_LEADING = ("关于", "转发", "印发", "根据", "按照", "落实", "贯彻", "执行", "依据", "学习", "对")


def find_reference(subject: str, body_text: str) -> str:
    """The first reference in the subject, or else in the top of the text, written the standard's
    way (〔2026〕, no spaces); "" if none."""
    for text in (subject, body_text[:_TEXT_SEARCHED]):
        if "号" not in text:  # the common case, without the expression
            continue
        found = _REFERENCE.search(text)
        if found is not None:
            issuer = found.group(0)[:found.start(1) - found.start(0)].rstrip(" 〔[【（(")
            while (leading := next((w for w in _LEADING if issuer.startswith(w) and len(issuer) > len(w)), None)):
                issuer = issuer[len(leading):]
            return f"{issuer}〔{found.group(1)}〕{found.group(2)}号"
    return ""


def typed_reference(value: str) -> str:
    """A reference as the registry office typed it, spaces folded; kept as typed otherwise (an
    older or a foreign numbering need not follow the standard)."""
    return " ".join(value.split())
