"""A hostile MIME structure costs its own message a bounded time and never holds up other mail:
normalising is linear in the number of parts, and parts, nesting, header fields and header
sizes are bounded (configurable), the excess a defect. Against a real daemon over SMTP."""
from __future__ import annotations

import gc
import smtplib
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, lane_helpers, make_message, wait_for
from gateway.config import ConfigError, load
from gateway.stages.normalise import Limits, normalise

pytestmark = pytest.mark.timeout(300)


def many_parts(count: int, name: str = "a.bin") -> bytes:
    """A short text and `count` one-byte attachments, every one with the same file name."""
    lines = ["From: Mallory <mallory@attacker.example>", "To: liaison@example.org", "Subject: parts",
             "Date: Mon, 23 Nov 2026 10:00:00 +0800", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="B"', "", "--B", "Content-Type: text/plain", "",
             "See the attachments."]
    for _ in range(count):
        lines += ["--B", f'Content-Type: application/octet-stream; name="{name}"',
                  f'Content-Disposition: attachment; filename="{name}"', "", "x"]
    return ("\r\n".join(lines + ["--B--", ""])).encode()


def nested(depth: int, body_lines: int = 1) -> bytes:
    """Multiparts inside one another, `depth` deep, a text at the bottom."""
    head = [b"From: a@attacker.example", b"To: liaison@example.org", b"Subject: deep", b"MIME-Version: 1.0"]
    opening = [b'Content-Type: multipart/mixed; boundary="L%d"\r\n\r\n--L%d\r\n' % (d, d) for d in range(depth)]
    closing = [b"\r\n--L%d--\r\n" % d for d in reversed(range(depth))]
    return (b"\r\n".join(head) + b"\r\n" + b"".join(opening) + b"Content-Type: text/plain\r\n\r\n"
            + b"x\r\n" * body_lines + b"".join(closing))


