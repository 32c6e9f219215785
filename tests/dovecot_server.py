"""A real Dovecot IMAP server for tests, with a local OAuth2 token endpoint for it.

Everything one server needs (config, sockets, state, logs, mail) lives in its own temporary
directory, so several servers can run at once and nothing under /etc, /var or /run is touched.
The server listens on 127.0.0.1 only, in plain text (no TLS), and accepts:

* LOGIN and AUTHENTICATE PLAIN / LOGIN with passwords from passwd-files (`add_user`);
* AUTHENTICATE XOAUTH2 and OAUTHBEARER with access tokens from `issue_token`, which Dovecot's
  oauth2 passdb checks by RFC 7662 introspection against `TokenEndpoint`, run in a thread here.

Mail is stored as Maildir (or sdbox) and owned by `nobody` when run as root; unprivileged,
every Dovecot process runs as the calling user.

In conftest.py::

    from dovecot_server import DovecotServer, dovecot_fixture

    dovecot = dovecot_fixture("dovecot", scope="session")

and in a test::

    def test_reads_inbox(dovecot: DovecotServer) -> None:
        dovecot.add_user("alice", "secret")
        uid = dovecot.deliver("alice", b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        with dovecot.client("alice") as imap:
            imap.select_folder("INBOX")
            ...
        with dovecot.client() as imap:
            imap.oauth2_login("alice", dovecot.issue_token("alice"))
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from ports import free_port

HOST = "127.0.0.1"
DOVECOT = shutil.which("dovecot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "/usr/sbin/dovecot"


# -- OAuth2 token endpoint ----------------------------------------------------------------------
class TokenEndpoint:
    """A minimal OAuth2 authorisation server: opaque bearer tokens and their introspection.

    `POST /introspect` with a `token=...` form (Dovecot's `introspection_mode = post`) answers
    `{"active": true, "username": <user>, ...}` for a live token and `{"active": false}` for an
    unknown or revoked one. GET with `?token=` or `Authorization: Bearer` works too.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0  # introspections answered, so a test can tell Dovecot really asked

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token endpoint not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/introspect"

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = ThreadingHTTPServer((HOST, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth2-token-endpoint",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(10)

    def issue_token(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = user
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def introspect(self, token: str) -> dict[str, object]:
        with self._lock:
            self.requests += 1
            user = self._tokens.get(token)
        if user is None:
            return {"active": False}
        return {"active": True, "username": user, "token_type": "Bearer", "scope": "imap"}


def _handler_for(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # Dovecot's HTTP client reuses connections

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            token = (query.get("token") or query.get("access_token") or [""])[0]
            authorization = self.headers.get("Authorization", "")
            if not token and authorization.lower().startswith("bearer "):
                token = authorization[7:].strip()
            self._answer(token)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode("ascii", "replace"))
            self._answer((form.get("token") or [""])[0])

        def _answer(self, token: str) -> None:
            # Always 200: `"active": false` is how RFC 7662 says "invalid", and Dovecot then refuses
            # the login; an unreachable endpoint makes it a temporary failure instead.
            body = json.dumps(endpoint.introspect(token)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no request lines on the test's stderr

    return Handler


# -- Dovecot ------------------------------------------------------------------------------------
class DovecotServer:
    """One Dovecot instance (IMAP only) in its own temporary directory, on a free loopback port."""

    host = HOST

    def __init__(self, *, mail_format: Literal["maildir", "sdbox"] = "maildir",
                 directory: str | Path | None = None, capabilities: str | None = None) -> None:
        """`capabilities` replaces what the server announces after login (Dovecot's
        imap_capability), to play a server without IDLE or MOVE."""
        if mail_format not in ("maildir", "sdbox"):
            raise ValueError("mail_format must be 'maildir' or 'sdbox'")
        if not os.path.exists(DOVECOT):
            raise RuntimeError("Dovecot is not installed (apt-get install dovecot-imapd)")
        # UNIX socket paths are limited to 107 bytes: keep this short (pytest's tmp_path may not be).
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir=directory))
        self.port = free_port()
        self.mail_format = mail_format
        self.capabilities = capabilities
        self.config = self.dir / "dovecot.conf"
        self.log_path = self.dir / "dovecot.log"
        self.users_dir = self.dir / "users"  # one passwd-file per user, see _write_user()
        self.mail_root = self.dir / "mail"
        self.oauth = TokenEndpoint()
        self._passwords: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None

        if os.geteuid() == 0:
            # Dovecot runs auth as `dovecot` and logins as `dovenull`; mail processes get `nobody`.
            mail_user = pwd.getpwnam("nobody")
            self._mail_uid, self._mail_gid = mail_user.pw_uid, mail_user.pw_gid
            self._internal_user, self._login_user = "dovecot", "dovenull"
            self._internal_gid = pwd.getpwnam("dovecot").pw_gid
        else:
            me = pwd.getpwuid(os.geteuid())
            self._mail_uid, self._mail_gid = me.pw_uid, me.pw_gid
            self._internal_user = self._login_user = me.pw_name
            self._internal_gid = me.pw_gid
        # Traversable but not listable: auth reaches the passwd-files, mail processes their mail.
        os.chmod(self.dir, 0o711)
        self.users_dir.mkdir(mode=0o750)
        os.chown(self.users_dir, os.geteuid(), self._internal_gid)
        self.mail_root.mkdir(mode=0o700)
        os.chown(self.mail_root, self._mail_uid, self._mail_gid)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The master's PID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 30) -> None:
        """Start the token endpoint and Dovecot; return once the IMAP port greets."""
        if self.pid is not None:
            return
        self.oauth.start()
        self._write_config()
        with open(self.dir / "master.out", "ab") as out:
            # -F keeps the master in the foreground as our child. In a session of its own, its
            # process group holds exactly the processes it starts, which stop() relies on.
            self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._greets():
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"dovecot exited during start-up:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not greet on port {self.port} within {timeout} s:\n"
                                   f"{self.log_text()}")
            time.sleep(0.02)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=5) as s:
                greeting = s.recv(4096)
                s.sendall(b"0 LOGOUT\r\n")  # a clean goodbye rather than a reset in the log
                return greeting.startswith(b"* OK")
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the master and wait for it and every process it started to be gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        # The master exits after about a second without waiting for all its children: the log
        # process outlives it, and an imap process in IDLE notices only some seconds later.
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, timeout)):
            if not _group_alive(proc.pid):
                return
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        if _group_alive(proc.pid):
            raise RuntimeError(f"processes of dovecot (pgid {proc.pid}) survive SIGKILL")

    def restart(self) -> None:
        """Stop, then start again on the same port with the same users and mail."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop Dovecot and the token endpoint, and delete the directory with all mail."""
        try:
            self.stop()
        finally:
            self.oauth.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def log_text(self) -> str:
        """Dovecot's log (and anything the master printed before it could log)."""
        return "".join(p.read_text(errors="replace") for p in (self.dir / "master.out", self.log_path)
                       if p.exists())

    # -- users and tokens -----------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Add a user (usable at once), or change a password (takes up to a second). No restart needed."""
        if not re.fullmatch(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*", name):
            raise ValueError(f"unsupported user name {name!r}")
        if any(c in password for c in ":\r\n"):
            raise ValueError("a password may not contain ':' or line breaks")
        self._passwords[name] = password
        self._write_user(name, password)

    def password(self, user: str) -> str:
        return self._passwords[user]

    def issue_token(self, user: str) -> str:
        """An access token that logs `user` in with XOAUTH2 or OAUTHBEARER until revoked."""
        return self.oauth.issue_token(user)

    def revoke(self, token: str) -> None:
        self.oauth.revoke(token)

    def record_traffic(self, user: str) -> Path:
        """From the next login on, Dovecot writes each session's IMAP traffic of this user
        (`*.in`: what the client sent, `*.out`: the server's answers) into the folder returned."""
        home = self.user_dir(user)
        rawlog = home / "dovecot.rawlog"
        for path in (home, rawlog):
            path.mkdir(exist_ok=True)
            os.chown(path, self._mail_uid, self._mail_gid)
        return rawlog

    def user_dir(self, user: str) -> Path:
        """The user's home, holding `Maildir/` (or `sdbox/`)."""
        return self.mail_root / user

    # -- IMAP -----------------------------------------------------------------------------------
    def client(self, user: str | None = None, timeout: float = 30) -> IMAPClient:
        """An IMAPClient connected to the server, and logged in with its password given a user."""
        imap = IMAPClient(HOST, port=self.port, ssl=False, timeout=timeout)
        if user is not None:
            try:
                imap.login(user, self._passwords[user])
            except BaseException:
                imap.shutdown()
                raise
        return imap

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """APPEND one message as `user` (creating the folder if need be); returns its UID."""
        for attempt in range(10):
            try:
                with self.client(user) as imap:
                    _ensure_folder(imap, folder)
                    response = imap.append(folder, raw, flags=tuple(flags))
                return _appended_uids(response)[0]
            except IMAPClientError as exc:
                # A folder just deleted and created again while another session (the gateway's)
                # still had the old one open: until that session lets go, Dovecot's maildir answers
                # the APPEND with NO ("Mailbox was deleted under us", or under load "[SERVERBUG]
                # Internal error"). A NO appends nothing; the next try appends it.
                if not ("deleted under us" in str(exc) or "[SERVERBUG]" in str(exc)) or attempt == 9:
                    raise
                time.sleep(0.3)
        raise AssertionError("unreachable")

    def append_many(self, user: str, messages: Iterable[bytes], folder: str = "INBOX",
                    batch: int = 500) -> list[int]:
        """APPEND many messages over one connection, `batch` per MULTIAPPEND command; returns the UIDs."""
        uids: list[int] = []
        with self.client(user, timeout=300) as imap:
            _ensure_folder(imap, folder)
            chunk: list[bytes] = []
            for raw in messages:
                chunk.append(raw)
                if len(chunk) >= batch:
                    uids += _appended_uids(imap.multiappend(folder, chunk))
                    chunk = []
            if chunk:
                uids += _appended_uids(imap.multiappend(folder, chunk))
        return uids

    # -- configuration --------------------------------------------------------------------------
    def _write_user(self, name: str, password: str) -> None:
        # Dovecot stats a passwd-file at most once a second and rereads it only if its mtime or size
        # changed, so a user added to a shared file could stay unknown for a second. A file per
        # user (`%u` in the path) is read on its first lookup; a changed one needs the wait below.
        path = self.users_dir / name
        old_mtime = path.stat().st_mtime if path.exists() else None
        tmp = self.users_dir / f".{name}.new"
        # name:password:uid:gid:gecos:home:shell - uid, gid and home come from userdb default_fields.
        tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        # Read by the auth process, which runs as `dovecot` (root mode), and by nobody else.
        os.chown(tmp, os.geteuid(), self._internal_gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        if old_mtime is not None:
            written = time.time()
            mtime = max(written, old_mtime + 1)  # differs even if rewritten within the same second
            os.utime(path, (mtime, mtime))
            time.sleep(max(0.0, int(written) + 1 - time.time()))  # from the next second it is reread

    def _write_config(self) -> None:
        d = self.dir
        oauth2_conf = d / "oauth2.conf.ext"
        oauth2_conf.write_text(textwrap.dedent(f"""\
            introspection_mode = post
            introspection_url = {self.oauth.url}
            force_introspection = yes
            username_attribute = username
            # Compare the token's user with the login name as is (the default lowercases it).
            username_format = %u
            active_attribute = active
            active_value = true
            timeout_msecs = 10000
        """))
        os.chmod(oauth2_conf, 0o644)
        location = "maildir:~/Maildir" if self.mail_format == "maildir" else "sdbox:~/sdbox"
        internal_group = grp.getgrgid(self._internal_gid).gr_name
        # Only root may chroot, which login and anvil processes do by default.
        chroot = "" if os.geteuid() == 0 else "chroot ="
        self.config.write_text(textwrap.dedent(f"""\
            # Self-contained: nothing from /etc/dovecot is read.
            instance_name = dovecot-{self.port}
            base_dir = {d}/run
            state_dir = {d}/state
            log_path = {self.log_path}
            info_log_path = {self.log_path}
            debug_log_path = {self.log_path}
            protocols = imap
            listen = {HOST}
            ssl = no
            disable_plaintext_auth = no
            default_internal_user = {self._internal_user}
            default_internal_group = {internal_group}
            default_login_user = {self._login_user}
            # Room for many parallel connections (by default 100 processes, 10 per user and IP).
            mail_max_userip_connections = 400
            {f"imap_capability = {self.capabilities}" if self.capabilities else ""}

            auth_mechanisms = plain login xoauth2 oauthbearer
            auth_verbose = yes
            # Refuse wrong passwords and tokens within Dovecot's 0.5 s failure tick, not after 2 s.
            auth_failure_delay = 0
            # No cache: a revoked token or changed password is refused at once.
            auth_cache_size = 0

            # Each passdb serves only its own mechanisms: a token is never tried as a password.
            passdb {{
              driver = passwd-file
              mechanisms = plain login
              args = scheme=PLAIN username_format=%u {self.users_dir}/%u
            }}
            passdb {{
              driver = oauth2
              mechanisms = xoauth2 oauthbearer
              args = {oauth2_conf}
            }}
            userdb {{
              driver = passwd-file
              args = username_format=%u {self.users_dir}/%u
              default_fields = uid={self._mail_uid} gid={self._mail_gid} home={self.mail_root}/%u
            }}

            first_valid_uid = {self._mail_uid}
            first_valid_gid = {self._mail_gid}
            mail_location = {location}
            # Throwaway mail: fsync would dominate bulk APPEND time.
            mail_fsync = never

            namespace inbox {{
              inbox = yes
              separator = /
            }}

            # No growing per-IP delay after failed logins (tests fail on purpose, all from one IP).
            service anvil {{
              {chroot}
              unix_listener anvil-auth-penalty {{
                mode = 0
              }}
            }}

            service imap {{
              process_limit = 400
              # Every session's traffic lands in ~/dovecot.rawlog/ of users that have that folder.
              executable = imap postlogin
            }}
            service postlogin {{
              executable = script-login -d rawlog
              unix_listener postlogin {{
              }}
            }}

            service imap-login {{
              {chroot}
              process_limit = 400
              inet_listener imap {{
                address = {HOST}
                port = {self.port}
              }}
              inet_listener imaps {{
                port = 0
              }}
            }}
        """))


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group.

    Children the master did not reap become zombies of PID 1, which may reap them late
    (e.g. in containers); they hold on to the group but are gone.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except (OSError, IndexError):
            continue  # exited meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _ensure_folder(imap: IMAPClient, folder: str) -> None:
    if folder.upper() != "INBOX" and not imap.folder_exists(folder):
        imap.create_folder(folder)


def _appended_uids(response: bytes | str) -> list[int]:
    """The UIDs in an APPEND response's `[APPENDUID <uidvalidity> <uid-set>]` (RFC 4315)."""
    text = response.decode() if isinstance(response, bytes) else str(response)
    match = re.search(r"\[APPENDUID \d+ ([\d:,]+)\]", text)
    if match is None:
        raise IMAPClientError(f"no APPENDUID in {text!r}")
    uids: list[int] = []
    for part in match.group(1).split(","):
        low, _, high = part.partition(":")
        uids += range(int(low), int(high or low) + 1)
    return uids


def dovecot_fixture(name: str = "dovecot", scope: Literal["session", "package", "module", "class",
                                                           "function"] = "session",
                    **options: Any) -> Any:
    """A pytest fixture `name` giving a started `DovecotServer`, destroyed (every process ended) after.

    In conftest.py: `dovecot = dovecot_fixture("dovecot")`; `options` go to `DovecotServer()`.
    """

    def fixture() -> Iterator[DovecotServer]:
        server = DovecotServer(**options)
        try:
            server.start()
            yield server
        finally:
            server.destroy()

    return pytest.fixture(fixture, scope=scope, name=name)
