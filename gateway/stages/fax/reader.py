"""Reading a page of Chinese (and English) text: PP-OCR for the page, tesseract where PP-OCR is weak.

Measured on faxes rendered from known letters (bench/ocr.py): PP-OCRv4 (rapidocr-onnxruntime, the
models ship inside the wheel) reads simplified and English pages almost without error, but its
vocabulary lacks many traditional characters (議, 說, 並, 週, ...), which it drops or reads as their
simplified forms, and on thin standard-resolution strokes it misreads a character now and then,
knowing it (a character's confidence under 0.7). So a page is read by PP-OCR; tesseract reads it
too when it is in traditional script (chi_tra) or PP-OCR was unsure of a character (chi_sim), and
each of PP-OCR's lines takes from tesseract's line the characters PP-OCR cannot give, gave in
simplified form on a traditional page, or was unsure of where tesseract was surer.

Before reading, a page is cleaned of specks and of the halftone dots a fax machine makes of a red
stamp (a colour scan loses its red ink instead), a standard-resolution page is cleaned at its own
resolution and then stretched smoothly, and the page is straightened (projection profiles).
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

# The geometry of an A4 fine-resolution fax page, as the engine is warmed up on.
_FAX_WIDTH, _FAX_ROWS = 1728, 2286


@dataclass(frozen=True)
class Line:
    text: str
    confidence: float
    top: float
    bottom: float
    marks: tuple[float, ...] = ()  # each character's confidence, where the reader gives it


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
    """The PP-OCR engine, loaded once per process, with onnxruntime's memory arena on.

    rapidocr turns the arena off, so every run maps the detection model's activations afresh
    (hundreds of MB for a fax page) and the kernel zeroes every page of them: measured here, a
    third of a worker's CPU time went to page faults, and two workers slowed each other down in
    the kernel. With the arena a worker keeps that memory (about 1.2 GB resident) and reuses it.
    """
    from rapidocr_onnxruntime import RapidOCR
    from rapidocr_onnxruntime.utils.infer_engine import OrtInferSession

    plain_options = OrtInferSession._init_sess_opts

    def options_with_arena(config: dict[str, Any]) -> Any:
        options = plain_options(config)
        options.enable_cpu_mem_arena = True
        return options

    # rapidocr takes no session options of its own: its builder is swapped while it loads.
    OrtInferSession._init_sess_opts = staticmethod(options_with_arena)
    try:
        return RapidOCR(intra_op_num_threads=ENGINE_THREADS, inter_op_num_threads=ENGINE_THREADS)
    finally:
        OrtInferSession._init_sess_opts = staticmethod(plain_options)


def warm_up_engine() -> None:
    """Read a made-up fax page of Latin lines once. The engine's first run at a page's size costs
    seconds more than the next (its memory arena grows, its kernels are prepared): a worker pays
    that when it starts, not on the first fax it is given."""
    import cv2
    page = np.full((_FAX_ROWS, _FAX_WIDTH), 255, np.uint8)
    for row in range(16):
        cv2.putText(page, f"Warm-up line {row:02d}: Example Trading Co. 0123456789", (140, 200 + row * 110),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.3, 0, 3)
    read_page(Image.fromarray(page), traditional_with_tesseract=False)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """The characters PP-OCR's recognition model can produce."""
    rec = engine().text_rec
    return frozenset(ch for ch in rec.postprocess_op.character if ch)


@lru_cache(maxsize=4)
def _converter(config: str) -> Any:
    from opencc import OpenCC
    return OpenCC(config)


# --- the page image ----------------------------------------------------------------------------

def prepare(image: Image.Image) -> tuple[np.ndarray, int]:
    """`image` as straight, cleaned greyscale (0 ink, 255 paper), and the rows of paper added
    above the page to straighten it."""
    import cv2
    if image.mode in ("RGB", "RGBA", "P", "CMYK"):
        # Red ink (stamps, signatures' seals) is bright in the red channel; black text stays black.
        grey = np.asarray(image.convert("RGB"))[:, :, 0].copy()
    else:
        grey = np.asarray(image.convert("L")).copy()
    height = grey.shape[0]
    # A standard-resolution fax comes with every row twice: cleaned at its own resolution, then
    # stretched smoothly, its thin strokes stay whole and its edges are not stair-stepped.
    doubled = height >= 4 and height % 2 == 0 and bool(np.array_equal(grey[0::2], grey[1::2]))
    if doubled:
        grey = grey[0::2]
    if image.mode == "1" or _bilevel(grey):
        grey = _despeckle(_remove_halftone(grey))
    if doubled:
        grey = cv2.resize(grey, (grey.shape[1], height), interpolation=cv2.INTER_LINEAR)
    angle = skew_angle(grey)
    if abs(angle) >= 0.2:
        # The sending machine's header line is printed straight across the top of a skewed page:
        # straightening the page tilts it, so there must be room above (and below) for its ends.
        margin = int(abs(np.sin(np.radians(angle))) * grey.shape[1] / 2) + 2
        grey = _rotate(np.pad(grey, ((margin, margin), (0, 0)), constant_values=255), angle)
        return grey, margin
    return grey, 0


