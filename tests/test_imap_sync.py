"""One folder's sync, driven step by step against a real Dovecot and a real SQLite registry, with the
faults a running daemon cannot be made to show on cue: a connection that drops at a chosen batch, a
FETCH the server refuses, a size the server understates, a message expunged while it was failing."""
from __future__ import annotations

import json
import select
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import text

from conftest import Gateway, make_message
from dovecot_server import DovecotServer, dovecot_fixture
from ports import free_port
from gateway.adapters import imap as imap_mod
from gateway.config import Config, load
from gateway.daemon.pipeline import Pipeline
from gateway.registry import Registry, RegistryUnavailable, schema
from gateway.registry.leases import Cluster
from gateway.registry.ledger import ImapLedger
from gateway.spool import Spool, read_item_file
from gateway.stages import rulebook

pytestmark = pytest.mark.timeout(180)

LONG_AGO = datetime.now() - timedelta(days=10)
SEEN, DELETED = b"\\Seen", b"\\Deleted"

# A server that offers neither MOVE nor UIDPLUS: EXPUNGE is all it has.
plain_dovecot = dovecot_fixture("plain_dovecot", scope="module", capabilities="IMAP4rev1 LITERAL+ SASL-IR NAMESPACE")


class Folder:
    """A fresh Dovecot user, one folder of it watched by a FolderWatcher whose syncs the test runs."""

    def __init__(self, dovecot: DovecotServer, tmp: Path, *, folder: str = "INBOX", settings: str = "",
                 **account: object):
        self.dovecot, self.folder = dovecot, folder
        self.user, password = f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        dovecot.add_user(self.user, password)
        (tmp / "imap.pass").write_text(password + "\n")
        values: dict[str, object] = {"name": "liaison", "host": "127.0.0.1", "port": dovecot.port, "tls": "plain",
                                     "username": self.user, "password_file": str(tmp / "imap.pass"),
                                     "idle": False, "folders": [folder], **account}
        extra = ("\n[imap]\n" + settings + "\n[[imap.accounts]]\n"
                 + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n")
        self.gateway = Gateway(tmp, extra=extra)
        self.config: Config = load(str(self.gateway.config))
        self.registry = Registry.from_config(self.config)
        self.registry.upgrade()
        self.spool = Spool(self.config.spool_dir, self.config.message_dir)
        self.ledger = ImapLedger(self.registry)
        self.watcher = imap_mod.FolderWatcher(self.config, self.config.model.imap.accounts[0], folder, self.spool,
                                              self.ledger)
        self.wrap: Callable[[IMAPClient], None] = lambda client: None  # a fault a test puts in

    def sync(self) -> None:
        client = imap_mod.connect(self.config, self.watcher.account)
        self.wrap(client)
        try:
            self.watcher._sync(client)
        finally:
            imap_mod._close(client)

    def sync_until(self, done: Callable[[], bool], tries: int = 6) -> None:
        """Sync again after each dropped connection, as the watcher does, until `done()`."""
        for _ in range(tries):
            try:
                self.sync()
            except (IMAPClientError, OSError):
                pass
            if done():
                return
        raise AssertionError(f"not done after {tries} syncs")

    def append(self, messages: list[tuple[bytes, tuple[bytes, ...], datetime | None]]) -> None:
        with self.dovecot.client(self.user) as imap:
            if not imap.folder_exists(self.folder):
                imap.create_folder(self.folder)
            for raw, flags, when in messages:
                imap.append(self.folder, raw, flags=flags, msg_time=when)

    def rebuild(self) -> None:
        """The folder replaced whole by the same messages with their flags and dates, under a new
        UIDVALIDITY (a server migration, an index rebuild)."""
        with self.dovecot.client(self.user) as imap:
            imap.select_folder(self.folder, readonly=True)
            data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
        with self.dovecot.client(self.user) as imap:
            imap.create_folder("Rebuilt")
            for _, d in sorted(data.items()):
                imap.append("Rebuilt", d[b"BODY[]"], flags=tuple(f for f in d[b"FLAGS"] if f != b"\\Recent"),
                            msg_time=d[b"INTERNALDATE"])
            imap.delete_folder(self.folder)
            imap.rename_folder("Rebuilt", self.folder)

    def on_server(self, folder: str | None = None) -> dict[str, set[bytes]]:
        """Each message's subject and flags."""
        with self.dovecot.client(self.user) as imap:
            if not imap.folder_exists(folder or self.folder):
                return {}
            imap.select_folder(folder or self.folder, readonly=True)
            data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "FLAGS"])
        return {d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip():
                set(d[b"FLAGS"]) - {b"\\Recent"} for d in data.values()}

    def spooled(self) -> dict[str, tuple[list[str], bytes]]:
        """Each spooled message's subject: its flags and its bytes (a message spooled again after a
        reset, which the registry recognises, is one entry)."""
        out: dict[str, tuple[list[str], bytes]] = {}
        for sub in ("new", "work"):
            for path in sorted((self.config.spool_dir / sub).glob("*")):
                meta, raw = read_item_file(path)
                subject = raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                out[subject] = (meta["flags"], raw)
        return out

    def register(self) -> dict[str, int]:
        """Register what is spooled; each letter's subject and how many receipts it queued."""
        pipeline = Pipeline(rulebook.load(str(self.gateway.config)), self.spool, self.registry)
        self.spool.recover()
        pipeline.process(self.spool.claim(100))
        with self.registry.read() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT subject, (SELECT count(*) FROM outbox o WHERE o.letter_id = l.id AND o.kind = 'receipt') "
                "FROM letters l").all())

    def ledger_rows(self) -> dict[int, tuple[int, str]]:
        with self.registry.read() as conn:
            return {uid: (uidvalidity, outcome) for uidvalidity, uid, outcome in conn.exec_driver_sql(
                "SELECT uidvalidity, uid, outcome FROM imap_ledger")}

    def folder_row(self) -> tuple[Any, ...]:
        with self.registry.read() as conn:
            return tuple(conn.exec_driver_sql(
                "SELECT uidvalidity, last_uid, importing_until, backlog_until, import_seen_since "
                "FROM imap_folders").one())


