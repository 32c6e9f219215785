"""SMTP intake: mail sent straight to the organisation, accepted only when durable.

The server is aiosmtpd's protocol with DATA replaced: the message streams
into a spool item (a Received: trace header first) instead of a list of lines
in memory, and 250 is answered only after the item is fsynced and, with
`[smtp] acknowledge = "registered"`, registered; with "spooled", registration
follows from the spool once the sender has its 250. Every file operation runs
in the intake's file threads, never on the event loop, and sessions finishing
at the same moment share one sync (group commit). When the spool or the
registry cannot take a message, the item is dropped and the client gets a 451,
so the sending MTA keeps its copy and retries.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AnyStr, TypeVar, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.config import Config, read_auth_users, tls_problem
from gateway.daemon.registrar import Registrar
from gateway.faults import checkpoint
from gateway.spool import Spool, SpoolError, SpoolItem, SpoolWriter
from gateway.spool.durable import LoopSync

log = logging.getLogger("gateway.intake.smtp")

IDENT = "Correspondence Gateway"

_T = TypeVar("_T")


# -- credentials ---------------------------------------------------------------
def hash_password(password: str, *, n: int = 2 ** 14, r: int = 8, p: int = 1) -> str:
    """A line for auth_users_file is `user:` followed by this."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _verify(password: bytes, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


_DUMMY_HASH = hash_password(secrets.token_hex(8))


class Credentials:
    """`user:scrypt$...` lines; read at start and on reload, never logged."""

    def __init__(self, path: Path):
        self.path = path
        self.users: dict[str, str] = read_auth_users(path)

    def check(self, user: str, password: bytes) -> bool:
        """scrypt, tens of milliseconds of CPU: called in AuthGuard's threads, never on the event loop."""
        users = self.users  # replaced whole on reload, never changed in place
        # Unknown users cost the same hash, so timing does not tell which names exist.
        return _verify(password, users.get(user, _DUMMY_HASH)) and user in users


def _offer(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    """The authenticator aiosmtpd calls: it only hands the credentials to IntakeSMTP.smtp_AUTH.

    aiosmtpd calls authenticators synchronously, on the event loop; the
    password is checked afterwards in a thread while the loop serves others.
    "Handled" tells aiosmtpd to answer nothing itself.
    """
    if isinstance(server, IntakeSMTP) and isinstance(auth_data, LoginPassword):
        server.offered = (mechanism, auth_data)
    return AuthResult(success=False, handled=True)


class AuthGuard:
    """Password checks in a small thread pool, and failed AUTH attempts per client address.

    An address is barred while its failures within the window, plus the
    checks it has running, reach the maximum; successes erase nothing, so a
    valid account does not buy an attacker more guesses.
    """

    def __init__(self, max_failures: int, window: float, threads: int):
        self.max_failures = max_failures
        self.window = window
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smtp-auth")
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._running: dict[str, int] = defaultdict(int)

    def barred(self, address: str) -> bool:
        now = time.monotonic()
        if len(self._failures) > 4096:  # forget addresses whose failures have all aged out
            for quiet in [a for a, times in self._failures.items() if not times or times[-1] < now - self.window]:
                del self._failures[quiet]
        failures = self._failures.get(address)
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return len(failures or ()) + self._running.get(address, 0) >= self.max_failures

    async def check(self, credentials: Credentials, address: str, user: str, password: bytes) -> bool | None:
        """True or False, or None when the address is barred and nothing was checked."""
        if self.barred(address):
            return None
        self._running[address] += 1
        try:
            valid = await asyncio.get_running_loop().run_in_executor(self.pool, credentials.check, user, password)
        finally:
            self._running[address] -= 1
            if not self._running[address]:
                del self._running[address]
        if not valid:
            self._failures[address].append(time.monotonic())
        return valid


# -- limits ------------------------------------------------------------------
class Limits:
    """Concurrent sessions overall, and sessions per client address within the rate window.

    Only accepted sessions count towards the rate: a client refused and trying again
    (as every MTA does) is admitted as soon as its older sessions leave the window, so a
    busy relay is slowed down, never locked out. Exempt networks are never rate-limited.
    """

    def __init__(self, max_sessions: int, per_window: int, window: float, exempt: list[str]):
        self.max_sessions = max_sessions
        self.sessions = 0
        self._recent: dict[str, deque[float]] = {}
        self.configure(per_window, window, exempt)

    def configure(self, per_window: int, window: float, exempt: list[str]) -> None:
        self.per_window = per_window
        self.window = window
        self.exempt = [ipaddress.ip_network(n) for n in exempt]

    def _exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.exempt)

    def admit(self, address: str) -> str | None:
        """None to admit (and count the session), else the reason for a 421."""
        if self.sessions >= self.max_sessions:
            return f"too many sessions ({self.max_sessions}), try again later"
        if not self.per_window or self._exempt(address):
            return None
        now = time.monotonic()
        horizon = now - self.window
        if len(self._recent) > 4096:  # forget clients that have been quiet for a window
            for quiet in [a for a, times in self._recent.items() if not times or times[-1] < horizon]:
                del self._recent[quiet]
        recent = self._recent.setdefault(address, deque())
        while recent and recent[0] < horizon:
            recent.popleft()
        if len(recent) >= self.per_window:
            wait = max(1, math.ceil(recent[0] - horizon))  # until the oldest session leaves the window
            return (f"too many connections from {address} ({self.per_window} in {self.window:g} s), "
                    f"try again in {wait} s")
        recent.append(now)
        return None


