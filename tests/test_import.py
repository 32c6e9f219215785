"""`gateway import`: a backlog from an mbox, a Maildir or a folder of .eml files, killed or interrupted
midway and run again, gives each message exactly once, and sends nothing unless told to."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Gateway, Notify, outbound_settings, wait_for
from smtp_sink import SmtpSink
from sqlalchemy import Engine, text

from gateway.registry.store import make_engine

pytestmark = pytest.mark.timeout(300)

MESSAGES = 10_000


def message(n: int, *, to: str = "liaison@example.org", extra_body: str = "") -> bytes:
    """A small message; every one is different (its number is in the subject and the Message-ID)."""
    return (f"From: Partner {n % 97} <p{n % 97}@partner.example>\nTo: {to}\nSubject: Old letter {n}\n"
            f"Date: Mon, 23 Nov 2020 10:{n % 60:02d}:00 +0800\nMessage-ID: <old-{n}@partner.example>\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
            f"Dear colleagues,\nthis is letter {n} of the old system.\n{extra_body}").encode()


def from_line(n: int) -> bytes:
    return f"From p{n % 97}@partner.example Mon Nov 23 10:{n % 60:02d}:00 2020\n".encode()


# Messages that an export really contains, each registered with its defects (or quarantined), never
# stopping the import: (subject, bytes after the From line).
MALFORMED = [
    ("charset", b"From: Bob <bob@old.example>\nTo: liaison@example.org\nSubject: Unknown charset\n"
                b"Content-Type: text/plain; charset=x-no-such-charset\n\nBody in an unknown charset.\n"),
    ("multipart", b"From: Carol <carol@old.example>\nTo: sales@example.org\nSubject: Broken multipart\n"
                  b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nno boundary here\n"),
    # An unescaped "From " line after a blank line inside a body (mboxo): part of the body, not a new message.
    ("from-line", b"From: Dan <dan@old.example>\nTo: liaison@example.org\nSubject: A From line inside\n\n"
                  b"First paragraph.\n\nFrom the desk of Dan: this line is in the body.\n"),
    # Raw 8-bit GB 18030 in the headers and body, with no MIME declaration at all.
    ("8bit", "From: 张三 <zhang@old.example>\nTo: liaison@example.org\nSubject: 合同续签\n\n"
             "请查收合同。\n".encode("gb18030")),
]


def write_mbox(path: Path) -> tuple[int, set[str]]:
    """10,000 letters, the malformed ones, a second copy of letter 5 (same bytes) and an empty message
    at the end. Returns the number of messages and the subjects of the distinct letters."""
    subjects = {f"Old letter {n}" for n in range(MESSAGES)}
    with open(path, "wb") as fh:
        for n in range(MESSAGES):
            fh.write(from_line(n) + message(n) + b"\n")
        for _, raw in MALFORMED:
            fh.write(b"From someone@old.example Tue Nov 24 09:00:00 2020\n" + raw + b"\n")
        fh.write(from_line(5) + message(5) + b"\n")  # exported twice
        fh.write(b"From nobody Tue Nov 24 09:30:00 2020\n\n")  # an empty message
    subjects |= {"Unknown charset", "Broken multipart", "A From line inside", "合同续签"}
    return MESSAGES + len(MALFORMED) + 2, subjects


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """The test's own connections to the registry, closed at the end."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def engine_of(engines: list[Engine], gateway: Gateway, url: str = "") -> Engine:
    engines.append(make_engine(url or f"sqlite:///{gateway.state / 'registry.sqlite3'}"))
    return engines[-1]