@pytest.fixture
def close_registries() -> Iterator[list[Folder]]:
    folders: list[Folder] = []
    yield folders
    for folder in folders:
        folder.registry.engine.dispose()


def refusing(uid: int, times: int) -> Callable[[IMAPClient], None]:
    """The server answers NO to a FETCH that names `uid`, `times` times (Gmail's "Some messages could
    not be FETCHed", Exchange's NO [UNAVAILABLE]); Dovecot itself never refuses one."""
    left = [times]

    def wrap(client: IMAPClient) -> None:
        real = client.fetch

        def fetch(uids: Any, what: Any, *args: Any, **kwargs: Any) -> Any:
            if left[0] > 0 and uid in list(uids):
                left[0] -= 1
                raise IMAPClientError("FETCH command error: NO [b'Some messages could not be FETCHed (Failure)']")
            return real(uids, what, *args, **kwargs)
        client.fetch = fetch  # type: ignore[method-assign]
    return wrap


def test_an_import_after_a_reset_resumed_on_a_new_connection_keeps_mail_read_since_the_last_sync(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder],
        monkeypatch: pytest.MonkeyPatch) -> None:
    box = Folder(dovecot, tmp_path, folder="Partners", settings="fetch_batch = 1",
                 first_import="unseen", after="keep")
    close_registries.append(box)
    box.append([(make_message(0, subject="old read"), (SEEN,), LONG_AGO),
                (make_message(1, subject="old unread"), (), LONG_AGO)])
    box.sync()
    box.append([(make_message(2, subject="new unread"), (), None),
                (make_message(3, subject="new, read elsewhere"), (SEEN,), None)])
    box.rebuild()
    # The connection drops after the reset import's first batch.
    real, calls = box.watcher._settle_batch, [0]

    def dropping(client: IMAPClient, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            client.shutdown()
        real(client, *args, **kwargs)
    monkeypatch.setattr(box.watcher, "_settle_batch", dropping)
    with pytest.raises((IMAPClientError, OSError)):
        box.sync()
    uidvalidity, last_uid, importing_until, _, seen_since = box.folder_row()
    assert importing_until == 4 and last_uid < 4 and seen_since is not None  # kept for the resumed import
    monkeypatch.setattr(box.watcher, "_settle_batch", real)
    box.sync()
    box.sync()
    assert box.folder_row()[1:3] == (4, None)
    assert box.folder_row()[4] is None  # the scope goes with the import
    spooled = box.spooled()
    # The read mail that arrived since the last sync is in the import's scope on the new connection
    # too; the read mail the first import left out stays out.
    assert sorted(spooled) == ["new unread", "new, read elsewhere", "old unread"]
    assert all("backlog" in flags for flags, _ in spooled.values())


def test_a_first_import_message_fetched_only_in_the_new_mail_pass_is_still_backlog(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    box = Folder(dovecot, tmp_path, after="keep")
    close_registries.append(box)
    for n in range(3):
        dovecot.deliver(box.user, make_message(n, subject=f"old {n}"))
    box.wrap = refusing(2, times=2)  # the batch, then the message alone: failing after the first import
    box.sync()
    assert box.folder_row()[3] == 3  # the first import's last UID, kept after it ended
    dovecot.deliver(box.user, make_message(3, subject="new"))
    box.sync()
    spooled = box.spooled()
    assert sorted(spooled) == ["new", "old 0", "old 1", "old 2"]
    assert {s: "backlog" in flags for s, (flags, _) in spooled.items()} == {
        "old 0": True, "old 1": True, "old 2": True, "new": False}
    assert box.register() == {"old 0": 0, "old 1": 0, "old 2": 0, "new": 1}  # no receipt for the backlog


def test_the_upgrade_keeps_the_end_of_a_first_import_under_way(tmp_path: Path) -> None:
    """A registry of the release before, with one folder's first import under way and one done."""
    from alembic import command

    config = load(str(Gateway(tmp_path).config))
    registry = Registry.from_config(config)
    try:
        alembic = schema._alembic_config()
        with registry.engine.begin() as conn:
            alembic.attributes["connection"] = conn
            command.upgrade(alembic, "0020")
            conn.execute(text("INSERT INTO imap_folders (account, folder, uidvalidity, last_uid, importing_until, "
                              "backlog, updated_at) VALUES ('liaison', 'INBOX', 7, 40, 90, 50, '2026-11-23 10:00:00'), "
                              "('liaison', 'Partners', 8, 12, NULL, 0, '2026-11-23 10:00:00')"))
        assert registry.upgrade()
        ledger = ImapLedger(registry)
        under_way, done = ledger.folder("liaison", "INBOX"), ledger.folder("liaison", "Partners")
        assert under_way is not None and (under_way.importing_until, under_way.backlog_until) == (90, 90)
        assert done is not None and done.backlog_until is None and done.seen_since is None
    finally:
        registry.engine.dispose()


def test_a_body_longer_than_the_size_the_server_gave_is_oversize(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    box = Folder(dovecot, tmp_path, settings="max_message_bytes = 100000", after="delete")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import

    def understating(client: IMAPClient) -> None:
        real = client.fetch

        def fetch(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            for data in out.values():
                if b"RFC822.SIZE" in data:
                    data[b"RFC822.SIZE"] = int(data[b"RFC822.SIZE"] * 0.45)  # an estimate, as Exchange gives
            return out
        client.fetch = fetch  # type: ignore[method-assign]
    box.wrap = understating
    dovecot.deliver(box.user, make_message(1, subject="big one", size=200_000))
    dovecot.deliver(box.user, make_message(2, subject="small one"))
    box.sync()
    spooled = box.spooled()
    flags, raw = spooled["big one"]
    assert "oversize" in flags and len(raw) < 2000  # its headers only, never a body cut off
    assert "oversize" not in spooled["small one"][0]
    # The original stays on the server (marked \Seen); the small one is deleted as configured.
    assert box.on_server() == {"big one": {SEEN}}


def test_without_uidplus_a_message_someone_flagged_deleted_is_not_expunged_unfetched(
        plain_dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    box = Folder(plain_dovecot, tmp_path, settings="fetch_batch = 1", first_import="unseen", after="move",
                 move_to="Done")
    close_registries.append(box)
    with plain_dovecot.client(box.user) as imap:
        assert not imap.has_capability("UIDPLUS") and not imap.has_capability("MOVE")
    plain_dovecot.deliver(box.user, make_message(0, subject="old, read and deleted by a person"),
                          flags=["\\Seen", "\\Deleted"])
    plain_dovecot.deliver(box.user, make_message(1, subject="old unread"))
    box.sync()
    plain_dovecot.deliver(box.user, make_message(2, subject="new 2"))
    plain_dovecot.deliver(box.user, make_message(3, subject="new 3, flagged deleted by a person"),
                          flags=["\\Deleted"])
    plain_dovecot.deliver(box.user, make_message(4, subject="new 4"))
    box.sync()
    assert sorted(box.spooled()) == ["new 2", "new 3, flagged deleted by a person", "new 4", "old unread"]
    assert sorted(box.on_server("Done")) == sorted(box.spooled())
    # What the first import left out stays as it was, its \Deleted flag too: its person expunges it.
    assert box.on_server() == {"old, read and deleted by a person": {SEEN, DELETED}}


def test_a_failing_message_expunged_meanwhile_is_settled_and_an_old_uidvalidity_is_not_counted(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    box = Folder(dovecot, tmp_path, folder="Partners", settings="max_attempts = 5", after="keep")
    close_registries.append(box)
    box.append([])
    box.sync()  # an empty folder: nothing to import
    box.append([(make_message(n, subject=f"new {n}"), (), None) for n in range(3)])
    # Dovecot cannot read the middle one: fetching it drops the connection.
    maildir = dovecot.user_dir(box.user) / "Maildir" / ".Partners"
    [poison] = [f for f in maildir.glob("*/*") if b"Subject: new 1" in f.read_bytes()]
    poison.chmod(0)
    box.sync_until(lambda: box.ledger_rows().get(2, (0, ""))[1] == "failing")  # counted once, not given up
    uidvalidity = box.folder_row()[0]
    assert box.ledger.status()[0]["failing"] == 1
    with dovecot.client(box.user) as imap:  # its person deletes it
        imap.select_folder("Partners")
        imap.delete_messages([2])
        imap.expunge()
    box.sync()
    assert box.ledger_rows() == {1: (uidvalidity, "spooled"), 2: (uidvalidity, "gone"), 3: (uidvalidity, "spooled")}
    assert box.ledger.status()[0]["failing"] == 0

    # A message failing under one UIDVALIDITY is not counted once the folder has another.
    box.append([(make_message(4, subject="poison again"), (), None)])
    [poison] = [f for f in maildir.glob("*/*") if b"Subject: poison again" in f.read_bytes()]
    poison.chmod(0)
    box.sync_until(lambda: box.ledger_rows().get(4, (0, ""))[1] == "failing")
    assert box.ledger.status()[0]["failing"] == 1
    with dovecot.client(box.user) as imap:
        imap.delete_folder("Partners")
    box.append([(make_message(5, subject="after the folder was recreated"), (), None)])
    box.sync()
    assert box.folder_row()[0] != uidvalidity
    assert box.ledger.status()[0]["failing"] == 0


def test_a_server_action_that_fails_is_done_again_without_spooling_the_messages_again(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """The spooled messages are recorded before their action on the server: a MOVE the server
    refuses (a folder over quota) leaves them recorded with the action still to do, and the next
    syncs do it again, without fetching and spooling the messages a second time."""
    box = Folder(dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import
    refusals = [2]

    def over_quota(client: IMAPClient) -> None:
        real = client.move

        def move(*args: Any, **kwargs: Any) -> Any:
            if refusals[0] > 0:
                refusals[0] -= 1
                raise IMAPClientError("MOVE command error: NO [b'[OVERQUOTA] Quota exceeded']")
            return real(*args, **kwargs)
        client.move = move  # type: ignore[method-assign]
    box.wrap = over_quota
    dovecot.deliver(box.user, make_message(1, subject="one"))
    dovecot.deliver(box.user, make_message(2, subject="two"))
    for _ in range(2):
        with pytest.raises(IMAPClientError, match="OVERQUOTA"):
            box.sync()
        assert box.on_server() == {"one": set(), "two": set()}
        with box.registry.engine.connect() as conn:
            assert conn.execute(text("SELECT uid, outcome, action FROM imap_ledger ORDER BY uid")).all() == [
                (1, "spooled", "pending-move"), (2, "spooled", "pending-move")]
    box.sync()  # the server takes the MOVE now
    assert box.on_server() == {} and set(box.on_server("Done")) == {"one", "two"}
    items = [p for sub in ("new", "work") for p in (box.config.spool_dir / sub).glob("*")]
    assert len(items) == 2  # each spooled once
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, action FROM imap_ledger ORDER BY uid")).all()
        assert rows == [(1, "move"), (2, "move")]


def test_actions_left_undone_when_the_uidvalidity_changes_are_closed_out(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder],
        caplog: pytest.LogCaptureFixture) -> None:
    """A MOVE the server refused leaves two messages with their action still to do; then the
    folder is rebuilt under a new UIDVALIDITY. The old UIDs' actions can never be done: they are
    closed out as void, with the reason, not left pending for ever, and the messages, still in
    the folder, are moved under the new UIDVALIDITY."""
    box = Folder(dovecot, tmp_path, folder="Partners", after="move", move_to="Done")
    close_registries.append(box)
    box.append([])
    box.sync()  # an empty folder: nothing to import

    box.wrap = refuse_move
    box.append([(make_message(1, subject="one"), (), None), (make_message(2, subject="two"), (), None)])
    with pytest.raises(IMAPClientError, match="OVERQUOTA"):
        box.sync()
    old = box.folder_row()[0]
    box.wrap = lambda client: None
    box.rebuild()
    box.sync()
    new = box.folder_row()[0]
    assert new != old
    assert box.on_server() == {} and set(box.on_server("Done")) == {"one", "two"}
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uidvalidity, uid, action, reason FROM imap_ledger "
                                 "ORDER BY uidvalidity != :new, uid"), {"new": new}).all()
    reason = f"the folder's UIDVALIDITY changed (now {new}) before this action was done"
    assert [tuple(r) for r in rows] == [(new, 1, "move", None), (new, 2, "move", None),
                                        (old, 1, "void-move", reason), (old, 2, "void-move", reason)]
    assert box.ledger.pending_actions("liaison", "Partners", old) == {}
    assert (f"liaison/Partners: the server's action (move: 2) left undone on 2 message(s) under UIDVALIDITY {old} "
            "is void; those still in the folder get it now") in caplog.text


def test_a_batch_finished_late_under_an_old_uidvalidity_does_not_set_the_folder_back(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a fetches a batch; before it records it, the folder is rebuilt under a new UIDVALIDITY
    and node b, which took the folder over meanwhile, syncs it. Node a's late record keeps its
    messages (their action void until done), but does not set the folder back to the old
    UIDVALIDITY: that would make the next sync take the folder for reset again, and check every
    message in it again as backlog."""
    box = Folder(dovecot, tmp_path, folder="Partners", after="move", move_to="Done")
    close_registries.append(box)
    box.append([])
    box.sync()  # an empty folder: nothing to import
    old = box.folder_row()[0]
    node_b = imap_mod.FolderWatcher(box.config, box.config.model.imap.accounts[0], "Partners", box.spool,
                                    box.ledger)
    spool_sync = box.spool.sync
    late: list[int] = []

    def meanwhile() -> None:
        spool_sync()
        if not late:  # node a's batch is durable in its spool, not yet recorded
            late.append(1)
            box.rebuild()
            client = imap_mod.connect(box.config, node_b.account)
            try:
                node_b._sync(client)
            finally:
                imap_mod._close(client)
    monkeypatch.setattr(box.spool, "sync", meanwhile)
    box.append([(make_message(1, subject="one"), (), None), (make_message(2, subject="two"), (), None)])
    # Node a's MOVE finds its messages gone with the old folder; its record came first.
    with pytest.raises(IMAPClientError, match="no longer exist"):
        box.sync()
    new = box.folder_row()[0]
    assert new != old
    assert box.on_server() == {} and set(box.on_server("Done")) == {"one", "two"}  # node b moved them
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uidvalidity, uid, action FROM imap_ledger ORDER BY uidvalidity, uid")).all()
    assert sorted(tuple(r) for r in rows if r[0] == new) == [(new, 1, "move"), (new, 2, "move")]
    assert [tuple(r) for r in rows if r[0] == old] == [(old, 1, "void-move"), (old, 2, "void-move")]
    box.sync()  # the next sync finds the folder as node b left it: nothing is checked again
    assert box.folder_row()[0] == new
    with box.registry.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM imap_ledger")).scalar() == len(rows)


def refuse_move(client: IMAPClient) -> None:
    """The connection's MOVE refused, as a full mailbox refuses it."""
    def move(*args: Any, **kwargs: Any) -> Any:
        raise IMAPClientError("MOVE command error: NO [b'[OVERQUOTA] Quota exceeded']")
    client.move = move  # type: ignore[method-assign]


def as_node_b(box: Folder, tmp_path: Path) -> Spool:
    """The box's folder watched from now on by node b: the same registry and message store, its own
    spool (returned)."""
    spool_b = Spool(tmp_path / "b" / "spool", box.config.message_dir)  # the message store is shared
    box.watcher = imap_mod.FolderWatcher(box.config, box.config.model.imap.accounts[0], "INBOX", spool_b,
                                         box.ledger)
    return spool_b


def cut_after_copy(client: IMAPClient) -> None:
    """The connection's COPY made, then the server gone before anything else."""
    real = client.copy

    def copy(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        client.shutdown()  # the server goes away right after the COPY
        return answer
    client.copy = copy  # type: ignore[method-assign]


def test_a_move_cut_off_between_its_copy_and_its_expunge_leaves_one_copy(
        plain_dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """Without MOVE, a move is a COPY and then an expunge of the originals: a connection lost in
    between leaves the originals in the folder with their action still to do. The next sync only
    expunges them: the copies made already are not made a second time."""
    box = Folder(plain_dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import

    box.wrap = cut_after_copy
    plain_dovecot.deliver(box.user, make_message(1, subject="one"))
    plain_dovecot.deliver(box.user, make_message(2, subject="two"))
    with pytest.raises((IMAPClientError, OSError)):
        box.sync()
    box.wrap = lambda client: None
    box.sync()
    assert box.on_server() == {}
    with plain_dovecot.client(box.user) as imap:
        imap.select_folder("Done", readonly=True)
        data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert sorted(d[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for d in data.values()) == [
        b"Subject: one", b"Subject: two"]
    assert len(box.spooled()) == 2
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, action FROM imap_ledger ORDER BY uid")).all()
    assert rows == [(1, "move"), (2, "move")]


class ResettingProxy:
    """A TCP proxy on loopback in front of Dovecot that resets the client's connection (RST, not a
    clean close) when the server starts sending a message holding `marker`, as a middlebox or a
    crashing server process does."""

    def __init__(self, server_port: int, marker: bytes):
        self.port, self.marker, self.server_port = free_port(), marker, server_port
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        # One thread per connection: a socket closed while another thread waits in recv on it would
        # not be reset until that recv returns.
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is server and self.marker in data:
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return  # closed below with linger 0: the client reads ECONNRESET
                    (server if source is client else client).sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self.listener.close()


def test_a_message_whose_fetch_resets_the_connection_is_given_up_and_the_rest_go_on(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """A connection reset while a batch is fetched (an OS error, not the server's BYE) makes the
    batch's messages suspects like any dropped connection: fetched one at a time, the one that
    resets it is counted, given up after max_attempts and quarantined; the others are taken."""
    proxy = ResettingProxy(dovecot.port, b"Subject: poison")
    try:
        box = Folder(dovecot, tmp_path, settings="max_attempts = 2\ntimeout_seconds = 5", after="keep", port=proxy.port)
        close_registries.append(box)
        box.sync()  # an empty folder: nothing to import
        for n, subject in enumerate(("before", "poison", "after")):
            dovecot.deliver(box.user, make_message(n, subject=subject))
        box.sync_until(lambda: box.ledger_rows().get(2, (0, ""))[1] == "unfetchable")
    finally:
        proxy.close()
    assert sorted(box.spooled()) == ["after", "before"]
    [quarantined] = box.spool.quarantined()
    assert "UID 2 could not be fetched: the server dropped the connection" in str(quarantined), quarantined


def test_a_move_cut_off_after_its_copy_and_then_a_reset_leaves_one_copy(
        plain_dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """A move without MOVE is cut off between its COPY and the expunge; then the folder is rebuilt
    under a new UIDVALIDITY, so the expunge still to do is void. The originals, taken again under
    the new UIDVALIDITY, are found in move_to already (by their bytes) and only expunged: move_to
    holds one copy of each. A message of the same size that was never copied is moved as usual."""
    box = Folder(plain_dovecot, tmp_path, folder="Partners", after="move", move_to="Done")
    close_registries.append(box)
    box.append([])
    box.sync()  # an empty folder: nothing to import

    box.wrap = cut_after_copy
    box.append([(make_message(1, subject="one"), (), None), (make_message(2, subject="two"), (), None)])
    with pytest.raises((IMAPClientError, OSError)):
        box.sync()
    box.wrap = lambda client: None
    box.append([(make_message(3, subject="six"), (), None)])  # arrives meanwhile, as long as "one"
    box.rebuild()
    box.sync()
    assert box.on_server() == {}
    with plain_dovecot.client(box.user) as imap:
        imap.select_folder("Done", readonly=True)
        data = imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert sorted(d[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for d in data.values()) == [
        b"Subject: one", b"Subject: six", b"Subject: two"]
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, action FROM imap_ledger ORDER BY uidvalidity, uid")).all()
    assert [action for _, action in rows] == ["move"] * 5


def test_a_node_that_lost_the_folder_during_a_batch_leaves_its_action_to_the_new_holder(
        plain_dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a's lease runs out while it fetches a batch (its heartbeat cut off from the registry)
    and node b takes the folder. Node a records its batch, but does not move the messages: node
    b does, as actions still to do. On a server without MOVE both copying them would leave two
    copies of each in move_to."""
    box = Folder(plain_dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import
    a = Cluster(box.registry, "node-a", takeover_seconds=60)
    a.join()
    registry_b = Registry.from_config(box.config)
    try:
        b = Cluster(registry_b, "node-b", takeover_seconds=60)
        b.join()
        account = box.config.model.imap.accounts[0]
        box.watcher = imap_mod.FolderWatcher(box.config, account, "INBOX", box.spool, box.ledger, cluster=a)
        assert a.acquire("imap:liaison/INBOX")
        spool_sync = box.spool.sync

        def lease_lost_meanwhile() -> None:
            spool_sync()
            with box.registry.write() as conn:
                conn.execute(text("UPDATE leases SET expires_at = '2000-01-01 00:00:00'"))
            assert b.acquire("imap:liaison/INBOX")
        monkeypatch.setattr(box.spool, "sync", lease_lost_meanwhile)
        plain_dovecot.deliver(box.user, make_message(1, subject="one"))
        plain_dovecot.deliver(box.user, make_message(2, subject="two"))
        with pytest.raises(imap_mod.LeaseLost):
            box.sync()
        assert box.on_server() == {"one": set(), "two": set()} and box.on_server("Done") == {}
        assert box.ledger.pending_actions("liaison", "INBOX", box.folder_row()[0]) == {1: "move", 2: "move"}
        monkeypatch.setattr(box.spool, "sync", spool_sync)
        box.watcher = imap_mod.FolderWatcher(box.config, account, "INBOX", box.spool, box.ledger, cluster=b)
        box.sync()
        assert box.on_server() == {} and set(box.on_server("Done")) == {"one", "two"}
        with plain_dovecot.client(box.user) as imap:
            imap.select_folder("Done", readonly=True)
            assert len(imap.search(["ALL"])) == 2
    finally:
        registry_b.engine.dispose()


def test_a_copy_not_recorded_because_the_registry_went_away_is_not_copied_again(
        plain_dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MOVE, a move's COPY is done, and the registry goes away before it is recorded done.
    The next sync looks in move_to first: the copies made are found by their bytes, and only the
    originals are expunged."""
    box = Folder(plain_dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import
    actions_done = box.ledger.actions_done

    def registry_gone(account: str, folder: str, uidvalidity: int, done: dict[int, str]) -> None:
        if "pending-expunge" in done.values():
            raise RegistryUnavailable("registry: server closed the connection unexpectedly")
        actions_done(account, folder, uidvalidity, done)
    monkeypatch.setattr(box.ledger, "actions_done", registry_gone)
    plain_dovecot.deliver(box.user, make_message(1, subject="one"))
    plain_dovecot.deliver(box.user, make_message(2, subject="two"))
    with pytest.raises(RegistryUnavailable):
        box.sync()
    assert set(box.on_server("Done")) == {"one", "two"} and set(box.on_server()) == {"one", "two"}
    monkeypatch.setattr(box.ledger, "actions_done", actions_done)
    box.sync()
    assert box.on_server() == {}
    with plain_dovecot.client(box.user) as imap:
        imap.select_folder("Done", readonly=True)
        assert len(imap.search(["ALL"])) == 2
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, action FROM imap_ledger ORDER BY uid")).all()
    assert rows == [(1, "move"), (2, "move")]


def test_messages_spooled_by_a_node_that_died_before_its_action_are_fetched_again_by_the_next(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """Node a spools two messages and records them with their move still to do (the server
    refused it: over quota), then dies for good with its disk, before registering them. Node b,
    watching the folder now, does not simply move them away: their letters would exist nowhere. It
    fetches them again into its own spool first, then moves them; a message node a had registered
    is only moved."""
    box = Folder(dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import
    dovecot.deliver(box.user, make_message(0, subject="zero"))
    box.sync()
    box.register()  # node a registered this one

    box.wrap = refuse_move
    dovecot.deliver(box.user, make_message(1, subject="one"))
    dovecot.deliver(box.user, make_message(2, subject="two"))
    with pytest.raises(IMAPClientError, match="OVERQUOTA"):
        box.sync()  # "zero" is moved by now; "one" and "two" are spooled, their move refused
    with box.registry.engine.connect() as conn:  # and "zero" again, as if its move was refused too
        conn.execute(text("UPDATE imap_ledger SET action = 'pending-move' WHERE uid = 1"))
        conn.commit()
    box.wrap = lambda client: None
    # Node b: the same registry and message store, its own spool.
    spool_b = as_node_b(box, tmp_path)
    box.sync()
    assert box.on_server() == {} and set(box.on_server("Done")) == {"zero", "one", "two"}
    box.spool = spool_b
    assert box.register() == {"zero": 1, "one": 1, "two": 1}
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, outcome, action FROM imap_ledger ORDER BY uid")).all()
    assert rows == [(1, "spooled", "move"), (2, "spooled", "move"), (3, "spooled", "move")]


def test_messages_a_dead_node_spooled_in_the_middle_of_a_move_are_fetched_again_and_not_copied_twice(
        dovecot: DovecotServer, tmp_path: Path, close_registries: list[Folder]) -> None:
    """Node a, moving without MOVE, died with its disk before registering two messages: one's COPY
    was done (its original still to expunge), the other's begun. Node b fetches both again into its
    own spool before the move goes on, and looks in move_to before copying: each ends there once."""
    box = Folder(dovecot, tmp_path, after="move", move_to="Done")
    close_registries.append(box)
    box.sync()  # an empty folder: nothing to import

    box.wrap = refuse_move
    one, two = make_message(1, subject="one"), make_message(2, subject="two")
    dovecot.deliver(box.user, one)
    dovecot.deliver(box.user, two)
    with pytest.raises(IMAPClientError, match="OVERQUOTA"):
        box.sync()  # both spooled, their move refused
    # As node a left them: "one" copied into Done, its original not yet expunged; "two"'s COPY begun.
    dovecot.deliver(box.user, one, folder="Done")
    with box.registry.engine.connect() as conn:
        conn.execute(text("UPDATE imap_ledger SET action = 'pending-expunge' WHERE uid = 1"))
        conn.execute(text("UPDATE imap_ledger SET action = 'pending-copy' WHERE uid = 2"))
        conn.commit()
    box.wrap = lambda client: None
    spool_b = as_node_b(box, tmp_path)
    box.sync()
    box.sync()  # the fetch again, then the move
    assert box.on_server() == {}
    with dovecot.client(box.user) as imap:
        imap.select_folder("Done", readonly=True)
        subjects = [d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip()
                    for d in imap.fetch(imap.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values()]
    assert sorted(subjects) == ["one", "two"]
    box.spool = spool_b
    assert box.register() == {"one": 1, "two": 1}
    with box.registry.engine.connect() as conn:
        rows = conn.execute(text("SELECT uid, outcome, action FROM imap_ledger ORDER BY uid")).all()
    assert rows == [(1, "spooled", "move"), (2, "spooled", "move")]
