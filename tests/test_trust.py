"""The check stage: DKIM, SPF and DMARC against a real DNS server (dnsmasq on loopback),
Authentication-Results, spoofed internal senders, and the verdict stored and shown."""
from __future__ import annotations

import dataclasses
import re
import smtplib
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dkim
import dns.exception
import dns.rdatatype
import dns.resolver
import pytest

from conftest import Daemon, Gateway, Notify, wait_for
import dns_server as dns_fixtures
from dns_server import DkimKey, DnsServer
from gateway.stages.check import (BELOW_BORDER, MAX_AUTHENTICATION_RESULTS, NOT_A_TRUSTED_RELAY, Answers, Checker,
                                  DmarcRefused, TrustPolicy, Verdict, aligned, make_resolver, organisational_domain,
                                  parse_relays, vouched_places)
from gateway.stages.classify.facts import Facts
from gateway.stages.classify.organisation import Organisation
from gateway.stages.classify.rules import compile_rules
from smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(600)

# The loopback DNS server's fixtures, used here by name.
dns_server = dns_fixtures.dns_server
silent_nameserver = dns_fixtures.silent_nameserver

SMTP_ENVELOPE = {"client": "127.0.0.1", "helo": "mx.partner.example"}


def message(sender: str, subject: str = "Quarterly figures", body: str = "Please find the figures.\r\n",
            extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: liaison@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0800\r\nMessage-ID: <{time.monotonic_ns()}@x>\r\n{extra}"
            f"\r\n{body}").encode()


def checker(nameserver: str, *, refuse: bool = False, trusted: tuple[str, ...] = ("mx.example.org",),
            lifetime: float = 3.0, relays: tuple[str, ...] = (), deadline: float = 8.0,
            resolver: dns.resolver.Resolver | None = None) -> Checker:
    return Checker(resolver or make_resolver([nameserver], min(1.0, lifetime), lifetime),
                   TrustPolicy(frozenset(trusted), refuse, ("example.org",), parse_relays(list(relays)), deadline),
                   lambda user, address: False)


def headers(raw: bytes) -> list[tuple[str, str]]:
    import email

    return [(k, str(v)) for k, v in email.message_from_bytes(raw).items()]


def check(c: Checker, raw: bytes, sender: str, mail_from: str, intake: str = "smtp", **kw: bool) -> dict:
    return c.check(raw, sender, headers(raw), {**SMTP_ENVELOPE, "mail_from": mail_from}, intake, **kw).as_dict()


