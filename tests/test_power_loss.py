"""Power loss, not just a killed process: the gateway's state on a disk that drops
whatever was not fsynced (tests/powerloss). Whatever was acknowledged upstream
must be there after the reboot.

Most tests start from an installed state directory made durable (Machine); one
starts from an empty disk, a very first boot, where the gateway itself must make
its state directory, the spool's folders and the registry's file durable.

Two tests show the checks have teeth: the same scenario with the spool's syncfs
made a no-op, or its per-file fsyncs, loses what the gateway acknowledged.
"""
from __future__ import annotations

import json
import os
import smtplib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from conftest import ADDRESS_RULES, Daemon, Gateway, Notify, make_message, wait_for, write_messages
from dovecot_server import DovecotServer
from fax_samples import ENGLISH, tiff_fax
from powerloss import PowerLossDisk
from smtp_sink import SmtpSink
from test_archive import RULES as ARCHIVE_RULES
from test_fax import FAX_SETTINGS
from test_imap import IMAP_SETTINGS, Mailbox
from test_routing import SERVICE, complaint, outbound
from test_smtp import Load, assert_each_acked_message_registered_once

from gateway.spool import DamagedItem, Spool, read_item_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerLossDisk]:
    d = PowerLossDisk(tmp_path)
    yield d
    d.unmount()


class Machine:
    """A gateway whose state directory is on the power-loss disk (its config and logs are not)."""

    def __init__(self, tmp: Path, disk: PowerLossDisk, notify: Notify, *, syncfs: bool = True,
                 file_fsync: bool = True, installed: bool = True, extra: str = "", rules: str = ADDRESS_RULES):
        self.disk = disk
        self.notify = notify
        self.gateway = Gateway(tmp, extra=extra, rules=rules)
        on_disk = disk.mount / "storage"
        # Without file_fsync, only the spool's and the message store's files go unsynced: the registry still commits.
        self.env = disk.env(syncfs=syncfs,
                            no_file_fsync_under=() if file_fsync else (on_disk / "spool", on_disk / "messages"))
        config = self.gateway.config.read_text()
        config = config.replace(f'state_dir = "{self.gateway.state}"', f'state_dir = "{on_disk}"')
        self.gateway.config.write_text(config.replace("[smtp]\n", "[smtp]\nmax_connections_per_minute = 0\n", 1))
        self.gateway.state = on_disk
        self.daemon: Daemon | None = None
        if installed:  # the state directory and the spool's folders exist and are on the disk
            Spool(on_disk / "spool", on_disk / "messages")
            disk.sync()

    def start(self, **env: str) -> Daemon:
        self.daemon = self.gateway.start(NOTIFY_SOCKET=str(self.notify.path), **self.env, **env)
        self.notify.wait_for("READY=1")
        return self.daemon

    def run(self, *args: str, check: bool = True, **env: str) -> str:
        proc = self.gateway.run(*args, check=check, env=self.gateway.env(**self.env, **env))
        return proc.stdout + (proc.stderr if not check else "")

    def pull_plug(self) -> None:
        self.disk.pull_plug(*([self.daemon.pid] if self.daemon else []))
        if self.daemon:
            self.daemon.wait()
        self.daemon = None
        self.disk.power_on()

    def stop(self) -> str:
        assert self.daemon is not None
        out = self.daemon.stop()
        self.daemon = None
        return out

    def letters(self) -> list[dict]:
        return json.loads(self.run("letters", "list", "--json"))

    def wait_spool_empty(self) -> None:
        wait_for(lambda: not self.gateway.spool_files("new") and not self.gateway.spool_files("work"),
                 30, "the spool to be worked off")

    def recover(self) -> None:
        """Start on what survived and let the daemon's recovery work the spool off (a move into the message
        store that the cut undid is done again), then stop."""
        self.start()
        self.wait_spool_empty()
        self.stop()

    def registry(self, sql: str) -> list[tuple]:
        # Closed, not just committed: an open file keeps the disk from unmounting.
        with closing(sqlite3.connect(self.gateway.state / "registry.sqlite3")) as db, db:
            return db.execute(sql).fetchall()

    def letters_without_raw_copy(self) -> list[str]:
        """Registered letters whose raw bytes are not in the message store, intact."""
        missing = []
        for number, sha in self.registry("SELECT number, raw_sha256 FROM letters ORDER BY number"):
            try:
                if read_item_file(self.gateway.state / "messages" / sha[:2] / f"{sha}.msg")[0]["sha256"] != sha:
                    missing.append(number)
            except (OSError, DamagedItem):
                missing.append(number)
        return missing


