"""Reading a fax file (TIFF Class F or PDF): its pages, what it says about itself, its page images.

The type and the page count always come from the content, never from a file name. A TIFF is
checked twice: its directory chain and strip table must lie inside the file (this is what
catches a transfer that was cut off), and every page must decode.

A paper letter's scans are read the same way (`read_scan`), and may also be JPEG or PNG
pictures of one page each (kind "image").
"""

from __future__ import annotations

import io
import math
import re
import struct
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import magic

if TYPE_CHECKING:
    # Pillow is loaded by the first fax or scan read: every registrar process imports this module
    # to recognise a fax, and most never see one.
    from PIL import Image
    import pypdf
    from pypdf.generic import DictionaryObject

from gateway.stages.normalise.charsets import decode_bytes

# PDF pages are rendered at the fax's own horizontal resolution when it is known (so the
# scanned raster maps 1:1 across the line), otherwise at this one.
RENDER_DPI = 200.0
# A picture that says nothing sensible about its resolution (cameras write 72) is taken to be a
# scan at this one: what OCR assumes of the text's size.
SCAN_DPI = 300.0


class FaxUnreadable(Exception):
    """The file is not a fax document that can be read; the message names the file and the fault."""


@dataclass(frozen=True)
class FaxPage:
    width: int
    height: int
    x_dpi: float
    y_dpi: float
    compression: str  # "group3", "group4", "lzw", "none", ...; for PDF that of the page image, or "vector"

    @property
    def resolution(self) -> str:
        """"fine" (about 196 lines per inch), "standard" (about 98) or "other"."""
        if 180.0 <= self.y_dpi <= 215.0:
            return "fine"
        if 90.0 <= self.y_dpi <= 108.0:
            return "standard"
        return "other"


@dataclass(frozen=True)
class FaxDocument:
    kind: str  # "tiff" | "pdf" | "image" (a JPEG or PNG scan, one page)
    pages: list[FaxPage]
    tags: dict[str, str]

    @property
    def page_count(self) -> int:
        return len(self.pages)


def read_fax(data: bytes, name: str = "fax") -> FaxDocument:
    """Identify, check and describe a fax file; raises FaxUnreadable if it cannot be used."""
    kind = _detect_kind(data, name)
    if kind == "tiff":
        return _read_tiff(data, name)
    return _read_pdf(data, name)


def read_scan(data: bytes, name: str = "scan") -> FaxDocument:
    """Identify, check and describe a scan of a paper letter: a TIFF or PDF (checked as a fax is)
    or a JPEG or PNG picture of one page. Raises FaxUnreadable naming the file and the fault."""
    kind = _detect_kind(data, name, images=True)
    if kind == "tiff":
        return _read_tiff(data, name)
    if kind == "image":
        return FaxDocument(kind="image", pages=[_image_page(data, name)], tags={})
    return _read_pdf(data, name)


def page_images(data: bytes, kind: str, *, timeout: float = 60.0) -> Iterator[Image.Image]:
    """Each page as a 1-bit or greyscale image, pixels about as tall as wide, ready for OCR.

    `timeout` bounds the rendering of one PDF page. Raises FaxUnreadable for a page that
    cannot be read, and RuntimeError if the PDF renderer is not installed.
    """
    with FaxPages(data, kind) as pages:
        for index in range(pages.count):
            yield pages.image(index, timeout=timeout)