def letter_count(engine: Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM letters")).scalar_one())
    except Exception:
        return 0  # not created yet


def start_import(gateway: Gateway, *args: str) -> subprocess.Popen[str]:
    with open(gateway.config.parent / f"import-{time.monotonic_ns()}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(gateway.config), "import",
                                 *args], stdout=subprocess.PIPE, stderr=log, text=True, env=gateway.env(), cwd=ROOT)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(proc.stdout))
    except ValueError:
        raise AssertionError(f"no summary (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def spool_left(gateway: Gateway) -> list[str]:
    return gateway.spool_files("new") + gateway.spool_files("work")


def test_a_10000_message_mbox_killed_midway_and_run_again_gives_each_message_once(
        gateway: Gateway, tmp_path: Path, engines: list[Engine]) -> None:
    mbox = tmp_path / "export.mbox"
    total, subjects = write_mbox(mbox)
    engine = engine_of(engines, gateway)

    first = start_import(gateway, str(mbox), "--json")
    wait_for(lambda: letter_count(engine) >= 2000 or first.poll() is not None, 120, "2,000 letters")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the import ended before it was killed: the test proves nothing"
    before = letter_count(engine)
    assert 2000 <= before < len(subjects)

    started = time.monotonic()
    second = gateway.run("import", str(mbox), "--json", check=False, timeout=240)
    seconds = time.monotonic() - started
    summary = summary_of(second)
    assert second.returncode == 1, second.stderr  # one message quarantined
    new_letters = summary["registered"]
    print(f"\nimport of {new_letters} of {total} messages after the kill: {seconds:.1f} s, "
          f"{new_letters / seconds:.0f} letters/s (the process included)")

    # Each message exactly once: the letters are the distinct messages, each with one import key.
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT subject, backlog, deadline, defects, body_text, flags FROM letters")).all()
        keyed = conn.execute(text("SELECT count(DISTINCT letter_id), count(*) FROM intake_keys "
                                  "WHERE key LIKE 'import:%'")).one()
        outbox = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
    assert sorted(r.subject for r in rows) == sorted(subjects)
    assert keyed == (len(subjects), len(subjects))
    assert before + new_letters == len(subjects)
    assert summary["total"] == total and summary["seen"] == total
    # What the killed run registered (and what it left in the spool, recovered first) is skipped now;
    # the second copy of letter 5 is recognised by its bytes.
    assert summary["already_registered"] + (summary["registered"] - summary["recovered"]) == total - 1
    assert (summary["quarantined"], summary["refused"], summary["waiting"]) == (1, 0, 0)
    assert list(summary["quarantine_reasons"].values()) == ["an empty message"]
    assert spool_left(gateway) == []

    # Backlog letters: no receipt, no notification, no deadline (so no reminder): nothing in the outbox.
    assert outbox == 0
    assert all(r.backlog and r.deadline is None for r in rows)
    assert all({"backlog", "imported", "no-notifications"} <= set(json.loads(r.flags)) for r in rows)
    by_subject = {r.subject: r for r in rows}
    assert "From the desk of Dan: this line is in the body." in by_subject["A From line inside"].body_text
    assert any("x-no-such-charset" in d for d in json.loads(by_subject["Unknown charset"].defects))
    assert any("boundary" in d for d in json.loads(by_subject["Broken multipart"].defects))
    assert "请查收合同" in by_subject["合同续签"].body_text

    # A third run finds everything done, quickly, and quarantines nothing twice.
    started = time.monotonic()
    third = summary_of(gateway.run("import", str(mbox), "--json", check=False))
    assert time.monotonic() - started < 15
    assert (third["registered"], third["already_registered"], third["quarantined"], third["quarantined_before"]) \
        == (0, total - 1, 0, 1)
    assert letter_count(engine) == len(subjects)


def write_maildir(root: Path, count: int) -> set[str]:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(count):
        unique = f"{1606096800 + n}.M{n}P4242.oldhost"
        # Read messages in cur/ with their flags, unread ones in new/, as mail servers keep them.
        name = f"cur/{unique}:2,S" if n % 3 else f"new/{unique}"
        (root / name).write_bytes(message(n, to="sales@example.org" if n % 2 else "liaison@example.org"))
    (root / "tmp" / "1606200000.M1P1.oldhost").write_bytes(b"half a delivery")  # never read
    return {f"Old letter {n}" for n in range(count)}


def test_a_maildir_interrupted_and_run_again_then_a_notified_import(
        tmp_path: Path, pg_url: str, sink: SmtpSink, notify: Notify, engines: list[Engine]) -> None:
    gateway = Gateway(tmp_path, registry_url=pg_url, extra=outbound_settings(sink.address))
    engine = engine_of(engines, gateway, pg_url)
    maildir = tmp_path / "Maildir"
    quiet = write_maildir(maildir, 1500)

    # Ctrl-C: the batch in hand is finished, nothing is left in the spool.
    first = start_import(gateway, str(maildir), "--json", "--batch", "25")
    wait_for(lambda: letter_count(engine) >= 50 or first.poll() is not None, 60, "the first letters")
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 130, out
    interrupted = json.loads(out)
    assert interrupted["interrupted"] and 50 <= interrupted["registered"] < 1500
    assert interrupted["registered"] == letter_count(engine)
    assert spool_left(gateway) == []

    second = gateway.run("import", str(maildir), "--json")
    summary = summary_of(second)
    assert (summary["total"], summary["registered"], summary["already_registered"]) == \
        (1500, 1500 - interrupted["registered"], interrupted["registered"])
    assert (summary["quarantined"], summary["refused"]) == (0, 0)

    # Three old letters the departments are to handle now: notified, with deadlines from today.
    folder = tmp_path / "eml"
    (folder / "2020").mkdir(parents=True)
    for n in (9001, 9002, 9003):
        (folder / "2020" / f"{n}.eml").write_bytes(message(n, to="sales@example.org"))
    notified = summary_of(gateway.run("import", str(folder), "--notify", "--json"))
    assert notified["registered"] == 3

    with engine.connect() as conn:
        rows = {r.subject: r for r in conn.execute(text(
            "SELECT number, subject, backlog, deadline, received_at, department FROM letters"))}
    assert set(rows) == quiet | {"Old letter 9001", "Old letter 9002", "Old letter 9003"}
    assert all(r.backlog for r in rows.values())
    assert all(rows[s].deadline is None for s in quiet)
    loud = [rows[f"Old letter {n}"] for n in (9001, 9002, 9003)]
    # Counted from the import, not from 2020: not overdue the moment it is registered.
    assert all(r.deadline is not None and r.deadline.year >= time.gmtime().tm_year for r in loud)
    assert rows["Old letter 7"].received_at.year == 2020  # the Maildir's delivery time, kept

    # The daemon sends what is queued: the three notifications to the business desk, nothing else.
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    try:
        notify.wait_for("READY=1")
        wait_for(lambda: len(sink.received) >= 3, 30, "the three notifications")
        # Nothing left to send: whatever was queued has reached the sink.
        wait_for(lambda: not json.loads(gateway.run("outbox", "list", "--status", "pending", "--json").stdout),
                 30, "the outbox sent")
    finally:
        daemon.stop()
    numbers = {r.number for r in loud}
    assert len(sink.received) == 3  # and no reminder: their deadlines and acknowledgement count from today
    for mail in sink.received:
        assert mail.rcpt_tos == ["sales.desk@example.org"]
        assert mail.message["Auto-Submitted"] != "auto-replied"  # no receipt
        assert any(number in mail.message["Subject"] for number in numbers)


def test_a_path_that_is_no_export_is_refused_with_a_clear_error(gateway: Gateway, tmp_path: Path) -> None:
    single = tmp_path / "one.eml"
    single.write_bytes(message(1))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    outlook = tmp_path / "outlook-export"
    (outlook / "2019").mkdir(parents=True)
    for n in range(12):
        (outlook / "2019" / f"letter-{n:02}.msg").write_bytes(b"\xd0\xcf\x11\xe0")
    for path, expected in ((single, "not an mbox"), (empty, "neither a Maildir"),
                           (tmp_path / "missing", "no such file or folder"),
                           # a folder of Outlook files: named, with what to do, not just "nothing here"
                           (outlook, "its 12 file(s) are not .eml files, so not read: save each message as "
                                     ".eml to import it: 2019/letter-00.msg, 2019/letter-01.msg")):
        proc = gateway.run("import", str(path), check=False)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert "letter-09.msg and 2 more" in gateway.run("import", str(outlook), check=False).stderr
    assert not os.path.exists(gateway.state / "spool" / "new") or spool_left(gateway) == []


def test_file_names_that_are_not_utf8_are_imported_and_known_again(gateway: Gateway, tmp_path: Path,
                                                                    engines: list[Engine]) -> None:
    """An old system's export written under GBK: the names come from the filesystem as bytes that are
    not UTF-8. Each message is keyed by its name made readable as the spool writes it, so a second run
    finds what the first registered, and what it quarantined, by that key."""
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "plain.eml").write_bytes(message(1))
    gbk = os.fsencode(folder)
    with open(os.path.join(gbk, "合同.eml".encode("gbk")), "wb") as fh:
        fh.write(message(2))
    with open(os.path.join(gbk, "空白.eml".encode("gbk")), "wb"):
        pass  # an empty message: quarantined
    first = gateway.run("import", str(folder), "--json", check=False)
    summary = summary_of(first)
    assert (summary["registered"], summary["quarantined"], summary["refused"]) == (2, 1, 0), summary
    engine = engine_of(engines, gateway)
    with engine.connect() as conn:
        keys = set(conn.execute(text("SELECT key FROM intake_keys WHERE key LIKE 'import:%'")).scalars())
    readable = "合同.eml".encode("gbk").decode("utf-8", "backslashreplace")  # "\\xba\\xcf" and a stray "ͬ"
    assert keys == {f"import:{folder}/plain.eml", f"import:{folder}/{readable}"}
    again = summary_of(gateway.run("import", str(folder), "--json", check=False))
    assert (again["registered"], again["already_registered"], again["quarantined_before"]) == (0, 2, 1), again
    assert letter_count(engine) == 2


