"""Routing and forwarding, end to end: SMTP in, rules, the outbox, and a real SMTP sink as the relay."""
from __future__ import annotations

import email
import json
import os
import signal
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for, write_messages
from gateway import config as config_mod
from gateway.config import Config
from gateway.stages.tokens import check_reply_token, find_reply_tokens, loop_content, loop_marker, loop_marker_state
from smtp_sink import Received, SmtpSink

pytestmark = pytest.mark.timeout(240)

RULES = """
rules:
  - name: confidential
    when: {subject: ["机密", confidential]}
    set: {confidentiality: confidential, deadline_days: 3}
    stop: false
  - name: complaints
    when: {keywords: ["投诉", complaint]}
    set: {category: external.inquiry_complaint, department: customer-service}
  - name: business
    when: {recipient_department: [business]}
    set: {category: external.business, department: business}
"""

SERVICE = """
[[departments]]
id = "customer-service"
name = "Customer Service"
owners = ["service.desk@example.org", "service.two@example.org"]
head = "service.head@example.org"
addresses = ["service@example.org"]
"""


def outbound(relay: str, extra: str = "") -> str:
    return f"""
[outbound]
relay = "{relay}"
from_address = "gateway@example.org"
from_name = "Example Org Gateway"
poll_seconds = 0.2
retry_min_seconds = 0.3
retry_max_seconds = 1
{extra}
[receipts]
per_sender_per_day = 3
"""


# Answers by mail count only when authenticated: here by an Authentication-Results header of the
# organisation's own MTA, relaying from 127.0.0.1. No DNS is asked (a closed port answers nothing, at once).
TRUST = """
[trust]
trusted_authserv_ids = ["mx.example.org"]
trusted_relays = ["127.0.0.1"]
nameservers = ["127.0.0.1:9"]
timeout_seconds = 0.2
lifetime_seconds = 0.5
"""


def configure(tmp_path: Path, relay: str, *, rules: str = RULES, extra: str = "", registry_url: str = "") -> Gateway:
    return Gateway(tmp_path, registry_url=registry_url, extra=outbound(relay, extra) + TRUST + SERVICE, rules=rules)


def loaded(gateway: Gateway) -> Config:
    return config_mod.load(gateway.config)


def start(gateway: Gateway, notify: Notify) -> Daemon:
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    return daemon


def send(gateway: Gateway, raw: bytes, *, mail_from: str = "alice@partner.example",
         to: tuple[str, ...] = ("liaison@example.org",)) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(mail_from, list(to), raw)


def complaint(n: int = 1, *, subject: str = "A complaint about order 4711",
              sender: str = "Alice Partner <alice@partner.example>", headers: dict[str, str] | None = None,
              to: str = "liaison@example.org") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<c{n}.{time.time_ns()}@partner.example>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(f"Dear team,\nthe delivery {n} was late and I want to complain.\nAlice\n")
    message.add_attachment(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", maintype="application",
                           subtype="pdf", filename="delivery-note.pdf")
    return message.as_bytes()