class FaxPages:
    """Random access to a fax's pages as OCR-ready images; a context manager.

    Opening checks the structure (not every page's data); `image()` decodes one page, so one
    bad page can be told apart from the rest.
    """

    def __init__(self, data: bytes, kind: str, name: str = "fax") -> None:
        from PIL import Image

        if kind not in ("tiff", "pdf", "image"):
            raise ValueError(f"unknown fax kind {kind!r}")
        self.kind = kind
        self.name = name
        self._image: Image.Image | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if kind == "tiff":
            self.pages = _tiff_structure(data, name)[2]
            try:
                self._image = Image.open(io.BytesIO(data), formats=["TIFF"])
            except Exception as exc:  # Pillow reports bad input with many exception types
                raise FaxUnreadable(f"{name}: TIFF is damaged: {_reason(exc)}") from exc
        elif kind == "image":
            self.pages = [_image_page(data, name)]
            self._image = Image.open(io.BytesIO(data), formats=list(_IMAGE_FORMATS.values()))
        else:
            self.pages = [_pdf_page(page, number, name)
                          for number, page in enumerate(_open_pdf(data, name).pages, 1)]
            self._tmp = tempfile.TemporaryDirectory(prefix="gw-fax-")
            (Path(self._tmp.name) / "fax.pdf").write_bytes(data)

    @property
    def count(self) -> int:
        return len(self.pages)

    def image(self, index: int, *, timeout: float = 60.0) -> Image.Image:
        page = self.pages[index]
        if self.kind == "tiff":
            return self._tiff_image(index, page)
        if self.kind == "image":
            return self._scan_image(page)
        return self._pdf_image(index, page, timeout)

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _tiff_image(self, index: int, page: FaxPage) -> Image.Image:
        from PIL import Image

        assert self._image is not None, "pages already closed"
        try:
            self._image.seek(index)
            self._image.load()
            # convert() and copy() detach the page from the file before the next seek.
            image = self._image.copy() if self._image.mode in ("1", "L") else self._image.convert("L")
        except Exception as exc:  # Pillow reports bad input with many exception types
            raise FaxUnreadable(f"{self.name}: TIFF is damaged: page {index + 1}: {_reason(exc)}") from exc
        rows = _row_factor(page)
        if rows > 1:
            # Standard resolution has half as many lines per inch as dots per inch along the
            # line; repeating each line gives square pixels, which tesseract's models expect.
            image = image.resize((image.width, image.height * rows), Image.Resampling.NEAREST)
        dpi = page.x_dpi or page.y_dpi or RENDER_DPI
        image.info["dpi"] = (dpi, dpi)
        return image

    def _scan_image(self, page: FaxPage) -> Image.Image:
        from PIL import ImageOps

        assert self._image is not None, "pages already closed"
        try:
            # A photographed page is stored as the camera held it; its EXIF orientation turns it upright.
            image = ImageOps.exif_transpose(self._image).convert("L")
        except Exception as exc:  # Pillow reports bad input with many exception types
            raise FaxUnreadable(f"{self.name}: picture is damaged: {_reason(exc)}") from exc
        image.info["dpi"] = (page.x_dpi, page.y_dpi)
        return image

    def _pdf_image(self, index: int, page: FaxPage, timeout: float) -> Image.Image:
        from PIL import Image

        assert self._tmp is not None, "pages already closed"
        number = index + 1
        if page.compression != "vector" and 100.0 <= page.x_dpi <= 600.0 and page.y_dpi > 0:
            # The scan's own grid across the line, and a whole multiple of it down the page:
            # resampling a 1-bit scan by an odd factor costs more OCR accuracy than the few
            # percent of aspect ratio it would correct.
            x_dpi, y_dpi = page.x_dpi, page.y_dpi * _row_factor(page)
        else:
            x_dpi = y_dpi = RENDER_DPI
        scale = _render_scale(page, x_dpi, y_dpi)
        x_dpi, y_dpi = x_dpi * scale, y_dpi * scale
        out = Path(self._tmp.name) / f"page-{number}"
        command = ["pdftoppm", "-f", str(number), "-l", str(number), "-rx", f"{x_dpi:.2f}", "-ry", f"{y_dpi:.2f}",
                   "-gray", "-png", "-singlefile", str(Path(self._tmp.name) / "fax.pdf"), str(out)]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=max(timeout, 0.001), check=False)
        except FileNotFoundError as exc:
            raise RuntimeError("pdftoppm is not installed (Debian package poppler-utils)") from exc
        except subprocess.TimeoutExpired as exc:
            raise FaxUnreadable(f"{self.name}: PDF page {number} took longer than {timeout:.0f} s to render") from exc
        png = out.with_suffix(".png")
        if done.returncode != 0 or not png.exists():
            raise FaxUnreadable(f"{self.name}: PDF page {number} cannot be rendered: "
                                f"{_last_line(done.stderr) or f'pdftoppm exit status {done.returncode}'}")
        try:
            with Image.open(png, formats=["PNG"]) as rendered:
                rendered.load()
                image = rendered.copy() if rendered.mode in ("1", "L") else rendered.convert("L")
        finally:
            png.unlink(missing_ok=True)
        image.info["dpi"] = (x_dpi, x_dpi)
        return image


