"""File names from untrusted mail, made safe to create on disk and in archives; media types made
safe to write in a part that carries a file."""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote_to_bytes

from .charsets import decode_bytes, resolve_charset
from .headers import collapse_whitespace, decode_header_value

MAX_NAME_BYTES = 200
_MAX_EXTENSION_BYTES = 16
# Device names Windows will not open as files, with any extension (Microsoft's "Naming Files,
# Paths, and Namespaces": COM0 and LPT0, and the superscript digits, count as well).
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
)
# Characters Windows refuses in names; replaced so archives open everywhere.
_WINDOWS_FORBIDDEN = str.maketrans({ch: "_" for ch in '<>:"|?*'})
# Controls, format characters (bidi overrides that disguise extensions), surrogates, line separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_RFC2231_VALUE = re.compile(r"^([A-Za-z0-9_.:-]+)'([A-Za-z0-9-]*)'(.*%[0-9A-Fa-f]{2}.*)$", re.S)


def safe_filename(name: str, fallback: str = "attachment") -> str:
    """A name without directories, controls, leading dots or reserved device names.

    Encoded names (RFC 2231 or RFC 2047) are decoded first. The result is at most 200 bytes of
    UTF-8 with the extension kept; if nothing usable is left, `fallback` (made safe too) is used.
    """
    decoded = _decode_filename(name)
    cleaned = _sanitise(decoded)
    if (cleaned and _visible(decoded).lstrip(" ").startswith(".") and "." not in cleaned
            and mimetypes.guess_type(f"x.{cleaned}")[0]):
        # Nothing before a known extension but what is dropped (".pdf", or bidi controls then
        # ".pdf"): it goes on the fallback's stem instead of becoming the whole name ("pdf").
        stem, _ = _split_extension(_sanitise(fallback) or "attachment")
        return _sanitise(f"{stem}.{cleaned}")
    if cleaned:
        return cleaned
    return _sanitise(fallback) or "attachment"


def numbered_variant(name: str, number: int) -> str:
    """`name` with '-<number>' before its extension, still within the length limit."""
    stem, extension = _split_extension(name)
    suffix = f"-{number}{extension}"
    return _truncate_utf8(stem, MAX_NAME_BYTES - len(suffix.encode())) + suffix


def safe_join(root: Path, name: str) -> Path:
    """root/name for a name that is one plain entry of root (resolved), and not a symbolic link
    there; raises ValueError otherwise. What is written at the result lands in root itself, not
    where a link points (open it with O_NOFOLLOW all the same: a link can appear later)."""
    if not name or "\x00" in name or "/" in name or name in (".", ".."):
        raise ValueError(f"unusable file name {name!r}")
    base = Path(root).resolve()
    candidate = base / name
    if candidate.is_symlink():
        raise ValueError(f"{name!r} is a symbolic link in {str(base)!r}")
    return candidate


def _decode_filename(name: str) -> str:
    encoded = _RFC2231_VALUE.match(name)
    if encoded and resolve_charset(encoded.group(1)):
        text, _ = decode_bytes(unquote_to_bytes(encoded.group(3)), encoded.group(1))
        return text
    text, _ = decode_header_value(name)
    return text


def _visible(name: str) -> str:
    """The name's last path part, without the characters that are dropped, Windows' forbidden ones replaced."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return collapse_whitespace(name.translate(_WINDOWS_FORBIDDEN))  # U+3000 and the like stay


def _sanitise(name: str) -> str:
    name = _visible(name).strip(". ")
    if not name:
        return ""
    if name.split(".", 1)[0].strip().upper() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, extension = _split_extension(name)
    return _truncate_utf8(stem, MAX_NAME_BYTES - len(extension.encode())) + extension


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, extension = name.rpartition(".")
    if dot and stem and len(extension.encode()) <= _MAX_EXTENSION_BYTES and " " not in extension:
        return stem, "." + extension
    return name, ""


def _truncate_utf8(text: str, limit: int) -> str:
    # Cutting the encoded form can split a character; the partial tail is dropped.
    cut = text.encode()[:max(limit, 0)].decode("utf-8", "ignore")
    return cut.rstrip(". ") if cut != text else cut


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def safe_media_type(declared: str) -> str:
    """A file's media type as a part that carries it may say it: `type/subtype` without parameters,
    never a multipart or message type (which would make the file a structure of the mail, its
    boundary chosen by whoever uploaded it); anything else is application/octet-stream. A browser
    sends what the uploader's system guesses, or whatever a crafted form says."""
    value = declared.split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(value) or value.startswith(("multipart/", "message/")):
        return "application/octet-stream"
    return value
