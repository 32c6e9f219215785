"""Realistic test faxes: pages rendered at fax geometry, stored as TIFF Class F or as a PDF."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont, TiffTags

# Noto Sans CJK (Debian package fonts-noto-cjk) has simplified and traditional Han, Latin and
# digits in one face; collection index 2 is the simplified-Chinese face.
FONT_PATH = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
FONT_INDEX = 2

FAX_WIDTH = 1728  # dots per scan line of an ISO A4 fax (215 mm at 8 dots/mm)
FINE_ROWS = 2286  # 297 mm at 7.7 lines/mm
X_DPI = 204.0
Y_DPI = {"fine": 196.0, "standard": 98.0}
FONT_POINTS = 12.0  # a typical letter's type size, as it reaches the fax at 204 dpi
LEFT_MARGIN, TOP_MARGIN, LINE_SPACING = 140, 150, 1.6

# Phrases tesseract 5.3 (Debian 12, eng+chi_sim+chi_tra, --psm 6) read exactly, in the right
# script, at fine and standard resolution, from TIFF and PDF, wherever they stand on the page.
# Many phrases do not: with both Chinese models loaded, tesseract picks the script word by word,
# and e.g. "传真通知书", "请确认交货日期" and "发票已寄出" often come back in traditional
# characters, "國際貿易部" always in simplified ones.
ENGLISH = ["FAX TRANSMISSION", "To: Example Trading Co.", "Re: Purchase order 4711",
           "Please confirm the delivery date."]
ENGLISH_WORDS = ["FAX", "TRANSMISSION", "Example", "Trading", "Purchase", "order", "4711", "Please",
                 "confirm", "delivery"]
SIMPLIFIED = ["关于采购订单的咨询", "报价单见附件", "请尽快回复"]
TRADITIONAL = ["關於採購訂單的諮詢", "報價單見附件", "請盡快回覆"]

_TAG_IDS = {info.name: tag for tag, info in TiffTags.TAGS_V2.items()}
_PHOTOMETRIC = 262


def render_page(lines: list[str], *, resolution: str = "fine") -> Image.Image:
    """A fax page (mode "1", 1728 dots wide, A4 long) carrying `lines` in black on white."""
    if resolution not in Y_DPI:
        raise ValueError(f"resolution must be 'fine' or 'standard', not {resolution!r}")
    page = _render_fine(tuple(lines)).copy()
    if resolution == "standard":
        # A fax machine in standard mode scans every other line; NEAREST at exactly half the
        # height keeps every other row and blends nothing.
        page = page.resize((FAX_WIDTH, FINE_ROWS // 2), Image.Resampling.NEAREST)
    return page


def tiff_fax(pages: list[list[str]], *, resolution: str = "fine", compression: str = "group4",
             tags: Mapping[str, str] | None = None, white_is_zero: bool = True) -> bytes:
    """A multi-page TIFF as a fax machine's drop folder holds it.

    `tags` (ImageDescription, DateTime, Make, ...) are written on every page, non-ASCII text
    as UTF-8. With `white_is_zero` (TIFF Class F) bit 0 is white, so the CCITT codes run white
    over the paper as a real fax's do; otherwise Pillow's default, BlackIsZero.
    """
    if not pages:
        raise ValueError("a fax has at least one page")
    images = [render_page(lines, resolution=resolution) for lines in pages]
    if white_is_zero:
        images = [ImageChops.invert(image) for image in images]
    info = {_TAG_IDS[key]: value.encode("utf-8") for key, value in (tags or {}).items()}
    buffer = io.BytesIO()
    images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:], compression=compression,
                   dpi=(X_DPI, Y_DPI[resolution]), tiffinfo=info)
    data = buffer.getvalue()
    # Pillow always writes BlackIsZero; the pixels were inverted, so relabelling every page
    # WhiteIsZero restores the picture.
    return _set_photometric(data, 0) if white_is_zero else data


def pdf_fax(pages: list[list[str]], *, resolution: str = "fine",
            info: Mapping[str, str | datetime] | None = None) -> bytes:
    """A PDF with one CCITT G4 image per page, as fax-to-mail services send.

    `info` may hold Title, Author, Subject, Creator, Producer (text) and CreationDate (datetime).
    """
    if not pages:
        raise ValueError("a fax has at least one page")
    images = [render_page(lines, resolution=resolution) for lines in pages]
    options: dict[str, object] = {}
    for key, value in (info or {}).items():
        if key == "CreationDate":
            assert isinstance(value, datetime)
            moment = value.astimezone(UTC) if value.tzinfo else value
            options["creationDate"] = time.struct_time(moment.timetuple())
        else:
            options[key.lower()] = value
    buffer = io.BytesIO()
    # A page image with different x and y dpi yields an A4 page box either way.
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:],
                   dpi=(X_DPI, Y_DPI[resolution]), **options)
    return buffer.getvalue()


def corrupt(data: bytes, *, keep: float = 2 / 3) -> bytes:
    """`data` cut off part-way, as an interrupted transfer into the drop folder leaves it."""
    return data[: max(8, int(len(data) * keep))]


@lru_cache(maxsize=32)
def _render_fine(lines: tuple[str, ...]) -> Image.Image:
    if not FONT_PATH.exists():
        raise RuntimeError(f"{FONT_PATH} is missing: apt-get install fonts-noto-cjk")
    size = round(FONT_POINTS / 72 * X_DPI)
    font = ImageFont.truetype(str(FONT_PATH), size, index=FONT_INDEX)
    page = Image.new("L", (FAX_WIDTH, FINE_ROWS), 255)
    draw = ImageDraw.Draw(page)
    y = TOP_MARGIN
    for line in lines:
        draw.text((LEFT_MARGIN, y), line, font=font, fill=0)
        y += round(size * LINE_SPACING)
    # A fax scanner thresholds; it does not dither.
    return page.point(lambda value: 255 if value >= 128 else 0).convert("1", dither=Image.Dither.NONE)


def _set_photometric(data: bytes, value: int) -> bytes:
    patched = bytearray(data)
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack_from(order + "I", data, 4)[0]
    while offset:
        entries = struct.unpack_from(order + "H", data, offset)[0]
        for index in range(entries):
            position = offset + 2 + 12 * index
            tag, kind, _count = struct.unpack_from(order + "HHI", data, position)
            if tag == _PHOTOMETRIC and kind == 3:
                struct.pack_into(order + "H", patched, position + 8, value)
        offset = struct.unpack_from(order + "I", data, offset + 2 + 12 * entries)[0]
    return bytes(patched)
