"""Who may command a letter by mail, over the daemon's real SMTP listener with a real SMTP sink as
the relay: the forged answer of issue 13 refused, a signed reply address that counts only for its
letter, its recipient and its key's lifetime, and a loop marker nobody else can write."""
from __future__ import annotations

import email
import smtplib
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import dns_server as dns_fixtures
from conftest import Daemon, Gateway, Notify, outbound_settings, wait_for
from dns_server import DnsServer
from gateway import config as config_mod
from gateway.stages.tokens import loop_content, loop_marker
from smtp_sink import SmtpSink

dns_server = dns_fixtures.dns_server

pytestmark = pytest.mark.timeout(300)

RULES = """
rules:
  - name: complaints
    when: {keywords: [complaint]}
    set: {category: external.inquiry_complaint, department: business}
"""

# Retired keys stop counting at once, so that a rotation shows it without waiting for days;
# answers are authenticated by the organisation's MTA (a trusted Authentication-Results from a
# trusted relay, here the loopback client). The resolver is given by each test: a real one that
# publishes example.org's SPF and DMARC, or a closed port (every lookup a temporary error).
EXTRA = """
{outbound}
[replies]
previous_key_grace_days = 0

[trust]
trusted_authserv_ids = ["mx.example.org"]
trusted_relays = ["127.0.0.1"]
nameservers = ["{nameserver}"]
timeout_seconds = 0.5
lifetime_seconds = 1
"""
NO_DNS = "127.0.0.1:9"  # a closed port: every lookup fails at once


def send(gateway: Gateway, *, sender: str, subject: str, body: str, to: str = "gateway@example.org",
         mail_from: str | None = None, authenticated: bool = False, headers: dict[str, str] | None = None,
         rcpt: str | None = None) -> None:
    """One mail over a plain SMTP session, as anyone on the Internet can send it; `authenticated`:
    as the organisation's MTA relays a mail it authenticated (trusted_relays)."""
    message = EmailMessage()
    if authenticated:  # the MTA's stamp, which counts only because it comes from a trusted relay
        message["Authentication-Results"] = (f"mx.example.org; spf=pass smtp.mailfrom={sender}; "
                                             f"dmarc=pass header.from={sender.rpartition('@')[2]}")
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.time_ns()}@{sender.rpartition('@')[2]}>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(mail_from or sender, [rcpt or to], message.as_bytes())


