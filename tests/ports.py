"""Free loopback ports for the servers the tests start.

A port the kernel hands out for `bind(("127.0.0.1", 0))` lies in its ephemeral range, where every
outgoing connection also takes its local port: probed free, it may be taken by a client before
the server binds it. These are chosen below that range, where only another explicit bind can
take them, and free for both TCP and UDP (dnsmasq binds both).
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    highest = max(_ephemeral_start(), LOWEST + 1_000)
    for _ in range(500):
        port = random.randrange(LOWEST, highest)
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {LOWEST} and {highest}")
