"""`gateway run`: readiness, events, quarantine, reload, and the registry going away."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import zmq

from conftest import Gateway, Notify, PostgresServer, lane_helpers, make_message, wait_for, write_messages
from test_pipeline import start_and_wait_ready, stop

from gateway.daemon.events import DaemonLink
from gateway.spool import Spool




def test_ready_status_watchdog_and_graceful_stop(gateway: Gateway, notify: Notify) -> None:
    """READY=1 with a STATUS in words, watchdog pings when WatchdogSec is set, and SIGTERM exits 0."""
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    seen = notify.wait_for("READY=1")
    assert any(m.startswith("STATUS=starting") for m in seen)
    ready = seen[-1].split("\n")
    assert "STATUS=ready: 0 waiting, 0 quarantined" in ready
    notify.wait_for("WATCHDOG=1")
    proc.send_signal(signal.SIGTERM)
    assert any("STOPPING=1" in m for m in notify.wait_for("STOPPING=1"))
    out = stop(proc)
    assert "stopped: nothing processed" in out


def test_second_daemon_on_the_same_state_is_refused(gateway: Gateway, notify: Notify) -> None:
    """Only one daemon per state directory; the second says which pid holds it."""
    first = start_and_wait_ready(gateway, notify)
    try:
        second = gateway.run("run", check=False, timeout=60)
        assert second.returncode == 1
        assert f"another gateway daemon (pid {first.pid}) runs on {gateway.state}" in second.stderr
    finally:
        stop(first)


def test_events_are_published_for_work_done_by_other_processes(gateway: Gateway, notify: Notify,
                                                                 tmp_path: Path) -> None:
    """A subscriber sees letter.registered for a letter ingested by the CLI while the daemon runs."""
    daemon = start_and_wait_ready(gateway, notify)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"letter.")
    sub.setsockopt(zmq.RCVTIMEO, 20000)
    sub.connect(f"ipc://{gateway.state}/run/events.sock")
    try:
        msg = tmp_path / "a.eml"
        # Subscriptions take a moment to reach the publisher: keep sending until one arrives.
        frames = None
        for n in range(20):
            msg.write_bytes(make_message(n))
            gateway.run("ingest", str(msg))
            try:
                frames = sub.recv_multipart()
                break
            except zmq.Again:
                continue
        assert frames is not None
        body = json.loads(frames[1])
        assert frames[0] == b"letter.registered"
        assert body["number"].startswith("2026-") and body["status"] == "routed" and body["channel"] == "email"
    finally:
        sub.close(0)
        context.term()
        stop(daemon)


def spool_elsewhere(gateway: Gateway, raw: bytes, meta: dict[str, str], what: str) -> None:
    """An item put in the spool by another process, the daemon woken through ZeroMQ, and its letter
    waited for (`what` names it in a timeout)."""
    spool = Spool(gateway.state / "spool", gateway.state / "messages")
    spool.enqueue(raw, meta)
    link = DaemonLink(f"ipc://{gateway.state}/run/wakeup.sock")
    link.wake()
    link.close()
    wait_for(lambda: gateway.list_json(), 20, what)


def test_daemon_processes_items_spooled_elsewhere_when_woken(gateway: Gateway, notify: Notify) -> None:
    """An item put in the spool by another process is registered after a ZeroMQ wake-up."""
    daemon = start_and_wait_ready(gateway, notify)
    try:
        spool_elsewhere(gateway, make_message(7), {"intake": "file", "channel": "email"},
                        "the daemon to register the item")
        assert gateway.list_json()[0]["subject"] == "Letter 7"
    finally:
        stop(daemon)


def registered_subjects(gateway: Gateway) -> Counter[str]:
    """How many letters the registry holds of each subject (read from it directly: thousands)."""
    with sqlite3.connect(gateway.state / "registry.sqlite3") as conn:
        return Counter(dict(conn.execute("SELECT subject, count(*) FROM letters GROUP BY subject").fetchall()))


def spool_backlog(gateway: Gateway, count: int, first: int = 0) -> set[str]:
    """`count` items waiting in the spool, as a first IMAP sync leaves them: their subjects (from
    "backlog {first}" on)."""
    spool = Spool(gateway.state / "spool", gateway.state / "messages")
    items = []
    for n in range(first, first + count):
        writer = spool.writer({"intake": "file", "channel": "email"})
        writer.write(make_message(n, subject=f"backlog {n}"))
        items.append(writer.commit(claim=True, durable=False))
    spool.sync()
    spool.release_all(items)  # into new/, with one sync
    return {f"backlog {n}" for n in range(first, first + count)}


def test_a_backlog_is_registered_by_two_helpers_and_one_killed_costs_no_letter(gateway: Gateway,
                                                                              notify: Notify) -> None:
    """The spool workers share the backlog between two helper processes ([spool] registrars = 2,
    the default). The second lane's helper, started by its first item, is killed mid-load: its
    batch is registered by the daemon, nothing is lost or registered twice. The next backlog
    starts a new helper in that lane, which stops once it has been idle for a while."""
    subjects = spool_backlog(gateway, 3000)
    gateway.config.write_text(gateway.config.read_text().replace(
        "[spool]", "[spool]\nbatch_size = 8\nlarge_item_idle_seconds = 3", 1))
    daemon = start_and_wait_ready(gateway, notify)
    try:
        started = wait_for(lambda: re.search(r"registrar helper for spool lane 2 started \(pid (\d+)\)",
                                             daemon.output()), 60, "the second lane's helper")
        second = int(started.group(1))  # type: ignore[attr-defined]
        assert lane_helpers(daemon.pid, "spool-2") == [second]
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: sum(registered_subjects(gateway).values()) >= len(subjects), 120, "the whole backlog")
        assert registered_subjects(gateway) == Counter(dict.fromkeys(subjects, 1))
        wait_for(lambda: not gateway.spool_files("new") and not gateway.spool_files("work"), 30, "an empty spool")
        time.sleep(5)  # a lane starts a helper again only five seconds after one failed
        subjects |= spool_backlog(gateway, 400, first=3000)
        [again] = wait_for(lambda: [pid for pid in lane_helpers(daemon.pid, "spool-2") if pid != second], 60,
                           "a new helper in the second lane")  # type: ignore[misc]
        wait_for(lambda: sum(registered_subjects(gateway).values()) >= len(subjects), 120, "the next backlog")
        assert registered_subjects(gateway) == Counter(dict.fromkeys(subjects, 1))
        wait_for(lambda: not lane_helpers(daemon.pid, "spool-2"), 30, "the second lane's helper to stop, idle")
        # A letter that comes alone is no backlog: the first lane's helper, always running, takes it.
        started_before = daemon.output().count("registrar helper for spool lane 2 started")
        subjects |= spool_backlog(gateway, 1, first=3400)
        wait_for(lambda: sum(registered_subjects(gateway).values()) >= len(subjects), 60, "the lone letter")
        assert lane_helpers(daemon.pid, "spool-2") == []
    finally:
        log = stop(daemon)
    assert f"registrar helper for spool lane 2 (pid {second}) failed" in log
    assert f"registrar helper for spool lane 2 (pid {again}) stopped: idle" in log
    assert log.count("registrar helper for spool lane 2 started") == started_before
    assert gateway.spool_files("quarantine") == []


def test_helpers_of_both_lanes_dying_after_their_commit_cost_no_letter(gateway: Gateway, notify: Notify) -> None:
    """Every helper dies after its batch is committed and moved into the message store, before it
    answers: each lane's daemon thread finds the items gone from work/ and answers for them."""
    subjects = spool_backlog(gateway, 40)
    gateway.config.write_text(gateway.config.read_text().replace("[spool]", "[spool]\nbatch_size = 4", 1))
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path), GATEWAY_CRASH_AT="registrar-helper-before-answer")
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: sum(registered_subjects(gateway).values()) >= len(subjects), 120, "the whole backlog")
        assert registered_subjects(gateway) == Counter(dict.fromkeys(subjects, 1))
        wait_for(lambda: not gateway.spool_files("new") and not gateway.spool_files("work"), 30, "an empty spool")
    finally:
        log = stop(daemon)
    assert re.search(r"registrar helper \(pid \d+\) failed \(EOFError\)", log)
    died = re.findall(r"registrar helper for spool lane 2 started \(pid (\d+)\)", log)
    assert died and all(f"registrar helper for spool lane 2 (pid {pid}) failed (EOFError)" in log for pid in died)
    assert "unexpected error" not in log and gateway.spool_files("quarantine") == []