MachineFactory = Callable[..., Machine]  # Machine's keyword arguments


@pytest.fixture
def machine_factory(tmp_path: Path, disk: PowerLossDisk, notify: Notify) -> Iterator[MachineFactory]:
    made: list[Machine] = []

    def make(**kwargs: Any) -> Machine:
        m = Machine(tmp_path, disk, notify, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        if m.daemon is not None and m.daemon.returncode is None:
            m.daemon.stop()


@pytest.fixture
def machine(machine_factory: MachineFactory) -> Machine:
    return machine_factory()


def send_one_by_one(machine: Machine, count: int) -> dict[str, str]:
    """`count` messages, one session each; {subject: letter number} of those answered 250."""
    acked = {}
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", machine.gateway.smtp_port, timeout=30) as client:
            client.ehlo("client.partner.example")
            client.mail("alice@partner.example")
            client.rcpt("liaison@example.org")
            code, reply = client.data(make_message(n, subject=f"one by one {n}"))
        assert code == 250, reply
        acked[f"one by one {n}"] = reply.decode().rsplit(" ", 1)[1]
    return acked



@pytest.mark.parametrize("moment", ["under load", "right after the last 250"])
def test_every_smtp_250_survives_a_power_cut(machine: Machine, moment: str) -> None:
    """Whatever got 250 is registered once after the reboot, its raw copy intact, its number in an unbroken series."""
    machine.start()
    if moment == "under load":
        load = Load(machine.gateway, total=400, clients=4)
        load.wait_acked(40)
        machine.pull_plug()
        load.finish(stop=True)
        acked = load.acked
    else:
        acked = send_one_by_one(machine, 5)
        machine.pull_plug()
    machine.start()
    machine.wait_spool_empty()
    assert_each_acked_message_registered_once(machine.gateway, acked)
    assert machine.letters_without_raw_copy() == []
    machine.stop()


@pytest.mark.parametrize("point", ["after-spool", "before-commit", "after-commit"])
def test_an_ingested_letter_is_registered_once_whatever_the_moment_of_the_cut(machine: Machine, tmp_path: Path,
                                                                              point: str) -> None:
    """`gateway ingest` killed at each durable step, the power then cut: one letter, numbered without a gap."""
    first = tmp_path / "first.eml"
    first.write_bytes(make_message(1, subject="registered before"))
    machine.run("ingest", str(first))
    crashing = tmp_path / "crash.eml"
    crashing.write_bytes(make_message(2, subject="the crash"))
    machine.run("ingest", str(crashing), check=False, GATEWAY_CRASH_AT=point)
    machine.pull_plug()
    machine.start()
    machine.wait_spool_empty()
    letters = {letter["subject"]: letter["number"] for letter in machine.letters()}
    assert letters == {"registered before": "2026-000001", "the crash": "2026-000002"}
    assert machine.letters_without_raw_copy() == []
    machine.stop()


def test_a_fax_that_left_the_drop_folder_is_registered_after_a_power_cut(machine_factory: MachineFactory) -> None:
    machine = machine_factory(extra=FAX_SETTINGS)
    folder = machine.gateway.state / "fax-drop"
    folder.mkdir(parents=True)
    machine.disk.sync()
    machine.start()
    # The fax server's part: the file is durable in the drop folder before the gateway sees it.
    fax = folder / "fax_0105551234_20261123-101500.tif"
    partial = folder / f".{fax.name}.part"
    with open(partial, "wb") as out:
        out.write(tiff_fax([ENGLISH], resolution="fine", compression="group4"))
        past = time.time() - 5
        out.flush()
        os.utime(out.fileno(), (past, past))
        os.fsync(out.fileno())
    os.rename(partial, fax)
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    wait_for(lambda: not fax.exists(), 30, "the gateway to take the fax")
    machine.pull_plug()
    machine.start()
    wait_for(lambda: machine.letters(), 30, "the fax registered")
    machine.wait_spool_empty()
    wait_for(lambda: not fax.exists(), 30, "the drop folder emptied")
    letters = machine.letters()
    assert [(letter["channel"], letter["number"]) for letter in letters] == [("fax", "2026-000001")], (
        "a fax removed from the drop folder was lost in the power cut: its spool copy was not durable "
        "before the removal")
    machine.stop()


@pytest.mark.parametrize("after", ["move", "delete"])
def test_a_message_moved_or_deleted_on_the_server_survives_a_power_cut(
        machine_factory: MachineFactory, dovecot: DovecotServer, tmp_path: Path, after: str) -> None:
    mailbox = Mailbox(dovecot, tmp_path)
    for n in range(3):
        mailbox.deliver(make_message(n, subject=f"imap {n}"))
    settings = {"move_to": "Registered"} if after == "move" else {}
    machine = machine_factory(extra=IMAP_SETTINGS + mailbox.account(after=after, **settings))
    machine.start()
    wait_for(lambda: not mailbox.flags(), 30, "the inbox emptied by the gateway")
    machine.pull_plug()  # the instant the server let go of the last one
    machine.start()
    machine.wait_spool_empty()
    subjects = sorted(letter["subject"] for letter in machine.letters())
    assert subjects == ["imap 0", "imap 1", "imap 2"]
    assert machine.letters_without_raw_copy() == []
    machine.stop()


def test_queued_mail_is_delivered_after_a_power_cut_with_the_same_message_id(
        machine_factory: MachineFactory) -> None:
    sink = SmtpSink().start()
    try:
        machine = machine_factory(extra=outbound(sink.address) + SERVICE)
        machine.start()
        for n in range(4):
            raw = complaint(n, sender=f"Partner {n} <p{n}@partner.example>")
            with smtplib.SMTP("127.0.0.1", machine.gateway.smtp_port, timeout=30) as client:
                client.sendmail(f"p{n}@partner.example", ["service@example.org"], raw)
        sink.wait_for(3)
        machine.pull_plug()  # mid-delivery: some sent, some not, some sent but not yet recorded
        machine.start()
        wait_for(lambda: {m["status"] for m in json.loads(machine.run("outbox", "list", "--json"))} == {"sent"},
                 60, "every mail sent")
        queued = json.loads(machine.run("outbox", "list", "--json"))
        machine.stop()
    finally:
        sink.stop()
    assert len(queued) == 4 * 3  # two owners and a receipt for each letter
    delivered: dict[str, int] = {}
    for received in sink.received:
        message_id = message_from_bytes(received.data)["Message-ID"].strip("<>")
        delivered[message_id] = delivered.get(message_id, 0) + 1
    assert set(delivered) == {m["message_id"].strip("<>") for m in queued}


def test_an_archive_run_that_returned_survives_a_power_cut(machine_factory: MachineFactory, tmp_path: Path) -> None:
    machine = machine_factory(rules=ARCHIVE_RULES)
    machine.run("ingest", *write_messages(tmp_path, (
        make_message(n, subject=subject, to=to)
        for n, (subject, to) in enumerate([("complaint one", "liaison@example.org"), ("Order 1", "sales@example.org"),
                                           ("Order 2", "sales@example.org")]))))
    machine.registry("UPDATE letters SET received_at = '2026-03-10 02:00:00.000000'")  # as if in March
    machine.run("archive", "run", "--month", "2026-03")
    before = json.loads(machine.run("archive", "list", "--json"))
    assert before
    machine.pull_plug()
    after = json.loads(machine.run("archive", "list", "--json"))
    assert after == before, "archive packages recorded before the power cut are missing after it"
    verify = machine.gateway.run("archive", "verify", "--month", "2026-03", check=False,
                                 env=machine.gateway.env(**machine.env))
    assert verify.returncode == 0, (
        f"archive verify after a power cut that followed a finished `archive run`:\n{verify.stdout}{verify.stderr}")
    archived = machine.registry("SELECT count(*) FROM letters WHERE archive_number IS NOT NULL")
    assert archived == [(3,)]


def test_an_archive_copy_made_before_the_originals_were_released_survives_a_power_cut(
        machine_factory: MachineFactory, disk: PowerLossDisk, tmp_path: Path) -> None:
    """The message store's copies go only once the package's copy is written: after a cut, the copy
    is whole (a copy that lost unsynced writes would be written again at the next check)."""
    copy = disk.mount / "second-disk"
    copy.mkdir()  # as its operator makes it
    disk.sync()
    machine = machine_factory(rules=ARCHIVE_RULES, extra=f'[archive]\ncopies = ["{copy}"]\n')
    machine.run("ingest", *write_messages(tmp_path, (make_message(n, subject=f"Order {n}", to="sales@example.org")
                                                     for n in range(3))))
    machine.registry("UPDATE letters SET received_at = '2026-03-10 02:00:00.000000', status = 'closed'")
    out = machine.run("archive", "run", "--month", "2026-03")
    assert f"copied to {copy}" in out
    assert machine.registry("SELECT count(*) FROM letters WHERE raw_released = 1") == [(3,)]
    machine.pull_plug()
    verify = machine.gateway.run("archive", "verify", "--month", "2026-03", check=False,
                                 env=machine.gateway.env(**machine.env))
    assert verify.returncode == 0 and "written again" not in verify.stderr and "copied to" not in verify.stdout, (
        f"the archive's copy after a power cut that followed its release:\n{verify.stdout}{verify.stderr}")


def test_without_the_spools_syncfs_the_power_cut_loses_acknowledged_messages(
        machine_factory: MachineFactory) -> None:
    """The same SMTP scenario with the spool's syncfs made a no-op (the registrar's Spool.sync(), the only thing
    that makes an SMTP item durable before 250): the disk really drops what was never synced."""
    machine = machine_factory(syncfs=False)
    machine.start()
    acked = send_one_by_one(machine, 5)
    machine.pull_plug()
    machine.start()
    machine.wait_spool_empty()
    registered = {letter["subject"] for letter in machine.letters()}
    lost = machine.letters_without_raw_copy()
    machine.stop()
    assert set(acked) <= registered  # the registry's own fsyncs kept the rows...
    assert len(lost) == len(acked)  # ...but not one of the messages themselves survived


@pytest.mark.parametrize("file_fsync", [True, False], ids=["with-file-fsync", "without-file-fsync"])
def test_an_ingested_letter_keeps_its_raw_copy_only_if_the_spool_fsyncs_the_file(
        machine_factory: MachineFactory, tmp_path: Path, file_fsync: bool) -> None:
    """`gateway ingest` reported the letter registered, then the power is cut. With the spool's fsync of the
    item file (Spool.enqueue, durable) the raw copy survives; with that fsync made a no-op, the renames and the
    directory fsyncs still make the name durable, but not the bytes behind it."""
    machine = machine_factory(file_fsync=file_fsync)
    letter = tmp_path / "letter.eml"
    letter.write_bytes(make_message(1, subject="fsynced or not"))
    reported = machine.run("ingest", str(letter))
    number = reported.split("registered as ", 1)[1].split()[0]
    machine.pull_plug()
    assert machine.registry("SELECT number FROM letters") == [(number,)]  # the registry's own fsyncs kept the row
    machine.recover()
    lost = machine.letters_without_raw_copy()
    if file_fsync:
        assert lost == []
    else:
        assert lost == [number]  # the check fails: the bytes never reached the disk


def test_a_letter_ingested_on_the_very_first_boot_survives_a_power_cut(
        machine_factory: MachineFactory, tmp_path: Path) -> None:
    """Nothing installed, nothing synced: the gateway makes its state directory, the spool's folders, the message
    store and the registry's database file durable itself before it reports a letter registered."""
    machine = machine_factory(installed=False)
    assert list(machine.disk.mount.iterdir()) == []
    letter = tmp_path / "letter.eml"
    letter.write_bytes(make_message(1, subject="first boot"))
    reported = machine.run("ingest", str(letter))
    number = reported.split("registered as ", 1)[1].split()[0]
    machine.pull_plug()
    assert machine.gateway.state.is_dir(), "the state directory was lost: its name in its parent was never fsynced"
    assert {"messages", "spool"} <= {path.name for path in machine.gateway.state.iterdir()}, (
        "a folder the spool created was lost: its name in the state directory was never fsynced")
    assert (machine.gateway.state / "registry.sqlite3").exists(), (
        "the registry's database file was lost: its name in the state directory was never fsynced")
    assert machine.registry("SELECT number, subject FROM letters") == [(number, "first boot")]
    machine.recover()
    assert machine.letters_without_raw_copy() == []
