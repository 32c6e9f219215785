"""The gateway daemon as the benchmarks run it: started, waited for until READY, stopped."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_config(workdir: Path, sections: str) -> Path:
    """A gateway.toml in workdir with state in workdir/state, one department, quiet logs, and `sections`."""
    config = workdir / "gateway.toml"
    config.write_text(textwrap.dedent(f"""
        [gateway]
        state_dir = "{workdir / 'state'}"
        [triage]
        department = "office"
        [logging]
        level = "WARNING"
        [[departments]]
        id = "office"
        name = "Office"
        owners = ["office@example.org"]
        head = "head@example.org"
        addresses = ["liaison@example.org"]
    """) + textwrap.dedent(sections))
    return config


@contextmanager
def running_daemon(config: Path, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`gateway run` with a notify socket of its own; yields once the daemon reports READY."""
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    daemon = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "run"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        yield daemon
    finally:
        daemon.terminate()
        daemon.wait(60)
        notify.close()