def send_with_marker_of(gateway: Gateway, ours: EmailMessage, sender: str, subject: str, body: str) -> EmailMessage:
    """A new mail to sales@ bearing the Message-ID and X-Gateway-Loop of `ours`, a mail the
    gateway sent: sent over SMTP, and returned."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = "sales@example.org"
    mail["Subject"] = subject
    mail["Message-ID"] = ours["Message-ID"]
    mail["X-Gateway-Loop"] = ours["X-Gateway-Loop"]
    mail.set_content(body)
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(sender, ["sales@example.org"], mail.as_bytes())
    return mail


def answers(gateway: Gateway, number: str) -> list[dict[str, Any]]:
    return [e for e in gateway.show_json(number)["events"] if e["action"] == "answer"]  # type: ignore[index]


def wait_answers(gateway: Gateway, number: str, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(answers(gateway, number)) >= count, 30, f"{count} answer(s) on {number}")
    return answers(gateway, number)


def test_only_an_authenticated_entitled_sender_through_a_reply_address_signed_for_them_commands(
        tmp_path: Path, notify: Notify, sink: SmtpSink, dns_server: DnsServer) -> None:
    gateway = Gateway(tmp_path, rules=RULES,
                      extra=EXTRA.format(outbound=outbound_settings(sink.address), nameserver=dns_server.nameserver))
    daemon: Daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        for n in (1, 2):
            send(gateway, sender="alice@partner.example", to="sales@example.org", subject=f"A complaint {n}",
                 body="I want to complain about the delivery.\n")
        sink.wait_for(4)  # a notification to the owner and a receipt to the sender, each
        notes = {r.message["X-Gateway-Letter"]: r.message for r in sink.to("sales.desk@example.org")}
        first, second = notes["2026-000001"], notes["2026-000002"]
        assert first["Reply-To"] != second["Reply-To"]

        # The attack of issue 13: an owner's From, the number in the subject, a command.
        send(gateway, sender="sales.desk@example.org", mail_from="attacker@evil.example",
             subject="Re: [2026-000001] A complaint 1", body="reassign general-office\n")
        send(gateway, sender="office@example.org", mail_from="attacker@evil.example",
             subject="Re: [2026-000001] A complaint 1", body="done: all settled, we pay you double\n")
        # Even with the owner's real reply address (seen somewhere), unauthenticated it is nothing.
        send(gateway, sender="sales.desk@example.org", mail_from="attacker@evil.example",
             subject="Re: [2026-000001] A complaint 1", to=first["Reply-To"], body="done: closed by a stranger\n")
        refused = wait_answers(gateway, "2026-000001", 3)
        letter = gateway.show_json("2026-000001")
        assert (letter["status"], letter["department"]) == ("routed", "business")
        assert [a["details"]["obeyed"] for a in refused] == [False, False, False]
        assert all("is not authenticated" in a["details"]["refused"] for a in refused)
        assert [a["details"]["temperror"] for a in refused] == [False, False, False]
        assert "no reply token" in refused[0]["details"]["refused"]
        assert "office@example.org is not an owner of business" in refused[1]["details"]["refused"]
        assert "no reply token" not in refused[2]["details"]["refused"]  # its token was right; its sender not proven
        # The owner hears of a refused command on the letter once an hour, however many forged
        # answers (each with other bytes) arrive; the rest are counted. The letter's sender hears nothing.
        notices = [m for m in letter["outbox"] if m["kind"] == "refused-command"]  # type: ignore[union-attr]
        assert [m["recipient"] for m in notices] == ["sales.desk@example.org"]
        assert refused[0]["details"]["refusal_notice"] == ["sales.desk@example.org"]
        assert [a["details"].get("notice_suppressed") for a in refused[1:]] == [["sales.desk@example.org"]] * 2
        assert not any("refusal_notice" in a["details"] for a in refused[1:])
        wait_for(lambda: len(sink.to("sales.desk@example.org")) == 3, 30, "one notice beside two notifications")
        told = [r.message for r in sink.to("sales.desk@example.org") if r.message["X-Gateway-Letter"] == "2026-000001"
                and r.message["Reply-To"] is None]
        assert len(told) == 1 and "is not authenticated" in told[0].get_content()

        # A token for another letter, from the owner, authenticated: refused.
        send(gateway, sender="sales.desk@example.org", authenticated=True, to=first["Reply-To"],
             subject="Re: [2026-000002] A complaint 2", body="received\n")
        [other] = wait_answers(gateway, "2026-000002", 1)
        assert other["details"]["refused"] == ("the reply token is for letter 2026-000001, not 2026-000002: "
                                               "recorded, not obeyed")
        # The owner's token replayed by another sender, entitled and authenticated herself: refused.
        send(gateway, sender="business.head@example.org", authenticated=True, to=first["Reply-To"],
             subject="Re: [2026-000001] A complaint 1", body="received\n")
        replayed = wait_answers(gateway, "2026-000001", 4)[-1]
        assert replayed["details"]["refused"] == ("the reply token was not issued to business.head@example.org "
                                                  "for 2026-000001: recorded, not obeyed")
        assert replayed["details"]["notice_suppressed"] == ["sales.desk@example.org"]  # still within the hour
        assert (replayed["details"]["method"], replayed["details"]["temperror"]) == ("authentication-results", False)
        assert gateway.show_json("2026-000001")["status"] == "routed"

        # Her absence notice (RFC 3834), authenticated, through her reply address: recorded, never
        # obeyed, though its first line reads like a command.
        send(gateway, sender="sales.desk@example.org", authenticated=True, to=first["Reply-To"],
             subject="Auto: [2026-000001] A complaint 1", body="Received.\n\nI am away until Monday.\n",
             headers={"Auto-Submitted": "auto-replied", "Precedence": "bulk"})
        absent = wait_answers(gateway, "2026-000001", 5)[-1]
        assert (absent["details"]["command"], absent["details"]["obeyed"]) == (None, False)
        assert absent["details"]["automatic"] == "Auto-Submitted: auto-replied"
        assert gateway.show_json("2026-000001")["status"] == "routed"

        # The owner, authenticated, through her own reply address: obeyed (the subject need not say more).
        send(gateway, sender="sales.desk@example.org", authenticated=True, to=first["Reply-To"],
             subject="Re: your notification", body="received\n")
        obeyed = wait_answers(gateway, "2026-000001", 6)[-1]
        assert (obeyed["details"]["obeyed"], obeyed["details"]["authenticated"]) == (True, "sales.desk@example.org")
        assert gateway.show_json("2026-000001")["status"] == "acknowledged"

        # After a rotation the old key's addresses stop counting (grace 0 here); the new key's count.
        assert "is accepted for 0 more day(s)" in gateway.run("keys", "rotate").stdout
        send(gateway, sender="sales.desk@example.org", authenticated=True, to=second["Reply-To"],
             subject="Re: [2026-000002] A complaint 2", body="received\n")
        expired = wait_answers(gateway, "2026-000002", 2)[-1]
        assert "the reply token does not count: its key" in expired["details"]["refused"]
        assert "more than 0 day(s) ago" in expired["details"]["refused"]
        fresh = gateway.run("keys", "reply-address", "2026-000002", "sales.desk@example.org").stdout.strip()
        assert fresh != second["Reply-To"]
        send(gateway, sender="sales.desk@example.org", authenticated=True, to=fresh.upper(), rcpt=fresh,
             subject="Re: [2026-000002] A complaint 2", body="received\n")
        assert wait_answers(gateway, "2026-000002", 3)[-1]["details"]["obeyed"] is True
        assert gateway.show_json("2026-000002")["status"] == "acknowledged"
        listed = gateway.run("keys", "list").stdout
        assert "current" in listed and "expired" in listed

        time.sleep(1.0)  # anything more sent would arrive now
        to_sender = [r.message["Subject"] for r in sink.to("alice@partner.example")]
        assert len(to_sender) == 2 and all("2026-00000" in s and "办理结果" not in s for s in to_sender)  # receipts
        assert not sink.to("attacker@evil.example") and not sink.to("office@example.org")
    finally:
        daemon.stop()


def test_a_forged_loop_marker_suppresses_nothing_and_ours_still_stops_a_loop(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = Gateway(tmp_path, extra=EXTRA.format(outbound=outbound_settings(sink.address), nameserver=NO_DNS),
                      rules=RULES)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        # The public loop id, as every earlier gateway mail showed it, without a valid token.
        send(gateway, sender="alice@partner.example", to="sales@example.org", subject="A complaint",
             body="I want to complain.\n",
             headers={"X-Gateway-Loop": "gateway@example.org; kind=notification; token=" + "a" * 20})
        sink.wait_for(2)  # the owner notified, the sender receipted
        [forged] = gateway.list_json()
        assert "forged-loop-marker" in forged["flags"]
        assert [r.message["X-Gateway-Letter"] for r in sink.to("sales.desk@example.org")] == ["2026-000001"]
        [receipt] = [r.message for r in sink.to("alice@partner.example")]

        # The receipt's Message-ID and marker, both in the sender's hands, copied onto a new mail:
        # the marker verifies, but as a receipt's; the owners are told, only the receipt is spared.
        replay = send_with_marker_of(gateway, receipt, "alice@partner.example",
                                     "Another complaint, with a receipt's marker", "I want to complain again.\n")
        wait_for(lambda: len(sink.to("sales.desk@example.org")) == 2, 30, "the replayed letter's notification")
        replayed = gateway.show_json("2026-000002")
        assert "receipt-loop-marker" in replayed["flags"] and "forged-loop-marker" not in replayed["flags"]  # type: ignore[operator]
        [routed] = [e for e in replayed["events"] if e["action"] == "routed"]  # type: ignore[union-attr]
        assert "not_notified" not in routed["details"]
        [suppressed] = [e for e in replayed["events"] if e["action"] == "receipt-suppressed"]  # type: ignore[union-attr]
        assert "our own loop header" in suppressed["details"]["reason"]
        # The same marker relabelled as a notification's no longer verifies: forged, nothing spared.
        relabelled = receipt["X-Gateway-Loop"].replace("kind=receipt", "kind=notification")
        assert relabelled != receipt["X-Gateway-Loop"]
        del replay["X-Gateway-Loop"], replay["Subject"]
        replay["X-Gateway-Loop"] = relabelled
        replay["Subject"] = "A third complaint, relabelled"
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
            client.sendmail("alice@partner.example", ["sales@example.org"], replay.as_bytes())
        wait_for(lambda: len(sink.to("sales.desk@example.org")) == 3, 30, "the relabelled letter's notification")
        assert "forged-loop-marker" in gateway.show_json("2026-000003")["flags"]  # type: ignore[operator]

        # Our own notification come back: its marker verifies against its Message-ID; nobody is told again.
        message = EmailMessage()
        message["From"] = "alice@partner.example"
        message["To"] = "sales@example.org"
        message["Subject"] = "A complaint, come back"
        message["Message-ID"] = "<looped.1@example.org>"
        message.set_content("I want to complain.\n")
        message["X-Gateway-Loop"] = loop_marker(config_mod.load(gateway.config), "<looped.1@example.org>",
                                                kind="notification", content=loop_content(message.as_bytes()))
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
            client.sendmail("alice@partner.example", ["sales@example.org"], message.as_bytes())
        wait_for(lambda: len(gateway.list_json()) == 4, 30, "the looped letter")
        looped = gateway.show_json("2026-000004")
        [routed] = [e for e in looped["events"] if e["action"] == "routed"]  # type: ignore[union-attr]
        assert routed["details"]["not_notified"] == "the gateway's own mail came back (X-Gateway-Loop)"
        assert "forged-loop-marker" not in looped["flags"]  # type: ignore[operator]
        time.sleep(1.0)
        # Receipts: the first letter's, and the relabelled one's (its marker is forged); none to the replay or the loop.
        assert len(sink.to("alice@partner.example")) == 2 and len(sink.to("sales.desk@example.org")) == 3
        assert len(sink.received) == 5
    finally:
        daemon.stop()


def test_a_notifications_loop_marker_copied_onto_another_mail_hides_nothing(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    """Whoever has seen a notification (its owner, or anyone it was forwarded to) holds its loop
    marker and Message-ID. Copied onto a new mail, they must not make it pass for our own mail come
    back, which nobody is told of: the marker is signed over what the notification says too. The
    owners are notified, the letter is flagged; no receipt goes to it."""
    gateway = Gateway(tmp_path, extra=EXTRA.format(outbound=outbound_settings(sink.address), nameserver=NO_DNS),
                      rules=RULES)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        send(gateway, sender="alice@partner.example", to="sales@example.org", subject="A complaint",
             body="I want to complain.\n")
        [note] = [r.message for r in sink.wait_for(1, to="sales.desk@example.org")]
        copy = send_with_marker_of(gateway, note, "mallory@partner.example", "A complaint nobody should hear of",
                                   "I want to complain, quietly.\n")
        wait_for(lambda: len(sink.to("sales.desk@example.org")) == 2, 30, "the copy's notification")
        [copied] = [letter for letter in gateway.list_json() if letter["subject"] == copy["Subject"]]
        shown = gateway.show_json(str(copied["number"]))
        assert "copied-loop-marker" in shown["flags"] and "forged-loop-marker" not in shown["flags"]  # type: ignore[operator]
        [routed] = [e for e in shown["events"] if e["action"] == "routed"]  # type: ignore[union-attr]
        assert "not_notified" not in routed["details"] and routed["details"]["notify"], routed
        [suppressed] = [e for e in shown["events"] if e["action"] == "receipt-suppressed"]  # type: ignore[union-attr]
        assert "our own loop header" in suppressed["details"]["reason"]
        assert sink.to("mallory@partner.example") == []
    finally:
        daemon.stop()


def loop_back(gateway: Gateway, raw: bytes, footer: str = "", message_id: str | None = None) -> None:
    """Our notification sent on to the gateway's own address by an owner's forwarding rule (its
    Subject marked Fwd:, its other header fields kept), a relay appending `footer` to its text or
    giving it a Message-ID of its own."""
    message = email.message_from_bytes(raw, policy=policy.default)
    message.replace_header("Subject", f"Fwd: {message['Subject']}")
    if footer:
        text = message.get_body(("plain",))
        assert text is not None
        text.set_content(text.get_content() + footer)  # type: ignore[attr-defined]
    if message_id:
        message.replace_header("Message-ID", message_id)
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(str(message["To"]), ["sales@example.org"], message.as_bytes())


def notifications(sink: SmtpSink) -> list[bytes]:
    return [r.data for r in sink.wait_for(0) if "; kind=notification" in str(r.message["X-Gateway-Loop"])]


def routed_event(gateway: Gateway, number: str) -> tuple[list[str], dict[str, Any]]:
    shown = gateway.show_json(number)
    [routed] = [e for e in shown["events"] if e["action"] == "routed"]  # type: ignore[union-attr]
    return shown["flags"], routed["details"]  # type: ignore[return-value]


@pytest.mark.parametrize("relay", ["footer", "message-id"])
def test_our_notification_come_back_changed_again_and_again_stops_after_one_round(
        tmp_path: Path, notify: Notify, sink: SmtpSink, relay: str) -> None:
    """An owner's rule sends every notification back to the gateway's address, and a relay on the
    way appends its disclaimer: the mail no longer says what we signed, so it is taken for a copied
    marker and its owners are told. What they are told carries after=copied under its MAC, and that
    come back changed again is flagged but told to nobody: the loop ends after one round. A relay
    that gives each mail a new Message-ID leaves a marker that verifies against nothing (forged);
    the mail about that letter carries after=forged under a MAC over its letter number, and the
    loop ends after one round as well."""
    flag, after, why = (("copied-loop-marker", "; after=copied;", "copied loop marker") if relay == "footer"
                        else ("forged-loop-marker", "; after=forged; letter=", "forged loop marker"))
    rewritten = iter(range(1, 100))
    gateway = Gateway(tmp_path, extra=EXTRA.format(outbound=outbound_settings(sink.address), nameserver=NO_DNS),
                      rules=RULES)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        send(gateway, sender="alice@partner.example", to="sales@example.org", subject="A complaint",
             body="I want to complain.\n")
        wait_for(lambda: len(notifications(sink)) == 1, 30, "the first notification")
        looped = 0
        for _ in range(5):  # an endless loop would still be going after five rounds
            sent = notifications(sink)
            if looped == len(sent):
                break
            expected = len(gateway.list_json()) + len(sent) - looped
            for raw in sent[looped:]:
                if relay == "footer":
                    loop_back(gateway, raw, footer="\n-- \nThis e-mail and its attachments are confidential.\n")
                else:
                    loop_back(gateway, raw, message_id=f"<relay-{next(rewritten)}@mx.example.org>")
            looped = len(sent)
            wait_for(lambda n=expected: len(gateway.list_json()) == n, 30, "the looped mail registered")
            numbers = sorted(str(letter["number"]) for letter in gateway.list_json())
            told = sum(len(routed_event(gateway, n)[1].get("notify", [])) for n in numbers)
            wait_for(lambda n=told: len(notifications(sink)) == n, 30, f"{told} notification(s)")
        numbers = sorted(str(letter["number"]) for letter in gateway.list_json())
        assert len(numbers) == 3 and len(notifications(sink)) == 2, (numbers, len(notifications(sink)))
        (_, first), (flags2, second), (flags3, third) = [routed_event(gateway, n) for n in numbers]
        assert first["notify"] and flag not in gateway.show_json(numbers[0])["flags"]  # type: ignore[operator]
        assert flag in flags2 and second["notify"] and "not_notified" not in second
        assert flag in flags3 and not third["notify"] and why in third["not_notified"]
        assert after in str(email.message_from_bytes(notifications(sink)[1])["X-Gateway-Loop"])
    finally:
        daemon.stop()


def test_an_owners_reply_that_dns_could_not_verify_is_refused_as_such_not_as_forged(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    """A DNS failure leaves the sender unproven, not disproven: the refusal says to send again."""
    gateway = Gateway(tmp_path, extra=EXTRA.format(outbound=outbound_settings(sink.address), nameserver=NO_DNS),
                      rules=RULES)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        send(gateway, sender="alice@partner.example", to="sales@example.org", subject="A complaint",
             body="I want to complain.\n")
        [note] = [r.message for r in sink.wait_for(1, to="sales.desk@example.org")]
        send(gateway, sender="sales.desk@example.org", to=note["Reply-To"], subject="Re: your notification",
             body="received\n")
        [answer] = wait_answers(gateway, "2026-000001", 1)
        assert answer["details"]["obeyed"] is False
        assert (answer["details"]["temperror"], answer["details"]["method"]) == (True, None)
        assert answer["details"]["refused"] == ("the sender sales.desk@example.org could not be verified "
                                                "(DNS temporary error): send again: recorded, not obeyed")
        assert gateway.show_json("2026-000001")["status"] == "routed"
    finally:
        daemon.stop()


def test_the_reply_keys_are_made_at_first_start_and_a_damaged_file_stops_the_start(
        tmp_path: Path, notify: Notify) -> None:
    """The secret exists before the first notification is composed; a damaged keys file is refused at
    start, naming the file, rather than failing each mail later."""
    gateway = Gateway(tmp_path)
    keys = gateway.state / "keys" / "replies.json"
    assert not keys.exists()
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    assert keys.exists() and oct(keys.stat().st_mode & 0o777) == "0o600"
    daemon.stop()
    keys.write_text("{not json")
    proc = gateway.run("run", check=False, timeout=60)
    assert proc.returncode == 1
    assert f"cannot start: the reply keys: {keys}" in proc.stderr


def test_keys_rotate_on_a_fresh_installation_makes_a_key_and_returns(tmp_path: Path) -> None:
    """Rotating before any key exists once waited for ever on its own lock."""
    gateway = Gateway(tmp_path)
    keys = gateway.state / "keys" / "replies.json"
    assert not keys.exists()
    started = time.monotonic()
    proc = gateway.run("keys", "rotate", timeout=30)
    assert time.monotonic() - started < 20
    assert proc.stdout.startswith("new key ") and keys.exists()
    listed = gateway.run("keys", "list", "--json").stdout
    assert '"current"' in listed
