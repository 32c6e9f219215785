"""`gateway letters extract` into a folder that holds a symbolic link where an attachment would
go: refused with a clear message before anything is written (a link elsewhere in the folder is
left alone); no file is ever written through a link."""
from __future__ import annotations

import os
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import Gateway
from gateway.config import load
from gateway.registry import Registry
from gateway.services import queries

NAMES = [f"document-{n:02d}.txt" for n in range(1, 18)]  # 17 attachments


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    tmp = tmp_path_factory.mktemp("extract")
    gateway = Gateway(tmp)
    msg = EmailMessage()
    msg["From"] = "alice@partner.example"
    msg["To"] = "liaison@example.org"
    msg["Subject"] = "seventeen documents"
    msg.set_content("See the attachments.")
    for name in NAMES:
        msg.add_attachment(f"content of {name}".encode(), maintype="text", subtype="plain", filename=name)
    (tmp / "letter.eml").write_bytes(msg.as_bytes())
    gateway.run("ingest", str(tmp / "letter.eml"))
    return gateway


def test_a_link_where_an_attachment_would_go_is_refused_before_anything_is_written(
        registered: Gateway, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not to be overwritten")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / NAMES[6]).symlink_to(outside)  # the 7th of 17
    proc = registered.run("letters", "extract", "2026-000001", str(folder), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: {folder.resolve()} holds a symbolic link named '{NAMES[6]}' where an attachment would be "
        "written: nothing written (remove the link, or extract into another folder)")
    assert sorted(p.name for p in folder.iterdir()) == [NAMES[6]]
    assert outside.read_text() == "not to be overwritten"


def extract(gateway: Gateway, folder: Path) -> list[Path]:
    """The command's service, in this process (the command itself is run above and below)."""
    config = load(gateway.config)
    registry = Registry.from_config(config)
    try:
        return queries.extract_attachments(config, registry, "2026-000001", folder)
    finally:
        registry.close()


def test_a_link_inside_the_folder_is_not_written_through_either(registered: Gateway, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kept.txt").write_text("mine")
    (folder / NAMES[0]).symlink_to("kept.txt")
    with pytest.raises(queries.ExtractRefused, match=f"symbolic link named '{NAMES[0]}'"):
        extract(registered, folder)
    assert (folder / "kept.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == sorted([NAMES[0], "kept.txt"])


def test_other_things_in_the_way_are_refused_too(registered: Gateway, tmp_path: Path) -> None:
    """A folder or a named pipe of an attachment's name: refused (writing would fail, or block)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / NAMES[3]).mkdir()
    with pytest.raises(queries.ExtractRefused, match=f"holds a folder named '{NAMES[3]}'"):
        extract(registered, folder)
    (folder / NAMES[3]).rmdir()
    os.mkfifo(folder / NAMES[4])
    with pytest.raises(queries.ExtractRefused, match=f"holds something other than a file named '{NAMES[4]}'"):
        extract(registered, folder)
    assert [p.name for p in folder.iterdir()] == [NAMES[4]]
    with pytest.raises(queries.ExtractRefused, match="cannot extract into"):
        extract(registered, folder / NAMES[4] / "below")


def test_links_of_other_names_are_left_alone_and_files_are_written(registered: Gateway, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "shortcut").symlink_to(outside)
    (folder / NAMES[2]).write_text("an older copy")  # a file of ours from an earlier extract: replaced
    written = registered.run("letters", "extract", "2026-000001", str(folder)).stdout.split()
    assert [Path(p).name for p in written] == NAMES
    assert all(Path(p).parent == folder.resolve() for p in written)
    assert (folder / NAMES[2]).read_text() == f"content of {NAMES[2]}"
    assert list(outside.iterdir()) == [] and (folder / "shortcut").is_symlink()


def test_a_supplement_of_the_same_name_as_the_letters_scan_is_written_beside_it(tmp_path: Path) -> None:
    """The sender sends the missing page as scan.pdf, the name of the letter's own scan: both are
    written, the supplement's numbered, as a mail's second file of one name is."""
    gateway = Gateway(tmp_path)

    def mail(subject: str, name: str, content: bytes, headers: dict[str, str]) -> Path:
        msg = EmailMessage()
        msg["From"] = "Alice Partner <alice@partner.example>"
        msg["To"] = "sales@example.org"
        msg["Subject"] = subject
        for field, value in headers.items():
            msg[field] = value
        msg.set_content("See the attachment.")
        msg.add_attachment(content, maintype="application", subtype="pdf", filename=name)
        path = tmp_path / f"{len(list(tmp_path.glob('*.eml')))}.eml"
        path.write_bytes(msg.as_bytes())
        return path

    gateway.run("ingest", str(mail("Order", "scan.pdf", b"%PDF-1.4 the letter", {})))
    gateway.run("letters", "incomplete", "2026-000001", "--missing", "page 2", "--by",
                (date.today() + timedelta(days=30)).isoformat())
    [asked] = [e for e in gateway.show_json("2026-000001")["events"]  # type: ignore[attr-defined]
               if e["action"] == "incomplete"]
    thread = {"In-Reply-To": asked["details"]["message_id"], "References": asked["details"]["message_id"]}
    gateway.run("ingest", str(mail("Re: Materials missing", "scan.pdf", b"%PDF-1.4 page 2", thread)))
    gateway.run("ingest", str(mail("Re: Materials missing", "SCAN.pdf", b"%PDF-1.4 page 3", thread)))
    letter = gateway.show_json("2026-000001")
    assert [a["filename"] for a in letter["attachments"]] == ["scan.pdf", "scan.pdf", "SCAN.pdf"]  # type: ignore[index]
    folder = tmp_path / "out"
    written = gateway.run("letters", "extract", "2026-000001", str(folder)).stdout.split()
    assert [Path(p).name for p in written] == ["scan.pdf", "scan-2.pdf", "SCAN-3.pdf"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        "scan.pdf": b"%PDF-1.4 the letter", "scan-2.pdf": b"%PDF-1.4 page 2", "SCAN-3.pdf": b"%PDF-1.4 page 3"}


def test_base64_with_one_character_too_many_is_decoded_all_the_same(tmp_path: Path) -> None:
    """A stray character at the end of a base64 part leaves one more than a multiple of four: Python's
    decoder then gives back the base64 text itself, which became the letter's text and the file
    written. What precedes the stray character is decoded, with the defect on the letter."""
    import base64

    gateway = Gateway(tmp_path)
    scan = b"%PDF-1.4\n" + bytes(range(256)) * 3 + b"\n%%EOF\n\n\n"  # a multiple of three: no padding
    assert len(scan) % 3 == 0
    text = "合同已收到，请审阅附件。"
    raw = (b"From: alice@partner.example\r\nTo: liaison@example.org\r\nSubject: stray characters\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(text.encode()).replace(b"\n", b"\r\n") + b"x\r\n--B\r\n"
           b'Content-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           + base64.encodebytes(scan).replace(b"\n", b"\r\n") + b"A\r\n--B--\r\n")
    (tmp_path / "letter.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    letter = gateway.show_json("2026-000001")
    assert letter["body_text"] == text
    assert [(a["filename"], a["size"]) for a in letter["attachments"]] == [("scan.pdf", len(scan))]  # type: ignore[index]
    assert {"part 1: invalid base64 length", "part 2: invalid base64 length"} <= set(letter["defects"])  # type: ignore[arg-type]
    folder = tmp_path / "out"
    gateway.run("letters", "extract", "2026-000001", str(folder))
    assert (folder / "scan.pdf").read_bytes() == scan


@pytest.mark.parametrize("parameter", [b'boundary="BB" (MIME boundary)', b'boundary="BB'])
def test_a_quoted_boundary_with_a_comment_or_no_closing_quote_still_splits_the_parts(
        parameter: bytes, tmp_path: Path) -> None:
    """RFC 2045 allows a comment after a parameter; some senders drop the closing quote. Python's
    parser then keeps the quotes in the boundary and never finds it: the whole mail became one text,
    the attachment base64 in it. Read as what the quotes enclose, the parts are found."""
    gateway = Gateway(tmp_path)
    raw = (b"From: alice@partner.example\r\nTo: liaison@example.org\r\nSubject: quoted boundary\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; " + parameter + b"\r\n\r\n--BB\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease find the contract.\r\n--BB\r\n"
           b'Content-Type: application/pdf; name="contract.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           b"JVBERi0xLjQKJSVFT0YK\r\n--BB--\r\n")
    (tmp_path / "letter.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    letter = gateway.show_json("2026-000001")
    assert letter["body_text"] == "Please find the contract."
    assert [a["filename"] for a in letter["attachments"]] == ["contract.pdf"]  # type: ignore[index]
    gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out"))
    assert (tmp_path / "out" / "contract.pdf").read_bytes() == b"%PDF-1.4\n%%EOF\n"


def test_a_name_that_is_only_an_extension_keeps_it_on_a_name_of_the_gateways(tmp_path: Path) -> None:
    """A file name with nothing before its extension but what is dropped (".pdf", or a direction
    control and ".pdf") became "pdf", a file no program opens as a PDF; it is named as a nameless
    attachment is, with the sender's extension."""
    gateway = Gateway(tmp_path)
    msg = EmailMessage()
    msg["From"] = "alice@partner.example"
    msg["To"] = "liaison@example.org"
    msg["Subject"] = "nameless files"
    msg.set_content("See the attachments.")
    for name in ("report.pdf", ".pdf", "\u202e.pdf"):
        msg.add_attachment(b"%PDF-1.4\n%%EOF\n" + name.encode(), maintype="application", subtype="pdf", filename=name)
    (tmp_path / "letter.eml").write_bytes(msg.as_bytes())
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    written = gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out")).stdout.split()
    assert [Path(p).name for p in written] == ["report.pdf", "attachment-2.pdf", "attachment-3.pdf"]


def test_an_invitation_alone_becomes_the_letters_text_and_its_ics_is_kept(tmp_path: Path) -> None:
    """A meeting invitation with nothing but a text/calendar part (Outlook, DingTalk) gave a letter
    without any text: no summary, nothing for search to find. Its title, time, place, organiser and
    description are the letter's text, and the .ics is kept as it came."""
    import base64
    import json

    ics = ("BEGIN:VCALENDAR\r\nPRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\r\nVERSION:2.0\r\n"
           "METHOD:REQUEST\r\nBEGIN:VTIMEZONE\r\nTZID:China Standard Time\r\nBEGIN:STANDARD\r\n"
           "DTSTART:16010101T000000\r\nTZOFFSETFROM:+0800\r\nTZOFFSETTO:+0800\r\nEND:STANDARD\r\n"
           "END:VTIMEZONE\r\nBEGIN:VEVENT\r\n"
           'ORGANIZER;CN="王经理: 采购部":mailto:wang@partner.example\r\n'
           "ATTENDEE;ROLE=REQ-PARTICIPANT;RSVP=TRUE:mailto:liaison@example.org\r\n"
           "DESCRIPTION;LANGUAGE=zh-CN:请准时参加续签会议。\\n议程：一\\, 价格\\; 二\\, 交期。\r\n"
           "SUMMARY;LANGUAGE=zh-CN:合同续签会议\r\n"
           "DTSTART;TZID=China Standard Time:20261203T140000\r\n"
           "DTEND;TZID=China Standard Time:20261203T153000\r\n"
           "LOCATION;LANGUAGE=zh-CN:北京市朝阳区建国路 88 号\r\n  3 楼会议室\r\n"
           "UID:040000008200E00074C5B7101A82E008\r\nBEGIN:VALARM\r\nDESCRIPTION:REMINDER\r\n"
           "TRIGGER;RELATED=START:-PT15M\r\nACTION:DISPLAY\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").encode()
    raw = (b"From: Wang <wang@partner.example>\r\nTo: liaison@example.org\r\nSubject: Invitation\r\n"
           b"Date: Mon, 23 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/calendar; charset=utf-8; method=REQUEST\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(ics).replace(b"\n", b"\r\n"))
    gateway = Gateway(tmp_path)
    (tmp_path / "invitation.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "invitation.eml"))
    letter = gateway.show_json("2026-000001")
    assert letter["body_text"] == (
        "Invitation: 合同续签会议\n"
        "When: 2026-12-03 14:00 (China Standard Time) – 15:30 (China Standard Time)\n"
        "Where: 北京市朝阳区建国路 88 号 3 楼会议室\n"
        "Organiser: 王经理: 采购部 <wang@partner.example>\n"
        "\n"
        "请准时参加续签会议。\n议程：一, 价格; 二, 交期。")
    assert str(letter["summary"]).startswith("Invitation: 合同续签会议 When: 2026-12-03 14:00")
    assert letter["defects"] == []
    for words in ("续签", "建国路", "交期"):
        found = json.loads(gateway.run("letters", "search", words, "--json").stdout)
        assert [row["number"] for row in found["letters"]] == ["2026-000001"], words
    assert [(a["filename"], a["declared_type"], a["size"]) for a in letter["attachments"]] == [  # type: ignore[index]
        ("attachment-1.ics", "text/calendar", len(ics))]
    gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out"))
    assert (tmp_path / "out" / "attachment-1.ics").read_bytes() == ics


def test_8bit_content_labelled_base64_is_taken_as_it_came(tmp_path: Path) -> None:
    """A mailer that labels raw 8-bit content base64: decoding it as base64 gave noise in place of the
    letter's text and of the file. Base64 is ASCII only, so such content is taken as it came, named."""
    gateway = Gateway(tmp_path)
    text = "合同已收到，请审阅附件。\r\nThanks, regards"
    scan = b"%PDF-1.4\n" + bytes(range(0x80, 0x100)) + b"\n%%EOF"
    raw = (b"From: alice@partner.example\r\nTo: liaison@example.org\r\nSubject: raw under base64\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + text.encode() + b"\r\n--B\r\n"
           b'Content-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           + scan + b"\r\n--B--\r\n")
    (tmp_path / "letter.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    letter = gateway.show_json("2026-000001")
    assert letter["body_text"] == text.replace("\r\n", "\n")
    assert [(a["filename"], a["size"]) for a in letter["attachments"]] == [("scan.pdf", len(scan))]  # type: ignore[index]
    assert letter["defects"] == [f"part {n}: not base64 (8-bit bytes under Content-Transfer-Encoding base64, "
                                 "content taken as is)" for n in (1, 2)]
    gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out"))
    assert (tmp_path / "out" / "scan.pdf").read_bytes() == scan


def test_plain_text_labelled_base64_is_taken_as_it_came(tmp_path: Path) -> None:
    """A sender that labels readable ASCII text base64: decoding it as base64 gave noise in place of
    the letter's text. Text (words with blanks between them, lines with what base64 has not) is
    taken as it came, named; real base64 spoiled by a few stray characters is still decoded."""
    gateway = Gateway(tmp_path)
    text = "Dear Sir,\r\n\r\nPlease find the signed contract (No. 2026-17) attached.\r\nRegards,\r\nAlice"
    raw = (b"From: alice@partner.example\r\nTo: liaison@example.org\r\nSubject: text under base64\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
           b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + text.encode() + b"\r\n--B\r\n"
           b'Content-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           b"JVBERi0xLjQK*!*\r\n--B--\r\n")
    (tmp_path / "letter.eml").write_bytes(raw)
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    letter = gateway.show_json("2026-000001")
    assert letter["body_text"] == text.replace("\r\n", "\n")
    assert letter["defects"] == [
        "part 1: not base64 (text under Content-Transfer-Encoding base64, 3 of its 4 line(s) no base64 "
        "(the first: 'Dear Sir,'), content taken as is)",
        "part 2: invalid base64 characters"]
    gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out"))
    assert (tmp_path / "out" / "scan.pdf").read_bytes() == b"%PDF-1.4\n"
