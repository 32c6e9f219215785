"""From a file to a numbered register entry, through the same pipeline the daemon runs."""
from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import Daemon, Gateway, Notify, make_message, wait_for


def test_ingest_registers_and_show_prints_every_field(gateway: Gateway, tmp_path: Path) -> None:
    """One message in, one numbered letter out, with sender, recipients, summary, department and events."""
    msg = tmp_path / "a.eml"
    msg.write_bytes(make_message(1, subject="Contract renewal", to="Sales <sales@example.org>",
                                 body="Dear team. We propose to renew the contract for 2027! Regards.\n"))
    proc = gateway.run("ingest", str(msg))
    assert proc.stdout.strip() == f"{msg}: registered as 2026-000001"
    detail = gateway.show_json("2026-000001")
    assert detail["subject"] == "Contract renewal"
    assert (detail["sender_name"], detail["sender_address"]) == ("Alice Partner", "alice@partner.example")
    assert detail["recipients"]["to"] == [{"name": "Sales", "address": "sales@example.org"}]
    assert detail["department"] == "business"
    assert detail["status"] == "routed" and detail["channel"] == "email" and detail["intake"] == "file"
    assert detail["summary"] == "Dear team. We propose to renew the contract for 2027! Regards."
    assert detail["sent_at"] == "2026-11-23T02:00:00+00:00"
    assert [e["action"] for e in detail["events"]] == ["received", "registered", "classified", "routed",
                                                       "receipt-queued"]
    raw = msg.read_bytes()
    assert detail["raw_size"] == len(raw)
    stored = gateway.state / detail["raw_path"]
    assert stored.read_bytes().endswith(raw)
    assert gateway.spool_files("new") == gateway.spool_files("work") == []
    table = gateway.run("letters", "show", "2026-000001").stdout
    assert "Contract renewal" in table and "alice@partner.example" in table and "registered" in table


def test_a_mails_sender_reference_is_found_in_its_subject_or_the_top_of_its_text(gateway: Gateway,
                                                                                   tmp_path: Path) -> None:
    """来文字号, written the standard's way whatever brackets and spaces the mail used; a subject's
    words before it (关于转发) are not the issuer's; one far down the text cites another document."""
    cases = [("关于转发国办发〔2026〕12号文件的通知", "各单位：\n", "国办发〔2026〕12号"),
             ("关于召开会议的通知", "市应急管理局\n\n京应急函[2026] 3 号\n\n各单位：\n", "京应急函〔2026〕3号"),
             ("Re: 会议纪要", "请查收。\n" + "会议内容。\n" * 400 + "依据粤府〔2025〕1号。\n", ""),
             ("Order 4711", "Please confirm.\n", "")]
    for n, (subject, body, _) in enumerate(cases, 1):
        (tmp_path / f"{n}.eml").write_bytes(make_message(n, subject=subject, body=body))
    gateway.run("ingest", *(str(tmp_path / f"{n}.eml") for n in range(1, len(cases) + 1)))
    references = [gateway.show_json(f"2026-{n:06d}")["sender_reference"] for n in range(1, len(cases) + 1)]
    assert references == [expected for _, _, expected in cases]
    assert "国办发〔2026〕12号" in gateway.run("letters", "show", "2026-000001").stdout


def test_same_file_twice_is_one_letter(gateway: Gateway, tmp_path: Path) -> None:
    """Ingesting identical bytes again is recorded on the existing letter, not registered anew."""
    msg = tmp_path / "a.eml"
    msg.write_bytes(make_message(1))
    gateway.run("ingest", str(msg))
    assert gateway.run("ingest", str(msg)).stdout.strip() == f"{msg}: already registered as 2026-000001"
    assert len(gateway.list_json()) == 1
    actions = [e["action"] for e in gateway.show_json("2026-000001")["events"]]
    assert [a for a in actions if a != "classified" and not a.startswith(("routed", "receipt"))] == [
        "received", "registered", "duplicate-arrival"]


def test_shared_and_missing_message_ids_are_separate_letters(gateway: Gateway, tmp_path: Path) -> None:
    """Two messages with one Message-ID, and two without any, are four letters."""
    files = []
    for i, mid in enumerate(["<same@x>", "<same@x>", None, None]):
        f = tmp_path / f"{i}.eml"
        f.write_bytes(make_message(i, message_id=mid))
        files.append(str(f))
    gateway.run("ingest", *files)
    assert [letter["number"] for letter in gateway.list_json()] == [f"2026-00000{i}" for i in range(1, 5)]