_CANNOT_STORE = "451 4.3.0 Error: cannot store the message now, try again later"
# RFC 6531 3.5: a non-ASCII address needs MAIL's SMTPUTF8 parameter; refused at MAIL with 550, at
# RCPT with 553, both X.6.7. The reply does not repeat the address: without SMTPUTF8 a reply is
# ASCII (3.7.4).
_NON_ASCII_SENDER = ("550 5.6.7 Error: non-ASCII addresses not permitted for that sender "
                     "without the SMTPUTF8 parameter")
_NON_ASCII_RECIPIENT = ("553 5.6.7 Error: non-ASCII addresses not permitted for that recipient "
                        "without the SMTPUTF8 parameter of MAIL")
_NO_SPACE = "451 4.3.1 Error: insufficient system storage, try again later"


def _unstored(exc: SpoolError) -> str:
    """The reply when the spool could not take a message: either way the sender keeps it and retries."""
    return _NO_SPACE if exc.full else _CANNOT_STORE


def _peer(session: Session | None) -> str:
    if session is None or not session.peer:
        return "?"
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _clean(value: str, limit: int = 200) -> str:
    """Client-supplied text for a header: printable ASCII only, one line, bounded."""
    return "".join(c if 32 < ord(c) < 127 else "?" for c in value)[:limit]


