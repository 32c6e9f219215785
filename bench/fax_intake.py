"""Faxes through the drop folder and OCR, in faxes per minute, against a same-run baseline.

N two-page fine-resolution G4 TIFFs (English and Chinese text rendered by the
test suite's fax generator) are dropped at once into the folder of a running
daemon; the clock stops when every one is registered and its text read.
Baseline: the bare `tesseract` command (same languages, --psm 6,
OMP_THREAD_LIMIT=1) run on the same pages one after another, each page given
as a PNG file prepared beforehand.

    .venv/bin/python bench/fax_intake.py [--count 10] [--workers 1]
"""
from __future__ import annotations

import argparse
import io
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemon import running_daemon, write_config  # noqa: E402  (bench/ is the script's folder, on sys.path)

from fax_samples import ENGLISH, SIMPLIFIED, tiff_fax  # noqa: E402

LANGUAGES = "eng+chi_sim+chi_tra"


def baseline(faxes: list[bytes], workdir: Path) -> float:
    pages: list[Path] = []
    for n, data in enumerate(faxes):
        with Image.open(io.BytesIO(data)) as image:
            for p, frame in enumerate(ImageSequence.Iterator(image)):
                path = workdir / f"fax{n}-page{p}.png"
                frame.convert("L").save(path)
                pages.append(path)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    start = time.perf_counter()
    for path in pages:
        subprocess.run(["tesseract", str(path), "-", "-l", LANGUAGES, "--psm", "6"], check=True,
                       capture_output=True, env=env)
    return len(faxes) / (time.perf_counter() - start) * 60


def gateway(faxes: list[bytes], workdir: Path, workers: int) -> float:
    state = workdir / "state"
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
        for n, data in enumerate(faxes):
            (staging / f"fax{n}.tif").write_bytes(data)
        drop = state / "fax-drop"
        start = time.perf_counter()
        for n in range(len(faxes)):
            os.rename(staging / f"fax{n}.tif", drop / f"fax{n}.tif")
        db = sqlite3.connect(state / "registry.sqlite3", timeout=30)
        deadline = start + 1800
        while (db.execute("SELECT count(*) FROM letters").fetchone()[0] < len(faxes)
               or db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0]):
            if time.perf_counter() > deadline or daemon.poll() is not None:
                raise RuntimeError("the gateway did not finish")
            time.sleep(0.05)
        rate = len(faxes) / (time.perf_counter() - start) * 60
        db.close()
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="two-page faxes")
    parser.add_argument("--workers", type=int, default=1, help="[fax] ocr_workers for the gateway")
    args = parser.parse_args()
    faxes = [tiff_fax([ENGLISH, SIMPLIFIED], resolution="fine", compression="group4",
                      tags={"ImageDescription": f"+86 10 5555 {n:04d}"}) for n in range(args.count)]
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        base = baseline(faxes, workdir)
        ours = gateway(faxes, workdir, args.workers)
    print(f"{'faxes':>6} {'ocr workers':>11} {'baseline faxes/min':>19} {'gateway faxes/min':>18} {'ratio':>6}")
    print(f"{args.count:>6} {args.workers:>11} {base:>19.1f} {ours:>18.1f} {ours / base:>6.2f}")


if __name__ == "__main__":
    main()