def test_aligned_dkim_pass_authenticates_and_a_tampered_body_does_not(dns_server: DnsServer) -> None:
    c = checker(dns_server.nameserver)
    signed = dns_server.sign(message("Ann <ann@signed.example>"), "signed.example", "sel1")
    verdict = check(c, signed, "ann@signed.example", "ann@signed.example")
    assert verdict["authenticated"] and verdict["method"] == "dkim" and verdict["address"] == "ann@signed.example"
    assert verdict["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "pass", "aligned": True}]
    assert verdict["spf"] == {"result": "pass", "domain": "signed.example"}
    assert verdict["dmarc"] == {"result": "pass", "policy": "reject", "domain": "signed.example"}
    assert not verdict["temperror"] and not verdict["flags"]

    tampered = signed.replace(b"Please find the figures.", b"Please wire the money.")
    verdict = check(c, tampered, "ann@signed.example", "bounce@elsewhere.example")
    assert not verdict["authenticated"] and verdict["address"] is None
    assert verdict["dkim"][0]["result"] == "fail"
    assert verdict["dmarc"]["result"] == "fail"


def test_wrong_selector_and_unaligned_signature_prove_nothing(dns_server: DnsServer) -> None:
    c = checker(dns_server.nameserver)
    signed = dns_server.sign(message("ann@signed.example"), "signed.example", "sel1")
    wrong = signed.replace(b"s=sel1", b"s=nokey", 1)
    verdict = check(c, wrong, "ann@signed.example", "")
    assert verdict["dkim"][0]["selector"] == "nokey" and verdict["dkim"][0]["result"] == "permerror"
    assert not verdict["authenticated"]
    # A valid signature of another domain: DKIM passes, but says nothing about the From address.
    other = dns_server.sign(message("boss@forged.example"), "signed.example", "sel1")
    verdict = check(c, other, "boss@forged.example", "")
    assert verdict["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "pass", "aligned": False}]
    assert not verdict["authenticated"] and verdict["dmarc"]["result"] == "fail"


def test_spf_fail_with_dmarc_reject_is_refused_only_when_the_policy_says_so(dns_server: DnsServer) -> None:
    raw = message("ceo@forged.example")
    recorded = check(checker(dns_server.nameserver), raw, "ceo@forged.example", "ceo@forged.example",
                     may_refuse=True)
    assert recorded["spf"] == {"result": "fail", "domain": "forged.example"}
    assert recorded["dmarc"] == {"result": "fail", "policy": "reject", "domain": "forged.example"}
    with pytest.raises(DmarcRefused, match="DMARC policy of forged.example says reject"):
        check(checker(dns_server.nameserver, refuse=True), raw, "ceo@forged.example", "ceo@forged.example",
              may_refuse=True)
    # Nobody left to refuse (already accepted): recorded only.
    assert not check(checker(dns_server.nameserver, refuse=True), raw, "ceo@forged.example",
                     "ceo@forged.example")["authenticated"]


def test_dns_timeout_is_a_temperror_not_a_crash_nor_a_refusal(silent_nameserver: str) -> None:
    c = checker(silent_nameserver, refuse=True, lifetime=0.5)
    raw = message("ann@signed.example", extra="DKIM-Signature: v=1; a=rsa-sha256; d=signed.example; s=sel1; "
                                              "h=from; bh=AAAA; b=AAAA\r\n")
    started = time.monotonic()
    verdict = check(c, raw, "ann@signed.example", "ann@signed.example", may_refuse=True)
    assert verdict["temperror"] and not verdict["authenticated"]
    assert verdict["dkim"][0]["result"] == "temperror"
    assert verdict["dmarc"]["result"] == "temperror"
    assert verdict["spf"]["result"] == "temperror"
    assert time.monotonic() - started < 20


def test_authentication_results_count_only_from_a_trusted_authserv_id(dns_server: DnsServer) -> None:
    c = checker(dns_server.nameserver)
    header = "Authentication-Results: {id}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org\r\n"
    untrusted = message("office@example.org", extra=header.format(id="mx.attacker.example"))
    verdict = check(c, untrusted, "office@example.org", "", intake="imap")
    assert not verdict["authenticated"] and "unverified-internal-sender" in verdict["flags"]
    assert verdict["authentication_results"]["ignored"][0]["authserv_id"] == "mx.attacker.example"
    assert verdict["dkim"] == [] and verdict["spf"] is None  # fetched mail: no SMTP envelope to check
    trusted = message("office@example.org", extra=header.format(id="mx.example.org"))
    verdict = check(c, trusted, "office@example.org", "", intake="imap")
    assert verdict["authenticated"] and verdict["method"] == "authentication-results"
    assert verdict["address"] == "office@example.org" and not verdict["flags"]
    # A trusted header about another domain proves nothing for this From.
    other = message("office@example.org", extra=header.format(id="mx.example.org").replace("example.org;", "x.example;")
                    .replace("header.d=example.org", "header.d=x.example").replace("header.from=example.org",
                                                                                   "header.from=x.example"))
    assert not check(c, other, "office@example.org", "", intake="imap")["authenticated"]


def test_authentication_results_are_read_where_the_header_puts_them_not_out_of_quoted_strings(
        dns_server: DnsServer) -> None:
    """An envelope sender's local part is the sender's to choose, and a trusted MTA may write it
    quoted into smtp.mailfrom: a result inside it, or inside a comment, proves nothing."""
    c = checker(dns_server.nameserver)
    for forged in ('mx.example.org; spf=pass smtp.mailfrom="x dmarc=pass header.from=example.org y"@evil.example; '
                   'dkim=none; dmarc=fail (p=reject) header.from=example.org',
                   'mx.example.org; spf=pass smtp.mailfrom="a; dkim=pass header.d=example.org"@evil.example',
                   'mx.example.org (dmarc=pass header.from=example.org); dmarc=fail header.from=example.org'):
        verdict = check(c, message("office@example.org", extra=f"Authentication-Results: {forged}\r\n"),
                        "office@example.org", "", intake="imap")
        assert not verdict["authenticated"] and "unverified-internal-sender" in verdict["flags"], forged
    [read] = check(c, message("office@example.org", extra='Authentication-Results: mx.example.org; spf=pass '
                                                           'smtp.mailfrom="a b"@evil.example; dmarc=fail '
                                                           'header.from=example.org\r\n'),
                   "office@example.org", "", intake="imap")["authentication_results"]["trusted"]
    assert read["results"] == ["spf=pass smtp.mailfrom=a b@evil.example", "dmarc=fail header.from=example.org"]
    # Versions, comments and quoted values where RFC 8601 has them are read as before.
    well_formed = message("office@example.org", extra='Authentication-Results: mx.example.org 1; dkim/1=pass '
                                                      '(good signature) header.d="example.org" header.s=s1\r\n')
    assert check(c, well_formed, "office@example.org", "", intake="imap")["authenticated"]


# 5 s: the three look-ups and the server's stop have to fit in the TTL on a loaded machine.
@pytest.mark.parametrize("ttl", [0, 5])
def test_answers_are_kept_as_long_as_their_ttl_and_no_longer(ttl: int) -> None:
    """Records, NXDOMAIN and empty answers (the last two with their domain's SOA) are answered again
    without the server until their TTL runs out, then asked again; with a TTL of 0, never kept."""
    zone = dns_fixtures.DnsZone()
    zone.txt["kept.example"] = "v=spf1 -all"
    server = dns_fixtures.start_dns(zone, ttl=ttl, authoritative_for="kept.example")
    answers = Answers(make_resolver([server.nameserver], timeout=0.3, lifetime=0.3))
    try:
        asked = time.time()
        record = answers.lookup("kept.example", dns.rdatatype.TXT, lifetime=0.3)
        assert record is not None and [b"".join(r.strings) for r in record] == [b"v=spf1 -all"]
        assert answers.lookup("_dmarc.kept.example", dns.rdatatype.TXT, lifetime=0.3) is None  # NXDOMAIN
        assert answers.lookup("kept.example", "A", lifetime=0.3) is None  # the name exists, no such records
    finally:
        dns_fixtures.stop_dns(server)
    if ttl:
        assert answers.lookup("kept.example", dns.rdatatype.TXT, lifetime=0.3) is record
        assert answers.lookup("_dmarc.kept.example", dns.rdatatype.TXT, lifetime=0.3) is None
        assert answers.lookup("kept.example", "A", lifetime=0.3) is None
        assert time.time() < asked + ttl, "too slow to tell"
        time.sleep(asked + ttl + 0.1 - time.time())
    for name, rdtype in (("kept.example", dns.rdatatype.TXT), ("_dmarc.kept.example", dns.rdatatype.TXT),
                         ("kept.example", "A")):
        with pytest.raises(dns.exception.DNSException):  # asked again, of a server that is gone
            answers.lookup(name, rdtype, lifetime=0.3)


def test_a_verdict_as_plain_data_is_what_asdict_gives_and_shares_nothing_with_it() -> None:
    verdict = Verdict("office@example.org", "example.org", smtp_auth_user="clerk",
                      dkim=[{"domain": "example.org", "selector": "s1", "result": "pass", "aligned": True}],
                      spf={"result": "softfail", "domain": "example.org"},
                      dmarc={"result": "pass", "policy": None, "domain": "example.org"},
                      authentication_results={"trusted": [{"authserv_id": "mx.example.org", "results": ["dkim=pass"]}],
                                              "ignored": [{"authserv_id": "x", "results": [], "reason": "not ours"}]},
                      flags=["unverified-internal-sender"], temperror=True)
    verdict.prove("dkim")
    plain = verdict.as_dict()
    assert plain == dataclasses.asdict(verdict) and list(plain) == list(dataclasses.asdict(verdict))
    plain["dkim"][0]["result"] = "fail"
    plain["authentication_results"]["trusted"][0]["results"].append("spf=pass")
    plain["flags"].clear()
    assert verdict.dkim[0]["result"] == "pass" and verdict.flags == ["unverified-internal-sender"]
    assert verdict.authentication_results["trusted"][0]["results"] == ["dkim=pass"]
    assert Verdict("", "").as_dict() == dataclasses.asdict(Verdict("", ""))


def test_sender_verified_rule_and_spoofed_internal_sender_is_external() -> None:
    rules = textwrap.dedent("""
        rules:
          - name: verified-internal
            when: {sender_internal: true, sender_verified: true}
            set: {category: internal.employee_to_employee, department: sender}
          - name: unverified
            when: {sender_verified: false}
            set: {department: general-office, tags: [unverified]}
    """)
    org = Organisation.of([], categories=["internal.employee_to_employee"], triage_department="general-office",
                          domains=["example.org"])
    org = Organisation(("general-office", "business"), org.categories, "general-office", org.domains, {},
                       {"sales.desk@example.org": "business"})
    ruleset = compile_rules(Path("rules.yaml"), rules, org)
    proven = ruleset.classify(Facts("email", "sales.desk@example.org", sender_verified=True, trust_method="dkim"))
    assert (proven.category, proven.department) == ("internal.employee_to_employee", "business")
    assert proven.trace()["trust"] == {"sender_verified": True, "method": "dkim", "unverified_internal_sender": False}
    spoofed = ruleset.classify(Facts("email", "sales.desk@example.org", unverified_internal=True))
    assert (spoofed.category, spoofed.department, spoofed.tags) == (None, "general-office", ["unverified"])
    assert spoofed.trace()["trust"]["unverified_internal_sender"] is True


def test_over_smtp_verdict_stored_shown_and_dmarc_reject_refused(tmp_path: Path, notify: Notify,
                                                                  dns_server: DnsServer) -> None:
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
        trusted_authserv_ids = ["mx.example.org"]
        dmarc_policy = "refuse"
    """))
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.signed.example", timeout=60) as c:
            signed = dns_server.sign(message("Ann <ann@signed.example>"), "signed.example", "sel1")
            code, reply = c.sendmail("ann@signed.example", ["liaison@example.org"], signed) or (250, b"")
            code, reply = c.mail("ceo@forged.example")
            c.rcpt("liaison@example.org")
            code, reply = c.data(message("ceo@forged.example", subject="Wire transfer"))
            assert code == 550 and reply.startswith(b"5.7.1 DMARC policy of forged.example says reject"), reply
            c.rset()
            c.sendmail("someone@partner.example", ["liaison@example.org"],
                       message("office@example.org", subject="Internal memo"))
        letters = {row["subject"]: row for row in gateway.list_json()}
        assert set(letters) == {"Quarterly figures", "Internal memo"}  # the refused mail is nowhere
        assert gateway.spool_files("quarantine") == []
        good = gateway.show_json(str(letters["Quarterly figures"]["number"]))
        assert good["trust"]["authenticated"] and good["trust"]["method"] == "dkim"
        assert good["classification"]["trust"]["sender_verified"] is True
        shown = gateway.run("letters", "show", str(letters["Quarterly figures"]["number"])).stdout
        assert "Sender verified" in shown and "by dkim" in shown and "s=sel1" in shown
        memo = gateway.show_json(str(letters["Internal memo"]["number"]))
        assert not memo["trust"]["authenticated"] and "unverified-internal-sender" in memo["flags"]
        assert memo["classification"]["trust"]["unverified_internal_sender"] is True
    finally:
        proc.stop()


def test_a_dkim_signed_reply_from_the_owner_through_her_reply_address_is_obeyed_and_a_broken_one_refused(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """Over the daemon's SMTP listener, no SMTP AUTH, no Authentication-Results: the owner's reply
    proves its From only by its DKIM signature (example.org publishes SPF -all, so from here
    DMARC can pass only through an aligned DKIM pass). Three replies, identical but for the
    signature: body changed after signing, signed under a selector example.org does not
    publish, and intact. Only the intact one is obeyed."""
    sink = SmtpSink().start()
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [outbound]
        relay = "{sink.address}"
        from_address = "gateway@example.org"
        poll_seconds = 0.2
        retry_min_seconds = 0.3
        retry_max_seconds = 1

        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
        trusted_authserv_ids = ["mx.example.org"]
    """))
    owner = "sales.desk@example.org"
    # A key of example.org's, but not the one its DNS publishes at this selector (none is).
    unpublished = DkimKey.generate("example.org", "old")
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("alice@partner.example", ["sales@example.org"],
                       message("alice@partner.example", subject="Delivery late", body="Where is my order?\r\n")
                       .replace(b"To: liaison@example.org", b"To: sales@example.org"))
        wait_for(lambda: sink.to(owner), 30, "the owner's notification")
        [notification] = [r.message for r in sink.to(owner)]
        number, reply_to = str(notification["X-Gateway-Letter"]), str(notification["Reply-To"])
        assert reply_to.startswith("gateway+") and reply_to.endswith("@example.org")
        assert gateway.show_json(number)["department"] == "business"

        def reply(body: str) -> bytes:
            return (f"From: Sales Desk <{owner}>\r\nTo: {reply_to}\r\nSubject: Re: [{number}] Delivery late\r\n"
                    f"Date: Tue, 01 Dec 2026 11:00:00 +0800\r\nMessage-ID: <{time.monotonic_ns()}@example.org>\r\n"
                    f"\r\n{body}").encode()

        def tampered() -> bytes:
            # Signed as "received", changed on the way into a command to move the letter.
            return dns_server.sign(reply("received\r\n"), "example.org", "mail").replace(
                b"\r\n\r\nreceived\r\n", b"\r\n\r\nreassign general-office\r\n")

        def wrong_selector() -> bytes:
            raw = reply("received\r\n")
            return dkim.sign(raw, b"old", b"example.org", unpublished.private_pem,
                             include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw

        def intact() -> bytes:
            return dns_server.sign(reply("received\r\n"), "example.org", "mail")

        def send(raw: bytes) -> None:
            with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.example.org", timeout=60) as c:
                c.sendmail(owner, [reply_to], raw)

        cases: list[tuple[Callable[[], bytes], bool]] = [(tampered, False), (wrong_selector, False), (intact, True)]
        sent: dict[str, bytes] = {}
        for count, (make, obeyed) in enumerate(cases, start=1):
            sent[make.__name__] = make()
            send(sent[make.__name__])
            answer = wait_answers(gateway, number, count)[-1]["details"]
            assert answer["from"] == owner and answer["obeyed"] is obeyed, (make.__name__, answer)
            if obeyed:
                # Authenticated, and by DKIM: nothing else here could have proven the From.
                assert answer["authenticated"] == owner and answer["authenticated_by"] == "dkim"
                assert "refused" not in answer
            else:
                # The one reason: authentication (the token and the owner were right).
                assert answer["authenticated"] is None, make.__name__
                assert answer["refused"].startswith(f"the sender {owner} is not authenticated"), answer["refused"]
                assert "reply token" not in answer["refused"] and "not an owner" not in answer["refused"]
                # The owner is told once an hour at most: the first refusal tells, the next is counted.
                assert answer["refusal_notice" if count == 1 else "notice_suppressed"] == [owner], answer
                letter = gateway.show_json(number)
                assert (letter["status"], letter["department"]) == ("routed", "business"), make.__name__
        letter = gateway.show_json(number)
        assert (letter["status"], letter["department"]) == ("acknowledged", "business")

        # The signed answer again with a Message-ID of its own above the signed one (DKIM still
        # passes): the same signature, recognised, not obeyed twice.
        send(b"Message-ID: <replayed@evil.example>\r\n" + sent["intact"])
        wait_for(lambda: proc.output().count(f"{number}: answer from {owner}") == 4, 30, "the replay taken in")
        assert len(answers(gateway, number)) == 3
        # A signed mail with another From or Subject above the signed one: the reader would take
        # the added one, the signature covers the other; nothing is proven.
        for count, (added, sender) in enumerate(((f"Subject: Re: [{number}] Delivery late", owner),
                                                 ("From: Business Head <business.head@example.org>",
                                                  "business.head@example.org")), start=4):
            send(added.encode() + b"\r\n" + dns_server.sign(reply("in progress\r\n"), "example.org", "mail"))
            answer = wait_answers(gateway, number, count)[-1]["details"]
            assert (answer["from"], answer["obeyed"], answer["authenticated"]) == (sender, False, None), answer
            assert gateway.show_json(number)["status"] == "acknowledged"
    finally:
        proc.stop()
        sink.stop()


def answers(gateway: Gateway, number: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = gateway.show_json(number)["events"]  # type: ignore[assignment]
    return [e for e in events if e["action"] == "answer"]


def wait_answers(gateway: Gateway, number: str, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(answers(gateway, number)) >= count, 30, f"{count} answer(s) on {number}")
    return answers(gateway, number)


AR_FORGED = "mx.example.org; dmarc=pass header.from=example.org"


def test_trusted_authentication_results_over_smtp_count_only_from_a_trusted_relay(dns_server: DnsServer) -> None:
    raw = message("office@example.org", extra=f"Authentication-Results: {AR_FORGED}\r\n")
    # Straight to the listener from a client that is not a relay: anyone could have written it.
    verdict = check(checker(dns_server.nameserver, relays=("192.0.2.0/24",)), raw, "office@example.org",
                    "someone@partner.example")
    assert not verdict["authenticated"] and "unverified-internal-sender" in verdict["flags"]
    assert verdict["authentication_results"]["trusted"] == []
    [ignored] = verdict["authentication_results"]["ignored"]
    assert (ignored["authserv_id"], ignored["reason"]) == ("mx.example.org", NOT_A_TRUSTED_RELAY)
    # Handed over by the organisation's MTA (IPv4-mapped, as a dual-stack listener reports it).
    relay = checker(dns_server.nameserver, relays=("127.0.0.0/8",))
    verdict = relay.check(raw, "office@example.org", headers(raw),
                          {**SMTP_ENVELOPE, "client": "::ffff:127.0.0.1", "mail_from": "someone@partner.example"},
                          "smtp").as_dict()
    assert verdict["authenticated"] and verdict["method"] == "authentication-results"
    # Fetched from the organisation's mailboxes: no SMTP client to ask about, as before.
    assert check(checker(dns_server.nameserver), raw, "office@example.org", "", intake="imap")["authenticated"]


@pytest.mark.parametrize("relays, counts", [('["192.0.2.0/24"]', False), ('["127.0.0.1"]', True)])
def test_over_smtp_a_trusted_authserv_id_counts_only_from_a_configured_relay(
        tmp_path: Path, notify: Notify, dns_server: DnsServer, relays: str, counts: bool) -> None:
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
        trusted_authserv_ids = ["mx.example.org"]
        trusted_relays = {relays}
    """))
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("someone@partner.example", ["liaison@example.org"],
                       message("office@example.org", subject="Internal memo",
                               extra=f"Authentication-Results: {AR_FORGED}\r\n"))
        [row] = gateway.list_json()
        letter = gateway.show_json(str(row["number"]))
        trust = letter["trust"]
        if counts:
            assert trust["authenticated"] and trust["method"] == "authentication-results"
            assert trust["address"] == "office@example.org" and "unverified-internal-sender" not in letter["flags"]
            assert [r["authserv_id"] for r in trust["authentication_results"]["trusted"]] == ["mx.example.org"]
        else:
            assert not trust["authenticated"] and trust["address"] is None
            assert "unverified-internal-sender" in letter["flags"]
            assert trust["authentication_results"]["trusted"] == []
            assert [r["reason"] for r in trust["authentication_results"]["ignored"]] == [NOT_A_TRUSTED_RELAY]
    finally:
        proc.stop()


# What the organisation's border MTA writes on top of a mail it took from an outside server: its
# verdict, then its Received header recording that server. Anything below was there before.
BORDER_FAIL = ("Authentication-Results: mx.example.org; dmarc=fail header.from=example.org\r\n"
               "Received: from mail.attacker.example (mail.attacker.example [203.0.113.9])\r\n"
               "\tby mx.example.org (Postfix) with ESMTP id 4QZ; Tue, 01 Dec 2026 10:00:01 +0800\r\n")


def test_authentication_results_below_the_borders_received_prove_nothing(dns_server: DnsServer) -> None:
    # The sender wrote one with our authserv-id into the mail; the border added its own above.
    forged = (BORDER_FAIL + f"Authentication-Results: {AR_FORGED}\r\n").encode() + message("office@example.org")
    relay = checker(dns_server.nameserver, relays=("127.0.0.1",))
    for intake in ("smtp", "imap", "file"):
        verdict = check(relay, forged, "office@example.org", "someone@partner.example", intake=intake)
        assert not verdict["authenticated"] and "unverified-internal-sender" in verdict["flags"], intake
        assert [r["results"] for r in verdict["authentication_results"]["trusted"]] == [
            ["dmarc=fail header.from=example.org"]], intake
        [ignored] = verdict["authentication_results"]["ignored"]
        assert ignored["reason"] == BELOW_BORDER and ignored["results"] == ["dmarc=pass header.from=example.org"]
    # The border's own verdict at the top still counts, under the mailbox's delivery trace too.
    real = (BORDER_FAIL.replace("dmarc=fail", "dmarc=pass") + message("office@example.org").decode()).encode()
    delivered = (b"Return-Path: <someone@partner.example>\r\nReceived: from mx.example.org ([10.0.0.5])\r\n"
                 b"\tby imap.example.org with LMTP id 7; Tue, 01 Dec 2026 10:00:02 +0800\r\n" + real)
    for intake, raw in (("smtp", real), ("imap", real), ("imap", delivered), ("file", delivered)):
        verdict = check(relay, raw, "office@example.org", "someone@partner.example", intake=intake)
        assert verdict["authenticated"] and verdict["method"] == "authentication-results", intake
    # A hop between the border and us counts as inside only when it is a trusted relay itself:
    # else it is taken for the border, and the border's Received below it for the outside server's.
    below = (BORDER_BELOW.replace("dmarc=fail", "dmarc=pass") + message("office@example.org").decode()).encode()
    hub = (b"Received: from mx.example.org (mx.example.org [192.0.2.25])\r\n"
           b"\tby hub.example.org (Postfix) with ESMTP id 9; Tue, 01 Dec 2026 10:00:02 +0800\r\n" + below)
    assert check(checker(dns_server.nameserver, relays=("127.0.0.1", "192.0.2.25")), hub, "office@example.org",
                 "someone@partner.example")["authenticated"]
    verdict = check(relay, hub, "office@example.org", "someone@partner.example")
    assert not verdict["authenticated"] and verdict["authentication_results"]["ignored"][0]["reason"] == BELOW_BORDER
    # An outside client naming a relay's address beside its own (as its HELO name) stays outside.
    helo = forged.replace(b"from mail.attacker.example (", b"from [127.0.0.1] (", 1)
    assert not check(relay, helo, "office@example.org", "someone@partner.example")["authenticated"]


# The border's verdict just below its own Received header, as OpenDKIM and OpenDMARC insert it.
BORDER_BELOW = ("Received: from mail.partner.example (mail.partner.example [203.0.113.9])\r\n"
                "\tby mx.example.org (Postfix) with ESMTP id 4QZ; Tue, 01 Dec 2026 10:00:01 +0800\r\n"
                "Authentication-Results: mx.example.org; dmarc=fail header.from=example.org\r\n")


def test_the_borders_verdict_just_below_its_own_received_counts_and_one_further_down_does_not(
        dns_server: DnsServer) -> None:
    relay = checker(dns_server.nameserver, relays=("127.0.0.1",))
    real = (BORDER_BELOW.replace("dmarc=fail", "dmarc=pass") + message("office@example.org").decode()).encode()
    ours = (b"Received: from mx.example.org (mx.example.org [127.0.0.1])\r\n"
            b"\tby gateway.example.org with ESMTP id 8; Tue, 01 Dec 2026 10:00:02 +0800\r\n" + real)
    delivered = (b"Return-Path: <someone@partner.example>\r\nReceived: from mx.example.org ([10.0.0.5])\r\n"
                 b"\tby imap.example.org with LMTP id 7; Tue, 01 Dec 2026 10:00:02 +0800\r\n" + real)
    for intake, raw in (("smtp", real), ("smtp", ours), ("imap", real), ("imap", delivered), ("file", delivered)):
        verdict = check(relay, raw, "office@example.org", "someone@partner.example", intake=intake)
        assert verdict["authenticated"] and verdict["method"] == "authentication-results", intake
    # The sender's own server wrote a Received above the verdict it forged: that is below the
    # border's part of the header, whichever side of its Received the border writes.
    forged = (BORDER_BELOW + "Received: from pc.partner.example (pc.partner.example [198.51.100.7])\r\n"
              "\tby mail.partner.example with ESMTP id 2; Tue, 01 Dec 2026 10:00:00 +0800\r\n"
              f"Authentication-Results: {AR_FORGED}\r\n").encode() + message("office@example.org")
    for intake in ("smtp", "imap", "file"):
        verdict = check(relay, forged, "office@example.org", "someone@partner.example", intake=intake)
        assert not verdict["authenticated"], intake
        assert [r["results"] for r in verdict["authentication_results"]["trusted"]] == [
            ["dmarc=fail header.from=example.org"]], intake
        assert [r["reason"] for r in verdict["authentication_results"]["ignored"]] == [BELOW_BORDER], intake


def test_over_smtp_a_forged_authentication_results_below_the_relays_received_is_ignored(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
        trusted_authserv_ids = ["mx.example.org"]
        trusted_relays = ["127.0.0.1"]
    """))
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        forged = BORDER_FAIL + f"Authentication-Results: {AR_FORGED}\r\n"
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.example.org", timeout=60) as c:
            c.sendmail("someone@partner.example", ["liaison@example.org"],
                       forged.encode() + message("office@example.org", subject="Forged memo"))
            c.sendmail("someone@partner.example", ["liaison@example.org"],
                       BORDER_FAIL.replace("dmarc=fail", "dmarc=pass").encode()
                       + message("office@example.org", subject="Real memo"))
        wait_for(lambda: len(gateway.list_json()) == 2, 30, "two letters")
        letters = {str(row["subject"]): gateway.show_json(str(row["number"])) for row in gateway.list_json()}
        trust = letters["Forged memo"]["trust"]
        assert not trust["authenticated"] and "unverified-internal-sender" in letters["Forged memo"]["flags"]
        assert [r["reason"] for r in trust["authentication_results"]["ignored"]] == [BELOW_BORDER]
        trust = letters["Real memo"]["trust"]
        assert trust["authenticated"] and trust["method"] == "authentication-results"
        assert "unverified-internal-sender" not in letters["Real memo"]["flags"]
    finally:
        proc.stop()


