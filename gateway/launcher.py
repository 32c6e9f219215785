"""The `gateway` command's entry point: read commands answered by a warm command server.

Starting Python and importing what a command needs (click, pydantic, SQLAlchemy, rich and the
gateway's own modules) takes most of a second on a small machine, where the query itself takes a few
milliseconds. So the read commands (`letters list|show|search`, `status`, `outbox list`,
`quarantine list`) are handed to a command server that has imported all of it once, as Mercurial's
chg does: the server forks a child per command, the child takes over this process's standard input,
output and error (passed over a Unix socket), its arguments, environment, working directory and
umask, runs the command exactly as this process would, and reports the exit status, which this
process exits with. Signals sent to this process are passed on to the child.

The first read command starts the server (in the background, its own session) and runs in-process;
the server exits after ten idle minutes, and at once when any module it loaded has changed on disk
(an upgrade), in which case the command runs in-process. Every other command, and any failure to
reach the server, runs in-process. `GATEWAY_COMMAND_SERVER=off` turns the server off.

The socket lives in a directory only this user may enter, and the server serves only clients of
its own user (SO_PEERCRED): it grants nothing the client did not have. This module imports the
standard library only, so that handing a command over costs no more than starting Python.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import subprocess

ENV_SWITCH = "GATEWAY_COMMAND_SERVER"
IDLE_SECONDS = 600
# (command, subcommand) pairs that only read: a command that changes anything runs in its own process.
QUICK = {("letters", "list"), ("letters", "show"), ("letters", "search"), ("status", None),
         ("outbox", "list"), ("quarantine", "list")}
_HEADER = struct.Struct("!I")
EX_SOFTWARE = 70
_SOCKET_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path less its final NUL)
_REQUEST_MAX = 1 << 22  # bytes of a message (a request: arguments and environment)
_START_SECONDS = 10  # for a command to be handed over and started
_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)  # from the client to the command
_LOOK_SECONDS = 5  # how often an idle server checks that its socket is still there


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get(ENV_SWITCH, "").lower() not in ("off", "0", "no", "false") and _is_quick(argv):
        code = _through_server(argv)
        if code is not None:
            sys.exit(code)
    _run_in_process(argv)


def _run_in_process(argv: list[str]) -> NoReturn:
    from gateway.cli import main as cli_main

    cli_main(args=argv, prog_name="gateway")
    raise SystemExit(0)  # click's standalone mode always exits; this satisfies the type checker


def _is_quick(argv: list[str]) -> bool:
    """Whether the arguments name a read command; only `--config PATH` may come before it."""
    words: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif arg.startswith("--config="):
            continue
        elif arg.startswith("-"):
            return False  # --help, --version, or something click will refuse: click answers it
        else:
            words.append(arg)
            break
    words += [arg for arg in rest if not arg.startswith("-")][:1]
    if not words:
        return False
    if (words[0], None) in QUICK:
        return "--help" not in argv
    return len(words) > 1 and (words[0], words[1]) in QUICK and "--help" not in argv


# --- the client -------------------------------------------------------------------------------


def socket_path() -> str | None:
    """This user's socket for this installation (interpreter and package), in a directory only
    this user may enter; None when no such directory can be had."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    if not base or not _private(base, uid, parent=True):
        base = os.environ.get("TMPDIR") or "/tmp"
    if len(os.fsencode(base)) > _SOCKET_PATH_MAX - 45:  # the rest of the path takes up to 45 bytes
        base = "/tmp"
    directory = os.path.join(base, f"gateway-commands-{uid}")
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    if not _private(directory, uid):
        return None  # someone else's, or open to others: never talk through it
    here = os.path.dirname(os.path.abspath(__file__))
    installation = f"{os.path.realpath(sys.executable)}\0{here}\0{os.environ.get('PYTHONPATH', '')}"
    key = hashlib.sha256(installation.encode()).hexdigest()[:16]
    return os.path.join(directory, f"{key}.sock")


def _private(path: str, uid: int, *, parent: bool = False) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return False
    return parent or st.st_mode & 0o077 == 0


def _through_server(argv: list[str]) -> int | None:
    """The command's exit status from the server, or None when it did not run there (then it
    runs in-process: nothing has happened yet)."""
    path = socket_path()
    if path is None:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError as exc:
        client.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            _start_server(path)
        return None
    try:
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": _umask(),
                   "streams": [_stream(sys.stdin), _stream(sys.stdout), _stream(sys.stderr)]}
        payload = json.dumps(request).encode()  # ASCII: lone surrogates travel as \udcxx escapes
        # A server that does not start the command at once (stopped, overloaded) is passed by: the
        # child that would have run it finds this end closed and runs nothing. The descriptors go
        # only to a child that has answered: sent into a stopped server's queue, they would hold
        # this process's output open (a pipe's reader waiting) long after it ran the command itself.
        client.settimeout(_START_SECONDS)
        client.sendall(_HEADER.pack(len(payload)) + payload)
        ready = _receive(client)
        if ready is None or not ready.get("ready"):
            client.close()
            return None  # a stale server (it exits now), or a child that could not read the request
        # Held from the hand-over until they can be passed on: a signal in between would end this
        # process and leave the command running with nobody to pass it its signals.
        signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
        socket.send_fds(client, [b"\0"], [0, 1, 2])
        started = _receive(client)
        client.settimeout(None)
    except (OSError, ValueError):
        client.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
        return None
    if started is None or "pid" not in started:
        client.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
        return None  # a stale server (it exits now), or one that could not start the command
    child = int(started["pid"])
    passed_on: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        passed_on.append(signum)
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in _PASSED_ON:
        signal.signal(signum, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)  # one that came meanwhile is passed on now
    # From here on the command is running: it must never run a second time in-process.
    try:
        finished = _receive(client)
    except (OSError, ValueError):
        finished = None
    client.close()
    if finished is None or "exit" not in finished:
        if passed_on:
            return 128 + passed_on[-1]  # killed by the signal this process was sent, as it would have been
        sys.stderr.write("gateway: the command server's child ended without an exit status\n")
        return EX_SOFTWARE
    return int(finished["exit"])


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _stream(stream: Any) -> dict[str, Any] | None:
    if stream is None:
        return None
    return {"encoding": stream.encoding, "errors": stream.errors, "tty": stream.isatty()}


