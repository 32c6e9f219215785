"""OCR of faxes: character error rate and pages per minute of the gateway's reader against bare
tesseract (eng+chi_sim+chi_tra, --psm 6, one thread) on the same pages, in the same run, per class.

The pages are generated (tests/ocr_corpus.py): every letter of the corpus at fine and standard
resolution, some skewed, speckled, stamped or with a fax header line. The error rate is the edit
distance over the known text, nothing folded (white space runs count as one space).

    .venv/bin/python bench/ocr.py [--workers 1,2]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from ocr_corpus import Sample, cer, corpus  # noqa: E402

from gateway.stages.fax.ocr import ocr_document  # noqa: E402
from gateway.stages.fax.text import warm_up  # noqa: E402


def read(data: bytes, reader: str) -> str:
    return ocr_document(data, "tiff", reader=reader).text


def _ready() -> int:
    """The worker's process id: once every worker has given its own, all have started (and warmed
    up). A short nap, so that one worker does not take every call while another still starts."""
    time.sleep(0.05)
    return os.getpid()


def run(pages: list[Sample], reader: str, workers: int) -> tuple[list[str], float]:
    """The texts read and the pages per minute, with `workers` processes as the daemon's pool has."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=warm_up, initargs=(reader,)) as pool:
        started: set[int] = set()
        while len(started) < workers:  # every worker warm before the clock starts, as in a running daemon
            started |= {future.result() for future in [pool.submit(_ready) for _ in range(workers * 2)]}
        started = time.monotonic()
        texts = list(pool.map(read, [p.tiff for p in pages], [reader] * len(pages)))
        seconds = time.monotonic() - started
    return texts, len(pages) * 60 / seconds


def rates(pages: list[Sample], texts: list[str]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for page, text in zip(pages, texts, strict=True):
        errors, characters = cer(page.text, text)
        for key in (page.script, f"{page.script}/{page.resolution}", "all"):
            total = totals.setdefault(key, [0, 0])
            total[0] += errors
            total[1] += characters
    return {key: errors / characters for key, (errors, characters) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="pool sizes to measure, e.g. 1,2")
    args = parser.parse_args()
    pages = corpus("bench")
    print(f"{len(pages)} pages, {sum(len(p.text) for p in pages)} characters")
    sizes = [int(w) for w in args.workers.split(",")]
    tesseract: dict[int, float] = {}
    gateway: dict[int, float] = {}
    texts: list[str] = []
    for workers in sizes:
        tesseract_texts, tesseract[workers] = run(pages, "tesseract", workers)
        texts, gateway[workers] = run(pages, "auto", workers)
    baseline = rates(pages, tesseract_texts)
    ours = rates(pages, texts)
    print(f"\n{'class':24s} {'gateway CER':>12s} {'tesseract CER':>14s} {'ratio':>7s}")
    for key in sorted(ours, key=lambda k: (k == "all", k)):
        ratio = ours[key] / baseline[key] if baseline[key] else float("nan")
        print(f"{key:24s} {ours[key] * 100:11.2f}% {baseline[key] * 100:13.2f}% {ratio:7.2f}")
    print()
    for workers, speed in gateway.items():
        print(f"tesseract, {workers} worker(s): {tesseract[workers]:6.1f} pages/min; gateway reader: "
              f"{speed:6.1f} pages/min ({speed / tesseract[workers]:.2f} × tesseract)")
    if len(sizes) > 1:
        print(f"gateway reader, {sizes[-1]} workers / {sizes[0]}: {gateway[sizes[-1]] / gateway[sizes[0]]:.2f}")


if __name__ == "__main__":
    main()