def test_poison_item_is_quarantined_without_blocking_others_and_can_be_retried(
        gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """An item the registry keeps refusing goes to quarantine after max_attempts; the rest go through; retry works."""
    gateway.run("db", "upgrade")
    db = gateway.state / "registry.sqlite3"
    with sqlite3.connect(db) as conn:  # a registry that refuses one letter, as a broken constraint would
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON letters WHEN NEW.subject = 'poison' "
                     "BEGIN SELECT RAISE(ABORT, 'refused by the registry'); END")
    spool = Spool(gateway.state / "spool", gateway.state / "messages")
    spool.enqueue(make_message(1, subject="poison"), {"intake": "file"})
    for n in range(2, 6):
        spool.enqueue(make_message(n), {"intake": "file"})
    gateway.config.write_text(gateway.config.read_text().replace("[spool]", "[spool]\nbatch_size = 8"))
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: len(gateway.list_json()) == 4, 30, "the four good letters")
        # Backoff is 5 s, 10 s: give the third attempt time.
        quarantined = wait_for(lambda: json.loads(gateway.run("quarantine", "list", "--json").stdout), 60,
                               "the poison item in quarantine")
        [q] = quarantined
        assert q["attempts"] == 3 and "registration failed" in q["reason"] and q["intake"] == "file"
        shown = json.loads(gateway.run("quarantine", "show", q["id"], "--json").stdout)
        assert len(shown["history"]) == 1
        raw = gateway.run("quarantine", "show", q["id"], "--raw").stdout
        assert "Subject: poison" in raw
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        assert gateway.run("quarantine", "retry", q["id"]).stdout.strip() == f"{q['id']}: back in the spool"
        wait_for(lambda: len(gateway.list_json()) == 5, 20, "the retried letter")
        assert json.loads(gateway.run("quarantine", "list", "--json").stdout) == []
        assert not (gateway.state / "spool" / "quarantine" / f"{q['id']}.reason.json").exists()
    finally:
        out = stop(daemon)
    assert f"item {q['id']} quarantined after 3 attempts" in out
    missing = gateway.run("quarantine", "retry", "nope", check=False)
    assert missing.returncode == 1 and "no quarantined item nope" in missing.stderr
    for command in ("show", "retry"):  # an id no file could be named: refused as unknown, no traceback
        long = gateway.run("quarantine", command, "x" * 300, check=False)
        assert long.returncode == 1 and "Traceback" not in long.stderr and "x" * 300 in long.stderr


