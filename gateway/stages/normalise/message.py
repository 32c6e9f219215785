"""normalise(): raw message bytes to the fields the register needs, never raising."""

from __future__ import annotations

import binascii
import hashlib
import io
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.errors import InvalidBase64LengthDefect, MessageDefect
from email.generator import BytesGenerator
from email.message import Message

import magic

from .bounded import BoundedMessage, Budget, parse, parse_headers
from .calendar import calendar_text
from .charsets import Guess, decode_bytes, resolve_charset
from .filenames import numbered_variant, safe_filename
from .flowed import unflow
from .headers import (
    clean_header_text,
    collapse_whitespace,
    decode_header_value,
    lenient_b64decode,
    message_ids,
    parse_addresses,
    parse_date,
)
from .model import Address, Attachment, Limits, Normalised
from .params import read_parameter
from .stream import NotStreamable, Stash, Streamed, base64_chunks, raw_chunks
from .summary import summarise

_TNEF_CONTENT_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})  # and any winmail.dat
_BODY_TYPES = frozenset({"text/plain", "text/html"})
_CALENDAR_TYPES = frozenset({"text/calendar", "application/ics"})
_KNOWN_TRANSFER_ENCODINGS = frozenset(
    {"7bit", "8bit", "binary", "base64", "quoted-printable", "uuencode", "x-uuencode", "uue",
     "x-uue"}
)
_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")  # C1 too, but NEL: a line break
# "=" that starts neither an escape (two hex digits) nor a soft line break. Blanks between "=" and
# the line's end are transport padding to RFC 2045, but the decoder keeps them, "=" included.
_INVALID_QP = re.compile(r"=(?![0-9A-Fa-f]{2})(?!\r?\n|$)", re.M)
_HTML_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_ONCE_ONLY = ("From", "Sender", "Subject", "Date", "Message-ID")
# Once in the header of the message and of each part (RFC 2045): which of two Content-Types a
# filter and a mail program each read decides what the message is to them.
_ONCE_PER_PART = ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition")
_XML_DECLARATION = re.compile(r"^<\?xml [^>]*>")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?\s*]+)[^?\s]*\?[bBqQ]\?")
_MAX_GUESSES = 8
_ASCII_WHITESPACE = " \t\r\n\f\v"
# File name parameters, best first: RFC 2231 values carry their charset, plain ones do not.
_FILE_NAME_PARAMETERS = (("content-disposition", "filename"), ("content-type", "name"))


def normalise(raw: bytes, *, summary_chars: int = 300, limits: Limits | None = None) -> Normalised:
    """Parse one raw message. Never raises: what cannot be read is recorded in `defects`, and so
    is whatever lies beyond `limits` (parts, nesting, header fields), which is not examined.
    Large base64 attachments are never held decoded (see stream.py): their content is decoded
    from `raw` again when asked for."""
    limits = limits or Limits()
    budget = Budget(limits)
    stash = Stash()
    defects: list[str] = []
    result = Normalised(
        sender=None, to=[], cc=[], reply_to=[], subject="", date=None, message_id=None,
        in_reply_to=None, references=[], body_text="", summary="", attachments=[],
        defects=defects, header_fields=[],
    )
    raw, bom, blank = skip_before_header(raw)
    if bom:
        defects.append("message: byte-order mark before the header, skipped")
    if blank:
        defects.append("message: blank line(s) before the header, skipped")
    try:
        message = parse(raw, budget, stash=stash)
        structure_readable = True
    except RecursionError:
        # The parser recurses once per nesting level; a hostile message can exhaust the stack.
        message = parse_headers(raw, limits)
        structure_readable = False
        defects.append("message: MIME structure nested too deeply to parse; headers only")
    except Exception as exc:  # the stdlib parser is lenient, but one bad input must not stop intake
        defects.append(f"message: could not be parsed ({type(exc).__name__}: {exc})")
        return result
    if budget.too_deep:
        defects.append(f"message: MIME parts nested more than {limits.max_depth} deep; the part found "
                       "there and everything after it were not examined (they are in the original)")
    if not raw or raw.isspace():  # not raw.strip(): that would copy the whole message
        defects.append("message: empty")
    elif not message.keys():
        defects.append("message: no header fields")

    guesses = _declared_charsets(message, structure_readable)
    _guarded(defects, "headers", lambda: _read_headers(message, result, guesses))
    walker = _PartWalker(defects, linesep="\r\n" if b"\r\n" in raw[:8192] else "\n", guesses=guesses,
                         budget=budget, stash=stash)
    if structure_readable:
        _guarded(defects, "body", lambda: _read_body(message, walker, result))
    else:
        walker.header_defects(message, "message")
    if budget.too_many_parts:
        defects.append(f"message: more than {limits.max_parts} MIME parts; the first {limits.max_parts} "
                       "were examined, the rest only kept in the original")
    result.attachments = walker.attachments
    result.summary = summarise(result.body_text, summary_chars)
    result.defects = list(dict.fromkeys(defects))  # the same defect can surface on two paths
    return result


