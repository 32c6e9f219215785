"""Fax OCR through the daemon with one and two OCR workers, against bare tesseract in the same run.

N two-page fine-resolution G4 TIFFs (English with simplified Chinese, and traditional Chinese with
English, rendered by the test suite's fax generator) are dropped at once into the folder of a
running daemon; the clock stops when every one is registered and its text read. Before the clock
starts the daemon has read one fax, so its OCR workers are running and warm, as in a daemon that
has been up for a while; how long that first fax took from a cold start is shown beside.
Baseline: the bare `tesseract` command (same languages, --psm 6, OMP_THREAD_LIMIT=1) on the same
pages, given as PNG files prepared beforehand, one process at a time and two at once (the ceiling
of two cores). Every round measures the four in turn, in alternating order; the medians of the
rounds close the output.

    .venv/bin/python bench/fax_intake.py [--count 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import running_daemon, write_config  # noqa: E402  (bench/ is the script's folder, on sys.path)

from fax_samples import ENGLISH, SIMPLIFIED, TRADITIONAL, tiff_fax  # noqa: E402

LANGUAGES = "eng+chi_sim+chi_tra"
PAGES_PER_FAX = 2


def fax(n: int) -> bytes:
    pages = [ENGLISH, SIMPLIFIED] if n % 2 == 0 else [TRADITIONAL, ENGLISH]
    return tiff_fax(pages, resolution="fine", compression="group4",
                    tags={"ImageDescription": f"+86 10 5555 {n:04d}"})


def page_files(faxes: list[bytes], folder: Path) -> list[Path]:
    folder.mkdir()
    pages: list[Path] = []
    for n, data in enumerate(faxes):
        with Image.open(io.BytesIO(data)) as image:
            for p, frame in enumerate(ImageSequence.Iterator(image)):
                path = folder / f"fax{n}-page{p}.png"
                frame.convert("L").save(path)
                pages.append(path)
    return pages


def tesseract(pages: list[Path], processes: int) -> float:
    """Pages per minute of the bare command, `processes` of them at a time."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def read(path: Path) -> None:
        subprocess.run(["tesseract", str(path), "-", "-l", LANGUAGES, "--psm", "6"], check=True,
                       capture_output=True, env=env)

    start = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(read, pages))
    return len(pages) / (time.perf_counter() - start) * 60


def _wait(db: sqlite3.Connection, letters: int, daemon: subprocess.Popen[bytes], deadline: float) -> None:
    """Until `letters` letters are registered and no OCR job is left."""
    while (db.execute("SELECT count(*) FROM letters").fetchone()[0] < letters
           or db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0]):
        if time.perf_counter() > deadline or daemon.poll() is not None:
            raise RuntimeError("the gateway did not finish")
        time.sleep(0.02)


def gateway(faxes: list[bytes], workdir: Path, workers: int) -> tuple[float, float]:
    """Pages per minute of the daemon with `ocr_workers = workers`, warm; and the seconds its
    first fax took from drop to text, the workers starting."""
    workdir.mkdir()
    config = write_config(workdir, f"""
        [smtp]
        enabled = false
        [fax]
        poll_seconds = 0.2
        stable_seconds = 0
        ocr_languages = "{LANGUAGES}"
        ocr_workers = {workers}
    """)
    with running_daemon(config, workdir) as daemon:
        staging = workdir / "staging"
        staging.mkdir()
        for n, data in enumerate([fax(999_999), *faxes]):
            (staging / f"fax{n}.tif").write_bytes(data)
        drop = workdir / "state" / "fax-drop"
        db = sqlite3.connect(workdir / "state" / "registry.sqlite3", timeout=30)
        try:
            start = time.perf_counter()
            os.rename(staging / "fax0.tif", drop / "fax0.tif")
            _wait(db, 1, daemon, start + 600)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            for n in range(1, len(faxes) + 1):
                os.rename(staging / f"fax{n}.tif", drop / f"fax{n}.tif")
            _wait(db, len(faxes) + 1, daemon, start + 1800)
            rate = len(faxes) * PAGES_PER_FAX / (time.perf_counter() - start) * 60
        finally:
            db.close()
    return rate, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="two-page faxes per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    faxes = [fax(n) for n in range(args.count)]
    figures: dict[str, list[float]] = {}
    colds: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        pages = page_files(faxes, workdir / "pages")
        for r in range(args.rounds):
            cases: list[tuple[str, Callable[[], float]]] = [
                ("tesseract, 1 process", lambda: tesseract(pages, 1)),
                ("tesseract, 2 processes", lambda: tesseract(pages, 2)),
            ]
            for workers in (1, 2):
                def run(workers: int = workers, r: int = r) -> float:
                    rate, cold = gateway(faxes, workdir / f"gateway-{r}-{workers}", workers)
                    colds[workers].append(cold)
                    return rate
                cases.append((f"gateway, ocr_workers = {workers}", run))
            if r % 2:
                cases.reverse()
            for name, measure in cases:
                figures.setdefault(name, []).append(measure())
            print(f"round {r + 1}: " + ", ".join(f"{name} {figures[name][-1]:.1f}" for name in sorted(figures))
                  + " pages/min", flush=True)

    def ratios(mine: str, theirs: str) -> float:
        return statistics.median(a / b for a, b in zip(figures[mine], figures[theirs], strict=True))

    print(f"\n{args.count} two-page faxes ({args.count * PAGES_PER_FAX} pages), medians of {args.rounds} "
          "alternating rounds")
    print(f"{'':30s} {'pages/min':>10s}")
    for name in ("tesseract, 1 process", "tesseract, 2 processes",
                 "gateway, ocr_workers = 1", "gateway, ocr_workers = 2"):
        print(f"{name:30s} {statistics.median(figures[name]):10.1f}")
    for workers in (1, 2):
        print(f"first fax from a cold start, ocr_workers = {workers}: {statistics.median(colds[workers]):.1f} s")
    print(f"\nocr_workers = 2 / ocr_workers = 1:            "
          f"{ratios('gateway, ocr_workers = 2', 'gateway, ocr_workers = 1'):.2f}")
    print(f"ocr_workers = 1 / tesseract, 1 process:       "
          f"{ratios('gateway, ocr_workers = 1', 'tesseract, 1 process'):.2f}")
    print(f"ocr_workers = 2 / tesseract, 2 processes:     "
          f"{ratios('gateway, ocr_workers = 2', 'tesseract, 2 processes'):.2f}")
    print(f"tesseract, 2 processes / 1 process:           "
          f"{ratios('tesseract, 2 processes', 'tesseract, 1 process'):.2f}")


if __name__ == "__main__":
    main()