def by_kind(received: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {"notification": [], "receipt": []}
    for r in received:
        out["receipt" if r.message["Auto-Submitted"] == "auto-replied" else "notification"].append(r)
    return out


def outbox(gateway: Gateway, *args: str) -> list[dict]:
    return json.loads(gateway.run("outbox", "list", "--json", *args).stdout)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_routed_letter_notifies_every_owner_and_receipts_the_sender(
        tmp_path: Path, notify: Notify, sink: SmtpSink, backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else ""
    gateway = configure(tmp_path, sink.address, registry_url=url)
    daemon = start(gateway, notify)
    try:
        raw = complaint()
        send(gateway, raw)
        mails = by_kind(sink.wait_for(3))
        [letter] = gateway.list_json()
        number = letter["number"]
        assert (letter["department"], letter["category"], letter["status"]) == (
            "customer-service", "external.inquiry_complaint", "routed")

        notes = mails["notification"]
        assert sorted(r.rcpt_tos[0] for r in notes) == ["service.desk@example.org", "service.two@example.org"]
        for r in notes:
            m = r.message
            assert r.mail_from == "gateway@example.org" and len(r.rcpt_tos) == 1
            assert m["Subject"] == f"[{number}] A complaint about order 4711"
            assert m["Auto-Submitted"] == "auto-generated"
            assert m["X-Gateway-Loop"].strip().startswith("gateway@example.org; kind=notification; ")
            assert loop_marker_state(loaded(gateway), {"x-gateway-loop": [m["X-Gateway-Loop"]],
                                                       "message-id": [m["Message-ID"]]},
                                     content=loop_content(r.data)) == "ours"
            [token] = find_reply_tokens(loaded(gateway), [m["Reply-To"]])
            assert check_reply_token(loaded(gateway), token, number, r.rcpt_tos[0]) is None
            assert m["X-Gateway-Letter"] == number and m["To"] == r.rcpt_tos[0]
            body = m.get_body(("plain",)).get_content()
            assert f"Letter {number} was routed to Customer Service." in body
            assert "rule 'complaints'" in body and "I want to complain" in body
            assert "delivery-note.pdf (application/pdf" in body
            [original] = [p for p in m.iter_attachments() if p.get_content_type() == "message/rfc822"]
            inner = original.get_content()
            assert inner["Message-ID"] == email_id(raw) and inner["Subject"] == "A complaint about order 4711"
        assert notes[0].message["Message-ID"] != notes[1].message["Message-ID"]

        [receipt] = mails["receipt"]
        m = receipt.message
        assert receipt.rcpt_tos == ["alice@partner.example"] and receipt.mail_from == "gateway@example.org"
        assert m["Auto-Submitted"] == "auto-replied" and m["In-Reply-To"] == email_id(raw)
        assert number in m["Subject"] and number in m.get_content()
        assert "Example Org Gateway" in m.get_content()

        detail = wait_for(lambda: (d := gateway.show_json(number)) and
                          sum(e["action"].endswith("-sent") for e in d["events"]) == 3 and d, 20, "sent events")
        actions = [e["action"] for e in detail["events"]]
        assert actions[:5] == ["received", "registered", "classified", "routed", "receipt-queued"]
        assert sorted(a for a in actions if a.endswith("-sent")) == ["notification-sent"] * 2 + ["receipt-sent"]
        assert {m["status"] for m in detail["outbox"]} == {"sent"}
        assert "rule 'complaints'" in gateway.run("letters", "show", number).stdout
    finally:
        daemon.stop()


def email_id(raw: bytes) -> str:
    for line in raw.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


def test_a_confidential_letters_notification_carries_no_content(tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        send(gateway, complaint(subject="机密：关于合同纠纷的投诉"))
        mails = by_kind(sink.wait_for(3))
        [letter] = gateway.list_json()
        for r in mails["notification"]:
            m = r.message
            assert m["Subject"] == f"[{letter['number']}] Confidential letter"
            assert not m.is_multipart() and not list(m.iter_attachments())
            text = m.get_content()
            assert letter["number"] in text and "alice@partner.example" in text and "Deadline:" in text
            assert "合同" not in r.data.decode(errors="replace") and "complain" not in text
            assert "delivery-note" not in text
    finally:
        daemon.stop()


def test_4xx_is_retried_5xx_is_dead_lettered_and_a_dead_letter_can_be_queued_again(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    sink.rcpt_answer = "451 4.3.0 Try again later"
    daemon = start(gateway, notify)
    try:
        send(gateway, make_message(1, to="sales@example.org"), to=("sales@example.org",))
        wait_for(lambda: any(m["attempts"] >= 2 for m in outbox(gateway)), 30, "a second attempt")
        assert "451 4.3.0 Try again later" in outbox(gateway)[0]["last_error"]
        assert sink.received == []
        sink.accept()
        sink.wait_for(2)  # the notification and the receipt
        assert {m["status"] for m in outbox(gateway)} == {"sent"}

        sink.data_answer = "554 5.7.1 Message refused"
        send(gateway, make_message(2, to="sales@example.org", sender="bob@other.example"), to=("sales@example.org",))
        wait_for(lambda: len(outbox(gateway, "--status", "dead")) == 2, 30, "two dead letters")
        dead = outbox(gateway, "--status", "dead")
        assert all("554 5.7.1 Message refused" in m["last_error"] and m["attempts"] == 1 for m in dead)
        log = daemon.output()
        assert "ALERT outbox: notification" in log and "dead-lettered: relay answered 554" in log
        number = gateway.list_json()[1]["number"]
        assert "notification-dead-lettered" in [e["action"] for e in gateway.show_json(number)["events"]]
        assert gateway.run("outbox", "retry", "999", check=False).returncode == 1
        state = json.loads(gateway.run("status", "--json", check=False).stdout)["outbox"]
        assert (state["dead"], state["sent"], state["relay"]) == (2, 2, sink.address)
        shown = gateway.run("status", check=False)
        assert "outbox: 0 pending, 2 dead-lettered, 2 sent" in shown.stdout
        assert shown.returncode == 1 and "2 mail(s) dead-lettered (gateway outbox list --status dead)" in shown.stdout

        sink.accept()
        gateway.run("outbox", "retry", *(str(m["id"]) for m in dead))
        sink.wait_for(4)
        assert {m["status"] for m in outbox(gateway)} == {"sent"}
        assert "mail-requeued" in [e["action"] for e in gateway.show_json(number)["events"]]
    finally:
        daemon.stop()


def test_a_relay_refusing_the_gateway_itself_dead_letters_nothing(tmp_path: Path, notify: Notify,
                                                                   sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    sink.mail_answer = "553 5.7.1 Sender address rejected: not owned by user"
    daemon = start(gateway, notify)
    try:
        send(gateway, make_message(1, to="sales@example.org"), to=("sales@example.org",))
        wait_for(lambda: all(m["attempts"] >= 2 for m in outbox(gateway)), 30, "retries")
        assert {m["status"] for m in outbox(gateway)} == {"pending"}
        assert "ALERT outbox: relay refused the sender gateway@example.org: 553" in daemon.output()
        sink.accept()
        sink.wait_for(2)
        wait_for(lambda: {m["status"] for m in outbox(gateway)} == {"sent"}, 30, "delivery")
    finally:
        daemon.stop()


def test_mail_not_delivered_in_time_is_dead_lettered(tmp_path: Path, notify: Notify) -> None:
    closed = SmtpSink()  # a port where nothing listens: every attempt is a connection error
    gateway = configure(tmp_path, closed.address, extra="give_up_hours = 0.0005\n")
    daemon = start(gateway, notify)
    try:
        send(gateway, make_message(1, to="sales@example.org"), to=("sales@example.org",))
        wait_for(lambda: len(outbox(gateway, "--status", "dead")) == 2, 30, "dead letters after the time allowed")
        dead = outbox(gateway, "--status", "dead")
        assert all("not delivered within 0.0005 hours" in m["last_error"] and "Connection refused" in m["last_error"]
                   for m in dead)
        assert "ALERT outbox" in daemon.output()
    finally:
        daemon.stop()


def test_mail_queued_in_the_outbox_survives_a_crash_and_goes_out_after_restart(tmp_path: Path, notify: Notify) -> None:
    sink = SmtpSink()  # not started yet: the relay is down
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        send(gateway, complaint())
        wait_for(lambda: len(outbox(gateway)) == 3 and all(m["attempts"] >= 1 for m in outbox(gateway)), 30,
                 "three failed attempts")
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    sink.start()
    try:
        daemon = start(gateway, notify)
        try:
            got = sink.wait_for(3)
            time.sleep(1.0)  # anything sent twice would arrive now
            assert len(sink.received) == 3 and len(got) == 3
            assert {m["status"] for m in outbox(gateway)} == {"sent"}
        finally:
            daemon.stop()
    finally:
        sink.stop()


AUTOMATIC = [
    ("Auto-Submitted", {"Auto-Submitted": "auto-replied"}, "alice@partner.example"),
    ("Precedence", {"Precedence": "bulk"}, "alice@partner.example"),
    ("List-Id", {"List-Id": "<news.partner.example>"}, "alice@partner.example"),
    ("X-Auto-Response-Suppress", {"X-Auto-Response-Suppress": "All"}, "alice@partner.example"),
    ("X-Gateway-Loop", {"X-Gateway-Loop": "signed"}, "alice@partner.example"),  # signed as we sign ours
    ("null sender", {}, ""),
    ("mailer-daemon", {}, "MAILER-DAEMON@partner.example"),
]


def test_no_receipt_where_rfc_3834_says_not_and_at_most_n_per_sender_a_day(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        for n, (_, headers, sender) in enumerate(AUTOMATIC):
            raw = complaint(n, headers=headers, sender=f"Robot <{sender or 'alice@partner.example'}>"
                            if sender != "MAILER-DAEMON@partner.example" else sender)
            if "X-Gateway-Loop" in headers:  # our own mail come back: its marker verifies
                message_id = email.message_from_bytes(raw)["Message-ID"]
                marker = loop_marker(loaded(gateway), message_id, kind="notification", content=loop_content(raw))
                raw = raw.replace(b"X-Gateway-Loop: signed", f"X-Gateway-Loop: {marker}".encode())
            send(gateway, raw, mail_from=sender)
        for n in range(5):  # five letters from one person: three receipts
            send(gateway, complaint(100 + n, sender="Carol <carol@customer.example>"),
                 mail_from="carol@customer.example")
        send(gateway, complaint(200, sender="Dan <dan@example.org>"), mail_from="dan@example.org")  # internal
        total = len(AUTOMATIC) + 5 + 1 - 1  # our own mail coming back is not forwarded again
        wait_for(lambda: len(by_kind(sink.received)["notification"]) == 2 * total, 60, "every notification")
        time.sleep(1.0)
        receipts = by_kind(sink.received)["receipt"]
        assert sorted(r.rcpt_tos[0] for r in receipts) == ["carol@customer.example"] * 3
        reasons = []
        for letter in gateway.list_json():
            events = gateway.show_json(str(letter["number"]))["events"]
            reasons += [e["details"]["reason"] for e in events if e["action"] == "receipt-suppressed"]
        for why in ("Auto-Submitted: auto-replied", "Precedence: bulk", "mailing list (list-id)",
                    "X-Auto-Response-Suppress: all", "our own loop header", "null envelope sender",
                    "robot address", "internal sender"):
            assert any(why in r for r in reasons), (why, reasons)
        assert sum("receipt(s) to this sender in 24 hours (cap 3)" in r for r in reasons) == 2
        looped = [e["details"] for letter in gateway.list_json()
                  for e in gateway.show_json(str(letter["number"]))["events"] if e["action"] == "routed"
                  and e["details"].get("not_notified")]
        assert [(d["notify"], d["not_notified"]) for d in looped] == [
            ([], "the gateway's own mail came back (X-Gateway-Loop)")]
    finally:
        daemon.stop()


def test_nothing_from_an_incoming_message_can_inject_a_header(tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        hostile_subject = b"Subject: =?utf-8?q?complaint=0D=0ABcc:_victim@evil.example=0D=0A=0D=0Abody?=\r\n"
        # A display name smuggling a header: the sender cannot be read safely, so it gets no receipt.
        send(gateway, b"From: =?utf-8?q?Eve=0D=0ABcc:_victim@evil.example?= <eve@partner.example>\r\n"
                      b"To: liaison@example.org\r\n" + hostile_subject +
                      b"Message-ID: <a@evil.example>\r\n\r\nInjected\r\n", mail_from="eve@partner.example")
        send(gateway, b"From: Eve <eve@partner.example>\r\nTo: liaison@example.org\r\n" + hostile_subject +
                      b"Message-ID: <a@evil.example>\r\n\tBcc: x@evil.example\r\n\r\nInjected again\r\n",
             mail_from="eve@partner.example")
        received = sink.wait_for(6)  # two notifications and a receipt (to the envelope sender) each
        time.sleep(0.5)
        assert len(sink.received) == 6
        for r in received:
            assert r.rcpt_tos in (["service.desk@example.org"], ["service.two@example.org"], ["eve@partner.example"])
            head = r.data.split(b"\r\n\r\n", 1)[0]
            assert b"\r\nBcc:" not in head and b"\nBcc:" not in head
            m = r.message
            assert "Bcc" not in m and "\n" not in str(m["Subject"]) and "\r" not in str(m["Subject"])
            assert len(m.get_all("To")) == 1 and len(m.get_all("Subject")) == 1
        mails = by_kind(received)
        assert len(mails["receipt"]) == 2
        assert {r.message["In-Reply-To"] for r in mails["receipt"]} == {"<a@evil.example>"}  # the id, nothing after
        note = mails["notification"][0].message
        assert "Bcc: victim@evil.example" in note["Subject"]  # kept as one harmless line
    finally:
        daemon.stop()


def test_a_broken_rules_file_is_refused_on_reload_and_the_previous_rules_stay(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        gateway.rules.write_text(RULES + "  - name: broken\n    when: {subjct: [x]}\n    set: {department: business}\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.output(), 20, "the refusal")
        [line] = [text for text in daemon.output().splitlines() if "reload refused" in text]
        assert f"{gateway.rules}:14: rules[3].when.subjct: unknown condition" in line
        send(gateway, complaint(1))
        wait_for(lambda: len(gateway.list_json()) == 1, 20, "a letter")
        assert gateway.list_json()[0]["department"] == "customer-service"  # the previous rules

        gateway.rules.write_text(RULES.replace("department: customer-service", "department: business"))
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.output().count("configuration reloaded") >= 1, 20, "the reload")
        send(gateway, complaint(2))
        wait_for(lambda: len(gateway.list_json()) == 2, 20, "a second letter")
        assert gateway.list_json()[1]["department"] == "business"  # the helper process got the new rules
    finally:
        daemon.stop()


def test_replay_lists_the_letters_new_rules_would_change_and_changes_nothing(tmp_path: Path) -> None:
    gateway = configure(tmp_path, "")
    gateway.run("ingest", *write_messages(tmp_path, (
        make_message(n, subject=subject, to=to)
        for n, (subject, to) in enumerate([("A complaint", "liaison@example.org"), ("Order", "sales@example.org"),
                                           ("Hello", "liaison@example.org")]))))
    before = gateway.list_json()
    gateway.rules.write_text(RULES.replace("department: customer-service", "department: business")
                             + "  - name: greetings\n    when: {subject: [hello]}\n    set: {department: business}\n")
    report = json.loads(gateway.run("rules", "replay", "--since", "2026-01-01", "--json").stdout)
    assert report["replayed"] == 3 and report["would_change"] == 2
    changes = {r["number"]: r["changes"] for r in report["letters"]}
    assert changes == {"2026-000001": {"department": ["customer-service", "business"]},
                       "2026-000003": {"department": ["general-office", "business"]}}
    assert gateway.list_json() == before
    table = gateway.run("rules", "replay", "--since", "2026-01-01").stdout
    assert "2 would change" in table and "department: customer-service -> business" in table


def test_a_person_reassigns_a_letter(tmp_path: Path) -> None:
    gateway = configure(tmp_path, "")
    path = tmp_path / "a.eml"
    path.write_bytes(make_message(1, subject="Hello"))
    gateway.run("ingest", str(path))
    [letter] = gateway.list_json()
    assert letter["status"] == "needs-triage" and letter["flags"] == ["needs-triage"]
    proc = gateway.run("letters", "reassign", "2026-000001", "business", "--reason", "asks for a quotation",
                       "--by", "clerk.wang")
    assert "general-office -> business" in proc.stdout
    detail = gateway.show_json("2026-000001")
    assert (detail["department"], detail["status"], detail["flags"]) == ("business", "routed", [])
    [event] = [e for e in detail["events"] if e["action"] == "reassigned"]
    assert (event["actor"], event["from_department"], event["to_department"]) == (
        "clerk.wang", "general-office", "business")
    assert event["details"]["by_person"] is True and event["details"]["reason"] == "asks for a quotation"
    assert [(m["recipient"], m["status"]) for m in detail["outbox"] if m["kind"] == "notification"][-1] == \
        ("sales.desk@example.org", "pending")
    again = gateway.run("letters", "reassign", "2026-000001", "business", "--reason", "x", check=False)
    assert again.returncode == 1 and "already with business" in again.stderr
    unknown = gateway.run("letters", "reassign", "2026-000001", "legal", "--reason", "x", check=False)
    assert unknown.returncode == 1 and "no department 'legal'" in unknown.stderr


def test_the_daemon_does_not_start_with_a_broken_rules_file(tmp_path: Path) -> None:
    gateway = configure(tmp_path, "",
                        rules="rules:\n  - name: a\n    when: {channel: telex}\n    set: {department: business}\n")
    proc = gateway.run("run", check=False, timeout=60)
    assert proc.returncode == 2
    assert f"{gateway.rules}:3: rules[0].when.channel: unknown channel 'telex'; use email or fax" in proc.stderr


def test_a_crash_after_the_relay_accepted_sends_again_with_the_same_message_id(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    crashing = gateway.start(NOTIFY_SOCKET=str(notify.path), GATEWAY_CRASH_AT="after-relay-accepted")
    notify.wait_for("READY=1")
    send(gateway, make_message(1, to="sales@example.org"), to=("sales@example.org",))
    crashing.wait(30)  # killed itself right after the relay's 250, before marking the mail sent
    [first] = sink.wait_for(1)
    assert {m["status"] for m in outbox(gateway)} == {"pending"}
    daemon = start(gateway, notify)
    try:
        wait_for(lambda: {m["status"] for m in outbox(gateway)} == {"sent"}, 30, "everything sent")
        again = [r for r in sink.received if r.rcpt_tos == first.rcpt_tos]
        assert len(again) == 2  # at least once: the same mail twice, never none
        assert again[0].message["Message-ID"] == again[1].message["Message-ID"]  # so the receiver can tell
    finally:
        daemon.stop()


def test_metrics_are_scraped_over_http(tmp_path: Path, notify: Notify) -> None:
    import urllib.request

    down = SmtpSink()  # nothing listens: the mail stays in the outbox, retrying
    gateway = configure(tmp_path, down.address)
    daemon = start(gateway, notify)
    try:
        send(gateway, complaint())
        wait_for(lambda: all(m["attempts"] >= 1 for m in outbox(gateway)) and len(outbox(gateway)) == 3, 30,
                 "failed attempts")

        def scrape() -> dict[str, float]:
            url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines() if line and not line.startswith("#")}
        metrics = scrape()
        assert metrics['gateway_letters_received_total{channel="email"}'] == 1.0
        assert metrics['gateway_letters{status="routed"}'] == 1.0
        assert metrics['gateway_outbox_mails{status="pending"}'] == 3.0
        assert metrics["gateway_outbox_retrying"] == 3.0
        assert metrics['gateway_outbox_mails{status="dead"}'] == 0.0
        assert metrics["gateway_letters_overdue"] == 0.0
        assert metrics['gateway_spool_items{state="waiting"}'] == 0.0
        assert metrics["gateway_oldest_unprocessed_age_seconds"] == 0.0
        assert metrics["gateway_registry_up"] == 1.0
        assert metrics['gateway_items_processed_total{outcome="registered"}'] == 1.0
        assert f"metrics on http://127.0.0.1:{gateway.metrics_port}/metrics" in daemon.output()
    finally:
        daemon.stop()


def test_closing_an_inquiry_or_complaint_sends_its_result_to_the_sender(tmp_path: Path, notify: Notify,
                                                                       sink: SmtpSink) -> None:
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        send(gateway, complaint(1))
        send(gateway, complaint(2, subject="关于发票的投诉", sender="张三 <zhang@customer.example>"),
             mail_from="zhang@customer.example")
        send(gateway, make_message(3, to="sales@example.org"), to=("sales@example.org",))  # business: no feedback
        sink.wait_for(2 + 1 + 2 + 1 + 1 + 1)
        gateway.run("letters", "close", "2026-000001", "--result", "The delivery was re-sent; a refund follows.")
        # The second is closed by its owner answering the notification by mail.
        [note] = [r.message for r in sink.received if r.rcpt_tos == ["service.desk@example.org"]
                  and r.message["X-Gateway-Letter"] == "2026-000002"]
        answer = EmailMessage()
        answer["Authentication-Results"] = ("mx.example.org; dkim=pass header.d=example.org; "
                                            "spf=pass smtp.mailfrom=service.desk@example.org")
        answer["From"] = "service.desk@example.org"
        answer["To"] = note["Reply-To"]
        answer["Subject"] = "Re: [2026-000002] 关于发票的投诉"
        answer["In-Reply-To"] = note["Message-ID"]
        answer.set_content("办结：已重新开具发票并寄出。\n\n> 原通知\n")
        send(gateway, answer.as_bytes(), mail_from="service.desk@example.org", to=(note["Reply-To"],))
        gateway.run("letters", "close", "2026-000003", "--result", "order booked")
        wait_for(lambda: len([r for r in sink.received if "result" in str(r.message["Subject"])
                              or "办理结果" in str(r.message["Subject"])]) == 2, 30, "two results")
        results = {r.rcpt_tos[0]: r.message for r in sink.received
                   if "result" in str(r.message["Subject"]) or "办理结果" in str(r.message["Subject"])}
        assert results["alice@partner.example"]["Subject"] == "Your letter 2026-000001: the result"
        assert "The delivery was re-sent; a refund follows." in results["alice@partner.example"].get_content()
        assert results["zhang@customer.example"]["Subject"] == "来函办理结果（编号 2026-000002）"
        assert "已重新开具发票并寄出。" in results["zhang@customer.example"].get_content()
        assert results["zhang@customer.example"]["Auto-Submitted"] == "auto-replied"
        assert gateway.show_json("2026-000002")["status"] == "closed"
        time.sleep(0.5)
        assert not [r for r in sink.received if r.rcpt_tos == ["alice@partner.example"]
                    and "order booked" in r.message.get_content()]  # a business letter's result stays inside
        assert "feedback-queued" in [e["action"] for e in gateway.show_json("2026-000001")["events"]]
    finally:
        daemon.stop()


def delivery_report(returned: bytes, failed: str, *, whole: bool) -> bytes:
    """What a mail server sends back for mail it could not deliver (RFC 3464 in RFC 6522): the
    returned message whole, or only its headers."""
    head = returned.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in returned else returned.split(b"\n\n", 1)[0]
    part = (b"Content-Type: message/rfc822\r\n\r\n" + returned) if whole else (
        b"Content-Type: text/rfc822-headers\r\n\r\n" + head + b"\r\n")
    return (b"From: Mail Delivery System <MAILER-DAEMON@mx.partner.example>\r\nTo: gateway@example.org\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\n"
            b"Message-ID: <dsn-" + str(time.time_ns()).encode() + b"@mx.partner.example>\r\n"
            b"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=BB\r\n\r\n"
            b"--BB\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
            b"<" + failed.encode() + b">: 550 5.1.1 User unknown\r\n\r\n"
            b"--BB\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.partner.example\r\n\r\n"
            b"Final-Recipient: rfc822; " + failed.encode() + b"\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
            b"--BB\r\n" + part + b"\r\n--BB--\r\n")


def test_a_delivery_report_on_a_notification_is_registered_and_notifies_nobody(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    """An owner's mailbox is gone: the relay took the notification, then its server sends a
    report back to our envelope sender. Notifying again would bring another report, for ever."""
    gateway = configure(tmp_path, sink.address)
    daemon = start(gateway, notify)
    try:
        send(gateway, complaint())
        notes = by_kind(sink.wait_for(3))["notification"]
        assert len(notes) == 2 and notes[0].mail_from == "gateway@example.org"
        for whole in (False, True):
            send(gateway, delivery_report(notes[0].data, notes[0].rcpt_tos[0], whole=whole), mail_from="",
                 to=("gateway@example.org",))
        wait_for(lambda: len(gateway.list_json()) == 3, 30, "the reports registered")
        # A report on another system's mail is correspondence like any other.
        foreign = complaint(2).replace(b"Subject: A complaint", b"Subject: Fwd: A complaint")
        send(gateway, delivery_report(foreign, "someone@partner.example", whole=True), mail_from="",
             to=("liaison@example.org",))
        wait_for(lambda: len(sink.received) == 4, 30, "the foreign report's notification")
        # Nothing more to come: every mail the outbox holds is sent.
        wait_for(lambda: all(m["status"] == "sent" for m in outbox(gateway)), 30, "the outbox sent")
        # Two notifications and a receipt, then one notification of the foreign report (to triage).
        assert [r.rcpt_tos for r in sink.received][3:] == [["office@example.org"]]
        reports = [gateway.show_json(str(letter["number"])) for letter in gateway.list_json()
                   if "Undelivered" in letter["subject"]]
        assert len(reports) == 3
        quiet = [r for r in reports if "returns-our-mail" in r["flags"]]
        assert len(quiet) == 2
        for report in quiet:
            [routed] = [e["details"] for e in report["events"] if e["action"] == "needs-triage"]
            assert (routed["notify"], routed["not_notified"]) == (
                [], "a delivery report on the gateway's own mail (X-Gateway-Loop)")
    finally:
        daemon.stop()
