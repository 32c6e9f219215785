"""Fax intake: the drop folder and fax-to-email, with faxes the suite renders and the real tesseract."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for
from gateway.adapters import fax_drop
from gateway.adapters.fax_drop import FaxDropWatcher
from gateway.config import Config
from gateway.daemon.pipeline import Pipeline
from gateway.registry import Registry
from gateway.spool import Spool, read_raw
from gateway.stages import rulebook

from fax_samples import ENGLISH, SIMPLIFIED, TRADITIONAL, corrupt, pdf_fax, tiff_fax

pytestmark = pytest.mark.timeout(300)

FAX_SETTINGS = """
[fax]
poll_seconds = 0.2
stable_seconds = 1
filename_pattern = '^fax_(?P<number>[0-9+]+)_(?P<received>[0-9]{8}-[0-9]{6})'
filename_time_format = "%Y%m%d-%H%M%S"
ocr_workers = 1

[fax.email]
senders = ["fax@faxservice.example"]
"""


INQUIRY_RULES = """
rules:
  - name: inquiries
    when: {keywords: ["咨询", "采购订单"]}
    set: {category: external.business, department: business}
"""


@pytest.fixture(scope="module")
def faxes() -> dict[str, bytes]:
    """Rendered once: G4 fine with tags, G3 standard in Chinese, a PDF, and a 2-page G4."""
    return {
        "tagged": tiff_fax([ENGLISH, ENGLISH, ENGLISH], resolution="fine", compression="group4",
                           tags={"ImageDescription": "+86 10 8888 1234", "DateTime": "2026:11:23 10:15:00"}),
        "chinese": tiff_fax([SIMPLIFIED, TRADITIONAL], resolution="standard", compression="group3"),
        "pdf": pdf_fax([ENGLISH, SIMPLIFIED]),
        "two": tiff_fax([ENGLISH, ENGLISH], resolution="fine", compression="group4"),
    }


def shanghai(iso: str) -> str:
    """A stored time as the organisation reads it (the test gateway's time zone)."""
    return datetime.fromisoformat(iso).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")


def configure(tmp_path: Path, extra: str = "", **kwargs: str) -> Gateway:
    return Gateway(tmp_path, extra=FAX_SETTINGS + extra, **kwargs)


def start(gateway: Gateway, notify: Notify, **env: str) -> Daemon:
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path), **env)
    notify.wait_for("READY=1")
    return daemon


def drop(gateway: Gateway, name: str, data: bytes, *, age: float = 5.0) -> Path:
    """Write a fax into the drop folder as a fax server would: under a temporary name, then renamed."""
    folder = gateway.state / "fax-drop"
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.part"
    partial.write_bytes(data)
    past = time.time() - age
    os.utime(partial, (past, past))
    target = folder / name
    os.rename(partial, target)
    return target


def fax_letters(gateway: Gateway, count: int, timeout: float = 60) -> list[dict]:
    wait_for(lambda: len(gateway.list_json("--channel", "fax")) >= count, timeout, f"{count} fax letter(s)")
    return [gateway.show_json(str(item["number"])) for item in gateway.list_json("--channel", "fax")]


def text_read(gateway: Gateway, number: str, timeout: float = 90) -> dict:
    wait_for(lambda: "ocr-pending" not in gateway.show_json(number)["flags"], timeout, f"the text of {number}")
    return gateway.show_json(number)


