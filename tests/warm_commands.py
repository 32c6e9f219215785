"""Commands run by the tests through the warm command server (gateway/launcher.py).

Starting Python and importing the gateway takes about a second of CPU; a suite that runs a thousand
commands spends most of its time there. The command server forks a child of a process that has
imported it all, and the child runs the command exactly as `python -m gateway` would: its own
process, the arguments, environment, working directory and standard streams it is given. The
tests hand every command to it the way the launcher hands over a read command, except:

- a command that is to crash at a point (GATEWAY_CRASH_AT): its death by SIGKILL is what the test
  asserts, and only a parent sees it;
- `gateway run`, the daemon, a process of its own as under systemd;
- a command run with an environment that changes how Python starts (PYTHONPATH, as the power-loss
  shim does; LD_PRELOAD) or that sets up or turns off the command server itself.

Those, and any command when the server cannot be reached, start a Python of their own, as do the
tests of a command's start (tests/test_packaging.py, tests/test_config.py), which run it themselves.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway import launcher

_STREAM = {"encoding": "utf-8", "errors": "surrogateescape", "tty": False}
_STDERR = {"encoding": "utf-8", "errors": "backslashreplace", "tty": False}
_UMASK = launcher._umask()  # read (by setting it) once, before the tests' threads create files


def run(argv: list[str], *, env: dict[str, str], cwd: Path, input: bytes | None,
        timeout: float) -> subprocess.CompletedProcess[str] | None:
    """The finished command, or None when the server could not start it (nothing has run)."""
    if env.get("GATEWAY_CRASH_AT") or argv_command(argv) == "run" or not _same_interpreter(env):
        return None
    client = _connect()
    if client is None:
        return None
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, \
            tempfile.TemporaryFile() as stderr:
        if input:
            stdin.write(input)
            stdin.seek(0)
        try:
            request = {"argv": argv, "env": env, "cwd": str(cwd), "umask": _UMASK,
                       "streams": [_STREAM, _STREAM, _STDERR]}
            client.settimeout(10)
            launcher._send(client, request)
            ready = launcher._receive(client)
            if ready is None or not ready.get("ready"):
                return None
            socket.send_fds(client, [b"\0"], [stdin.fileno(), stdout.fileno(), stderr.fileno()])
            started = launcher._receive(client)
            if started is None or "pid" not in started:
                return None
            client.settimeout(timeout)
            try:
                finished = launcher._receive(client)
            except TimeoutError:
                os.kill(int(started["pid"]), signal.SIGKILL)
                raise subprocess.TimeoutExpired(["gateway", *argv], timeout) from None
        finally:
            client.close()
        if finished is None or "exit" not in finished:
            raise AssertionError(f"gateway {' '.join(argv)} ended without an exit status (killed?)")
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(["gateway", *argv], int(finished["exit"]),
                                           _text(stdout.read()), _text(stderr.read()))


def _same_interpreter(env: dict[str, str]) -> bool:
    """Whether a Python started with `env` would be the server's: the same start-up (PYTHONPATH and
    its sitecustomize, as the power-loss shim; LD_PRELOAD) and the same command server."""
    names = {name for name in (*env, *os.environ) if name.startswith(("PYTHON", "LD_"))}
    names |= {"XDG_RUNTIME_DIR", "TMPDIR", launcher.ENV_SWITCH}
    return all(env.get(name) == os.environ.get(name) for name in names)


def argv_command(argv: list[str]) -> str | None:
    """The command's first word, past `--config PATH`."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _text(data: bytes) -> str:
    # As subprocess.run(text=True) reads a child's output: UTF-8, universal newlines.
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


_servers: list[subprocess.Popen[bytes]] = []  # held, so that none is reaped as if forgotten


def _connect() -> socket.socket | None:
    path = launcher.socket_path()
    if path is None:
        return None
    deadline = time.monotonic() + 30
    started = False
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(path)
            return client
        except OSError:
            client.close()
        if not started:
            server = launcher._start_server(path)
            if server is not None:
                _servers.append(server)
            started = True
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
