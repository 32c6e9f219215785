"""A PostgreSQL outage while faxes wait for their text: the fax text reader says so once and once
again when the database is back — no traceback per poll — and then reads the waiting fax."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import PostgresServer, wait_for
from fax_samples import ENGLISH, tiff_fax
from web_support import Site

from gateway.stages.fax.text import TextReader


def test_an_outage_is_two_lines_not_a_flood(tmp_path: Path, postgres: PostgresServer, pg_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    site = Site(tmp_path, registry_url=pg_url)
    number = site.ingest("fax", tiff_fax([ENGLISH]), filename="fax_+8620123456_20261122-090000.tif")
    reader = TextReader(site.config, site.registry, poll_seconds=0.2)
    reader.backoff_max = 1.0  # retries every second, so a few seconds of outage are many polls
    caplog.set_level(logging.INFO, logger="gateway.stages.fax")
    postgres.stop()
    try:
        reader.start()
        wait_for(lambda: reader.failures >= 4, 30, "the reader to find the database away four times")
    finally:
        postgres.start()
    try:
        wait_for(lambda: "text-read" in [e.action for e in site.registry.letter(number).events],  # type: ignore[union-attr]
                 60, "the waiting fax to be read once the database is back")
    finally:
        reader.stop()
        site.close()
    records = [r for r in caplog.records if r.name == "gateway.stages.fax"]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    away = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(away) == 1 and "registry" in away[0], away  # one line for four failed polls
    back = [r.getMessage() for r in records if "working again" in r.getMessage()]
    assert len(back) == 1 and back[0].startswith("fax-text: working again after"), back