def test_a_backlog_letter_without_a_deadline_counts_neither_on_time_nor_late(tmp_path: Path) -> None:
    """Imported without --notify, a letter has no deadline (the old system handled it): its close
    is left out of the timeliness rate, in the report and on the dashboard alike; one imported with
    --notify has a deadline from the import and counts."""
    from datetime import datetime, timezone
    from email.utils import format_datetime

    from gateway.config import load
    from gateway.registry import Registry
    from gateway.services.access import Access
    from gateway.services.dashboard import compute as dashboard
    from gateway.services.people import Principal

    gateway = Gateway(tmp_path)
    quiet, loud = tmp_path / "quiet", tmp_path / "loud"
    for folder, numbers in ((quiet, (1, 2)), (loud, (3,))):
        folder.mkdir()
        for n in numbers:
            (folder / f"{n}.eml").write_bytes(message(n, to="sales@example.org"))
    now = datetime.now(timezone.utc)
    (quiet / "recent.eml").write_bytes(message(4, to="sales@example.org").replace(
        b"Mon, 23 Nov 2020 10:04:00 +0800", format_datetime(now).encode()))
    assert summary_of(gateway.run("import", str(quiet), "--json"))["registered"] == 3
    assert summary_of(gateway.run("import", str(loud), "--notify", "--json"))["registered"] == 1
    letters = {str(row["subject"]): row for row in gateway.list_json()}
    assert [letters[f"Old letter {n}"]["deadline"] is None for n in (1, 2, 3, 4)] == [True, True, False, True]
    for row in letters.values():
        gateway.run("letters", "close", str(row["number"]), "--result", "done")

    report = json.loads(gateway.run("report", "--month", "2020-11", "--format", "json").stdout)
    assert report["letters"] == 3 and report["time_to_close"]["count"] == 3
    assert report["timeliness"] == {"closed": 1, "closed_within_deadline": 1, "rate": 1.0}  # the notified one
    config = load(gateway.config)
    registry = Registry.from_config(config)
    try:
        board = dashboard(config, registry, Access(config, registry), Principal.operator("test"))
    finally:
        registry.close()
    assert (board.timeliness.closed.count, board.timeliness.on_time.count, board.timeliness.rate) == (0, 0, None)