def _receive(sock: socket.socket) -> dict[str, Any] | None:
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    size = _HEADER.unpack(header)[0]
    if size > _REQUEST_MAX:
        raise ValueError("a message too large")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("not a message")
    return message


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    payload = json.dumps(message).encode()
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _start_server(path: str) -> subprocess.Popen[bytes] | None:
    """Start the server in its own session, detached from this terminal; a second one started
    at the same moment finds the first one's lock and exits. Its Popen, or None."""
    import subprocess

    # Started from /, with -P: nothing in the caller's directory can stand in for a module (the
    # package's own parent directory is on the path, whether it is installed or a checkout).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    try:
        return subprocess.Popen([sys.executable, "-P", "-m", "gateway.launcher", "--serve", path], cwd="/",
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True, env=env)
    except OSError:
        return None


# --- the server -------------------------------------------------------------------------------


def serve(path: str, idle_seconds: int = IDLE_SECONDS) -> None:
    import fcntl
    import selectors
    import time

    lock = open(path + ".lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server holds this socket
    try:
        os.unlink(path)  # left by a server that was killed: nobody listens on it
    except FileNotFoundError:
        pass
    _preload()
    loaded = _fingerprint()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    bound = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: set[int] = set()
    last_request = time.monotonic()
    try:
        while True:
            ready = selector.select(timeout=_LOOK_SECONDS)
            _reap(children)
            if not ready:
                if not _still_ours(path, bound):
                    return  # the socket was removed (its directory cleaned away): nobody can reach us
                if not children and time.monotonic() - last_request > idle_seconds:
                    return
                continue
            last_request = time.monotonic()
            conn, _ = listener.accept()
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       struct.calcsize("3i")))[1]
            if uid != os.getuid():
                conn.close()  # the directory keeps others out; this keeps them out if it did not
                continue
            if _fingerprint() != loaded:
                conn.close()  # upgraded underneath: the client runs the command itself
                return
            pid = os.fork()
            if pid == 0:
                listener.close()
                selector.close()
                lock.close()
                code = _child(conn)
                os._exit(code)
            children.add(pid)
            conn.close()
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        lock.close()


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _preload() -> None:
    """Import what the read commands need, so that every child starts with it loaded."""
    import gateway.cli
    import gateway.cli.letters
    import gateway.cli.outbox
    import gateway.cli.quarantine
    import gateway.cli.status
    import gateway.registry
    import gateway.registry.leases
    import gateway.registry.schema
    import gateway.services.access
    import gateway.services.operations
    import gateway.services.people
    import gateway.services.queries
    import gateway.stages.verdict  # noqa: F401
    import rich.panel  # noqa: F401
    import rich.table  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401

    try:
        import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
    except ImportError:
        pass


def _fingerprint() -> dict[str, float]:
    """The modification time of every loaded module's file: a change means an upgrade."""
    times: dict[str, float] = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name:
            try:
                times[name] = os.stat(name).st_mtime
            except OSError:
                times[name] = -1.0
    return times


def _child(conn: socket.socket) -> int:
    """Receive the command, take over the client's streams and surroundings, run it, report."""
    try:
        conn.settimeout(_START_SECONDS)  # a client that sends nothing does not keep a child waiting
        request = _receive(conn)
        if request is None:
            return 1
        _send(conn, {"ready": True})
        _marker, fds, _flags, _address = socket.recv_fds(conn, 1, 3)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return 1
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        import time

        time.tzset()
        _reopen_streams(request["streams"])
        from gateway import faults

        faults.read_environment()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["gateway", *request["argv"]]
        _send(conn, {"pid": os.getpid()})
        conn.settimeout(None)
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    code = 0
    try:
        from gateway.cli import main as cli_main

        cli_main(args=request["argv"], prog_name="gateway")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what an uncaught exception does in-process: a traceback, status 1
        import traceback

        traceback.print_exc()
        code = 1
    if "logging" in sys.modules:
        import logging

        logging.shutdown()  # what the interpreter's exit would do; the child leaves by os._exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        _send(conn, {"exit": code})
    except OSError:
        pass
    return code


def _reopen_streams(streams: list[dict[str, Any] | None]) -> None:
    """New text streams over descriptors 0-2, encoded and buffered as the client's were."""
    for fd, (name, spec) in enumerate(zip(("stdin", "stdout", "stderr"), streams, strict=True)):
        if spec is None:
            setattr(sys, name, None)
            continue
        # As Python's own: standard error line-buffered always, standard output on a terminal.
        line_buffered = fd == 2 or (fd == 1 and spec["tty"])
        stream = open(fd, "r" if fd == 0 else "w", encoding=spec["encoding"], errors=spec["errors"],
                      closefd=False, buffering=1 if line_buffered else -1)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    else:
        main()
