"""The daemon's log: one entry, one line, whatever a sender or a fax machine put in the names and
subjects it carries; a traceback keeps its lines."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import logging
from gateway import logs
logs.setup("INFO")
log = logging.getLogger("gateway.fax")
log.warning("fax %s: taken", "fax_0105551234.tif\\nALERT gateway.daemon: forged\\r\\u202egnp.exe\\x1b[31m")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("a real failure")
"""


@pytest.mark.parametrize("journal", [False, True], ids=["terminal", "journald"])
def test_a_hostile_name_cannot_start_a_log_line_of_its_own(journal: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"} | {"PYTHONPATH": str(ROOT)}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    lines = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                           check=True).stderr.splitlines()
    [entry] = [line for line in lines if "taken" in line]
    assert "fax_0105551234.tif\\nALERT gateway.daemon: forged\\r\\u202egnp.exe\\u001b[31m: taken" in entry
    assert not any("forged" in line and "taken" not in line for line in lines)
    assert all("\x1b" not in line and "\u202e" not in line for line in lines)
    # the traceback of a real failure is still read as one, line by line
    assert any(line.endswith("ZeroDivisionError: division by zero") for line in lines)
    if journal:
        assert all(line.startswith(("<4>", "<3>")) for line in lines), lines