def test_a_year_written_as_0001_is_not_read_as_2001(gateway: Gateway, tmp_path: Path) -> None:
    """Python's mail date parser reads a four-digit year before 1900 as two digits (0001 is 2001), so a
    broken Date header or mbox From line would file the letter twenty-five years back, in the
    wrong number series and archive month. Such a date is not believed: the file's time is used."""
    file_time = 1_700_000_000  # 2023-11-14 22:13:20 UTC
    folder = tmp_path / "eml"
    folder.mkdir()
    eml = folder / "old.eml"
    eml.write_bytes(message(1).replace(b"Mon, 23 Nov 2020 10:01:00 +0800", b"1 Jan 0001 00:00:00 +0000"))
    os.utime(eml, (file_time, file_time))
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(b"From p2@partner.example Mon Jan  1 00:00:00 0001\n"
                     + message(2).replace(b"Mon, 23 Nov 2020 10:02:00 +0800", b"Mon, 1 Jan 0001 00:00:00 +0000"))
    os.utime(mbox, (file_time, file_time))
    assert summary_of(gateway.run("import", str(folder), "--json"))["registered"] == 1
    assert summary_of(gateway.run("import", str(mbox), "--json"))["registered"] == 1
    letters = {str(row["subject"]): row for row in gateway.list_json()}
    assert [(letters[f"Old letter {n}"]["number"], letters[f"Old letter {n}"]["received_at"]) for n in (1, 2)] == [
        ("2023-000001", "2023-11-14T22:13:20+00:00"), ("2023-000002", "2023-11-14T22:13:20+00:00")]


