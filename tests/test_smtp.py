"""SMTP intake, with real clients: smtplib, swaks and Postfix's smtp-source."""
from __future__ import annotations

import os
import re
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, PostgresServer, child_pids, make_message, wait_for

pytestmark = pytest.mark.timeout(600)




class Running:
    def __init__(self, gateway: Gateway, proc: Daemon):
        self.gateway = gateway
        self.proc = proc

    def client(self, timeout: float = 30) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.gateway.smtp_port, local_hostname="client.partner.example",
                            timeout=timeout)

    def stop(self) -> str:
        return self.proc.stop()


def start(gateway: Gateway, notify: Notify, extra_smtp: str = "", **env: str) -> Running:
    if extra_smtp:
        text = gateway.config.read_text().replace("[smtp]\n", "[smtp]\n" + extra_smtp + "\n", 1)
        gateway.config.write_text(text)
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path), **env)
    notify.wait_for("READY=1")
    return Running(gateway, proc)


@pytest.fixture
def smtp(gateway: Gateway, notify: Notify) -> Running:
    running = start(gateway, notify)
    yield running
    running.stop()


def test_accepted_and_refused_recipients(smtp: Running) -> None:
    """Our addresses get 250, anyone else's 550 at RCPT; the reply to DATA names the letter number."""
    with smtp.client() as c:
        c.ehlo()
        assert c.mail("alice@partner.example")[0] == 250
        assert c.rcpt("liaison@example.org")[0] == 250
        code, reply = c.rcpt("victim@elsewhere.example")
        assert code == 550 and b"relay access denied" in reply
        assert c.rcpt("postmaster@elsewhere.example")[0] == 550
        assert c.rcpt("fax-inbox@example.org")[0] == 250
        code, reply = c.data(make_message(1, subject="Partnership"))
        assert code == 250 and reply == b"2.0.0 OK registered as 2026-000001"
    detail = smtp.gateway.show_json("2026-000001")
    assert detail["intake"] == "smtp" and detail["subject"] == "Partnership"
    env = detail["envelope"]
    assert env["mail_from"] == "alice@partner.example"
    assert env["rcpt_to"] == ["liaison@example.org", "fax-inbox@example.org"]
    with smtp.client() as c:  # RFC 5321 4.5.1: postmaster, at the organisation's domains or bare
        c.ehlo()
        assert c.mail("alice@partner.example")[0] == 250
        assert [c.rcpt(address)[0] for address in ("PostMaster@example.org", "<postmaster>")] == [250, 250]
        assert c.data(make_message(2, subject="Abuse report"))[0] == 250
    assert env["client"] == "127.0.0.1" and env["helo"] == "client.partner.example"
    assert env["tls"] is False and env["auth_user"] is None
    assert detail["department"] == "general-office"
    raw = (smtp.gateway.state / detail["raw_path"]).read_bytes()
    received = raw.split(b"\n", 1)[1].split(b"From: ")[0].decode()
    assert received.startswith("Received: from client.partner.example ([127.0.0.1])\r\n"
                               f"\tby gw.example.org (Correspondence Gateway) with ESMTP id {env['session']};")


def test_one_transaction_to_two_local_addresses_is_one_letter(smtp: Running) -> None:
    """liaison@ and sales@ in one transaction: one entry naming both, received by the first's department."""
    with smtp.client() as c:
        c.sendmail("alice@partner.example", ["sales@example.org", "liaison@example.org"], make_message(1))
    [letter] = smtp.gateway.list_json()
    detail = smtp.gateway.show_json(letter["number"])
    assert detail["envelope"]["rcpt_to"] == ["sales@example.org", "liaison@example.org"]
    assert detail["recipients"]["envelope"] == ["sales@example.org", "liaison@example.org"]
    assert detail["department"] == "business"


def test_null_sender_is_accepted_and_flagged(smtp: Running) -> None:
    """A bounce (MAIL FROM:<>) is registered with the 'bounce' flag."""
    with smtp.client() as c:
        c.sendmail("<>", ["liaison@example.org"], make_message(1, sender="MAILER-DAEMON@partner.example"))
    [letter] = smtp.gateway.list_json()
    detail = smtp.gateway.show_json(letter["number"])
    assert detail["flags"] == ["bounce"] and detail["envelope"]["mail_from"] == ""


