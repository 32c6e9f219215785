"""The text of a fax or scan, page by page: by the gateway's reader (PP-OCR, with tesseract for
traditional characters; see reader.py) or by the tesseract command alone."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .document import FaxPages

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_LANGUAGES = "eng+chi_sim+chi_tra"
READERS = ("auto", "ppocr", "tesseract")
# Below this a page's reading is flagged for a person to check: clean pages read at 0.93-1.0,
# a page of noise or a mostly unreadable one well below.
DEFAULT_MIN_CONFIDENCE = 0.85

# "--psm 6" (one uniform block of text) reads Chinese lines far better than automatic page
# segmentation, and a fax page is mostly such a block.
_TESSERACT_OPTIONS = ("--psm", "6")
_LANGUAGE_LIST = re.compile(r"[A-Za-z0-9_]+(?:\+[A-Za-z0-9_]+)*")
_FAILED_LANGUAGE = re.compile(r"Failed loading language '([^']*)'")


@dataclass(frozen=True)
class OcrResult:
    text: str  # the pages that were read, separated by form feeds
    pages: int  # pages in the document
    defects: list[str]  # one per page that could not be read, and what else went wrong
    reader: str = "tesseract"  # what read the pages: tesseract | ppocr | ppocr+tesseract
    version: str = ""  # the reader's version
    confidences: list[float | None] = field(default_factory=list)  # per page read; None: no text found
    low_confidence: list[int] = field(default_factory=list)  # page numbers for a person to check
    header: str | None = None  # the sending fax machine's line at the top of the first page


class _OcrFailed(Exception):
    pass


def ocr_document(data: bytes, kind: str, *, languages: str = DEFAULT_LANGUAGES,
                 timeout: float = 120.0, reader: str = "tesseract",
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> OcrResult:
    """Read the text of every page of a fax or scan ("tiff", "pdf" or "image"). Never raises for
    an OCR failure.

    `reader` "auto" (or "ppocr") is the gateway's reader, "tesseract" the tesseract command alone
    in `languages`. `timeout` bounds the whole document; pages not reached in time are reported
    as defects.
    """
    if reader not in READERS:
        return OcrResult(text="", pages=0, defects=[f"OCR not run: unknown reader {reader!r}"])
    if reader != "tesseract":
        return _read_document(data, kind, reader, timeout, min_confidence)
    deadline = time.monotonic() + timeout
    if not _LANGUAGE_LIST.fullmatch(languages):
        return OcrResult(text="", pages=0, defects=[f"OCR not run: invalid language list {languages!r}"])
    try:
        pages = FaxPages(data, kind)
    except Exception as exc:  # whatever keeps the document from opening is reported, not raised
        return OcrResult(text="", pages=0, defects=[f"document unreadable: {exc}"])
    texts: list[str] = []
    defects: list[str] = []
    missing_languages: set[str] = set()
    with pages:
        for index in range(pages.count):
            number = index + 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                defects.append(f"page {number}: OCR skipped: the time limit of {timeout:g} s was reached")
                continue
            try:
                image = pages.image(index, timeout=remaining)
            except Exception as exc:  # one bad page must not cost the others
                defects.append(f"page {number}: unreadable: {exc}")
                continue
            try:
                text, missing = _tesseract(image, languages, deadline - time.monotonic())
            except _OcrFailed as exc:
                defects.append(f"page {number}: OCR failed: {exc}")
                continue
            missing_languages.update(missing)
            texts.append(clean_cjk_spacing(text.replace("\f", "\n")))
    if missing_languages:
        defects.append(f"OCR language data not installed: {', '.join(sorted(missing_languages))} "
                       "(read without it)")
    return OcrResult(text="\f".join(texts), pages=pages.count, defects=defects,
                     version=_tesseract_version() if texts else "")


def _tesseract_version() -> str:
    try:
        done = subprocess.run(["tesseract", "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "tesseract"
    first = (done.stdout or done.stderr).decode("utf-8", "replace").strip().splitlines()
    return first[0] if first else "tesseract"


def _read_document(data: bytes, kind: str, reader: str, timeout: float, min_confidence: float) -> OcrResult:
    """The gateway's reader over every page; a page it cannot read is a defect, never an exception."""
    from gateway.stages.fax import reader as ppocr

    deadline = time.monotonic() + timeout
    try:
        pages = FaxPages(data, kind)
    except Exception as exc:  # whatever keeps the document from opening is reported, not raised
        return OcrResult(text="", pages=0, defects=[f"document unreadable: {exc}"])
    texts: list[str] = []
    defects: list[str] = []
    confidences: list[float | None] = []
    low: list[int] = []
    readers: set[str] = set()
    header: str | None = None
    with pages:
        for index in range(pages.count):
            number = index + 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                defects.append(f"page {number}: OCR skipped: the time limit of {timeout:g} s was reached")
                continue
            try:
                image = pages.image(index, timeout=remaining)
                page = ppocr.read_page(image, traditional_with_tesseract=reader == "auto",
                                       timeout=max(deadline - time.monotonic(), 1.0))
            except Exception as exc:  # one bad page must not cost the others
                defects.append(f"page {number}: OCR failed: {type(exc).__name__}: {exc}")
                continue
            readers.add(page.reader)
            confidences.append(None if page.confidence is None else round(page.confidence, 3))
            if page.confidence is None or page.confidence < min_confidence:
                low.append(number)
            lines = page.lines
            if index == 0 and lines and lines[0].bottom < 0.06 * image.height and is_header_line(lines[0].text):
                header = lines[0].text
            texts.append("\n".join(line.text for line in lines))
    name = "ppocr+tesseract" if "ppocr+tesseract" in readers else "ppocr"
    return OcrResult(text="\f".join(texts), pages=pages.count, defects=defects, reader=name,
                     version=ppocr.version(), confidences=confidences, low_confidence=low, header=header)


