"""SMTP AUTH for internal senders, with real clients over STARTTLS: checks off the event loop,
failed attempts capped per session and per client address, and the addresses each user may send as."""
from __future__ import annotations

import base64
import hashlib
import shutil
import smtplib
import ssl
import subprocess
import threading
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns_server as dns_fixtures
import pytest

from conftest import ROOT, Gateway, Notify, make_message, wait_for
from gateway import config as config_mod
from gateway.adapters.smtp import hash_password
from gateway.stages.check import UNVERIFIED_INTERNAL
from smtp_sink import SmtpSink

dns_server = dns_fixtures.dns_server

pytestmark = pytest.mark.timeout(600)

CLERK_SENDERS = '[smtp.auth_senders]\n"clerk" = ["clerk@example.org", "sales.desk@example.org"]\n'


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=gw.example.org", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


class Listener:
    """A running gateway whose SMTP listener offers STARTTLS and AUTH to the user clerk."""

    def __init__(self, gateway: Gateway, notify: Notify, tmp_path: Path, smtp: str = "",
                 users: str | None = None, senders: str = CLERK_SENDERS):
        self.gateway = gateway
        self.cert, key = _certificate(tmp_path)
        users_file = tmp_path / "smtp-users"
        users_file.write_text(users if users is not None else f"clerk:{hash_password('s3cret')}\n")
        text = gateway.config.read_text().replace(
            "[smtp]\n", f'[smtp]\ntls_certificate = "{self.cert}"\ntls_key = "{key}"\n'
                        f'auth_users_file = "{users_file}"\n{smtp}\n', 1)
        # [smtp.auth_senders] is a table of its own: after the departments, at the end of the file.
        gateway.config.write_text(text + "\n" + senders)
        self.proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
        notify.wait_for("READY=1")

    def client(self, tls: bool = True) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.gateway.smtp_port, local_hostname="client.example.org", timeout=60)
        c.ehlo()
        if tls:
            context = ssl.create_default_context(cafile=str(self.cert))
            context.check_hostname = False
            c.starttls(context=context)
            c.ehlo()
        return c

    def stop(self) -> str:
        return self.proc.stop()


def _plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _closed(c: smtplib.SMTP) -> bool:
    try:
        c.noop()
    except (smtplib.SMTPServerDisconnected, OSError):
        return True
    return False


