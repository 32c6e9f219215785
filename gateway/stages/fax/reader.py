"""Reading a page of Chinese (and English) text: PP-OCR for the page, tesseract's traditional model
where PP-OCR's vocabulary ends.

Measured on faxes rendered from known letters (bench/ocr.py): PP-OCRv4 (rapidocr-onnxruntime, the
models ship inside the wheel) reads simplified and English pages almost without error, but its
vocabulary lacks many traditional characters (議, 說, 並, 週, ...), which it drops or reads as their
simplified forms; tesseract's chi_tra knows them but reads the rest of the line worse. So a page is
read by PP-OCR; when it is in traditional script, tesseract reads it too and each of PP-OCR's lines
takes from tesseract's line exactly the characters PP-OCR cannot give (outside its vocabulary) or
gave in simplified form.

Before reading, a page is straightened (projection profiles) and cleaned of specks and of the
halftone dots a fax machine makes of a red stamp; a colour scan loses its red ink the same way.
"""
from __future__ import annotations

import difflib
import io
import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

# onnxruntime spins one thread per core by default; the pool already has one process per core it
# may use, and more threads only fight over them.
ENGINE_THREADS = 1


@dataclass(frozen=True)
class Line:
    text: str
    confidence: float
    top: float
    bottom: float


@dataclass(frozen=True)
class PageReading:
    lines: list[Line]
    confidence: float | None  # None: nothing on the page was read
    script: str  # simplified | traditional | latin | none
    reader: str  # ppocr | ppocr+tesseract


def version() -> str:
    """The reader's name and version, as recorded on a letter."""
    from importlib.metadata import version as package_version
    return f"rapidocr-onnxruntime {package_version('rapidocr-onnxruntime')} (PP-OCRv4)"


@lru_cache(maxsize=1)
def engine() -> Any:
    """The PP-OCR engine, loaded once per process (a few seconds)."""
    from rapidocr_onnxruntime import RapidOCR
    return RapidOCR(intra_op_num_threads=ENGINE_THREADS, inter_op_num_threads=ENGINE_THREADS)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """The characters PP-OCR's recognition model can produce."""
    rec = engine().text_rec
    return frozenset(ch for ch in rec.postprocess_op.character if ch)


@lru_cache(maxsize=2)
def _converter(config: str) -> Any:
    from opencc import OpenCC
    return OpenCC(config)


# --- the page image ----------------------------------------------------------------------------

def prepare(image: Image.Image) -> np.ndarray:
    """`image` as straight, cleaned greyscale (0 ink, 255 paper)."""
    if image.mode in ("RGB", "RGBA", "P", "CMYK"):
        # Red ink (stamps, signatures' seals) is bright in the red channel; black text stays black.
        grey = np.asarray(image.convert("RGB"))[:, :, 0].copy()
    else:
        grey = np.asarray(image.convert("L")).copy()
    grey = _despeckle(grey)
    angle = skew_angle(grey)
    if abs(angle) >= 0.2:
        grey = _rotate(grey, angle)
    return grey


def _despeckle(grey: np.ndarray) -> np.ndarray:
    """Remove ink that cannot be writing: specks of a few pixels, and the isolated dots and thin
    dashes of a halftoned stamp (four-connected, so a dither pattern falls apart into single dots)."""
    import cv2
    ink = (grey < 128).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=4)
    area, width, height = (stats[:, cv2.CC_STAT_AREA], stats[:, cv2.CC_STAT_WIDTH],
                           stats[:, cv2.CC_STAT_HEIGHT])
    # A standard-resolution page comes with its rows doubled: a dot is two rows tall there.
    noise = (area <= 6) | ((width <= 2) & (height <= 12))
    noise[0] = False
    cleaned = grey.copy()
    cleaned[noise[labels]] = 255
    return cleaned


