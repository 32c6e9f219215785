"""Addresses in Unicode (RFC 6531/6532): an owner 李明@example.org, a sender 王芳@例子.中国. The
outbox sends to them with SMTPUTF8 through a relay that offers it (a real aiosmtpd sink on
loopback), dead-letters mail to them at once through one that does not, and writes a domain in
Unicode alone in A-labels, which needs nothing of the relay; `gateway check-config` warns about
such people."""
from __future__ import annotations

import email
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from email import policy
from pathlib import Path

import pytest

from conftest import ROOT, Gateway, outbound_settings
from gateway import config as config_mod
from gateway.config import Config
from gateway.outbound.sender import OutboxSender
from gateway.registry import Registry
from gateway.registry.plan import NewLetter, NewMail, Routing
from gateway.stages.tokens import check_reply_token, find_reply_tokens, keyring
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(120)

OWNER = "李明@example.org"
IDN_OWNER = "desk@例子.中国"  # ASCII local part: written xn--fsqu00a.xn--fiqs8s, no SMTPUTF8 needed
SENDER = "王芳@例子.中国"


def international(gateway: Gateway, relay: str) -> Path:
    """The business department's owners: one whose local part is Chinese (written in the file in
    upper case where it can be, as a person may), one with a domain in Chinese."""
    text = gateway.config.read_text().replace('owners = ["sales.desk@example.org"]',
                                              f'owners = ["李明@EXAMPLE.org", "{IDN_OWNER}"]')
    gateway.config.write_text(text + outbound_settings(relay))
    return gateway.config


@pytest.fixture
def utf8_relay() -> Iterator[SmtpSink]:
    sink = SmtpSink(smtputf8=True).start()
    yield sink
    sink.stop()


@pytest.fixture
def ascii_relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def loaded(path: Path) -> tuple[Config, Registry]:
    config = config_mod.load(path)
    registry = Registry.from_config(config)
    registry.upgrade()
    keyring(config)
    return config, registry


def routed_letter(config: Config, registry: Registry) -> str:
    """A letter to business from 王芳, its notifications to the department's owners as the
    configuration names them, and its receipt to her."""
    owners = config.departments["business"].owners
    mail = [NewMail("notification", owner, {}, f"<n{n}@example.org>") for n, owner in enumerate(owners)]
    routing = Routing(status="routed", department="business", category=None, urgency="regular",
                      confidentiality="normal", owner=None, tags=[], deadline=None, trace={}, flags=[], mail=mail,
                      receipt=NewMail("receipt", SENDER, {"language": "zh"}, "<r@example.org>"), no_receipt=None)
    [done] = registry.register([NewLetter(["test:1"], "email", "smtp", datetime.now(timezone.utc), "1" * 64,
                                          10**9, "none", sender_name="王芳", sender_address=SENDER,
                                          subject="关于合同的咨询", routing=routing)])
    return done.number


def test_mail_to_an_address_in_chinese_goes_with_smtputf8_when_the_relay_offers_it(
        gateway: Gateway, utf8_relay: SmtpSink) -> None:
    config, registry = loaded(international(gateway, utf8_relay.address))
    try:
        number = routed_letter(config, registry)
        OutboxSender(config, registry).deliver_due()
        assert {m.status for m in registry.outbox()} == {"sent"}

        [to_owner] = utf8_relay.to(OWNER)
        assert "SMTPUTF8" in to_owner.mail_options and to_owner.mail_from == "gateway@example.org"
        notification = email.message_from_bytes(to_owner.data, policy=policy.SMTPUTF8)
        assert notification["To"] == OWNER and notification["Subject"] == f"[{number}] 关于合同的咨询"
        assert OWNER.encode() in to_owner.data  # the address as it is, not an encoded-word
        # Its reply address is signed for her: her answer by mail can be obeyed.
        [token] = find_reply_tokens(config, [str(notification["Reply-To"])])
        assert check_reply_token(config, token, number, OWNER) is None

        # The sender's receipt: her local part needs SMTPUTF8, her domain is written in A-labels.
        [receipt] = utf8_relay.to("王芳@xn--fsqu00a.xn--fiqs8s")
        assert "SMTPUTF8" in receipt.mail_options
        assert email.message_from_bytes(receipt.data, policy=policy.SMTPUTF8)["To"] == "王芳@xn--fsqu00a.xn--fiqs8s"

        # A domain in Chinese alone is written in A-labels: plain mail, no SMTPUTF8.
        [to_desk] = utf8_relay.to("desk@xn--fsqu00a.xn--fiqs8s")
        assert "SMTPUTF8" not in to_desk.mail_options
        head = to_desk.data.split(b"\r\n\r\n", 1)[0]
        assert head.isascii() and b"\r\nTo: desk@xn--fsqu00a.xn--fiqs8s\r\n" in head
    finally:
        registry.close()


