"""The mail the gateway writes, composed from register entries (no relay needed but for the one
original a relay would refuse as it came)."""
from __future__ import annotations

import base64
import dataclasses
import email
import re
import shutil
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import ROOT, Gateway, Notify, make_message, outbound_settings, wait_for
from gateway import config as config_mod
from gateway.config import Config
from gateway.outbound.compose import ComposeError, clean, notification, receipt, sealed
from gateway.outbound.outward import request
from gateway.outbound.replies import notice, reply_message
from gateway.registry.models import Attachment, Letter, OutboxMail
from gateway.registry.plan import NewMail
from gateway.stages.tokens import loop_content, loop_marker_state
from smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    folder = tmp_path_factory.mktemp("compose")
    text = (ROOT / "config" / "gateway.toml").read_text()
    (folder / "gateway.toml").write_text(text.replace('state_dir = "../storage"', f'state_dir = "{folder / "state"}"'))
    shutil.copy(ROOT / "config" / "rules.yaml", folder / "rules.yaml")
    return config_mod.load(folder / "gateway.toml")


def letter(**fields: object) -> Letter:
    values: dict[str, object] = dict(
        id=1, number="2026-000042", channel="email", intake="smtp", status="routed", sender_name="Alice",
        sender_address="alice@partner.example", recipient="liaison@example.org", department="business",
        subject="Contract", received_at=datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc), summary="Please sign.",
        category="external.business", urgency="regular", confidentiality="normal", deadline=None, flags=[], tags=[],
        classification={"matched": [{"rule": "business", "line": 3, "evidence": ["subject has 'contract'"]}]},
        raw_size=10, raw_path="x", message_id="orig@partner.example", fax_pages=None, fax_number=None,
        fax_sender_name=None)
    values.update(fields)
    row = Letter(**{k: v for k, v in values.items() if k != "attachments"})
    row.attachments = list(values.get("attachments", []))  # type: ignore[arg-type]
    return row


def mail(kind: str = "notification", to: str = "sales.desk@example.org", **details: object) -> OutboxMail:
    return OutboxMail(id=7, kind=kind, recipient=to, message_id="<m7@example.org>", details=dict(details))


def parsed(message: email.message.EmailMessage) -> email.message.EmailMessage:
    return email.message_from_bytes(message.as_bytes(), policy=policy.default)  # type: ignore[return-value]


def test_a_fax_notification_carries_the_fax_file(config: Config) -> None:
    tiff = b"II*\x00" + b"\x00" * 60
    fax = letter(channel="fax", intake="fax-drop", sender_address="", sender_name="", fax_number="+86 10 6555 0101",
                 fax_sender_name="District Office", fax_pages=2, subject="Fax from +86 10 6555 0101, 2 page(s)",
                 attachments=[Attachment(position=0, filename="fax_0101.tif", original_filename="fax_0101.tif",
                                         declared_type="", detected_type="image/tiff", size=len(tiff), sha256="0" * 64,
                                         origin="fax")])
    m = parsed(notification(config, mail(), fax, tiff))
    [part] = list(m.iter_attachments())
    assert part.get_content_type() == "image/tiff" and part.get_filename() == "fax_0101.tif"
    assert part.get_content() == tiff
    body = m.get_body(("plain",)).get_content()
    assert "fax +86 10 6555 0101 (District Office)" in body and "Pages:       2" in body


def test_triage_notifications_name_the_likely_departments(config: Config) -> None:
    triage = letter(status="needs-triage", department="general-office", category=None, flags=["needs-triage"],
                    classification={"matched": [], "triage": {"reason": "no rule matched",
                                                              "candidates": ["business", "hr"]}})
    body = parsed(notification(config, mail(), triage, None)).get_content()
    assert "needs triage" in body and "likely departments: business, hr" in body
    assert "The original (10 bytes) is not attached" in body


def test_an_original_too_large_is_not_attached_and_a_confidential_one_never(config: Config) -> None:
    secret = letter(confidentiality="confidential", subject="机密 合同", summary="secret terms",
                    deadline=datetime(2026, 11, 26, 15, 59, tzinfo=timezone.utc))
    m = parsed(notification(config, mail(), secret, b"From: a@b\r\n\r\nsecret terms\r\n"))
    assert not m.is_multipart() and "secret" not in m.as_string() and "合同" not in m.as_string()
    assert "Deadline:  2026-11-26 23:59 (Asia/Shanghai)" in m.get_content()


