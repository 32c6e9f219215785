"""The pool that reads faxes: every worker starts (and warms up) with the pool, an idle pool is
closed and started again for the next fax, and the engine keeps onnxruntime's memory arena."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import wait_for
from fax_samples import ENGLISH, SIMPLIFIED, tiff_fax
from web_support import Site

from gateway.stages import rulebook
from gateway.stages.fax import text
from gateway.stages.fax.text import TextReader


def test_the_engine_reuses_its_memory() -> None:
    from rapidocr_onnxruntime.utils.infer_engine import OrtInferSession

    from gateway.stages.fax.reader import engine
    builder = OrtInferSession._init_sess_opts
    ocr = engine()
    for session in (ocr.text_det.infer.session, ocr.text_rec.session.session, ocr.text_cls.infer.session):
        assert session.get_session_options().enable_cpu_mem_arena
    assert OrtInferSession._init_sess_opts is builder  # rapidocr's own builder is left as it was


def _read(site: Site, number: str) -> bool:
    letter = site.registry.letter(number)
    return letter is not None and "text-read" in [e.action for e in letter.events]


def test_workers_start_together_and_an_idle_pool_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = Site(tmp_path)
    site.gateway.config.write_text(site.gateway.config.read_text().replace("ocr_workers = 1", "ocr_workers = 2"))
    config = rulebook.load(str(site.gateway.config))
    monkeypatch.setattr(text, "POOL_IDLE_SECONDS", 0.5)
    first = site.ingest("fax", tiff_fax([ENGLISH]), filename="fax_+8620123456_20261122-090000.tif")
    reader = TextReader(config, site.registry, poll_seconds=0.1)
    reader.start()
    try:
        # One fax, and yet both workers: a second fax coming meanwhile finds its worker ready.
        wait_for(lambda: reader._pool is not None and len(reader._pool._processes) == 2, 30, "both workers")
        wait_for(lambda: _read(site, first), 120, "the first fax read")
        wait_for(lambda: reader._pool is None, 30, "the idle pool closed")
        second = site.ingest("fax", tiff_fax([SIMPLIFIED]), filename="fax_+8620123457_20261122-091000.tif")
        reader.wake()
        wait_for(lambda: _read(site, second), 120, "the next fax read by a new pool")
        wait_for(lambda: reader._pool is None, 30, "the new pool closed once idle")
    finally:
        reader.stop()
        site.close()


def test_a_reader_killed_mid_fax_costs_no_fax_its_text_and_the_pool_is_made_again(tmp_path: Path) -> None:
    """A worker killed while faxes are read (the kernel's OOM killer, an engine that crashes) breaks
    the whole pool: every fax in it fails with it, and the pool takes no more. None of those faxes
    is stored without its text: they are read again, one at a time (to find one that breaks the
    pool each time), by a new pool; and so is the fax that comes next."""
    site = Site(tmp_path)
    site.gateway.config.write_text(site.gateway.config.read_text().replace("ocr_workers = 1", "ocr_workers = 2"))
    config = rulebook.load(str(site.gateway.config))
    faxes = [site.ingest("fax", tiff_fax([[*ENGLISH, f"Reference {n}"]]),
                         filename=f"fax_+862012345{n}_20261122-090000.tif") for n in range(2)]
    reader = TextReader(config, site.registry, poll_seconds=0.1)
    reader.start()
    try:
        wait_for(lambda: len(reader._running) == 2 and reader._pool is not None and len(reader._pool._processes) == 2,
                 60, "both faxes in the pool")
        os.kill(next(iter(reader._pool._processes)), signal.SIGKILL)  # type: ignore[union-attr]
        for number in faxes:
            wait_for(lambda number=number: _read(site, number), 180, f"{number} read")  # type: ignore[misc]
        later = site.ingest("fax", tiff_fax([[*ENGLISH, "Reference 9"]]),
                            filename="fax_+8620123459_20261122-091000.tif")
        reader.wake()
        wait_for(lambda: _read(site, later), 180, "the next fax read")
    finally:
        reader.stop()
        site.close()
    for number in [*faxes, later]:
        letter = site.registry.letter(number)
        assert letter is not None and "Purchase" in letter.body_text, (number, letter and letter.defects)
        assert not [d for d in letter.defects if "text not read" in d]
