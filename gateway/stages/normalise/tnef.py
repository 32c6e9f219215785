"""Files and body text inside TNEF (winmail.dat) attachments."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tnefparse import properties as mapi
from tnefparse.tnef import TNEF, TNEFAttachment

from .charsets import charset_for_windows_codepage, decode_bytes

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
    cut_short: bool = False  # the stream ends inside an attribute: what it held is not all there


def extract_tnef(data: bytes) -> TnefContent:
    """Decode a TNEF stream; raises on a stream tnefparse cannot read at all."""
    result = TnefContent()
    stream = TNEF(_decodable_attributes(data, result), do_checksum=True)
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


# Only the attributes needed are handed to tnefparse: the code page, the body, attachment records
# and MAPI property lists. It decodes others without bounds (recipient tables) or fails the
# whole stream on them (sender triples, dates, strings in a code page Python lacks).
_WANTED_ATTRIBUTES = frozenset({
    TNEF.ATTOEMCODEPAGE, TNEF.ATTBODY, TNEF.ATTMAPIPROPS, TNEF.ATTATTACHRENDDATA,
    TNEF.ATTATTACHTITLE, TNEF.ATTATTACHDATA, TNEF.ATTATTACHMENT,
})
_MAPI_PROPERTY_LISTS = frozenset({TNEF.ATTMAPIPROPS, TNEF.ATTATTACHMENT})
_HEADER_SIZE = 6  # signature and key
_RECORD_OVERHEAD = 11  # level, id, length before the data; checksum after it
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _decodable_attributes(data: bytes, result: TnefContent) -> bytes:
    """The stream with only the wanted attributes, each safe for tnefparse to decode."""
    defects = result.defects
    kept = [data[:_HEADER_SIZE]]
    offset = _HEADER_SIZE
    in_attachment = False
    # Records are delimited exactly as tnefparse delimits them, so both see the same ones.
    while offset + TNEF.MIN_OBJ_SIZE < len(data):
        level, name = data[offset], _U16(data, offset + 1)[0]
        declared = _U32(data, offset + 5)[0] + _RECORD_OVERHEAD
        if declared > len(data) - offset and not result.cut_short:
            # A winmail.dat cut off in transit or by a size limit: tnefparse reads the last record
            # from what is there, so a file inside comes out short or empty, without a word.
            result.cut_short = True
            defects.append("TNEF stream cut short inside an attribute; the winmail.dat is listed as it came")
        length = min(len(data) - offset, declared)
        record = data[offset:offset + length]
        offset += length
        in_attachment = in_attachment or name == TNEF.ATTATTACHRENDDATA
        if name not in _WANTED_ATTRIBUTES or (level == TNEF.LVL_ATTACHMENT and not in_attachment):
            continue
        if name in _MAPI_PROPERTY_LISTS and not _mapi_counts_plausible(record[9:-2]):
            defects.append("TNEF MAPI property list with impossible counts skipped")
            continue
        kept.append(record)
    return b"".join(kept)


# MAPI property value sizes as tnefparse reads them.
_FIXED_VALUE_SIZES = {
    0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
    0x0014: 8, 0x0040: 8, 0x0048: 16,
}
_SIZED_VALUE_TYPES = frozenset({0x0000, 0x000D, 0x001E, 0x001F, 0x0102})
_MULTI_VALUE_FLAG = 0x1000
_NAMED_PROPERTY_MIN_ID = 0x8000


def _mapi_counts_plausible(data: bytes) -> bool:
    """Walk a MAPI property list as tnefparse does; False if a count exceeds the data's size.

    tnefparse loops over a declared count even past the end of the data, so one forged count
    of four billion would stall decoding for many minutes.
    """
    limit = len(data)
    try:
        count, offset = _U32(data, 0)[0], 4
        if count > limit:
            return False
        for _ in range(count):
            if offset >= limit:
                break
            prop_type, prop_id = struct.unpack_from("<HH", data, offset)
            offset += 4
            if prop_id >= _NAMED_PROPERTY_MIN_ID:
                kind = _U32(data, offset + 16)[0]
                offset += 20
                if kind == 0:
                    offset += 4
                else:
                    name_length = _U32(data, offset)[0]
                    offset += 4 + name_length + (-name_length % 4)
            multi_count = None
            if prop_type & _MULTI_VALUE_FLAG:
                prop_type ^= _MULTI_VALUE_FLAG
                multi_count = _U32(data, offset)[0]
                offset += 4
                if multi_count > limit:
                    return False
            for _ in range(multi_count or 1):
                if prop_type in _FIXED_VALUE_SIZES:
                    offset += _FIXED_VALUE_SIZES[prop_type]
                elif prop_type in _SIZED_VALUE_TYPES:
                    items = 1
                    if not multi_count:
                        items = _U32(data, offset)[0]
                        offset += 4
                    for _ in range(items):  # each item reads its length, so ends with the data
                        item_length = _U32(data, offset)[0]
                        offset += 4 + item_length + (-item_length % 4)
                else:
                    return True  # tnefparse stops at an unknown type
            if (multi_count or 1) % 2 and prop_type in (0x0002, 0x000B):
                offset += 2
    except struct.error:
        pass  # tnefparse stops where the data ends, and so does this walk
    return True


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


def _body(value: object, charset: str, label: str, defects: list[str]) -> str:
    """A TNEF body as text: bytes in the stream's code page, NUL padding removed."""
    if isinstance(value, bytes):
        text, defect = decode_bytes(value.rstrip(b"\x00"), charset)
        if defect:
            defects.append(f"{label}: {defect}")
        return text
    return value.rstrip("\x00") if isinstance(value, str) else ""


def _read_body(stream: TNEF, charset: str, result: TnefContent) -> None:
    result.body_text = _body(stream.body, charset, "TNEF body", result.defects)
    result.body_html = _body(stream.htmlbody, charset, "TNEF HTML body", result.defects)
    if stream.has_body() and not (result.body_text or result.body_html):
        result.defects.append("TNEF body is compressed RTF only; its text was not extracted")
