"""Several nodes on one PostgreSQL registry: every piece of work done exactly once.

Three daemons share a registry, a message store and a fax drop folder; SMTP load is spread
across them, two IMAP accounts on Dovecot and faxes come in, one node is SIGKILLed mid-run and
started again. Then every message is one letter, every outbox mail reached the relay once with
its original, every IMAP folder was open on one node at a time, the archive and each fax's
OCR ran once.
"""
from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import textwrap
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from conftest import Daemon, Gateway, make_message, wait_for, write_messages
from dovecot_server import DovecotServer
from fax_samples import ENGLISH, tiff_fax
from smtp_sink import SmtpSink
from test_daemon import SLOW_ARCHIVE, slowed_site

from gateway.registry import schema

pytestmark = pytest.mark.timeout(300)

TAKEOVER = 3


def node_config(name: str, shared: Path, sink: SmtpSink, dovecot: DovecotServer, users: list[str]) -> str:
    today = datetime.now(ZoneInfo("Asia/Shanghai"))
    accounts = "".join(textwrap.dedent(f"""
        [[imap.accounts]]
        name = "{user}"
        host = "127.0.0.1"
        port = {dovecot.port}
        tls = "plain"
        username = "{user}"
        password_file = "{shared / f'{user}.password'}"
        idle = false
        poll_seconds = 0.5
        first_import = "all"
        """) for user in users)
    return textwrap.dedent(f"""
        [node]
        name = "{name}"

        [cluster]
        takeover_seconds = {TAKEOVER}

        [storage]
        messages_dir = "{shared / 'messages'}"
        archive_dir = "{shared / 'archive'}"

        [outbound]
        relay = "{sink.address}"
        from_address = "gateway@example.org"
        helo_name = "{name}.example.org"
        poll_seconds = 0.2
        retry_min_seconds = 0.3
        retry_max_seconds = 1

        [archive]
        run_day = {today.day if today.day <= 28 else 28}
        run_hour = 0

        [reminders]
        check_minutes = 0.05

        [fax]
        drop_folder = "{shared / 'fax-drop'}"
        poll_seconds = 0.2
        stable_seconds = 1
        ocr_workers = 1
        ocr_reader = "tesseract"

        [imap]
        reconnect_min_seconds = 0.2
        reconnect_max_seconds = 2
        """) + accounts


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@partner.example", ["liaison@example.org"], raw)


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def ready(daemon: Daemon) -> bool:
    return "gateway ready" in daemon.output()


def imap_sessions(rawlog: Path) -> list[tuple[str, float, float]]:
    """Each recorded IMAP session: the node that named itself (IMAP ID), when it began and ended."""
    sessions = []
    for path in rawlog.glob("*.in"):
        stamp = re.match(r"(\d{8}-\d{6})", path.name)
        node = re.search(rb'"x-node" "([^"]+)"', path.read_bytes())
        if stamp is None or node is None:
            continue
        began = datetime.strptime(stamp.group(1), "%Y%m%d-%H%M%S").timestamp()
        ended = max(path.stat().st_mtime, path.with_suffix(".out").stat().st_mtime)
        sessions.append((node.group(1).decode(), began, ended))
    return sessions