def test_mail_to_an_address_in_chinese_is_dead_lettered_at_once_by_a_relay_without_smtputf8(
        gateway: Gateway, ascii_relay: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    config, registry = loaded(international(gateway, ascii_relay.address))
    try:
        number = routed_letter(config, registry)
        with caplog.at_level(logging.WARNING, logger="gateway.outbox"):
            OutboxSender(config, registry).deliver_due()
        mails = {m.recipient: m for m in registry.outbox()}
        reason = (f"relay {ascii_relay.address} does not offer SMTPUTF8 (RFC 6531), without which no mail "
                  f"reaches {OWNER}: its local part is not ASCII")
        assert (mails[OWNER].status, mails[OWNER].attempts, mails[OWNER].last_error) == ("dead", 1, reason)
        assert mails[SENDER].status == "dead"
        assert "reaches 王芳@例子.中国: its local part" in str(mails[SENDER].last_error)
        # Not tried, and not a retry loop: the relay heard nothing of them.
        assert [r.rcpt_tos for r in ascii_relay.received] == [["desk@xn--fsqu00a.xn--fiqs8s"]]
        assert mails[config.departments["business"].owners[1]].status == "sent"
        alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT outbox:")]
        assert any(f"notification #{mails[OWNER].id} to {OWNER} dead-lettered: {reason}" in a for a in alerts), alerts

        # Where operators look: the outbox listing and the letter's history.
        listed = subprocess.run([sys.executable, "-m", "gateway", "--config", str(gateway.config), "outbox", "list",
                                 "--status", "dead", "--json"], capture_output=True, text=True, env=gateway.env(),
                                cwd=ROOT, timeout=120, check=True)
        dead = {m["recipient"]: m["last_error"] for m in json.loads(listed.stdout)}
        assert dead[OWNER] == reason and set(dead) == {OWNER, SENDER}
        letter = registry.letter(number)
        assert letter is not None
        events = [e.action for e in letter.events]
        assert "notification-dead-lettered" in events and "receipt-dead-lettered" in events
    finally:
        registry.close()


def test_check_config_warns_about_people_whose_addresses_need_smtputf8(tmp_path: Path) -> None:
    """Owners, heads, members, leaders and a rule's owner whose local part is not ASCII: a warning
    each (whether the relay offers SMTPUTF8 is known only when it answers the daemon), exit 0."""
    gateway = Gateway(tmp_path, rules=textwrap.dedent("""
        rules:
          - name: to-li
            when: {subject: 合同}
            set: {department: business, owner: 张伟@example.org}
    """))
    international(gateway, "127.0.0.1:25")
    text = gateway.config.read_text().replace('head = "business.head@example.org"', 'head = "王经理@example.org"')
    gateway.config.write_text(text)
    done = gateway.run("check-config")
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    needs = ("its local part is not ASCII: mail to it needs an outbound relay that offers SMTPUTF8 (RFC 6531); "
             "through one that does not, every mail to it is dead-lettered")
    assert warnings == [f"warning: {gateway.config}: departments[1].owners[0]: {OWNER}: {needs}",
                        f"warning: {gateway.config}: departments[1].head: 王经理@example.org: {needs}",
                        f"warning: {gateway.rules}:3: rules[0].set.owner: 张伟@example.org: {needs}"], done.stderr
    assert "desk@" not in done.stderr  # a domain in Chinese alone needs nothing of the relay

    # The gateway's own address begins every mail's envelope and every reply address: an error.
    gateway.config.write_text(text.replace('"gateway@example.org"', '"收发室@example.org"'))
    refused = gateway.run("check-config", check=False)
    assert refused.returncode == 1
    line = next(n for n, text in enumerate(gateway.config.read_text().splitlines(), 1) if "收发室@" in text)
    assert (f"error: {gateway.config}:{line}: outbound.from_address: '收发室@example.org': the gateway's own address "
            "needs a local part in ASCII") in refused.stderr