def test_relaxed_alignment_knows_public_suffixes() -> None:
    assert not aligned("evil.com.cn", "example.com.cn", "r")
    assert aligned("mail.example.com.cn", "example.com.cn", "r")
    assert not aligned("com.cn", "example.com.cn", "r") and organisational_domain("com.cn") == "com.cn"
    assert not aligned("tax.gov.cn", "police.gov.cn", "r")
    assert aligned("mx.beijing.gov.cn", "beijing.gov.cn", "r")
    assert organisational_domain("a.b.example.gov.cn") == "example.gov.cn"
    assert not aligned("evil.co.uk", "example.co.uk", "r")
    assert aligned("Mail.Example.co.uk", "example.co.uk", "r")
    assert not aligned("mail.example.co.uk", "example.co.uk", "s")
    assert organisational_domain("mx.partner.example") == "partner.example"  # unknown TLD: one label


class SplitResolver(dns.resolver.Resolver):
    """DMARC records asked of one server, every other lookup (DKIM keys, SPF) of another."""

    def __init__(self, dmarc: dns.resolver.Resolver, other: dns.resolver.Resolver):
        super().__init__(configure=False)
        self.dmarc, self.other = dmarc, other
        self.lifetime = max(float(dmarc.lifetime), float(other.lifetime))

    def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        target = self.dmarc if str(qname).startswith("_dmarc.") else self.other
        kwargs["lifetime"] = min(float(kwargs.get("lifetime") or target.lifetime), float(target.lifetime))
        return target.resolve(qname, rdtype, *args, **kwargs)