def test_a_dropped_fax_is_registered_with_its_pages_tags_and_text(tmp_path: Path, notify: Notify,
                                                                  faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    daemon = start(gateway, notify)
    try:
        path = drop(gateway, "incoming.tif", faxes["tagged"])
        [letter] = fax_letters(gateway, 1)
        assert letter["channel"] == "fax" and letter["intake"] == "fax-drop"
        assert letter["fax"]["pages"] == 3
        assert letter["fax"]["number"] == "+86 10 8888 1234"
        assert shanghai(letter["fax"]["sent_at"]) == "2026-11-23 10:15:00"  # the fax server's local time
        assert letter["subject"] == "Fax from +86 10 8888 1234, 3 page(s)"
        assert not path.exists()
        # The original is kept unchanged as the letter's raw copy and attachment.
        [attachment] = letter["attachments"]
        assert attachment["detected_type"] == "image/tiff" and attachment["size"] == len(faxes["tagged"])
        assert (gateway.state / letter["raw_path"]).exists()
        # What no source gave is recorded, not guessed.
        assert "fax: caller id unknown" in letter["defects"]
        letter = text_read(gateway, str(letter["number"]))
        assert "PURCHASE" in letter["body_text"].upper() and "DELIVERY" in letter["body_text"].upper()
        assert letter["summary"]
        assert "text-read" in [e["action"] for e in letter["events"]]
    finally:
        daemon.stop()


def test_sidecar_and_filename_give_the_facts_and_chinese_is_read_without_spaces(
        tmp_path: Path, notify: Notify, faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path, rules=INQUIRY_RULES)
    folder = gateway.state / "fax-drop"
    folder.mkdir(parents=True)
    (folder / "fax_0105551234_20261120-083000.info").write_text(
        "Sender: +86 21 5555 0000\nPages: 2\nCallID1: 02155550000\nCallID2: Example Trading\n")
    drop(gateway, "fax_0105551234_20261120-083000.tif", faxes["chinese"])
    daemon = start(gateway, notify)  # taken as backlog at start-up
    try:
        [letter] = fax_letters(gateway, 1)
        fax = letter["fax"]
        # The sidecar is trusted before the file name.
        assert fax["number"] == "+86 21 5555 0000"
        assert fax["caller_id"] == "02155550000" and fax["sender_name"] == "Example Trading"
        assert shanghai(fax["sent_at"]) == "2026-11-20 08:30:00"
        assert fax["pages"] == 2 and "partial-reception" not in letter["flags"]
        assert not list(folder.glob("fax_*"))  # the sidecar left with the fax
        letter = text_read(gateway, str(letter["number"]))
        text = letter["body_text"]
        # Classified and routed once its text is known, by a word only the text has.
        assert letter["status"] == "routed" and letter["department"] == "business"
        assert letter["classification"]["matched"][0]["rule"] == "inquiries"
        actions = [e["action"] for e in letter["events"]]
        assert actions.index("text-read") < actions.index("classified") < actions.index("routed")
        assert "采购订单" in text or "交货日期" in text
        assert "採購訂單" in text or "交貨日期" in text
        assert "采 购" not in text and "交 货" not in text
    finally:
        daemon.stop()


def test_filename_pattern_and_a_pdf_fax(tmp_path: Path, notify: Notify, faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    daemon = start(gateway, notify)
    try:
        drop(gateway, "fax_+8675512345_20261121-140500.pdf", faxes["pdf"])
        [letter] = fax_letters(gateway, 1)
        assert letter["fax"]["number"] == "+8675512345" and letter["fax"]["pages"] == 2
        assert shanghai(letter["fax"]["sent_at"]) == "2026-11-21 14:05:00"
        assert letter["attachments"][0]["detected_type"] == "application/pdf"
    finally:
        daemon.stop()


def test_declared_pages_that_differ_are_a_partial_reception(tmp_path: Path, notify: Notify,
                                                            faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path, rules=INQUIRY_RULES)
    folder = gateway.state / "fax-drop"
    folder.mkdir(parents=True)
    (folder / "short.tif.info").write_text("Sender: 075512345\nPages: 5\n")
    drop(gateway, "short.tif", faxes["two"])
    daemon = start(gateway, notify)
    try:
        [letter] = fax_letters(gateway, 1)
        assert "partial-reception" in letter["flags"]
        assert "fax: 5 page(s) announced, 2 received" in letter["defects"]
        # Shown in the register itself, not only in the letter's details.
        assert "partial-reception" in gateway.list_json()[0]["flags"]
        assert "partial" in gateway.run("letters", "list").stdout
    finally:
        daemon.stop()


def test_a_file_still_being_written_or_with_a_temporary_name_is_not_taken(
        tmp_path: Path, notify: Notify, faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path, "")
    folder = gateway.state / "fax-drop"
    folder.mkdir(parents=True)
    data = faxes["two"]
    growing = folder / "growing.tif"
    for name in ("upload.tif.part", ".hidden.tif", "scan.tmp"):
        (folder / name).write_bytes(data)
        os.utime(folder / name, (time.time() - 60, time.time() - 60))
    daemon = start(gateway, notify)
    try:
        # Written slowly, a little at a time: never quiet for stable_seconds, so never taken.
        step = max(1, len(data) // 8)
        with open(growing, "wb") as out:
            for offset in range(0, len(data), step):
                out.write(data[offset:offset + step])
                out.flush()
                time.sleep(0.5)
                assert growing.exists(), f"taken after {offset + step} of {len(data)} bytes"
        fax_letters(gateway, 1)  # complete and quiet: taken
        assert not growing.exists()
        assert sorted(os.listdir(folder)) == [".hidden.tif", "scan.tmp", "upload.tif.part"]
    finally:
        daemon.stop()


def test_an_unreadable_file_goes_to_the_spool_quarantine_with_its_reason(tmp_path: Path, notify: Notify,
                                                                         faxes: dict[str, bytes]) -> None:
    """A file that is no readable fax leaves the drop folder for the spool's quarantine, with its
    name, its sidecar's content and the reason; `gateway quarantine` lists, shows and retries it."""
    gateway = configure(tmp_path)
    daemon = start(gateway, notify)
    try:
        broken = corrupt(faxes["two"])
        drop(gateway, "broken.tif", broken)
        (gateway.state / "fax-drop" / "broken.info").write_text("Caller-ID: +86 10 5555 0000\n")
        drop(gateway, "notes.txt", b"not a fax at all\n")
        folder = gateway.state / "fax-drop"
        listed = wait_for(lambda: len(json.loads(gateway.run("quarantine", "list", "--json").stdout)) == 2
                          and json.loads(gateway.run("quarantine", "list", "--json").stdout), 30, "both set aside")
        assert isinstance(listed, list)
        wait_for(lambda: os.listdir(folder) == [], 10, "the drop folder empty")
        by_name = {}
        for entry in listed:
            shown = json.loads(gateway.run("quarantine", "show", entry["id"], "--json").stdout)
            by_name[shown["meta"]["fax_drop"]["file_name"]] = shown
            assert entry["intake"] == "fax-drop"
        assert set(by_name) == {"broken.tif", "notes.txt"}
        rejected = by_name["broken.tif"]
        assert "broken.tif" in rejected["reason"]
        assert rejected["meta"]["fax_drop"]["sidecar_name"] == "broken.info"
        assert "+86 10 5555 0000" in rejected["meta"]["fax_drop"]["sidecar"]
        assert by_name["notes.txt"]["meta"]["fax_drop"]["sidecar"] is None
        # Named like an information file, it waited for a fax that never came: set aside as what it is.
        assert "an information file (txt) without its fax" in by_name["notes.txt"]["reason"]
        assert read_raw(gateway.state / "spool" / "quarantine" / f"{rejected['id']}.item") == broken  # nothing lost
        assert gateway.list_json("--channel", "fax") == []

        # Retried, it goes through the pipeline again: still no fax, so back in quarantine with its history.
        gateway.run("quarantine", "retry", rejected["id"])
        def back_in_quarantine() -> bool:  # out of it while the pipeline tries it again
            shown = gateway.run("quarantine", "show", rejected["id"], "--json", check=False)
            return shown.returncode == 0 and json.loads(shown.stdout)["attempts"] == 3
        wait_for(back_in_quarantine, 60, "quarantined again after its attempts")
        again = json.loads(gateway.run("quarantine", "show", rejected["id"], "--json").stdout)
        assert len(again["history"]) >= 2 and "broken.tif" in again["history"][0]
    finally:
        log = daemon.stop()
    assert "fax broken.tif set aside in quarantine" in log


def test_a_file_name_that_is_not_utf8_is_taken_in_and_holds_up_nothing(tmp_path: Path, notify: Notify,
                                                                       faxes: dict[str, bytes]) -> None:
    """A fax server's name in another encoding (bytes that are not UTF-8) is no text the registry
    can hold: the fax is taken in under the name written readably, and the files after it in the
    folder are taken too; an unreadable one goes to quarantine the same way."""
    gateway = configure(tmp_path)
    folder = os.fsencode(gateway.state / "fax-drop")
    os.makedirs(folder, exist_ok=True)
    past = time.time() - 5
    for name, data in ((b"fax\xb4\xab\xd5\xe6.tif", faxes["tagged"]), (b"junk\xff.tif", b"not a fax\n"),
                       (b"zz-good.tif", faxes["two"])):
        path = os.path.join(folder, name)
        with open(path, "wb") as out:
            out.write(data)
        os.utime(path, (past, past))
    daemon = start(gateway, notify)
    try:
        letters = fax_letters(gateway, 2)
        wait_for(lambda: os.listdir(folder) == [], 30, "the drop folder empty")
        [quarantined] = json.loads(gateway.run("quarantine", "list", "--json").stdout)
    finally:
        log = daemon.stop()
    names = sorted(str(attachment["original_filename"]) for letter in letters for attachment in letter["attachments"])
    assert names == ["fax\\xb4\\xab\\xd5\\xe6.tif", "zz-good.tif"], names
    shown = json.loads(gateway.run("quarantine", "show", quarantined["id"], "--json").stdout)
    assert shown["meta"]["fax_drop"]["file_name"] == "junk\\xff.tif"
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_sigkill_between_spool_and_removal_gives_exactly_one_letter(tmp_path: Path, notify: Notify,
                                                                    faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    path = drop(gateway, "crash.tif", faxes["two"])
    crashing = gateway.start(GATEWAY_CRASH_AT="before-fax-remove")
    assert crashing.wait(60) == -signal.SIGKILL
    assert path.exists()  # durable in the spool, but still in the drop folder
    daemon = start(gateway, notify)
    try:
        fax_letters(gateway, 1)
        wait_for(lambda: not path.exists(), 30, "the file removed")
        # The copy taken again after the restart is processed too, and recognised.
        wait_for(lambda: not gateway.spool_files("new") and not gateway.spool_files("work"), 30, "the spool empty")
        assert len(gateway.list_json("--channel", "fax")) == 1
    finally:
        daemon.stop()


def fax_mail(subject: str, attachments: list[tuple[str, bytes]]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Fax Service <fax@faxservice.example>"
    msg["To"] = "fax-inbox@example.org"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0800"
    msg.set_content("You have received a fax. Received: 2026-11-23 09:58:00\n")
    for name, data in attachments:
        maintype, subtype = ("application", "pdf") if name.endswith(".pdf") else ("image", "tiff")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def test_fax_to_email_through_smtp_and_partial_receptions(tmp_path: Path, notify: Notify,
                                                          faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    daemon = start(gateway, notify)
    try:
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
            client.sendmail("fax@faxservice.example", ["fax-inbox@example.org"],
                            fax_mail("Fax from +86 21 6666 7777 (2 pages)", [("fax.tif", faxes["two"])]))
            client.sendmail("fax@faxservice.example", ["fax-inbox@example.org"],
                            fax_mail("Fax from +86 21 6666 8888 (3 pages)", [("fax.tif", faxes["two"])]))
            client.sendmail("fax@faxservice.example", ["fax-inbox@example.org"],
                            fax_mail("Fax from +86 21 6666 9999", []))
            client.sendmail("alice@partner.example", ["liaison@example.org"], make_message(1, subject="plain"))
        letters = {item["fax"]["number"]: item for item in fax_letters(gateway, 3)}
        complete, short, empty = (letters["+86 21 6666 7777"], letters["+86 21 6666 8888"],
                                  letters["+86 21 6666 9999"])
        assert complete["channel"] == "fax" and complete["fax"]["pages"] == 2
        assert "partial-reception" not in complete["flags"]
        # Its From alone made it a fax: nothing proved the fax service sent it.
        assert all("fax-sender-unproven" in letter["flags"] for letter in (complete, short, empty))
        assert "partial-reception" in short["flags"] and "fax: 3 page(s) announced, 2 received" in short["defects"]
        assert "partial-reception" in empty["flags"]
        assert "fax: the fax mail carries no TIFF or PDF document" in empty["defects"]
        assert [item["channel"] for item in gateway.list_json() if item["subject"] == "plain"] == ["email"]
        assert "DELIVERY" in text_read(gateway, str(complete["number"]))["body_text"].upper()
    finally:
        daemon.stop()


def test_a_fax_mail_its_sender_proven_is_not_flagged_as_unproven(tmp_path: Path, faxes: dict[str, bytes]) -> None:
    """Fetched from a mailbox behind the organisation's MTA, whose verdict proves the fax service's
    domain: a fax like any other. The same mail with a verdict nobody trusts stays flagged."""
    gateway = configure(tmp_path, extra='[trust]\ntrusted_authserv_ids = ["mx.example.org"]\n')
    for number, authserv_id in (("+86 21 6666 7777", "mx.example.org"), ("+86 21 6666 8888", "mx.elsewhere.example")):
        verdict = f"Authentication-Results: {authserv_id}; dmarc=pass header.from=faxservice.example\r\n"
        path = tmp_path / f"{authserv_id}.eml"
        path.write_bytes(verdict.encode() + fax_mail(f"Fax from {number} (2 pages)", [("fax.tif", faxes["two"])]))
        gateway.run("ingest", str(path))
    flags = {letter["fax"]["number"]: letter["flags"] for letter in fax_letters(gateway, 2)}
    assert "fax-sender-unproven" not in flags["+86 21 6666 7777"], flags  # proven by the trusted verdict
    assert "fax-sender-unproven" in flags["+86 21 6666 8888"], flags


def test_an_ocr_failure_is_a_defect_and_registration_goes_on(tmp_path: Path, notify: Notify,
                                                             faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    # The tesseract reader, with language data that does not exist (the gateway's own reader
    # takes no language list).
    gateway.config.write_text(gateway.config.read_text().replace(
        "ocr_workers = 1", 'ocr_workers = 1\nocr_reader = "tesseract"\nocr_languages = "xxx"'))
    daemon = start(gateway, notify)
    try:
        drop(gateway, "unreadable-text.tif", faxes["two"])
        [letter] = fax_letters(gateway, 1)
        letter = text_read(gateway, str(letter["number"]))
        assert letter["body_text"] == "" and "no-text" in letter["flags"]
        assert any("OCR" in d or "ocr" in d for d in letter["defects"]), letter["defects"]
    finally:
        daemon.stop()


def test_a_burst_of_faxes_does_not_hold_up_email(tmp_path: Path, notify: Notify) -> None:
    gateway = configure(tmp_path)
    faxes = [tiff_fax([ENGLISH, SIMPLIFIED, ENGLISH], tags={"ImageDescription": f"+86 10 {n}"}) for n in range(6)]
    daemon = start(gateway, notify)
    db = sqlite3.connect(gateway.state / "registry.sqlite3", timeout=30)
    try:
        for n, data in enumerate(faxes):  # six different faxes (the same bytes twice would be one letter)
            drop(gateway, f"burst-{n}.tif", data)
        wait_for(lambda: db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0] >= 4, 30, "the faxes registered")
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
            client.sendmail("alice@partner.example", ["liaison@example.org"], make_message(1, subject="urgent"))
        answered = time.monotonic() - started
        waiting = db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0]
        assert waiting >= 2, "the OCR backlog was already gone; the test proves nothing"
        assert answered < 5, f"e-mail waited {answered:.1f} s behind {waiting} faxes' OCR"
        wait_for(lambda: db.execute("SELECT count(*) FROM ocr_jobs").fetchone()[0] == 0, 180, "every text read")
    finally:
        db.close()
        daemon.stop()


def test_gateway_ingest_takes_a_fax_file_and_the_daemon_reads_its_text_later(
        tmp_path: Path, notify: Notify, faxes: dict[str, bytes]) -> None:
    gateway = configure(tmp_path)
    path = tmp_path / "fax_+8620123456_20261122-090000.tif"
    path.write_bytes(faxes["two"])
    out = gateway.run("ingest", str(path)).stdout
    assert "registered as" in out
    [letter] = gateway.list_json("--channel", "fax")
    detail = gateway.show_json(str(letter["number"]))
    assert detail["fax"]["number"] == "+8620123456" and detail["fax"]["pages"] == 2
    assert "ocr-pending" in detail["flags"] and detail["body_text"] == ""
    daemon = start(gateway, notify)  # the text job waits in the registry for the daemon
    try:
        assert "DELIVERY" in text_read(gateway, str(letter["number"]))["body_text"].upper()
    finally:
        daemon.stop()


def test_gateway_ingest_reads_no_information_file_whose_name_fits_two_faxes(tmp_path: Path,
                                                                          faxes: dict[str, bytes]) -> None:
    """f1.info beside f1.tif and f1.pdf is neither's: both are registered without it, saying so;
    f2.info beside f2.tif alone is read."""
    gateway = configure(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "f1.tif").write_bytes(faxes["two"])
    (folder / "f1.pdf").write_bytes(faxes["pdf"])
    (folder / "f1.info").write_text("Sender: +86 10 2222 2222\n")
    (folder / "f2.tif").write_bytes(faxes["chinese"])
    (folder / "f2.info").write_text("Sender: +86 10 3333 3333\n")
    gateway.run("ingest", *(str(folder / name) for name in ("f1.tif", "f1.pdf", "f2.tif")))
    shown = {letter["attachments"][0]["filename"]: letter
             for letter in (gateway.show_json(str(row["number"])) for row in gateway.list_json("--channel", "fax"))}
    assert shown["f2.tif"]["fax"]["number"] == "+86 10 3333 3333"
    for name, other in (("f1.tif", "f1.pdf"), ("f1.pdf", "f1.tif")):
        assert shown[name]["fax"]["number"] is None, name
        assert (f"fax: information file f1.info not read: its name fits another fax as well ({other}); named "
                f"{name}.info it is read") in shown[name]["defects"], shown[name]["defects"]


def test_gateway_ingest_counts_as_faxes_the_files_beside_one_that_are_faxes_whatever_their_names(
        tmp_path: Path, faxes: dict[str, bytes]) -> None:
    """As the drop folder: f3.info beside f3.tif and a TIFF named f3.fax is neither's; f4.info beside
    f4.pdf and a document f4.docx (no fax) is f4.pdf's; f5.tif with its own f5.tif.info misses
    nothing when f5.info beside it and f5.pdf is neither's."""
    gateway = configure(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "f3.tif").write_bytes(faxes["two"])
    (folder / "f3.fax").write_bytes(faxes["chinese"])
    (folder / "f3.info").write_text("Sender: +86 10 2222 2222\n")
    (folder / "f4.pdf").write_bytes(faxes["pdf"])
    (folder / "f4.docx").write_bytes(b"PK\x03\x04 a word processor's file\n")
    (folder / "f4.info").write_text("Sender: +86 10 4444 4444\n")
    (folder / "f5.tif").write_bytes(faxes["tagged"])
    (folder / "f5.tif.info").write_text("Sender: +86 10 5555 5555\n")
    (folder / "f5.pdf").write_bytes(faxes["pdf"])
    (folder / "f5.info").write_text("Sender: +86 10 6666 6666\n")
    gateway.run("ingest", str(folder / "f3.tif"), str(folder / "f4.pdf"), str(folder / "f5.tif"))
    shown = {letter["attachments"][0]["filename"]: letter
             for letter in (gateway.show_json(str(row["number"])) for row in gateway.list_json("--channel", "fax"))}
    assert shown["f3.tif"]["fax"]["number"] is None
    assert ("fax: information file f3.info not read: its name fits another fax as well (f3.fax); named "
            "f3.tif.info it is read") in shown["f3.tif"]["defects"], shown["f3.tif"]["defects"]
    assert shown["f4.pdf"]["fax"]["number"] == "+86 10 4444 4444"
    assert shown["f5.tif"]["fax"]["number"] == "+86 10 5555 5555"
    for name in ("f4.pdf", "f5.tif"):
        assert not [defect for defect in shown[name]["defects"] if "information file" in defect], name


# -- the drop folder's watcher on its own: what it takes, when, and what it leaves ---------------

WATCHED = """
[fax]
poll_seconds = 0.2
stable_seconds = 0
ocr_workers = 1
"""


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Config, Spool, FaxDropWatcher]]:
    gateway = Gateway(tmp_path, extra=WATCHED)
    config = rulebook.load(str(gateway.config))
    spool = Spool(config.spool_dir, config.message_dir)
    config.fax_drop_dir.mkdir(parents=True, exist_ok=True)
    yield config, spool, FaxDropWatcher(config, spool)


def aged(path: Path, data: bytes | str, seconds: float = 3600) -> Path:
    """Written with an old mtime, as `cp --preserve` or a share that keeps the writer's time leave it."""
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def test_a_fax_first_seen_is_not_taken_and_one_still_growing_never_is(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    config, spool, watcher = watched
    whole = faxes["two"]
    fax = aged(config.fax_drop_dir / "c.tif", whole[:len(whole) // 2])  # half copied, its mtime old
    assert watcher.scan() == 0  # a first sighting proves nothing
    with open(fax, "ab") as rest:
        rest.write(whole[len(whole) // 2:])
    os.utime(fax, (time.time() - 3600, time.time() - 3600))
    assert watcher.scan() == 0  # it grew: seen anew
    assert spool.quarantined() == [] and fax.exists()
    assert watcher.scan() == 1  # unchanged since the last scan: taken whole
    [item] = spool.claim(1)
    assert item.raw == whole and not fax.exists()


def test_a_fax_whose_time_is_ahead_of_the_clock_is_taken_once_unchanged(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes],
        caplog: pytest.LogCaptureFixture) -> None:
    """A share keeps the time the writer's clock gave: a fax machine whose clock is an hour ahead
    writes files dated in the future. Their age proves nothing then; seen unchanged, they are taken
    (with a warning naming the file), not held until the machine's clock catches up."""
    config, spool, watcher = watched
    ahead = time.time() + 3600
    fax = aged(config.fax_drop_dir / "ahead.tif", faxes["two"], seconds=-3600)
    info = aged(config.fax_drop_dir / "ahead.tif.info", "Sender: +86 10 1234 5678\n", seconds=-3600)
    assert os.stat(fax).st_mtime >= ahead - 60 and os.stat(info).st_mtime >= ahead - 60
    with caplog.at_level(logging.WARNING, logger="gateway.stages.fax"):
        assert watcher.scan() == 0  # a first sighting proves nothing
        assert watcher.scan() == 1
    [item] = spool.claim(1)
    assert item.raw == faxes["two"] and item.meta["fax"]["number"] == "+86 10 1234 5678"
    assert os.listdir(config.fax_drop_dir) == []
    assert any("ahead.tif" in r.getMessage() and "ahead of this machine's clock" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_fax_waits_for_its_information_file_to_be_complete(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    config, spool, watcher = watched
    aged(config.fax_drop_dir / "a.tif", faxes["two"])
    info = aged(config.fax_drop_dir / "a.info", "Sender: +86 10 1\n")
    assert watcher.scan() == 0
    aged(info, "Sender: +86 10 1234 5678\nPages: 2\n")  # still being written
    assert watcher.scan() == 0
    assert watcher.scan() == 1
    [item] = spool.claim(1)
    assert item.raw == faxes["two"] and item.meta["fax"]["number"] == "+86 10 1234 5678"
    assert os.listdir(config.fax_drop_dir) == []


def test_an_information_file_without_its_fax_waits_then_is_set_aside_as_what_it_is(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    config, spool, watcher = watched
    aged(config.fax_drop_dir / "b.tif", faxes["two"])
    assert watcher.scan() == 0 and watcher.scan() == 1  # taken before its information file came
    late = aged(config.fax_drop_dir / "b.info", "Sender: +86 21 5555 0000\n")
    assert watcher.scan() == 0 and late.exists()  # it may be a fax's coming first: it waits
    watcher.scan()
    [aside] = spool.quarantined()
    assert "b.info: an information file (info) without its fax" in aside.reason
    assert aside.meta["fax_drop"]["file_name"] == "b.info" and not late.exists()
    assert read_raw(aside.path) == b"Sender: +86 21 5555 0000\n"


def test_an_information_file_whose_name_fits_two_faxes_is_given_to_neither_and_left_with_one_alert(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes],
        caplog: pytest.LogCaptureFixture) -> None:
    """f1.info beside f1.tif and f1.pdf could be either's: each fax is taken on its own, without
    its facts, its letter saying so; f1.info stays, named once in an ALERT. f1.tif.info is still
    f1.tif's. A fax of two taken first leaves the shared file the other's neither."""
    config, spool, watcher = watched
    folder = config.fax_drop_dir
    aged(folder / "f1.tif", faxes["two"])
    aged(folder / "f1.tif.info", "Sender: +86 10 1111 1111\n")
    aged(folder / "f1.pdf", faxes["pdf"])
    aged(folder / "f1.info", "Sender: +86 10 2222 2222\nPages: 9\n")
    aged(folder / "f2.pdf", faxes["pdf"] + b"\n")  # other bytes: a fax of its own
    aged(folder / "f2.info", "Sender: +86 10 3333 3333\n")
    registry = Registry.from_config(config)
    registry.upgrade()
    with caplog.at_level(logging.WARNING, logger="gateway.stages.fax"):
        assert watcher.scan() == 0
        aged(folder / "f2.tif", faxes["chinese"])  # first seen at the next scan: not yet taken
        assert watcher.scan() == 3  # f1.pdf, f1.tif, f2.pdf
        assert watcher.scan() == 1  # f2.tif, alone now with f2.info
        for _ in range(3):
            assert watcher.scan() == 0
    assert sorted(os.listdir(folder)) == ["f1.info", "f2.info"] and spool.quarantined() == []
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == [
        "ALERT fax drop folder: f1.info may be the information file of f1.pdf or f1.tif: it is given to neither "
        "and left there; name it f1.pdf.info or f1.tif.info to have it taken with its fax",
        "ALERT fax drop folder: f2.info may be the information file of f2.pdf or f2.tif: it is given to neither "
        "and left there; name it f2.pdf.info or f2.tif.info to have it taken with its fax"]
    outcomes = Pipeline(config, spool, registry).process(spool.claim(4))
    assert [o.result for o in outcomes] == ["registered"] * 4, outcomes
    letters = {letter.attachments[0].original_filename: letter
               for letter in (registry.letter(str(o.number)) for o in outcomes) if letter is not None}
    registry.close()
    assert letters["f1.tif"].fax_number == "+86 10 1111 1111"
    assert "fax: information file f1.info not read" not in " ".join(letters["f1.tif"].defects)
    for name, info in (("f1.pdf", "f1.info"), ("f2.pdf", "f2.info"), ("f2.tif", "f2.info")):
        letter = letters[name]
        assert letter.fax_number is None and "partial-reception" not in letter.flags, name
        assert f"fax: information file {info} not read: its name fits another fax as well (left in the drop " \
               "folder)" in letter.defects, name


def test_an_information_file_is_shared_only_by_faxes_as_their_content_says_not_their_names(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    """f1.info beside f1.tif and f1.doc, which is no fax, is f1.tif's; f2.info beside f2.tif and a
    TIFF named f2.fax is neither's. f3.info beside f3.doc alone stays with it in quarantine."""
    config, spool, watcher = watched
    folder = config.fax_drop_dir
    aged(folder / "f1.tif", faxes["two"])
    aged(folder / "f1.doc", b"\xd0\xcf\x11\xe0 a word processor's file\n")
    aged(folder / "f1.info", "Sender: +86 10 1111 1111\n")
    aged(folder / "f2.tif", faxes["chinese"])
    aged(folder / "f2.fax", faxes["two"] + b"\n")
    aged(folder / "f2.info", "Sender: +86 10 2222 2222\n")
    aged(folder / "f3.doc", b"not a fax\n")
    aged(folder / "f3.info", "Sender: +86 10 3333 3333\n")
    assert watcher.scan() == 0
    assert watcher.scan() == 3  # f1.tif, f2.fax, f2.tif
    assert sorted(os.listdir(folder)) == ["f2.info"]
    claimed = [item for item in spool.claim(3) if item.raw]  # its meta is read with its bytes
    taken = {item.meta["fax"]["file_name"]: item.meta["fax"] for item in claimed}
    assert taken["f1.tif"]["number"] == "+86 10 1111 1111" and taken["f1.tif"]["problems"] == []
    for name in ("f2.fax", "f2.tif"):
        assert taken[name]["number"] is None, name
        assert "information file f2.info not read: its name fits another fax as well (left in the drop folder)" \
            in taken[name]["problems"], name
    aside = {item.meta["fax_drop"]["file_name"]: item.meta["fax_drop"] for item in spool.quarantined()}
    assert aside["f1.doc"]["sidecar_name"] is None
    assert aside["f3.doc"]["sidecar_name"] == "f3.info"


def immutable(on: bool, *paths: Path) -> bool:
    """chattr +i / -i: a file that cannot be removed, even by root, who ignores the folder's permissions."""
    return subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True).returncode == 0


def test_a_file_taken_that_cannot_be_removed_is_named_once_and_not_read_again_even_after_a_restart(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fax (with its information file) and an unreadable file, spooled or set aside but left in
    the folder (a share the daemon may not write to): one ALERT each, then skipped unread while
    they stay unchanged, also by the next watcher; a fax beside them is taken as ever."""
    config, spool, watcher = watched
    folder = config.fax_drop_dir
    kept = [aged(folder / "kept.tif", faxes["two"]), aged(folder / "kept.tif.info", "Sender: +86 10 1234 5678\n"),
            aged(folder / "broken.tif", corrupt(faxes["two"]))]
    if not immutable(True, *kept):
        pytest.skip("chattr +i does not work on this filesystem")
    read: list[str] = []
    real_read_fax = fax_drop.read_fax

    def read_fax(data: bytes, name: str) -> object:
        read.append(name)
        return real_read_fax(data, name)

    monkeypatch.setattr(fax_drop, "read_fax", read_fax)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.stages.fax"):
            assert watcher.scan() == 0 and watcher.scan() == 1
            aged(folder / "other.tif", faxes["chinese"])
            assert [watcher.scan() for _ in range(4)] == [0, 1, 0, 0]
            restarted = FaxDropWatcher(config, spool)
            assert [restarted.scan() for _ in range(3)] == [0, 0, 0]
        assert read == ["broken.tif", "kept.tif", "other.tif"]
        assert len(spool.claim(10)) == 2 and len(spool.quarantined()) == 1
        alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
        assert [a.split(" is kept in the spool ")[0] for a in alerts] == [
            f"ALERT fax drop folder: {name}" for name in ("broken.tif", "kept.tif", "kept.tif.info")]
        assert alerts[1].endswith("but cannot be removed: Operation not permitted; it is left there and not taken "
                                  "again while unchanged: remove it by hand")
        assert sorted(os.listdir(folder)) == ["broken.tif", "kept.tif", "kept.tif.info"]
    finally:
        immutable(False, *kept)
    for path in kept:  # removed by hand: forgotten
        path.unlink()
    restarted.scan()
    assert not (config.state_dir / fax_drop.LEFT_FILE).exists()


def test_a_fax_written_under_the_name_of_one_being_taken_is_not_removed_unread(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fax machine that reuses its file names writes the next fax (renamed into place over the
    name) while the one before is being decoded and spooled: only the file that was read leaves the
    folder; the new one stays and is taken at a later scan, with its information file."""
    config, spool, watcher = watched
    folder = config.fax_drop_dir
    aged(folder / "fax.tif", faxes["two"])
    aged(folder / "fax.tif.info", "Sender: +86 10 1111 1111\n")
    real_read_fax = fax_drop.read_fax
    replaced: list[str] = []

    def read_fax(data: bytes, name: str) -> object:
        if not replaced:  # the next fax arrives meanwhile, under the same names
            replaced.append(name)
            for final, content in (("fax.tif", faxes["chinese"]), ("fax.tif.info", "Sender: +86 10 2222 2222\n")):
                aged(folder / (final + ".part"), content).rename(folder / final)
        return real_read_fax(data, name)

    monkeypatch.setattr(fax_drop, "read_fax", read_fax)
    assert watcher.scan() == 0 and watcher.scan() == 1
    assert sorted(os.listdir(folder)) == ["fax.tif", "fax.tif.info"]
    assert (folder / "fax.tif").read_bytes() == faxes["chinese"]
    assert [watcher.scan() for _ in range(3)] == [0, 1, 0]
    assert os.listdir(folder) == []
    items = spool.claim(2)
    assert sorted((item.raw, item.meta["fax"]["number"]) for item in items) == sorted(
        [(faxes["two"], "+86 10 1111 1111"), (faxes["chinese"], "+86 10 2222 2222")])


SCAN_WITHOUT_ROOTS_READ = """
import logging, sys
from gateway.adapters.fax_drop import FaxDropWatcher
from gateway.spool import Spool
from gateway.stages import rulebook
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
config = rulebook.load(sys.argv[1])
watcher = FaxDropWatcher(config, Spool(config.spool_dir, config.message_dir))
print([watcher.scan() for _ in range(6)])
"""


def test_a_fax_the_daemon_may_not_read_is_named_once_and_taken_once_readable(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    """A file the fax server wrote with permissions that shut the daemon out stays in the folder,
    named once in an ALERT (not at every poll), and is taken once its permissions are put right.
    Run as root without the capabilities that read any file, as the daemon's own user would be."""
    config, spool, watcher = watched
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to take away the reading of any file")
    locked = aged(config.fax_drop_dir / "locked.tif", faxes["two"])
    aged(config.fax_drop_dir / "open.tif", faxes["chinese"])
    locked.chmod(0)
    scan = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
                           SCAN_WITHOUT_ROOTS_READ, str(config.path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert scan.returncode == 0, scan.stderr[-3000:]
    assert scan.stdout.split() == ["[0,", "1,", "0,", "0,", "0,", "0]"], scan.stdout
    said = [line for line in scan.stderr.splitlines() if "locked.tif" in line]
    assert said == ["ERROR ALERT fax drop folder: locked.tif cannot be read (Permission denied): it is left "
                    "there"], said
    assert sorted(os.listdir(config.fax_drop_dir)) == ["locked.tif"]
    locked.chmod(0o644)
    assert watcher.scan() == 0 and watcher.scan() == 1
    assert os.listdir(config.fax_drop_dir) == []
    assert sorted(item.raw for item in spool.claim(2)) == sorted([faxes["two"], faxes["chinese"]])


def test_another_fax_of_the_same_name_size_and_time_is_a_letter_of_its_own(
        watched: tuple[Config, Spool, FaxDropWatcher], faxes: dict[str, bytes]) -> None:
    config, spool, watcher = watched
    first, second = faxes["two"], bytearray(faxes["two"])
    second[-1] ^= 0xFF  # the same length, other bytes
    registry = Registry.from_config(config)
    registry.upgrade()
    numbers = []
    for data in (first, bytes(second)):
        fax = aged(config.fax_drop_dir / "fax0001.tif", data)
        os.utime(fax, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        assert watcher.scan() == 0 and watcher.scan() == 1
        [outcome] = Pipeline(config, spool, registry).process(spool.claim(1))
        assert outcome.result == "registered", outcome
        numbers.append(outcome.number)
    registry.close()
    assert len(set(numbers)) == 2


def test_empty_files_folders_and_links_stay_in_the_folder_named_once(
        watched: tuple[Config, Spool, FaxDropWatcher], caplog: pytest.LogCaptureFixture) -> None:
    config, spool, watcher = watched
    folder = config.fax_drop_dir
    aged(folder / "empty.tif", b"")
    (folder / "sub").mkdir()
    (folder / "link.tif").symlink_to("/etc/passwd")
    with caplog.at_level(logging.WARNING, logger="gateway.stages.fax"):
        for _ in range(4):
            assert watcher.scan() == 0
    said = [r.getMessage() for r in caplog.records]
    assert sum("empty.tif is empty" in m for m in said) == 1
    assert sum("sub is not a plain file" in m for m in said) == 1
    assert sum("link.tif is not a plain file" in m for m in said) == 1
    assert sorted(os.listdir(folder)) == ["empty.tif", "link.tif", "sub"] and spool.quarantined() == []


def test_a_fax_over_max_file_bytes_stays_in_the_folder_with_an_alert(
        tmp_path: Path, faxes: dict[str, bytes], caplog: pytest.LogCaptureFixture) -> None:
    """A file larger than [fax] max_file_bytes is not read (a fax is decoded whole in memory): it
    stays in the folder, named once in an ALERT; one within the limit beside it is taken."""
    limit = len(faxes["two"])
    config = rulebook.load(str(Gateway(tmp_path, extra=WATCHED + f"max_file_bytes = {limit}\n").config))
    spool = Spool(config.spool_dir, config.message_dir)
    config.fax_drop_dir.mkdir(parents=True, exist_ok=True)
    watcher = FaxDropWatcher(config, spool)
    aged(config.fax_drop_dir / "huge.tif", faxes["two"] + b"\0" * 10)
    aged(config.fax_drop_dir / "fits.tif", faxes["two"])
    with caplog.at_level(logging.WARNING, logger="gateway.stages.fax"):
        taken = [watcher.scan() for _ in range(4)]
    assert sum(taken) == 1 and os.listdir(config.fax_drop_dir) == ["huge.tif"]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == [f"ALERT fax drop folder: huge.tif is {limit + 10} bytes, over [fax] max_file_bytes ({limit}): "
                    "it is left there"]
    assert spool.quarantined() == []