def test_the_folders_of_a_maildir_are_named_and_imported_by_their_own_path(gateway: Gateway, tmp_path: Path) -> None:
    """A Dovecot or Courier Maildir (Maildir++) keeps each folder but the inbox as a Maildir of its own
    inside it (.Archive.2019, .Sent). Importing the inbox reads none of them, and says so, so that a
    folder of old letters is not left out unnoticed; each is imported by its own path."""
    maildir = tmp_path / "Maildir"
    write_maildir(maildir, 2)
    archive = maildir / ".Archive.2019"
    write_maildir(archive, 0)
    (archive / "cur" / "1560000000.M1P1.oldhost:2,S").write_bytes(message(7))
    write_maildir(maildir / ".Sent", 0)
    (maildir / ".cache").mkdir()  # not a folder of mail
    summary = summary_of(gateway.run("import", str(maildir), "--json"))
    assert (summary["registered"], summary["folders_not_read"]) == (2, [".Archive.2019", ".Sent"])
    again = gateway.run("import", str(maildir))
    assert "folders not read:    .Archive.2019, .Sent (each is imported by its own path)" in again.stdout
    assert summary_of(gateway.run("import", str(archive), "--json"))["registered"] == 1
    assert len(gateway.list_json()) == 3


def test_a_symbolic_link_in_an_export_is_refused_by_name_not_passed_over(gateway: Gateway, tmp_path: Path) -> None:
    """A link is not followed (it could point at any file the import's user may read), and the
    summary names it among the refused, instead of the message being left out without a word."""
    elsewhere = tmp_path / "elsewhere.eml"
    elsewhere.write_bytes(message(3))
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "1.eml").write_bytes(message(1))
    (folder / "2.eml").symlink_to(elsewhere)
    maildir = tmp_path / "Maildir"
    write_maildir(maildir, 1)
    (maildir / "cur" / "1606200000.M9P9.oldhost:2,S").symlink_to(elsewhere)
    reason = "a symbolic link, not followed: put the message itself there"
    eml = summary_of(gateway.run("import", str(folder), "--json", check=False))
    assert (eml["total"], eml["registered"], eml["refusal_reasons"], eml["exit_status"]) == (
        2, 1, {"2.eml": reason}, 1)
    mails = summary_of(gateway.run("import", str(maildir), "--json", check=False))
    link = maildir / "cur" / "1606200000.M9P9.oldhost:2,S"
    assert (mails["total"], mails["registered"], mails["refusal_reasons"]) == (
        2, 1, {"1606200000.M9P9.oldhost": f"{link}: {reason}"})
    assert {row["subject"] for row in gateway.list_json()} == {"Old letter 0", "Old letter 1"}