def seconds(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def cpu_seconds(action: object) -> float:
    """The CPU time `action` takes in this process, without a garbage collection in it."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        action()  # type: ignore[operator]
        return time.process_time() - start
    finally:
        gc.enable()


# -- the daemon: a 10,000-part message beside ordinary mail ------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Daemon]]:
    tmp = tmp_path_factory.mktemp("hostile")
    gateway = Gateway(tmp)
    notify = Notify(tmp / "notify.sock")
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        yield gateway, daemon
    finally:
        daemon.stop()
        notify.close()


def send(port: int, raw: bytes, timeout: float) -> tuple[float, bytes]:
    """Seconds from the end of DATA to the reply, and the reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
        client.ehlo("client.partner.example")
        client.mail("sender@partner.example")
        client.rcpt("liaison@example.org")
        start = time.monotonic()
        code, reply = client.data(raw)
        assert code == 250, (code, reply)
        return time.monotonic() - start, reply


def test_ten_thousand_parts_do_not_hold_up_ordinary_mail(running: tuple[Gateway, Daemon]) -> None:
    """A 1 MB message of 10,000 parts all named a.bin is answered within seconds, and so is every
    ordinary message sent while it is being registered; its letter lists the first parts and says
    that the rest were not examined."""
    gateway, daemon = running
    hostile = many_parts(10_000)
    answered: dict[str, object] = {}

    def send_hostile() -> None:
        try:
            answered["hostile"] = send(gateway.smtp_port, hostile, timeout=120)
        except Exception as exc:  # reported by the assertion below
            answered["hostile"] = exc

    sender = threading.Thread(target=send_hostile)
    sender.start()
    # The hostile message has been received whole once its item is waiting to be registered.
    wait_for(lambda: gateway.spool_files("work"), 30, "the hostile message in spool/work")
    with ThreadPoolExecutor(4) as pool:
        latencies = list(pool.map(lambda n: send(gateway.smtp_port, make_message(n), timeout=60)[0], range(20)))
    sender.join(130)
    assert not isinstance(answered["hostile"], Exception), answered["hostile"]
    hostile_seconds, reply = answered["hostile"]  # type: ignore[misc]
    assert max(latencies) < 5, f"ordinary mail waited {max(latencies):.1f} s for its 250"
    assert hostile_seconds < 10, f"the hostile message took {hostile_seconds:.1f} s"

    number = reply.decode().rsplit(" ", 1)[-1]
    letter = gateway.show_json(number)
    assert len(letter["attachments"]) == 998  # type: ignore[arg-type]  # root + text + 998 = 1000 parts
    names = [a["filename"] for a in letter["attachments"]]  # type: ignore[union-attr, index]
    assert names[:3] == ["a.bin", "a-2.bin", "a-3.bin"] and len(set(names)) == 998
    assert ("message: more than 1000 MIME parts; the first 1000 were examined, the rest only kept in "
            "the original") in letter["defects"]  # type: ignore[operator]
    assert len(gateway.list_json()) == 21
    assert "Traceback" not in daemon.output()


def test_a_huge_slow_message_is_registered_in_a_lane_of_its_own(running: tuple[Gateway, Daemon]) -> None:
    """3 MB of short lines forty multiparts deep cost the parser seconds (each line is checked
    against every enclosing boundary); ordinary mail sent meanwhile is answered at once, because
    items over [spool] large_item_bytes are registered by a helper of their own."""
    gateway, daemon = running
    hostile = nested(40, body_lines=1_000_000)
    assert len(hostile) > 1024 * 1024
    answered: dict[str, object] = {}

    def send_hostile() -> None:
        try:
            answered["hostile"] = send(gateway.smtp_port, hostile, timeout=240)
        except Exception as exc:  # reported by the assertion below
            answered["hostile"] = exc

    before = len(gateway.list_json())
    sender = threading.Thread(target=send_hostile)
    sender.start()
    wait_for(lambda: gateway.spool_files("work"), 60, "the huge message in spool/work")
    with ThreadPoolExecutor(4) as pool:
        latencies = list(pool.map(lambda n: send(gateway.smtp_port, make_message(100 + n), timeout=60)[0],
                                  range(8)))
    sender.join(250)
    assert max(latencies) < 3, f"ordinary mail waited {max(latencies):.1f} s for its 250"
    assert not isinstance(answered["hostile"], Exception), answered["hostile"]
    assert len(gateway.list_json()) == before + 9
    assert "Traceback" not in daemon.output()


def test_a_parameter_numbered_beyond_reading_costs_the_letter_nothing_else(running: tuple[Gateway, Daemon]) -> None:
    """A section number of 5,000 digits (x*999...=1) made Python's parameter decoder raise for the
    whole field, int() reading at most 4,300 digits: in the message's Content-Type the letter was
    registered without sender, subject or text; in a part's, the text was lost. Only that
    parameter is ignored now, and named where it was found."""
    gateway, daemon = running
    digits = "9" * 5000
    raw = ("From: Mallory <mallory@attacker.example>\r\nTo: liaison@example.org\r\nSubject: overlong section\r\n"
           "Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           f'Content-Type: multipart/mixed; boundary="B"; x*{digits}=1\r\n\r\n'
           f"--B\r\nContent-Type: text/plain; charset=utf-8; x*{digits}*=1\r\n\r\nSee the report.\r\n"
           f'--B\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
           f'Content-Disposition: attachment; filename*{digits}=evil.exe; filename="report.pdf"\r\n\r\n'
           "%PDF-1.4\r\n--B--\r\n").encode()
    number = send(gateway.smtp_port, raw, timeout=60)[1].decode().rsplit(" ", 1)[-1]
    letter = gateway.show_json(number)
    assert (letter["sender_address"], letter["subject"]) == ("mallory@attacker.example", "overlong section")
    assert letter["body_text"] == "See the report."
    assert [a["filename"] for a in letter["attachments"]] == ["report.pdf"]  # type: ignore[union-attr, index]
    too_long = "... with a section number too long to read, ignored)"  # after the name's first 40 characters
    assert letter["defects"] == [
        f"message: invalid header (content-type: parameter {('x*' + digits)[:40]}{too_long}",
        f"part 1: invalid header (content-type: parameter {('x*' + digits)[:40]}{too_long}",
        f"part 2: invalid header (content-disposition: parameter {('filename*' + digits)[:40]}{too_long}"]
    assert "Traceback" not in daemon.output()


def test_a_parameter_both_whole_and_in_sections_costs_the_letter_nothing_else(running: tuple[Gateway, Daemon]) -> None:
    """name*= beside name*0*=, name*1*= made Python's parameter decoder raise (it cannot order the
    unnumbered one among the numbered): normalising raised, and the letter was quarantined instead
    of registered. The unnumbered one is ignored and named; the sections make the name."""
    gateway, daemon = running
    raw = (b"From: Mallory <mallory@attacker.example>\r\nTo: liaison@example.org\r\nSubject: both forms\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the report.\r\n"
           b"--B\r\nContent-Type: application/pdf; name*=utf-8''evil.exe; name*0*=utf-8''annual; name*1=.pdf\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''evil.exe; filename*0=annual; filename*1=.pdf\r\n"
           b"\r\n%PDF-1.4\r\n--B--\r\n")
    number = send(gateway.smtp_port, raw, timeout=60)[1].decode().rsplit(" ", 1)[-1]
    letter = gateway.show_json(number)
    assert (letter["subject"], letter["body_text"]) == ("both forms", "See the report.")
    assert [a["filename"] for a in letter["attachments"]] == ["annual.pdf"]  # type: ignore[union-attr, index]
    assert letter["defects"] == [  # the same from the parser and from the file-name reader: named once
        "part 2: invalid header (content-type: parameter name* beside numbered sections of the same name, ignored)",
        "part 2: invalid header (content-disposition: parameter filename* beside numbered sections of the same "
        "name, ignored)"]
    assert "Traceback" not in daemon.output()


def test_the_helper_for_large_items_runs_only_while_there_are_some(tmp_path: Path) -> None:
    """Not started with the daemon nor by ordinary mail; started by the first large item, stopped
    after the idle time, started again by the next large item."""
    gateway = Gateway(tmp_path)
    gateway.config.write_text(gateway.config.read_text().replace(
        "rescan_seconds = 1\n", "rescan_seconds = 1\nlarge_item_bytes = 65536\nlarge_item_idle_seconds = 3\n", 1))
    notify = Notify(tmp_path / "notify.sock")
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        send(gateway.smtp_port, make_message(1, subject="small"), timeout=60)
        assert lane_helpers(daemon.pid, "large") == []
        send(gateway.smtp_port, make_message(2, subject="large 1", size=200_000), timeout=60)
        first = lane_helpers(daemon.pid, "large")
        assert len(first) == 1
        wait_for(lambda: not lane_helpers(daemon.pid, "large"), 30, "the idle helper for large items to stop")
        send(gateway.smtp_port, make_message(3, subject="large 2", size=200_000), timeout=60)
        second = lane_helpers(daemon.pid, "large")
        assert len(second) == 1 and second != first
        assert sorted(str(letter["subject"]) for letter in gateway.list_json()) == ["large 1", "large 2", "small"]
    finally:
        log = daemon.stop()
        notify.close()
    assert log.count("registrar helper for large items started") == 2
    assert f"registrar helper for large items (pid {first[0]}) stopped: idle" in log
    assert "Traceback" not in log


# -- normalising: linear, bounded, configurable -------------------------------------------------
def test_normalising_is_linear_in_the_number_of_parts() -> None:
    """Four times the parts (every one named alike) take about four times as long, not sixteen."""
    unbounded = Limits(max_parts=100_000)
    small, large = many_parts(1_000), many_parts(4_000)
    normalise(small, limits=unbounded)  # warm up (libmagic, mimetypes)
    # CPU time of this process, best of three, the collector held off: the other tests running
    # beside this one on two cores must not decide it. Quadratic numbering would be ~16×.
    t_small = min(cpu_seconds(lambda: normalise(small, limits=unbounded)) for _ in range(3))
    t_large = min(cpu_seconds(lambda: normalise(large, limits=unbounded)) for _ in range(3))
    assert t_large / t_small < 8, f"1,000 parts: {t_small:.2f} s, 4,000 parts: {t_large:.2f} s"
    names = [a.filename for a in normalise(large, limits=unbounded).attachments]
    assert len(names) == 4_000 and len(set(names)) == 4_000 and names[-1] == "a-4000.bin"


def test_names_taken_by_the_sender_are_skipped_when_numbering() -> None:
    """A sender's own 'a-2.bin' is kept; the second 'a.bin' becomes a-3.bin, not a duplicate."""
    raw = many_parts(1, "a.bin").replace(b"--B--", b"\r\n".join([
        b'--B', b'Content-Disposition: attachment; filename="a-2.bin"', b"", b"y",
        b'--B', b'Content-Disposition: attachment; filename="A.BIN"', b"", b"z",
        b'--B', b'Content-Disposition: attachment; filename="a.bin"', b"", b"w", b"--B--"]))
    assert [a.filename for a in normalise(raw).attachments] == ["a.bin", "a-2.bin", "A-3.BIN", "a-4.bin"]


def test_parts_beyond_the_limit_are_a_defect() -> None:
    result = normalise(many_parts(50), limits=Limits(max_parts=20))
    assert len(result.attachments) == 18 and result.body_text == "See the attachments."
    assert result.defects == ["message: more than 20 MIME parts; the first 20 were examined, "
                              "the rest only kept in the original"]


def test_nesting_beyond_the_limit_is_a_defect_and_costs_little() -> None:
    """Each line is matched against every enclosing boundary: 300 levels over 100,000 lines would
    take half a minute to parse; parsing stops at the part nested too deep."""
    assert "nested" not in " ".join(normalise(nested(5), limits=Limits(max_depth=5)).defects)
    elapsed = seconds(lambda: normalise(nested(300, body_lines=100_000)))
    result = normalise(nested(8), limits=Limits(max_depth=5))
    assert result.subject == "deep"
    assert result.defects[0] == ("message: MIME parts nested more than 5 deep; the part found there and "
                                 "everything after it were not examined (they are in the original)")
    assert elapsed < 3, f"{elapsed:.1f} s"


def test_a_forwarded_message_cut_at_the_nesting_limit_keeps_what_lies_above_it() -> None:
    """Alice forwards Bob's mail, which carries a PDF and a mail of Carol's: the limit falls inside
    Carol's mail. Bob's mail and his PDF are still listed; only what lies past the limit is not."""
    carol = b"Subject: original\r\nFrom: carol@y.example\r\nContent-Type: text/plain\r\n\r\noriginal text\r\n"
    bob = (b"Subject: fw original\r\nFrom: bob@x.example\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=IN\r\n\r\n--IN\r\nContent-Type: text/plain\r\n\r\nbob's note\r\n"
           b"--IN\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"bob.pdf\"\r\n\r\n"
           b"%PDF-1.4 x\r\n--IN\r\nContent-Type: message/rfc822\r\n\r\n" + carol + b"\r\n--IN--\r\n")
    raw = (b"From: Alice <alice@partner.example>\r\nSubject: fw fw\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nalice's text\r\n"
           b"--XX\r\nContent-Type: message/rfc822\r\n\r\n" + bob + b"\r\n--XX--\r\n")
    whole = normalise(raw, limits=Limits(max_depth=4))
    assert [a.filename for a in whole.attachments] == ["fw original.eml", "bob.pdf", "original.eml"]
    cut = normalise(raw, limits=Limits(max_depth=3))
    assert [a.filename for a in cut.attachments][:2] == ["fw original.eml", "bob.pdf"]
    assert cut.attachments[0].size > len(bob) // 2  # Bob's mail, up to the cut
    assert "part 2: attached message cut short at the nesting limit (whole in the original)" in cut.defects
    assert not any("could not be read" in defect for defect in cut.defects)


def test_header_fields_beyond_the_limits_are_a_defect() -> None:
    """Too many fields: the first are kept, and the first of those that give the structure, the
    sender, the subject and the like wherever they are. Too long a field: cut short. In a part too."""
    fields = b"".join(b"X-Filler-%d: value\r\n" % n for n in range(200))
    long_subject = b"Subject: " + b"long " * 1000 + b"\r\n"
    part = b"--B\r\nContent-Type: text/plain\r\n" + fields + b"\r\nthe text\r\n--B--\r\n"
    raw = (b"From: a@partner.example\r\nTo: liaison@example.org\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\n"
           + long_subject + fields
           + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n' + part)
    result = normalise(raw, limits=Limits(max_header_fields=100, max_header_bytes=1024))
    assert len(result.header_fields) == 102  # the first 100, MIME-Version and Content-Type
    assert result.sender is not None and result.sender.address == "a@partner.example"
    assert result.subject.startswith("long long") and len(result.subject) < 1024
    assert result.body_text == "the text"
    assert result.defects == [
        "message: 104 header field(s) beyond the first 100 not read",
        "message: 1 header field(s) longer than 1024 bytes cut short",
        "part 1: 101 header field(s) beyond the first 100 not read",
    ]
    # Hundreds of thousands of fields: a bounded header, in linear time.
    many = b"From: a@partner.example\r\n" + b"X-A: b\r\n" * 300_000 + b"\r\nbody\r\n"
    elapsed = seconds(lambda: normalise(many))
    assert len(normalise(many).header_fields) == 500 and elapsed < 5


def test_limits_are_configured_in_the_normalise_section(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    base = gateway.config.read_text()
    gateway.config.write_text(base + textwrap.dedent("""
        [normalise]
        max_parts = 200
        max_depth = 10
        max_header_fields = 60
        max_header_bytes = 2048
    """))
    section = load(gateway.config, check_dirs=False).model.normalise
    assert (section.max_parts, section.max_depth, section.max_header_fields, section.max_header_bytes) == (
        200, 10, 60, 2048)
    assert load(Path(__file__).parent.parent / "config" / "gateway.toml", check_dirs=False).model.normalise == (
        type(section)())  # the shipped file shows the defaults
    gateway.config.write_text(base + "\n[normalise]\nmax_depth = 1000\n")
    with pytest.raises(ConfigError, match="normalise.max_depth"):
        load(gateway.config, check_dirs=False)


def test_html_nested_past_the_parsers_limit_keeps_its_text() -> None:
    """libxml2 stops at 256 nested elements without a word: the rest of the letter would be lost.
    Past what the renderer can walk, the tags are stripped instead, and a defect says so."""
    def html_mail(depth: int) -> bytes:
        body = (b"<p>Dear sir, please pay invoice 42.</p>" + b"<div>" * depth + b"Account number 1234"
                + b"</div>" * depth + b"<p>Regards</p>")
        return (b"From: a@partner.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body)
    for depth in (300, 5000):
        result = normalise(html_mail(depth))
        assert [word in result.body_text for word in ("invoice 42", "Account number 1234", "Regards")] == [True] * 3
        assert any("HTML could not be rendered" in defect for defect in result.defects) == (depth == 5000)


def html_paragraph_mail(size: int) -> bytes:
    """One paragraph of `size` bytes written in many short runs between inline tags."""
    run = "Dear partner, 合同 <span>已收到</span> &amp; <b>thanks</b>, "
    body = "<html><body><p>" + run * (size // len(run.encode())) + "</p></body></html>"
    return (b"From: a@partner.example\r\nTo: liaison@example.org\r\nSubject: long\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body.encode())


def test_a_long_html_paragraph_is_rendered_whole() -> None:
    """A paragraph of 3 MB in small runs is rendered whole (its time, once growing with the square
    of its length, is measured by bench/long_paragraphs.py)."""
    large = html_paragraph_mail(3_000_000)
    assert normalise(large).body_text.count("合同 已收到 & thanks,") == 3_000_000 // 65


def test_html_renders_to_the_same_text_as_the_renderer_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear line keeps every space, margin, bullet, indent and table cell where the renderer put them."""
    import inscriptis.model.canvas
    from inscriptis import Inscriptis
    from inscriptis.model.canvas.block import Block
    from lxml.html import HTMLParser, document_fromstring

    from gateway.stages.normalise.htmltext import html_to_text

    html = ("<html><body><h1>Notice  of   <i>payment</i></h1><p>  Dear&nbsp;sir, <b>pay</b>  "
            "<span> </span>invoice&#32;42 </p><ul><li>one <em>1</em></li><li><ol><li>nested</li></ol></li>"
            "<li></li></ul><blockquote>quoted <p>inside</p> text</blockquote><pre>  keep\n   these  "
            "\n</pre><table><tr><td>合同 <b>编号</b></td><td>A&amp;B</td></tr><tr><td colspan=2>"
            "<p>cell</p> text</td></tr></table><div>  trailing   </div> <br> after<br><br>end  </body></html>")
    rendered = html_to_text(html)
    monkeypatch.setattr(inscriptis.model.canvas, "Block", Block)
    assert rendered == Inscriptis(document_fromstring(html, parser=HTMLParser(huge_tree=True))).get_text()
    assert "合同 编号" in rendered and "  keep\n   these" in rendered


def flowed_mail(lines: int) -> bytes:
    """One format=flowed paragraph of `lines` soft-broken lines, Chinese and English."""
    return (b"From: a@partner.example\r\nTo: liaison@example.org\r\nSubject: flowed\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
            + "合同 word \r\n".encode() * lines + b"end\r\n")


def test_a_long_flowed_paragraph_is_joined_whole() -> None:
    """A flowed paragraph of 120,000 lines is joined whole (its time, once growing with the square
    of its length, is measured by bench/long_paragraphs.py)."""
    assert normalise(flowed_mail(120_000)).body_text == "合同 word " * 120_000 + "end"