def test_dmarc_reject_with_dkim_and_spf_unanswered_is_a_temperror_never_refused(
        dns_server: DnsServer, silent_nameserver: str) -> None:
    resolver = SplitResolver(make_resolver([dns_server.nameserver], 1.0, 2.0),
                             make_resolver([silent_nameserver], 0.3, 0.5))
    c = checker(dns_server.nameserver, refuse=True, resolver=resolver)
    signed = dns_server.sign(message("ann@signed.example"), "signed.example", "sel1")
    verdict = check(c, signed, "ann@signed.example", "ann@signed.example", may_refuse=True)  # no DmarcRefused
    assert verdict["dkim"][0]["result"] == "temperror" and verdict["spf"]["result"] == "temperror"
    assert verdict["dmarc"] == {"result": "temperror", "policy": "reject", "domain": "signed.example"}
    assert verdict["temperror"] and not verdict["authenticated"]
    # A failed lookup that could not have made DMARC pass changes nothing: an unaligned signature.
    other = dns_server.sign(message("ceo@forged.example"), "signed.example", "sel1")
    verdict = check(checker(dns_server.nameserver, refuse=True, resolver=SplitResolver(
        make_resolver([dns_server.nameserver], 1.0, 2.0), make_resolver([silent_nameserver], 0.3, 0.5))),
        other, "ceo@forged.example", "bounce@signed.example")
    assert verdict["dkim"][0]["result"] == "temperror" and verdict["dmarc"]["result"] == "fail"


def test_one_check_keeps_one_dns_deadline_however_many_lookups(silent_nameserver: str) -> None:
    # Three signatures, SPF and DMARC, each lookup allowed 3 s: some 15 s without the deadline.
    signatures = "".join(f"DKIM-Signature: v=1; a=rsa-sha256; d=slow{n}.example; s=s; h=from; bh=AAAA; b=AAAA\r\n"
                         for n in range(3))
    c = checker(silent_nameserver, lifetime=3.0, deadline=1.0, refuse=True)
    started = time.monotonic()
    verdict = check(c, message("ann@slow0.example", extra=signatures), "ann@slow0.example", "ann@slow0.example",
                    may_refuse=True)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.5, elapsed
    assert [d["result"] for d in verdict["dkim"]] == ["temperror"] * 3
    assert verdict["spf"]["result"] == "temperror" and verdict["dmarc"]["result"] == "temperror"
    assert verdict["temperror"] and not verdict["authenticated"]


