"""Auto-reply storms: an auto-responder on the relay's far side that answers every receipt from a
new address (VERP), against the receipt caps per domain and per hour and the recognition of an
answer to our own receipt."""
from __future__ import annotations

import smtplib
import sqlite3
import threading
import time
from collections.abc import Iterator
from email.utils import make_msgid

import pytest

from conftest import Daemon, Gateway, Notify, make_message, outbound_settings, wait_for
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(120)

STORM_SECONDS = 20.0  # the responder answers for this long at most

EXTRA = """
max_connections_per_minute = 0

{outbound}
[receipts]
per_domain_per_hour = 4
per_hour = 10

[trust]
# A closed port: every lookup fails at once, and a mail is not held up by DNS.
nameservers = ["127.0.0.1:9"]
timeout_seconds = 0.05
lifetime_seconds = 0.1
check_deadline_seconds = 0.2
"""


class Responder:
    """Answers every receipt the relay gets for its domains, each time from a new address r-N@
    (VERP), until stopped or STORM_SECONDS have passed. `quoting` domains say what they answer
    (In-Reply-To and References); the others say nothing of it."""

    def __init__(self, sink: SmtpSink, smtp_port: int, domains: dict[str, bool]):
        self.sink, self.smtp_port, self.domains = sink, smtp_port, domains
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Responder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline, seen = time.monotonic() + STORM_SECONDS, 0
        while not self._stop.wait(0.05) and time.monotonic() < deadline:
            with self.sink.lock:
                new, seen = self.sink.received[seen:], len(self.sink.received)
            for mail in new:
                domain = mail.rcpt_tos[0].rpartition("@")[2]
                if domain not in self.domains:
                    continue
                self.sent += 1
                headers = [f"From: Auto Responder <r-{self.sent}@{domain}>", "To: liaison@example.org",
                           f"Subject: Re: {mail.message['Subject']}", f"Message-ID: {make_msgid(domain=domain)}",
                           "Date: Mon, 23 Nov 2026 10:00:00 +0800"]
                if self.domains[domain]:
                    headers += [f"In-Reply-To: {mail.message['Message-ID']}",
                                f"References: {mail.message['Message-ID']}"]
                raw = ("\r\n".join(headers) + "\r\n\r\nI am away; your message will be read later.\r\n").encode()
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
                    client.sendmail(f"r-{self.sent}@{domain}", ["liaison@example.org"], raw)


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Daemon, SmtpSink]]:
    tmp = tmp_path_factory.mktemp("storm")
    sink = SmtpSink().start()
    gateway = Gateway(tmp, extra=EXTRA.format(outbound=outbound_settings(sink.address)))
    notify = Notify(tmp / "notify.sock")
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        yield gateway, daemon, sink
    finally:
        daemon.stop()
        notify.close()
        sink.stop()


def send(gateway: Gateway, sender: str, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(sender, ["liaison@example.org"], make_message(n, sender=sender))


def letters_from(db: sqlite3.Connection, domain: str) -> list[tuple[int, str]]:
    return db.execute("SELECT id, sender_address FROM letters WHERE sender_address LIKE ? ORDER BY id",
                      (f"%@{domain}",)).fetchall()


def receipt_decided(db: sqlite3.Connection, letter_id: int) -> str | None:
    """'queued', the reason it was suppressed, or None while undecided."""
    row = db.execute("SELECT action, json_extract(details, '$.reason') FROM events WHERE letter_id = ? "
                     "AND action IN ('receipt-queued', 'receipt-suppressed')", (letter_id,)).fetchone()
    return None if row is None else ("queued" if row[0] == "receipt-queued" else str(row[1]))


def outbox_empty(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] == 0


def test_a_verp_auto_responder_is_stopped_by_the_caps_and_answers_to_receipts_get_none(
        storm: tuple[Gateway, Daemon, SmtpSink]) -> None:
    gateway, daemon, sink = storm
    responder = Responder(sink, gateway.smtp_port, {"quoting.example": True, "verp.example": False}).start()
    db = sqlite3.connect(gateway.state / "registry.sqlite3", timeout=30)
    try:
        send(gateway, "alice@quoting.example", 1)
        send(gateway, "bob@verp.example", 2)

        # The answer to a receipt names it: registered, and answered by no receipt.
        def quoting_settled() -> bool:
            letters = letters_from(db, "quoting.example")
            return len(letters) == 2 and receipt_decided(db, letters[1][0]) is not None
        wait_for(quoting_settled, 30, "the answer to the receipt registered")
        first, answer = letters_from(db, "quoting.example")
        assert receipt_decided(db, first[0]) == "queued"
        assert receipt_decided(db, answer[0]) == "an answer to our own mail (In-Reply-To/References)"

        # The silent one: a receipt to each new address until the domain's cap (4 in the hour).
        def verp_settled() -> bool:
            letters = letters_from(db, "verp.example")
            return bool(letters) and receipt_decided(db, letters[-1][0]) not in (None, "queued")
        wait_for(verp_settled, STORM_SECONDS + 10, "the storm stopped by the domain's cap")
        letters = letters_from(db, "verp.example")
        assert [receipt_decided(db, i) for i, _ in letters[:4]] == ["queued"] * 4
        assert len(letters) == 5 and "cap 4, [receipts] per_domain_per_hour" in str(receipt_decided(db, letters[4][0]))
        wait_for(lambda: outbox_empty(db), 20, "the outbox delivered")
        assert len(sink.to("alice@quoting.example")) == 1
        assert sum(1 for r in sink.received if r.rcpt_tos[0].endswith("@verp.example")) == 4
        assert "ALERT receipts suppressed: 4 receipt(s) to verp.example in the last hour" in daemon.output()

        # Then the hourly cap for everyone: 5 receipts so far, 5 more of 8 senders, then none.
        for n in range(8):
            send(gateway, f"sender@domain-{n}.example", 10 + n)
        wait_for(lambda: all(receipt_decided(db, i) for n in range(8)
                             for i, _ in letters_from(db, f"domain-{n}.example")) and
                 sum(len(letters_from(db, f"domain-{n}.example")) for n in range(8)) == 8, 30, "8 letters")
        decided = [receipt_decided(db, i) for n in range(8) for i, _ in letters_from(db, f"domain-{n}.example")]
        assert decided.count("queued") == 5, decided
        assert all("cap 10, [receipts] per_hour" in str(d) for d in decided if d != "queued"), decided
        assert responder.sent == 5  # one answer to alice's receipt, four to bob's domain
        wait_for(lambda: outbox_empty(db), 20, "the outbox delivered")
        assert "ALERT receipts suppressed: 10 receipt(s) in the last hour" in daemon.output()
        # One alert per cap, not one per receipt it suppressed.
        assert daemon.output().count("ALERT receipts suppressed") == 2
    finally:
        responder.stop()
        db.close()