def test_failed_attempts_capped_per_session(gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """Three wrong passwords: 535 each, after the delay; then 421 and the session is closed. Others may still log in."""
    listener = Listener(gateway, notify, tmp_path, "auth_failure_delay = 0.3")
    try:
        c = listener.client()
        for _ in range(3):
            started = time.monotonic()
            code, reply = c.docmd("AUTH", _plain("clerk", "guess"))
            assert (code, reply) == (535, b"5.7.8 Authentication credentials invalid")
            assert time.monotonic() - started >= 0.3
        code, reply = c.getreply()  # sent right after the third 535, unasked
        assert (code, reply) == (421, b"4.7.0 Too many failed authentication attempts, closing")
        assert _closed(c)
        with listener.client() as ok:  # 3 failures from this address: below the address's 10
            ok.login("clerk", "s3cret")
    finally:
        out = listener.stop()
    assert out.count("AUTH PLAIN failed for user 'clerk'") == 3
    assert "closed after 3 failed AUTH attempts" in out and "guess" not in out and "s3cret" not in out


def test_failed_attempts_capped_per_address_over_a_window(gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """Failures from one address add up across sessions; a success in between erases none; once barred,
    even the right password gets 421 without a check, until the failures age out of the window."""
    listener = Listener(gateway, notify, tmp_path, "max_auth_failures_per_address = 4\nauth_failure_window = 4\n"
                                                   "auth_failure_delay = 0.2")
    try:
        c = listener.client()
        for _ in range(3):
            assert c.docmd("AUTH", _plain("clerk", "guess"))[0] == 535
        assert c.getreply()[0] == 421 and _closed(c)
        with listener.client() as ok:  # 3 of 4: the right password still works
            ok.login("clerk", "s3cret")
        c = listener.client()
        assert c.docmd("AUTH", _plain("nobody", "guess"))[0] == 535  # the 4th failure: the success reset nothing
        assert c.docmd("AUTH", _plain("clerk", "s3cret")) == (
            421, b"4.7.0 Too many failed authentication attempts from 127.0.0.1, try again later")
        assert _closed(c)
        barred_at = time.monotonic()
        c = listener.client()
        started = time.monotonic()
        assert c.docmd("AUTH", _plain("clerk", "s3cret"))[0] == 421  # a new session: barred at once
        assert time.monotonic() - started >= 0.2 and _closed(c)
        time.sleep(max(0.0, 4.5 - (time.monotonic() - barred_at)))  # the failures age out of the window
        with listener.client() as ok:
            ok.login("clerk", "s3cret")
    finally:
        out = listener.stop()
    assert out.count("AUTH refused: too many failures from 127.0.0.1") == 2


def test_password_guessing_does_not_delay_other_sessions(gateway: Gateway, notify: Notify, tmp_path: Path) -> None:
    """Two clients guess passwords against a costly hash; a third session's NOOP and EHLO stay quick.

    Were checks run on the event loop, it would be blocked nearly all the time the guessers run:
    a command arriving during a check would wait for the rest of it (and for the other guesser's),
    so a typical round trip would take half a check or more. Off the loop they take milliseconds;
    on a busy machine a single one may still wait for the scheduler, so the typical one is judged."""
    n, r, p = 2 ** 14, 8, 8  # 16 MiB of memory per check, as the default; p makes each check cost more
    started = time.monotonic()
    hashlib.scrypt(b"guess", salt=b"0123456789abcdef", n=n, r=r, p=p, dklen=32)
    one_check = time.monotonic() - started
    listener = Listener(gateway, notify, tmp_path,
                        "max_auth_failures_per_session = 1000\nmax_auth_failures_per_address = 1000\n"
                        "auth_failure_delay = 0",
                        users=f"clerk:{hash_password('s3cret', n=n, r=r, p=p)}\n")
    guesses, refused = 8, list[int]()
    try:
        def guess() -> None:
            with listener.client() as c:
                refused.extend(c.docmd("AUTH", _plain("clerk", f"guess{i}"))[0] for i in range(guesses))

        other = listener.client(tls=False)
        guessers = [threading.Thread(target=guess) for _ in range(2)]
        for thread in guessers:
            thread.start()
        round_trips = []
        while any(thread.is_alive() for thread in guessers):
            for command in (other.noop, other.ehlo):
                sent = time.monotonic()
                assert command()[0] == 250
                round_trips.append(time.monotonic() - sent)
            time.sleep(0.01)
        for thread in guessers:
            thread.join()
        other.quit()
    finally:
        listener.stop()
    assert refused == [535] * (2 * guesses)
    checking = 2 * guesses * one_check
    typical = sorted(round_trips)[len(round_trips) // 2]
    assert typical < one_check / 10, (typical, one_check)
    assert max(round_trips) < checking / 3, (max(round_trips), checking)
    assert len(round_trips) > 2 * guesses  # the other session was busy all along


def _config_with(tmp_path: Path, smtp: str, senders: str, shipped: dict[str, str] | None = None) -> Path:
    """The shipped configuration with AUTH set up (a certificate of its own, no users yet),
    `shipped` lines replaced."""
    _certificate(tmp_path)
    (tmp_path / "smtp-users").write_text("")
    text = (ROOT / "config" / "gateway.toml").read_text()
    for line, replacement in (shipped or {}).items():
        assert text.count(f"\n{line}\n") == 1
        text = text.replace(f"\n{line}\n", f"\n{replacement}\n")
    text = text.replace("[smtp]\n", f'[smtp]\ntls_certificate = "{tmp_path / "smtp.crt"}"\n'
                                    f'tls_key = "{tmp_path / "smtp.key"}"\n{smtp}\n', 1)
    text = text.replace('state_dir = "../storage"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace("[imap]\n", f"{senders}\n[imap]\n", 1)
    shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_auth_user_may_send_as(tmp_path: Path) -> None:
    """Only the listed addresses, in any case or with angle brackets; user names are exact; no entry: nothing."""
    path = _config_with(tmp_path, f'auth_users_file = "{tmp_path / "smtp-users"}"',
                        '[smtp.auth_senders]\n"alice" = ["alice@example.org", "Sales.Desk@example.org"]\n'
                        '"bob" = []\n')
    config = config_mod.load(path)
    assert config.auth_user_may_send_as("alice", "alice@example.org")
    assert config.auth_user_may_send_as("alice", "SALES.DESK@EXAMPLE.ORG")
    assert config.auth_user_may_send_as("alice", "<alice@example.org>")
    assert not config.auth_user_may_send_as("alice", "office@example.org")
    assert not config.auth_user_may_send_as("alice", "alice@example.org.evil.example")
    assert not config.auth_user_may_send_as("Alice", "alice@example.org")
    assert not config.auth_user_may_send_as("bob", "alice@example.org")
    assert not config.auth_user_may_send_as("carol", "alice@example.org")
    assert not config.auth_user_may_send_as(None, "alice@example.org")
    assert not config.auth_user_may_send_as("alice", None)
    defaults = config.model.smtp
    assert (defaults.max_auth_failures_per_session, defaults.max_auth_failures_per_address,
            defaults.auth_failure_window) == (3, 10, 600)


def test_auth_settings_are_validated(tmp_path: Path) -> None:
    """Each mistake is named with file, key and reason."""
    path = _config_with(tmp_path, f'auth_users_file = "{tmp_path / "smtp-users"}"',
                        '[smtp.auth_senders]\n"alice" = ["alice@example.org"]\n',
                        {"max_auth_failures_per_session = 3": "max_auth_failures_per_session = 0",
                         "auth_failure_delay = 1.0": "auth_failure_delay = -1"})
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.load(path)
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}:{line_of(path, 'max_auth_failures_per_session')}: smtp.max_auth_failures_per_session: "
        "Input should be greater than or equal to 1",
        f"{path}:{line_of(path, 'auth_failure_delay')}: smtp.auth_failure_delay: Input should be greater than or "
        "equal to 0",
    ]
    path = _config_with(tmp_path, "", '[smtp.auth_senders]\n"alice" = ["alice@example.org", "not an address"]\n')
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.load(path)
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}:{line_of(path, '[smtp.auth_senders]')}: smtp.auth_senders: 'not an address' is not an e-mail "
        "address"]
    path = _config_with(tmp_path, "",
                        '[smtp.auth_senders]\n"alice" = ["alice@example.org", "partner@elsewhere.example"]\n')
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.load(path)
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}:{line_of(path, '[smtp.auth_senders]')}: smtp.auth_senders: needs auth_users_file",
        f"{path}:{line_of(path, ALICE)}: smtp.auth_senders.alice[1]: partner@elsewhere.example is not in "
        "the organisation's domains (gateway.domains: example.org); AUTH proves only our own senders",
    ]