def test_messages_saved_with_a_byte_order_mark_or_blank_lines_first_keep_their_header(
        gateway: Gateway, tmp_path: Path) -> None:
    """An export script on Windows writes each .eml with a UTF-8 byte-order mark (PowerShell's
    utf8), another puts a blank line first: the parser would take the whole message for a body
    without a header, losing its sender, subject and date. What comes before the header is skipped,
    and named; the original keeps it."""
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "bom.eml").write_bytes(b"\xef\xbb\xbf" + message(1))
    (folder / "blank.eml").write_bytes(b"\r\n\r\n" + message(2))
    assert summary_of(gateway.run("import", str(folder), "--json"))["registered"] == 2
    letters = {str(row["subject"]): row for row in gateway.list_json()}
    assert sorted(letters) == ["Old letter 1", "Old letter 2"]
    for n, defect in ((1, "message: byte-order mark before the header, skipped"),
                      (2, "message: blank line(s) before the header, skipped")):
        shown = gateway.show_json(str(letters[f"Old letter {n}"]["number"]))
        assert (shown["sender_address"], shown["sent_at"], shown["received_at"], shown["defects"]) == (
            f"p{n}@partner.example", f"2020-11-23T02:0{n}:00+00:00", f"2020-11-23T02:0{n}:00+00:00", [defect]), shown
        assert str(shown["body_text"]).startswith("Dear colleagues,")


def test_an_mbox_with_classic_mac_line_ends_is_split_into_its_messages(gateway: Gateway, tmp_path: Path) -> None:
    """An mbox from the classic Mac OS (Eudora, Mac OS 9) ends its lines with a bare CR: it was read
    as one message. Each message is found, with or without dates on the From lines, an unescaped
    "From " line in a body stays in its letter, and each message is kept byte for byte."""
    def mac(text: bytes) -> bytes:
        return text.replace(b"\n", b"\r")

    dated = [mac(from_line(n) + message(n, extra_body="\nFrom the desk of the old system.\n") + b"\n")
             for n in (1, 2)]
    undated = [mac(f"From p{n}@partner.example\n".encode() + message(n) + b"\n") for n in (3, 4, 5)]
    (tmp_path / "dated.mbox").write_bytes(b"".join(dated))
    (tmp_path / "undated.mbox").write_bytes(b"".join(undated))
    for name, count in (("dated", 2), ("undated", 3)):
        summary = summary_of(gateway.run("import", str(tmp_path / f"{name}.mbox"), "--json"))
        assert (summary["total"], summary["registered"]) == (count, count), summary
    letters = {str(row["subject"]): row for row in gateway.list_json()}
    assert sorted(letters) == [f"Old letter {n}" for n in range(1, 6)]
    for n, raw in ((1, dated[0]), (2, dated[1]), (3, undated[0]), (4, undated[1]), (5, undated[2])):
        shown = gateway.show_json(str(letters[f"Old letter {n}"]["number"]))
        assert shown["sent_at"] == shown["received_at"] == f"2020-11-23T02:{n:02d}:00+00:00", shown
        assert str(shown["body_text"]).startswith(f"Dear colleagues,\nthis is letter {n} of the old system.")
        assert ("From the desk" in str(shown["body_text"])) == (n < 3)
        # The message as the file holds it: after its From line, without the blank line that ends it.
        kept = raw.split(b"\r", 1)[1][:-1]
        assert shown["raw_sha256"] == hashlib.sha256(kept).hexdigest(), shown