def test_a_non_ascii_address_is_refused_without_smtputf8_and_taken_with_it(gateway: Gateway, notify: Notify) -> None:
    """RFC 6531 3.5: a non-ASCII address given without MAIL's SMTPUTF8 parameter is refused, at MAIL
    with 550 5.6.7, at RCPT with 553 5.6.7 (the reply, ASCII, does not repeat it); the session goes
    on. With SMTPUTF8 the same addresses are taken and the letter's envelope keeps them."""
    running = start(gateway, notify, 'accept_domains = ["例子.中国"]')
    try:
        with running.client() as c:
            c.ehlo()
            assert c.has_extn("smtputf8")
            c.command_encoding = "utf-8"  # what a client ignoring the extension sends: UTF-8 all the same
            code, reply = c.mail("张三@例子.中国")
            assert code == 550 and reply.startswith(b"5.6.7 "), reply
            assert b"SMTPUTF8" in reply and reply.isascii()
            assert c.mail("alice@partner.example")[0] == 250
            code, reply = c.rcpt("李四@例子.中国")
            assert code == 553 and reply.startswith(b"5.6.7 "), reply
            assert reply.isascii()
            assert c.rcpt("liaison@example.org")[0] == 250
            code, reply = c.data(make_message(1, subject="Plain"))
            assert code == 250, reply
        with running.client() as c:
            c.ehlo()
            refused = c.sendmail("张三@例子.中国", ["李四@例子.中国", "liaison@example.org"],
                                 make_message(2, subject="Internationalised", sender="张三 <张三@例子.中国>"),
                                 mail_options=["SMTPUTF8"])
            assert refused == {}
        letters = {row["subject"]: str(row["number"]) for row in running.gateway.list_json()}
        assert set(letters) == {"Plain", "Internationalised"}
        assert running.gateway.show_json(letters["Plain"])["envelope"]["rcpt_to"] == ["liaison@example.org"]
        envelope = running.gateway.show_json(letters["Internationalised"])["envelope"]
        assert envelope["mail_from"] == "张三@例子.中国"
        assert envelope["rcpt_to"] == ["李四@例子.中国", "liaison@example.org"]
    finally:
        running.stop()


def test_oversize_is_refused_and_not_stored(gateway: Gateway, notify: Notify) -> None:
    """SIZE above the maximum gets 552 at MAIL; data above it gets 552 after DATA; nothing is kept."""
    running = start(gateway, notify, "max_message_bytes = 20000")
    try:
        with running.client() as c:
            c.ehlo()
            assert b"SIZE 20000" in c.ehlo_resp  # type: ignore[operator]
            code, _ = c.mail("alice@partner.example", ["SIZE=50000"])
            assert code == 552
            c.rset()
            c.mail("alice@partner.example")
            c.rcpt("liaison@example.org")
            code, reply = c.data(make_message(1, size=60000))
            assert code == 552 and b"maximum message size" in reply
            # The session goes on: a message that fits is taken.
            c.sendmail("alice@partner.example", ["liaison@example.org"], make_message(2, size=10000))
        assert [letter["subject"] for letter in gateway.list_json()] == ["Letter 2"]
        assert gateway.spool_files("tmp") == gateway.spool_files("new") == gateway.spool_files("work") == []
    finally:
        running.stop()