ALICE = '"alice"'


def line_of(path: Path, start: str) -> int:
    """The number of the configuration file's line that starts with `start`: where an error names it."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start))


def test_auth_user_proves_only_the_addresses_it_may_send_as(gateway: Gateway, notify: Notify,
                                                            tmp_path: Path) -> None:
    """clerk may send as clerk@ and sales.desk@: such mail is authenticated by "smtp-auth". The same
    session sending as office@, and a user with no auth_senders entry, prove nothing."""
    users = f"clerk:{hash_password('s3cret')}\ntemp:{hash_password('t3mp')}\n"
    listener = Listener(gateway, notify, tmp_path, users=users)
    try:
        with listener.client() as c:
            c.login("clerk", "s3cret")
            c.sendmail("clerk@example.org", ["liaison@example.org"], make_message(1, sender="clerk@example.org"))
            c.sendmail("clerk@example.org", ["liaison@example.org"],
                       make_message(2, sender="Sales Desk <Sales.Desk@example.org>"))
            c.sendmail("clerk@example.org", ["liaison@example.org"], make_message(3, sender="office@example.org"))
        with listener.client() as c:
            c.login("temp", "t3mp")
            c.sendmail("temp@example.org", ["liaison@example.org"], make_message(4, sender="temp@example.org"))
    finally:
        listener.stop()
    trust = [gateway.show_json(f"2026-00000{n}")["trust"] for n in range(1, 5)]
    seen = [(v["authenticated"], v["method"], v["address"], v["smtp_auth_user"], v["from_address"])  # type: ignore[index]
            for v in trust]
    assert seen == [(True, "smtp-auth", "clerk@example.org", "clerk", "clerk@example.org"),
                    (True, "smtp-auth", "sales.desk@example.org", "clerk", "sales.desk@example.org"),
                    (False, None, None, "clerk", "office@example.org"),
                    (False, None, None, "temp", "temp@example.org")]
    # Not proven, an internal From counts as external (no authority, no internal routing).
    assert [UNVERIFIED_INTERNAL in v["flags"] for v in trust] == [False, False, True, True]  # type: ignore[index]


# The loopback DNS server publishes example.org's SPF (-all) and DMARC: an unsigned mail from
# there is disproven, not left unverified. Reply addresses are at example.org.
ANSWERS_EXTRA = """
[outbound]
from_address = "gateway@example.org"