def test_sighup_reloads_and_refuses_a_broken_file(gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """A valid change is applied on SIGHUP; a broken file is refused in one log line and the old one stays."""
    daemon = start_and_wait_ready(gateway, notify)
    good = gateway.config.read_text()
    try:
        # A change that applies now (orders@), and one that needs a restart (state_dir).
        gateway.config.write_text(good.replace('addresses = ["sales@example.org"]',
                                               'addresses = ["sales@example.org", "orders@example.org"]')
                                  .replace(str(gateway.state), str(tmp_path / "elsewhere")))
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        gateway.config.write_text(good + "\n[bogus]\n")
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        assert any("reload refused" in m for m in notify.wait_for("READY=1"))
        # The next rescan's STATUS= (every second here) still says so: systemctl status shows it.
        assert wait_for_status(notify, "running: ").endswith("; last reload refused: configuration invalid")
        gateway.config.write_text(good)
        # The daemon still uses the last good configuration (orders@ belongs to business).
        spool_elsewhere(gateway, make_message(1, to="orders@example.org"), {"intake": "file"}, "the letter")
        assert gateway.list_json()[0]["department"] == "business"
    finally:
        out = stop(daemon)
    [reloaded] = [line for line in out.splitlines() if "configuration reloaded from" in line]
    assert "gateway.state_dir" in reloaded and "takes effect at restart" in reloaded
    assert not (tmp_path / "elsewhere" / "registry.sqlite3").exists()
    refused = [line for line in out.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "bogus: unknown key" in refused[0]


def test_a_reload_that_fails_while_put_in_force_ends_with_ready_and_keeps_the_old_configuration(
        gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """A valid file whose putting in force fails part-way (here the web register refuses an English
    default): systemd still hears READY=1 after RELOADING=1, with a STATUS= naming the failure; the
    parts that took the new configuration go back to the running one, and the reload is recorded as
    refused (`gateway status`) until one is taken."""
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    wrapper = tmp_path / "failing_reload.py"
    wrapper.write_text(textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        from gateway.web import server

        taken = server.WebServer.reload

        def reload(self, config):
            if config.model.web.language == "en":
                raise RuntimeError("the web register cannot take it")
            taken(self, config)

        server.WebServer.reload = reload
        sys.argv = ["gateway", "--config", {str(gateway.config)!r}, "run"]
        runpy.run_module("gateway", run_name="__main__", alter_sys=True)
    """))
    log = tmp_path / "daemon.log"
    gateway.run("db", "upgrade")
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, str(wrapper)], stdout=out, stderr=subprocess.STDOUT,
                                  env=gateway.env(NOTIFY_SOCKET=str(notify.path)), cwd=ROOT)

    def signin_lang() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.web_port}/signin", timeout=10) as answer:
            found = re.search(r'<html lang="([^"]+)"', answer.read().decode())
        assert found
        return found.group(1)

    good = gateway.config.read_text()
    try:
        notify.wait_for("READY=1")
        # A change the SMTP listener and the pipeline take before the web register fails (orders@).
        gateway.config.write_text(good.replace('addresses = ["sales@example.org"]',
                                               'addresses = ["sales@example.org", "orders@example.org"]')
                                  .replace("[web]\n", '[web]\nlanguage = "en"\n'))
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        ready = ready_within(notify, 30)
        assert ("STATUS=running (reload refused: applying it failed: RuntimeError: the web register cannot "
                "take it)") in ready, ready
        assert wait_for_status(notify, "running: ").endswith(
            "; last reload refused: applying it failed: RuntimeError: the web register cannot take it")
        assert signin_lang().startswith("zh")
        status = gateway.run("status", "--json", check=False)
        assert json.loads(status.stdout)["daemon"]["configuration"]["reload"]["refused"] == [
            "applying it failed: RuntimeError: the web register cannot take it"], status.stdout
        # The pipeline went back to the running configuration: orders@ is nobody's, so triage's.
        spool_elsewhere(gateway, make_message(1, to="orders@example.org"), {"intake": "file"}, "the letter")
        assert gateway.list_json()[0]["department"] == "general-office"
        # A reload that can be put in force is taken, and clears the refusal.
        gateway.config.write_text(good)
        daemon.send_signal(signal.SIGHUP)
        assert "STATUS=running (configuration reloaded)" in ready_within(notify, 30)
        assert json.loads(gateway.run("status", "--json").stdout)["attention"] == []
    finally:
        gateway.config.write_text(good)
        if daemon.poll() is None:
            daemon.terminate()
        daemon.wait(60)
    output = log.read_text()
    assert daemon.returncode == 0, output
    assert "reload refused, previous configuration stays in force: applying it failed" in output


def ready_within(notify: Notify, seconds: float) -> list[str]:
    """The fields of the next message with READY=1, failing when none comes in time (the rescan's
    STATUS= every second keeps the socket talking meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fields = notify.sock.recv(4096).decode().split("\n")
        if "READY=1" in fields:
            return fields
    raise AssertionError(f"no READY=1 within {seconds} s")


def wait_for_status(notify: Notify, start: str) -> str:
    """The next STATUS= the daemon sends that starts with `start`."""
    while True:
        for field in notify.sock.recv(4096).decode().split("\n"):
            if field.startswith(f"STATUS={start}"):
                return field.removeprefix("STATUS=")


def test_status_and_commands_say_what_the_running_daemon_does_not_run_with(
        gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """The commands read the file themselves: while the daemon runs with other values of settings
    only a restart changes ([storage] here, the timezone), each command that opens the register
    says so on stderr and `gateway status` lists it as needing attention; a refused reload is
    there too, with the file's errors, until a reload is taken."""
    gateway.run("db", "upgrade")
    daemon = start_and_wait_ready(gateway, notify)
    good = gateway.config.read_text()
    elsewhere = good.replace('timezone = "Asia/Shanghai"', 'timezone = "America/New_York"').replace(
        "[logging]\n", f'[storage]\narchive_dir = "{tmp_path / "nas" / "archive"}"\n\n[logging]\n')
    try:
        listed = gateway.run("letters", "list")
        assert listed.stderr == ""
        assert gateway.run("status").returncode == 0
        gateway.config.write_text(elsewhere)
        for args in (("letters", "list"), ("quarantine", "list"), ("status",), ("check-config",)):
            done = gateway.run(*args, check=False)
            assert (f"warning: {gateway.config}: gateway.timezone, storage differ from what the running daemon "
                    f"(pid {daemon.pid}) uses: they take effect when it restarts") in done.stderr, (args, done.stderr)
        status = gateway.run("status", "--json", check=False)
        assert status.returncode == 1, status.stderr
        [restart] = json.loads(status.stdout)["attention"]
        assert restart == (f"gateway.timezone, storage differ in {gateway.config} from what the running daemon "
                           "uses: only a restart puts them in force (systemctl restart gateway)")
        daemon.send_signal(signal.SIGHUP)  # taken, but these two still wait for the restart
        notify.wait_for("READY=1")
        assert "gateway.timezone, storage differ" in gateway.run("letters", "list").stderr
        gateway.config.write_text(good + "\n[bogus]\n")
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        gateway.config.write_text(good)
        status = gateway.run("status", "--json", check=False)
        assert status.returncode == 1 and status.stderr == "", status.stderr
        data = json.loads(status.stdout)
        bogus = f"{gateway.config}:{len(good.splitlines()) + 2}: bogus: unknown key"
        assert data["daemon"]["configuration"]["reload"]["refused"] == [bogus]
        [refused] = data["attention"]
        assert refused.startswith("the reload at ") and refused.endswith(
            "was refused; the daemon runs with the configuration it had before (systemctl reload gateway once "
            f"the file is right): {bogus}"), refused
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        status = gateway.run("status", "--json")
        assert json.loads(status.stdout)["attention"] == [] and status.stderr == ""
    finally:
        gateway.config.write_text(good)
        stop(daemon)
    # No daemon: nothing to compare with.
    gateway.config.write_text(elsewhere)
    assert gateway.run("letters", "list").stderr == ""


def test_a_command_leaves_the_running_daemons_message_store_where_it_is(
        tmp_path: Path, notify: Notify) -> None:
    """A shared message store ([storage] messages_dir) moved in the file while the daemon runs: the
    commands that open the spool keep the store the daemon mounted (its originals are there and
    its new letters go there) until the restart, instead of moving the link from under it."""
    first, second = tmp_path / "nas-a" / "messages", tmp_path / "nas-b" / "messages"
    gateway = Gateway(tmp_path, extra=f'\n[storage]\nmessages_dir = "{first}"\n')
    gateway.run("db", "upgrade")
    daemon = start_and_wait_ready(gateway, notify)
    try:
        assert os.readlink(gateway.state / "messages") == str(first)
        gateway.config.write_text(gateway.config.read_text().replace(str(first), str(second)))
        for args in (("quarantine", "list"), ("status",)):
            done = gateway.run(*args, check=False)
            assert "storage differ from what the running daemon" in done.stderr, (args, done.stderr)
        assert os.readlink(gateway.state / "messages") == str(first)
        spool_elsewhere(gateway, make_message(1, to="sales@example.org"), {"intake": "file"}, "the letter")
        raw = gateway.show_json("2026-000001")["raw_path"]
        assert (first / str(raw).removeprefix("messages/")).is_file() and not second.exists()
    finally:
        stop(daemon)


def test_sighup_reaches_the_web_register_and_names_its_listener_as_needing_a_restart(
        gateway: Gateway, notify: Notify) -> None:
    """The web register served by the daemon takes a reload as the rest does (here its default
    language); a new [web] listen address cannot be taken live, and the reload says so."""
    import urllib.request

    from ports import free_port

    def signin_lang() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.web_port}/signin", timeout=10) as answer:
            page = answer.read().decode()
        found = re.search(r'<html lang="([^"]+)"', page)
        assert found, page[:200]
        return found.group(1)

    daemon = start_and_wait_ready(gateway, notify)
    good = gateway.config.read_text()
    try:
        assert signin_lang().startswith("zh")
        gateway.config.write_text(good.replace(f'[web]\nlisten = "127.0.0.1:{gateway.web_port}"',
                                               f'[web]\nlisten = "127.0.0.1:{free_port()}"\nlanguage = "en"'))
        assert 'language = "en"' in gateway.config.read_text()
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        assert signin_lang() == "en"  # still on the address it was started with, in the new language
    finally:
        out = stop(daemon)
    [reloaded] = [line for line in out.splitlines() if "configuration reloaded from" in line]
    assert "web listener" in reloaded and "takes effect at restart" in reloaded, reloaded


def test_after_sighup_what_needs_a_restart_keeps_its_running_value(gateway: Gateway, notify: Notify) -> None:
    """Single sign-on set up in the file and reloaded is not offered on the sign-in page until
    the restart that starts it (its button would lead nowhere), while the page's new language is
    taken at once."""
    import urllib.error
    import urllib.request

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gateway.web_port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    daemon = start_and_wait_ready(gateway, notify)
    good = gateway.config.read_text()
    try:
        gateway.config.write_text(good.replace("[web]\n", '[web]\nlanguage = "en"\n') + (
            '\n[web.oidc]\nissuer = "https://sso.example.org"\nclient_id = "register"\nlabel = "Sign in with SSO"\n'))
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        status, page = get("/signin")
        assert status == 200 and '<html lang="en"' in page, page[:200]
        assert "Sign in with SSO" not in page and "/signin/oidc" not in page
        assert get("/signin/oidc")[0] == 404
    finally:
        gateway.config.write_text(good)
        out = stop(daemon)
    [reloaded] = [line for line in out.splitlines() if "configuration reloaded from" in line]
    assert "single sign-on" in reloaded and "takes effect at restart" in reloaded, reloaded


def test_after_sighup_the_timezone_and_the_storage_folders_keep_their_running_values(
        gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """The timezone is that of the registry's letter numbers and the archive's schedule, both fixed at
    start: a letter registered after a reload that changes it gets its deadline (the end of a working
    day) in the running one. The message store and archive folders stay where the daemon started
    with them, and the reload says all three need a restart."""
    daemon = start_and_wait_ready(gateway, notify)
    good = gateway.config.read_text()
    try:
        assert 'timezone = "Asia/Shanghai"' in good
        gateway.config.write_text(good.replace('timezone = "Asia/Shanghai"', 'timezone = "America/New_York"')
                                  .replace("[logging]\n", f'[storage]\nmessages_dir = "{tmp_path / "nas" / "messages"}"'
                                           f'\narchive_dir = "{tmp_path / "nas" / "archive"}"\n\n[logging]\n'))
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        gateway.config.write_text(good)
        spool_elsewhere(gateway, make_message(1, to="sales@example.org"), {"intake": "file"}, "the letter")
        letter = gateway.show_json("2026-000001")
        deadline = datetime.fromisoformat(str(letter["deadline"])).astimezone(ZoneInfo("Asia/Shanghai"))
        assert deadline.time().isoformat() == "23:59:59", letter["deadline"]
        assert (gateway.state / str(letter["raw_path"])).is_file()
    finally:
        gateway.config.write_text(good)
        out = stop(daemon)
    [reloaded] = [line for line in out.splitlines() if "configuration reloaded from" in line]
    assert "gateway.timezone, storage changed: takes effect at restart" in reloaded, reloaded
    assert not (tmp_path / "nas").exists()


def test_a_reload_keeps_the_running_timezone_and_folders_in_the_configuration_it_puts_in_force(
        gateway: Gateway, tmp_path: Path) -> None:
    """What the daemon hands every part after a reload: the timezone, the message store, the
    archive folder (by [storage] or [archive] folder) and the archive's copies it started with, each
    named as changed."""
    from gateway.daemon.daemon import _running
    from gateway.stages import rulebook

    running = rulebook.load(str(gateway.config))
    changed = tmp_path / "changed.toml"
    for edit, names in (
            (f'[storage]\nmessages_dir = "{tmp_path / "nas" / "messages"}"\n'
             f'archive_dir = "{tmp_path / "nas" / "archive"}"\n', ["storage"]),
            (f'[archive]\nfolder = "{tmp_path / "other-archive"}"\n', ["archive folder"]),
            (f'[archive]\ncopies = ["{tmp_path / "second-disk"}"]\n', ["archive copies"])):
        changed.write_text(gateway.config.read_text().replace('timezone = "Asia/Shanghai"',
                                                              'timezone = "America/New_York"')
                           .replace("[logging]\n", f"{edit}\n[logging]\n"))
        config, restart_needed = _running(running, rulebook.load(str(changed)))
        assert restart_needed == ["gateway.timezone", *names]
        assert config.model.gateway.timezone == "Asia/Shanghai"
        assert config.calendar.tz == ZoneInfo("Asia/Shanghai")
        assert config.archive_dir == running.archive_dir == gateway.state / "archive"
        assert config.shared_message_dir is None and config.model.storage == running.model.storage
        assert config.archive_copies == running.archive_copies == []


def test_registry_down_keeps_items_spooled_until_it_returns(tmp_path: Path, notify: Notify) -> None:
    """With PostgreSQL stopped, ingest spools and exits 75; the daemon registers the item once it is back."""
    server = PostgresServer()
    server.start()
    try:
        gw = Gateway(tmp_path, registry_url=server.create_database())
        gw.run("db", "upgrade")
        server.stop()
        msg = tmp_path / "a.eml"
        msg.write_bytes(make_message(1))
        proc = gw.run("ingest", str(msg), check=False)
        assert proc.returncode == 75, proc.stderr
        assert "registry" in proc.stderr
        # Refused before the spool took it: the user has the file and nothing was lost.
        daemon = gw.start(NOTIFY_SOCKET=str(notify.path))
        try:
            seen = notify.wait_for("STATUS=starting: opening the registry")
            assert seen
            status = notify.sock.recv(4096).decode()
            assert status.startswith("STATUS=waiting for the registry")
            server.start()
            notify.wait_for("READY=1")
            proc = gw.run("ingest", str(msg))
            assert "registered as 2026-000001" in proc.stdout
            # Now take the database away while the daemon runs, with an item waiting.
            server.stop()
            spool = Spool(gw.state / "spool", gw.state / "messages")
            spool.enqueue(make_message(2), {"intake": "file"})
            link = DaemonLink(f"ipc://{gw.state}/run/wakeup.sock")
            link.wake()
            link.close()
            # The worker tries, finds no registry, and puts the item back without counting it. (The
            # spool alone cannot tell: before the worker claims it, the item is in `new` too.)
            wait_for(lambda: "registry unavailable, 1 item(s) stay spooled" in daemon.output(), 20, "a failed try")
            wait_for(lambda: gw.spool_files("new") and not gw.spool_files("work"), 20, "the item put back")
            server.start()
            wait_for(lambda: len(gw.list_json()) == 2, 60, "the spooled item to be registered")
            assert gw.spool_files("new") == gw.spool_files("work") == []
            assert json.loads(gw.run("quarantine", "list", "--json").stdout) == []
        finally:
            stop(daemon)
    finally:
        server.destroy()


# Loaded by the daemon's interpreter at its start (PYTHONPATH): each spool rescan after the start's
# recovery takes as long as RESCAN_SLEEP, and writes down when it starts and when it ends.
SLOW_RESCAN = '''
import os, time
import gateway.spool as spool

_recover = spool.Spool.recover
_calls = []


def recover(self, *args, **kwargs):
    _calls.append(1)
    if len(_calls) == 1:  # the recovery before the daemon is ready
        return _recover(self, *args, **kwargs)
    with open(os.environ["RESCAN_LOG"], "a") as log:
        log.write("start\\n")
    time.sleep(float(os.environ["RESCAN_SLEEP"]))
    try:
        return _recover(self, *args, **kwargs)
    finally:
        with open(os.environ["RESCAN_LOG"], "a") as log:
            log.write("end\\n")


spool.Spool.recover = recover
'''


@pytest.mark.parametrize("grace, sleep", [(20, 2), (1, 6)], ids=["within-grace", "past-grace"])
def test_a_stop_during_a_spool_rescan_waits_for_it_within_the_grace(tmp_path: Path, notify: Notify,
                                                                   grace: float, sleep: float) -> None:
    """A rescan running when the daemon is told to stop is waited for, up to the grace; past it the rescan
    is cut short with a warning. Neither is an error with a traceback, and the daemon exits 0."""
    gw = Gateway(tmp_path, extra=f"\n[daemon]\nshutdown_grace_seconds = {grace}\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_RESCAN)
    rescans = tmp_path / "rescans.log"
    daemon = gw.start(NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(site), RESCAN_LOG=str(rescans),
                      RESCAN_SLEEP=str(sleep))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: rescans.exists() and rescans.read_text().endswith("start\n"), 30, "a rescan under way")
        daemon.send_signal(signal.SIGTERM)
        out = stop(daemon)
    finally:
        daemon.stop()
    assert "Traceback" not in out and "Error running job" not in out, out[-3000:]
    assert "stopped:" in out
    if grace > sleep:
        assert rescans.read_text().endswith("end\n")  # finished before the daemon went on stopping
        assert "cut short" not in out
    else:
        assert "stopping: spool rescan cut short; it runs again after the next start" in out
        assert "1 scheduled job(s) still running after the grace of 1 s" in out


def slowed_site(tmp_path: Path, code: str) -> Path:
    """A folder whose sitecustomize.py (`code`) a daemon started with it on PYTHONPATH runs first."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    return site


def stopped_while_under_way(gw: Gateway, notify: Notify, site: Path, started: Path, **env: str) -> tuple[str, float]:
    """The daemon started with `site`, sent SIGTERM once its slowed job has written `started`:
    what it logged, and how long it took to stop."""
    daemon = gw.start(NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(site), **env)
    try:
        notify.wait_for("READY=1")
        wait_for(started.exists, 30, f"the job writing {started.name} under way")
        signalled = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        out = stop(daemon)
        return out, time.monotonic() - signalled
    finally:
        daemon.stop()


# Loaded by the daemon's interpreter at its start (PYTHONPATH): each reminder takes REMIND_SLEEP
# seconds to record, and is written down.
SLOW_REMINDERS = '''
import os, time
from gateway.registry import reminders

_remind = reminders.ReminderRecords.remind


def remind(self, letter_id, *args):
    with open(os.environ["REMIND_LOG"], "a") as log:
        log.write(f"{letter_id}\\n")
    time.sleep(float(os.environ["REMIND_SLEEP"]))
    return _remind(self, letter_id, *args)


reminders.ReminderRecords.remind = remind
'''


def test_a_stop_past_the_grace_ends_the_reminders_pass_and_the_next_pass_sends_the_rest(
        tmp_path: Path, notify: Notify) -> None:
    """The reminders' pass still going when the stop's grace is over ends before its next
    reminder; the daemon exits at once, what was sent stays sent, and the next pass sends the
    rest, none twice."""
    gw = Gateway(tmp_path, extra="\n[daemon]\nshutdown_grace_seconds = 1\n\n[reminders]\ncheck_minutes = 60\n")
    (tmp_path / "mail").mkdir()
    letters = 30
    gw.run("ingest", *write_messages(tmp_path / "mail", (make_message(n, to="sales@example.org")
                                                         for n in range(letters))))
    registry = gw.state / "registry.sqlite3"
    with sqlite3.connect(registry) as db:
        # Long overdue, and never acknowledged.
        db.execute("UPDATE letters SET received_at = '2026-01-05 02:00:00.000000', "
                   "deadline = '2026-01-10 09:00:00.000000'")
    sent = tmp_path / "reminders.log"
    out, took = stopped_while_under_way(gw, notify, slowed_site(tmp_path, SLOW_REMINDERS), sent,
                                        REMIND_LOG=str(sent), REMIND_SLEEP="1")  # 30 s for the pass
    assert "Traceback" not in out and "ALERT" not in out and "unexpected error" not in out, out[-3000:]
    assert "stopping: reminders' pass cut short past the grace; the next pass sends the rest" in out
    assert "scheduled job(s) still running" not in out  # it ended by itself
    assert took < 15, f"the stop took {took:.1f} s"  # not the 30 s of the whole pass

    def reminded() -> list[tuple[int, str]]:
        with sqlite3.connect(registry) as db:
            return db.execute("SELECT letter_id, json_extract(details, '$.kind') FROM events "
                              "WHERE action IN ('reminded', 'escalated') ORDER BY letter_id").fetchall()
    before = reminded()
    assert 0 < len(before) < letters
    gw.run("reminders", "run")
    after = reminded()
    assert set(before) < set(after) and len(after) == len(set(after))  # the rest, none twice
    assert {letter for letter, _ in after} == set(range(1, letters + 1))


# Loaded by the daemon's interpreter at its start (PYTHONPATH): the archive takes ARCHIVE_SLEEP
# seconds over each letter it reads, and writes down each one.
SLOW_ARCHIVE = '''
import os, time
from gateway.archive import packer

_sealed = packer.Archiver._sealed


def sealed(self, letter):
    with open(os.environ["ARCHIVE_LOG"], "a") as log:
        log.write("letter\\n")
    time.sleep(float(os.environ["ARCHIVE_SLEEP"]))
    return _sealed(self, letter)


packer.Archiver._sealed = sealed
'''


def test_a_stop_past_the_grace_ends_the_archive_run_and_the_next_start_finishes_it(tmp_path: Path,
                                                                                  notify: Notify) -> None:
    """An archive run still going when the stop's grace is over ends at its next letter, leaves no
    package behind and its run unfinished, and the daemon exits at once instead of waiting for it;
    the next start runs the month's archive again, whole."""
    gw = Gateway(tmp_path, extra="\n[daemon]\nshutdown_grace_seconds = 1\n\n[archive]\nrun_day = 1\nrun_hour = 0\n")
    (tmp_path / "mail").mkdir()
    gw.run("ingest", *write_messages(tmp_path / "mail", (make_message(n) for n in range(40))))
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    month = f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"
    registry = gw.state / "registry.sqlite3"
    with sqlite3.connect(registry) as db:
        # Received last month, and an archive has run on this registry before: last month's is due.
        db.execute(f"UPDATE letters SET received_at = '{month}-15 04:00:00.000000'")
        db.execute("INSERT INTO job_runs (job, slot, node, started_at, finished_at, outcome) VALUES ('archive', "
                   "'2000-01', 'old#0', '2000-02-01 00:00:00.000000', '2000-02-01 00:00:00.000000', 'done')")
    read = tmp_path / "archive.log"
    out, took = stopped_while_under_way(gw, notify, slowed_site(tmp_path, SLOW_ARCHIVE), read,
                                        ARCHIVE_LOG=str(read), ARCHIVE_SLEEP="1")  # 40 s for the month
    assert "Traceback" not in out and "ALERT" not in out, out[-3000:]
    assert f"stopping: archive of {month} cut short past the grace; it runs again after the next start" in out
    assert "scheduled job(s) still running" not in out  # it ended by itself
    assert took < 15, f"the stop took {took:.1f} s"  # not the 40 s of the whole run
    assert len(read.read_text().splitlines()) < 40
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT slot, finished_at, outcome FROM job_runs WHERE job = 'archive'").fetchall() == [
            (month, None, "stopped")]
        assert db.execute("SELECT count(*) FROM letters WHERE archive_number IS NOT NULL").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM archive_packages").fetchone() == (0,)
    month_folder = gw.state / "archive" / month.replace("-", "/")
    assert [p.name for p in month_folder.rglob("*") if p.is_file()] == []  # the package being written is gone

    daemon = gw.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        pattern = rf"archive of {month}: (\d+) package\(s\) written, 40 letter\(s\); \1 verified, 0 failed"
        wait_for(lambda: re.search(pattern, daemon.output()), 60, "the archive run again at the start")
    finally:
        out = stop(daemon)
    assert "Traceback" not in out, out[-3000:]
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT slot, outcome FROM job_runs WHERE job = 'archive'").fetchall() == [(month, "done")]
        assert db.execute("SELECT count(*) FROM letters WHERE archive_number IS NOT NULL").fetchone() == (40,)


def _month_back(months: int) -> str:
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    index = now.year * 12 + now.month - 1 - months
    return f"{index // 12}-{index % 12 + 1:02d}"


def output_until_archived(gw: Gateway, notify: Notify, month: str, *, letters: int) -> str:
    """The daemon's output, from its start until it archived `month` (one package of `letters`)."""
    daemon = gw.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: re.search(rf"archive of {month}: 1 package\(s\) written, {letters} letter\(s\)",
                                   daemon.output()), 60, f"the archive of {month}")
    finally:
        out = stop(daemon)
    return out


def test_the_archive_run_also_packs_letters_left_out_of_earlier_months(tmp_path: Path, notify: Notify) -> None:
    """Last month's run first packs what earlier months still lack, oldest first: a letter entered
    after its month was archived (in a part of its own) and a month no run ever did; a month with
    nothing left is not run, and this month's letters wait for their own run."""
    gw = Gateway(tmp_path, extra="\n[archive]\nrun_day = 1\nrun_hour = 0\n")
    (tmp_path / "mail").mkdir()
    gw.run("ingest", *write_messages(tmp_path / "mail", (make_message(n) for n in range(7))))
    late, never, empty, last = _month_back(4), _month_back(3), _month_back(2), _month_back(1)
    registry = gw.state / "registry.sqlite3"
    with sqlite3.connect(registry) as db:
        for ids, month in (((1, 2), late), ((3,), never), ((4, 5), last), ((6, 7), None)):
            if month is not None:
                db.execute(f"UPDATE letters SET received_at = '{month}-15 04:00:00.000000' "
                           f"WHERE id IN ({', '.join(map(str, ids))})")
        # Letter 2 is entered after its month's run: it is still in this month when the month runs.
        db.execute("UPDATE letters SET received_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 2")
    gw.run("archive", "run", "--month", late)
    with sqlite3.connect(registry) as db:
        db.execute(f"UPDATE letters SET received_at = '{late}-20 04:00:00.000000' WHERE id = 2")
        # An archive ran on this registry before: last month's is due.
        db.execute("INSERT INTO job_runs (job, slot, node, started_at, finished_at, outcome) VALUES ('archive', "
                   f"'{late}', 'old#0', '2000-02-01 00:00:00.000000', '2000-02-01 00:00:00.000000', 'done')")

    out = output_until_archived(gw, notify, last, letters=2)
    assert "Traceback" not in out and "ALERT" not in out, out[-3000:]
    assert re.search(rf"archive of {late}: 1 letter\(s\) left out of its run packed now .* in 1 package\(s\); "
                     r"2 verified, 0 failed", out), out[-3000:]
    assert re.search(rf"archive of {never}: 1 letter\(s\) left out of its run packed now .* in 1 package\(s\)", out)
    assert f"archive of {empty}" not in out
    assert (out.index(f"archive of {late}: 1 letter") < out.index(f"archive of {never}: 1 letter")
            < out.index(f"archive of {last}: 1 package"))
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT month, part, letters FROM archive_packages ORDER BY id").fetchall() == [
            (late, 1, 1), (late, 2, 1), (never, 1, 1), (last, 1, 2)]
        assert db.execute("SELECT id FROM letters WHERE archive_number IS NULL ORDER BY id").fetchall() == [(6,), (7,)]
        assert db.execute("SELECT slot, outcome FROM job_runs WHERE job = 'archive'").fetchall() == [(last, "done")]


def _letters_of_two_months(tmp_path: Path) -> tuple[Gateway, str, str]:
    """Letter 1 received three months ago, letters 2 and 3 last month, and an archive that has run
    on this registry before (last month's is due at the start): (the gateway, the two months)."""
    gw = Gateway(tmp_path, extra="\n[archive]\nrun_day = 1\nrun_hour = 0\n")
    (tmp_path / "mail").mkdir()
    gw.run("ingest", *write_messages(tmp_path / "mail", (make_message(n) for n in range(3))))
    earlier, last = _month_back(3), _month_back(1)
    with sqlite3.connect(gw.state / "registry.sqlite3") as db:
        db.execute(f"UPDATE letters SET received_at = '{earlier}-15 04:00:00.000000' WHERE id = 1")
        db.execute(f"UPDATE letters SET received_at = '{last}-15 04:00:00.000000' WHERE id IN (2, 3)")
        db.execute("INSERT INTO job_runs (job, slot, node, started_at, finished_at, outcome) VALUES ('archive', "
                   "'2000-01', 'old#0', '2000-02-01 00:00:00.000000', '2000-02-01 00:00:00.000000', 'done')")
    return gw, earlier, last


def test_an_earlier_month_that_cannot_be_packed_does_not_hold_up_last_months_archive(tmp_path: Path,
                                                                                     notify: Notify) -> None:
    gw, earlier, last = _letters_of_two_months(tmp_path)
    registry = gw.state / "registry.sqlite3"
    with sqlite3.connect(registry) as db:
        (damaged,) = db.execute("SELECT raw_path FROM letters WHERE id = 1").fetchone()
    original = gw.state / damaged
    original.write_bytes(original.read_bytes()[:-10])  # its seal no longer matches

    out = output_until_archived(gw, notify, last, letters=2)
    assert "Traceback" not in out, out[-3000:]
    assert re.search(rf"ALERT archive of {earlier} \(letters left out of its run\) failed: \S+: its original cannot "
                     "be read", out), out[-3000:]
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT id FROM letters WHERE archive_number IS NULL").fetchall() == [(1,)]
        assert db.execute("SELECT slot, outcome FROM job_runs WHERE job = 'archive'").fetchall() == [(last, "done")]


def test_an_earlier_month_whose_folder_cannot_be_written_does_not_hold_up_last_months_archive(
        tmp_path: Path, notify: Notify) -> None:
    """The earlier month's folder cannot be written (here a file stands in its place; a read-only
    folder does the same): an ALERT for that month, and last month's archive is done all the same."""
    gw, earlier, last = _letters_of_two_months(tmp_path)
    registry = gw.state / "registry.sqlite3"
    year, month = earlier.split("-")
    (gw.state / "archive" / year).mkdir(parents=True, exist_ok=True)
    (gw.state / "archive" / year / month).write_text("not a folder\n")

    out = output_until_archived(gw, notify, last, letters=2)
    assert "Traceback" not in out, out[-3000:]
    assert re.search(rf"ALERT archive of {earlier} \(letters left out of its run\) failed: ", out), out[-3000:]
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT id FROM letters WHERE archive_number IS NULL").fetchall() == [(1,)]
        assert db.execute("SELECT slot, outcome FROM job_runs WHERE job = 'archive'").fetchall() == [(last, "done")]


def test_an_earlier_months_package_left_unverified_is_verified_by_the_next_run(tmp_path: Path, notify: Notify) -> None:
    """A run that packed an earlier month's late letters and stopped before verifying them (killed,
    a power cut, stopped past the grace) leaves a package written and never checked: nothing of
    that month is left to pack, and the next run verifies it all the same."""
    gw, earlier, last = _letters_of_two_months(tmp_path)
    registry = gw.state / "registry.sqlite3"
    with sqlite3.connect(registry) as db:
        db.execute("UPDATE letters SET status = 'closed' WHERE id = 1")
    gw.run("archive", "run", "--month", earlier, "--no-verify")  # as the run that stopped left it

    out = output_until_archived(gw, notify, last, letters=2)
    assert "Traceback" not in out and "ALERT" not in out, out[-3000:]
    with sqlite3.connect(registry) as db:
        assert db.execute("SELECT month, status FROM archive_packages ORDER BY id").fetchall() == [
            (earlier, "verified"), (last, "verified")]
        assert db.execute("SELECT raw_released FROM letters WHERE id = 1").fetchone() == (1,)


def test_a_delivery_to_a_relay_that_never_answers_does_not_hold_the_stop(tmp_path: Path, notify: Notify) -> None:
    """A notification being delivered to a relay that accepts and never answers (its timeout a
    minute) is left to end with the process once the stop's grace is over: the daemon exits
    within systemd's TimeoutStopSec, and the mail, still claimed, is neither sent nor lost."""
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(relay.accept()[0]), daemon=True).start()
    gw = Gateway(tmp_path, extra=f"\n[daemon]\nshutdown_grace_seconds = 1\n\n[outbound]\n"
                                 f"relay = \"127.0.0.1:{relay.getsockname()[1]}\"\ntimeout_seconds = 60\n")
    msg = tmp_path / "a.eml"
    msg.write_bytes(make_message(1, to="sales@example.org"))
    gw.run("ingest", str(msg))
    daemon = gw.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: bool(accepted), 30, "the outbox connecting to the relay")
        signalled = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        out = stop(daemon)
        took = time.monotonic() - signalled
    finally:
        daemon.stop()
        relay.close()
        for connection in accepted:
            connection.close()
    assert took < 15, f"the stop took {took:.1f} s"  # not the delivery's 60 s
    assert "outbox: a delivery is still under way; its mail is left claimed until its claim expires" in out
    assert "Traceback" not in out, out[-3000:]
    with sqlite3.connect(gw.state / "registry.sqlite3") as db:
        statuses = [status for (status,) in db.execute("SELECT status FROM outbox")]
    assert statuses and set(statuses) == {"pending"}, statuses  # the notification and the receipt
