"""A real DNS server on loopback for the check stage's tests: dnsmasq publishing DKIM keys, SPF
and DMARC records of test domains (nothing forwarded upstream, no other interface touched).

DKIM keys are generated per test session; `sign` signs a message with dkimpy as the domain's
mail server would.
"""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import pytest
from ports import free_port


@dataclass
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes
    public_b64: str

    @classmethod
    def generate(cls, domain: str, selector: str) -> DkimKey:
        # 1024 bits: dkimpy's minimum, and the key fits one TXT string.
        private = subprocess.run(["openssl", "genrsa", "1024"], check=True, capture_output=True).stdout
        public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private, check=True,
                                capture_output=True).stdout
        return cls(domain, selector, private, base64.b64encode(public).decode())

    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"


@dataclass
class DnsZone:
    """The records served: name -> TXT text, and more records for names that have several."""

    txt: dict[str, str] = field(default_factory=dict)
    more_txt: list[tuple[str, str]] = field(default_factory=list)
    keys: dict[tuple[str, str], DkimKey] = field(default_factory=dict)

    def add_key(self, domain: str, selector: str) -> DkimKey:
        key = DkimKey.generate(domain, selector)
        self.keys[(domain, selector)] = key
        self.txt[f"{selector}._domainkey.{domain}"] = key.record()
        return key


def _txt_option(name: str, text: str) -> str:
    # dnsmasq takes a TXT record's strings comma-separated (no shell: no quotes); one string
    # holds 255 bytes.
    assert "," not in text, text
    parts = [text[i:i + 250] for i in range(0, len(text), 250)]
    return f"--txt-record={name}," + ",".join(parts)


@dataclass
class DnsServer:
    port: int
    zone: DnsZone
    process: subprocess.Popen[bytes]

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sign(self, message: bytes, domain: str, selector: str) -> bytes:
        key = self.zone.keys[(domain, selector)]
        signature = dkim.sign(message, selector.encode(), domain.encode(), key.private_pem,
                              include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return signature + message


def start_dns(zone: DnsZone, *, ttl: int = 0, authoritative_for: str = "") -> DnsServer:
    """dnsmasq publishing the zone's records with this TTL (0: nothing may be cached). With
    `authoritative_for`, it answers for that domain as its authoritative server: a name there with
    no records gets NXDOMAIN (or an empty answer) with the domain's SOA, whose TTL (and minimum) is
    `ttl`, so that negative answers may be cached as long."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    scratch = Path(tempfile.mkdtemp(prefix="gateway-dns-"))
    # The port is free when probed, but another process may take it before dnsmasq binds it
    # (or hold its TCP side): then try another.
    attempts = 5
    for _ in range(attempts):
        port = free_port()
        args = [binary, "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", "--no-poll",
                f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--user=root" if _root() else "", f"--pid-file={scratch / 'dnsmasq.pid'}", "--log-facility=-",
                "--conf-file=/dev/null", f"--local-ttl={ttl}"]
        if authoritative_for:
            args += [f"--auth-server=ns.{authoritative_for},127.0.0.1", f"--auth-zone={authoritative_for}",
                     f"--auth-soa=1,hostmaster.{authoritative_for},1200,120,1209600", f"--auth-ttl={ttl}"]
        # Every name not published here has no answer, instead of being asked upstream.
        args += ["--address=/#/", "--local=/#/"]
        args += [_txt_option(name, text) for name, text in [*zone.txt.items(), *zone.more_txt]]
        # A record only this server has: another server on the same port cannot pass for it. (An
        # authoritative server refuses names outside its zone.)
        nonce = secrets.token_hex(8)
        ready_name = f"ready.{authoritative_for or 'test'}"
        args += [f"--txt-record={ready_name},{nonce}"]
        process = subprocess.Popen([a for a in args if a], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        server = DnsServer(port, zone, process)
        try:
            _wait_ready(server, ready_name, nonce)
            return server
        except _PortTaken:
            continue
    raise RuntimeError(f"dnsmasq found no free port on 127.0.0.1 in {attempts} attempts")


class _PortTaken(RuntimeError):
    pass


def _root() -> bool:
    return os.geteuid() == 0


def _wait_ready(server: DnsServer, name: str, nonce: str) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            _, error = server.process.communicate()  # reads and closes the pipe
            output = error.decode(errors="replace") if error else ""
            if "Address already in use" in output:
                raise _PortTaken(output)
            raise RuntimeError(f"dnsmasq exited: {output}")
        try:
            answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", timeout=0.5,
                                   port=server.port)
        except Exception:
            time.sleep(0.05)
            continue
        if nonce in answer.to_text():
            return
        time.sleep(0.05)  # another server holds the port: dnsmasq is about to exit
    stop_dns(server)
    raise RuntimeError("dnsmasq did not answer")


def stop_dns(server: DnsServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.process.stderr:
        server.process.stderr.close()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    """Test domains:
    - signed.example: DKIM key `sel1`, SPF pass for 127.0.0.1, DMARC p=reject;
    - forged.example: SPF -all, DMARC p=reject (nothing it sends from here passes);
    - example.org (the organisation): DKIM key `mail`, SPF -all, DMARC p=quarantine;
    - nodmarc.example: DKIM key `k1`, SPF pass, no DMARC record;
    - twice.example: SPF -all and two DMARC records (p=reject, p=quarantine): no DMARC at all;
    - strict.example: DMARC p=reject with strict alignment (adkim=s, aspf=s), nothing else;
    - signed.example's selector `multi`: a site-verification TXT record answered before its DKIM key."""
    zone = DnsZone()
    zone.add_key("signed.example", "sel1")
    zone.add_key("example.org", "mail")
    zone.add_key("nodmarc.example", "k1")
    zone.txt.update({
        "signed.example": "v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.signed.example": "v=DMARC1; p=reject",
        "forged.example": "v=spf1 -all",
        "_dmarc.forged.example": "v=DMARC1; p=reject; adkim=r; aspf=r",
        "example.org": "v=spf1 -all",
        "_dmarc.example.org": "v=DMARC1; p=quarantine",
        "nodmarc.example": "v=spf1 ip4:127.0.0.1 -all",
        "twice.example": "v=spf1 -all",
        "_dmarc.strict.example": "v=DMARC1; p=reject; adkim=s; aspf=s",
    })
    zone.more_txt += [("_dmarc.twice.example", "v=DMARC1; p=reject"),
                      ("_dmarc.twice.example", "v=DMARC1; p=quarantine")]
    multi = DkimKey.generate("signed.example", "multi")
    zone.keys[("signed.example", "multi")] = multi
    # dnsmasq answers a name's records in the reverse of their order here: the other one first.
    zone.more_txt += [("multi._domainkey.signed.example", multi.record()),
                      ("multi._domainkey.signed.example", "site-verification=4f2a9c")]
    server = start_dns(zone)
    try:
        yield server
    finally:
        stop_dns(server)


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A UDP port that takes queries and never answers: every lookup times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sink.getsockname()[1]}"