[trust]
nameservers = ["{nameserver}"]
"""


def _answers(gateway: Gateway, number: str, count: int) -> list[dict[str, Any]]:
    def recorded() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = gateway.show_json(number)["events"]  # type: ignore[assignment]
        return [e for e in events if e["action"] == "answer"]
    wait_for(lambda: len(recorded()) >= count, 30, f"{count} answer(s) on {number}")
    return recorded()


def test_an_answer_submitted_with_auth_counts_only_from_the_users_own_addresses(
        tmp_path: Path, notify: Notify, dns_server: dns_fixtures.DnsServer) -> None:
    """clerk may send as sales.desk@ (the owner of business), not as business.head@: through the
    head's own signed reply address clerk's command is refused; through the owner's it is obeyed."""
    gateway = Gateway(tmp_path, extra=ANSWERS_EXTRA.format(nameserver=dns_server.nameserver))
    listener = Listener(gateway, notify, tmp_path)
    try:
        with listener.client(tls=False) as c:
            c.sendmail("alice@partner.example", ["sales@example.org"], make_message(1, to="sales@example.org"))
        assert gateway.show_json("2026-000001")["department"] == "business"

        def answer(sender: str) -> None:
            reply_to = gateway.run("keys", "reply-address", "2026-000001", sender).stdout.strip()
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = sender, reply_to, "Re: [2026-000001] Letter 1"
            message["Message-ID"] = f"<{time.time_ns()}@example.org>"
            message.set_content("reassign general-office\n")
            with listener.client() as c:
                c.login("clerk", "s3cret")
                c.sendmail(sender, [reply_to], message.as_bytes())

        answer("business.head@example.org")
        [refused] = _answers(gateway, "2026-000001", 1)
        assert refused["details"]["obeyed"] is False
        # The head's own token, for this letter: only the proof of the From address is missing.
        assert "is not authenticated" in refused["details"]["refused"]
        assert "token" not in refused["details"]["refused"]
        assert gateway.show_json("2026-000001")["department"] == "business"

        answer("sales.desk@example.org")
        obeyed = _answers(gateway, "2026-000001", 2)[-1]
        assert (obeyed["details"]["obeyed"], obeyed["details"]["authenticated"]) == (True, "sales.desk@example.org")
        assert gateway.show_json("2026-000001")["department"] == "general-office"
    finally:
        listener.stop()