def test_dkim_key_among_other_txt_records_several_dmarc_records_and_a_malformed_from(dns_server: DnsServer) -> None:
    c = checker(dns_server.nameserver)
    # The selector's first TXT record is not the key: the one starting v=DKIM1 is taken.
    signed = dns_server.sign(message("ann@signed.example"), "signed.example", "multi")
    verdict = check(c, signed, "ann@signed.example", "")
    assert verdict["dkim"] == [{"domain": "signed.example", "selector": "multi", "result": "pass", "aligned": True}]
    assert verdict["authenticated"] and verdict["method"] == "dkim"
    # Two DMARC records: no DMARC (RFC 7489 6.6.3), so its p=reject cannot refuse anything.
    verdict = check(checker(dns_server.nameserver, refuse=True), message("ceo@twice.example"), "ceo@twice.example",
                    "ceo@twice.example", may_refuse=True)
    assert verdict["spf"]["result"] == "fail"
    assert verdict["dmarc"] == {"result": "none", "policy": None, "domain": "twice.example"}
    # A From domain that cannot exist is a permanent error, not a DNS failure to try again.
    verdict = check(c, message("ann@bad..example"), "ann@bad..example", "")
    assert verdict["dmarc"] == {"result": "permerror", "policy": None, "domain": "bad..example"}
    assert not verdict["temperror"] and not verdict["authenticated"]


def test_stored_authentication_results_are_capped() -> None:
    c = checker("127.0.0.1:9")
    many = "".join(f"Authentication-Results: mx{n}.attacker.example; dmarc=pass header.from=example.org\r\n"
                   for n in range(MAX_AUTHENTICATION_RESULTS + 10))
    many += "".join(f"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=n{n}.example\r\n"
                    for n in range(MAX_AUTHENTICATION_RESULTS + 10))
    many += f"Authentication-Results: {AR_FORGED}\r\n"  # the last one still counts
    verdict = check(c, message("office@example.org", extra=many), "office@example.org", "", intake="imap")
    assert len(verdict["authentication_results"]["ignored"]) == MAX_AUTHENTICATION_RESULTS
    assert len(verdict["authentication_results"]["trusted"]) == MAX_AUTHENTICATION_RESULTS
    assert verdict["authenticated"] and verdict["method"] == "authentication-results"


def test_a_field_only_one_parser_sees_proves_nothing(dns_server: DnsServer) -> None:
    """A signed mail rebuilt so that the header the letter is read with is not the one the
    signature covers proves nothing: a bare CR ends the header for Python's parser (which then
    reads a forged Subject placed above it) but not for dkimpy's; and fields past the normaliser's
    bound (500) are not read, so a second Subject far down would pass unseen. Both are flagged
    `ambiguous-header` and the sender is not authenticated."""
    from gateway.stages.normalise import normalise

    c = checker(dns_server.nameserver)
    signed = dns_server.sign(message("Ann <ann@signed.example>", subject="Lunch on Friday"), "signed.example", "sel1")

    def verdict_of(raw: bytes) -> dict:
        parsed = normalise(raw)
        return c.check(raw, "ann@signed.example", parsed.header_fields,
                       {**SMTP_ENVELOPE, "mail_from": "ann@signed.example"}, "smtp").as_dict()
    assert verdict_of(signed)["authenticated"] and verdict_of(signed)["flags"] == []

    head, _, body = signed.partition(b"\r\n\r\n")
    from_line = next(line for line in head.split(b"\r\n") if line.startswith(b"From:"))
    rest = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"From:"))
    forged = (from_line + b"\r\nSubject: Urgent: approve the transfer\r\nX-A: v\r\r\n" + rest + b"\r\n\r\n" + body)
    parsed = normalise(forged)
    assert parsed.subject == "Urgent: approve the transfer"  # what the letter would show
    verdict = verdict_of(forged)
    assert verdict["dkim"][0]["result"] == "pass"  # the signature itself still verifies
    assert not verdict["authenticated"] and verdict["address"] is None
    assert "ambiguous-header" in verdict["flags"]

    filler = b"".join(b"X-F%d: filler\r\n" % n for n in range(520))
    buried = dns_server.sign(message("Ann <ann@signed.example>", subject="Lunch on Friday"), "signed.example", "sel1")
    buried = b"Subject: Approve the transfer now\r\n" + filler + buried
    verdict = verdict_of(buried)
    assert not verdict["authenticated"] and "ambiguous-header" in verdict["flags"]


def test_a_dkim_signature_whose_l_leaves_the_end_of_the_body_unsigned_proves_nothing(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """RFC 6376 8.2: with l= a signature covers only the first l bytes of the body, so anyone can
    append to a signed mail (a forged postscript, a part of their own) and it still verifies.
    Over the daemon's listener: a signature whose l= covers the whole body proves the From as
    any other; the same mail with text appended after the signed length is recorded as DKIM
    `policy` with the reason, proves nothing, and DMARC fails."""
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
    """))
    key = dns_server.zone.keys[("signed.example", "sel1")]

    def signed_with_length(subject: str) -> bytes:
        raw = message("Ann <ann@signed.example>", subject=subject)
        return dkim.sign(raw, b"sel1", b"signed.example", key.private_pem, length=True,
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw

    whole = signed_with_length("Quarterly figures")
    appended = signed_with_length("Payment details") + b"P.S. Our bank account has changed: pay to 6222 0000.\r\n"
    assert b" l=26;" in whole and b" l=26;" in appended
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        # The envelope sender is not signed.example's (whose SPF passes from here): only DKIM can prove.
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("bounce@partner.example", ["liaison@example.org"], whole)
            c.sendmail("bounce@partner.example", ["liaison@example.org"], appended)
        letters = {row["subject"]: str(row["number"]) for row in gateway.list_json()}
        trust = gateway.show_json(letters["Quarterly figures"])["trust"]
        assert trust["authenticated"] and trust["method"] == "dkim"
        assert trust["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "pass", "aligned": True}]

        forged = gateway.show_json(letters["Payment details"])
        trust = forged["trust"]
        assert not trust["authenticated"] and trust["address"] is None and trust["method"] is None
        assert trust["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "policy", "aligned": True,
                                  "reason": "l=26 leaves 54 bytes of the body unsigned"}]
        assert trust["dmarc"] == {"result": "fail", "policy": "reject", "domain": "signed.example"}
        assert forged["classification"]["trust"]["sender_verified"] is False
        shown = gateway.run("letters", "show", letters["Payment details"]).stdout
        assert "DKIM policy d=signed.example s=sel1 (l=26 leaves 54 bytes of the body unsigned)" in shown
    finally:
        proc.stop()


def test_a_trusted_headers_dkim_pass_aligns_as_the_from_domains_dmarc_record_says(
        dns_server: DnsServer, silent_nameserver: str) -> None:
    """A trusted Authentication-Results' DKIM pass for another name under the From domain proves
    the From only where that domain's DMARC record allows relaxed alignment: strict.example says
    adkim=s, so a pass for mail.strict.example is not its own; with no record (nodmarc.example)
    or one without adkim (signed.example) relaxed, as before. The same for mail fetched by IMAP
    (the record is asked for this alone) and for mail from a trusted relay over SMTP. A record
    that cannot be looked up proves nothing (a temperror); an exact domain needs no lookup."""
    def verdict(sender: str, signer: str, intake: str, c: Checker) -> dict:
        raw = message(sender, extra=f"Authentication-Results: mx.example.org; dkim=pass header.d={signer}\r\n")
        return check(c, raw, sender, "someone@partner.example", intake=intake)

    c = checker(dns_server.nameserver, relays=("127.0.0.0/8",))
    for intake in ("imap", "smtp"):
        strict = verdict("boss@strict.example", "mail.strict.example", intake, c)
        assert not strict["authenticated"] and strict["address"] is None, intake
        assert not strict["temperror"] and len(strict["authentication_results"]["trusted"]) == 1
        for sender, signer in (("boss@strict.example", "Strict.Example"),
                               ("ann@nodmarc.example", "mail.nodmarc.example"),
                               ("ann@signed.example", "mail.signed.example")):
            proven = verdict(sender, signer, intake, c)
            assert proven["authenticated"] and proven["method"] == "authentication-results", (intake, sender, signer)
            assert proven["address"] == sender
    # The MTA's own DMARC pass already applied the record's alignment: it counts as before.
    raw = message("boss@strict.example",
                  extra="Authentication-Results: mx.example.org; dmarc=pass header.from=strict.example\r\n")
    assert check(c, raw, "boss@strict.example", "", intake="imap")["authenticated"]

    unanswered = checker(silent_nameserver, lifetime=0.5)
    relaxed = verdict("ann@signed.example", "mail.signed.example", "imap", unanswered)
    assert not relaxed["authenticated"] and relaxed["temperror"]
    exact = verdict("ann@signed.example", "signed.example", "imap", unanswered)
    assert exact["authenticated"] and not exact["temperror"]


def sign_by_hand(dns_server: DnsServer, raw: bytes, domain: str, selector: str,
                 signed: tuple[bytes, ...] = (b"from", b"to", b"subject", b"date", b"message-id"),
                 extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A valid signature over the header fields `signed`, with tags of `extra` after d= and s=,
    as a misconfigured or hostile signer would make it (dkimpy's own signer refuses to leave
    From out and adds no tags of one's choosing)."""
    import base64
    import hashlib

    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import parse_pem_private_key

    key = dns_server.zone.keys[(domain, selector)]
    signer = dkim.DKIM(raw)
    signer.signature_algorithm, signer.hasher = b"rsa-sha256", hashlib.sha256
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", domain.encode()),
              (b"s", selector.encode()), *extra, (b"h", b" : ".join(signed)), (b"bh", body_hash), (b"b", b"0" * 60)]
    return b"DKIM-Signature: " + signer.gen_header(fields, signed, policy, b"DKIM-Signature",
                                                   parse_pem_private_key(key.private_pem)) + raw


