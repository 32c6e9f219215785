"""Large attachments are decoded in pieces straight from the raw message (gateway/stages/normalise/
stream.py) and a large body is DKIM-hashed in blocks (gateway/stages/check.py): the results must be
exactly those of decoding and hashing the whole thing."""
from __future__ import annotations

import base64
import email
import hashlib
import os
import random
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

import dns_server as dns_fixtures
from conftest import Gateway
from dns_server import DnsServer
from gateway.config import load
from gateway.registry import Registry
from gateway.services import queries
from gateway.spool import read_raw
from gateway.stages import check
from gateway.stages.normalise import normalise
from gateway.stages.normalise import stream

dns_server = dns_fixtures.dns_server


def pdf(size: int) -> bytes:
    return b"%PDF-1.4\n" + os.urandom(size) + b"\n%%EOF\n"


def mime(files: list[tuple[str, bytes]], *, linesep: bytes = b"\r\n", wrap: int = 76,
         spoil: bytes = b"") -> bytes:
    """A message with a text and each file base64-encoded in lines of `wrap` characters; `spoil`
    goes into the middle of the first file's base64."""
    lines = [b"From: Partner <legal@partner.example>", b"To: liaison@example.org", b"Subject: Annexes",
             b"Date: Mon, 03 Jun 2024 09:30:00 +0800", b"Message-ID: <annexes@partner.example>",
             b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b1"', b"", b"--b1",
             b"Content-Type: text/plain; charset=utf-8", b"", b"Please find the annexes attached.", b""]
    for number, (name, content) in enumerate(files):
        encoded = base64.b64encode(content)
        body = [encoded[i:i + wrap] for i in range(0, len(encoded), wrap)]
        if spoil and number == 0:
            body.insert(len(body) // 2, spoil)
        lines += [b"--b1", b'Content-Type: application/pdf; name="%s"' % name.encode(),
                  b"Content-Transfer-Encoding: base64", b""] + body
    lines += [b"--b1--", b""]
    return linesep.join(lines)


def stdlib_attachments(raw: bytes) -> list[bytes]:
    """What the standard library decodes, the whole message at once."""
    parsed = email.message_from_bytes(raw)
    return [part.get_payload(decode=True) for part in parsed.walk()
            if part.get_content_type() == "application/pdf"]


@pytest.mark.parametrize("linesep, wrap", [(b"\r\n", 76), (b"\n", 64), (b"\r\n", 1000)])
def test_large_attachments_keep_their_bytes_and_are_never_held_decoded(linesep: bytes, wrap: int) -> None:
    files = [("annex-1.pdf", pdf(1_500_000)), ("annex-2.pdf", pdf(700_000)), ("small.pdf", pdf(3000))]
    raw = mime(files, linesep=linesep, wrap=wrap)
    parsed = normalise(raw)
    assert [a.filename for a in parsed.attachments] == [name for name, _ in files]
    for attachment, (_, content) in zip(parsed.attachments, files, strict=True):
        assert attachment.size == len(content)
        assert attachment.sha256 == hashlib.sha256(content).hexdigest()
        assert attachment.detected_type == "application/pdf"
        assert attachment.content == content  # decoded again, on demand
    assert parsed.body_text == "Please find the annexes attached."
    assert parsed.defects == []


@pytest.mark.parametrize("spoil", [b"!!!not base64!!!", b"QUJD=", b"QQ==QUJD", b"\xff\xfe8-bit"])
def test_a_spoiled_run_is_decoded_as_the_standard_library_decodes_it(spoil: bytes) -> None:
    files = [("annex-1.pdf", pdf(400_000)), ("annex-2.pdf", pdf(200_000))]
    raw = mime(files, spoil=spoil)
    parsed = normalise(raw)
    expected = stdlib_attachments(raw)
    assert [a.sha256 for a in parsed.attachments] == [hashlib.sha256(c).hexdigest() for c in expected]
    assert [a.content for a in parsed.attachments] == expected
    assert parsed.attachments[1].content == files[1][1]


def test_a_marker_written_by_the_sender_is_only_text() -> None:
    """The markers carry a token drawn for each message: one copied into a message stands for nothing."""
    files = [("annex-1.pdf", pdf(300_000))]
    first = normalise(mime(files))
    assert first.attachments[0].content == files[0][1]
    forged = b"\x00GW0000000000000000.0\x00"
    raw = mime(files).replace(b"Please find the annexes attached.", forged)
    parsed = normalise(raw)
    assert parsed.attachments[0].content == files[0][1]
    assert "GW0000000000000000.0" in parsed.body_text


def test_a_forwarded_message_with_a_large_attachment_is_kept_whole() -> None:
    inner = mime([("annex-1.pdf", pdf(500_000))])
    outer = (b"From: clerk@example.org\r\nTo: liaison@example.org\r\nSubject: Fwd: Annexes\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n"
             b"Content-Type: text/plain\r\n\r\nForwarded.\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n"
             + inner + b"\r\n--outer--\r\n")
    parsed = normalise(outer)
    forwarded, annex = parsed.attachments
    assert forwarded.declared_type == "message/rfc822"
    assert forwarded.content == inner
    assert forwarded.sha256 == hashlib.sha256(inner).hexdigest()
    assert annex.content == stdlib_attachments(inner)[0]


def test_the_blockwise_dkim_body_is_dkimpys_own(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20)
    pieces = [b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r", b"x y", b"  \r\n", b"\r\n\r\n"]
    heads = [b"From: a@b.example\r\nSubject: x\r\n\r\n", b"From: a@b.example\n\n", b"\r\n"]
    for _ in range(3000):
        monkeypatch.setattr(check, "_BODY_BLOCK", rng.choice([1, 2, 3, 7, 1 << 20]))
        raw = rng.choice(heads) + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        _headers, body = dkim.rfc822_parse(raw)
        found = check._BLANK_LINE.search(raw)
        assert found is not None
        for algorithm, relaxed in ((Simple, False), (Relaxed, True)):
            assert b"".join(check._canonical_body(raw, found.end(), relaxed)) == \
                algorithm.canonicalize_body(body), (raw, relaxed)


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"relaxed"), (b"simple", b"simple")])
def test_a_large_signed_message_passes_dkim_and_a_changed_byte_fails(dns_server: DnsServer,
                                                                     canonicalize: tuple[bytes, bytes]) -> None:
    key = dns_server.zone.keys[("signed.example", "sel1")]
    raw = mime([("annex-1.pdf", pdf(600_000))]).replace(b"legal@partner.example", b"ann@signed.example")
    raw += b"trailing   \r\n\r\n\r\n"
    signed = dkim.sign(raw, b"sel1", b"signed.example", key.private_pem, canonicalize=canonicalize) + raw
    checker = check.Checker(check.make_resolver([dns_server.nameserver], 1.0, 3.0),
                            check.TrustPolicy(frozenset(), False, ("example.org",)), lambda user, address: False)
    envelope = {"mail_from": "ann@signed.example", "client": "127.0.0.1", "helo": "mail.signed.example"}
    verdict = checker.check(signed, "ann@signed.example", [], envelope, "smtp")
    assert [d["result"] for d in verdict.dkim] == ["pass"]
    middle = len(signed) // 2
    changed = signed[:middle] + (b"B" if signed[middle:middle + 1] != b"B" else b"C") + signed[middle + 1:]
    verdict = checker.check(changed, "ann@signed.example", [], envelope, "smtp")
    assert [d["result"] for d in verdict.dkim] == ["fail"]


def test_a_large_message_is_registered_with_its_attachments_byte_identical(tmp_path: Path) -> None:
    files = [("annex-1.pdf", pdf(2_500_000)), ("annex-2.pdf", pdf(1_000_000))]
    raw = mime(files)
    (tmp_path / "large.eml").write_bytes(raw)
    gateway = Gateway(tmp_path)
    gateway.run("ingest", str(tmp_path / "large.eml"))
    shown = gateway.show_json("2026-000001")
    assert sorted((a["filename"], a["sha256"], a["size"]) for a in shown["attachments"]) == sorted(  # type: ignore[union-attr]
        (name, hashlib.sha256(content).hexdigest(), len(content)) for name, content in files)
    config = load(gateway.config)
    assert shown["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert read_raw(config.state_dir / str(shown["raw_path"])) == raw  # the original, in the message store
    registry = Registry.from_config(config)
    try:
        written = queries.extract_attachments(config, registry, "2026-000001", tmp_path / "out")
    finally:
        registry.close()
    assert sorted(path.read_bytes() for path in written) == sorted(content for _, content in files)


def test_the_magic_head_is_what_libmagic_reads_of_a_file() -> None:
    assert stream.MAGIC_BYTES >= 1 << 20