def _bilevel(grey: np.ndarray) -> bool:
    return bool(np.isin(grey[:: 7, :: 7], (0, 255)).all())


def _runs(ink: np.ndarray, axis: int) -> np.ndarray:
    """Whether each ink pixel has an ink neighbour along `axis` (is part of a run of two or more)."""
    before = np.zeros_like(ink)
    after = np.zeros_like(ink)
    if axis == 1:
        before[:, 1:], after[:, :-1] = ink[:, :-1], ink[:, 1:]
    else:
        before[1:], after[:-1] = ink[:-1], ink[1:]
    return ink & (before | after)


def _remove_halftone(grey: np.ndarray) -> np.ndarray:
    """Remove the dots a fax machine makes of a red stamp's grey (a checkerboard, or thin lines at
    standard resolution): where most ink stands alone across the line. Writing has no such areas."""
    import cv2
    ink = grey < 128
    single = ink & ~_runs(ink, 1)
    density = cv2.blur(single.astype(np.float32), (15, 15))
    region = cv2.dilate((density > 0.12).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if not region.any():
        return grey
    # Dots standing alone across the line go; what is left of the pattern falls apart into
    # specks, while a stroke over the stamp (thin horizontal ones too) stays whole.
    cleaned = grey.copy()
    cleaned[region & single] = 255
    return cleaned


def _despeckle(grey: np.ndarray) -> np.ndarray:
    """Remove ink that cannot be writing: specks of a few pixels with no other ink near them. (A
    thin stroke of a serif face can come out of the fax as a dotted line: those dots are near
    each other, so they stay.)"""
    import cv2
    ink = (grey < 128).astype(np.uint8)
    grown = cv2.dilate(ink, np.ones((3, 3), np.uint8))
    _, labels = cv2.connectedComponents(grown, connectivity=8)
    area = np.bincount(labels[ink.astype(bool)], minlength=int(labels.max()) + 1)
    noise = area <= 5
    noise[0] = False
    cleaned = grey.copy()
    cleaned[noise[labels] & ink.astype(bool)] = 255
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
    grey, margin = prepare(image)
    found, _ = engine()(grey, use_cls=False, return_word_box=True)
    lines = [_ppocr_line(item, grey, margin) for item in (found or [])]
    lines = [line for line in lines if line.text.strip()]
    script = _script("".join(line.text for line in lines))
    reader = "ppocr"
    # Tesseract reads a traditional page (PP-OCR lacks many of its characters), and a simplified one
    # where PP-OCR is unsure of a character; its reading decides only where PP-OCR is weak.
    unsure = any(mark < UNSURE for line in lines for ch, mark in zip(line.text, line.marks, strict=True)
                 if _HAN.match(ch))
    if traditional_with_tesseract and lines and (script == "traditional" or (script == "simplified" and unsure)):
        tesseract_lines = _tesseract_lines(grey, margin, "chi_tra" if script == "traditional" else "chi_sim", timeout)
        if tesseract_lines is not None:
            lines = [_fuse(line, _overlapping(line, tesseract_lines), script) for line in lines]
            reader = "ppocr+tesseract"
    lines = [Line(restore_punctuation(line.text), line.confidence, line.top, line.bottom) for line in lines]
    characters = sum(len(line.text) for line in lines)
    confidence = (sum(line.confidence * len(line.text) for line in lines) / characters) if characters else None
    return PageReading(lines, confidence, script, reader)


def _ppocr_line(item: list[Any], grey: np.ndarray, margin: int) -> Line:
    """A line PP-OCR found, placed on the page as it came (`margin` rows above it taken off)."""
    box, text, score = item[0], item[1], float(item[2])
    ys = [point[1] for point in box]
    top, bottom = min(ys), max(ys)
    boxes = item[3] if len(item) > 3 else None
    if boxes and len(boxes) == len(text):
        glyphs = [(ch, b) for ch, b in zip(text, boxes, strict=True) if ch != " "]
        marks = [float(m) for m in item[5]] if len(item) > 5 and len(item[5]) == len(boxes) else [score] * len(boxes)
        spaced, spaced_marks = _spaced(grey, glyphs, [m for ch, m in zip(text, marks, strict=True) if ch != " "],
                                       int(top), int(bottom) + 1)
        return Line(spaced, score, top - margin, bottom - margin, spaced_marks)
    return Line(text, score, top - margin, bottom - margin, (score,) * len(text))


_LATIN = re.compile(r"[A-Za-z0-9.,;:!?%&/()\-+'\"$@#*=_]")


def _spaced(grey: np.ndarray, glyphs: list[tuple[str, list[list[float]]]], marks: list[float],
            top: int, bottom: int) -> tuple[str, tuple[float, ...]]:
    """The line's text (and its characters' confidences) with its spaces decided from the page:
    PP-OCR's recognition model often runs Latin words together (or splits them), but a word space
    is a run of blank columns on the line, measured against the height of the writing. Limits
    measured on the corpus (gap / height): between Latin letters or digits a space is 0.3-0.8, none
    0-0.29; between a Chinese character and a Latin letter 0.25-0.44 against 0.06-0.16; a digit
    next to a Chinese character has no space however wide its side bearing (up to 0.38); an
    ideographic space between Chinese characters is over 1."""
    band = grey[max(top, 0):bottom] < 128
    ink: np.ndarray = np.asarray(band.any(axis=0))
    height = _writing_height(band)
    out: list[str] = []
    out_marks: list[float] = []
    for index, (ch, box) in enumerate(glyphs):
        if index:
            previous, previous_box = glyphs[index - 1]
            start = int(sum(p[0] for p in previous_box) / 4)
            end = int(sum(p[0] for p in box) / 4)
            gap = _longest_blank(ink[start:end]) / height
            if _is_cjk_punct(previous + ch):
                space = ""
            elif _HAN.match(previous) and _HAN.match(ch):
                space = "\u3000" if gap >= 0.9 else ""
            elif _LATIN.match(previous) and _LATIN.match(ch):
                space = " " if gap >= 0.29 else ""
            elif previous.isdigit() or ch.isdigit():
                space = " " if gap >= 0.5 else ""
            else:
                space = " " if gap >= 0.22 else ""
            out.append(space)
            out_marks.extend([1.0] * len(space))
        out.append(ch)
        out_marks.append(marks[index])
    return "".join(out), tuple(out_marks)


def _writing_height(band: np.ndarray) -> float:
    """The height of the writing on a line: the tallest ink in a column, leaving out the tallest
    tenth (specks, a stroke from the next line). Column by column, so a slanted line measures true."""
    columns = band.any(axis=0)
    if not columns.any():
        return 1.0
    cells = band[:, columns]
    rows = np.arange(band.shape[0])[:, None]
    lowest = np.where(cells, rows, -1).max(axis=0)
    highest = np.where(cells, rows, band.shape[0]).min(axis=0)
    return max(float(np.percentile(lowest - highest + 1, 90)), 1.0)


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


def _tesseract_lines(grey: np.ndarray, margin: int, language: str, timeout: float) -> list[Line] | None:
    """Tesseract's reading of the (straightened) page in `language`, line by line, placed as
    PP-OCR's lines are, with each word's confidence on its characters."""
    png = io.BytesIO()
    Image.fromarray(grey).save(png, "PNG", dpi=(200, 200))
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(["tesseract", "stdin", "stdout", "-l", language, "--psm", "6", "tsv"],
                              input=png.getvalue(), capture_output=True, env=env, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    words: dict[tuple[str, str, str], list[tuple[int, int, str, float]]] = {}
    for row in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5" or not cells[11].strip():
            continue
        words.setdefault((cells[2], cells[3], cells[4]), []).append(
            (int(cells[7]), int(cells[7]) + int(cells[9]), cells[11], max(float(cells[10]), 0.0) / 100))
    lines = []
    for parts in words.values():
        # Tesseract separates every Chinese character by a space; only spaces between Latin stay.
        text, marks = "", list[float]()
        for _, _, word, mark in parts:
            if text and _LATIN.match(text[-1]) and _LATIN.match(word[0]):
                text, marks = text + " ", [*marks, 1.0]
            text, marks = text + word, marks + [mark] * len(word)
        lines.append(Line(text, 0.0, min(p[0] for p in parts) - margin, max(p[1] for p in parts) - margin,
                          tuple(marks)))
    return lines


def _overlapping(line: Line, others: list[Line]) -> Line | None:
    best, best_overlap = None, 0.0
    for other in others:
        overlap = min(line.bottom, other.bottom) - max(line.top, other.top)
        if overlap > best_overlap:
            best, best_overlap = other, overlap
    return best if best_overlap > 0.5 * (line.bottom - line.top) else None


def _fuse(line: Line, other: Line | None, script: str) -> Line:
    """PP-OCR's line, with tesseract's Chinese characters where PP-OCR is weak: a character outside
    PP-OCR's vocabulary (which it drops or misreads), the traditional form of a simplified character
    PP-OCR gave, a character PP-OCR was unsure of and tesseract less so, or a character or two PP-OCR
    dropped between two it agrees on. Punctuation, digits, Latin and spaces stay PP-OCR's, which
    reads them better. On a traditional page a simplified character left over becomes its
    traditional form."""
    if other is not None:
        ours, theirs = line.text, other.text
        # Aligned on what the two mean, not how they write it: simplified and traditional forms of a
        # character, and ASCII and full-width punctuation, are the same there.
        matcher = difflib.SequenceMatcher(None, _comparable(ours), _comparable(theirs), autojunk=False)
        out = []
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            mine, given = ours[i1:i2], theirs[j1:j2]
            if op == "equal" or (op == "replace" and len(mine) == len(given)):
                out.append("".join(_pick(m, g, pm, pg, script) for m, g, pm, pg in zip(
                    mine, given, line.marks[i1:i2], other.marks[j1:j2], strict=True)))
            elif not any(_HAN.match(ch) for ch in mine + given) or op == "delete":
                out.append(mine)
            elif not any(_HAN.match(ch) for ch in mine):
                # A character or two PP-OCR dropped (beside a space or mark it kept, or nothing).
                han = "".join(ch for ch in given if _HAN.match(ch))
                out.append(han + mine if len(han) <= 2 and script == "traditional" else mine)
            elif not all(_HAN.match(ch) for ch in given):
                out.append(mine)
            elif (abs(len(mine) - len(given)) <= 2 and script == "traditional"
                  and all(g not in _vocabulary() for g in given)):
                out.append(given)
            else:
                out.append(mine)
        line = Line("".join(out), line.confidence, line.top, line.bottom)
    text = _traditional(line.text) if script == "traditional" else line.text
    return Line(text, line.confidence, line.top, line.bottom)


# Below this PP-OCR is unsure of a character: on the corpus its misreadings score 0.16-0.65, while
# nine in ten of its right readings score over 0.8.
UNSURE = 0.7


def _pick(mine: str, given: str, mine_mark: float, given_mark: float, script: str) -> str:
    """PP-OCR's `mine` or tesseract's `given`, read at the same place of the page."""
    if mine == given or not _HAN.match(given):
        return mine
    if script == "traditional" and (given not in _vocabulary() or _converter("t2s").convert(given) == mine):
        return given  # what PP-OCR cannot write, or the traditional form of what it read
    if _HAN.match(mine) and mine_mark < UNSURE and given_mark > mine_mark:
        return given
    # Otherwise the two read different characters, and PP-OCR reads far more of them right.
    return mine


def _traditional(text: str) -> str:
    """`text` with its simplified characters in traditional form, converted in context, as 发 is 發
    or 髮 by the word; nothing else changes. A character Big5 has (台, 后, 于) is traditional
    already, whatever OpenCC would make of it."""
    converted = _converter("s2tw").convert(text)
    if len(converted) != len(text):
        return text
    return "".join(c if c != ch and _HAN.match(ch) and not _big5(ch) else ch
                   for ch, c in zip(text, converted, strict=True))


def _big5(ch: str) -> bool:
    try:
        ch.encode("big5")
    except UnicodeEncodeError:
        return False
    return True


_SAME_PUNCT = str.maketrans(":,;()!?", "：，；（）！？")


def _comparable(text: str) -> str:
    simplified = _converter("t2s")
    return "".join(simplified.convert(ch)[:1] or ch if _HAN.match(ch) else ch for ch in text).translate(_SAME_PUNCT)


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