def test_a_dkim_signature_that_does_not_cover_from_proves_nothing(dns_server: DnsServer) -> None:
    """RFC 6376 5.4 and 6.1.1: a signature must cover From, or it says nothing about who wrote the
    mail: anyone holding one such signed mail of a domain (one they were sent) could put any From
    of that domain on it and it would still verify. Such a signature is a `permerror` with the
    reason, proves nothing, and DMARC fails."""
    from gateway.stages.verdict import describe

    c = checker(dns_server.nameserver)
    raw = message("Ann <ann@signed.example>", subject="Lunch on Friday")
    signed = sign_by_hand(dns_server, raw, "signed.example", "sel1", signed=(b"to", b"subject", b"date", b"message-id"))
    forged = signed.replace(b"From: Ann <ann@signed.example>", b"From: CEO <ceo@signed.example>")
    for sender, mail in (("ann@signed.example", signed), ("ceo@signed.example", forged)):
        verdict = check(c, mail, sender, "bounce@partner.example")
        assert not verdict["authenticated"] and verdict["address"] is None and verdict["method"] is None, sender
        assert verdict["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "permerror",
                                    "aligned": True, "reason": "the signature does not cover the From field"}]
        assert verdict["dmarc"] == {"result": "fail", "policy": "reject", "domain": "signed.example"}
        assert "DKIM permerror d=signed.example s=sel1 (the signature does not cover the From field)" \
            in describe(verdict)
    # The same mail signed over From still proves it.
    assert check(c, dns_server.sign(raw, "signed.example", "sel1"), "ann@signed.example",
                 "bounce@partner.example")["authenticated"]


def test_a_dkim_signature_made_with_rsa_sha1_proves_nothing(dns_server: DnsServer) -> None:
    """RFC 8301 3.1: verifiers must not consider signatures using RSA SHA-1 valid (SHA-1 collisions
    can be bought). Such a signature is a `permerror` with the reason and proves nothing; the same
    mail signed with rsa-sha256 still proves its From."""
    from gateway.stages.verdict import describe

    c = checker(dns_server.nameserver)
    raw = message("Ann <ann@signed.example>")
    key = dns_server.zone.keys[("signed.example", "sel1")]
    sha1 = dkim.sign(raw, b"sel1", b"signed.example", key.private_pem, signature_algorithm=b"rsa-sha1",
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw
    assert b"a=rsa-sha1" in sha1
    verdict = check(c, sha1, "ann@signed.example", "bounce@partner.example")
    assert not verdict["authenticated"] and verdict["address"] is None and verdict["method"] is None
    assert verdict["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "permerror",
                                "aligned": True, "reason": "rsa-sha1 is not accepted (RFC 8301)"}]
    assert verdict["dmarc"] == {"result": "fail", "policy": "reject", "domain": "signed.example"}
    assert "DKIM permerror d=signed.example s=sel1 (rsa-sha1 is not accepted (RFC 8301))" in describe(verdict)
    assert check(c, dns_server.sign(raw, "signed.example", "sel1"), "ann@signed.example",
                 "bounce@partner.example")["authenticated"]


def test_spf_is_recorded_for_the_domain_it_checked_not_the_helo_name(tmp_path: Path, notify: Notify,
                                                                     dns_server: DnsServer) -> None:
    """An envelope sender without an @ (`MAIL FROM:<signed.example>`) is a domain to SPF (RFC 7208
    4.3): its pass is signed.example's, whose SPF allows this client. It must be recorded as
    such, and not as a pass of the HELO name, which the client chose (`example.org`, whose SPF
    allows nobody): that would align with a From of example.org and pass its DMARC, proving a
    forged internal sender."""
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
    """))
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="example.org", timeout=60) as c:
            c.ehlo()
            code, reply = c.mail("signed.example")
            assert code == 250, reply
            assert c.rcpt("liaison@example.org")[0] == 250
            code, reply = c.data(message("Director <director@example.org>", subject="Close 2026 files"))
            assert code == 250, reply
        [row] = gateway.list_json()
        letter = gateway.show_json(str(row["number"]))
        trust = letter["trust"]
        assert trust["spf"] == {"result": "pass", "domain": "signed.example"}
        assert trust["dmarc"] == {"result": "fail", "policy": "quarantine", "domain": "example.org"}
        assert not trust["authenticated"] and trust["address"] is None and trust["method"] is None
        assert "unverified-internal-sender" in letter["flags"]
    finally:
        proc.stop()


def test_a_dkim_signature_is_aligned_by_the_d_tag_it_was_verified_with(tmp_path: Path, notify: Notify,
                                                                       dns_server: DnsServer) -> None:
    """DKIM tags are case-sensitive (RFC 6376 3.2): `D=` is not `d=`, and dkimpy verifies a
    signature by its `d=` and passes over an unknown `D=`. An outsider signing with their own
    domain's key (d=signed.example) and adding `D=example.org` must not have the signature taken
    for example.org's: over the daemon's listener, a From of example.org is not proven by it."""
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
    """))
    raw = message("Director <director@example.org>", subject="Close 2026 files")
    forged = sign_by_hand(dns_server, raw, "signed.example", "sel1", extra=((b"D", b"example.org"), (b"S", b"mail")))
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("bounce@partner.example", ["liaison@example.org"], forged)
        [row] = gateway.list_json()
        letter = gateway.show_json(str(row["number"]))
        trust = letter["trust"]
        assert trust["dkim"] == [{"domain": "signed.example", "selector": "sel1", "result": "pass", "aligned": False}]
        assert trust["dmarc"] == {"result": "fail", "policy": "quarantine", "domain": "example.org"}
        assert not trust["authenticated"] and trust["address"] is None and trust["method"] is None
        assert "unverified-internal-sender" in letter["flags"]
    finally:
        proc.stop()


def test_spf_is_not_checked_against_a_trusted_relay(tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """SPF asks whether the client may send for the envelope sender's domain, which means something
    only at the border. Mail handed over by one of the organisation's relays comes from the relay's
    address, which a domain's SPF may well allow (its own outgoing MTA): a mail forged at the
    border, From and envelope sender signed.example, would pass SPF, align, pass DMARC and prove
    its From. From a trusted relay SPF is not checked (`none`, with the reason); the relay's own
    Authentication-Results is what proves the sender, and DKIM still counts."""
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
        trusted_authserv_ids = ["mx.example.org"]
        trusted_relays = ["127.0.0.1"]
    """))
    forged = message("CEO <ceo@signed.example>", subject="Wire transfer")
    stamped = message("CEO <ceo@signed.example>", subject="Quarterly figures",
                      extra="Authentication-Results: mx.example.org; dmarc=pass header.from=signed.example\r\n")
    signed = dns_server.sign(message("Ann <ann@signed.example>", subject="Lunch on Friday"), "signed.example", "sel1")
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.example.org", timeout=60) as c:
            for sender, raw in (("ceo@signed.example", forged), ("ceo@signed.example", stamped),
                                ("ann@signed.example", signed)):
                c.sendmail(sender, ["liaison@example.org"], raw)
        numbers = {row["subject"]: str(row["number"]) for row in gateway.list_json()}
        letters = {subject: gateway.show_json(number)["trust"] for subject, number in numbers.items()}
        trust = letters["Wire transfer"]
        assert trust["spf"] == {"result": "none", "domain": "signed.example",
                                "reason": "the client is a trusted relay, not the sender's server"}
        assert trust["dmarc"] == {"result": "fail", "policy": "reject", "domain": "signed.example"}
        assert not trust["authenticated"] and trust["address"] is None and trust["method"] is None
        shown = gateway.run("letters", "show", numbers["Wire transfer"]).stdout
        assert "SPF none for signed.example (the client is a trusted relay, not the sender's server)" in shown
        assert letters["Quarterly figures"]["authenticated"]
        assert letters["Quarterly figures"]["method"] == "authentication-results"
        assert letters["Lunch on Friday"]["authenticated"] and letters["Lunch on Friday"]["method"] == "dkim"
    finally:
        proc.stop()


@contextmanager
def a_letter_for_the_owner(tmp_path: Path, notify: Notify, dns_server: DnsServer,
                           trust: str = "") -> Iterator[Answering]:
    """A gateway answering to the test DNS, with a partner's letter to Sales registered and its
    owner notified (at an SMTP sink): the letter's number and the owner's reply address. `trust`:
    more keys of its [trust] table."""
    sink = SmtpSink().start()
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [outbound]
        relay = "{sink.address}"
        from_address = "gateway@example.org"
        poll_seconds = 0.2
        retry_min_seconds = 0.3
        retry_max_seconds = 1

        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
    """) + textwrap.dedent(trust))
    owner = "sales.desk@example.org"
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("alice@partner.example", ["sales@example.org"],
                       message("alice@partner.example", subject="Delivery late", body="Where is my order?\r\n")
                       .replace(b"To: liaison@example.org", b"To: sales@example.org"))
        wait_for(lambda: sink.to(owner), 30, "the owner's notification")
        [notification] = [r.message for r in sink.to(owner)]
        yield Answering(gateway, proc, owner, dns_server.zone.keys[("example.org", "mail")],
                        str(notification["X-Gateway-Letter"]), str(notification["Reply-To"]))
    finally:
        proc.stop()
        sink.stop()