def html_body(raw: bytes, limits: Limits | None = None) -> str | None:
    """The HTML a message's sender wrote (its first inline text/html part, decoded like its text),
    or None when it has none. For showing the letter as it was formatted; never for the register."""
    budget = Budget(limits or Limits())
    stash = Stash()
    raw, _, _ = skip_before_header(raw)
    try:
        message = parse(raw, budget, stash=stash)
    except Exception:  # a message that cannot be parsed has no HTML to show; its text says why
        return None
    walker = _PartWalker([], linesep="\n", guesses=_declared_charsets(message, True), budget=budget,
                         stash=stash)
    for part in message.walk():
        if (part.get_content_type() == "text/html" and part.get_content_disposition() != "attachment"
                and not part.get_filename()):
            try:
                return walker._text(part, "html", True)
            except Exception:
                return None
    return None


# Before the first header field: a UTF-8 byte-order mark (a Windows tool's export, PowerShell's
# utf8) or blank lines. The parser would take the whole message for a body without a header.
_BEFORE_HEADER = re.compile(rb"(\xef\xbb\xbf)?((?:[ \t]*\r?\n)*)(?=[!-9;-~]+[ \t]*:)")


def skip_before_header(raw: bytes) -> tuple[bytes, bool, bool]:
    """`raw` from its first header field on; whether a byte-order mark, and blank lines, were skipped."""
    found = _BEFORE_HEADER.match(raw[:4096])
    if not found or not found.end():
        return raw, False, False
    return raw[found.end():], bool(found.group(1)), bool(found.group(2))


