"""A UIDVALIDITY reset after (or during) the first import, against a real Dovecot: what was there
before stays backlog and gets no receipt; what arrives afterwards is new mail as ever."""
from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for
from dovecot_server import DovecotServer

pytestmark = pytest.mark.timeout(180)

FOLDER = "Partners"
LONG_AGO = datetime.now() - timedelta(days=10)

# Quick polls; the trust check's DNS fails at once (a closed port), so nothing waits on it.
SETTINGS = """
[imap]
fetch_batch = {batch}
reconnect_min_seconds = 0.2
reconnect_max_seconds = 1

[trust]
nameservers = ["127.0.0.1:9"]
timeout_seconds = 0.05
lifetime_seconds = 0.1
check_deadline_seconds = 0.2
"""


class Folder:
    """One Dovecot user's folder, filled and rebuilt as a server migration or index rebuild would:
    the same messages with their flags and dates, under a new UIDVALIDITY."""

    def __init__(self, dovecot: DovecotServer, tmp: Path):
        self.dovecot = dovecot
        self.user, self.password = f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        dovecot.add_user(self.user, self.password)
        self.password_file = tmp / "imap.pass"
        self.password_file.write_text(self.password + "\n")

    def account(self, **settings: object) -> str:
        values: dict[str, object] = {
            "name": "liaison", "host": "127.0.0.1", "port": self.dovecot.port, "tls": "plain",
            "username": self.user, "password_file": str(self.password_file), "idle": False,
            "poll_seconds": 0.3, "folders": [FOLDER], **settings}
        return "\n[[imap.accounts]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n"

    def append(self, messages: list[tuple[bytes, tuple[bytes, ...], datetime | None]], folder: str = FOLDER) -> None:
        with self.dovecot.client(self.user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            for raw, flags, when in messages:
                imap.append(folder, raw, flags=flags, msg_time=when)

    def rebuild(self) -> None:
        with self.dovecot.client(self.user) as imap:
            imap.select_folder(FOLDER, readonly=True)
            data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
        messages = [(d[b"BODY[]"], tuple(f for f in d[b"FLAGS"] if f != b"\\Recent"), d[b"INTERNALDATE"])
                    for _, d in sorted(data.items())]
        self.append(messages, folder="Rebuilt")
        with self.dovecot.client(self.user) as imap:  # one moment: the folder is replaced whole
            imap.delete_folder(FOLDER)
            imap.rename_folder("Rebuilt", FOLDER)


def folder_row(db: sqlite3.Connection) -> tuple[int, int, int | None] | None:
    return db.execute("SELECT uidvalidity, last_uid, importing_until FROM imap_folders").fetchone()


def letters(db: sqlite3.Connection) -> dict[str, list[str]]:
    return {subject: json.loads(flags) for subject, flags in db.execute("SELECT subject, flags FROM letters")}


def receipts(db: sqlite3.Connection) -> list[str]:
    return [r for (r,) in db.execute("SELECT recipient FROM outbox WHERE kind = 'receipt' ORDER BY id")]


def start(gateway: Gateway, notify: Notify) -> Daemon:
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    return daemon


def message(n: int, subject: str) -> bytes:
    return make_message(n, subject=subject, sender=f"Sender {n} <s{n}@partner-{n % 7}.example>")


def test_after_a_reset_mail_the_unseen_first_import_left_out_stays_out(
        dovecot: DovecotServer, tmp_path: Path, notify: Notify) -> None:
    folder = Folder(dovecot, tmp_path)
    folder.append([(message(n, f"old read {n}"), (b"\\Seen",), LONG_AGO) for n in range(3)]
                  + [(message(3, "old unread"), (), LONG_AGO)])
    gateway = Gateway(tmp_path, extra=SETTINGS.format(batch=10)
                      + folder.account(first_import="unseen", after="keep"))
    daemon = start(gateway, notify)
    db = sqlite3.connect(gateway.state / "registry.sqlite3", timeout=30)
    try:
        wait_for(lambda: "old unread" in letters(db), 30, "the first import")
        folder.append([(message(4, "new before the reset"), (), None)])
        wait_for(lambda: len(receipts(db)) == 1, 30, "the new letter's receipt")
        before = folder_row(db)
        assert before is not None
        folder.rebuild()
        wait_for(lambda: (row := folder_row(db)) and row[0] != before[0] and row[2] is None, 30, "the reset settled")
        folder.append([(message(5, "new after the reset"), (), None)])
        wait_for(lambda: "new after the reset" in letters(db), 30, "mail after the reset")
        wait_for(lambda: len(receipts(db)) == 2, 30, "its receipt")
        found = letters(db)
        # The read mail the first import left out stays out; the rest was known by its bytes.
        assert sorted(found) == ["new after the reset", "new before the reset", "old unread"]
        assert "backlog" in found["old unread"] and "backlog" not in found["new after the reset"]
        assert receipts(db) == ["s4@partner-4.example", "s5@partner-5.example"]
    finally:
        db.close()
        log = daemon.stop()
    assert "UIDVALIDITY changed" in log


def test_a_reset_during_the_first_import_keeps_the_rest_backlog(
        dovecot: DovecotServer, tmp_path: Path, notify: Notify) -> None:
    folder = Folder(dovecot, tmp_path)
    count = 200
    dovecot.append_many(folder.user, [message(n, f"old {n}") for n in range(count)], folder=FOLDER)
    gateway = Gateway(tmp_path, extra=SETTINGS.format(batch=2) + folder.account(after="seen"))
    daemon = gateway.start()
    wait_for(lambda: (gateway.state / "registry.sqlite3").exists(), 30, "the registry")
    db = sqlite3.connect(gateway.state / "registry.sqlite3", timeout=30)
    try:
        # Killed part-way through the first import (two messages a batch), as a crash would.
        def under_way() -> bool:
            try:
                row = folder_row(db)
            except sqlite3.OperationalError:  # the schema is not there yet
                return False
            return row is not None and row[1] >= 10 and row[2] is not None
        wait_for(under_way, 60, "the first import under way")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        row = folder_row(db)
        assert row is not None and row[2] is not None and row[1] < count, "the first import ended before the kill"
        folder.rebuild()
        daemon = start(gateway, notify)
        wait_for(lambda: len(letters(db)) == count and (folder_row(db) or (0, 0, 0))[2] is None, 90,
                 "every message registered")
        found = letters(db)
        assert all("backlog" in flags for flags in found.values()), [s for s, f in found.items() if "backlog" not in f]
        assert receipts(db) == []
    finally:
        db.close()
        log = daemon.stop()
    assert "UIDVALIDITY changed" in log
