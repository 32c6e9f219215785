"""The pool that reads faxes: every worker starts (and warms up) with the pool, an idle pool is
closed and started again for the next fax, and the engine keeps onnxruntime's memory arena."""
from __future__ import annotations

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