def test_large_message_streams_to_disk_with_bounded_memory(gateway: Gateway, notify: Notify) -> None:
    """While a 20 MiB message is being received, it is on disk, not in the daemon's memory; it is stored intact."""
    running = start(gateway, notify)
    try:
        def rss_mib() -> float:
            for line in Path(f"/proc/{running.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            raise AssertionError("no VmRSS")
        with running.client() as c:  # warm up every code path once
            c.sendmail("alice@partner.example", ["liaison@example.org"], make_message(0))
        before = rss_mib()
        body = make_message(1, size=20 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", gateway.smtp_port), timeout=60) as s:
            f = s.makefile("rb")
            f.readline()
            for command in (b"EHLO x\r\n", b"MAIL FROM:<a@partner.example>\r\n",
                            b"RCPT TO:<liaison@example.org>\r\n", b"DATA\r\n"):
                s.sendall(command)
                while (line := f.readline())[3:4] == b"-":
                    pass
            assert line.startswith(b"354")
            s.sendall(body)
            def spooled() -> int:
                return sum(p.stat().st_size for p in (gateway.state / "spool" / "tmp").iterdir())

            # Lines are written in 64 KiB pieces: all but the last piece is on disk.
            wait_for(lambda: spooled() >= len(body) - 65536, 60, "the data to reach the spool")
            during = rss_mib()
            s.sendall(b".\r\n")
            reply = f.readline()
            f.close()
        assert reply == b"250 2.0.0 OK registered as 2026-000002\r\n"
        assert during - before < 16, f"memory grew by {during - before:.0f} MiB while receiving 20 MiB"
        detail = gateway.show_json("2026-000002")
        assert (gateway.state / detail["raw_path"]).read_bytes().endswith(body)
    finally:
        running.stop()


def test_451_while_the_registry_is_down_then_accepted(tmp_path: Path, notify: Notify) -> None:
    """With PostgreSQL stopped, DATA gets 451 and nothing stays behind; once it is back, the retry gets 250."""
    server = PostgresServer()
    server.start()
    try:
        gw = Gateway(tmp_path, registry_url=server.create_database())
        running = start(gw, notify)
        try:
            server.stop()
            with running.client() as c:
                c.ehlo()
                c.mail("alice@partner.example")
                c.rcpt("liaison@example.org")
                code, reply = c.data(make_message(1))
                assert code == 451 and b"try again later" in reply
            assert gw.spool_files("new") == gw.spool_files("work") == gw.spool_files("tmp") == []
            server.start()
            with running.client() as c:
                c.ehlo()
                c.mail("alice@partner.example")
                c.rcpt("liaison@example.org")
                code, reply = c.data(make_message(1))
                assert code == 250 and reply == b"2.0.0 OK registered as 2026-000001", reply
        finally:
            out = running.stop()
        assert "registry unavailable, 1 item(s) refused for a retry by the sender" in out
    finally:
        server.destroy()


class Load:
    """Four smtplib clients sending `total` messages, one per connection, noting each 250."""

    def __init__(self, gateway: Gateway, total: int = 500, clients: int = 4):
        self.acked: dict[str, str] = {}
        self.refused: list[str] = []
        self._gateway = gateway
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(w, total, clients)) for w in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, worker: int, total: int, clients: int) -> None:
        for n in range(worker, total, clients):
            if self._stop.is_set():
                return
            try:
                with smtplib.SMTP("127.0.0.1", self._gateway.smtp_port, timeout=30) as c:
                    c.ehlo()
                    c.mail("alice@partner.example")
                    c.rcpt("liaison@example.org")
                    code, reply = c.data(make_message(n, subject=f"load {n}"))
                with self._lock:
                    if code == 250:
                        self.acked[f"load {n}"] = reply.decode().rsplit(" ", 1)[1]
                    else:
                        self.refused.append(f"{code} {reply.decode()}")
            except (OSError, smtplib.SMTPException) as exc:
                with self._lock:  # the server died under us: not acknowledged, the client would retry
                    self.refused.append(f"{type(exc).__name__}: {exc}")

    def wait_acked(self, count: int) -> None:
        wait_for(lambda: len(self.acked) >= count, 120, f"{count} acknowledged messages")

    def finish(self, *, stop: bool = False) -> None:
        if stop:
            self._stop.set()
        for t in self._threads:
            t.join()