def _guarded(defects: list[str], step: str, action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:
        defects.append(f"{step}: could not be read ({type(exc).__name__}: {exc})")


def _declared_charsets(message: Message, structure_readable: bool) -> list[Guess]:
    """Charsets the message declares (its headers' encoded words, its parts), best guess first.

    Raw 8-bit headers and file names carry no charset; a careful mail client reads them in the
    charset the message itself uses.
    """
    labels: list[str] = []
    for _name, value in message.raw_items():
        labels.extend(_ENCODED_WORD_CHARSET.findall(str(value)))
    parts = message.walk() if structure_readable else iter([message])
    try:
        for part in parts:
            if len(labels) > 100:
                break
            label = part.get_param("charset", None)
            if isinstance(label, str):
                labels.append(label)
    except RecursionError:
        pass  # a hostile nesting depth: the charsets found so far will do
    guesses: dict[str, Guess] = {}
    for label in labels:
        name = resolve_charset(label)
        if name is not None and name not in guesses and len(guesses) < _MAX_GUESSES:
            guesses[name] = (label, "declared in the message")
    return list(guesses.values())


def _read_headers(message: Message, result: Normalised, guesses: list[Guess]) -> None:
    defects = result.defects
    first_raw: dict[str, str] = {}
    first_decoded: dict[str, str] = {}
    all_raw: dict[str, list[str]] = {}
    for name, raw_value in message.raw_items():
        name = name.strip()
        raw_value = str(raw_value)
        key = name.lower()
        value, value_defects = decode_header_value(raw_value, guesses)
        result.header_fields.append((name, value))
        if value_defects:
            defects.extend(f"header {name}: {d}" for d in value_defects)
        if key not in first_raw:
            first_raw[key] = raw_value
            first_decoded[key] = value
        all_raw.setdefault(key, []).append(raw_value)

    result.subject = collapse_whitespace(first_decoded.get("subject", ""))
    # RFC 5322 allows each of these once. A second From is a known way to show a mail program one
    # sender and a filter another: the register keeps the first and names the rest.
    for name in _ONCE_ONLY:
        values = all_raw.get(name.lower(), [])
        if len(values) > 1:
            others = "; ".join(collapse_whitespace(decode_header_value(v, guesses)[0])[:200] for v in values[1:])
            defects.append(f"message: {len(values)} {name} header fields; the first was read (also: {others})")

    def addresses(header: str, fields: slice = slice(None)) -> list[Address]:
        found, address_defects = parse_addresses(all_raw.get(header.lower(), [])[fields], header, guesses)
        defects.extend(address_defects)
        return found

    authors = addresses("From", slice(1))  # the first From field's, each field parsed once
    from_addresses = authors + addresses("From", slice(1, None))
    sender_addresses = addresses("Sender")
    if from_addresses:
        result.sender, result.sender_field = from_addresses[0], "From"
        # RFC 5322 allows several authors in one From; the register has one sender, so the others
        # are named (a second From field is named as a repeated field, above).
        if len(authors) > 1:
            others = ", ".join(a.address for a in authors[1:])
            defects.append(f"header From: {len(authors)} addresses; the first is the sender (also: {others[:200]})")
    elif sender_addresses:
        result.sender, result.sender_field = sender_addresses[0], "Sender"
    elif first_decoded.get("from", "").strip():
        # Keep what the sender wrote so a person can still see who it was.
        result.sender = Address(collapse_whitespace(first_decoded["from"]), "")
    if "from" not in first_raw:
        defects.append("message: missing From header")
    elif not first_decoded["from"].strip():
        defects.append("header From: empty")
    result.to = addresses("To")
    result.cc = addresses("Cc")
    result.reply_to = addresses("Reply-To")

    result.date, date_defect = parse_date(first_raw.get("date"))
    if date_defect:
        defects.append(date_defect)
    result.message_id = next(iter(message_ids(first_decoded.get("message-id"))), None)
    result.in_reply_to = next(iter(message_ids(first_decoded.get("in-reply-to"))), None)
    result.references = message_ids(first_decoded.get("references"))


def _read_body(message: Message, walker: _PartWalker, result: Normalised) -> None:
    fragments = walker.visit(message, "", origin="mime", depth=0)
    texts = [text for text in (fragment.render(result.defects) for fragment in fragments) if text]
    if not texts:
        # An inline text with a file name and no other text (a mail program's "insert file"):
        # mail clients show it as the letter, and list it as a file too (it stays attached).
        texts = [text for text in (fragment.render(result.defects) for fragment in walker.named_text_fragments())
                 if text]
    if not texts and walker.tnef_bodies:
        texts = [walker.tnef_bodies[0].render(result.defects)]
    if not texts:
        # An invitation and nothing else: its event is the letter's text (the .ics stays attached).
        # Google sends one event twice, inline and as invite.ics: each text once.
        texts = list(dict.fromkeys(text for text in walker.calendar_texts if text))
    for fragments in walker.forwarded_texts if not texts else []:
        # A message forwarded as an attachment with not a word of its own: the forwarded message's
        # text is what the letter says (what rules classify and search finds); the .eml stays
        # attached, its sender and subject with it.
        texts = [text for text in (fragment.render(result.defects) for fragment in fragments) if text]
        if texts:
            break
    result.body_text = "\n\n".join(texts)


@dataclass
class _Fragment:
    """A piece of body text; HTML is rendered only if it is the alternative chosen."""

    kind: str  # 'plain' or 'html'
    content: str
    where: str

    def meaningful(self) -> bool:
        if self.kind == "plain":
            return bool(self.content.strip())
        return bool(_HTML_TAG.sub("", _SCRIPT_OR_STYLE.sub("", self.content)).strip())

    def render(self, defects: list[str]) -> str:
        if self.kind == "plain":
            return self.content.strip(_ASCII_WHITESPACE)  # a letter may open with U+3000 indents
        try:
            return _tidy_rendered_html(_html_to_text(self.content))
        except Exception as exc:
            defects.append(f"{self.where}: HTML could not be rendered ({exc}), tags stripped")
            return collapse_whitespace(_HTML_TAG.sub(" ", _SCRIPT_OR_STYLE.sub("", self.content)))


def _html_to_text(html: str) -> str:
    """HTML rendered as text (see htmltext.py); an XML declaration before it is no text."""
    # inscriptis and lxml are loaded by the first HTML mail, not by every process that might see one.
    from .htmltext import html_to_text

    return html_to_text(_XML_DECLARATION.sub("", html.strip(), count=1))


def _tidy_rendered_html(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip()


def _clean_body(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x85", "\n").removeprefix("\ufeff")
    return _BODY_CONTROLS.sub("", text) if _BODY_CONTROLS.search(text) else text


class _PartWalker:
    """Walks the MIME tree once: collects body fragments, attachments and part defects."""

    def __init__(self, defects: list[str], linesep: str, guesses: list[Guess], budget: Budget,
                 stash: Stash) -> None:
        self.defects = defects
        self.guesses = guesses
        self.budget = budget
        self.stash = stash
        self.limits = budget.limits
        self.attachments: list[Attachment] = []
        self.tnef_bodies: list[_Fragment] = []
        # Inline texts with a file name, listed as files: (part, where, html), decoded if needed.
        self.named_texts: list[tuple[Message, str, bool]] = []
        self.calendar_texts: list[str] = []
        # The body text of each message attached to this one (not to an attached one), in order.
        self.forwarded_texts: list[list[_Fragment]] = []
        self.attachments_left_out = 0
        self._linesep = linesep
        self._taken_names: set[str] = set()
        # Per name, the number after the last one taken: thousands of parts named alike must not
        # each try every number from 2 again (quadratic in the number of parts).
        self._next_number: dict[str, int] = {}

    def visit(self, part: Message, label: str, origin: str, depth: int) -> list[_Fragment]:
        where = f"part {label}" if label else "message"
        defects_seen = len(part.defects)
        try:
            self._record_defects(part.defects, where)
            self.header_defects(part, where)
            self._repeated_fields(part, where)
            if depth > self.limits.max_depth:
                self.defects.append(f"{where}: nested more than {self.limits.max_depth} deep, not examined")
                return []
            return self._visit(part, label, where, origin, depth)
        except Exception as exc:
            self.defects.append(f"{where}: could not be read ({type(exc).__name__}: {exc})")
            return []
        finally:
            # Decoding a payload can add defects (bad base64 padding, ...).
            self._record_defects(part.defects[defects_seen:], where)

    def header_defects(self, part: Message, where: str) -> None:
        """What the parser left out of the part's header (see bounded.py)."""
        if not isinstance(part, BoundedMessage):
            return
        if part.fields_dropped:
            self.defects.append(f"{where}: {part.fields_dropped} header field(s) beyond the first "
                                f"{self.limits.max_header_fields} not read")
        if part.fields_cut:
            self.defects.append(f"{where}: {part.fields_cut} header field(s) longer than "
                                f"{self.limits.max_header_bytes} bytes cut short")

    def _repeated_fields(self, part: Message, where: str) -> None:
        """A second Content-Type, Content-Transfer-Encoding or Content-Disposition is named with its value."""
        values: dict[str, list[str]] = {}
        for name, value in part.raw_items():
            values.setdefault(name.strip().lower(), []).append(str(value))
        for name in _ONCE_PER_PART:
            found = values.get(name.lower(), [])
            if len(found) > 1:
                others = "; ".join(collapse_whitespace(decode_header_value(v, self.guesses)[0])[:200]
                                   for v in found[1:])
                self.defects.append(f"{where}: {len(found)} {name} header fields; the first was read (also: {others})")

    def _record_defects(self, defects: list[MessageDefect], where: str) -> None:
        for defect in defects:
            self.defects.append(f"{where}: {_describe_defect(defect)}")

    def _visit(self, part: Message, label: str, where: str, origin: str,
               depth: int) -> list[_Fragment]:
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            self._attached_message(part, label, where, origin, depth)
            return []
        main_type = content_type.split("/", 1)[0]
        if part.is_multipart():
            if main_type != "multipart":  # e.g. message/delivery-status
                self._add_attachment(self._flattened(part), self._filename(part, where),
                                     content_type, origin, where)
                return []
            options = [
                self.visit(child, _child_label(label, number), origin, depth + 1)
                for number, child in enumerate(part.get_payload(), 1)
            ]
            if content_type == "multipart/alternative":
                return _choose_alternative(options)
            return [fragment for option in options for fragment in option]
        return self._leaf(part, where, content_type, main_type, origin)

    def _leaf(self, part: Message, where: str, content_type: str, main_type: str,
              origin: str) -> list[_Fragment]:
        filename = self._filename(part, where)
        disposition = part.get_content_disposition()
        self._check_transfer_encoding(part, where)
        if main_type == "multipart":
            # A multipart without a usable boundary: its text is all there is, so keep it as text.
            return [_Fragment("plain", self._text(part, where, html=False), where)]
        if content_type in _BODY_TYPES and disposition != "attachment" and not filename:
            html = content_type == "text/html"
            return [_Fragment("html" if html else "plain", self._text(part, where, html), where)]
        if content_type in _TNEF_CONTENT_TYPES or filename.lower() == "winmail.dat":
            self._tnef(self._payload_bytes(part), filename, content_type, origin, where)
        else:
            self._add_attachment(self._content(part), filename, content_type, origin, where)
            if (content_type in _BODY_TYPES and disposition != "attachment" and origin == "mime"
                    and len(self.named_texts) < self.limits.max_parts):
                self.named_texts.append((part, where, content_type == "text/html"))
            # An attached message's invitation is its text, not this message's (as its body is).
            if (content_type in _CALENDAR_TYPES and origin == "mime"
                    and len(self.calendar_texts) < self.limits.max_parts):
                self.calendar_texts.append(calendar_text(self._text(part, where, html=False)))
        return []

    def named_text_fragments(self) -> list[_Fragment]:
        """The inline texts with a file name, decoded as a text part is."""
        return [_Fragment("html" if html else "plain", self._text(part, where, html), where)
                for part, where, html in self.named_texts]

    def _content(self, part: Message) -> bytes | Streamed:
        """A leaf's decoded content: streamed from the raw message when it is a long base64 run,
        otherwise decoded the ordinary way."""
        payload = part.get_payload()
        if (isinstance(payload, str) and self.stash.holds(payload)
                and str(part.get("content-transfer-encoding", "")).lower() == "base64"):  # as get_payload reads it
            pieces = self.stash.pieces(payload)
            try:
                return Streamed(lambda: base64_chunks(pieces))
            except NotStreamable:
                pass
        return self._payload_bytes(part)

    def _payload_bytes(self, part: Message) -> bytes:
        """The transfer-decoded content of a leaf part, runs held out of the tree put back."""
        stored = getattr(part, "_payload", None)  # get_payload() would hand 8-bit text back re-decoded
        if isinstance(stored, str) and str(part.get("content-transfer-encoding", "")).strip().lower() == \
                "quoted-printable":
            _check_quoted_printable(part, stored)
        if isinstance(stored, str) and self.stash.holds(stored):
            part.set_payload(self.stash.restore(stored))
            try:
                return _payload_bytes(part)
            finally:
                part.set_payload(stored)
        return _payload_bytes(part)

    def _text(self, part: Message, where: str, html: bool) -> str:
        payload = self._payload_bytes(part)
        charset = part.get_content_charset(None)
        if charset is None and html:
            declared = _HTML_META_CHARSET.search(payload[:4096])
            charset = declared.group(1).decode("ascii") if declared else None
        text, defect = decode_bytes(payload, charset, self.guesses)
        if defect:
            self.defects.append(f"{where}: {defect}")
        text = _clean_body(text)
        if not html and str(part.get_param("format", "")).lower() == "flowed":
            text = unflow(text, delsp=str(part.get_param("delsp", "")).lower() == "yes")
        return text

    def _check_transfer_encoding(self, part: Message, where: str) -> None:
        encoding = (_raw_header(part, "content-transfer-encoding") or "7bit").strip().lower()
        if encoding not in _KNOWN_TRANSFER_ENCODINGS:
            self.defects.append(
                f"{where}: unknown Content-Transfer-Encoding {encoding[:40]!r}, content taken as is")

    def _filename(self, part: Message, where: str) -> str:
        """The part's file name: RFC 2231 values first (filename*, name*), then plain ones."""
        found = []
        for header, name in _FILE_NAME_PARAMETERS:
            parameter = read_parameter(_raw_header_bytes(part, header), name)
            # Worded as bounded.py words them for the parser, so that one found by both is named once.
            self.defects.extend(f"{where}: invalid header ({header}: parameter {ignored}, ignored)"
                                for ignored in parameter.ignored)
            found.append((name, parameter))
        guesses = self._guesses_for(part, where)
        for name, parameter in found:
            if parameter.extended is None:
                continue
            extended = parameter.extended
            text, defect = decode_bytes(extended.octets, extended.charset or None, guesses)
            if not text.strip():
                continue
            if defect:
                self.defects.append(f"{where} file name: {defect}")
            if extended.missing:
                missing = ", ".join(extended.missing)
                self.defects.append(f"{where} file name: {name}* continuation(s) {missing} missing, the others joined")
            if parameter.plain is not None:
                # Webmail often sends both, the plain one with '?' for every non-ASCII character.
                plain = self._plain_name(parameter.plain, guesses, where, report=False)
                if plain != text:
                    self.defects.append(f"{where} file name: {name}={plain[:100]!r} and "
                                        f"{name}*={text[:100]!r} differ, {name}* used")
            return text
        for _name, parameter in found:
            if parameter.plain is not None:
                text = self._plain_name(parameter.plain, guesses, where)
                if text.strip():
                    return text
        return ""

    def _plain_name(self, value: bytes, guesses: list[Guess], where: str, report: bool = True) -> str:
        """A plain parameter value: ASCII, encoded words (common, if not allowed) or raw 8-bit."""
        text, defects = decode_header_value(value.decode("ascii", "surrogateescape"), guesses)
        if report:
            self.defects.extend(f"{where} file name: {defect}" for defect in defects)
        return text

    def _guesses_for(self, part: Message, where: str) -> list[Guess]:
        """The part's own charset first, then the message's."""
        label = part.get_param("charset", None)
        own: list[Guess] = [(label, f"of {where}")] if isinstance(label, str) else []
        return own + self.guesses

    def _attached_message(self, part: Message, label: str, where: str, origin: str,
                          depth: int) -> None:
        attached, content = self._unwrap_message(part, where, depth)
        original = self._filename(part, where)
        subject = collapse_whitespace(decode_header_value(_raw_header(attached, "subject"))[0])
        self._add_attachment(content, original, part.get_content_type(), origin, where,
                             name_hint=original or (f"{subject}.eml" if subject else ""))
        # IMAP numbering: the parts of a multipart message attached as part 2 are 2.1, 2.2, ...;
        # the body of a single-part one is 2.1. Its body text is not part of this message's body.
        multipart_root = attached.get_content_maintype() == "multipart" and attached.is_multipart()
        root_label = label if multipart_root else _child_label(label, 1)
        fragments = self.visit(attached, root_label, "message/rfc822", depth + 1)
        if origin == "mime" and len(self.forwarded_texts) < self.limits.max_parts:
            self.forwarded_texts.append(fragments)

    def _unwrap_message(self, part: Message, where: str, depth: int) -> tuple[Message, bytes | Streamed]:
        """The attached message, parsed, and its bytes."""
        payload = part.get_payload()
        encoding = _raw_header(part, "content-transfer-encoding").strip().lower()
        if (isinstance(payload, list) and payload and isinstance(payload[0], Message)
                and encoding not in ("base64", "quoted-printable")):
            try:
                return payload[0], self._flattened(part)
            except RecursionError:
                self.defects.append(f"{where}: attached message nested too deeply to re-serialise")
                return payload[0], b""
            except (AttributeError, TypeError):
                # Parsing stopped inside it at the nesting limit (bounded.py), leaving a part with
                # no body, which the generator cannot write. What was parsed is kept, that part empty.
                for inner in payload[0].walk():
                    if inner.get_payload() is None:
                        inner.set_payload("")
                self.defects.append(f"{where}: attached message cut short at the nesting limit "
                                    "(whole in the original)")
                return payload[0], self._flattened(part)
        content = b"".join(raw_chunks(self.stash.restore_bytes(self._flatten_payload(part))))
        if encoding == "base64" and _HEADER_FIELD_FIRST.match(content):
            # A message written out as it is under a base64 label (base64 has no ":"): decoding it
            # would leave noise in place of the message and everything attached to it.
            part.defects.append(NotBase64Defect("a message under Content-Transfer-Encoding base64, its first "
                                                "line a header field: content taken as is"))
        elif encoding == "base64":  # not allowed for message/rfc822, but sent anyway
            content, defect = lenient_b64decode(content)
            if defect:
                self.defects.append(f"{where}: {defect}")
        elif encoding == "quoted-printable":
            content = binascii.a2b_qp(content)
        # Parsed here, not by the parser of the whole message: within what is left of its budget.
        return parse(content, self.budget, depth=depth + 1, stash=self.stash), content

    def _flattened(self, part: Message) -> bytes | Streamed:
        """The body of a part as bytes again, runs held out of the tree streamed from the raw message."""
        pieces = self.stash.restore_bytes(self._flatten_payload(part))
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return Streamed(lambda: raw_chunks(pieces))

    def _flatten_payload(self, part: Message) -> bytes:
        """The body of a part the parser split into sub-messages, as bytes again (with the
        markers of the runs held out of the tree)."""
        payload = part.get_payload()
        if isinstance(payload, str):
            return payload.encode("ascii", "surrogateescape").lstrip(b"\r\n")
        items = payload if isinstance(payload, list) else [payload]
        sub_messages = [item for item in items if isinstance(item, Message)]
        buffer = io.BytesIO()
        generator = BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0)
        for sub_message in sub_messages:
            generator.flatten(sub_message, linesep=self._linesep)
        flattened = buffer.getvalue()
        if len(sub_messages) == 1 and not sub_messages[0].keys():
            # A header-less sub-message is written with a leading blank line.
            flattened = flattened.removeprefix(self._linesep.encode())
        return flattened

    def _tnef(self, content: bytes, filename: str, content_type: str, origin: str,
              where: str) -> None:
        from .tnef import extract_tnef  # tnefparse is loaded by the first winmail.dat

        try:
            extracted = extract_tnef(content)
        except Exception as exc:
            self.defects.append(
                f"{where}: TNEF could not be decoded ({type(exc).__name__}: {exc}), kept as is")
            self._add_attachment(content, filename, content_type, origin, where)
            return
        self.defects.extend(f"{where}: {defect}" for defect in extracted.defects)
        if not extracted.files or extracted.cut_short:
            # Nothing to list in its place (e.g. only an RTF body), or files that may have come out
            # short: list the container itself, to be opened by another program.
            self._add_attachment(content, filename, content_type, origin, where)
        for inner in extracted.files:
            self._add_attachment(inner.content, inner.name, inner.declared_type, "tnef", where)
        if extracted.body_text and extracted.body_text.strip():
            self.tnef_bodies.append(_Fragment("plain", _clean_body(extracted.body_text), where))
        elif extracted.body_html:
            self.tnef_bodies.append(_Fragment("html", _clean_body(extracted.body_html), where))

    def _add_attachment(self, content: bytes | Streamed, original_filename: str, declared_type: str,
                        origin: str, where: str, name_hint: str = "") -> None:
        if len(self.attachments) >= self.limits.max_parts:  # files inside winmail.dat count too
            if not self.attachments_left_out:
                self.defects.append(f"{where}: more than {self.limits.max_parts} attachments; "
                                    "the rest are not listed (they are in the original)")
            self.attachments_left_out += 1
            return
        # A name from RFC 2231 or from winmail.dat has not been through the header decoder.
        name_defects: list[str] = []
        original_filename = clean_header_text(original_filename, name_defects)
        self.defects.extend(f"{where} file name: {defect}" for defect in name_defects)
        if isinstance(content, Streamed):
            size, sha256, head, read = content.size, content.sha256, content.head, content.read
        else:
            size, sha256, head = len(content), hashlib.sha256(content).hexdigest(), content
            read = _holding(content)
        try:
            # libmagic reads no more of a file than the head a streamed attachment keeps.
            detected_type = magic.from_buffer(head, mime=True)
        except Exception as exc:
            self.defects.append(f"{where}: content type could not be detected ({exc})")
            detected_type = "application/octet-stream"
        if declared_type in ("message/rfc822", "message/global"):
            extension = ".eml"  # for a mail program to open; libmagic calls many a message text/plain
        else:
            extension = (mimetypes.guess_extension(detected_type)
                         or mimetypes.guess_extension(declared_type) or ".bin")
        number = len(self.attachments) + 1
        stem = "message" if declared_type.startswith("message/") else "attachment"
        filename = safe_filename(name_hint or original_filename, f"{stem}-{number}{extension}")
        self.attachments.append(Attachment(
            filename=self._unique(filename),
            original_filename=original_filename,
            declared_type=declared_type,
            detected_type=detected_type,
            size=size,
            sha256=sha256,
            origin=origin,
            read=read,
        ))

    def _unique(self, filename: str) -> str:
        key = filename.casefold()
        candidate, number = filename, self._next_number.get(key, 1)
        if number > 1:
            candidate = numbered_variant(filename, number)
        while candidate.casefold() in self._taken_names:
            number += 1
            candidate = numbered_variant(filename, number)
        self._next_number[key] = number + 1
        self._taken_names.add(candidate.casefold())
        return candidate


def _child_label(label: str, number: int) -> str:
    """Part numbers as IMAP gives them: 1, 2, 2.1, 2.2, ..."""
    return f"{label}.{number}" if label else str(number)


def _raw_header(message: Message, name: str) -> str:
    """The first value of a header as stored, '' if absent (compat32 `get` may wrap 8-bit values)."""
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            return str(value)
    return ""


def _raw_header_bytes(message: Message, name: str) -> bytes:
    """The first value of a header as it was sent, 8-bit bytes and all, unfolded."""
    value = _raw_header(message, name).replace("\r", "").replace("\n", "")
    return value.encode("utf-8", "surrogateescape")


def _holding(content: bytes) -> Callable[[], bytes]:
    return lambda: content


class InvalidQuotedPrintableDefect(MessageDefect):
    """An "=" in quoted-printable that is no escape: decoders keep it as written, and so does the letter."""


def _check_quoted_printable(part: Message, payload: str) -> None:
    """Adds a defect to the part (once) for each kind of "=" its decoding keeps as written."""
    invalid = [found.group() + payload[found.end():found.end() + 2] for found in _INVALID_QP.finditer(payload)]
    if invalid and not any(isinstance(defect, InvalidQuotedPrintableDefect) for defect in part.defects):
        part.defects.append(InvalidQuotedPrintableDefect(
            f"{len(invalid)} \"=\" starting no escape, kept as written; the first: {invalid[0]!r}"))


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=\s]")
_HEADER_FIELD_FIRST = re.compile(rb"\s*[!-9;-~]+[ \t]*:")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WORDS = re.compile(r"\S[ \t]+\S")  # two words on one line: base64 has no blank inside a line


_UUENCODE = frozenset({"uuencode", "x-uuencode", "uue", "x-uue"})


class NotUuencodedDefect(MessageDefect):
    """Content labelled uuencode that Python's decoder could not read and handed back as it came."""


class NotBase64Defect(MessageDefect):
    """Content labelled base64 that is none: a mailer labelled raw content base64."""


def _not_base64(kept: str) -> NotBase64Defect | None:
    """Why content labelled base64 is none (to be taken as it came), or None to decode it.

    8-bit bytes are never base64; ASCII text is told by its lines: words with blanks between them,
    and most lines holding what base64 has not (punctuation, "=" before the end, blanks). Junk
    spoiling real base64 (a stray "!!" after it, a few bytes in a large file) has neither, and is
    skipped in decoding, as the standard library skips it."""
    if not kept.isascii():
        if len(_NOT_BASE64.findall(kept)) * 20 >= len(kept):  # a twentieth or more
            return NotBase64Defect("8-bit bytes under Content-Transfer-Encoding base64, content taken as is")
        return None
    if not _WORDS.search(kept):
        return None
    lines = [line for line in (line.strip() for line in kept.splitlines()) if line]
    invalid = [line for line in lines if not _BASE64_LINE.fullmatch(line)]
    if len(invalid) * 2 < len(lines):
        return None
    return NotBase64Defect(f"text under Content-Transfer-Encoding base64, {len(invalid)} of its {len(lines)} "
                           f"line(s) no base64 (the first: {invalid[0][:60]!r}), content taken as is")


def _payload_bytes(part: Message) -> bytes:
    """The transfer-decoded content of a leaf part."""
    kept = getattr(part, "_payload", None)  # get_payload() would hand 8-bit bytes back re-decoded
    if (isinstance(kept, str) and str(part.get("content-transfer-encoding", "")).strip().lower() == "base64"
            and (not_base64 := _not_base64(kept)) is not None):
        # Decoding it as base64 would give noise in place of the letter's words (or of a file's
        # bytes); the content is taken as it came, and named.
        if not any(isinstance(defect, NotBase64Defect) for defect in part.defects):
            part.defects.append(not_base64)
        return kept.encode("utf-8", "surrogateescape")
    payload = part.get_payload(decode=True)
    stored = part.get_payload()
    if (isinstance(stored, str) and stored.strip() and isinstance(payload, bytes)
            and str(part.get("content-transfer-encoding", "")).strip().lower() in _UUENCODE
            and payload == stored.encode("ascii", "surrogateescape")):
        # Python's decoder hands content that is no uuencode (no begin line, damaged lines) back as
        # it came, without a word: the content is kept so, and named.
        if not any(isinstance(defect, NotUuencodedDefect) for defect in part.defects):
            part.defects.append(NotUuencodedDefect("Content-Transfer-Encoding uuencode, but no uuencoded file "
                                                   "could be read from it: content taken as is"))
    if isinstance(stored, str) and any(isinstance(d, InvalidBase64LengthDefect) for d in part.defects):
        # One character too many for base64 (a stray one at the end): Python's decoder then hands
        # back the base64 text itself; what precedes it decodes all the same.
        payload, _ = lenient_b64decode(stored.encode("utf-8", "surrogateescape"))
    return payload if isinstance(payload, bytes) else b""


def _choose_alternative(options: list[list[_Fragment]]) -> list[_Fragment]:
    """Plain text when an alternative has some; otherwise the richest alternative with content."""
    for option in options:
        if option and all(f.kind == "plain" for f in option) and any(f.meaningful() for f in option):
            return option
    for option in reversed(options):
        if any(fragment.meaningful() for fragment in option):
            return option
    return []


def _describe_defect(defect: MessageDefect) -> str:
    name = type(defect).__name__.removesuffix("Defect")
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()
    detail = str(defect)
    return f"{words} ({detail})" if detail else words