def skew_angle(grey: np.ndarray) -> float:
    """The page's skew in degrees (counter-clockwise positive), from the sharpness of its row profile."""
    import cv2
    small = cv2.resize(255 - grey, (grey.shape[1] // 4, grey.shape[0] // 4), interpolation=cv2.INTER_AREA)
    if float(small.mean()) < 0.5:
        return 0.0

    def sharpness(angle: float) -> float:
        rotated = _rotate(small, angle, border=0)
        profile = rotated.sum(axis=1, dtype=np.float64)
        return float(np.square(np.diff(profile)).sum())

    best = max((a / 2 for a in range(-12, 13)), key=sharpness)  # ±6° in half degrees
    return max((best + a / 10 for a in range(-5, 6)), key=sharpness)


def _rotate(grey: np.ndarray, angle: float, border: int = 255) -> np.ndarray:
    import cv2
    h, w = grey.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)
    return cv2.warpAffine(grey, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=border)


# --- reading -------------------------------------------------------------------------------------

def read_page(image: Image.Image, *, traditional_with_tesseract: bool = True, timeout: float = 60.0) -> PageReading:
    grey = prepare(image)
    found, _ = engine()(grey, use_cls=False, return_word_box=True)
    lines = [_ppocr_line(item, grey) for item in (found or [])]
    lines = [line for line in lines if line.text.strip()]
    script = _script("".join(line.text for line in lines))
    reader = "ppocr"
    if script == "traditional" and traditional_with_tesseract and lines:
        tesseract_lines = _tesseract_lines(grey, timeout)
        if tesseract_lines is not None:
            lines = [_fuse(line, _overlapping(line, tesseract_lines)) for line in lines]
            reader = "ppocr+tesseract"
    lines = [Line(restore_punctuation(line.text), line.confidence, line.top, line.bottom) for line in lines]
    characters = sum(len(line.text) for line in lines)
    confidence = (sum(line.confidence * len(line.text) for line in lines) / characters) if characters else None
    return PageReading(lines, confidence, script, reader)


def _ppocr_line(item: list[Any], grey: np.ndarray) -> Line:
    box, text, score = item[0], item[1], float(item[2])
    ys = [point[1] for point in box]
    top, bottom = min(ys), max(ys)
    boxes = item[3] if len(item) > 3 else None
    if boxes and len(boxes) == len(text):
        glyphs = [(ch, b) for ch, b in zip(text, boxes, strict=True) if ch != " "]
        text = _spaced(grey, glyphs, text, int(top), int(bottom) + 1)
    return Line(text, score, top, bottom)


_LATIN = re.compile(r"[A-Za-z0-9.,;:!?%&/()\-+'\"$@#*=_]")


def _spaced(grey: np.ndarray, glyphs: list[tuple[str, list[list[float]]]], text: str, top: int, bottom: int) -> str:
    """`text` with its spaces decided from the page: PP-OCR's recognition model often runs Latin words
    together (or splits them), but a word space is a run of blank columns on the line. Between Chinese
    characters there is never a space; next to one, PP-OCR's own decision stands unless the gap is wide."""
    height = max(bottom - top, 1)
    ink: np.ndarray = np.asarray((grey[max(top, 0):bottom] < 128).any(axis=0))
    had_space = set()
    count = 0
    for ch in text:
        if ch == " ":
            had_space.add(count)
        else:
            count += 1
    out = []
    for index, (ch, box) in enumerate(glyphs):
        if index:
            previous, previous_box = glyphs[index - 1]
            start = int(sum(p[0] for p in previous_box) / 4)
            end = int(sum(p[0] for p in box) / 4)
            gap = _longest_blank(ink[start:end])
            if _HAN.match(previous) and _HAN.match(ch):
                space = False
            elif _LATIN.match(previous) and _LATIN.match(ch):
                space = gap >= 0.2 * height
            else:
                space = index in had_space or gap >= 0.45 * height
            if space and not _is_cjk_punct(previous + ch):
                out.append(" ")
        out.append(ch)
    return "".join(out)


def _longest_blank(columns: np.ndarray) -> int:
    longest = run = 0
    for has_ink in columns.tolist():
        run = 0 if has_ink else run + 1
        longest = max(longest, run)
    return longest


def _is_cjk_punct(text: str) -> bool:
    return any(ch in _FULLWIDTH_PUNCT for ch in text)


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def _script(text: str) -> str:
    han = _HAN.findall(text)
    if not han:
        return "latin" if text.strip() else "none"
    to_simplified, to_traditional = _converter("t2s"), _converter("s2t")
    traditional = sum(1 for ch in han if to_simplified.convert(ch) != ch)
    simplified = sum(1 for ch in han if to_traditional.convert(ch) != ch)
    # PP-OCR gives even a traditional page many simplified forms, so a minority decides.
    return "traditional" if traditional >= 3 and traditional >= 0.3 * (traditional + simplified) else "simplified"


def _tesseract_lines(grey: np.ndarray, timeout: float) -> list[Line] | None:
    """Tesseract's traditional-Chinese reading of the (straightened) page, line by line."""
    png = io.BytesIO()
    Image.fromarray(grey).save(png, "PNG", dpi=(200, 200))
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(["tesseract", "stdin", "stdout", "-l", "chi_tra", "--psm", "6", "tsv"],
                              input=png.getvalue(), capture_output=True, env=env, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    words: dict[tuple[str, str, str], list[tuple[int, int, str]]] = {}
    for row in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5" or not cells[11].strip():
            continue
        words.setdefault((cells[2], cells[3], cells[4]), []).append(
            (int(cells[7]), int(cells[7]) + int(cells[9]), cells[11]))
    lines = []
    for parts in words.values():
        text = re.sub(r"(?<=\S) (?=\S)", _join_space, " ".join(p[2] for p in parts))
        lines.append(Line(text, 0.0, min(p[0] for p in parts), max(p[1] for p in parts)))
    return lines


def _join_space(match: re.Match[str]) -> str:
    """Tesseract separates every Chinese character by a space; keep only spaces between Latin."""
    text, at = match.string, match.start()
    return " " if _LATIN.match(text[at - 1]) and _LATIN.match(text[at + 1]) else ""


def _overlapping(line: Line, others: list[Line]) -> Line | None:
    best, best_overlap = None, 0.0
    for other in others:
        overlap = min(line.bottom, other.bottom) - max(line.top, other.top)
        if overlap > best_overlap:
            best, best_overlap = other, overlap
    return best if best_overlap > 0.5 * (line.bottom - line.top) else None


def _fuse(line: Line, other: Line | None) -> Line:
    """PP-OCR's line, with tesseract's Chinese characters where PP-OCR is surely wrong: a character
    outside PP-OCR's vocabulary (which it drops or misreads), a simplified form on a traditional page,
    or a character or two PP-OCR dropped between two it agrees on. Punctuation, digits, Latin and
    spaces stay PP-OCR's, which reads them better."""
    if other is None:
        return line
    ours, theirs = line.text, other.text.replace(" ", "") if _HAN.search(other.text) else other.text
    # Aligned on what the two mean, not how they write it: simplified and traditional forms of a
    # character, and ASCII and full-width punctuation, are the same there.
    matcher = difflib.SequenceMatcher(None, _comparable(ours), _comparable(theirs), autojunk=False)
    out = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        mine, given = ours[i1:i2], theirs[j1:j2]
        if op == "equal":
            out.append("".join(g if m != g and _wrong(m, g) else m for m, g in zip(mine, given, strict=True)))
        elif not given or not all(_HAN.match(ch) for ch in given):
            out.append(mine)
        elif op == "insert":
            out.append(given if len(given) <= 2 else "")
        elif len(mine) == len(given):
            out.append("".join(g if _wrong(m, g) else m for m, g in zip(mine, given, strict=True)))
        elif abs(len(mine) - len(given)) <= 2 and any(_wrong(m, g) for m in mine for g in given):
            out.append(given)
        else:
            out.append(mine)
    return Line("".join(out), line.confidence, line.top, line.bottom)


_SAME_PUNCT = str.maketrans(":,;()!?", "：，；（）！？")


def _comparable(text: str) -> str:
    simplified = _converter("t2s")
    return "".join(simplified.convert(ch)[:1] or ch if _HAN.match(ch) else ch for ch in text).translate(_SAME_PUNCT)


def _wrong(mine: str, given: str) -> bool:
    """Whether PP-OCR's `mine` is surely wrong where tesseract read `given` on a traditional page."""
    if not _HAN.match(given):
        return False
    return (given not in _vocabulary() or _converter("t2s").convert(given) == mine
            or (_HAN.match(mine) is not None and _converter("s2t").convert(mine) != mine))


# --- punctuation ---------------------------------------------------------------------------------

_FULLWIDTH_PUNCT = "：，；（）。、！？「」『』《》〈〉【】"
_CJK = (r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
        r"\U00020000-\U0003134f")
_ASCII_TO_FULL = {":": "：", ",": "，", ";": "；", "!": "！", "?": "？"}
_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])\s*([:,;!?])\s*")
_BEFORE_CJK = re.compile(rf"(?<![A-Za-z])\s*([,;!?])(?=[{_CJK}])")
_PAREN_CJK = re.compile(rf"\s*\(([^()]*[{_CJK}][^()]*)\)\s*")
_FULL_PAREN_LATIN = re.compile(r"（([\x21-\x7e]*)）")
_FULL_OPEN_LATIN = re.compile(r"（([\x21-\x7e ]*\))")
_STOP = re.compile(rf"(?<=[{_CJK}])\s*(?:[.°o]|\s[0O])\s*$|(?<=[{_CJK}])\.(?=[{_CJK}])")
_SPACE_AROUND_FULL = re.compile(rf"\s+(?=[{_FULLWIDTH_PUNCT}])|(?<=[{_FULLWIDTH_PUNCT}])\s+")


def restore_punctuation(text: str) -> str:
    """Full-width punctuation where the line is Chinese: a colon, comma or semicolon after a Chinese
    character (or a comma or semicolon before one), brackets around Chinese, a full stop ending a
    Chinese sentence. Brackets around Latin or digits, as in "(02) 2345-6789", stay ASCII."""
    text = text.replace("丶", "、")  # a radical no letter uses: the enumeration comma, misread
    text = _PAREN_CJK.sub(lambda m: f"（{m.group(1)}）", text)
    text = _FULL_PAREN_LATIN.sub(lambda m: f"({m.group(1)})", text)
    text = _FULL_OPEN_LATIN.sub(lambda m: f"({m.group(1)}", text)
    text = _AFTER_CJK.sub(lambda m: _ASCII_TO_FULL[m.group(1)], text)
    text = _BEFORE_CJK.sub(lambda m: _ASCII_TO_FULL[m.group(1)], text)
    text = _STOP.sub("。", text)
    text = text.replace("（", "（").replace("）", "）")
    return _SPACE_AROUND_FULL.sub("", text)
