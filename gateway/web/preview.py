"""Attachment pages rendered to PNG for the letter page: images, multi-page TIFF (fax G3/G4) and
PDF. The picture is always decoded and encoded anew (never the sender's bytes passed through), and
nothing is written to disk but pdftoppm's own temporary use of memory."""
from __future__ import annotations

import io
import subprocess
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Pillow is loaded by the first page drawn: the web register runs inside the daemon, and a
    # day without a picture to show should not cost its memory.
    from PIL import Image

MAX_BYTES = 50 * 1024 * 1024
MAX_SIDE = 1600
PDF_DPI = 100
PDF_TIMEOUT = 30.0
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff",
                         "image/x-ms-bmp"})


class PreviewError(Exception):
    """The page cannot be shown as a picture; the message says why, in English. `key` and `params`
    let the page say it in its own language (`i18n.preview_problem`)."""

    def __init__(self, message: str, key: str, **params: str):
        super().__init__(message)
        self.key = key
        self.params = params


def kind(detected_type: str) -> str | None:
    """"pdf", "image" (TIFF included), or None when no preview is made for the type."""
    detected_type = detected_type.split(";")[0].strip().lower()
    if detected_type == "application/pdf":
        return "pdf"
    if detected_type in IMAGE_TYPES:
        return "image"
    return None


def page_count(data: bytes, detected_type: str) -> int:
    what = _check(data, detected_type)
    if what == "pdf":
        import pypdf  # by the first PDF shown: the daemon serving the register need not hold it

        try:
            return len(pypdf.PdfReader(io.BytesIO(data)).pages)
        except Exception as exc:  # pypdf raises many kinds on a damaged file
            raise PreviewError(f"the PDF cannot be read: {exc}", "pdf-unreadable", detail=str(exc)) from exc
    with _open(data) as image:
        return getattr(image, "n_frames", 1)


def render_page(data: bytes, detected_type: str, page: int) -> bytes:
    """Page `page` (from 1) as a PNG at most MAX_SIDE pixels on its longer side."""
    what = _check(data, detected_type)
    if page < 1:
        raise PreviewError("no such page", "no-page")
    if what == "pdf":
        return _encode(_pdf_page(data, page))
    with _open(data) as image:
        if page > getattr(image, "n_frames", 1):
            raise PreviewError("no such page", "no-page")
        image.seek(page - 1)
        return _encode(image)


def _check(data: bytes, detected_type: str) -> str:
    what = kind(detected_type)
    if what is None:
        raise PreviewError(f"no preview for {detected_type or 'this type'}", "no-preview",
                           type=detected_type or "?")
    if len(data) > MAX_BYTES:
        size = str(len(data) // (1024 * 1024))
        raise PreviewError(f"too large for a preview ({size} MB; at most 50 MB)", "too-large", size=size)
    return what


def _open(data: bytes) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    # A picture that decompresses to more than Pillow's MAX_IMAGE_PIXELS is refused, not decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PreviewError("the picture is too large to show (a decompression bomb?)", "bomb") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise PreviewError(f"the picture cannot be read: {exc}", "picture-unreadable", detail=str(exc)) from exc


def _pdf_page(data: bytes, page: int) -> Image.Image:
    try:
        done = subprocess.run(["pdftoppm", "-png", "-r", str(PDF_DPI), "-f", str(page), "-l", str(page), "-"],
                              input=data, capture_output=True, timeout=PDF_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        seconds = f"{PDF_TIMEOUT:.0f}"
        raise PreviewError(f"the PDF page took longer than {seconds} s to draw", "pdf-slow", seconds=seconds) from exc
    except OSError as exc:
        raise PreviewError(f"pdftoppm cannot run: {exc}", "no-pdftoppm", detail=str(exc)) from exc
    if done.returncode != 0 or not done.stdout:
        error = done.stderr.decode(errors="replace").strip().splitlines()
        if not error or "Wrong page range" in error[-1]:
            raise PreviewError("no such page", "no-page")
        raise PreviewError(f"the PDF cannot be drawn: {error[-1]}", "pdf-undrawable", detail=error[-1])
    return _open(done.stdout)


def _encode(image: Image.Image) -> bytes:
    try:
        frame = image.convert("L") if image.mode in ("1", "L", "I", "I;16", "F") else image.convert("RGB")
        frame.thumbnail((MAX_SIDE, MAX_SIDE))
        out = io.BytesIO()
        frame.save(out, "PNG")
    except (OSError, ValueError) as exc:
        raise PreviewError(f"the picture cannot be decoded: {exc}", "picture-undecodable", detail=str(exc)) from exc
    return out.getvalue()