@dataclasses.dataclass
class Answering:
    gateway: Gateway
    proc: Daemon
    owner: str
    key: DkimKey  # example.org's, published at selector "mail"
    number: str
    reply_to: str


def test_a_signed_answer_is_recognised_again_however_its_signature_is_written(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """A signed answer is obeyed once: the same signature again is the same answer. Base64 leaves
    the last character of b= two bits nobody reads (RFC 4648 3.5), so one signature can be written
    four ways, each verifying. Someone holding the owner's signed answer (copied to them) must not
    have it taken as a new one by writing its b= another way and giving it a Message-ID of their
    own, where the signer did not sign the Message-ID."""
    with a_letter_for_the_owner(tmp_path, notify, dns_server) as letter:
        gateway, proc, owner, key = letter.gateway, letter.proc, letter.owner, letter.key
        number, reply_to = letter.number, letter.reply_to
        raw = (f"From: Sales Desk <{owner}>\r\nTo: {reply_to}\r\nSubject: Re: [{number}] Delivery late\r\n"
               f"Date: Tue, 01 Dec 2026 11:00:00 +0800\r\nMessage-ID: <first@example.org>\r\n"
               f"\r\nreceived\r\n").encode()
        signed = dkim.sign(raw, b"mail", b"example.org", key.private_pem,
                           include_headers=[b"from", b"to", b"subject", b"date"]) + raw
        header, _, _ = signed.partition(b"\r\n\r\n")
        b_value = re.search(rb"\bb=([A-Za-z0-9+/\s]+)(=*)", header.split(b"DKIM-Signature:", 1)[1])
        assert b_value is not None and b_value.group(2) == b"="  # a 1024-bit signature: one pad
        last = b_value.group(1).rstrip()[-1:]
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        other = alphabet[alphabet.index(last) ^ 1:][:1]  # differs only in a bit base64 does not read
        rewritten = signed.replace(b_value.group(1).rstrip() + b"=", b_value.group(1).rstrip()[:-1] + other + b"=", 1)
        rewritten = rewritten.replace(b"Message-ID: <first@example.org>", b"Message-ID: <second@evil.example>")
        assert rewritten != signed and check(checker(dns_server.nameserver), rewritten, owner, owner)["authenticated"]

        def send(mail: bytes) -> None:
            with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.example.org", timeout=60) as c:
                c.sendmail(owner, [reply_to], mail)
        send(signed)
        [answer] = wait_answers(gateway, number, 1)
        assert answer["details"]["obeyed"] is True and answer["details"]["authenticated_by"] == "dkim"
        send(rewritten)
        wait_for(lambda: proc.output().count(f"{number}: answer from {owner}") == 2, 30, "the copy taken in")
        assert len(answers(gateway, number)) == 1


def test_a_trusted_authentication_results_vouches_for_a_field_only_where_every_signature_covers_it() -> None:
    """Fetched mail: the MTA's header does not say which signature passed, so each one of the From
    domain's organisation must name the field, as often as it occurs; no such signature at all: it
    vouches for nothing, unless the header reports an SPF pass for the From address as envelope
    sender (its own servers sent what that mailbox submitted), which vouches for everything."""
    proven = {"authenticated": True, "method": "authentication-results", "from_domain": "example.org",
              "address": "owner@example.org"}

    def by_spf(mailfrom: str) -> dict[str, Any]:
        return {**proven, "authentication_results": {"trusted": [{"authserv_id": "mx.example.org",
                                                                  "spf_mailfrom": mailfrom}], "ignored": []}}

    def fields(*signed: str, cc: int = 0) -> list[tuple[str, str]]:
        return ([("DKIM-Signature", f"v=1; a=rsa-sha256; d={d}; s=mail; h={h}; bh=AA; b=AA")
                 for d, h in (s.split(" ") for s in signed)]
                + [("From", "owner@example.org"), ("To", "gateway+x@example.org")] + [("Cc", "a@b.example")] * cc)
    assert vouched_places(proven, fields(), None) == set()
    assert vouched_places(by_spf("Owner@example.org"), fields(), None) == {"envelope", "to", "cc"}
    assert vouched_places(by_spf("owner@example.org"), fields("example.org from:subject"), None) == {
        "envelope", "to", "cc"}
    # Another mailbox of the organisation as envelope sender: SPF proves the domain, not the owner.
    assert vouched_places(by_spf("bob@example.org"), fields(), None) == set()
    assert vouched_places(by_spf("bob@example.org"), fields("example.org from:to"), None) == {"to", "cc"}
    assert vouched_places(proven, fields("mail.example.org from:to:subject"), None) == {"to", "cc"}
    assert vouched_places(proven, fields("mail.example.org from:to:subject", cc=1), None) == {"to"}
    assert vouched_places(proven, fields("example.org from:to:cc", cc=2), None) == {"to"}  # a second Cc, unsigned
    assert vouched_places(proven, fields("example.org from:to:cc", "example.org from:subject"), None) == {"cc"}
    assert vouched_places(proven, fields("partner.example from:subject"), None) == set()
    assert vouched_places({**proven, "method": "smtp-auth"}, fields("example.org from"), None) == {
        "envelope", "to", "cc"}
    # Proven by DKIM, and SPF passed for its From address as envelope sender as well: that mailbox
    # sent it through its organisation's servers, envelope and all, though its signature names no To
    # (as Office 365's do not). Another envelope sender of the organisation's: the signature alone.
    by_dkim = {**proven, "method": "dkim", "dkim": [{"domain": "example.org", "result": "pass", "aligned": True}]}
    assert vouched_places(by_dkim, fields("example.org from:subject"), "owner@example.org") == {"cc"}  # there is none
    assert vouched_places({**by_dkim, "spf": {"result": "pass", "domain": "example.org"}},
                          fields("example.org from:subject"), "owner@example.org") == {"envelope", "to", "cc"}
    for spf, sender in (({"result": "pass", "domain": "partner.example"}, "owner@partner.example"),
                        ({"result": "softfail", "domain": "example.org"}, "owner@example.org"),
                        ({"result": "pass", "domain": "example.org"}, "bob@example.org"),
                        ({"result": "pass", "domain": "example.org"}, None)):
        assert vouched_places({**by_dkim, "spf": spf}, fields("example.org from:subject"), sender) == {"cc"}, spf
    # DMARC met by SPF alone: everything for the From address as envelope sender, else nothing.
    by_dmarc = {**proven, "method": "dmarc", "spf": {"result": "pass", "domain": "example.org"}}
    assert vouched_places(by_dmarc, fields(), "owner@example.org") == {"envelope", "to", "cc"}
    assert vouched_places(by_dmarc, fields("example.org from:to"), "bob@example.org") == set()


def test_a_signed_mail_of_the_owners_sent_elsewhere_commands_nothing_through_a_reply_address_it_was_not_signed_with(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """A DKIM signature vouches for the header fields it names and the body, never for the SMTP
    envelope nor for a field it does not name. Someone who holds a signed mail the owner wrote to
    them ("Received.", about anything) and has seen the owner's reply address (copied on an
    answer, say) must not make it a command by delivering it to that address, or by adding a Cc
    naming it, which the signature does not cover. The owner's own reply, signed with its To, is obeyed."""
    with a_letter_for_the_owner(tmp_path, notify, dns_server) as letter:
        gateway, owner, key = letter.gateway, letter.owner, letter.key
        number, reply_to = letter.number, letter.reply_to

        def signed(to: str, body: str) -> bytes:
            raw = (f"From: Sales Desk <{owner}>\r\nTo: {to}\r\nSubject: Re: lunch on Friday\r\n"
                   f"Date: Tue, 01 Dec 2026 11:00:00 +0800\r\nMessage-ID: <{time.monotonic_ns()}@example.org>\r\n"
                   f"\r\n{body}").encode()
            return dkim.sign(raw, b"mail", b"example.org", key.private_pem,
                             include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw

        def send(mail: bytes) -> None:
            with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
                c.sendmail("bob@partner.example", [reply_to], mail)
        # Delivered to the reply address, which only the envelope names.
        send(signed("bob@partner.example", "Received.\r\n"))
        # A Cc naming it added above the signed fields: no signed field changed.
        send(f"Cc: {reply_to}\r\n".encode() + signed("bob@partner.example", "in progress\r\n"))
        refused = wait_answers(gateway, number, 2)
        for answer in refused:
            details = answer["details"]
            assert details["authenticated"] == owner and details["authenticated_by"] == "dkim", details
            assert details["obeyed"] is False and "the DKIM signature does not cover" in details["refused"], details
        assert gateway.show_json(number)["status"] == "routed"
        # The owner's own reply, its To signed: obeyed.
        send(signed(reply_to, "Received.\r\n"))
        obeyed = wait_answers(gateway, number, 3)[-1]["details"]
        assert obeyed["obeyed"] is True and obeyed["authenticated_by"] == "dkim", obeyed
        assert gateway.show_json(number)["status"] == "acknowledged"


def relay_stamped(results: str, owner: str, to: str, subject: str, body: str) -> bytes:
    """A mail from the owner's address under the trusted relay's Authentication-Results `results`."""
    return (f"Authentication-Results: mx.example.org; {results}\r\n"
            f"From: Sales Desk <{owner}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 11:00:00 +0800\r\nMessage-ID: <{time.monotonic_ns()}@example.org>\r\n"
            f"\r\n{body}").encode()


def send_from_relay(gateway: Gateway, mailfrom: str, rcpt: str, mail: bytes) -> None:
    """`mail` handed over by the trusted relay (mx.example.org on 127.0.0.1)."""
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.example.org", timeout=60) as client:
        client.sendmail(mailfrom, [rcpt], mail)


def test_a_trusted_authentication_results_vouches_for_the_envelope_only_when_it_reports_an_aligned_spf_pass(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """A relay that checks DKIM and then removes the signatures leaves no signature to say which
    fields were signed. The owner's signed mail to someone else ("Received.", about anything), its
    signature checked and gone, delivered to the owner's reply address, must command nothing: the
    relay's header proves the From by DKIM, which never vouches for the envelope. Only an SPF pass
    for the From domain's organisation, reported in that same header, says the organisation's own
    servers sent it, envelope and all."""
    relay = """
        trusted_authserv_ids = ["mx.example.org"]
        trusted_relays = ["127.0.0.1"]
    """
    with a_letter_for_the_owner(tmp_path, notify, dns_server, trust=relay) as letter:
        gateway, owner, number, reply_to = letter.gateway, letter.owner, letter.number, letter.reply_to

        def stamped(results: str, body: str) -> bytes:
            return relay_stamped(results, owner, "bob@partner.example", "Re: lunch on Friday", body)

        def send(mail: bytes) -> None:
            send_from_relay(gateway, "bob@partner.example", reply_to, mail)
        # Replayed from outside: SPF passed for the replayer's domain, not the owner's.
        send(stamped("dkim=pass header.d=example.org; spf=pass smtp.mailfrom=bob@partner.example; "
                     "dmarc=pass header.from=example.org", "Received.\r\n"))
        # Proven by DMARC alone: which of DKIM and SPF met it, the header does not say.
        send(stamped("dmarc=pass header.from=example.org", "in progress\r\n"))
        for answer in wait_answers(gateway, number, 2):
            details = answer["details"]
            assert details["authenticated"] == owner, details
            assert details["authenticated_by"] == "authentication-results", details
            assert details["obeyed"] is False and "is named only where what proved the sender" in details["refused"]
        assert gateway.show_json(number)["status"] == "routed"
        # The owner's own answer through the organisation's servers: SPF passed for her address.
        send(stamped("dkim=pass header.d=example.org; spf=pass smtp.mailfrom=sales.desk@example.org; "
                     "dmarc=pass header.from=example.org", "Received.\r\n"))
        obeyed = wait_answers(gateway, number, 3)[-1]["details"]
        assert obeyed["obeyed"] is True and obeyed["authenticated_by"] == "authentication-results", obeyed
        assert gateway.show_json(number)["status"] == "acknowledged"


def test_spf_for_a_colleagues_envelope_sender_vouches_for_no_reply_address(
        tmp_path: Path, notify: Notify, dns_server: DnsServer) -> None:
    """SPF proves the envelope sender's domain: through a relay that checks only the envelope
    sender against the login, a colleague (bob@example.org) can write the owner's From on a mail of
    his own, and DMARC passes by SPF all the same. Having seen the owner's reply address (copied on
    one of her answers), he must not command the letter with it: the SPF pass vouches for the reply
    address only where the envelope sender it checked is the From address itself."""
    relay = """
        trusted_authserv_ids = ["mx.example.org"]
        trusted_relays = ["127.0.0.1"]
    """
    with a_letter_for_the_owner(tmp_path, notify, dns_server, trust=relay) as letter:
        gateway, owner, number, reply_to = letter.gateway, letter.owner, letter.number, letter.reply_to

        def stamped(mailfrom: str, body: str) -> bytes:
            return relay_stamped(f"spf=pass smtp.mailfrom={mailfrom}; dmarc=pass header.from=example.org", owner,
                                 reply_to, f"Re: [{number}] Delivery late", body)

        def send(mailfrom: str, mail: bytes) -> None:
            send_from_relay(gateway, mailfrom, reply_to, mail)
        send("bob@example.org", stamped("bob@example.org", "reassign general-office\r\n"))
        [refused] = wait_answers(gateway, number, 1)
        details = refused["details"]
        assert details["authenticated"] == owner and details["obeyed"] is False, details
        assert "is named only where what proved the sender" in details["refused"], details
        assert gateway.show_json(number)["department"] == "business"
        # The owner herself, her address the envelope sender SPF passed for: obeyed.
        send(owner, stamped(owner, "received\r\n"))
        obeyed = wait_answers(gateway, number, 2)[-1]["details"]
        assert obeyed["obeyed"] is True and obeyed["authenticated_by"] == "authentication-results", obeyed
        assert gateway.show_json(number)["status"] == "acknowledged"


def test_a_signature_under_a_key_in_testing_mode_proves_nothing() -> None:
    """RFC 6376 3.6.1: a key published with t=y says its domain is testing DKIM, and verifiers
    must not treat its mail differently from unsigned mail. Its signature, though it verifies, is
    `policy` with the reason and proves nothing; the same domain's key without the flag proves."""
    from gateway.stages.verdict import describe

    zone = dns_fixtures.DnsZone()
    trial = zone.add_key("trial.example", "sel")
    zone.txt["sel._domainkey.trial.example"] = f"v=DKIM1; k=rsa; t=y; p={trial.public_b64}"
    zone.add_key("trial.example", "live")
    zone.txt["_dmarc.trial.example"] = "v=DMARC1; p=reject"
    server = dns_fixtures.start_dns(zone)
    try:
        c = checker(server.nameserver)
        raw = message("Ann <ann@trial.example>")
        verdict = check(c, server.sign(raw, "trial.example", "sel"), "ann@trial.example", "bounce@partner.example")
        assert not verdict["authenticated"] and verdict["address"] is None and verdict["method"] is None
        assert verdict["dkim"] == [{"domain": "trial.example", "selector": "sel", "result": "policy", "aligned": True,
                                    "reason": "the key is in testing mode (t=y)"}]
        assert verdict["dmarc"] == {"result": "fail", "policy": "reject", "domain": "trial.example"}
        assert "DKIM policy d=trial.example s=sel (the key is in testing mode (t=y))" in describe(verdict)
        live = check(c, server.sign(raw, "trial.example", "live"), "ann@trial.example", "bounce@partner.example")
        assert live["authenticated"] and live["method"] == "dkim"
    finally:
        dns_fixtures.stop_dns(server)


def test_a_sender_read_from_the_sender_field_is_proven_by_smtp_auth_alone(tmp_path: Path, notify: Notify,
                                                                         dns_server: DnsServer) -> None:
    """DKIM, DMARC and a trusted Authentication-Results vouch for the From field. When From names no
    address (a group, `Board members:;`), the letter's sender is read from Sender, which none of
    them covers: a Sender added above a mail example.org signed would pass for a proven
    director. Such a sender is flagged `sender-not-from` and proven by nothing but SMTP AUTH."""
    gateway = Gateway(tmp_path, extra=textwrap.dedent(f"""
        [trust]
        nameservers = ["{dns_server.nameserver}"]
        timeout_seconds = 1
        lifetime_seconds = 3
    """))
    signed = dns_server.sign(message("Board members:;", subject="Minutes"), "example.org", "mail")
    forged = b"Sender: Director <director@example.org>\r\n" + signed
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, local_hostname="mx.partner.example", timeout=60) as c:
            c.sendmail("bounce@partner.example", ["liaison@example.org"], forged)
        [row] = gateway.list_json()
        letter = gateway.show_json(str(row["number"]))
        trust = letter["trust"]
        assert letter["sender_address"] == "director@example.org"
        assert trust["dkim"] == [{"domain": "example.org", "selector": "mail", "result": "pass", "aligned": True}]
        assert not trust["authenticated"] and trust["address"] is None and trust["method"] is None
        assert "sender-not-from" in trust["flags"] and "sender-not-from" in letter["flags"]
        assert "unverified-internal-sender" in letter["flags"]
    finally:
        proc.stop()
