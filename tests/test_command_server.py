"""The warm command server (gateway/launcher.py): read commands handed to it answer exactly as
they do in-process — output, errors, exit status, terminal width, configuration, working
directory — while the client process loads none of the libraries; it serves only its own user,
steps aside when the installation changes, and passes signals on to the command it runs."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, Gateway, make_message, wait_for, write_messages
from gateway import launcher


NO_DAEMON = 2  # gateway status's exit status when no daemon runs: the command ran


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A runtime directory of the test's own: short, as a socket's path must be (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="gw-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_env(gateway: Gateway, runtime: Path, **extra: str) -> dict[str, str]:
    return gateway.env(XDG_RUNTIME_DIR=str(runtime), **extra)


def socket_of(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / f"gateway-commands-{os.getuid()}"


def command(gateway: Gateway, env: dict[str, str], *args: str, cwd: Path = ROOT,
            config: bool = True) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run `gateway ARGS`; also whether it ran in this process (the client imported click)."""
    argv = [sys.executable, "-X", "importtime", "-m", "gateway"]
    if config:
        argv += ["--config", str(gateway.config)]
    done = subprocess.run([*argv, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    imports = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    in_process = any(line.rstrip().endswith(" click") for line in imports)
    stderr = "".join(line + "\n" for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, stderr), in_process


def warm(gateway: Gateway, env: dict[str, str]) -> int:
    """Start the server with a first command; its pid once it listens."""
    first, in_process = command(gateway, env, "status")
    assert first.returncode == NO_DAEMON, first.stderr
    assert in_process  # the first one starts the server and runs itself
    wait_for(lambda: list(socket_of(env).glob("*.sock")), what="the command server's socket")
    return server_pid(env)


def servers(under: Path) -> list[int]:
    """The command servers whose socket is at or under `under`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--serve" in cmdline and any(arg.startswith(bytes(under)) for arg in cmdline):
                found.append(int(entry.name))
    return found


def server_pid(env: dict[str, str]) -> int:
    found = servers(next(socket_of(env).glob("*.sock")))
    assert found, "no command server runs"
    return found[0]


def stop(env: dict[str, str]) -> None:
    try:
        pid = server_pid(env)
    except (AssertionError, StopIteration):
        return
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), what="the server to exit")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


@pytest.fixture
def registered(gateway: Gateway) -> Gateway:
    gateway.run("db", "upgrade")
    folder = gateway.state.parent / "in"
    folder.mkdir()
    gateway.run("ingest", *write_messages(folder, [make_message(n, subject=f"合同 {n} [b]bold[/b]")
                                                    for n in range(3)]))
    return gateway


def test_read_commands_answer_through_the_server_exactly_as_in_process(registered: Gateway, runtime: Path) -> None:
    env = server_env(registered, runtime)
    try:
        warm(registered, env)
        number = registered.list_json()[0]["number"]
        off = {**env, "GATEWAY_COMMAND_SERVER": "off"}
        for args in (("letters", "list", "--limit", "50"), ("letters", "list", "--json"),
                     ("letters", "show", number), ("letters", "show", number, "--json"),
                     ("letters", "show", "2026-999999"), ("letters", "search", "合同"),
                     ("letters", "search", "合同\udcff"), ("status",),
                     ("status", "--json"), ("outbox", "list"), ("quarantine", "list"),
                     ("letters", "list", "--as", "nobody-at-all")):
            served, in_process = command(registered, env, *args)
            assert not in_process, args
            alone, in_process = command(registered, off, *args)
            assert in_process, args
            assert (served.returncode, served.stdout, served.stderr) == \
                (alone.returncode, alone.stdout, alone.stderr), args
        missing, _ = command(registered, env, "letters", "show", "2026-999999")
        assert missing.returncode == 1 and "no letter 2026-999999" in missing.stderr
        undecodable, _ = command(registered, env, "letters", "search", "合同\udcff")  # a byte that is not UTF-8
        assert undecodable.returncode == 2 and "Invalid value for 'QUERY': '合同\\xff' is not UTF-8 text" \
            in undecodable.stderr, undecodable.stderr
        # Commands that change anything, and help, never go to the server.
        for args in (("letters", "--help"), ("users", "list"), ("db", "upgrade")):
            done, in_process = command(registered, env, *args)
            assert done.returncode == 0 and in_process, args
    finally:
        stop(env)


def test_the_child_takes_the_clients_directory_environment_and_terminal(registered: Gateway, runtime: Path,
                                                                       tmp_path: Path) -> None:
    env = server_env(registered, runtime)
    try:
        warm(registered, env)
        # A relative --config is read from the client's directory; GATEWAY_CONFIG from its environment.
        relative, in_process = command(registered, env, "--config", registered.config.name, "letters", "list",
                                       "--json", cwd=registered.config.parent, config=False)
        assert not in_process and relative.returncode == 0, relative.stderr
        assert len(json.loads(relative.stdout)) == 3
        (tmp_path / "other").mkdir()
        other = Gateway(tmp_path / "other")
        other.run("db", "upgrade")
        by_env, in_process = command(other, {**env, "GATEWAY_CONFIG": str(other.config)}, "letters", "list",
                                     "--json", config=False)
        assert not in_process and json.loads(by_env.stdout) == []
        # On a terminal the table is as wide as the terminal, exactly as in-process.
        long = registered.state.parent / "long.eml"
        long.write_bytes(make_message(9, subject="a long subject " * 30))
        registered.run("ingest", str(long))
        served = on_terminal(registered, env, 200)
        alone = on_terminal(registered, {**env, "GATEWAY_COMMAND_SERVER": "off"}, 200)
        assert served == alone
        assert max(len(line) for line in served.splitlines()) > 150
    finally:
        stop(env)


def on_terminal(gateway: Gateway, env: dict[str, str], columns: int) -> str:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(gateway.config), "letters", "list"],
                            stdin=secondary, stdout=secondary, stderr=secondary, env={**env, "TERM": "xterm"},
                            cwd=ROOT)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: every holder of the terminal's other side has gone
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0, output
    return output.decode().replace("\r\n", "\n")


def test_a_changed_installation_sends_the_server_away(registered: Gateway, runtime: Path) -> None:
    # A module of this test's own that every process loads at start (Python imports sitecustomize
    # from its path), standing for an upgraded library: the installation's own files stay untouched,
    # so that the servers of tests running beside this one carry on.
    site = runtime / "site"
    site.mkdir()
    module = site / "sitecustomize.py"
    module.write_text("LOADED = True\n")
    env = server_env(registered, runtime, PYTHONPATH=str(site))
    try:
        pid = warm(registered, env)
        served, in_process = command(registered, env, "status")
        assert served.returncode == NO_DAEMON and not in_process
        before = module.stat()
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        done, in_process = command(registered, env, "status")
        assert done.returncode == NO_DAEMON and in_process  # the server stepped aside; nothing ran twice
        wait_for(lambda: _zombie(pid) or not Path(f"/proc/{pid}").exists(), what="the stale server to exit")
    finally:
        stop(env)


def test_only_its_own_user_reaches_the_server(registered: Gateway, runtime: Path) -> None:
    env = server_env(registered, runtime)
    # A directory others may enter is never used: the command runs in-process and starts nothing.
    exposed = socket_of(env)
    exposed.mkdir(mode=0o755)
    os.chmod(exposed, 0o755)
    done, in_process = command(registered, env, "status")
    assert done.returncode == NO_DAEMON and in_process
    # A server would have been started (Popen) before the command ended: there is none, and no socket.
    assert not servers(exposed) and not list(exposed.iterdir())
    os.chmod(exposed, 0o700)
    try:
        warm(registered, env)
        # Even with the directory opened up, another user's connection is closed unanswered.
        os.chmod(runtime, 0o711)
        os.chmod(exposed, 0o711)
        sock = next(exposed.glob("*.sock"))
        os.chmod(sock, 0o777)
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
                 "print(repr(s.recv(100)))\n")
        other = subprocess.run(["/usr/bin/python3", "-c", probe, str(sock)], capture_output=True, text=True,
                               user="nobody", cwd="/", timeout=30)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "b''"
        os.chmod(exposed, 0o700)
        served, in_process = command(registered, env, "status")
        assert served.returncode == NO_DAEMON and not in_process  # and its own user is still served
    finally:
        stop(env)


def test_one_server_at_a_time_and_gone_with_its_socket(registered: Gateway, runtime: Path) -> None:
    env = server_env(registered, runtime)
    try:
        pid = warm(registered, env)
        sock = next(socket_of(env).glob("*.sock"))
        second = subprocess.run([sys.executable, "-m", "gateway.launcher", "--serve", str(sock)], cwd=ROOT,
                                env=env, timeout=60)
        assert second.returncode == 0  # it found the first one's lock and left
        assert server_pid(env) == pid
        sock.unlink()
        wait_for(lambda: _zombie(pid) or not Path(f"/proc/{pid}").exists(), timeout=20,
                 what="the server to notice its socket is gone")
    finally:
        stop(env)


def test_a_signal_to_the_client_reaches_the_command(registered: Gateway, runtime: Path) -> None:
    folder = registered.state.parent / "more"
    folder.mkdir()
    long_subjects = [make_message(n, subject=f"{n} " + "长" * 300) for n in range(120)]
    registered.run("ingest", *write_messages(folder, long_subjects))
    env = server_env(registered, runtime)
    try:
        server = warm(registered, env)
        # Output nobody reads: the command blocks writing to the full pipe until it is signalled.
        client = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(registered.config),
                                   "letters", "list", "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        children = wait_for(lambda: command_children(server), what="the server's child for the command")
        # The client passes signals on once the command has started: until then one would end it.
        wait_for(lambda: catches(client.pid, signal.SIGTERM), what="the client to pass signals on")
        assert client.poll() is None
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=30) == 128 + signal.SIGTERM
        assert client.stdout is not None
        client.stdout.close()
        for child in children:  # type: ignore[union-attr]
            wait_for(lambda pid=child: _zombie(pid) or not Path(f"/proc/{pid}").exists(),
                     what="the command to end with its client")
    finally:
        stop(env)


def catches(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)


def command_children(server: int) -> list[int]:
    children = Path(f"/proc/{server}/task/{server}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def test_a_connection_that_sends_nothing_useful_changes_nothing(registered: Gateway, runtime: Path) -> None:
    env = server_env(registered, runtime)
    try:
        warm(registered, env)
        sock = next(socket_of(env).glob("*.sock"))
        with socket.socket(socket.AF_UNIX) as s:  # no descriptors, a broken message
            s.connect(str(sock))
            s.sendall(struct.pack("!I", 5) + b"{oops")
            assert s.recv(100) == b""
        served, in_process = command(registered, env, "status")
        assert served.returncode == NO_DAEMON and not in_process
    finally:
        stop(env)


def test_the_socket_path_always_fits(monkeypatch: pytest.MonkeyPatch, runtime: Path) -> None:
    """A Unix socket's path holds 107 bytes: a long TMPDIR falls back to /tmp."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = runtime / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    path = launcher.socket_path()
    assert path is not None and path.startswith(f"/tmp/gateway-commands-{os.getuid()}/")
    assert len(os.fsencode(path)) <= 107
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert launcher.socket_path() == f"{runtime}/gateway-commands-{os.getuid()}/{Path(path).name}"


def test_a_server_that_does_not_answer_is_passed_by_and_runs_nothing_later(registered: Gateway,
                                                                            runtime: Path) -> None:
    """A stopped server: the command runs in-process after the hand-over's 10 s; once the server
    goes on, the child it makes for the abandoned request runs nothing (one audited read, not two)."""
    env = server_env(registered, runtime)
    number = registered.list_json()[0]["number"]

    def reads() -> int:
        # A connection of its own each time: an open read must not hold up the command's audit row.
        database = sqlite3.connect(registered.state / "registry.sqlite3")
        try:
            return int(database.execute("SELECT count(*) FROM audit WHERE action = 'read' AND letter_id = "
                                        "(SELECT id FROM letters WHERE number = ?)", (number,)).fetchall()[0][0])
        finally:
            database.close()

    try:
        server = warm(registered, env)
        before = reads()
        os.kill(server, signal.SIGSTOP)
        try:
            started = time.monotonic()
            done, in_process = command(registered, env, "letters", "show", number)
            assert done.returncode == 0 and in_process and number in done.stdout
            assert 9 < time.monotonic() - started < 60
        finally:
            os.kill(server, signal.SIGCONT)
        assert reads() == before + 1
        # The server takes its connections in order: the abandoned request's child is made before
        # this command's. Once both have ended, the abandoned one must have run nothing.
        served, in_process = command(registered, env, "letters", "show", number)
        assert served.returncode == 0 and not in_process
        wait_for(lambda: not command_children(server), what="the server's children to end")
        assert reads() == before + 2
    finally:
        stop(env)
