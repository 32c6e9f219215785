"""SMTP with `[smtp] acknowledge = "spooled"`: 250 once the message is fsynced in the spool
(Postfix's promise), registration following from the spool. Whatever got 250 is registered
exactly once: under load, after the daemon is killed between the 250 and the registration,
and after a power cut (the sessions' shared syncfs is what makes it durable)."""
from __future__ import annotations

import re
import signal
import smtplib
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Gateway, Notify, make_message, wait_for
from test_power_loss import Machine, MachineFactory, disk, machine_factory  # noqa: F401  (fixtures)
from test_smtp import Load, alive, children, start

pytestmark = pytest.mark.timeout(300)

SPOOLED = 'acknowledge = "spooled"'
QUEUED = re.compile(rb"2\.0\.0 OK queued as \d{20}-[0-9a-f]{8}")


def spooled(machine: Machine) -> Machine:
    config = machine.gateway.config.read_text()
    machine.gateway.config.write_text(config.replace("[smtp]\n", f"[smtp]\n{SPOOLED}\n", 1))
    return machine


def send(port: int, n: int, subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.partner.example")
        client.mail("alice@partner.example")
        client.rcpt("liaison@example.org")
        return client.data(make_message(n, subject=subject))


def assert_registered_once(letters: list[dict], subjects: set[str]) -> None:
    """Every acknowledged subject is one letter, and the numbers run without a gap."""
    assert subjects, "nothing was acknowledged"
    counted: dict[str, int] = {}
    for letter in letters:
        counted[str(letter["subject"])] = counted.get(str(letter["subject"]), 0) + 1
    assert {s: counted.get(s, 0) for s in subjects} == {s: 1 for s in subjects}
    assert all(n == 1 for n in counted.values())
    assert sorted(int(str(letter["number"]).split("-")[1]) for letter in letters) == list(range(1, len(letters) + 1))


def test_spooled_250_names_the_item_and_every_message_is_registered(gateway: Gateway, notify: Notify) -> None:
    """Four clients, 200 messages: each 250 names its spool item, and all 200 are registered once."""
    running = start(gateway, notify, f"max_connections_per_minute = 0\n{SPOOLED}")
    try:
        load = Load(gateway, total=200)
        load.finish()
        assert load.refused == []
        assert len(load.acked) == 200
        wait_for(lambda: len(gateway.list_json()) >= 200, 120, "200 letters registered")
        assert_registered_once(gateway.list_json(), set(load.acked))
        wait_for(lambda: not gateway.spool_files("work") and not gateway.spool_files("new"), 30, "an empty spool")
    finally:
        log = running.stop()
    assert "Traceback" not in log


def test_killed_after_the_spooled_250_before_registering_registers_it_once_at_restart(
        gateway: Gateway, notify: Notify) -> None:
    """The daemon (and its helper with it) is killed -9 right after the 250, before the item reaches the
    registrar: it waits durable in the spool, and the next start registers it, once."""
    running = start(gateway, notify, SPOOLED, GATEWAY_CRASH_AT="smtp-spooled-before-registering")
    [helper] = children(running.proc.pid)
    code, reply = send(gateway.smtp_port, 1, "acknowledged, then the crash")
    assert code == 250 and QUEUED.fullmatch(reply), reply
    assert running.proc.wait(30) == -signal.SIGKILL
    running.stop()
    wait_for(lambda: not alive(helper), 10, "the registrar helper to die with the daemon")
    assert gateway.list_json() == []
    assert len(gateway.spool_files("work")) == 1  # durable, claimed by a process that is gone
    restarted = start(gateway, notify)
    try:
        wait_for(lambda: gateway.list_json(), 30, "the letter registered after the restart")
        wait_for(lambda: not gateway.spool_files("work") and not gateway.spool_files("new"), 30, "an empty spool")
        assert_registered_once(gateway.list_json(), {"acknowledged, then the crash"})
        code, reply = send(gateway.smtp_port, 2, "after the restart")
        assert code == 250 and QUEUED.fullmatch(reply), reply
        wait_for(lambda: len(gateway.list_json()) == 2, 30, "the second letter")
        assert_registered_once(gateway.list_json(), {"acknowledged, then the crash", "after the restart"})
    finally:
        restarted.stop()


@pytest.mark.parametrize("moment", ["under load", "right after the last 250"])
def test_every_spooled_250_survives_a_power_cut(machine_factory: MachineFactory, moment: str) -> None:  # noqa: F811
    """The power goes while sessions are answered (or just after): whatever got 250 is registered once after
    the reboot, its raw copy intact."""
    machine = spooled(machine_factory())
    machine.start()
    if moment == "under load":
        load = Load(machine.gateway, total=400, clients=4)
        load.wait_acked(40)
        machine.pull_plug()
        load.finish(stop=True)
        acked = set(load.acked)
    else:
        acked = set()
        for n in range(5):
            code, reply = send(machine.gateway.smtp_port, n, f"one by one {n}")
            assert code == 250 and QUEUED.fullmatch(reply), reply
            acked.add(f"one by one {n}")
        machine.pull_plug()
    machine.start()
    machine.wait_spool_empty()
    assert_registered_once(machine.letters(), acked)
    assert machine.letters_without_raw_copy() == []
    machine.stop()


def test_without_the_shared_syncfs_a_power_cut_loses_spooled_250s(machine_factory: MachineFactory) -> None:  # noqa: F811
    """The check has teeth: with the spool's syncfs made a no-op, messages that got 250 are gone after the cut."""
    machine = spooled(machine_factory(syncfs=False))
    machine.start()
    acked = set()
    for n in range(5):
        code, reply = send(machine.gateway.smtp_port, n, f"one by one {n}")
        assert code == 250, reply
        acked.add(f"one by one {n}")
    # Right after the 250s: the registration that follows must not get the chance to sync them by its own means.
    machine.pull_plug()
    machine.start()
    machine.wait_spool_empty()
    registered = {str(letter["subject"]) for letter in machine.letters()}
    machine.stop()
    assert not acked <= registered or machine.letters_without_raw_copy(), "nothing was lost without the syncfs"


def test_a_failed_sync_answers_451_and_keeps_nothing_then_the_retry_is_registered(
        machine_factory: MachineFactory) -> None:  # noqa: F811
    """The disk's syncs fail (EIO): sessions that wait for the same sync all get 451, the spool keeps
    nothing of them (never acknowledged: their senders retry), and the daemon goes on. Once syncs work
    again, the same messages sent again get 250 and are registered once each."""
    machine = spooled(machine_factory())
    machine.start()
    machine.disk.fail_syncs()
    with ThreadPoolExecutor(4) as pool:
        refused = list(pool.map(lambda n: send(machine.gateway.smtp_port, n, f"retried {n}"), range(4)))
    assert [code for code, _ in refused] == [451] * 4, refused
    assert all(b"try again later" in reply for _, reply in refused), refused
    assert [machine.gateway.spool_files(d) for d in ("tmp", "new", "work")] == [[], [], []]
    machine.disk.fail_syncs(False)
    for n in range(4):
        code, reply = send(machine.gateway.smtp_port, n, f"retried {n}")
        assert code == 250 and QUEUED.fullmatch(reply), reply
    machine.wait_spool_empty()
    wait_for(lambda: len(machine.letters()) == 4, 30, "the four letters")
    assert_registered_once(machine.letters(), {f"retried {n}" for n in range(4)})
    log = machine.stop()
    assert "cannot make item durable" in log and "Traceback" not in log