def children(pid: int) -> list[int]:
    """The daemon's registrar helper processes for ordinary items (it has other children too: the OCR
    pool, and the helpers of the other lanes, named by their last argument: "large", "spool-2")."""
    return [p for p in child_pids(pid)
            if b"gateway.daemon.registrar" in _cmdline(p) and _cmdline(p).split(b"\0")[-2].isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_each_acked_message_registered_once(gateway: Gateway, acked: dict[str, str]) -> list[dict]:
    letters = gateway.list_json()
    by_subject: dict[str, list[str]] = {}
    for letter in letters:
        by_subject.setdefault(letter["subject"], []).append(letter["number"])
    assert acked, "nothing was acknowledged"
    for subject, number in acked.items():
        assert by_subject.get(subject) == [number], subject
    assert all(len(numbers) == 1 for numbers in by_subject.values())
    seqs = sorted(int(letter["number"].split("-")[1]) for letter in letters)
    assert seqs == list(range(1, len(letters) + 1))
    return letters


def test_sigkill_under_load_loses_nothing_that_got_250(gateway: Gateway, notify: Notify) -> None:
    """500 messages from 4 clients, SIGKILL midway: after restart every message that got 250 is registered once."""
    running = start(gateway, notify, "max_connections_per_minute = 0")
    [helper] = children(running.proc.pid)
    load = Load(gateway)
    load.wait_acked(150)
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait()
    load.finish(stop=True)
    running.stop()
    # The registrar helper goes down with the daemon, as one process would.
    wait_for(lambda: not alive(helper), 10, "the registrar helper to die with the daemon")
    restarted = start(gateway, notify)
    try:
        assert_each_acked_message_registered_once(gateway, load.acked)
    finally:
        restarted.stop()


def test_the_registrar_helper_killed_under_load_costs_no_message(gateway: Gateway, notify: Notify) -> None:
    """The helper process dies mid-batch: the daemon registers that batch itself and starts a new helper."""
    running = start(gateway, notify, "max_connections_per_minute = 0")
    try:
        [helper] = children(running.proc.pid)
        load = Load(gateway, total=400)
        load.wait_acked(100)
        os.kill(helper, signal.SIGKILL)
        load.finish()
        assert load.refused == []
        assert len(load.acked) == 400
        assert len(assert_each_acked_message_registered_once(gateway, load.acked)) == 400
        wait_for(lambda: [p for p in children(running.proc.pid) if p != helper], 30, "a new registrar helper")
    finally:
        log = running.stop()
    assert f"registrar helper (pid {helper}) failed" in log


def test_a_registrar_helper_dying_after_its_commit_costs_no_message(gateway: Gateway, notify: Notify) -> None:
    """Each helper dies after its batch is committed and moved into the message store, before it answers:
    the daemon finds the items gone from work/ and answers with the numbers the registry gave them."""
    running = start(gateway, notify, GATEWAY_CRASH_AT="registrar-helper-before-answer")
    acked: dict[str, str] = {}
    helpers: list[int] = []
    try:
        for n in (1, 2):  # the first helper, then the one started in its place
            [helper] = wait_for(lambda: [p for p in children(running.proc.pid) if p not in helpers], 30,
                                "a registrar helper")  # type: ignore[misc]
            helpers.append(helper)
            with running.client() as c:
                c.ehlo()
                c.mail("alice@partner.example")
                c.rcpt("liaison@example.org")
                code, reply = c.data(make_message(n, subject=f"letter {n}"))
            assert code == 250 and reply == f"2.0.0 OK already registered as 2026-00000{n}".encode()
            acked[f"letter {n}"] = f"2026-00000{n}"
            assert not alive(helper)
        assert_each_acked_message_registered_once(gateway, acked)
        assert gateway.spool_files("work") == gateway.spool_files("new") == gateway.spool_files("quarantine") == []
        raw = (gateway.state / gateway.show_json("2026-000002")["raw_path"]).read_bytes()
        assert b"Subject: letter 2" in raw
    finally:
        log = running.stop()
    for helper in helpers:
        assert f"registrar helper (pid {helper}) failed (EOFError)" in log
    assert "unexpected error" not in log


def test_smtp_source_load_is_registered_in_full(gateway: Gateway, notify: Notify) -> None:
    """Postfix's smtp-source, 200 messages over 4 sessions: 200 letters."""
    running = start(gateway, notify, "max_connections_per_minute = 0")
    try:
        proc = subprocess.run(["smtp-source", "-s", "4", "-m", "200", "-l", "4096", "-f", "load@partner.example",
                               "-t", "liaison@example.org", f"127.0.0.1:{gateway.smtp_port}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert len(gateway.list_json()) == 200
    finally:
        running.stop()


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=gw.example.org", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


def test_starttls_and_auth(gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """STARTTLS with a self-signed certificate; AUTH is refused before TLS and records the identity after."""
    cert, key = _certificate(tmp_path)
    users = tmp_path / "users"
    users.write_text(gateway.run("smtp-passwd", "clerk", "--password", "s3cret").stdout)
    running = start(gateway, notify, f'tls_certificate = "{cert}"\ntls_key = "{key}"\n'
                                     f'auth_users_file = "{users}"')
    try:
        with running.client() as c:
            c.ehlo()
            assert c.has_extn("starttls") and not c.has_extn("auth")
            code, reply = c.docmd("AUTH", "PLAIN AGNsZXJrAHMzY3JldA==")
            assert code == 538 and b"Encryption required" in reply
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False
            c.starttls(context=context)
            c.ehlo()
            assert c.has_extn("auth")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("clerk", "wrong")
            c.login("clerk", "s3cret")
            c.sendmail("clerk@example.org", ["liaison@example.org"], make_message(1, sender="clerk@example.org"))
        detail = gateway.show_json("2026-000001")
        assert detail["envelope"]["tls"] is True and detail["envelope"]["auth_user"] == "clerk"
        raw = (gateway.state / detail["raw_path"]).read_bytes()
        assert b"with ESMTPSA id" in raw and b"(using TLSv1.3" in raw
        # swaks, another real client, over STARTTLS with AUTH LOGIN.
        proc = subprocess.run(["swaks", "--server", f"127.0.0.1:{gateway.smtp_port}", "--tls",
                               "--auth", "LOGIN", "--auth-user", "clerk", "--auth-password", "s3cret",
                               "--from", "clerk@example.org", "--to", "sales@example.org",
                               "--header", "Subject: via swaks"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "250 2.0.0 OK registered as 2026-000002" in proc.stdout
    finally:
        out = running.stop()
    assert "AUTH PLAIN failed for user 'clerk'" in out
    assert "s3cret" not in out and "wrong" not in out and "deprecated" not in out


def test_recipient_and_session_limits(gateway: Gateway, notify: Notify) -> None:
    """Too many recipients get 452 (a recipient given again is none more: 250); sessions beyond the
    maximum and connections beyond the rate get 421."""
    running = start(gateway, notify, "max_recipients = 2\nmax_sessions = 2\nmax_connections_per_minute = 4")
    try:
        with running.client() as c:
            c.ehlo()
            c.mail("alice@partner.example")
            assert c.rcpt("liaison@example.org")[0] == 250
            assert c.rcpt("sales@example.org")[0] == 250
            assert c.rcpt("fax-inbox@example.org")[0] == 452
            assert c.rcpt("Liaison@example.org")[0] == 250  # one of the two again: no recipient more
            with running.client() as d:  # second session: allowed
                assert d.noop()[0] == 250
                with pytest.raises(smtplib.SMTPConnectError) as refused:
                    running.client()
                assert refused.value.smtp_code == 421 and b"too many sessions" in refused.value.smtp_error
        # Two sessions so far this minute (the refused attempt does not count): two more, then the limit.
        for _ in range(2):
            with running.client() as e:
                e.noop()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            running.client()
        assert refused.value.smtp_code == 421 and b"(4 in 60 s), try again in" in refused.value.smtp_error
    finally:
        out = running.stop()
    assert out.count("too many sessions") == 1 and out.count("connections from 127.0.0.1") == 1


def test_a_client_connecting_steadily_is_slowed_down_not_locked_out(gateway: Gateway, notify: Notify) -> None:
    """One address connecting every 0.1 s, 2 sessions a second allowed: it gets its 2 sessions in every
    second, however often it was refused, each refusal saying when to come back; an exempt relay is never
    refused."""
    running = start(gateway, notify, 'max_connections_per_minute = 2\nrate_limit_window = 1\n'
                                     'rate_limit_exempt = ["127.0.0.2/32"]')
    try:
        accepted: list[float] = []
        hints: list[int] = []
        began = time.monotonic()
        for n in range(30):
            time.sleep(max(0.0, began + n * 0.1 - time.monotonic()))
            try:
                with running.client() as c:
                    assert c.noop()[0] == 250
                accepted.append(time.monotonic() - began)
            except smtplib.SMTPConnectError as refused:
                assert refused.smtp_code == 421, refused
                hint = re.search(rb"\(2 in 1 s\), try again in (\d+) s$", refused.smtp_error)
                assert hint is not None, refused.smtp_error
                hints.append(int(hint[1]))
        # About 2 a second over 3 s; counting refusals would have stopped it after the first 2.
        assert len(accepted) >= 4 and accepted[-1] > 2.0, accepted
        assert hints and all(h == 1 for h in hints)
        # The organisation's relay (another loopback address) is never refused.
        for _ in range(10):
            with smtplib.SMTP("127.0.0.1", gateway.smtp_port, source_address=("127.0.0.2", 0), timeout=30) as relay:
                assert relay.noop()[0] == 250
    finally:
        running.stop()


def test_command_and_data_timeouts(gateway: Gateway, notify: Notify) -> None:
    """A silent client gets 421 and is disconnected; a stall in DATA leaves nothing stored."""
    running = start(gateway, notify, "command_timeout = 1\ndata_timeout = 1")
    try:
        with socket.create_connection(("127.0.0.1", gateway.smtp_port), timeout=10) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220 ")
            assert f.readline().startswith(b"421 4.4.2 gw.example.org timeout exceeded")
            f.close()
        with socket.create_connection(("127.0.0.1", gateway.smtp_port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            for command in (b"HELO x\r\n", b"MAIL FROM:<a@partner.example>\r\n", b"RCPT TO:<liaison@example.org>\r\n",
                            b"DATA\r\n"):
                s.sendall(command)
                f.readline()
            s.sendall(b"Subject: half\r\n\r\nand then nothing")
            assert f.readline().startswith(b"421 4.4.2")
            f.close()
        wait_for(lambda: not gateway.spool_files("tmp"), 10, "the partial message to be dropped")
        assert gateway.spool_files("new") == gateway.spool_files("work") == []
        assert gateway.list_json() == []
    finally:
        running.stop()


def test_a_client_dripping_lines_is_cut_off_at_the_total_data_deadline(gateway: Gateway, notify: Notify) -> None:
    """data_timeout is silence, and starts again with every line: a client sending one line every
    0.2 s is never silent for it (2 s), yet holds its session no longer than data_total_timeout
    (3 s) from the 354. It gets 421 4.4.2 and is disconnected; nothing of its message is kept in
    the spool or registered, and the next client is served."""
    running = start(gateway, notify, "data_timeout = 2\ndata_total_timeout = 3")
    try:
        s, f = _dialogue(gateway.smtp_port)
        started = time.monotonic()
        sent = 0
        try:
            s.sendall(b"From: drip@partner.example\r\nSubject: drip\r\n\r\n")
            while not select.select([s], [], [], 0.2)[0]:
                assert time.monotonic() - started < 15, "DATA never cut off"
                s.sendall(b"line %d\r\n" % sent)
                sent += 1
                if sent == 5:
                    half_spooled = gateway.spool_files("tmp")
            reply = f.readline()
            elapsed = time.monotonic() - started
            assert reply == b"421 4.4.2 gw.example.org DATA not completed within 3 s, closing\r\n", reply
            assert f.readline() == b""
        finally:
            f.close()
            s.close()
        assert 2.9 < elapsed < 6 and sent >= 10, (elapsed, sent)
        assert half_spooled, "the message was being spooled"
        wait_for(lambda: not gateway.spool_files("tmp"), 10, "the partial message to be dropped")
        assert gateway.spool_files("new") == gateway.spool_files("work") == []
        assert gateway.list_json() == []
        with running.client() as c:
            c.sendmail("alice@partner.example", ["liaison@example.org"], make_message(1, subject="After"))
        assert [row["subject"] for row in gateway.list_json()] == ["After"]
    finally:
        out = running.stop()
    assert "DATA not completed within 3 s" in out



def test_a_client_that_never_falls_silent_is_closed_at_the_session_deadline(gateway: Gateway, notify: Notify) -> None:
    """command_timeout (1 s) starts again with every command: a client that sends one harmless
    command (NOOP, RSET, a refused RCPT) every 0.3 s is never silent for it, yet holds its session,
    and here the only one of max_sessions, no longer than session_timeout (3 s). It gets 421 4.4.2
    and is disconnected, and the next client is served. The letter it sent before is registered
    once, as it was acknowledged."""
    running = start(gateway, notify, "command_timeout = 1\nsession_timeout = 3\nmax_sessions = 1")
    try:
        with socket.create_connection(("127.0.0.1", gateway.smtp_port), timeout=10) as s:
            f = s.makefile("rb")
            started = time.monotonic()
            assert f.readline().startswith(b"220 ")
            s.sendall(b"HELO x\r\nMAIL FROM:<a@partner.example>\r\nRCPT TO:<liaison@example.org>\r\nDATA\r\n")
            assert [f.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
            s.sendall(make_message(1, subject="Before") + b"\r\n.\r\n")
            assert f.readline() == b"250 2.0.0 OK registered as 2026-000001\r\n"
            harmless = (b"NOOP\r\n", b"RSET\r\n", b"MAIL FROM:<a@partner.example>\r\n",
                        b"RCPT TO:<victim@elsewhere.example>\r\n", b"HELO x\r\n")
            sent = 0
            while True:
                assert time.monotonic() - started < 15, "the session was never closed"
                time.sleep(0.3)
                s.sendall(harmless[sent % len(harmless)])
                sent += 1
                reply = f.readline()
                if reply[:3] not in (b"250", b"550"):  # 550: the refused RCPT
                    break
            elapsed = time.monotonic() - started
            assert reply == b"421 4.4.2 gw.example.org session too long, closing\r\n", reply
            assert f.readline() == b""
            f.close()
        assert 2.9 < elapsed < 6 and sent >= 8, (elapsed, sent)
        with running.client() as c:  # the slot is free again
            c.sendmail("alice@partner.example", ["liaison@example.org"], make_message(2, subject="After"))
        assert sorted(row["subject"] for row in gateway.list_json()) == ["After", "Before"]
        assert gateway.spool_files("tmp") == gateway.spool_files("new") == gateway.spool_files("work") == []
    finally:
        out = running.stop()
    assert "closed: longer than 3 s" in out


def test_a_client_reading_no_replies_is_cut_off_at_the_session_deadline(gateway: Gateway, notify: Notify) -> None:
    """A client that sends EHLO after EHLO and never reads a reply: once the replies waiting for it
    fill the buffers, the session stops reading commands, and closing it at the command timeout
    would wait for ever for them to be sent. At the session deadline the connection is dropped
    with what is still unsent, and its session (the only one of max_sessions) is free again."""
    running = start(gateway, notify, "command_timeout = 1\nsession_timeout = 10\nmax_sessions = 1")
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", gateway.smtp_port))
            s.setblocking(False)
            started = time.monotonic()
            flood = b"EHLO x\r\n" * 1000
            while True:
                assert time.monotonic() - started < 20, "the connection was never closed"
                try:
                    s.send(flood)
                except BlockingIOError:
                    time.sleep(0.05)
                except (ConnectionResetError, BrokenPipeError):
                    break
            elapsed = time.monotonic() - started
        assert 9.9 < elapsed < 15, elapsed
        log = running.proc.output()
        # The replies had stopped the session before the command timeout hung up on it.
        assert log.index("timed out") < log.index("closed: longer than 10 s"), log
        with running.client() as c:
            assert c.noop()[0] == 250
    finally:
        running.stop()

def test_a_message_in_data_at_the_session_deadline_is_finished_then_the_session_closed(
        gateway: Gateway, notify: Notify) -> None:
    """The session deadline (2 s) falls while a message is still arriving: the message is not cut
    short; it completes under the DATA deadlines, is registered once and acknowledged, and only then
    does the session end with 421 4.4.2; a command the client pipelined behind the message's end
    is not answered."""
    running = start(gateway, notify, "session_timeout = 2")
    try:
        s, f = _dialogue(gateway.smtp_port)
        started = time.monotonic()
        try:
            s.sendall(b"From: slow@partner.example\r\nSubject: slow\r\n\r\n")
            sent = 0
            while time.monotonic() - started < 3.5:
                assert not select.select([s], [], [], 0.3)[0], f.readline()
                s.sendall(b"line %d\r\n" % sent)
                sent += 1
            s.sendall(b".\r\nNOOP\r\n")
            s.settimeout(10)
            assert f.readline() == b"250 2.0.0 OK registered as 2026-000001\r\n"
            assert f.readline() == b"421 4.4.2 gw.example.org session too long, closing\r\n"
            assert f.readline() == b""
        finally:
            f.close()
            s.close()
        [letter] = gateway.list_json()
        assert letter["subject"] == "slow"
        raw = (gateway.state / gateway.show_json("2026-000001")["raw_path"]).read_bytes()
        assert raw.count(b"\r\nline ") == sent, sent
        assert gateway.spool_files("tmp") == gateway.spool_files("new") == gateway.spool_files("work") == []
    finally:
        running.stop()

def _dialogue(port: int) -> tuple[socket.socket, object]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    for command in (b"EHLO x\r\n", b"MAIL FROM:<a@partner.example>\r\n", b"RCPT TO:<liaison@example.org>\r\n",
                    b"DATA\r\n"):
        s.sendall(command)
        while (line := f.readline())[3:4] == b"-":
            pass
    assert line.startswith(b"354"), line
    return s, f


def test_sigterm_lets_a_transaction_in_data_finish(gateway: Gateway, notify: Notify) -> None:
    """SIGTERM while a client is in DATA: new connections are refused, the transaction gets its 250."""
    running = start(gateway, notify)
    s, f = _dialogue(gateway.smtp_port)
    try:
        s.sendall(make_message(1)[:40])
        running.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        wait_for(lambda: _refused(gateway.smtp_port), 10, "the listener to close")
        s.sendall(make_message(1)[40:] + b"\r\n.\r\n")
        assert f.readline() == b"250 2.0.0 OK registered as 2026-000001\r\n"
    finally:
        f.close()
        s.close()
    out = running.stop()
    assert running.proc.returncode == 0, out
    assert [letter["number"] for letter in gateway.list_json()] == ["2026-000001"]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_451_when_the_spool_cannot_take_the_message(gateway: Gateway, notify: Notify) -> None:
    """With the spool unwritable, DATA is refused with 451 and nothing is registered; then it works again."""
    running = start(gateway, notify)
    tmp = gateway.state / "spool" / "tmp"
    try:
        tmp.rename(tmp.with_name("tmp-away"))
        with running.client() as c:
            c.ehlo()
            c.mail("alice@partner.example")
            c.rcpt("liaison@example.org")
            # Refused before the client sends a byte of the message.
            code, reply = c.docmd("DATA")
            assert code == 451 and b"cannot store the message" in reply
        tmp.with_name("tmp-away").rename(tmp)
        with running.client() as c:
            c.sendmail("alice@partner.example", ["liaison@example.org"], make_message(1))
        assert [letter["number"] for letter in gateway.list_json()] == ["2026-000001"]
    finally:
        out = running.stop()
    assert "cannot spool" in out


def test_a_line_longer_than_the_limit_is_refused_without_ending_data(gateway: Gateway, notify: Notify) -> None:
    """A 100 KiB line gets 500 after the real end of DATA; nothing is stored and the session goes on."""
    running = start(gateway, notify)
    s, f = _dialogue(gateway.smtp_port)
    try:
        s.sendall(b"Subject: long\r\n\r\n" + b"a" * 100_000 + b".\r\n.\r\nQUIT\r\n")
        reply = f.readline()
        assert reply.startswith(b"500 5.5.2"), reply
        assert f.readline().startswith(b"221")
    finally:
        f.close()
        s.close()
        running.stop()
    assert gateway.list_json() == [] and gateway.spool_files("tmp") == []


def test_addresses_in_mail_and_rcpt_parse_as_aiosmtpd_parses_them() -> None:
    """The remembered parse gives aiosmtpd's results, the second time (from memory) as the first,
    for good, odd and malformed arguments and a local part over the limit."""
    from types import SimpleNamespace

    from aiosmtpd.smtp import SMTP

    from gateway.adapters.smtp import IntakeSMTP

    session = SimpleNamespace(local_part_limit=64)
    arguments = ["<alice@partner.example>", "alice@partner.example", "<alice@partner.example> SIZE=4096",
                 "<> BODY=8BITMIME", "<\"quoted local\"@partner.example>", "<@relay.example:bob@partner.example>",
                 "<alice@partner.example", "<<alice@partner.example>>", "@", "<张三@例子.中国> SMTPUTF8",
                 "<" + "x" * 65 + "@partner.example>", "<" + "x" * 64 + "@partner.example>", "", "   ",
                 "<alice@[127.0.0.1]>", "alice"]
    for argument in arguments:
        expected = SMTP._getaddr(session, argument)
        assert IntakeSMTP._getaddr(session, argument) == expected, argument
        assert IntakeSMTP._getaddr(session, argument) == expected, argument
    assert IntakeSMTP._getaddr(session, "<" + "x" * 65 + "@partner.example>") == (None, None)
    assert IntakeSMTP._getaddr(SimpleNamespace(local_part_limit=0),
                               "<" + "x" * 65 + "@partner.example>")[0] == "x" * 65 + "@partner.example"