def test_three_nodes_do_every_piece_of_work_once(tmp_path: Path, pg_url: str, sink: SmtpSink,
                                                 dovecot: DovecotServer) -> None:
    shared = tmp_path / "shared"
    (shared / "fax-drop").mkdir(parents=True)
    users = [f"nodes-{n}-{os.getpid()}-{int(time.time())}" for n in ("a", "b")]
    for user in users:
        dovecot.add_user(user, "secret")
        (shared / f"{user}.password").write_text("secret")
        os.chmod(shared / f"{user}.password", 0o600)
    rawlogs = [dovecot.record_traffic(user) for user in users]
    gateways = []
    for n in (1, 2, 3):
        (tmp_path / f"n{n}").mkdir()
        gateways.append(Gateway(tmp_path / f"n{n}", registry_url=pg_url,
                                extra=node_config(f"n{n}", shared, sink, dovecot, users)))
    gateways[0].run("db", "upgrade")
    # An archive has run on this registry before, and last month's is due and not done yet.
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO job_runs (job, slot, node, started_at, finished_at, outcome) "
                     "VALUES ('archive', '2000-01', 'old#0', now(), now(), 'done')")
    daemons = [g.start() for g in gateways]
    try:
        for daemon in daemons:
            wait_for(lambda d=daemon: ready(d), 60, "the nodes to start")  # type: ignore[misc]
        imap_messages = 0
        for account, user in zip("ab", users, strict=True):
            for n in range(4):
                dovecot.deliver(user, make_message(100 + n, subject=f"IMAP {account} {n}"))
                imap_messages += 1
        fax = tiff_fax([ENGLISH], resolution="fine", compression="group4")
        for n in range(2):
            partial = shared / "fax-drop" / f".fax{n}.part"
            partial.write_bytes(fax + bytes([n]))  # two different files, both readable
            past = time.time() - 5
            os.utime(partial, (past, past))
            partial.rename(shared / "fax-drop" / f"fax{n}.tif")
        smtp = 0
        for n in range(12):
            send(gateways[n % 3].smtp_port, make_message(n, subject=f"SMTP {n}"))
            smtp += 1
        daemons[1].send_signal(signal.SIGKILL)
        daemons[1].wait(10)
        killed_at = time.time()
        for n in range(12, 24):
            send(gateways[(0, 2)[n % 2]].smtp_port, make_message(n, subject=f"SMTP {n}"))
            smtp += 1
        killed = daemons[1]
        daemons[1] = gateways[1].start()  # the same node, started again
        wait_for(lambda: ready(daemons[1]), 60, "the killed node to start again")
        for n in range(24, 30):
            send(gateways[n % 3].smtp_port, make_message(n, subject=f"SMTP {n}"))
            smtp += 1
        expected = smtp + imap_messages + 2

        def settled() -> bool:
            letters = query(pg_url, "SELECT count(*) FROM letters")[0][0]
            busy = query(pg_url, "SELECT (SELECT count(*) FROM outbox WHERE status = 'pending')"
                                 " + (SELECT count(*) FROM ocr_jobs)")[0][0]
            return letters == expected and busy == 0
        # A mail is marked sent only after the relay took it: any second copy is at the sink by now.
        wait_for(settled, 120, "every letter registered, read and its mail sent")

        # Every accepted message is exactly one letter.
        subjects = Counter(row[0] for row in query(pg_url, "SELECT subject FROM letters WHERE channel != 'fax'"))
        assert all(count == 1 for count in subjects.values()), subjects
        assert sum(1 for s in subjects if s.startswith("SMTP ")) == smtp
        assert sum(1 for s in subjects if s.startswith("IMAP ")) == imap_messages

        # Every outbox mail reached the relay once, notifications with their original.
        outbox = query(pg_url, "SELECT message_id, kind, status FROM outbox")
        assert {status for _, _, status in outbox} == {"sent"}
        delivered = Counter(str(r.message["Message-ID"]) for r in sink.received)
        assert sorted(delivered) == sorted(mid for mid, _, _ in outbox)
        # Once each, except in the documented window of at-least-once delivery: the killed node had
        # the relay's 250 and died before marking the mail sent, so another node sent it again.
        for message_id in (m for m, count in delivered.items() if count > 1):
            copies = sorted((r.at, r.helo) for r in sink.received if str(r.message["Message-ID"]) == message_id)
            assert len(copies) == 2, (message_id, copies)
            assert copies[0][1] == "n2.example.org" and copies[0][0] <= killed_at, (message_id, copies)
            assert copies[1][1] != "n2.example.org" or copies[1][0] > killed_at, (message_id, copies)
        kinds = {mid: kind for mid, kind, _ in outbox}
        notifications = [r.message for r in sink.received if kinds[str(r.message["Message-ID"])] == "notification"]
        assert len(notifications) >= smtp
        for message in notifications:
            parts = [p.get_content_type() for p in message.walk()]
            assert "message/rfc822" in parts or any(p.get_filename() for p in message.walk()), parts

        # OCR ran once per fax.
        reads = query(pg_url, "SELECT l.id, count(e.id) FROM letters l LEFT JOIN events e ON e.letter_id = l.id "
                              "AND e.action = 'text-read' WHERE l.channel = 'fax' GROUP BY l.id")
        assert len(reads) == 2 and all(count == 1 for _, count in reads), reads

        # The archive ran once across the nodes, and the reminders' pass too, each period.
        logs = [d.output() for d in (*daemons, killed)]
        archived = [log for log in logs if re.search(r"archive of \d{4}-\d{2}: \d+ package", log)]
        assert len(archived) == 1, [re.findall(r"archive of .*", log) for log in logs]
        runs = query(pg_url, "SELECT job, slot, outcome FROM job_runs WHERE job = 'archive'")
        assert runs[0][2] == "done" and runs[0][1] != "2000-01"

        # Each IMAP folder was open on one node at a time (Dovecot's record of every session).
        for rawlog in rawlogs:
            sessions = sorted(imap_sessions(rawlog), key=lambda s: s[1])
            assert sessions, f"no recorded sessions in {rawlog}"
            for (node, began, ended), (other, began2, _) in zip(sessions, sessions[1:], strict=False):
                if node != other:
                    assert began2 >= int(ended), (node, other, began, ended, began2)
        took_over = [log for log in logs if "taken over from another node" in log]
        assert took_over or all("n2" not in s[0] for r in rawlogs for s in imap_sessions(r)
                                if s[2] >= killed_at - 1)

        # Status shows every node.
        status = json.loads(gateways[0].run("status", "--json", check=False).stdout)
        assert {n["name"] for n in status["nodes"]} == {"n1", "n2", "n3"}
        assert all(n["state"] == "alive" for n in status["nodes"])
        folders = [f for n in status["nodes"] for f in n["folders"]]
        assert sorted(folders) == sorted(f"{u}/INBOX" for u in users)
        metrics = gateways[0].run("status", check=False).stdout
        assert "Nodes" in metrics
    finally:
        for daemon in daemons:
            daemon.stop()