def test_a_compressed_mbox_is_refused_with_how_to_decompress_it(gateway: Gateway, tmp_path: Path) -> None:
    """An export handed over compressed (the monthly archive's own mail is mbox.zst) was refused as a
    file whose first line is not a "From " line, which says nothing of why. The refusal names the
    compression and how to undo it; nothing is spooled."""
    import gzip

    import zstandard

    mbox = from_line(1) + message(1) + b"\n"
    (tmp_path / "export.mbox.gz").write_bytes(gzip.compress(mbox))
    (tmp_path / "part-001.mbox.zst").write_bytes(zstandard.ZstdCompressor().compress(mbox))
    for name, kind, command in (("export.mbox.gz", "gzip", "gzip -dc"), ("part-001.mbox.zst", "zstd", "zstd -dc")):
        proc = gateway.run("import", str(tmp_path / name), check=False)
        assert proc.returncode == 2, proc.stderr
        assert (f"{tmp_path / name}: not an mbox but a file compressed with {kind}: decompress it first "
                f"({command} FILE > FILE.mbox) and import that") in proc.stderr, proc.stderr
    assert not os.path.exists(gateway.state / "spool" / "new") or spool_left(gateway) == []


def test_an_mbox_saved_with_a_byte_order_mark_or_blank_lines_first_is_read(gateway: Gateway, tmp_path: Path) -> None:
    """A Windows editor or export script puts a UTF-8 byte-order mark, or blank lines, before an mbox's
    first From line: the whole export was refused as no mbox. What precedes the first From line is
    passed over (it belongs to no message), and every message is read byte for byte."""
    messages = [from_line(n) + message(n) + b"\n" for n in (1, 2, 3, 4)]
    (tmp_path / "bom.mbox").write_bytes(b"\xef\xbb\xbf" + messages[0] + messages[1])
    (tmp_path / "blank.mbox").write_bytes(b"\r\n\n" + messages[2] + messages[3])
    for name in ("bom", "blank"):
        summary = summary_of(gateway.run("import", str(tmp_path / f"{name}.mbox"), "--json"))
        assert (summary["total"], summary["registered"]) == (2, 2), summary
    letters = {str(row["subject"]): row for row in gateway.list_json()}
    assert sorted(letters) == [f"Old letter {n}" for n in (1, 2, 3, 4)]
    for n, raw in zip((1, 2, 3, 4), messages, strict=True):
        shown = gateway.show_json(str(letters[f"Old letter {n}"]["number"]))
        kept = raw.split(b"\n", 1)[1][:-1]  # after its From line, without the blank line that ends it
        assert (shown["raw_sha256"], shown["sender_address"], shown["defects"]) == (
            hashlib.sha256(kept).hexdigest(), f"p{n}@partner.example", []), shown


def test_files_of_another_kind_in_a_folder_of_eml_files_are_named_in_the_summary(
        gateway: Gateway, tmp_path: Path) -> None:
    """An export's .msg or .txt may be a letter: the import reads only .eml files, and says which
    others it left (how many, the first ten by name, and why), rather than passing them over."""
    folder = tmp_path / "export"
    (folder / "2020").mkdir(parents=True)
    (folder / "1.eml").write_bytes(message(1))
    (folder / "2020" / "2.EML").write_bytes(message(2))
    (folder / "2020" / "complaint.msg").write_bytes(b"\xd0\xcf\x11\xe0 an Outlook message")
    (folder / "note.txt").write_bytes(message(3))
    for n in range(11):
        (folder / f"scan-{n:02d}.pdf").write_bytes(b"%PDF-1.4\n")
    (folder / ".DS_Store").write_bytes(b"\x00")  # a file manager's, not the export's
    summary = summary_of(gateway.run("import", str(folder), "--json"))
    assert summary["registered"] == 2
    assert summary["files_not_read"] == 13
    assert summary["files_not_read_first"] == ["2020/complaint.msg", "note.txt"] + [
        f"scan-{n:02d}.pdf" for n in range(8)]
    again = gateway.run("import", str(folder)).stdout
    assert ("files not read:      13 (not .eml files, so not read: save each message as .eml to import it): "
            "2020/complaint.msg, note.txt, scan-00.pdf") in again
    assert "scan-07.pdf and 3 more" in again
