"""A full state directory: the gateway says "try again later" and keeps nothing, the sender (an SMTP
client, an IMAP server, the fax drop folder) keeps the message, and intake resumes by itself once
space returns. The state directory is a small tmpfs filled up by the test."""
from __future__ import annotations

import errno
import json
import os
import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for
from dovecot_server import DovecotServer
from fax_samples import ENGLISH, tiff_fax

pytestmark = pytest.mark.timeout(300)

FLOOR = 64 * 1024  # [spool] min_free_bytes
BIG = 1024 * 1024  # a message that does not fit in what is left


class Disk:
    """The tmpfs holding the state directory, and a file that takes up its space."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take up all the space, then give back about `leave` bytes."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            chunk = b"\xff" * 65536
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)


@dataclass
class Setup:
    gateway: Gateway
    daemon: Daemon
    disk: Disk
    dovecot: DovecotServer
    user: str
    drop: Path

    def log_mark(self) -> int:
        return len(self.daemon.output())

    def logged_since(self, mark: int, text: str) -> bool:
        return text in self.daemon.output()[mark:]

    def spool_empty(self) -> bool:
        return all(not self.gateway.spool_files(sub) for sub in ("tmp", "new", "work"))

    def subjects(self) -> set[str]:
        return {str(letter["subject"]) for letter in self.gateway.list_json()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, dovecot: DovecotServer) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("disk-full")
    user, password = f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    dovecot.add_user(user, password)
    (tmp / "imap.pass").write_text(password + "\n")
    drop = tmp / "fax-drop"  # the fax machine's share is not on the full disk
    account = {"name": "liaison", "host": "127.0.0.1", "port": dovecot.port, "tls": "plain", "username": user,
               "password_file": str(tmp / "imap.pass"), "idle": False, "poll_seconds": 0.5}
    gateway = Gateway(tmp, extra=f"""
[imap]
reconnect_min_seconds = 0.2
reconnect_max_seconds = 1

[[imap.accounts]]
{chr(10).join(f"{key} = {json.dumps(value)}" for key, value in account.items())}

[fax]
drop_folder = "{drop}"
poll_seconds = 0.2
stable_seconds = 0.3
""")
    config = gateway.config.read_text().replace("[spool]\n", f"[spool]\nmin_free_bytes = {FLOOR}\n", 1)
    gateway.config.write_text(config)
    gateway.state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(gateway.state)], check=True)
    notify = Notify(tmp / "notify.sock")
    disk = Disk(gateway.state)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        yield Setup(gateway, daemon, disk, dovecot, user, drop)
    finally:
        daemon.stop()
        notify.close()
        subprocess.run(["umount", str(gateway.state)], check=False)


def test_smtp_gets_4_3_1_and_carries_on_once_space_returns(setup: Setup) -> None:
    """A message that does not fit: 451 4.3.1 after the end of DATA (not a 500, and nothing of DATA
    read as commands), nothing kept; below the free-space floor: 452 4.3.1 at MAIL; then space
    returns and the same session's next message is registered."""
    gateway, disk = setup.gateway, setup.disk
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
        c.ehlo()
        disk.fill(leave=4 * FLOOR)
        assert c.mail("alice@partner.example")[0] == 250
        assert c.rcpt("liaison@example.org")[0] == 250
        code, reply = c.data(make_message(1, subject="Too big for the disk", size=BIG))
        assert (code, reply) == (451, b"4.3.1 Error: insufficient system storage, try again later")
        assert c.noop()[0] == 250  # the session is sane: the rest of DATA was not taken for commands
        assert setup.spool_empty()
        disk.fill()
        assert disk.free() < FLOOR
        assert c.mail("alice@partner.example") == (452, b"4.3.1 Error: insufficient system storage, try again later")
        disk.release()
        c.rset()
        assert c.mail("alice@partner.example")[0] == 250
        assert c.rcpt("liaison@example.org")[0] == 250
        code, reply = c.data(make_message(2, subject="After the disk was freed"))
        assert code == 250 and reply.startswith(b"2.0.0 OK registered as "), reply
    assert "Too big for the disk" not in setup.subjects()


def test_imap_leaves_the_message_on_the_server_until_space_returns(setup: Setup) -> None:
    """A message the spool cannot take, then the disk below the floor: the message stays in the
    mailbox unflagged, nothing is left in the spool; once space returns it is taken."""
    disk, dovecot = setup.disk, setup.dovecot
    mark = setup.log_mark()
    disk.fill(leave=4 * FLOOR)
    uid = dovecot.deliver(setup.user, make_message(3, subject="Waits on the server", size=BIG))
    wait_for(lambda: setup.logged_since(mark, "No space left on device"), 30, "the spool to run out of space")
    wait_for(setup.spool_empty, 10, "nothing left behind in the spool")
    mark = setup.log_mark()
    disk.fill()
    wait_for(lambda: setup.logged_since(mark, "less than min_free_bytes"), 30, "IMAP to stop below the floor")

    def flags() -> tuple[bytes, ...] | None:
        with dovecot.client(setup.user) as imap:
            imap.select_folder("INBOX", readonly=True)
            return tuple(imap.get_flags([uid]).get(uid, ())) if uid in imap.search(["ALL"]) else None
    assert flags() == ()  # there, and neither seen nor deleted
    assert setup.spool_empty()
    disk.release()
    wait_for(lambda: flags() == (b"\\Seen",), 30, "the message to be taken")
    # Flagged once it is safe in the spool; registered after that (a large item: by a helper started for it).
    wait_for(lambda: "Waits on the server" in setup.subjects(), 30, "the message to be registered")


def test_the_fax_stays_in_the_drop_folder_until_space_returns(setup: Setup) -> None:
    """With the disk full the fax file stays where the fax machine put it, nothing is left in the
    spool; once space returns it is taken."""
    disk, drop = setup.disk, setup.drop
    mark = setup.log_mark()
    disk.fill()
    fax = drop / "fax_0861012345678.tif"
    fax.write_bytes(tiff_fax([ENGLISH]))
    wait_for(lambda: setup.logged_since(mark, "No space left on device"), 30, "the spool to refuse the fax")
    wait_for(setup.spool_empty, 10, "nothing left behind in the spool")
    assert fax.exists()
    disk.release()
    wait_for(lambda: not fax.exists(), 30, "the fax to be taken")
    # It leaves the drop folder once it is safe in the spool; it is registered after that.
    wait_for(lambda: "Fax from an unknown number, 1 page(s)" in setup.subjects(), 30, "the fax to be registered")