def test_a_schema_other_than_the_gateways_is_refused(tmp_path: Path, pg_url: str) -> None:
    """Older: `gateway db upgrade` is named; newer: refused too; commands do not touch the schema."""
    gateway = Gateway(tmp_path, registry_url=pg_url)
    gateway.run("db", "upgrade")
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0016'")
    daemon = gateway.start()
    assert daemon.wait(60) == 1
    assert f"the registry's schema is 0016, this gateway needs {schema.HEAD}: run `gateway db upgrade`" \
        in daemon.output()
    listed = gateway.run("letters", "list", check=False)
    assert listed.returncode == 1 and "gateway db upgrade" in listed.stderr
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("0016",)]
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    daemon = gateway.start()
    assert daemon.wait(60) == 1
    assert f"the registry's schema is 0099, which is newer than this gateway's ({schema.HEAD})" in daemon.output()
    upgrade = gateway.run("db", "upgrade", check=False)
    assert upgrade.returncode == 1 and "newer" in upgrade.stderr


def test_check_config_warns_about_local_stores_with_postgresql(tmp_path: Path, pg_url: str) -> None:
    gateway = Gateway(tmp_path, registry_url=pg_url)
    warned = gateway.run("check-config").stderr
    assert "storage.messages_dir: not set" in warned and "node.name: not set" in warned
    (tmp_path / "alone").mkdir()
    alone = Gateway(tmp_path / "alone")
    assert "warning" not in alone.run("check-config").stderr