def test_list_filters_and_json(gateway: Gateway, tmp_path: Path) -> None:
    """letters list filters by department and date, as a table or JSON."""
    a, b = tmp_path / "a.eml", tmp_path / "b.eml"
    a.write_bytes(make_message(1, to="sales@example.org"))
    b.write_bytes(make_message(2, to="someone@else.example"))
    gateway.run("ingest", str(a), str(b))
    assert [letter["number"] for letter in gateway.list_json("--department", "business")] == ["2026-000001"]
    assert len(gateway.list_json("--status", "routed", "--channel", "email")) == 1
    assert len(gateway.list_json("--status", "needs-triage", "--channel", "email")) == 1
    assert gateway.list_json("--since", "2999-01-01") == []
    today = gateway.list_json()[0]["received_at"][:10]
    assert len(gateway.list_json("--since", "2000-01-01", "--until", "2999-01-01")) == 2
    assert today
    table = gateway.run("letters", "list").stdout
    assert "2 letter(s)" in table and "2026-000002" in table


def test_unknown_letter_is_an_error(gateway: Gateway) -> None:
    """Asking for a number that does not exist says so and exits non-zero."""
    proc = gateway.run("letters", "show", "2026-999999", check=False)
    assert proc.returncode == 1 and "no letter 2026-999999" in proc.stderr


def test_unreadable_file_is_reported(gateway: Gateway, tmp_path: Path) -> None:
    """A missing file is named; the others are still ingested."""
    ok = tmp_path / "ok.eml"
    ok.write_bytes(make_message(1))
    proc = gateway.run("ingest", str(tmp_path / "missing.eml"), str(ok), check=False)
    assert proc.returncode == 1
    assert f"{tmp_path / 'missing.eml'}: cannot read: No such file or directory" in proc.stderr
    assert f"{ok}: registered as 2026-000001" in proc.stdout


def test_extract_never_writes_outside_the_directory(gateway: Gateway, tmp_path: Path) -> None:
    """Attachments named to escape (../, absolute, NUL, backslashes) land inside the target directory."""
    msg = EmailMessage()
    msg["From"] = "x@partner.example"
    msg["To"] = "liaison@example.org"
    msg["Subject"] = "hostile names"
    msg.set_content("see attached")
    names = ["../../escape.txt", "/etc/cron.d/evil", "a\x00b.txt", "..\\..\\win.ini", "..", "."]
    for i, name in enumerate(names):
        msg.add_attachment(f"payload {i}".encode(), maintype="application", subtype="octet-stream",
                           filename=name)
    eml = tmp_path / "hostile.eml"
    eml.write_bytes(msg.as_bytes())
    gateway.run("ingest", str(eml))
    detail = gateway.show_json("2026-000001")
    assert len(detail["attachments"]) == len(names)
    for a in detail["attachments"]:
        assert "/" not in a["filename"] and "\\" not in a["filename"] and "\x00" not in a["filename"]
        assert a["filename"] not in ("", ".", "..")
    out = tmp_path / "out"
    written = gateway.run("letters", "extract", "2026-000001", str(out)).stdout.split("\n")[:-1]
    assert len(written) == len(names)
    for path in written:
        assert Path(path).parent == out
    assert sorted(p.read_bytes() for p in out.iterdir()) == sorted(f"payload {i}".encode() for i in range(6))
    assert not (tmp_path / "escape.txt").exists() and not Path("/etc/cron.d/evil").exists()


# -- crashes ---------------------------------------------------------------
def start_and_wait_ready(gateway: Gateway, notify: Notify) -> Daemon:
    proc = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    return proc


def stop(daemon: Daemon) -> str:
    out = daemon.stop()
    assert daemon.returncode == 0, out
    return out


@pytest.mark.parametrize("point", ["after-spool", "before-commit", "after-commit"])
def test_sigkill_at_each_durable_step_gives_exactly_one_letter(gateway: Gateway, notify: Notify,
                                                                tmp_path: Path, point: str) -> None:
    """Killed after the spool write, before the registry commit or before the spool release: one letter after
    restart."""
    msg = tmp_path / "a.eml"
    msg.write_bytes(make_message(1))
    proc = gateway.run("ingest", str(msg), check=False, env=gateway.env(GATEWAY_CRASH_AT=point))
    assert proc.returncode == -9
    assert len(gateway.spool_files("work")) == 1  # the claim died with the process
    expected = 1 if point == "after-commit" else 0
    assert len(gateway.list_json()) == expected
    daemon = start_and_wait_ready(gateway, notify)  # READY comes after recovery; the workers then register it
    try:
        wait_for(lambda: gateway.spool_files("work") == gateway.spool_files("new") == [] and gateway.list_json(),
                 20, "the recovered item's registration and release")
        letters = gateway.list_json()
        assert len(letters) == 1 and letters[0]["number"] == "2026-000001"
        events = [e["action"] for e in gateway.show_json("2026-000001")["events"]]
        assert events[:2] == ["received", "registered"] and events.count("routed") == 1
        assert "duplicate-arrival" not in events
    finally:
        stop(daemon)
    # And the same file ingested once more is known, not new.
    assert "already registered as 2026-000001" in gateway.run("ingest", str(msg)).stdout