_HEADER_TIME = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|[A-Z]{3}[- ]\d{1,2}[- ]\d{2,4}|\d{1,2}:\d{2}")
_HEADER_PAGE = re.compile(r"\b(?:P(?:AGE)?|第)\s*\.?\s*\d{1,3}\s*(?:/|OF|页)\s*\d{1,3}", re.IGNORECASE)


def is_header_line(text: str) -> bool:
    """A fax machine's header line: a time and a page number n/m at the very top of the page."""
    return bool(_HEADER_TIME.search(text)) and bool(_HEADER_PAGE.search(text))


def _tesseract(image: Image.Image, languages: str, timeout: float) -> tuple[str, list[str]]:
    """The text tesseract reads on `image`, and the languages it could not load."""
    if timeout <= 0:
        raise _OcrFailed("the time limit was reached")
    png = io.BytesIO()
    dpi = image.info.get("dpi", (200, 200))
    image.save(png, "PNG", dpi=dpi)  # tesseract reads the resolution from the PNG
    # One thread per process: OpenMP's threads spin on a small image and make a page about
    # five times slower on two cores.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    # The input is always a PNG written here: tesseract takes stdin that is not an image as a
    # list of file names to read.
    command = ["tesseract", "stdin", "stdout", "-l", languages, *_TESSERACT_OPTIONS]
    try:
        done = subprocess.run(command, input=png.getvalue(), capture_output=True, env=env,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise _OcrFailed("tesseract is not installed (Debian package tesseract-ocr)") from exc
    except subprocess.TimeoutExpired as exc:
        raise _OcrFailed(f"tesseract took longer than {timeout:.0f} s") from exc
    except OSError as exc:
        raise _OcrFailed(f"tesseract could not be started: {exc}") from exc
    stderr = done.stderr.decode("utf-8", "replace")
    missing = _FAILED_LANGUAGE.findall(stderr)
    if done.returncode != 0:
        if missing:
            raise _OcrFailed(f"language data not installed: {', '.join(missing)}")
        if done.returncode < 0:
            raise _OcrFailed(f"tesseract was killed by signal {-done.returncode}")
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        raise _OcrFailed(lines[-1] if lines else f"tesseract exit status {done.returncode}")
    return done.stdout.decode("utf-8", "replace"), missing


# Tesseract's Chinese and Japanese models emit a space between every pair of characters, but
# these scripts put no spaces between words; Korean does, so Hangul is joined only to
# punctuation. Ideographic and full-width punctuation carries its own spacing, so a space next
# to it is never meant, whatever is on the other side. Between Latin and CJK (and digits and
# CJK) a space may be real, so it stays.
_HAN = ("\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4dbf\u4e00-\u9fff"
        "\uf900-\ufaff\U00020000-\U0003134f")
_KANA_BOPOMOFO = "\u3041-\u30ff\u3100-\u312f\u31a0-\u31bf\u31f0-\u31ff\uff66-\uff9f"
_FULLWIDTH_ALNUM = "\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_CJK_PUNCTUATION = ("\u3001-\u3004\u3008-\u3020\u3030-\u3037\u303c-\u303f\ufe10-\ufe1f\ufe30-\ufe6f"
                    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\uffe0-\uffee")
_JOINED = f"{_HAN}{_KANA_BOPOMOFO}{_FULLWIDTH_ALNUM}{_CJK_PUNCTUATION}"
_SPURIOUS_SPACE = re.compile(
    rf"(?<=[{_JOINED}])[ \t]+(?=[{_JOINED}])"
    rf"|(?<=\S)[ \t]+(?=[{_CJK_PUNCTUATION}])"
    rf"|(?<=[{_CJK_PUNCTUATION}])[ \t]+(?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_cjk_spacing(text: str) -> str:
    """`text` without the spaces OCR puts inside CJK runs, trailing spaces or runs of blank lines."""
    lines = [_SPURIOUS_SPACE.sub("", line).rstrip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