def test_headers_take_one_clean_line_and_addresses_must_be_plain(config: Config) -> None:
    hostile = letter(subject="Hi\r\nBcc: victim@evil.example\x00\x1b[31m", sender_name="Eve\nTo: x@evil.example")
    m = parsed(notification(config, mail(), hostile, None))
    assert m["Subject"] == "[2026-000042] Hi Bcc: victim@evil.example [31m" and "Bcc" not in m
    assert clean("a\u2028b\x85c") == "a b c" and len(clean("x" * 500, 200)) == 200
    with pytest.raises(ComposeError):
        notification(config, mail(to="x@evil.example\r\nBcc: y@evil.example"), hostile, None)


def test_an_encoded_word_that_decodes_to_header_lines_stays_text(config: Config) -> None:
    """A subject (decoded once when the letter came in) or a Message-ID holding an encoded-word of
    "\r\nReply-To: ...": the email package decodes a value set on a header, so written as it is,
    it would add the sender's own headers, and a body, to our mail."""
    injected = "=?utf-8?b?" + base64.b64encode(b"\r\nReply-To: attacker@evil.example\r\nBcc: evil@evil.example"
                                               b"\r\n\r\nPlease wire the money.").decode() + "?="
    hostile = letter(subject=f"Offer {injected} tail", message_id=f"{injected}@evil.example")
    plan = NewMail("sender-reply", "alice@partner.example", {}, "<r1@example.org>")
    written = [notification(config, mail(), hostile, None),
               receipt(config, mail("receipt", "alice@partner.example", language="en"), hostile),
               request(config, mail("request", "alice@partner.example", language="zh", missing=["ID"]), hostile),
               email.message_from_bytes(reply_message(config, hostile, "Answer.", [], plan), policy=policy.default)]
    for message in written:
        m = parsed(message) if isinstance(message, EmailMessage) else message
        assert "Bcc" not in m and "attacker" not in str(m.get_all("Reply-To", [])) and "In-Reply-To" not in m
        assert "Please wire" not in m.get_body(("plain",)).get_content()
    assert "Offer =\u200b?utf-8?b?" in str(parsed(written[0])["Subject"])


def test_receipts_in_both_languages_reply_to_the_letter(config: Config) -> None:
    zh = parsed(receipt(config, mail("receipt", "alice@partner.example", language="zh"),
                        letter(subject="关于合同", department="business")))
    assert zh["Subject"] == "来函已收到，登记编号 2026-000042"
    assert "Business Development" in zh.get_content() and "《关于合同》" in zh.get_content()
    assert zh["In-Reply-To"] == "<orig@partner.example>" and zh["Auto-Submitted"] == "auto-replied"
    en = parsed(receipt(config, mail("receipt", "alice@partner.example", language="en"), letter()))
    assert en["Subject"] == "Received: your letter is registered as 2026-000042"
    assert '"Contract"' in en.get_content()
    assert en["X-Gateway-Loop"].startswith("gateway@example.org; kind=receipt; token=")
    assert en["Reply-To"] is None  # a receipt is not to be answered with a command


def test_operator_templates_replace_the_built_in_ones(config: Config, tmp_path: Path) -> None:
    (tmp_path / "receipt.en.txt").write_text("Subject: Got it ($number)\n\nThanks, $organisation.\n")
    (tmp_path / "receipt.zh.txt").write_text("no subject line\n\nbody\n")
    receipts = config.model.receipts.model_copy(update={"templates": tmp_path})
    custom = config.model.model_copy(update={"receipts": receipts})
    own = Config(path=config.path, model=custom, state_dir=config.state_dir, rules=config.rules)
    en = parsed(receipt(own, mail("receipt", "a@b.example", language="en"), letter()))
    assert en["Subject"] == "Got it (2026-000042)" and en.get_content().strip() == "Thanks, Correspondence Gateway."
    with pytest.raises(ComposeError, match="first line must be 'Subject: ...'"):
        receipt(own, mail("receipt", "a@b.example", language="zh"), letter())


