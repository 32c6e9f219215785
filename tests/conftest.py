"""Fixtures: real servers on loopback, real processes, real files."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
from dovecot_server import dovecot_fixture
from ports import free_port
from smtp_sink import SmtpSink

import warm_commands

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def child_pids(pid: int) -> list[int]:
    """The processes a running process has started, read from each of its threads' lists (a thread
    that ends while they are read has none left to list: its children belong to the others)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return pids


def lane_helpers(pid: int, lane: str) -> list[int]:
    """The daemon's registrar helpers of that lane ("large", "spool-2"), if any run: their last
    argument names the lane."""
    found = []
    for child in child_pids(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().endswith(b"\0" + lane.encode() + b"\0"):
                found.append(child)
        except OSError:
            pass  # ended meanwhile
    return found


# -- PostgreSQL -------------------------------------------------------------
class PostgresServer:
    """A throwaway cluster run as the unprivileged `postgres` user (it refuses root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); run scripts/test")
        self.bindir = Path(bins[-1]).parent
        self.user = pwd.getpwnam("postgres")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run([self.bindir / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, user="postgres",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)

    def start(self) -> None:
        with open(self.dir / "server.log", "ab") as server_log:
            self.proc = subprocess.Popen(
                [self.bindir / "postgres", "-D", self.dir / "data", "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.dir), "-c", "fsync=off", "-c", "max_connections=200"],
                user="postgres", stdout=subprocess.DEVNULL, stderr=server_log, cwd=self.dir)
        wait_for(self._accepts, 30, "PostgreSQL to accept connections")

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)  # fast shutdown; SIGTERM would wait for clients
            self.proc.wait(30)
        self.proc = None

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = f"gw_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_the_checkout() -> Iterator[None]:
    """Tests and what they start write only under the system temp dir: a run leaves no new file
    in the checkout (beside what .gitignore names, such as storage/ and caches)."""
    def untracked() -> set[str]:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard"],
                                capture_output=True, text=True)
        return set(listed.stdout.splitlines()) if listed.returncode == 0 else set()
    before = untracked()
    yield
    left = sorted(untracked() - before)
    assert not left, f"the test run left files in the checkout: {left[:10]}"


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> Iterator[None]:
    """Passwords hashed and checked in the tests' own process (the web register's pages, people
    added by the tests) with argon2 at its least cost: the same code and checks, a thousandth of
    the CPU (the default costs a tenth of a second a hash, and hundreds of tests sign in). Commands
    and daemons, processes of their own, hash at the default cost."""
    from argon2 import PasswordHasher

    from gateway.services import people

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    default = people._hasher
    people._hasher = lambda: cheap  # type: ignore[assignment]
    yield
    people._hasher = default


@pytest.fixture(scope="session", autouse=True)
def command_servers() -> Iterator[None]:
    """The commands the tests run go through the warm command server (gateway/launcher.py; the
    tests' own commands by tests/warm_commands.py), one for this worker, in a directory of its own:
    removing it at the end sends the server away."""
    runtime = Path(tempfile.mkdtemp(prefix="gw-commands-"))
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    yield
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


# -- Dovecot (tests/dovecot_server.py): one server for the session, a fresh user per test --------
dovecot = dovecot_fixture(scope="session")


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.create_database()


# -- configuration and processes ---------------------------------------------
DEPARTMENTS = textwrap.dedent("""
    [[departments]]
    id = "general-office"
    name = "General Office"
    owners = ["office@example.org"]
    head = "office.head@example.org"
    addresses = ["liaison@example.org"]

    [[departments]]
    id = "business"
    name = "Business"
    owners = ["sales.desk@example.org"]
    head = "business.head@example.org"
    addresses = ["sales@example.org"]
""")


# Letters go to the department they are addressed to (or whose mailbox they
# came from); the rest to triage. Tests of classification bring their own rules.
ADDRESS_RULES = textwrap.dedent("""
    rules:
      - name: by-address
        when:
          any:
            - recipient_department: any
            - mailbox_department: any
        set: {department: recipient}
""")


class Gateway:
    """One configured gateway: its config file, state directory and commands."""

    def __init__(self, tmp: Path, registry_url: str = "", extra: str = "", rules: str = ADDRESS_RULES):
        self.smtp_port = free_port()
        self.metrics_port = free_port()
        self.web_port = free_port()
        self.state = tmp / "storage"
        self.config = tmp / "gateway.toml"
        self.rules = tmp / "rules.yaml"
        self.rules.write_text(rules)
        self.config.write_text(textwrap.dedent(f"""
            [gateway]
            state_dir = "{self.state}"
            timezone = "Asia/Shanghai"
            domains = ["example.org"]

            [registry]
            url = "{registry_url}"

            [spool]
            max_attempts = 3
            rescan_seconds = 1

            [triage]
            department = "general-office"

            [metrics]
            listen = "127.0.0.1:{self.metrics_port}"

            [web]
            listen = "127.0.0.1:{self.web_port}"

            [logging]
            level = "INFO"

            [smtp]
            listen = ["127.0.0.1:{self.smtp_port}"]
            hostname = "gw.example.org"
            accept_addresses = ["fax-inbox@example.org"]
        """) + extra + DEPARTMENTS)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NOTIFY_", "WATCHDOG_"))}
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["--config", str(self.config), *args]
        warm = warm_commands.run(argv, env=env or self.env(), cwd=ROOT, input=input, timeout=timeout)
        proc = warm or subprocess.run([sys.executable, "-m", "gateway", *argv],
                                      capture_output=True, text=True, env=env or self.env(), cwd=ROOT,
                                      timeout=timeout, input=input.decode() if input else None)
        if check and proc.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, **env: str) -> Daemon:
        return Daemon(self, env)

    def list_json(self, *args: str) -> list[dict[str, object]]:
        import json

        return json.loads(self.run("letters", "list", "--json", *args).stdout)

    def show_json(self, number: str) -> dict[str, object]:
        import json

        return json.loads(self.run("letters", "show", number, "--json").stdout)

    def spool_files(self, sub: str) -> list[str]:
        d = self.state / "spool" / sub
        return sorted(os.listdir(d)) if d.exists() else []


class Daemon:
    """`gateway run` as a child process, logging to a file (a pipe nobody reads would fill and block it)."""

    def __init__(self, gateway: Gateway, env: dict[str, str]):
        Daemon.started += 1
        self.log = gateway.config.parent / f"daemon-{Daemon.started}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(gateway.config), "run"],
                                         stdout=log, stderr=subprocess.STDOUT, env=gateway.env(**env), cwd=ROOT)
        self.pid = self.proc.pid

    started = 0

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it logged."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(60)
        return self.output()


class Notify:
    """A stand-in for systemd's notify socket: a real datagram socket the daemon writes to."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(60)

    def wait_for(self, field: str) -> list[str]:
        seen = []
        while True:
            msg = self.sock.recv(4096).decode()
            seen.append(msg)
            if field in msg.split("\n"):
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notify]:
    n = Notify(tmp_path / "notify.sock")
    yield n
    n.close()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A relay on loopback that keeps what the gateway sends."""
    s = SmtpSink().start()
    yield s
    s.stop()


def outbound_settings(relay: str) -> str:
    """The [outbound] section for a relay on loopback, polled and retried without delay."""
    return (f'\n[outbound]\nrelay = "{relay}"\nfrom_address = "gateway@example.org"\n'
            "poll_seconds = 0.2\nretry_min_seconds = 0.3\nretry_max_seconds = 1\n")


def write_messages(folder: Path, messages: Iterable[bytes]) -> list[str]:
    """Each message in a file of its own in `folder`, as `gateway ingest` takes them: the paths."""
    paths = []
    for n, raw in enumerate(messages):
        path = folder / f"{n}.eml"
        path.write_bytes(raw)
        paths.append(str(path))
    return paths


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


@pytest.fixture
def pg_gateway(tmp_path: Path, pg_url: str) -> Gateway:
    return Gateway(tmp_path, registry_url=pg_url)


def make_message(n: int = 0, *, subject: str | None = None, body: str = "Hello.\n", size: int = 0,
                 sender: str = "Alice Partner <alice@partner.example>", to: str = "liaison@example.org",
                 message_id: str | None = "auto") -> bytes:
    """A plain RFC 5322 message; `size` pads the body to about that many bytes."""
    mid = f"<msg-{n}-{uuid.uuid4().hex}@partner.example>" if message_id == "auto" else message_id
    headers = [f"From: {sender}", f"To: {to}", f"Subject: {subject or f'Letter {n}'}",
               "Date: Mon, 23 Nov 2026 10:00:00 +0800", "MIME-Version: 1.0",
               "Content-Type: text/plain; charset=utf-8"]
    if mid:
        headers.insert(3, f"Message-ID: {mid}")
    text = body
    if size:
        line = f"Letter {n}: we would like to discuss the contract for the next quarter.\n"
        text += line * max(0, (size - len(text) - 300) // len(line))
    return ("\r\n".join(headers) + "\r\n\r\n" + text.replace("\n", "\r\n")).encode()
