"""Files and body text inside TNEF (winmail.dat) attachments."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tnefparse import properties as mapi
from tnefparse.tnef import TNEF, TNEFAttachment

from .charsets import charset_for_windows_codepage, decode_bytes

TNEF_CONTENT_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_DEFAULT_CHARSET = "cp1252"  # what Outlook assumes when a TNEF stream names no code page


@dataclass
class TnefFile:
    name: str  # decoded; '' if the stream names none
    declared_type: str  # the MIME type the stream records, else application/octet-stream
    content: bytes


@dataclass
class TnefContent:
    files: list[TnefFile] = field(default_factory=list)
    body_text: str | None = None
    body_html: str | None = None
    defects: list[str] = field(default_factory=list)


def is_tnef(content_type: str, filename: str) -> bool:
    return content_type in TNEF_CONTENT_TYPES or filename.lower() == "winmail.dat"


def extract_tnef(data: bytes) -> TnefContent:
    """Decode a TNEF stream; raises on a stream tnefparse cannot read at all."""
    stream = TNEF(data, do_checksum=True)
    result = TnefContent()
    charset = _stream_charset(stream)
    bad_checksums = sum(1 for obj in stream.objects if not obj.good_checksum)
    if bad_checksums:
        result.defects.append(f"{bad_checksums} TNEF attribute(s) with a bad checksum")
    for attachment in stream.attachments:
        name, defect = _attachment_name(attachment, charset)
        if defect:
            result.defects.append(f"TNEF attachment name: {defect}")
        content = attachment.data if isinstance(attachment.data, bytes) else b""
        result.files.append(TnefFile(name, _declared_type(attachment), content))
    _read_body(stream, charset, result)
    return result


def _stream_charset(stream: TNEF) -> str:
    for obj in stream.objects:
        if obj.name == TNEF.ATTOEMCODEPAGE and len(obj.data) >= 4:
            return charset_for_windows_codepage(struct.unpack_from("<I", obj.data)[0])
    return _DEFAULT_CHARSET


def _attachment_name(attachment: TNEFAttachment, charset: str) -> tuple[str, str | None]:
    for prop in attachment.mapi_attrs:
        if prop.name == mapi.MAPI_ATTACH_LONG_FILENAME and isinstance(prop.data, str) and prop.data:
            return prop.data, None
    # attAttachTitle is kept as raw bytes in the stream's code page; tnefparse's own `name`
    # decodes them as UTF-8, which garbles or rejects any non-ASCII name.
    title = attachment._name
    if isinstance(title, bytes):
        return decode_bytes(title.split(b"\x00", 1)[0], charset)
    return title.strip("\x00"), None


def _declared_type(attachment: TNEFAttachment) -> str:
    for prop in attachment.mapi_attrs:
        if prop.name == mapi.MAPI_ATTACH_MIME_TAG and isinstance(prop.data, str) and "/" in prop.data:
            return prop.data.strip().lower()
    return "application/octet-stream"


def _read_body(stream: TNEF, charset: str, result: TnefContent) -> None:
    if isinstance(stream.body, bytes):
        text, defect = decode_bytes(stream.body.rstrip(b"\x00"), charset)
        if defect:
            result.defects.append(f"TNEF body: {defect}")
        result.body_text = text
    elif isinstance(stream.body, str):
        result.body_text = stream.body.rstrip("\x00")
    if isinstance(stream.htmlbody, bytes):
        html, defect = decode_bytes(stream.htmlbody.rstrip(b"\x00"), charset)
        if defect:
            result.defects.append(f"TNEF HTML body: {defect}")
        result.body_html = html
    elif isinstance(stream.htmlbody, str):
        result.body_html = stream.htmlbody.rstrip("\x00")
    if stream.has_body() and not (result.body_text or result.body_html):
        result.defects.append("TNEF body is compressed RTF only; its text was not extracted")