class _FileSteps:
    """The writes of a large message's pieces, run one after another in the intake's file threads.

    Each step is awaited before the next is started, so they never overlap; only a
    session cut off mid-step leaves one running, and abort() then drops the item
    after that step instead of under its feet."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool
        self._last: Future[Any] | None = None

    async def run(self, step: Callable[..., _T], *args: Any) -> _T:
        self._last = self._pool.submit(step, *args)
        return await asyncio.wrap_future(self._last)

    def abort(self, writer: SpoolWriter) -> None:
        if self._last is not None and not self._last.done():
            self._last.add_done_callback(lambda _: writer.abort())
        else:
            writer.abort()


@functools.lru_cache(maxsize=4096)
def _parse_path(arg: str) -> tuple[str, str] | None:
    """The address and the rest of a MAIL or RCPT argument, parsed as aiosmtpd parses them (the
    email package's RFC 5322 grammar); None when it does not parse. Remembered, since the same few
    addresses come again and again and the grammar costs more than the rest of the command."""
    parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
    try:
        address, rest = parse(arg)
    except HeaderParseError:
        return None
    return address.addr_spec, rest


# -- the protocol ------------------------------------------------------------
class IntakeSMTP(SMTP):
    # Real mail has lines longer than RFC 5321's 1000 octets; Postfix takes
    # them, and so do we (bounded, so memory stays bounded).
    line_length_limit = 64 * 1024

    def __init__(self, intake: SmtpIntake, **kwargs: Any):
        self.intake = intake
        self.in_transaction = False
        self._counted = False
        self._transactions = 0
        self._session_id = secrets.token_hex(6)
        self._auth_failures = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._overdue: float | None = None  # the session deadline fell during DATA: close after its reply
        self.offered: tuple[str, LoginPassword] | None = None  # set by _offer during AUTH
        super().__init__(intake, **kwargs)

    async def _handle_client(self) -> None:
        if self.intake.stopping:
            await self.push(f"421 4.3.2 {self.hostname} shutting down, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        refusal = self.intake.limits.admit(_peer(self.session))
        if refusal is not None:
            log.warning("%s: refused connection: %s", _peer(self.session), refusal)
            await self.push(f"421 4.7.0 {self.hostname} {refusal}")
            assert self.transport is not None
            self.transport.close()
            return
        self.intake.limits.sessions += 1
        self._counted = True
        self.intake.sessions.add(self)
        # command_timeout restarts with every command: a client sending NOOP now and then would hold
        # its session (and one of max_sessions) for ever. The whole session has a deadline too.
        seconds = self.intake.session_timeout
        self._deadline = self.loop.call_later(seconds, self._session_overdue, seconds)
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._counted:
            self.intake.limits.sessions -= 1
            self._counted = False
        self.intake.sessions.discard(self)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own, without building a class on every call; the same checks and results."""
        if not arg:
            return "", ""
        parsed = _parse_path(arg)  # short: aiosmtpd refuses a command line over about 550 octets first
        if parsed is None:
            return None, None
        addr, rest = parsed
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    def _stream(self) -> asyncio.Transport | None:
        # aiosmtpd types its transport as a BaseTransport; a stream server's (plain or TLS) can write.
        return cast("asyncio.Transport | None", self.transport)

    def hang_up(self, reply: str) -> None:
        transport = self._stream()
        if transport is not None and not transport.is_closing():
            transport.write((reply.format(self.hostname) + "\r\n").encode())
            transport.close()

    async def push(self, status: AnyStr) -> None:
        text = status.decode(errors="replace") if isinstance(status, bytes) else status
        if text.startswith("552 Error: message size exceeds"):  # aiosmtpd's own SIZE check at MAIL
            log.warning("%s: refused MAIL: SIZE above %s bytes", _peer(self.session), self.data_size_limit)
        await super().push(status)

    def _timeout_cb(self) -> None:
        # Say why before hanging up, and log it once.
        log.warning("%s: session %s timed out", _peer(self.session), self._session_id)
        transport = self._stream()
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} timeout exceeded, closing\r\n".encode())
        super()._timeout_cb()

    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH dialogue, with the password checked off the event loop and failures capped."""
        intake, peer = self.intake, _peer(self.session)
        if intake.auth_guard.barred(peer):
            await self._refuse_auth(f"421 4.7.0 Too many failed authentication attempts from {peer}, "
                                    "try again later", f"AUTH refused: too many failures from {peer}")
            return
        self.offered = None
        await super().smtp_AUTH(arg)  # syntax, TLS, mechanism, the challenges; then _offer
        offered, self.offered = self.offered, None
        if offered is None or intake.credentials is None or self.session is None:
            return  # answered already: nothing to check
        mechanism, auth_data = offered
        user = auth_data.login.decode(errors="replace")
        valid = await intake.auth_guard.check(intake.credentials, peer, user, auth_data.password)
        transport = self._stream()
        if transport is None or transport.is_closing():  # the client left, or the daemon is stopping
            return
        if valid:
            self.session.authenticated = True
            self.session.auth_data = user
            self.session.login_data = auth_data.login
            await self.push("235 2.7.0 Authentication successful")
            return
        if valid is None:
            await self._refuse_auth(f"421 4.7.0 Too many failed authentication attempts from {peer}, "
                                    "try again later", f"AUTH refused: too many failures from {peer}")
            return
        self._auth_failures += 1
        log.warning("%s: AUTH %s failed for user %r", peer, mechanism, user)
        await asyncio.sleep(intake.auth_failure_delay)
        await self.push("535 5.7.8 Authentication credentials invalid")
        if self._auth_failures >= intake.config.model.smtp.max_auth_failures_per_session:
            log.warning("%s: session %s closed after %d failed AUTH attempts", peer, self._session_id,
                        self._auth_failures)
            self.hang_up("421 4.7.0 Too many failed authentication attempts, closing")

    async def _refuse_auth(self, reply: str, why: str) -> None:
        log.warning("%s: %s", _peer(self.session), why)
        await asyncio.sleep(self.intake.auth_failure_delay)  # a client retrying at once is slowed, no one else
        self.hang_up(reply)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self._transactions += 1
        self.in_transaction = True
        try:
            await self._transaction()
        finally:
            self.in_transaction = False
        if self._overdue is not None:
            self._session_over(self._overdue)

    def _session_overdue(self, seconds: float) -> None:
        if self.in_transaction:
            # Never cut a message short at this deadline: it finishes (accepted, or refused with
            # nothing kept) under data_timeout and data_total_timeout, and the session ends after
            # its reply.
            self._overdue = seconds
            return
        self._session_over(seconds)

    def _session_over(self, seconds: float) -> None:
        log.warning("%s: session %s closed: longer than %g s", _peer(self.session), self._session_id, seconds)
        self.hang_up("421 4.4.2 {} session too long, closing")
        # A closing connection stays open until its replies are sent, which is never for a client
        # that reads none of them: past this deadline, what is still unsent is dropped.
        for transport in (self._stream(), cast("asyncio.Transport | None", self._original_transport)):
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()

    async def _transaction(self) -> None:
        assert self.envelope is not None and self.session is not None
        intake = self.intake
        trace = intake.received_header(self, self._session_id)
        files = _FileSteps(intake.file_threads)
        try:
            # On the loop: creating a file and locking it are quick, and a trip to a file thread
            # and back cost more than they do (see SmtpIntake.accept).
            writer = intake.open_item(intake.meta(self, self._transactions, trace), trace)
        except SpoolError as exc:
            log.error("%s: cannot spool: %s", _peer(self.session), exc)
            await self.push(_unstored(exc))
            self._set_post_data_state()
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # data_timeout restarts with every line: a client dripping one now and then would hold the
        # session for ever. The whole of DATA has a deadline too; past it the connection is closed.
        total = intake.data_total_timeout
        overdue = self.loop.call_later(total, self._data_overdue, total)
        try:
            status, tail = await self._receive(writer, files)
        except BaseException:  # connection lost mid-DATA (or cut off): nothing was acknowledged
            files.abort(writer)
            raise
        finally:
            overdue.cancel()
        if status is not None:
            files.abort(writer)
            self._set_post_data_state()
            await self.push(status)
            return
        # Registration must not be cut off half-way: neither by the client going
        # away (the task runs on; the letter is registered or refused cleanly)
        # nor by the command timeout while the registry works.
        self._reset_timeout(intake.data_timeout)
        accepting = asyncio.ensure_future(intake.accept(writer, tail, self))
        try:
            reply, spooled = await asyncio.shield(accepting)
        except asyncio.CancelledError:
            accepting.add_done_callback(intake.register_when_spooled)  # the client left: registered all the same
            raise
        self._reset_timeout()
        self._set_post_data_state()
        try:
            await self.push(reply)
        finally:
            if spooled is not None:
                checkpoint("smtp-spooled-before-registering")  # durable and acknowledged, not registered yet
                intake.registrar.follow(spooled)

    def _data_overdue(self, seconds: float) -> None:
        log.warning("%s: session %s closed: DATA not completed within %g s", _peer(self.session),
                    self._session_id, seconds)
        self.hang_up(f"421 4.4.2 {{}} DATA not completed within {seconds:g} s, closing")

    async def _receive(self, writer: SpoolWriter, files: _FileSteps) -> tuple[str | None, bytes]:
        """Stream the data into the spool writer. Returns the refusal (None when it all arrived and
        fits) and the last bytes not written yet: they go with the commit, in the same file step."""
        limit = self.data_size_limit
        failure: str | None = None
        received = 0
        pending = bytearray()  # lines are written in 64 KiB pieces, not one call each
        loop = self.loop
        timer_set = 0.0
        overlong = False  # inside a line longer than the reader's limit
        ended = False
        while self.transport is not None:
            # A stalled client is cut off after data_timeout of silence; re-arming
            # the timer once a second is enough and much cheaper than every line.
            now = loop.time()
            if now - timer_set > 1.0:
                self._reset_timeout(self.intake.data_timeout)
                timer_set = now
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)
                failure = failure or "500 5.5.2 Error: line too long"
                overlong = True
                continue
            if overlong:
                # The tail of an over-long line, never the end of DATA, even if it is ".\r\n".
                overlong = False
                continue
            if line == b".\r\n":
                ended = True
                break
            if line.startswith(b"."):
                line = line[1:]
            received += len(line)
            if limit and received > limit:
                failure = failure or "552 5.3.4 Error: message exceeds the fixed maximum message size"
            if failure is None:
                pending += line
                if len(pending) >= 65536:
                    failure = await self._flush(writer, files, pending)
        if not ended:
            failure = "451 4.3.0 connection closed during DATA"
        self._reset_timeout()
        if failure:
            log.warning("%s: message refused: %s (%d bytes)", _peer(self.session), failure, received)
        return failure, bytes(pending)

    async def _flush(self, writer: SpoolWriter, files: _FileSteps, pending: bytearray) -> str | None:
        chunk = bytes(pending)
        pending.clear()
        try:
            await files.run(writer.write, chunk)
        except SpoolError as exc:
            log.error("%s: cannot spool: %s", _peer(self.session), exc)
            return _unstored(exc)
        return None


class SmtpIntake:
    """The listener(s) and the handler hooks aiosmtpd calls."""

    def __init__(self, config: Config, spool: Spool, registrar: Registrar):
        self.config = config
        self.spool = spool
        self.registrar = registrar
        smtp = config.model.smtp
        self.limits = Limits(smtp.max_sessions, smtp.max_connections_per_minute, smtp.rate_limit_window,
                             smtp.rate_limit_exempt)
        self.data_timeout = smtp.data_timeout
        self.data_total_timeout = smtp.data_total_timeout
        self.session_timeout = smtp.session_timeout
        self.tls_context: ssl.SSLContext | None = None
        certificate, key = config.resolve(smtp.tls_certificate), config.resolve(smtp.tls_key)
        if certificate is not None and key is not None:
            # Checked with the configuration; a file replaced since is worded the same way.
            problem = tls_problem(certificate, key)
            if problem:
                raise ValueError(f"smtp.tls_certificate: {problem}")
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(certificate, key)
        auth_file = config.resolve(smtp.auth_users_file)
        self.credentials = Credentials(auth_file) if auth_file else None
        self.auth_guard = AuthGuard(smtp.max_auth_failures_per_address, smtp.auth_failure_window,
                                    smtp.auth_check_threads)
        self.auth_failure_delay = smtp.auth_failure_delay
        # A large message's pieces are written off the event loop, as they come; the syncs that
        # make items durable run in a thread of their own, one for every session waiting meanwhile.
        self.file_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="smtp-spool")
        self.spool_sync = LoopSync(spool.sync, "smtp-spool-sync")
        self._servers: list[asyncio.base_events.Server] = []
        self.sessions: set[IntakeSMTP] = set()
        self.stopping = False
        self._low_space = False  # below the spool's free-space floor at the last MAIL
        # Listener settings are fixed for the life of the listener (a reload
        # changes accepted addresses and limits; these need a restart).
        self._kwargs: dict[str, Any] = dict(
            data_size_limit=smtp.max_message_bytes, enable_SMTPUTF8=True, decode_data=False,
            hostname=smtp.hostname, ident=IDENT, timeout=smtp.command_timeout,
            tls_context=self.tls_context, require_starttls=smtp.require_tls, auth_require_tls=True,
        )
        if self.credentials is not None:
            self._kwargs["authenticator"] = _offer
        else:
            self._kwargs["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]

    def reload(self, config: Config) -> None:
        """Accepted addresses and limits follow the configuration; listeners need a restart."""
        self.config = config
        smtp = config.model.smtp
        self.limits.max_sessions = smtp.max_sessions
        self.limits.configure(smtp.max_connections_per_minute, smtp.rate_limit_window, smtp.rate_limit_exempt)
        self.data_timeout = smtp.data_timeout
        self.data_total_timeout = smtp.data_total_timeout
        self.session_timeout = smtp.session_timeout
        self.auth_guard.max_failures = smtp.max_auth_failures_per_address
        self.auth_guard.window = smtp.auth_failure_window
        self.auth_failure_delay = smtp.auth_failure_delay
        if self.credentials is not None:
            try:
                self.credentials.users = Credentials(self.credentials.path).users
            except (OSError, ValueError) as exc:
                log.error("AUTH users not reloaded, the previous ones stay in force: %s", exc)

    def _protocol(self) -> IntakeSMTP:
        return IntakeSMTP(self, **self._kwargs)

    async def start(self) -> list[str]:
        loop = asyncio.get_running_loop()
        bound = []
        for address in self.config.model.smtp.listen:
            host, _, port = address.rpartition(":")
            server = await loop.create_server(self._protocol, host=host.strip("[]"), port=int(port),
                                              reuse_address=True)
            self._servers.append(server)
            bound.append(address)
        return bound

    async def stop(self, grace: float) -> None:
        """Stop listening; let transactions in DATA finish their reply; close the rest with 421."""
        self.stopping = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        deadline = asyncio.get_running_loop().time() + grace
        while any(s.in_transaction for s in self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.hang_up("421 4.3.2 {} shutting down, try again later")
        self.auth_guard.pool.shutdown(wait=False)
        # The file threads stay: a session still closing may have a last write and its removal to do.

    def _short_of_space(self, mail_options: list[str]) -> bool:
        """Whether the spool's filesystem is below the free-space floor, or would be with the
        message the client announced (SIZE=); the change of state is logged, not every MAIL."""
        floor = self.config.model.spool.min_free_bytes
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            log.error("spool %s: cannot tell the free space: %s", self.spool.root, exc.strerror or exc)
            return False  # the spool's own writes will tell
        low = free < floor
        if low != self._low_space:
            self._low_space = low
            if low:
                log.error("ALERT spool %s: %d bytes free, below min_free_bytes (%d): new mail is refused "
                          "with 452 until space returns", self.spool.root, free, floor)
            else:
                log.warning("spool %s: %d bytes free again, mail is accepted", self.spool.root, free)
        size = next((int(o[5:]) for o in mail_options if o.startswith("SIZE=") and o[5:].isdigit()), 0)
        return low or (size > 0 and free - size < floor)

    # -- aiosmtpd hooks ----------------------------------------------------
    async def handle_MAIL(self, server: IntakeSMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if not envelope.smtp_utf8 and not address.isascii():  # aiosmtpd has read the parameter
            log.info("%s: refused MAIL: a non-ASCII address without SMTPUTF8", _peer(session))
            return _NON_ASCII_SENDER
        if self._short_of_space(mail_options):
            return "452 4.3.1 Error: insufficient system storage, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: IntakeSMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not envelope.smtp_utf8 and not address.isascii():
            log.info("%s: refused recipient <%s>: a non-ASCII address without SMTPUTF8", _peer(session),
                     _clean(address))
            return _NON_ASCII_RECIPIENT
        if not self.config.accepts(address):
            log.info("%s: refused recipient <%s> (not ours; no relaying)", _peer(session), _clean(address))
            return "550 5.7.1 <{}>: relay access denied".format(_clean(address))
        if address.lower() in (r.lower() for r in envelope.rcpt_tos):
            return "250 2.1.5 OK"  # a recipient given twice is one recipient, also at the limit
        if len(envelope.rcpt_tos) >= self.config.model.smtp.max_recipients:
            log.warning("%s: refused recipient <%s>: more than %d recipients", _peer(session), _clean(address),
                        self.config.model.smtp.max_recipients)
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    # -- what DATA produces ------------------------------------------------
    def meta(self, server: IntakeSMTP, transaction: int, trace: bytes) -> dict[str, Any]:
        session, envelope = server.session, server.envelope
        assert session is not None and envelope is not None
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        return {
            "intake": "smtp", "channel": "email",
            "source_key": f"smtp:{server._session_id}:{transaction}",
            "envelope": {
                "mail_from": mail_from, "rcpt_to": list(envelope.rcpt_tos), "client": _peer(session),
                "helo": session.host_name or "", "tls": session.ssl is not None,
                "auth_user": session.auth_data if session.authenticated else None,
                "session": server._session_id,
            },
            "flags": ["bounce"] if not mail_from else [],
            # Our Received: header comes first; what follows is the message as the client sent it,
            # which a retry of the same message (another session, another header) sends again.
            "trace_bytes": len(trace),
        }

    def received_header(self, server: IntakeSMTP, session_id: str) -> bytes:
        session, envelope = server.session, server.envelope
        assert session is not None and envelope is not None
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl is not None:
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        tls = ""
        if session.ssl is not None and server.transport is not None:
            ssl_object = server.transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                tls = f" (using {ssl_object.version()} with cipher {ssl_object.cipher()[0]})"
        rcpt = f"\r\n\tfor <{_clean(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
        stamp = format_datetime(datetime.now(timezone.utc))
        header = (f"Received: from {_clean(session.host_name or 'unknown')} ([{_peer(session)}])\r\n"
                  f"\tby {server.hostname} ({IDENT}) with {protocol} id {session_id}{tls}{rcpt};\r\n"
                  f"\t{stamp}\r\n")
        return header.encode("ascii")

    def open_item(self, meta: dict[str, Any], trace: bytes) -> SpoolWriter:
        """A new spool item, our Received: header first."""
        writer = self.spool.writer(meta)
        writer.write(trace)
        return writer

    def register_when_spooled(self, accepting: asyncio.Future[tuple[str, SpoolItem | None]]) -> None:
        """An item whose client left while it was being accepted: a spooled one still goes to the registry."""
        if not accepting.cancelled() and accepting.exception() is None:
            _, spooled = accepting.result()
            if spooled is not None:
                self.registrar.follow(spooled)

    async def accept(self, writer: SpoolWriter, tail: bytes, server: IntakeSMTP) -> tuple[str, SpoolItem | None]:
        """Write the message's last bytes, commit the item and say what happened in the reply; with
        acknowledge = "spooled", the item is durable and still to be registered (the caller hands it
        on once the client has its 250), else it has been registered (or refused) already and None
        comes with the reply."""
        peer = _peer(server.session)
        spooled = self.config.model.smtp.acknowledge == "spooled"
        try:
            # The last bytes, the seal and the rename into work/ (still locked by us) go to the page
            # cache at once, on the loop; only the sync waits for the disk. With "registered", the
            # registrar makes the item durable in the same sync and transaction as its batch.
            if tail:
                writer.write(tail)
            item = writer.commit(claim=True, durable=False)
        except SpoolError as exc:
            log.error("%s: cannot spool: %s", peer, exc)
            return _unstored(exc), None
        if spooled:
            try:
                await self.spool_sync.sync()  # one syncfs for every session that commits meanwhile
            except OSError as exc:
                unstored = await asyncio.wrap_future(self.file_threads.submit(self.spool.abandon, item, exc))
                log.error("%s: cannot spool: %s", peer, unstored)
                return _unstored(unstored), None
            return f"250 2.0.0 OK queued as {item.id}", item
        try:
            outcome = await self.registrar.register(item)
        except Exception:
            return "451 4.3.0 Error: local problem, try again later", None
        checkpoint("smtp-before-reply")  # durable and registered, the client not told yet
        if outcome.result == "released":
            return "451 4.3.0 Error: the register is unavailable, try again later", None
        if outcome.result == "unstored":
            return _CANNOT_STORE, None
        if outcome.result == "refused":  # the DMARC policy in force; the item is gone
            # Printable ASCII on one line: the reason names a domain taken from the From header.
            reason = "".join(c if " " <= c <= "~" else "?" for c in outcome.reason or "refused")[:300]
            return f"550 5.7.1 {reason}", None
        if outcome.number:
            verb = {"registered": "registered as", "answer": "recorded on"}.get(outcome.result, "already registered as")
            return f"250 2.0.0 OK {verb} {outcome.number}", None
        # Durable in the spool, to be registered after a retry or by an operator.
        return f"250 2.0.0 OK queued as {item.id}", None