def test_an_archive_run_left_by_a_dead_node_is_taken_up_by_a_running_one(tmp_path: Path, pg_url: str) -> None:
    """A node dies in the middle of last month's archive; another node, already running, takes the
    run up within the takeover period and archives the whole month, once."""
    shared = tmp_path / "shared"
    extra = textwrap.dedent(f"""
        [cluster]
        takeover_seconds = {TAKEOVER}

        [storage]
        messages_dir = "{shared / 'messages'}"
        archive_dir = "{shared / 'archive'}"

        [archive]
        run_day = 1
        run_hour = 0
        """)
    gateways = []
    for name in ("n1", "n2"):
        (tmp_path / name).mkdir()
        gateways.append(Gateway(tmp_path / name, registry_url=pg_url, extra=f'[node]\nname = "{name}"\n' + extra))
    first, second = gateways
    first.run("db", "upgrade")
    (tmp_path / "mail").mkdir()
    first.run("ingest", *write_messages(tmp_path / "mail", (make_message(n) for n in range(30))))
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    month = f"{now.year - (now.month == 1)}-{(now.month - 2) % 12 + 1:02d}"
    with psycopg.connect(pg_url) as conn:
        # Received last month, and an archive has run on this registry before: last month's is due.
        conn.execute(f"UPDATE letters SET received_at = '{month}-15 04:00:00+08'")
        conn.execute("INSERT INTO job_runs (job, slot, node, started_at, finished_at, outcome) "
                     "VALUES ('archive', '2000-01', 'old#0', now(), now(), 'done')")
    read = tmp_path / "archive.log"
    dying = first.start(PYTHONPATH=str(slowed_site(tmp_path, SLOW_ARCHIVE)), ARCHIVE_LOG=str(read),
                        ARCHIVE_SLEEP="1")  # 30 s for the month
    running = None
    try:
        wait_for(read.exists, 60, "the first node's archive run under way")
        running = second.start()
        wait_for(lambda: ready(running), 60, "the second node to start")  # type: ignore[arg-type]
        time.sleep(TAKEOVER + 1)  # it has looked at least twice, and left the run to its holder
        assert query(pg_url, "SELECT node LIKE 'n1#%', finished_at FROM job_runs WHERE job = 'archive'") == [
            (True, None)]
        dying.send_signal(signal.SIGKILL)
        dying.wait(10)
        assert len(read.read_text().splitlines()) < 30  # it died halfway
        # While it archived, its own looks every takeover period found the run under way, quietly.
        assert "maximum number of running instances" not in dying.output(), dying.output()[-3000:]
        pattern = rf"archive of {month}: (\d+) package\(s\) written, 30 letter\(s\); \1 verified, 0 failed"
        wait_for(lambda: re.search(pattern, running.output()), 60,  # type: ignore[union-attr]
                 "the running node to take the archive up")
    finally:
        out = running.stop() if running is not None else ""
        dying.stop()
    assert "Traceback" not in out and "ALERT" not in out, out[-3000:]
    assert f"archive of {month}: due and not done" in out
    assert query(pg_url, "SELECT slot, node LIKE 'n2#%', outcome FROM job_runs WHERE job = 'archive'") == [
        (month, True, "done")]
    assert query(pg_url, "SELECT count(*), count(DISTINCT archive_number) FROM letters "
                         "WHERE archive_number IS NOT NULL") == [(30, 30)]
    left = [p.name for p in (shared / "archive" / month.replace("-", "/")).rglob(".*")]
    assert left == [], left  # what the dead node was writing is gone


SLOW_REGISTRATION = '''
import os, time
import gateway.daemon.pipeline as pipeline

_process = pipeline.Pipeline.process


def process(self, items, *args, **kwargs):
    time.sleep(float(os.environ["REGISTER_SLEEP"]))
    return _process(self, items, *args, **kwargs)


pipeline.Pipeline.process = process
'''


def test_a_node_taken_for_dead_and_started_elsewhere_registers_its_spool_before_it_stops(
        tmp_path: Path, pg_url: str) -> None:
    """Node z was taken for dead and its name started again elsewhere: at its next heartbeat it
    stops, as it must. Its spool still holds mail acknowledged to the senders, which its next
    start here (refused while the other run lives) would register: it registers it before it
    stops."""
    from gateway.spool import Spool
    from gateway.stages import rulebook

    gw = Gateway(tmp_path, registry_url=pg_url, extra=f"\n[node]\nname = \"node-z\"\n\n[cluster]\n"
                                                      f"takeover_seconds = {TAKEOVER}\n")
    gw.config.write_text(gw.config.read_text().replace("[spool]\n", "[spool]\nworkers = 1\nbatch_size = 1\n"
                                                                     "registrars = 1\n", 1))
    config = rulebook.load(str(gw.config))
    daemon = gw.start(PYTHONPATH=str(slowed_site(tmp_path, SLOW_REGISTRATION)), REGISTER_SLEEP="1.5")
    try:
        wait_for(lambda: "gateway ready" in daemon.output(), 60, "the daemon ready")
        spool = Spool(config.spool_dir, config.message_dir)
        for n in range(4):
            spool.enqueue(make_message(n, subject=f"spooled {n}"), {"intake": "file"})
        wait_for(lambda: gw.spool_files("work"), 30, "a registration under way")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE nodes SET instance = 'node-z#elsewhere', host = 'elsewhere' WHERE name = 'node-z'")
        assert daemon.wait(60) == 0
        out = daemon.output()
        assert "ALERT cluster: this node's run" in out and "replaced by node-z#elsewhere" in out
        assert gw.spool_files("new") == [] and gw.spool_files("work") == []
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM letters").fetchone() == (4,)
    finally:
        daemon.stop()
