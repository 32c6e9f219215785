"""Peak memory of processing one large message, beside the standard library doing less, in the same run.

The message: 25 MiB (by default) of MIME mail from a partner, a short text and two base64 PDFs,
DKIM-signed (relaxed/relaxed) by a key that a dnsmasq on loopback publishes (the test suite's DNS
server; without dnsmasq the signature is left off and the run says so), received over SMTP.

Gateway: a fresh process does what the registrar's helper does with a spooled item: the batch
through normalise, the trust check (DKIM body hash, SPF, DMARC), classification and routing,
registered in the registry (SQLite) and moved into the message store. It checks that the letter
was registered with both attachments, their SHA-256 those of the PDFs, and the DKIM verdict pass.

Baseline: a fresh process parses the same file with `email.message_from_binary_file(policy=default)`
and writes each attachment's decoded content to a file of its own, fsynced.

Each process first warms up (imports, a small message) and then measures the message alone: its
resident size just before, and its peak (VmHWM, reset with /proc/self/clear_refs) while it works.
Printed per side: the growth (peak minus the size before) and the absolute peak, each also as a
multiple of the message's size; medians of alternating rounds; PASS when the gateway's growth
stays below 3x the message.

    .venv/bin/python bench/large_message.py [--mib 25] [--rounds 3]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = 3.0
SENDER_DOMAIN = "partner.example"
SELECTOR = "bench"


# -- the message -------------------------------------------------------------

def attachments_of(total: int) -> list[bytes]:
    """Two PDF-like files whose base64 fills about `total` bytes (incompressible, as real ones are)."""
    each = total * 3 // 4 // 2
    return [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + os.urandom(each - 32) + b"\n%%EOF\n" for _ in range(2)]


def build_message(files: list[bytes]) -> bytes:
    parts = [textwrap.dedent("""\
        From: Partner Legal <legal@partner.example>
        To: liaison@example.org
        Subject: Signed contract and annexes
        Date: Mon, 03 Jun 2024 09:30:00 +0800
        Message-ID: <contract-2024-06@partner.example>
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="=_contract"

        --=_contract
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: 8bit

        Dear colleagues,

        please find the signed contract and its annexes attached.

        Kind regards
        """).replace("\n", "\r\n").encode()]
    for number, content in enumerate(files, 1):
        parts.append(
            f"--=_contract\r\nContent-Type: application/pdf; name=\"annex-{number}.pdf\"\r\n"
            f"Content-Disposition: attachment; filename=\"annex-{number}.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n".encode())
        parts.append(base64.encodebytes(content).replace(b"\n", b"\r\n"))
    parts.append(b"--=_contract--\r\n")
    return b"".join(parts)


# -- measuring ---------------------------------------------------------------

def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _start_measuring() -> int:
    """The resident size now; the peak is reset to it (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status("VmRSS")


def child_gateway(workdir: Path, message: Path, nameserver: str, expected: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from gateway.daemon.pipeline import Pipeline
    from gateway.daemon.registrar import register_batch
    from gateway.registry import Registry
    from gateway.spool import Spool
    from gateway.stages import rulebook

    config_path = workdir / "gateway.toml"
    config_path.write_text(textwrap.dedent(f"""
        [gateway]
        state_dir = "{workdir / 'state'}"
        domains = ["example.org"]
        [triage]
        department = "office"
        [logging]
        level = "WARNING"
        [trust]
        nameservers = ["{nameserver}"]
        timeout_seconds = 1.0
        lifetime_seconds = 1.0
        [[departments]]
        id = "office"
        name = "Office"
        owners = ["office@example.org"]
        head = "head@example.org"
        addresses = ["liaison@example.org"]
    """))
    config = rulebook.load(config_path)
    registry = Registry.from_config(config)
    registry.upgrade()
    spool = Spool(config.spool_dir, config.message_dir, max_attempts=config.model.spool.max_attempts)
    pipeline = Pipeline(config, spool, registry)
    envelope = {"mail_from": f"legal@{SENDER_DOMAIN}", "rcpt_to": ["liaison@example.org"],
                "client": "127.0.0.1", "helo": f"mail.{SENDER_DOMAIN}"}
    meta = {"channel": "email", "intake": "smtp", "envelope": envelope}

    def spooled(chunks: Any) -> Any:
        spool.enqueue(chunks, meta)
        return spool.claim(1)

    small = build_message([b"%PDF-1.4\n" + os.urandom(4000)]).replace(b"Message-ID: <contract", b"Message-ID: <warm")
    [warm] = register_batch(pipeline, spooled(small), True)  # imports, caches, the first transaction
    assert warm.result == "registered", warm

    with open(message, "rb") as source:  # spooled as SMTP streams it: never whole in memory
        items = spooled(iter(lambda: source.read(1 << 20), b""))
    before = _start_measuring()
    started = time.perf_counter()
    [outcome] = register_batch(pipeline, items, True)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")

    letter = registry.letter(outcome.number) if outcome.number else None
    attachments = sorted(a.sha256 for a in letter.attachments) if letter else []
    trust = letter.trust if letter else {}
    dkim = [d["result"] for d in (trust or {}).get("dkim", [])]
    ok = outcome.result == "registered" and attachments == sorted(expected)
    stored = spool.stored_path(hashlib.sha256(message.read_bytes()).hexdigest()).exists()
    registry.close()
    return {"before": before, "peak": peak, "seconds": seconds, "ok": ok and stored, "dkim": dkim,
            "detail": f"{outcome.result} {outcome.number} attachments={len(attachments)} stored={stored}"}


def child_baseline(workdir: Path, message: Path, expected: list[str]) -> dict[str, Any]:
    import email
    from email import policy

    def extract(path: Path, into: Path) -> list[str]:
        into.mkdir()
        digests = []
        with open(path, "rb") as source:
            parsed = email.message_from_binary_file(source, policy=policy.default)
        for number, part in enumerate(parsed.iter_attachments(), 1):  # type: ignore[attr-defined]
            content = part.get_content()
            fd = os.open(into / f"{number}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            digests.append(hashlib.sha256(content).hexdigest())
        return digests

    warm = workdir / "warm.eml"
    warm.write_bytes(build_message([b"%PDF-1.4\n" + os.urandom(4000)]))
    extract(warm, workdir / "warm")
    before = _start_measuring()
    started = time.perf_counter()
    digests = extract(message, workdir / "out")
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    return {"before": before, "peak": peak, "seconds": seconds, "ok": sorted(digests) == sorted(expected),
            "dkim": [], "detail": f"attachments={len(digests)}"}


# -- the run -----------------------------------------------------------------

def run_child(side: str, scratch: Path, message: Path, nameserver: str, expected: list[str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=scratch))
    try:
        result = subprocess.run(
            [sys.executable, __file__, "--child", side, "--workdir", str(workdir), "--message", str(message),
             "--nameserver", nameserver, "--expected", ",".join(expected)],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{side} failed:\n{result.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def start_dns() -> tuple[Any, Any]:
    """The test suite's dnsmasq publishing the sender's DKIM key, SPF and DMARC; (None, None) without dnsmasq."""
    if not (shutil.which("dnsmasq") or Path("/usr/sbin/dnsmasq").exists()):
        return None, None
    sys.path.insert(0, str(ROOT / "tests"))
    import dns_server

    zone = dns_server.DnsZone()
    key = zone.add_key(SENDER_DOMAIN, SELECTOR)
    zone.txt.update({SENDER_DOMAIN: "v=spf1 ip4:127.0.0.1 -all", f"_dmarc.{SENDER_DOMAIN}": "v=DMARC1; p=reject"})
    return dns_server.start_dns(zone), key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=25.0, help="size of the message (default 25)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["gateway", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--message", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nameserver", default="", help=argparse.SUPPRESS)
    parser.add_argument("--expected", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        expected = args.expected.split(",")
        figures = (child_gateway(args.workdir, args.message, args.nameserver, expected) if args.child == "gateway"
                   else child_baseline(args.workdir, args.message, expected))
        print(json.dumps(figures))
        return

    import dkim

    scratch = Path(tempfile.mkdtemp(prefix="gateway-large-"))
    server, key = start_dns()
    try:
        files = attachments_of(int(args.mib * 1024 * 1024))
        expected = [hashlib.sha256(f).hexdigest() for f in files]
        message = build_message(files)
        if key is not None:
            message = dkim.sign(message, SELECTOR.encode(), SENDER_DOMAIN.encode(), key.private_pem,
                                canonicalize=(b"relaxed", b"relaxed"),
                                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + message
        path = scratch / "large.eml"
        path.write_bytes(message)
        size = len(message)
        del message, files
        nameserver = server.nameserver if server is not None else "127.0.0.1:9"
        print(f"message: {size / 2**20:.1f} MiB, two base64 PDFs of {size * 3 / 8 / 2**20:.1f} MiB each, "
              + ("DKIM-signed (relaxed/relaxed), key and DMARC served by dnsmasq" if key is not None
                 else "not signed (no dnsmasq here)"))
        growth: dict[str, list[float]] = {"gateway": [], "baseline": []}
        absolute: dict[str, list[float]] = {"gateway": [], "baseline": []}
        for round_number in range(1, args.rounds + 1):
            sides = ["gateway", "baseline"] if round_number % 2 else ["baseline", "gateway"]
            for side in sides:
                figures = run_child(side, scratch, path, nameserver, expected)
                if not figures["ok"]:
                    raise SystemExit(f"{side}: wrong result ({figures['detail']})")
                grown = (figures["peak"] - figures["before"]) / size
                whole = figures["peak"] / size
                growth[side].append(grown)
                absolute[side].append(whole)
                dkim_note = f", DKIM {'/'.join(figures['dkim'])}" if figures["dkim"] else ""
                print(f"round {round_number} {side:8}: peak {figures['peak'] / 2**20:6.1f} MiB "
                      f"({whole:.2f}x), {figures['before'] / 2**20:6.1f} MiB before, growth "
                      f"{(figures['peak'] - figures['before']) / 2**20:6.1f} MiB ({grown:.2f}x), "
                      f"{figures['seconds']:.2f} s{dkim_note}")
        gateway, baseline = statistics.median(growth["gateway"]), statistics.median(growth["baseline"])
        print(f"median growth while processing, as a multiple of the message ({size / 2**20:.1f} MiB): "
              f"gateway {gateway:.2f}x, baseline {baseline:.2f}x; ratio gateway/baseline {gateway / baseline:.2f}")
        print(f"median absolute peak (interpreter and imports included): gateway "
              f"{statistics.median(absolute['gateway']):.2f}x, baseline {statistics.median(absolute['baseline']):.2f}x")
        print(f"{'PASS' if gateway < TARGET else 'FAIL'}: gateway growth {gateway:.2f}x "
              f"{'<' if gateway < TARGET else '>='} {TARGET:.0f}x the message")
    finally:
        if server is not None:
            import dns_server

            dns_server.stop_dns(server)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
