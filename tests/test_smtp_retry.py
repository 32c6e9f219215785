"""An SMTP client's retry after the gateway died between the spool and its 250: the same letter."""
from __future__ import annotations

import smtplib

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for

pytestmark = pytest.mark.timeout(300)


def start(gateway: Gateway, notify: Notify, **env: str) -> Daemon:
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path), **env)
    notify.wait_for("READY=1")
    return daemon


def send(gateway: Gateway, message: bytes, mail_from: str, rcpt_to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
        c.ehlo()
        assert c.mail(mail_from)[0] == 250
        assert c.rcpt(rcpt_to)[0] == 250
        return c.data(message)


def test_a_retry_after_a_crash_before_250_is_recorded_on_the_first_letter(gateway: Gateway, notify: Notify) -> None:
    """SIGKILL between the spool and the 250, once before the registry commit and once after it: the
    client's retry (another session, so another Received: header) is recognised as the same message
    and recorded as an event on its one letter. The same bytes from another envelope are recorded
    too, the event naming that envelope."""
    first, second = make_message(1, subject="Sent before the commit"), make_message(2, subject="Sent after it")
    # Durable in the spool, not registered: the next daemon registers it from the spool.
    crashing = start(gateway, notify, GATEWAY_CRASH_AT="before-commit")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(gateway, first, "alice@partner.example", "liaison@example.org")
    assert crashing.wait() == -9, crashing.output()
    # Registered, the 250 not yet sent.
    crashing = start(gateway, notify, GATEWAY_CRASH_AT="smtp-before-reply")
    wait_for(lambda: gateway.spool_files("new") == gateway.spool_files("work") == [], 30, "the spool to be empty")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(gateway, second, "alice@partner.example", "liaison@example.org")
    assert crashing.wait() == -9, crashing.output()
    daemon = start(gateway, notify)
    try:
        # What an MTA does with a message it got no answer for: the same bytes, the same envelope.
        for message, number in ((first, "2026-000001"), (second, "2026-000002")):
            code, reply = send(gateway, message, "alice@partner.example", "liaison@example.org")
            assert (code, reply) == (250, f"2.0.0 OK already registered as {number}".encode())
        code, reply = send(gateway, first, "bob@other.example", "sales@example.org")
        assert (code, reply) == (250, b"2.0.0 OK already registered as 2026-000001")
        assert sorted((str(letter["number"]), letter["subject"]) for letter in gateway.list_json()) == [
            ("2026-000001", "Sent before the commit"), ("2026-000002", "Sent after it")]
        details = [gateway.show_json(number) for number in ("2026-000001", "2026-000002")]
    finally:
        daemon.stop()

    def arrivals(detail: dict) -> list[tuple[bool, str, list[str]]]:
        assert [e["action"] for e in detail["events"]].count("registered") == 1
        return [(e["details"]["retry"], e["details"]["envelope"]["mail_from"], e["details"]["envelope"]["rcpt_to"])
                for e in detail["events"] if e["action"] == "duplicate-arrival"]
    assert arrivals(details[0]) == [(True, "alice@partner.example", ["liaison@example.org"]),
                                    (False, "bob@other.example", ["sales@example.org"])]
    assert arrivals(details[1]) == [(True, "alice@partner.example", ["liaison@example.org"])]