def test_an_original_the_email_package_cannot_rewrite_is_attached_as_a_file(config: Config) -> None:
    from gateway.outbound.sender import OutboxSender

    raw = b"From: a@b.example\r\nReply-To: x:;" + b"a" * 80 + b"@\r\nSubject: s\r\n\r\nbody\r\n"
    with pytest.raises(AttributeError):  # what the standard library does with it as message/rfc822
        notification(config, mail(), letter(raw_size=len(raw)), raw).as_bytes()
    sender = OutboxSender(config, registry=None)  # type: ignore[arg-type]
    sender._original = lambda _letter: raw  # type: ignore[method-assign]
    m = email.message_from_bytes(sender._compose(mail(), letter(raw_size=len(raw))), policy=policy.default)
    [part] = list(m.iter_attachments())
    assert part.get_filename() == "original.eml" and part.get_content() == raw


def test_an_original_with_a_line_longer_than_smtp_carries_reaches_the_department_as_a_file(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    """HTML written on one line of 1,500 characters: as message/rfc822 (sent as it is) the relay
    refuses it ("500 Line too long", aiosmtpd as Postfix would) and the department never hears of
    the letter; base64 in a file it arrives, byte for byte."""
    gateway = Gateway(tmp_path, extra=outbound_settings(sink.address))
    raw = make_message(1, body="<p>" + "Please see our offer. " * 68 + "</p>\n").replace(
        b"text/plain", b"text/html")
    assert max(len(line) for line in raw.splitlines()) > 1400
    (tmp_path / "long.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "long.eml"))
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: sink.to("office@example.org"), 30, "the department's notification")
        told = email.message_from_bytes(sink.to("office@example.org")[0].data, policy=policy.default)
        [original] = list(told.iter_attachments())  # type: ignore[attr-defined]
        assert (original.get_content_type(), original.get_filename()) == ("application/octet-stream", "original.eml")
        assert original["Content-Transfer-Encoding"] == "base64" and original.get_content() == raw
    finally:
        daemon.stop()
    # An ordinary original still goes as a message of its own.
    ordinary = parsed(notification(config_mod.load(gateway.config), mail(), letter(raw_size=100), make_message(2)))
    [part] = list(ordinary.iter_attachments())  # type: ignore[attr-defined]
    assert part.get_content_type() == "message/rfc822"


def test_reminders_and_escalations_say_what_is_due_and_never_a_secret(config: Config) -> None:
    from gateway.outbound.compose import reminder

    due = datetime(2026, 11, 26, 15, 59, 59, tzinfo=timezone.utc)
    before = parsed(reminder(config, mail("reminder", reminder="before", count=1), letter(deadline=due)))
    assert before["Subject"] == "[2026-000042] Reminder: due 2026-11-26 23:59"
    assert "Letter 2026-000042 is due on 2026-11-26 23:59." in before.get_content()
    assert before["Auto-Submitted"] == "auto-generated"
    escalation = parsed(reminder(config, mail("escalation", "business.head@example.org", reminder="escalation",
                                              count=3), letter(deadline=due, confidentiality="confidential",
                                                               subject="机密 合同")))
    assert escalation["Subject"] == "[2026-000042] Escalation: overdue since 2026-11-26 23:59"
    text = escalation.get_content()
    assert "after 3 reminder(s)" in text and "Confidential letter" in text and "合同" not in text


def test_mail_an_owner_may_answer_carries_a_reply_address_signed_for_the_letter_and_them(config: Config) -> None:
    from gateway.outbound.compose import reminder
    from gateway.stages.tokens import check_reply_token, find_reply_tokens

    due = datetime(2026, 11, 26, 15, 59, 59, tzinfo=timezone.utc)
    sent = [notification(config, mail(), letter(), None),
            notification(config, mail(), letter(confidentiality="confidential"), None),
            reminder(config, mail("reminder", reminder="overdue", count=2), letter(deadline=due)),
            reminder(config, mail("escalation", "business.head@example.org", reminder="escalation", count=3),
                     letter(deadline=due))]
    for message in map(parsed, sent):
        address = message["Reply-To"]
        assert address.startswith("gateway+2026-000042.") and address.endswith("@example.org")
        [token] = find_reply_tokens(config, [address.upper()])  # a mail system may change the case
        assert token.number == "2026-000042"
        assert check_reply_token(config, token, "2026-000042", message["To"]) is None
        assert "not issued to" in str(check_reply_token(config, token, "2026-000042", "someone@example.org"))
        assert "for letter 2026-000042, not 2026-000043" in str(
            check_reply_token(config, token, "2026-000043", message["To"]))


def test_the_loop_marker_is_signed_over_the_mails_own_message_id_and_what_it_says(config: Config) -> None:
    """Our internal mail come back is ours only as it was sent: a mail system may re-encode or
    refold it on the way; its marker and Message-ID on another mail (another sender, subject, text
    or attachment) verify only as copied. A delivery report's returned headers carry no content."""
    raw = sealed(config, "notification", notification(config, mail(), letter(), None))
    m = email.message_from_bytes(raw, policy=policy.default)
    ours = {"x-gateway-loop": [m["X-Gateway-Loop"]], "message-id": [m["Message-ID"]]}
    assert "; content=" in m["X-Gateway-Loop"]
    assert loop_marker_state(config, ours, content=loop_content(raw)) == "ours"
    assert loop_marker_state(config, ours, content=None) == "ours"  # the headers alone
    # As a mail system may pass it on: the text re-encoded as base64, CRLF line ends, the
    # Subject folded anew; nothing it says changed.
    text = m.get_body(("plain",))
    assert text is not None
    words = text.get_content()
    del text["Content-Transfer-Encoding"]
    text["Content-Transfer-Encoding"] = "base64"
    text.set_payload(base64.encodebytes(words.replace("\n", "\r\n").encode()).decode())
    passed_on = m.as_bytes().replace(b"Subject: [2026-000042] Contract", b"Subject: [2026-000042]\r\n Contract")
    assert passed_on != raw and loop_content(passed_on) == loop_content(raw)
    for changed in (raw.replace(b"From: ", b"From: Mallory <mallory@partner.example>, ", 1),
                    raw.replace(b"Subject: [2026-000042] Contract", b"Subject: [2026-000042] Invoice"),
                    raw.replace(b"Please sign.", b"Please pay."),
                    raw.replace(b"X-Gateway-Letter: 2026-000042", b"X-Gateway-Letter: 2026-000043")):
        assert changed != raw and loop_marker_state(config, ours, content=loop_content(changed)) == "copied"
    # Without the content MAC (a marker copied from an older mail, or cut short): never ours.
    bare = m["X-Gateway-Loop"].partition("; content=")[0]
    assert loop_marker_state(config, {**ours, "x-gateway-loop": [bare]}, content=loop_content(raw)) == "copied"
    assert loop_marker_state(config, {**ours, "message-id": ["<other@example.org>"]}, content=loop_content(raw)) \
        == "forged"
    assert loop_marker_state(config, {**ours, "x-gateway-loop": ["gateway@example.org"]}, content="") == "forged"
    assert loop_marker_state(config, {"x-gateway-loop": ["another-gateway@partner.example"]}, content="") is None
    assert loop_marker_state(config, {}, content="") is None


def test_mail_about_a_letter_with_a_copied_marker_come_back_changed_is_told_to_nobody(config: Config) -> None:
    """The loop breaker: what the owners are told of a letter that came with a copied marker says
    so under its first MAC (after=copied). Come back as sent it is ours; changed on the way (a
    relay's footer) it is "recopied": flagged, but not told of again, which would send one more
    such mail, changed again, for ever. The mark cannot be put on an ordinary marker nor taken off."""
    footer = b"\n-- \nThis e-mail is confidential.\n"
    for flags, changed_state in (([], "copied"), (["copied-loop-marker"], "recopied")):
        raw = sealed(config, "notification", notification(config, mail(), letter(flags=flags), None))
        m = email.message_from_bytes(raw, policy=policy.default)
        assert ("; after=copied;" in m["X-Gateway-Loop"]) == bool(flags)
        ours = {"x-gateway-loop": [m["X-Gateway-Loop"]], "message-id": [m["Message-ID"]]}
        assert loop_marker_state(config, ours, content=loop_content(raw)) == "ours"
        changed = raw.replace(b"Please sign.", b"Please sign." + footer)
        assert changed != raw and loop_marker_state(config, ours, content=loop_content(changed)) == changed_state
        # Writing "after=copied" into a first-round marker, or leaving it out of a second-round
        # one, changes nothing: the MAC decides.
        relabelled = (m["X-Gateway-Loop"].replace("; after=copied", "") if flags
                      else m["X-Gateway-Loop"].replace("kind=notification", "kind=notification; after=copied"))
        assert loop_marker_state(config, {**ours, "x-gateway-loop": [relabelled]},
                                 content=loop_content(changed)) == changed_state
    # Beside a first-round copy, a second-round one does not spare the owners.
    first = email.message_from_bytes(sealed(config, "notification", notification(config, mail(), letter(), None)),
                                     policy=policy.default)
    second = email.message_from_bytes(sealed(config, "notification", notification(
        config, mail(), letter(flags=["copied-loop-marker"]), None)), policy=policy.default)
    both = {"x-gateway-loop": [second["X-Gateway-Loop"], first["X-Gateway-Loop"]], "message-id": [first["Message-ID"]]}
    assert loop_marker_state(config, both, content="") == "copied"


def test_a_receipts_loop_marker_names_its_kind_under_the_mac_and_spares_only_a_receipt(config: Config) -> None:
    """A receipt's marker is in an outsider's hands: verified, it says "to-sender" (no automatic reply),
    never "ours" (nobody notified); relabelled as another kind it does not verify."""
    from gateway.stages.tokens import loop_marker, loop_marker_state

    m = parsed(receipt(config, mail("receipt", to="alice@partner.example", language="en"), letter()))
    assert "; kind=receipt; token=" in m["X-Gateway-Loop"]
    theirs = {"x-gateway-loop": [m["X-Gateway-Loop"]], "message-id": [m["Message-ID"]]}
    assert loop_marker_state(config, theirs, content=None) == "to-sender"
    for kind in ("notification", "reminder", "escalation", "refused-command"):
        relabelled = m["X-Gateway-Loop"].replace("kind=receipt", f"kind={kind}")
        assert loop_marker_state(config, {**theirs, "x-gateway-loop": [relabelled]}, content=None) == "forged"
        ours = loop_marker(config, m["Message-ID"], kind=kind)
        assert loop_marker_state(config, {**theirs, "x-gateway-loop": [ours]}, content=None) == "ours"
    feedback = loop_marker(config, m["Message-ID"], kind="feedback")
    assert loop_marker_state(config, {**theirs, "x-gateway-loop": [feedback]}, content=None) == "to-sender"
    # A receipt's marker beside a forged notification's: it still counts only as a receipt's.
    forged = m["X-Gateway-Loop"].replace("kind=receipt", "kind=notification")
    assert loop_marker_state(config, {**theirs, "x-gateway-loop": [forged, m["X-Gateway-Loop"]]},
                             content=None) == "to-sender"
    with pytest.raises(ValueError):
        loop_marker(config, m["Message-ID"], kind="anything")


def test_a_refused_command_is_told_to_the_owners_in_both_languages(config: Config) -> None:
    from gateway.outbound.compose import refusal

    details = dict(sender="sales.desk@example.org", authenticated=None, command="reassign",
                   argument="general-office", received_at="2026-11-23T02:00:00+00:00",
                   reason="the sender sales.desk@example.org is not authenticated\r\nBcc: x@evil.example")
    en = parsed(refusal(config, mail("refused-command", language="en", **details), letter()))
    assert en["Subject"] == "[2026-000042] A command by mail was not obeyed" and "Bcc" not in en
    text = en.get_content()
    assert "reassign general-office" in text and "is not authenticated Bcc: x@evil.example" in text
    assert "2026-11-23 10:00" in text and en["Reply-To"] is None and en["Auto-Submitted"] == "auto-generated"
    zh = parsed(refusal(config, mail("refused-command", language="zh", **details), letter(subject="合同")))
    assert zh["Subject"] == "[2026-000042] 邮件指令未执行" and "《合同》" in zh.get_content()
    secret = parsed(refusal(config, mail("refused-command", language="en", **details),
                            letter(confidentiality="confidential", subject="机密 合同")))
    assert "合同" not in secret.get_content()


def test_an_unreadable_keys_file_holds_mail_back_and_never_dead_letters_it(tmp_path: Path) -> None:
    """Every mail carries a signed loop marker; a damaged keys file is the installation's fault, mended
    by a person: the mail waits (an ALERT in the log) and goes once the file is restored."""
    import smtplib

    from gateway.outbound.sender import OutboxSender
    from gateway.registry import Registry
    from gateway.registry.plan import NewLetter, NewMail, Routing
    from gateway.stages.tokens import keyring, keys_path
    from smtp_sink import SmtpSink

    sink = SmtpSink().start()
    try:
        text = (ROOT / "config" / "gateway.toml").read_text()
        text = text.replace('state_dir = "../storage"', f'state_dir = "{tmp_path / "state"}"')
        text = text.replace('relay = ""', f'relay = "{sink.address}"').replace(
            "retry_min_seconds = 60", "retry_min_seconds = 0.01")
        text = re.sub(r"(?m)^retry_max_seconds = .*$", "retry_max_seconds = 0.01", text)
        (tmp_path / "gateway.toml").write_text(text)
        shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
        own = config_mod.load(tmp_path / "gateway.toml")
        registry = Registry(f"sqlite:///{tmp_path / 'r.sqlite3'}")
        registry.upgrade()
        routing = Routing(status="routed", department="business", category=None, urgency="regular",
                          confidentiality="normal", owner=None, tags=[], deadline=None, trace={}, flags=[],
                          mail=[NewMail("notification", "sales.desk@example.org", {}, "<n1@example.org>")],
                          receipt=None, no_receipt="a test")
        registry.register([NewLetter(["test:1"], "email", "smtp", datetime.now(timezone.utc), "0" * 64, 0, "none",
                                     subject="Contract", routing=routing)])
        keyring(own)
        good = keys_path(own).read_bytes()
        keys_path(own).write_text("{not json")
        sender = OutboxSender(own, registry)

        assert sender.deliver_due() == 1  # held back before anything is composed
        [mail] = registry.outbox()  # a look, not a claim
        assert (mail.status, mail.attempts) == ("pending", 1) and "reply keys cannot be read" in str(mail.last_error)
        # Damaged while a round was under way: the mail claimed for that round, then sent.
        [mail] = registry.outbox_due(10, now=datetime.now(timezone.utc) + timedelta(seconds=1))
        with smtplib.SMTP(*sink.address.rsplit(":", 1)) as client:
            sender._send(client, mail)
        [mail] = registry.outbox()  # a look, not a claim
        assert (mail.status, mail.attempts) == ("pending", 2) and not sink.received

        keys_path(own).write_bytes(good)
        deadline = datetime.now(timezone.utc).timestamp() + 10
        while not sink.received and datetime.now(timezone.utc).timestamp() < deadline:
            sender.deliver_due()
        [delivered] = sink.received
        assert delivered.rcpt_tos == ["sales.desk@example.org"]
        assert registry.outbox(status="pending") == []
        registry.close()
    finally:
        sink.stop()


def test_replies_and_approval_notices_carry_our_loop_marker(config: Config) -> None:
    """An approval notice an approver's rule sends back in is known as ours; a reply to the sender
    stops their auto-responder's receipt."""
    plan = NewMail("sender-reply", "alice@partner.example", {}, "<r2@example.org>")
    reply = email.message_from_bytes(reply_message(config, letter(), "Answer.", [], plan), policy=policy.default)
    approval = email.message_from_bytes(sealed(config, "approval", notice(
        config, OutboxMail(id=8, kind="approval", recipient="office.head@example.org", message_id="<a8@example.org>",
                           details={"about": "waiting"}), letter())), policy=policy.default)
    states = [loop_marker_state(config, {"x-gateway-loop": [m["X-Gateway-Loop"]], "message-id": [m["Message-ID"]]},
                                content=loop_content(m.as_bytes())) for m in (reply, approval)]
    assert states == ["to-sender", "ours"]


def test_an_organisation_name_with_a_comma_and_chinese_stays_one_address(config: Config) -> None:
    outbound = config.model.outbound.model_copy(update={"from_name": 'Example Org, "Registry" 收发室'})
    named = dataclasses.replace(config, model=config.model.model_copy(update={"outbound": outbound}))
    for message in (parsed(notification(named, mail(), letter(), None)),
                    email.message_from_bytes(reply_message(named, letter(), "Answer.", [], NewMail(
                        "sender-reply", "alice@partner.example", {}, "<r3@example.org>")), policy=policy.default)):
        [sender] = message["From"].addresses
        assert (sender.display_name, sender.addr_spec) == ('Example Org, "Registry" 收发室', "gateway@example.org")