def test_people_and_senders_whose_addresses_are_in_chinese_are_written_to_and_known_when_they_answer(
        tmp_path: Path, notify: Notify, dns_server: dns_fixtures.DnsServer) -> None:
    """Business's owners are 李明@example.org and desk@例子.中国 (an organisation domain in Chinese,
    written in the file as a person would: `Desk@例子。中国`). Their notifications go out through a
    relay with SMTPUTF8, and each one's answer through its reply address is obeyed, submitted as
    clerk, who may send as both: 李明's with her address in UTF-8 (RFC 6532), desk's with its domain
    in A-labels, as a mail program without SMTPUTF8 writes it. The sender 王芳@测试.com gets her
    receipt. The organisation's domains and the AUTH senders may be written in Chinese too."""
    relay = SmtpSink(smtputf8=True).start()
    gateway = Gateway(tmp_path, extra=ANSWERS_EXTRA.format(nameserver=dns_server.nameserver).replace(
        "[outbound]\n", f'[outbound]\nrelay = "{relay.address}"\npoll_seconds = 0.2\n'))
    desk = "desk@xn--fsqu00a.xn--fiqs8s"
    text = gateway.config.read_text().replace('domains = ["example.org"]',
                                              'domains = ["example.org", "xn--fsqu00a.xn--fiqs8s"]')
    gateway.config.write_text(text.replace('owners = ["sales.desk@example.org"]',
                                           'owners = ["李明@example.org", "Desk@例子。中国"]'))
    listener = Listener(gateway, notify, tmp_path,
                        senders=f'[smtp.auth_senders]\n"clerk" = ["李明@example.org", "{desk}"]\n')
    try:
        letter = EmailMessage(policy=policy.SMTPUTF8)
        letter["From"], letter["To"], letter["Subject"] = "王芳 <王芳@测试.com>", "sales@example.org", "关于合同"
        letter["Message-ID"] = "<letter-1@xn--0zwm56d.com>"
        letter.set_content("请回复。\n")
        with listener.client(tls=False) as c:
            c.sendmail("王芳@测试.com", ["sales@example.org"], letter.as_bytes(), mail_options=["SMTPUTF8"])
        relay.wait_for(3)
        [receipt] = relay.to("王芳@xn--0zwm56d.com")
        assert "SMTPUTF8" in receipt.mail_options and "2026-000001" in receipt.message["Subject"]

        def answer(sender: str, to: str, command: str) -> None:
            [notification] = relay.to(to)
            reply_to = str(notification.message["Reply-To"])
            message = EmailMessage(policy=policy.SMTPUTF8)
            message["From"], message["To"], message["Subject"] = sender, reply_to, "Re: [2026-000001] 关于合同"
            message["Message-ID"] = f"<{time.time_ns()}@example.org>"
            message.set_content(command + "\n")
            with listener.client() as c:
                c.login("clerk", "s3cret")
                c.sendmail("clerk@example.org", [reply_to], message.as_bytes(),
                           mail_options=["SMTPUTF8"] if not sender.isascii() else [])

        answer("李明 <李明@example.org>", "李明@example.org", "ack")
        [acked] = _answers(gateway, "2026-000001", 1)
        assert (acked["details"]["obeyed"], acked["details"]["authenticated"]) == (True, "李明@example.org"), acked
        assert gateway.show_json("2026-000001")["status"] == "acknowledged"

        answer(f"Desk <{desk}>", desk, "reassign general-office")
        moved = _answers(gateway, "2026-000001", 2)[-1]
        assert (moved["details"]["obeyed"], moved["details"]["authenticated"]) == (True, desk), moved
        assert gateway.show_json("2026-000001")["department"] == "general-office"
    finally:
        listener.stop()
        relay.stop()
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace('"xn--fsqu00a.xn--fiqs8s"]', '"例子.中国"]').replace(desk, "desk@例子.中国"))
    config = config_mod.load(gateway.config)
    assert (config.model.gateway.domains, config.model.smtp.auth_senders["clerk"]) == (
        ["example.org", "xn--fsqu00a.xn--fiqs8s"], ["李明@example.org", desk])
