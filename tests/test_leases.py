"""Claims and leases between nodes on one PostgreSQL, where the nodes disagree: their clocks run
apart, the connection holding a periodic job's lock drops, a reload replaces a folder's watcher.
Each piece of work still runs once (DESIGN.md §2.9)."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, update
from conftest import make_message, wait_for
from smtp_sink import SmtpSink
from test_outbox_faults import configured, letter_with_mail

from gateway.adapters import imap as imap_mod
from gateway.daemon.pipeline import Pipeline
from gateway.config import Config, ImapAccount, shared_settings
from gateway.outbound.sender import OutboxSender
from gateway.registry import leases as leases_mod
from gateway.registry import outbox as outbox_mod
from gateway.registry import Registry, RegistryUnavailable
from gateway.registry.leases import Cluster, NodeConflict, RulesWatch, SettingsWatch, Skipped
from gateway.registry.models import Lease, OutboxMail
from gateway.registry.ledger import ImapLedger
from gateway.spool import Spool
from gateway.stages import rulebook

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def two_nodes(tmp_path: Path, pg_url: str) -> Iterator[tuple[Config, Registry, Cluster, Config, Registry, Cluster]]:
    sink = SmtpSink().start()
    config_a, registry_a = configured(tmp_path / "a", sink.address, pg_url)
    config_b, registry_b = configured(tmp_path / "b", sink.address, pg_url)
    a, b = Cluster(registry_a, "node-a", takeover_seconds=60), Cluster(registry_b, "node-b", takeover_seconds=60)
    a.join()
    b.join()
    try:
        yield config_a, registry_a, a, config_b, registry_b, b
    finally:
        registry_a.close()
        registry_b.close()
        sink.stop()


def skewed(monkeypatch: pytest.MonkeyPatch, module: Any, minutes: float) -> None:
    """This node's clock, `minutes` off the others' (one machine's NTP broken)."""
    monkeypatch.setattr(module, "utcnow", lambda: datetime.now(timezone.utc) + timedelta(minutes=minutes))


def test_a_node_whose_clock_runs_ahead_leaves_a_live_nodes_mail_and_folder_alone(
        two_nodes: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    _, registry_a, a, _, registry_b, b = two_nodes
    letter_with_mail(registry_a, 1)
    [mail] = registry_a.outbox_due(10)
    assert a.acquire("imap:liaison/INBOX")
    a.beat()
    assert registry_a.outbox_still_mine(mail.id)
    # Node b's clock is two minutes ahead: node a's leases (a takeover period of 60 s) would look
    # expired to it by its own clock.
    skewed(monkeypatch, outbox_mod, 2)
    skewed(monkeypatch, leases_mod, 2)
    assert registry_b.outbox_due(10) == []
    assert not b.acquire("imap:liaison/INBOX")
    assert a.holds("imap:liaison/INBOX")


def test_a_node_whose_clock_runs_behind_keeps_what_it_claims(two_nodes: tuple[Any, ...],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, registry_a, _, _, registry_b, _ = two_nodes
    letter_with_mail(registry_a, 1)
    with registry_a.write() as conn:  # queued an hour ago
        conn.execute(update(OutboxMail).values(next_attempt_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    with monkeypatch.context() as behind:
        skewed(behind, outbox_mod, -2)  # node a's clock is two minutes behind the others'
        [_] = registry_a.outbox_due(10)
    assert registry_b.outbox_due(10) == []


def test_clock_skew_does_not_send_one_mail_twice(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with the sender: node a is in DATA at its slow relay when node b, its clock two
    minutes ahead, looks for mail to send."""
    slow, quick = SmtpSink(), SmtpSink().start()
    slow.data_gate = threading.Event()
    slow.start()
    config_a, registry_a = configured(tmp_path / "a", slow.address, pg_url)
    config_b, registry_b = configured(tmp_path / "b", quick.address, pg_url)
    try:
        letter_with_mail(registry_a, 1)
        a = Cluster(registry_a, "node-a", takeover_seconds=60)
        a.join()
        Cluster(registry_b, "node-b", takeover_seconds=60).join()
        first = threading.Thread(target=OutboxSender(config_a, registry_a).deliver_due)
        first.start()
        wait_for(lambda: slow.attempts == 1, 30, "node a in DATA at its relay")
        a.beat()
        with monkeypatch.context() as ahead:
            skewed(ahead, outbox_mod, 2)
            OutboxSender(config_b, registry_b).deliver_due()
        slow.data_gate.set()
        first.join(30)
        assert (len(slow.received), len(quick.received)) == (1, 0)
    finally:
        slow.data_gate.set()
        slow.stop()
        quick.stop()
        registry_a.close()
        registry_b.close()


def test_a_periodic_job_whose_lock_connection_drops_is_left_to_its_running_node(
        two_nodes: tuple[Any, ...], pg_url: str) -> None:
    _, _, a, _, _, b = two_nodes
    inside, release = threading.Event(), threading.Event()
    ran: list[str] = []
    outcome: dict[str, Any] = {}

    def work_a() -> str:
        ran.append("a")
        inside.set()
        release.wait(30)
        return "a done"

    def run_a() -> None:
        try:
            outcome["a"] = a.once("archive", "2026-03", work_a)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcome["a"] = exc
    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        assert inside.wait(30)
        # The connection holding the lock drops (a fail-over, a firewall's idle timeout); node a
        # itself is alive and archiving.
        with psycopg.connect(pg_url, autocommit=True) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                                  "WHERE locktype = 'advisory' AND classid = 724312").fetchall()
            assert killed == [(True,)]
            wait_for(lambda: not conn.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                                              "AND classid = 724312").fetchall(), 10, "the lock gone")
        result_b = b.once("archive", "2026-03", lambda: ran.append("b") or "b done")
    finally:
        release.set()
        thread.join(30)
    assert result_b == Skipped("node-a runs it now")
    assert ran == ["a"]
    assert outcome["a"] == "a done"  # not the unlock's error on the dropped connection
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT slot, node LIKE 'node-a#%', outcome FROM job_runs").fetchall() == [
            ("2026-03", True, "done")]
    # A node that stopped beating (dead) leaves its run to the next: node a stops now.
    a.leave()
    assert b.once("archive", "2026-04", lambda: "b done") == "b done"


def test_a_periodic_jobs_lock_held_by_a_node_that_vanished_is_taken_from_it(
        two_nodes: tuple[Any, ...], pg_url: str) -> None:
    """A node that vanishes without its connection being closed (a power cut, a network cut) keeps
    its periodic job's lock until PostgreSQL notices, after its TCP keepalive time: two hours by
    default, with no reminders meanwhile. Once that node no longer beats, another ends the
    connection and runs the job; a lock held by a node that beats is left to it."""
    _, _, a, _, _, b = two_nodes
    key = zlib.crc32(b"reminders") - 2 ** 31

    def holding(instance: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(pg_url, autocommit=True, application_name=instance)
        conn.execute("SELECT pg_advisory_lock(724312, %s)", (key,))
        return conn
    live = holding(a.instance)  # node a, just starting a run
    try:
        assert b.once("reminders", "6", lambda: "b ran") == Skipped("another node runs it now")
        assert live.execute("SELECT 1").fetchone() == (1,)
    finally:
        live.close()
    vanished = holding("node-c#gone")
    try:
        vanished.execute("INSERT INTO nodes (name, instance, host, pid, started_at, heartbeat_at) VALUES "
                         "('node-c', 'node-c#gone', 'h', 1, now() - interval '1 hour', now() - interval '5 minutes')")
        vanished.execute("INSERT INTO job_runs (job, slot, node, started_at) VALUES "
                         "('reminders', '7', 'node-c#gone', now() - interval '6 minutes')")
        assert b.once("reminders", "7", lambda: "b ran") == "b ran"
        assert b.once("reminders", "8", lambda: "b ran again") == "b ran again"
        assert a.once("reminders", "8", lambda: "a ran") == Skipped("done for 8 by node-b")
        with pytest.raises(psycopg.OperationalError):
            vanished.execute("SELECT 1")
    finally:
        vanished.close()


def test_a_node_whose_heartbeat_fell_behind_runs_a_periodic_job_once(two_nodes: tuple[Any, ...], pg_url: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Node a was cut off from the registry past the takeover time (its beats failed) and starts
    the reminders' pass as it comes back, before its next beat. Node b, looking meanwhile, must not
    take a for dead, end its lock's connection and run the pass a second time beside it. A run of
    node a that was taken for dead and replaced by another start of its name runs nothing."""
    _, registry_a, a, _, _, b = two_nodes

    def fall_behind(name: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE nodes SET heartbeat_at = now() - interval '5 minutes' WHERE name = %s", (name,))
    fall_behind("node-a")
    looked: list[Any] = []

    def work_a() -> str:
        looked.append(b.once("reminders", "9", lambda: "b ran"))  # node b's look, while a runs it
        return "a ran"
    assert a.once("reminders", "9", work_a) == "a ran"
    assert looked == [Skipped("another node runs it now")]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT slot, node = %s, outcome FROM job_runs", (a.instance,)).fetchall() == [
            ("9", True, "done")]

    fall_behind("node-a")  # taken for dead, and node a started again (elsewhere) since
    again = Cluster(registry_a, "node-a", takeover_seconds=60)
    again.join()
    with caplog.at_level(logging.ERROR, logger="gateway.cluster"):
        assert a.once("reminders", "10", lambda: "a ran") == Skipped("this node's run was taken for dead")
    assert f"reminders for 10 not run here: this node's run {a.instance} was taken for dead" in caplog.text
    assert again.once("reminders", "10", lambda: "a ran again") == "a ran again"


def test_a_node_running_other_rules_is_named_by_the_others(two_nodes: tuple[Any, ...], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Node b's rules file differs from node a's (edited on one machine only): a letter it classifies
    is named by node a in an ALERT, once; letters node a classifies itself, by its own rules, are not."""
    _, registry_a, _, _, registry_b, _ = two_nodes
    with open(tmp_path / "b" / "rules.yaml", "a") as rules:
        rules.write("# edited on node b only\n")
    config_a, config_b = (rulebook.load(str(tmp_path / node / "gateway.toml")) for node in ("a", "b"))
    assert config_a.ruleset.version != config_b.ruleset.version

    def register(config: Config, registry: Registry, n: int) -> None:
        spool = Spool(config.spool_dir, config.message_dir)
        spool.enqueue(make_message(n), {"intake": "file"})
        [outcome] = Pipeline(config, spool, registry).process(spool.claim(1))
        assert outcome.result == "registered", outcome
    watch = RulesWatch(registry_a, grace_seconds=0)
    register(config_b, registry_b, 1)  # before node a's first look: not its business
    assert watch.check(config_a.ruleset.version) == set()
    register(config_a, registry_a, 2)
    assert watch.check(config_a.ruleset.version) == set()
    register(config_b, registry_b, 3)
    with caplog.at_level(logging.ERROR, logger="gateway.cluster"):
        assert watch.check(config_a.ruleset.version) == {config_b.ruleset.version}
    assert [r.getMessage() for r in caplog.records if config_b.ruleset.version in r.getMessage()]
    register(config_b, registry_b, 4)
    assert watch.check(config_a.ruleset.version) == set()  # said once


class IdleClient:
    """An IMAP connection that does nothing: the watcher's sync is replaced in these tests."""

    def has_capability(self, _: str) -> bool:
        return False

    def noop(self) -> None:
        pass

    def logout(self) -> None:
        pass


def test_a_reload_hands_a_folder_from_its_old_watcher_to_the_new_without_letting_it_go(
        two_nodes: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    config, registry_a, a, _, _, b = two_nodes

    syncing: list[int] = []

    def slow_sync(self: imap_mod.FolderWatcher, client: Any) -> None:
        syncing.append(id(self))
        time.sleep(2)  # a batch under way

    monkeypatch.setattr(imap_mod, "connect", lambda config, account: IdleClient())
    monkeypatch.setattr(imap_mod.FolderWatcher, "_sync", slow_sync)

    def with_account(poll: float) -> Config:
        account = ImapAccount(name="liaison", host="127.0.0.1", tls="plain", username="u", password_env="X",
                              idle=False, poll_seconds=poll)
        imap = config.model.imap.model_copy(update={"accounts": [account]})
        return dataclasses.replace(config, model=config.model.model_copy(update={"imap": imap}))
    intake = imap_mod.ImapIntake(with_account(0.05), None, ImapLedger(registry_a), cluster=a)  # type: ignore[arg-type]
    intake.start()
    try:
        wait_for(lambda: a.holds("imap:liaison/INBOX"), 10, "node a watching the folder")
        [(_, old)] = intake.watchers.values()
        wait_for(lambda: id(old) in syncing, 10, "a sync under way")
        intake.reload(with_account(5))  # SIGHUP with the account's poll interval changed
        [(_, middle)] = intake.watchers.values()
        intake.reload(with_account(6))  # and again, within the same batch
        [(_, new)] = intake.watchers.values()
        old.join(10)
        middle.join(10)
        assert not old.alive() and not middle.alive() and new.alive()
        wait_for(lambda: id(new) in syncing, 10, "the new watcher syncing")
        assert id(middle) not in syncing
        assert syncing.index(id(new)) > max(n for n, w in enumerate(syncing) if w == id(old))
        assert a.holds("imap:liaison/INBOX")
        assert not b.acquire("imap:liaison/INBOX")
    finally:
        intake.stop(5)


def test_a_folder_taken_over_while_its_watcher_waits_is_not_synced_again_by_it(
        two_nodes: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a, cut off from the registry past the takeover time while it waits for its next poll,
    finds its folder's lease gone when it comes back: it does not sync the folder (fetch, spool,
    move) beside node b, which watches it now."""
    config, registry_a, a, _, _, b = two_nodes
    syncs: list[bool] = []

    def take_over() -> None:
        with registry_a.write() as conn:  # a's lease runs out while it waits, and b takes the folder
            conn.execute(update(Lease).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert b.acquire("imap:liaison/INBOX")

    class Client:
        def has_capability(self, _: str) -> bool:
            return False

        def noop(self) -> None:  # the poll's wait is over: the next sync comes right after this
            if len(syncs) == 1:
                take_over()

        def logout(self) -> None:
            pass

    def sync(self: imap_mod.FolderWatcher, client: Any) -> None:
        syncs.append(b.holds("imap:liaison/INBOX"))

    acquired: list[bool] = []  # node a's attempts to take the folder, each one's outcome
    acquire = a.acquire

    def counted_acquire(name: str) -> bool:
        acquired.append(acquire(name))
        return acquired[-1]

    monkeypatch.setattr(imap_mod, "connect", lambda config, account: Client())
    monkeypatch.setattr(imap_mod.FolderWatcher, "_sync", sync)
    monkeypatch.setattr(a, "acquire", counted_acquire)
    account = ImapAccount(name="liaison", host="127.0.0.1", tls="plain", username="u", password_env="X",
                          idle=False, poll_seconds=0.05)
    imap = config.model.imap.model_copy(update={"accounts": [account]})
    intake = imap_mod.ImapIntake(dataclasses.replace(config, model=config.model.model_copy(update={"imap": imap})),
                                 None, ImapLedger(registry_a), cluster=a)  # type: ignore[arg-type]
    intake.start()
    try:
        # Node a's first try to take the folder back after its poll's wait: a sync of the folder
        # after that wait would have come before it.
        wait_for(lambda: len(acquired) >= 2, 10, "node a looking for the folder's lease again")
        assert acquired == [True, False]
        assert syncs == [False]
        assert not a.holds("imap:liaison/INBOX")
    finally:
        intake.stop(5)


def test_a_folder_taken_over_during_a_long_import_is_let_go_before_its_next_batch(
        two_nodes: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """A first import of many batches: node a's lease runs out in the middle of it (its heartbeat
    could not reach the registry, a fail-over) and node b takes the folder. Node a fetches no
    further batch beside node b."""
    config, registry_a, a, _, _, b = two_nodes
    batches: list[list[int]] = []

    def settle_batch(self: imap_mod.FolderWatcher, client: Any, uidvalidity: int, uids: list[int], *_: Any,
                     **__: Any) -> None:
        batches.append(uids)
        if len(batches) == 1:  # node a's lease runs out while it fetches, and b takes the folder
            with registry_a.write() as conn:
                conn.execute(update(Lease).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
            assert b.acquire("imap:liaison/INBOX")

    monkeypatch.setattr(imap_mod.FolderWatcher, "_settle_batch", settle_batch)
    account = ImapAccount(name="liaison", host="127.0.0.1", tls="plain", username="u", password_env="X")
    imap = config.model.imap.model_copy(update={"accounts": [account], "fetch_batch": 2})
    watcher = imap_mod.FolderWatcher(dataclasses.replace(config, model=config.model.model_copy(update={"imap": imap})),
                                     account, "INBOX", None, ImapLedger(registry_a), cluster=a)  # type: ignore[arg-type]
    assert a.acquire("imap:liaison/INBOX")
    with pytest.raises(imap_mod.LeaseLost):
        watcher._settle_all(None, 7, [1, 2, 3, 4, 5, 6], imap_mod.FolderState(7, 0), backlog=True)  # type: ignore[arg-type]
    assert batches == [[1, 2]]


def test_a_node_stopping_while_a_delivery_runs_on_leaves_that_mail_claimed(two_nodes: tuple[Any, ...]) -> None:
    """A stop that waited for the sender in vain hands back every claim but the mail being sent:
    another node sending it too would deliver it twice. It expires when the claim runs out."""
    _, registry_a, a, _, registry_b, b = two_nodes
    letter_with_mail(registry_a, 2)
    held = registry_a.outbox_due(10)
    assert len(held) == 2
    a.leave(sending=True)
    assert registry_b.outbox_due(10) == []
    with registry_a.write() as conn:  # the claim runs out
        conn.execute(update(OutboxMail).values(lease_until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert len(registry_b.outbox_due(10)) == 2
    b.leave()  # an ordinary stop hands them back at once
    assert len(registry_a.outbox_due(10)) == 2


def test_two_nodes_of_one_name_starting_at_once_are_told_so(tmp_path: Path, pg_url: str) -> None:
    """Neither sees the other's row when it looks (not yet committed); the second to insert it is
    refused with the name's conflict, not a database error."""
    _, registry = configured(tmp_path, "127.0.0.1:9", pg_url)
    try:
        first = psycopg.connect(pg_url)
        first.execute("INSERT INTO nodes (name, instance, host, pid, started_at, heartbeat_at) "
                      "VALUES ('twin', 'twin#1', 'h', 1, now(), now())")  # not committed yet
        refused: list[BaseException] = []

        def second() -> None:
            try:
                Cluster(registry, "twin").join()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                refused.append(exc)
        thread = threading.Thread(target=second)
        thread.start()
        with psycopg.connect(pg_url, autocommit=True) as watch:
            wait_for(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                     .fetchone() == (1,), 10, "the second insert waiting for the first")
        first.commit()
        first.close()
        thread.join(10)
        assert [type(e) for e in refused] == [NodeConflict]
        assert "another node named 'twin' started at the same moment" in str(refused[0])
    finally:
        registry.close()


def test_a_node_restarted_with_its_earlier_pid_joins_at_once(tmp_path: Path, pg_url: str) -> None:
    """A container started again gives its node the same small pid as its run before, which beat
    a moment ago: that pid is alive (it is this process), but it is another process than the one
    recorded, so the node joins at once and takes back what its earlier run held. The run that is
    still this very process is refused."""
    _, registry = configured(tmp_path, "127.0.0.1:9", pg_url)
    try:
        boot, _, started = str(leases_mod.process_identity(os.getpid())).partition("/")
        assert boot and started.isdigit()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO nodes (name, instance, host, pid, process, started_at, heartbeat_at) "
                         "VALUES ('restarted', 'restarted#before', %s, %s, %s, now(), now()), "
                         "('running', 'running#now', %s, %s, %s, now(), now())",
                         (socket.gethostname(), os.getpid(), f"{boot}/{int(started) - 100}",
                          socket.gethostname(), os.getpid(), f"{boot}/{started}"))
            conn.execute("INSERT INTO leases (name, holder, acquired_at, expires_at) "
                         "VALUES ('imap:liaison/INBOX', 'restarted#before', now(), now() + interval '1 minute')")
        node = Cluster(registry, "restarted")
        assert node.join() == 1  # the folder its earlier run held, let go at once
        assert node.acquire("imap:liaison/INBOX")
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT process FROM nodes WHERE name = 'restarted'").fetchone() == (
                f"{boot}/{started}",)
        with pytest.raises(NodeConflict, match="another node named 'running' is alive"):
            Cluster(registry, "running").join()
    finally:
        registry.close()


def test_nodes_given_other_settings_that_must_agree_are_named_in_an_alert(
        two_nodes: tuple[Any, ...], caplog: pytest.LogCaptureFixture) -> None:
    """Node b was given another takeover time and another department than node a: each names the
    other in an ALERT, with those settings, once; settings that may differ (the relay, the state
    directory) are not named. When b agrees again, nothing more is said."""
    config_a, _, a, config_b, _, b = two_nodes
    assert config_a.state_dir != config_b.state_dir
    departments = [*config_b.model.departments]
    departments[0] = departments[0].model_copy(update={"owners": ["someone.else@example.org"]})
    other = config_b.model.model_copy(update={
        "departments": departments,
        "cluster": config_b.model.cluster.model_copy(update={"takeover_seconds": 120.0})})
    watch_a, watch_b = SettingsWatch(a), SettingsWatch(b)
    caplog.set_level(logging.ERROR, logger="gateway.cluster")
    assert watch_a.check(shared_settings(config_a.model)) == {}  # node b has not said yet
    assert watch_b.check(shared_settings(other)) == {"node-a": ["cluster", "departments"]}
    assert watch_a.check(shared_settings(config_a.model)) == {"node-b": ["cluster", "departments"]}
    assert [r.getMessage() for r in caplog.records] == [
        "ALERT cluster: node node-a runs with other cluster, departments than this node (node-b): give every "
        "node sharing the registry the same values",
        "ALERT cluster: node node-b runs with other cluster, departments than this node (node-a): give every "
        "node sharing the registry the same values"]
    caplog.clear()
    assert watch_a.check(shared_settings(config_a.model)) == {}  # said once
    assert watch_b.check(shared_settings(config_b.model)) == {}
    assert watch_a.check(shared_settings(config_a.model)) == {}
    assert a.compare_settings(shared_settings(config_a.model)) == {}
    assert caplog.records == []
    b.leave()  # a stopped node is not compared
    assert a.compare_settings(shared_settings(other)) == {}


def test_nodes_given_other_intake_limits_are_named_in_an_alert(
        two_nodes: tuple[Any, ...], caplog: pytest.LogCaptureFixture) -> None:
    """Over [imap] max_message_bytes a message is registered from its headers only, and [normalise]
    bounds how much of one is examined: a node given other values makes another letter of the same
    message from a folder any node may watch, and is named. Its SMTP listener's limit is its own."""
    config_a, _, a, config_b, _, b = two_nodes
    other = config_b.model.model_copy(update={
        "imap": config_b.model.imap.model_copy(update={"max_message_bytes": 1024 * 1024}),
        "normalise": config_b.model.normalise.model_copy(update={"max_parts": 50}),
        "smtp": config_b.model.smtp.model_copy(update={"max_message_bytes": 1024 * 1024})})
    watch_a, watch_b = SettingsWatch(a), SettingsWatch(b)
    caplog.set_level(logging.ERROR, logger="gateway.cluster")
    assert watch_a.check(shared_settings(config_a.model)) == {}
    assert watch_b.check(shared_settings(other)) == {"node-a": ["imap.max_message_bytes", "normalise"]}
    assert watch_a.check(shared_settings(config_a.model)) == {"node-b": ["imap.max_message_bytes", "normalise"]}
    assert caplog.records[-1].getMessage() == (
        "ALERT cluster: node node-b runs with other imap.max_message_bytes, normalise than this node (node-a): "
        "give every node sharing the registry the same values")


def test_a_registry_turned_read_only_keeps_items_spooled_and_is_left_once_writable(tmp_path: Path,
                                                                                   pg_url: str) -> None:
    """After a fail-over the name the nodes use may still lead to the old primary, now a standby:
    it answers, but refuses every write. That is the registry being away, not the item's fault:
    the item waits uncounted. And the connection to the standby is not kept: once the name leads to
    a primary again, the next attempt registers the item."""
    _, registry = configured(tmp_path, "127.0.0.1:9", pg_url)
    config = rulebook.load(str(tmp_path / "gateway.toml"))
    spool = Spool(config.spool_dir, config.message_dir)
    database = pg_url.rpartition("/")[2]
    admin = pg_url.rpartition("/")[0] + "/postgres"

    def read_only(on: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {"on" if on else "off"}')
    try:
        pipeline = Pipeline(config, spool, registry)
        spool.enqueue(make_message(1), {"intake": "file"})
        read_only(True)
        registry.engine.dispose()  # every connection from now on reaches a server that refuses writes
        [outcome] = pipeline.process(spool.claim(1))
        assert outcome.result == "released", outcome
        assert [name.rpartition(".")[2] for name in spool.pending()] == ["0"]  # no attempt counted
        read_only(False)  # the primary again; no connection is thrown away by hand
        [outcome] = pipeline.process(spool.claim(1))
        assert outcome.result == "registered", outcome
        assert spool.quarantined() == []
    finally:
        read_only(False)
        registry.close()


def test_nodes_given_other_imap_accounts_are_named_but_not_for_their_own_paths(
        two_nodes: tuple[Any, ...], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every node watches the same accounts' folders by turns: one that moves mail elsewhere, or
    reads another user's mailbox under the same account name, is named in an ALERT. The password
    file, the CA file and the polling are each node's own and not compared."""
    config_a, _, a, config_b, _, b = two_nodes

    def with_account(config: Config, **values: Any) -> Any:
        account = ImapAccount(**{"name": "liaison", "host": "imap.example.org", "username": "liaison",
                                 "folders": ["INBOX", "Partners"], "after": "move", "move_to": "Done",
                                 **values})
        return config.model.model_copy(update={"imap": config.model.imap.model_copy(update={"accounts": [account]})})
    here = with_account(config_a, password_file=tmp_path / "a.pass")
    alike = with_account(config_b, password_file=tmp_path / "elsewhere" / "imap.pass", poll_seconds=10,
                         tls_ca_file=tmp_path / "ca.pem", folders=["Partners", "INBOX"])
    watch_a, watch_b = SettingsWatch(a), SettingsWatch(b)
    caplog.set_level(logging.ERROR, logger="gateway.cluster")
    watch_a.check(shared_settings(here))
    assert watch_b.check(shared_settings(alike)) == {}
    other = with_account(config_b, password_env="IMAP_PASSWORD", move_to="Archive")
    assert watch_b.check(shared_settings(other)) == {"node-a": ["imap accounts"]}
    assert watch_a.check(shared_settings(here)) == {"node-b": ["imap accounts"]}
    assert ("ALERT cluster: node node-b runs with other imap accounts than this node (node-a): give every node "
            "sharing the registry the same values") in caplog.text
    assert watch_b.check(shared_settings(with_account(config_b, password_env="X", username="someone"))) == {}
    assert watch_a.check(shared_settings(here)) == {}  # still named for the accounts: said once


def test_a_run_taken_for_dead_whose_name_started_again_claims_and_renews_nothing(
        two_nodes: tuple[Any, ...], tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Node a is cut off from the registry past the takeover time (a network cut, a frozen VM),
    taken for dead, and its name started again elsewhere. Back, the old run's next beat renews
    nothing it holds and tells the node to stop; it takes no folder, mail or OCR job beside the new
    run, and sends none of the mail it still holds."""
    _, registry_a, a, _, _, _ = two_nodes
    letter_with_mail(registry_a, 2)
    assert a.acquire("imap:liaison/INBOX")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET heartbeat_at = now() - interval '5 minutes' WHERE name = 'node-a'")
    _, registry_again = configured(tmp_path / "again", "127.0.0.1:9", pg_url)
    try:
        again = Cluster(registry_again, "node-a", takeover_seconds=60)
        assert again.join() == 1  # the folder the old run held
        [held] = registry_a.outbox_due(1)  # the old run, back before its next beat
        with psycopg.connect(pg_url, autocommit=True) as conn:  # its claim about to run out
            conn.execute("UPDATE outbox SET lease_until = now() - interval '1 second' WHERE id = %s", (held.id,))
        caplog.set_level(logging.ERROR, logger="gateway.cluster")
        a.beat()
        assert len(registry_again.outbox_due(10)) == 2  # the old run's claim was not renewed
        assert f"ALERT cluster: this node's run {a.instance} was taken for dead and its record replaced by " \
               f"{again.instance}" in caplog.text
        stopped: list[bool] = []
        a.on_displaced(lambda: stopped.append(True))
        assert stopped == [True]
        assert not a.acquire("imap:liaison/Partners") and not a.holds("imap:liaison/INBOX")
        assert registry_a.outbox_due(10) == [] and registry_a.ocr_jobs(10) == []
        assert not registry_a.outbox_still_mine(held.id)
        assert again.acquire("imap:liaison/INBOX") and again.acquire("imap:liaison/Partners")
    finally:
        registry_again.close()


def test_a_folder_whose_watcher_outlasts_the_stops_wait_is_not_handed_over(
        two_nodes: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """A node stops while its watcher is in the middle of a batch that outlasts the stop's wait (a
    slow server): the stop ends on time, and the node hands back what it holds, but not that
    folder, which the watcher may still act on until the process ends: another node syncing it at
    once would copy its messages into move_to a second time. The folder's lease expires instead."""
    config, registry_a, a, _, _, b = two_nodes
    syncing, release = threading.Event(), threading.Event()

    def slow_sync(self: imap_mod.FolderWatcher, client: Any) -> None:
        syncing.set()
        release.wait(30)  # a batch under way

    monkeypatch.setattr(imap_mod, "connect", lambda config, account: IdleClient())
    monkeypatch.setattr(imap_mod.FolderWatcher, "_sync", slow_sync)
    account = ImapAccount(name="liaison", host="127.0.0.1", tls="plain", username="u", password_env="X",
                          idle=False, poll_seconds=0.05, folders=["INBOX", "Partners"])
    imap = config.model.imap.model_copy(update={"accounts": [account]})
    intake = imap_mod.ImapIntake(dataclasses.replace(config, model=config.model.model_copy(update={"imap": imap})),
                                 None, ImapLedger(registry_a), cluster=a)  # type: ignore[arg-type]
    intake.start()
    try:
        wait_for(syncing.is_set, 10, "a batch under way")
        started = time.monotonic()
        intake.stop(0.5)
        assert time.monotonic() - started < 2
        a.leave()
        assert not b.acquire("imap:liaison/INBOX") and not b.acquire("imap:liaison/Partners")
        with registry_a.write() as conn:  # its lease runs out
            conn.execute(update(Lease).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert b.acquire("imap:liaison/INBOX")
    finally:
        release.set()
        intake.stop(5)


def test_a_registry_that_accepts_and_never_answers_does_not_hold_a_caller_for_ever(pg_url: str) -> None:
    """A registry host that hangs (a stuck proxy in front of PostgreSQL) accepts the connection
    and never answers: a registry call gives up within the connection's time limit, as with a
    registry that refuses, instead of holding its caller (a heartbeat, a stop) for ever."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(hung.accept()[0]), daemon=True).start()
    url = pg_url.replace(pg_url.partition("@")[2].partition("/")[0], f"127.0.0.1:{hung.getsockname()[1]}")
    registry = Registry(url)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            with registry.read() as conn:
                conn.execute(select(1))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)
    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "the registry call still waits"
        assert [type(e) for e in outcome] == [RegistryUnavailable]
    finally:
        registry.close()
        for conn in accepted:
            conn.close()
        hung.close()


def test_a_lock_held_by_a_frozen_session_is_waited_for_only_so_long(pg_url: str) -> None:
    """A node frozen inside a transaction (a paused machine keeps its connection open) holds its
    locks: another's write waits for them at most the lock timeout, a minute unless the URL says
    otherwise, and then fails as the registry being away (the item is kept and tried again)."""
    registry = Registry(pg_url)
    try:
        registry.upgrade()
        with registry.read() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1min"
    finally:
        registry.close()
    registry = Registry(f"{pg_url}?options=-c%20lock_timeout%3D1500")
    frozen = psycopg.connect(pg_url)
    try:
        frozen.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")  # and then nothing, inside it
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="lock timeout"):
            with registry.write() as conn:
                conn.execute(update(OutboxMail).values(attempts=0))
        assert time.monotonic() - started < 30  # not for as long as the other stays frozen
    finally:
        frozen.close()
        registry.close()