def test_the_daemon_killed_while_processing_recovers_on_restart(gateway: Gateway, notify: Notify,
                                                                 tmp_path: Path) -> None:
    """SIGKILL of the daemon before its commit: the item is processed exactly once by the next daemon."""
    msg = tmp_path / "a.eml"
    msg.write_bytes(make_message(1))
    # Spool it without processing: the ingest process dies right after the spool write.
    gateway.run("ingest", str(msg), check=False, env=gateway.env(GATEWAY_CRASH_AT="after-spool"))
    crashing = gateway.start(GATEWAY_CRASH_AT="before-commit")
    assert crashing.wait() == -9
    assert gateway.list_json() == []
    daemon = start_and_wait_ready(gateway, notify)
    try:
        wait_for(lambda: gateway.spool_files("work") == gateway.spool_files("new") == [] and gateway.list_json(),
                 20, "the recovered item's registration and release")
        assert [letter["number"] for letter in gateway.list_json()] == ["2026-000001"]
    finally:
        stop(daemon)


def test_hostile_headers_register_on_postgresql(pg_gateway: Gateway, tmp_path: Path) -> None:
    """NUL bytes in names and over-long addresses and types still give a letter on PostgreSQL."""
    long_sender = "x" * 400 + "@partner.example"
    raw = (f"From: {long_sender}\r\nTo: liaison@example.org\r\nSubject: nul\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           f"--b\r\nContent-Type: application/{'y' * 300}\r\n"
           "Content-Disposition: attachment; filename*=utf-8''a%00b.txt\r\n\r\npayload\r\n--b--\r\n").encode()
    eml = tmp_path / "nul.eml"
    eml.write_bytes(raw)
    assert "registered as 2026-000001" in pg_gateway.run("ingest", str(eml)).stdout
    detail = pg_gateway.show_json("2026-000001")
    assert detail["sender_address"] == long_sender
    [attachment] = detail["attachments"]
    assert "\x00" not in attachment["original_filename"] and attachment["declared_type"].startswith("application/yyy")
    assert detail["department"] == "general-office"


def test_letters_to_nobody_in_particular_go_to_triage(gateway: Gateway, tmp_path: Path) -> None:
    """A letter to no department address is received by the triage department and flagged."""
    eml = tmp_path / "a.eml"
    eml.write_bytes(make_message(1, to="someone@elsewhere.example"))
    gateway.run("ingest", str(eml))
    detail = gateway.show_json("2026-000001")
    assert detail["department"] == "general-office" and detail["flags"] == ["needs-triage"]


def test_logs_for_journald_carry_priority_and_letter_number(gateway: Gateway, tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM set) lines carry a syslog priority, no timestamp, and the letter number first."""
    eml = tmp_path / "a.eml"
    eml.write_bytes(make_message(1, subject="Journal"))
    proc = gateway.run("ingest", str(eml), env=gateway.env(JOURNAL_STREAM="8:12345"))
    assert "<6>gateway.daemon.pipeline: 2026-000001 registered: 'Journal' from Alice Partner <alice@partner.example>" \
        in proc.stderr.splitlines()[0]


def test_a_failed_items_reason_is_one_line_naming_the_cause_not_the_statement() -> None:
    """What a quarantined item says: the database's own error, not SQLAlchemy's statement and its
    parameters (a letter's whole text among them)."""
    from sqlalchemy import create_engine, text

    from gateway.daemon.pipeline import failure

    engine = create_engine("sqlite://")
    with pytest.raises(Exception) as raised, engine.connect() as conn:
        conn.execute(text("INSERT INTO missing VALUES (:body)"), {"body": "x" * 5000})
    assert "[SQL:" in str(raised.value) and "[parameters:" in str(raised.value)
    assert failure("registration failed", raised.value) == \
        "registration failed: OperationalError: no such table: missing"
    assert failure("cannot read item", ValueError("line one\nline two " + "y" * 400)) == \
        "cannot read item: ValueError: line one"
    assert len(failure("x", ValueError("z" * 1000))) == len("x: ValueError: ") + 300


def test_comments_nested_beyond_the_parsers_stack_cost_only_their_field(gateway: Gateway, tmp_path: Path) -> None:
    """The address parser reads each nested comment one level deeper: a Cc of 5,000 nested "("
    exhausted the stack, and the letter lost all of its header read after it (recipients, date,
    Message-ID). Such a field is named as an address not understood; the rest of the header is read."""
    nested = "(" * 5000 + "x@attacker.example" + ")" * 5000
    msg = tmp_path / "nested.eml"
    msg.write_bytes(make_message(1, subject="Contract renewal", to="Sales <sales@example.org>")
                    .replace(b"\r\nSubject:", f"\r\nCc: {nested}\r\nSubject:".encode(), 1))
    gateway.run("ingest", str(msg))
    detail = gateway.show_json("2026-000001")
    assert (detail["sender_address"], detail["subject"], detail["sent_at"]) == (
        "alice@partner.example", "Contract renewal", "2026-11-23T02:00:00+00:00")
    assert detail["recipients"]["to"] == [{"name": "Sales", "address": "sales@example.org"}]  # type: ignore[index]
    assert detail["department"] == "business"
    assert detail["defects"] == [f"header Cc: unparseable address in {nested[:200]!r}"]
