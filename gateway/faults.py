"""Crash points for the recovery tests.

`GATEWAY_CRASH_AT=<point>` makes the process kill itself with SIGKILL when it
reaches that point, exactly as a power cut or the OOM killer would. Unset (as
in production) each checkpoint is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_POINT = os.environ.get("GATEWAY_CRASH_AT", "")


def read_environment() -> None:
    """Read GATEWAY_CRASH_AT again: for a process forked with another environment (gateway.launcher)."""
    global _POINT
    _POINT = os.environ.get("GATEWAY_CRASH_AT", "")


def checkpoint(point: str) -> None:
    if _POINT == point:
        os.kill(os.getpid(), signal.SIGKILL)
