"""Free loopback ports for the servers the tests start.

A port the kernel hands out for `bind(("127.0.0.1", 0))` lies in its ephemeral range, where every
outgoing connection also takes its local port: probed free, it may be taken by a client before
the server binds it. These are chosen below that range, where only another explicit bind can
take them, and free for both TCP and UDP (dnsmasq binds both).

A port is handed out once in a run: probed free, it stays free until its server binds it, and a
second probe would find it free too (one gateway's SMTP and metrics listeners were given the same
port, which its configuration rightly refuses). Each pytest-xdist worker draws from a slice of the
range of its own, so two workers never hand out the same port either.
"""
from __future__ import annotations

import os
import random
import re
import socket
from pathlib import Path

LOWEST = 10_000
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _slice() -> tuple[int, int]:
    """This process's part of the range: the whole of it, or one worker's share."""
    highest = max(_ephemeral_start(), LOWEST + 1_000)
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker or workers < 2:
        return LOWEST, highest
    share = (highest - LOWEST) // workers
    start = LOWEST + int(worker.group(1)) * share
    return start, start + share


def free_port() -> int:
    lowest, highest = _slice()
    for _ in range(500):
        port = random.randrange(lowest, highest)
        if port in _given:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {lowest} and {highest}")
