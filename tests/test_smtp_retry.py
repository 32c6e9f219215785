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


@pytest.mark.parametrize("point", [
    "before-commit",  # durable in the spool, not yet registered: the restarted daemon registers it
    "smtp-before-reply",  # registered, the 250 not yet sent
])
def test_a_retry_after_a_crash_before_250_is_recorded_on_the_first_letter(gateway: Gateway, notify: Notify,
                                                                         point: str) -> None:
    """SIGKILL between the spool and the 250: the client's retry (another session, so another Received:
    header) is recognised as the same message, recorded as an event on the one letter. The same bytes
    from another envelope are recorded too, the event naming that envelope."""
    message = make_message(1, subject="Sent twice")
    crashing = start(gateway, notify, GATEWAY_CRASH_AT=point)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(gateway, message, "alice@partner.example", "liaison@example.org")
    assert crashing.wait() == -9, crashing.output()
    daemon = start(gateway, notify)
    try:
        # The item the crash left in the spool is registered first (an MTA retries minutes later).
        wait_for(lambda: gateway.spool_files("new") == gateway.spool_files("work") == [], 30,
                 "the spool to be empty")
        # What an MTA does with a message it got no answer for: the same bytes, the same envelope.
        code, reply = send(gateway, message, "alice@partner.example", "liaison@example.org")
        assert (code, reply) == (250, b"2.0.0 OK already registered as 2026-000001")
        code, reply = send(gateway, message, "bob@other.example", "sales@example.org")
        assert (code, reply) == (250, b"2.0.0 OK already registered as 2026-000001")
        [letter] = gateway.list_json()
        detail = gateway.show_json(str(letter["number"]))
    finally:
        daemon.stop()
    assert detail["subject"] == "Sent twice" and detail["envelope"]["mail_from"] == "alice@partner.example"
    arrivals = [e["details"] for e in detail["events"] if e["action"] == "duplicate-arrival"]
    assert [(a["retry"], a["envelope"]["mail_from"], a["envelope"]["rcpt_to"]) for a in arrivals] == [
        (True, "alice@partner.example", ["liaison@example.org"]),
        (False, "bob@other.example", ["sales@example.org"]),
    ]
    assert [e["action"] for e in detail["events"]].count("registered") == 1