# -- Detection ----------------------------------------------------------------------------
_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
_TIFF_MIME_TYPES = frozenset({"image/tiff", "image/tiff-fx"})
_IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}  # detected type -> Pillow's format


def _detect_kind(data: bytes, name: str, *, images: bool = False) -> str:
    """"tiff", "pdf", or with `images` also "image" (JPEG, PNG)."""
    if not data:
        raise FaxUnreadable(f"{name}: file is empty")
    try:
        mime = magic.from_buffer(data, mime=True)
    except Exception:  # libmagic failing is no reason to refuse a file the fallback knows
        mime = "unknown"
    if mime in _TIFF_MIME_TYPES:
        return "tiff"
    if images and mime in _IMAGE_FORMATS:
        return "image"
    if mime == "application/pdf":
        return "pdf"
    # libmagic's PDF rule wants "%PDF-" at offset 0, but readers accept it anywhere in the
    # first 1024 bytes, and some fax-to-mail gateways prepend junk.
    if data[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if b"%PDF-" in data[:1024]:
        return "pdf"
    raise FaxUnreadable(f"{name}: not a {'PDF, TIFF, JPEG or PNG' if images else 'TIFF or PDF'} (detected: {mime})")


# -- JPEG and PNG scans -------------------------------------------------------------------
def _image_page(data: bytes, name: str) -> FaxPage:
    """The one page of a JPEG or PNG scan, decoded once to be sure it can be."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(_IMAGE_FORMATS.values())) as image:
            kind = (image.format or "").lower()
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit:
                raise FaxUnreadable(f"{name}: picture is too large ({width} x {height} pixels)")
            image.load()
            dpi = image.info.get("dpi") or (0, 0)
    except FaxUnreadable:
        raise
    except Exception as exc:  # Pillow reports bad input with many exception types
        raise FaxUnreadable(f"{name}: picture is damaged: {_reason(exc)}") from exc
    x_dpi, y_dpi = (float(d) for d in dpi[:2])
    if not (100.0 <= x_dpi <= 1200.0 and 100.0 <= y_dpi <= 1200.0):
        x_dpi = y_dpi = SCAN_DPI
    return FaxPage(width=width, height=height, x_dpi=round(x_dpi, 2), y_dpi=round(y_dpi, 2), compression=kind)


# -- TIFF ---------------------------------------------------------------------------------
class _Damaged(ValueError):
    """A structural fault in a TIFF; the message says which."""


@dataclass(frozen=True)
class _Entry:
    type: int
    count: int
    value: bytes  # raw, in the file's byte order


_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
               16: 8, 17: 8, 18: 8}
_INT_FORMATS = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}
_WIDTH, _LENGTH, _COMPRESSION = 256, 257, 259
_STRIP_OFFSETS, _STRIP_BYTES, _TILE_OFFSETS, _TILE_BYTES = 273, 279, 324, 325
_X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 282, 283, 296
_MAX_PAGES = 5000

_COMPRESSION_NAMES = {1: "none", 2: "ccitt-rle", 3: "group3", 4: "group4", 5: "lzw", 6: "old-jpeg",
                      7: "jpeg", 8: "deflate", 9: "jbig", 10: "jbig-mrc", 32773: "packbits",
                      32946: "deflate", 34661: "jbig", 34712: "jpeg2000"}
_DECODABLE = frozenset({1, 2, 3, 4, 5, 7, 8, 32773, 32946})

_TIFF_TEXT_TAGS = {270: "ImageDescription", 306: "DateTime", 271: "Make", 272: "Model", 305: "Software",
                   315: "Artist", 316: "HostComputer", 269: "DocumentName", 285: "PageName"}


def _read_tiff(data: bytes, name: str) -> FaxDocument:
    from PIL import Image

    order, directories, pages = _tiff_structure(data, name)
    try:
        with Image.open(io.BytesIO(data), formats=["TIFF"]) as image:
            frames = getattr(image, "n_frames", 1)
            if frames != len(pages):
                raise _Damaged(f"{len(pages)} image directories but {frames} readable pages")
            for index in range(frames):
                try:
                    image.seek(index)
                    image.load()
                except Exception as exc:  # Pillow reports bad input with many exception types
                    raise _Damaged(f"page {index + 1} cannot be decoded: {_reason(exc)}") from exc
    except _Damaged as exc:
        raise FaxUnreadable(f"{name}: TIFF is damaged: {exc}") from exc
    except Exception as exc:  # as above, from opening the file
        raise FaxUnreadable(f"{name}: TIFF is damaged: {_reason(exc)}") from exc
    return FaxDocument(kind="tiff", pages=pages, tags=_tiff_tags(order, directories[0]))


def _tiff_structure(data: bytes, name: str) -> tuple[str, list[dict[int, _Entry]], list[FaxPage]]:
    """Byte order, image directories and page descriptions of a TIFF whose pages can be decoded."""
    from PIL import Image

    try:
        order, directories = _walk_tiff(data)
        pages = [_tiff_page(order, directory, number, len(data))
                 for number, directory in enumerate(directories, 1)]
    except _Damaged as exc:
        raise FaxUnreadable(f"{name}: TIFF is damaged: {exc}") from exc
    limit = Image.MAX_IMAGE_PIXELS
    for number, (directory, page) in enumerate(zip(directories, pages, strict=True), 1):
        if limit and page.width * page.height > limit:
            raise FaxUnreadable(f"{name}: TIFF page {number} is too large for a fax "
                                f"({page.width} x {page.height} pixels)")
        if (_first_int(order, directory, _COMPRESSION) or 1) not in _DECODABLE:
            raise FaxUnreadable(f"{name}: TIFF page {number} uses {page.compression} compression, "
                                "which cannot be decoded")
    return order, directories, pages


def _walk_tiff(data: bytes) -> tuple[str, list[dict[int, _Entry]]]:
    """The byte order and the image directories of a TIFF, each checked to lie inside the file."""
    size = len(data)
    if size < 8:
        raise _Damaged("file too short for a TIFF header")
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise _Damaged("no TIFF byte-order mark")
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 42:
        count_format, entry_format, offset_format = "H", "HHI", "I"
        offset = struct.unpack_from(order + "I", data, 4)[0]
    elif version == 43 and size >= 16:  # BigTIFF
        count_format, entry_format, offset_format = "Q", "HHQ", "Q"
        offset = struct.unpack_from(order + "Q", data, 8)[0]
    else:
        raise _Damaged(f"unknown TIFF version {version}")
    count_size = struct.calcsize(order + count_format)
    offset_size = struct.calcsize(order + offset_format)
    entry_size = struct.calcsize(order + entry_format) + offset_size
    if offset == 0:
        raise _Damaged("no image directory")
    directories: list[dict[int, _Entry]] = []
    seen: set[int] = set()
    while offset:
        number = len(directories) + 1
        if offset in seen:
            raise _Damaged("the image directories form a loop")
        if number > _MAX_PAGES:
            raise _Damaged(f"more than {_MAX_PAGES} pages")
        seen.add(offset)
        if offset + count_size > size:
            raise _Damaged(f"the directory of page {number} lies beyond the end of the file "
                           f"(offset {offset}, file size {size}; truncated?)")
        entries = struct.unpack_from(order + count_format, data, offset)[0]
        end = offset + count_size + entries * entry_size + offset_size
        if end > size:
            raise _Damaged(f"the directory of page {number} is cut off by the end of the file (truncated?)")
        directory: dict[int, _Entry] = {}
        for index in range(entries):
            position = offset + count_size + index * entry_size
            tag, kind, count = struct.unpack_from(order + entry_format, data, position)
            width = _TYPE_SIZES.get(kind)
            if width is None:
                continue  # unknown field types are skipped, as the TIFF specification asks
            length = width * count
            value_at = position + entry_size - offset_size
            if length > offset_size:
                value_at = struct.unpack_from(order + offset_format, data, value_at)[0]
                if value_at + length > size:
                    raise _Damaged(f"page {number}: tag {tag} points beyond the end of the file (truncated?)")
            directory[tag] = _Entry(kind, count, data[value_at:value_at + length])
        directories.append(directory)
        offset = struct.unpack_from(order + offset_format, data, end - offset_size)[0]
    return order, directories


def _tiff_page(order: str, directory: dict[int, _Entry], number: int, file_size: int) -> FaxPage:
    width = _first_int(order, directory, _WIDTH)
    height = _first_int(order, directory, _LENGTH)
    if not width or not height:
        raise _Damaged(f"page {number} has no image size")
    offsets = _ints(order, directory.get(_STRIP_OFFSETS) or directory.get(_TILE_OFFSETS))
    byte_counts = _ints(order, directory.get(_STRIP_BYTES) or directory.get(_TILE_BYTES))
    if not offsets or len(offsets) != len(byte_counts):
        raise _Damaged(f"page {number} has no usable strip table")
    for start, length in zip(offsets, byte_counts, strict=True):
        if start + length > file_size:
            raise _Damaged(f"the image data of page {number} runs past the end of the file (truncated?)")
    code = _first_int(order, directory, _COMPRESSION) or 1
    x_dpi = _rational(order, directory.get(_X_RESOLUTION))
    y_dpi = _rational(order, directory.get(_Y_RESOLUTION))
    if _first_int(order, directory, _RESOLUTION_UNIT) == 3:  # per centimetre
        x_dpi, y_dpi = x_dpi * 2.54, y_dpi * 2.54
    return FaxPage(width=width, height=height, x_dpi=round(x_dpi, 2), y_dpi=round(y_dpi, 2),
                   compression=_COMPRESSION_NAMES.get(code, f"tiff-{code}"))


def _ints(order: str, entry: _Entry | None) -> tuple[int, ...]:
    if entry is None or entry.type not in _INT_FORMATS:
        return ()
    return struct.unpack(f"{order}{entry.count}{_INT_FORMATS[entry.type]}", entry.value)


def _first_int(order: str, directory: dict[int, _Entry], tag: int) -> int | None:
    values = _ints(order, directory.get(tag))
    return values[0] if values else None


def _rational(order: str, entry: _Entry | None) -> float:
    if entry is None or entry.count < 1:
        return 0.0
    if entry.type in (5, 10):
        numerator, denominator = struct.unpack_from(order + ("II" if entry.type == 5 else "ii"), entry.value)
        value = numerator / denominator if denominator else 0.0
    elif entry.type in (11, 12):
        value = struct.unpack_from(order + ("f" if entry.type == 11 else "d"), entry.value)[0]
    else:
        ints = _ints(order, entry)
        value = float(ints[0]) if ints else 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _tiff_tags(order: str, directory: dict[int, _Entry]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag, label in _TIFF_TEXT_TAGS.items():
        entry = directory.get(tag)
        if entry is None or entry.type not in (1, 2, 7):  # ASCII, or text stored as bytes
            continue
        # An ASCII field may hold several NUL-terminated strings. Pillow would decode them
        # as latin-1; fax software writes UTF-8 or the local code page (GBK in China).
        parts = [decode_bytes(part, None)[0] for part in entry.value.split(b"\0") if part.strip()]
        text = _clean_text("; ".join(parts))
        if text:
            tags[label] = text
    return tags


def _row_factor(page: FaxPage) -> int:
    if page.x_dpi > 0 and page.y_dpi > 0 and page.y_dpi < 0.75 * page.x_dpi:
        return max(1, min(4, round(page.x_dpi / page.y_dpi)))
    return 1


# -- PDF ----------------------------------------------------------------------------------
_PDF_INFO_KEYS = ("Title", "Author", "Subject", "Creator", "Producer", "CreationDate")
_PDF_FILTER_NAMES = {"/DCTDecode": "jpeg", "/DCT": "jpeg", "/FlateDecode": "deflate", "/Fl": "deflate",
                     "/LZWDecode": "lzw", "/LZW": "lzw", "/JBIG2Decode": "jbig2", "/JPXDecode": "jpeg2000",
                     "/RunLengthDecode": "packbits", "/RL": "packbits"}
_PDF_DATE = re.compile(
    r"(?:D:)?(?P<y>\d{4})(?P<m>\d{2})?(?P<d>\d{2})?(?P<H>\d{2})?(?P<M>\d{2})?(?P<S>\d{2})?"
    r"(?:(?P<utc>[Zz])(?:00'?00'?)?|(?P<sign>[+-])(?P<tzh>\d{2})'?(?:(?P<tzm>\d{2})'?)?)?")


def _read_pdf(data: bytes, name: str) -> FaxDocument:
    reader = _open_pdf(data, name)
    pages = [_pdf_page(page, number, name) for number, page in enumerate(reader.pages, 1)]
    return FaxDocument(kind="pdf", pages=pages, tags=_pdf_tags(reader))


def _open_pdf(data: bytes, name: str) -> pypdf.PdfReader:
    # pypdf is imported here, by the first PDF: it would be a fifth of every process's memory.
    import pypdf

    # Non-strict parsing repairs what real fax-to-mail PDFs often get slightly wrong (xref
    # offsets, trailing bytes); garbage and truncated files still fail here or when the page
    # tree is read.
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # owner-password-only files open with an empty password
            except Exception:  # e.g. AES without a crypto library: unreadable all the same
                opened = None
            if not opened:
                raise FaxUnreadable(f"{name}: encrypted PDF")
        count = len(reader.pages)
    except FaxUnreadable:
        raise
    except Exception as exc:  # pypdf reports bad input with many exception types
        raise FaxUnreadable(f"{name}: PDF is damaged: {_reason(exc)}") from exc
    if count == 0:
        raise FaxUnreadable(f"{name}: PDF has no pages")
    return reader


def _pdf_page(page: pypdf.PageObject, number: int, name: str) -> FaxPage:
    try:
        box_width, box_height = float(page.mediabox.width), float(page.mediabox.height)
        quarter_turned = int(page.rotation) % 180 == 90
    except Exception as exc:  # pypdf reports bad input with many exception types
        raise FaxUnreadable(f"{name}: PDF is damaged: page {number}: {_reason(exc)}") from exc
    if not (box_width > 0 and box_height > 0):
        raise FaxUnreadable(f"{name}: PDF is damaged: page {number} has an empty page box")
    try:
        image = _largest_image(page.get("/Resources"), depth=0)
    except Exception:  # an unreadable resource leaves the page to the renderer; only the facts are lost
        image = None
    if image is None:
        width, height = round(box_width / 72 * RENDER_DPI), round(box_height / 72 * RENDER_DPI)
        x_dpi = y_dpi = RENDER_DPI
        compression = "vector"
    else:
        width, height, compression = image
        # A fax-to-mail PDF places one scan over the whole page, so pixels per page inch is
        # the scan's resolution.
        x_dpi = round(width / (box_width / 72), 2)
        y_dpi = round(height / (box_height / 72), 2)
    if quarter_turned:
        width, height, x_dpi, y_dpi = height, width, y_dpi, x_dpi
    return FaxPage(width=width, height=height, x_dpi=x_dpi, y_dpi=y_dpi, compression=compression)


def _largest_image(resources: Any, depth: int) -> tuple[int, int, str] | None:
    """Width, height and compression of the largest image on a page, looking into forms."""
    from pypdf.generic import DictionaryObject

    resources = _resolve(resources)
    if not isinstance(resources, DictionaryObject) or depth > 4:
        return None
    xobjects = _resolve(resources.get("/XObject"))
    if not isinstance(xobjects, DictionaryObject):
        return None
    best: tuple[int, int, str] | None = None
    for value in xobjects.values():
        xobject = _resolve(value)
        if not isinstance(xobject, DictionaryObject):
            continue
        subtype = xobject.get("/Subtype")
        found: tuple[int, int, str] | None = None
        if subtype == "/Image":
            found = (int(_resolve(xobject.get("/Width", 0))), int(_resolve(xobject.get("/Height", 0))),
                     _pdf_compression(xobject))
        elif subtype == "/Form":
            found = _largest_image(xobject.get("/Resources"), depth + 1)
        if found and (best is None or found[0] * found[1] > best[0] * best[1]):
            best = found
    return best


def _pdf_compression(image: DictionaryObject) -> str:
    from pypdf.generic import ArrayObject, DictionaryObject

    filters = _resolve(image.get("/Filter"))
    params = _resolve(image.get("/DecodeParms"))
    filter_list = list(filters) if isinstance(filters, ArrayObject) else [filters] if filters else []
    if not filter_list:
        return "none"
    # The last filter is the one applied to the pixels; earlier ones wrap its output.
    last = str(_resolve(filter_list[-1]))
    if last in ("/CCITTFaxDecode", "/CCF"):
        if isinstance(params, ArrayObject):
            params = _resolve(params[-1]) if params else None
        k = int(_resolve(params.get("/K", 0))) if isinstance(params, DictionaryObject) else 0
        return "group4" if k < 0 else "group3"
    return _PDF_FILTER_NAMES.get(last, last.lstrip("/").lower())


def _pdf_tags(reader: pypdf.PdfReader) -> dict[str, str]:
    try:
        info = reader.metadata
    except Exception:  # a damaged info dictionary costs the tags, not the fax
        return {}
    if not info:
        return {}
    tags: dict[str, str] = {}
    for key in _PDF_INFO_KEYS:
        try:
            value = _resolve(info.get(f"/{key}"))
        except Exception:  # as above
            continue
        if isinstance(value, bytes):
            text = decode_bytes(value, None)[0]
        elif isinstance(value, str):
            text = str(value)
        else:
            continue
        text = _clean_text(text)
        if key == "CreationDate":
            text = _pdf_date_iso(text) or text
        if text:
            tags[key] = text
    return tags


def _pdf_date_iso(text: str) -> str | None:
    match = _PDF_DATE.fullmatch(text.strip())
    if not match:
        return None
    part = match.groupdict()
    try:
        tz: timezone | None = None
        if part["utc"]:
            tz = UTC
        elif part["sign"]:
            offset = timedelta(hours=int(part["tzh"]), minutes=int(part["tzm"] or 0))
            tz = timezone(-offset if part["sign"] == "-" else offset)
        moment = datetime(int(part["y"]), int(part["m"] or 1), int(part["d"] or 1), int(part["H"] or 0),
                          int(part["M"] or 0), int(part["S"] or 0), tzinfo=tz)
    except ValueError:
        return None
    return moment.isoformat()


def _resolve(value: Any) -> Any:
    from pypdf.generic import IndirectObject

    return value.get_object() if isinstance(value, IndirectObject) else value


def _render_scale(page: FaxPage, x_dpi: float, y_dpi: float) -> float:
    """1, or less if the rendered page would exceed Pillow's decompression-bomb limit."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if not limit or page.x_dpi <= 0 or page.y_dpi <= 0:
        return 1.0
    pixels = (page.width / page.x_dpi * x_dpi) * (page.height / page.y_dpi * y_dpi)
    return min(1.0, math.sqrt(limit / pixels) * 0.99) if pixels > 0 else 1.0


# -- Text ---------------------------------------------------------------------------------
def _clean_text(text: str) -> str:
    """One line of printable text: control characters and runs of white space become a space."""
    printable = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                        for c in text if unicodedata.category(c) != "Cf")
    return " ".join(printable.split())


def _reason(exc: BaseException) -> str:
    return _clean_text(str(exc)) or type(exc).__name__


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return _clean_text(lines[-1]) if lines else ""
