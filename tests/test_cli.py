"""The services under the CLI: files tried against the rules as the daemon would classify them,
files taken in by hand, the register's local days, and the spool's quarantine."""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Gateway, Notify, make_message, write_messages
from fax_samples import ENGLISH, corrupt, tiff_fax
from gateway import config as config_mod
from gateway.config import Config
from gateway.daemon.pipeline import Pipeline
from gateway.registry import Registry
from gateway.services import intake, operations, queries
from gateway.spool import Spool
from smtp_sink import SmtpSink
from gateway.stages import rulebook
from test_pipeline import start_and_wait_ready, stop

pytestmark = pytest.mark.timeout(240)

FAX_SETTINGS = """
[fax]
filename_pattern = '^fax_(?P<number>[0-9+]+)_(?P<received>[0-9]{8}-[0-9]{6})'
filename_time_format = "%Y%m%d-%H%M%S"
ocr_workers = 1
"""

# Only the fax's text says it is about a delivery: classified by it only once it is read.
DELIVERY_RULES = """
rules:
  - name: deliveries
    when: {keywords: ["delivery date"]}
    set: {category: external.business, department: business}
"""


@pytest.fixture(scope="module")
def fax() -> bytes:
    return tiff_fax([ENGLISH], tags={"ImageDescription": "+86 10 8888 1234"})


def loaded(gateway: Gateway) -> Config:
    return config_mod.load(str(gateway.config))


def test_rules_test_reads_a_fax_file_and_classifies_it_by_its_text(tmp_path: Path, fax: bytes) -> None:
    gateway = Gateway(tmp_path, extra=FAX_SETTINGS, rules=DELIVERY_RULES)
    path = tmp_path / "fax_+8620123456_20261122-090000.tif"
    path.write_bytes(fax)
    table = gateway.run("rules", "test", "--ocr", str(path)).stdout
    assert "rule 'deliveries'" in table and "category=external.business" in table
    assert "-> routed to business; notify sales.desk@example.org; no receipt: a fax: no address to answer" in table
    [result] = json.loads(gateway.run("rules", "test", "--ocr", "--json", str(path)).stdout)
    assert result["trace"]["result"]["category"] == "external.business"
    assert result["trace"]["result"]["department"] == "business" and result["status"] == "routed"
    # Without its text the fax is a fax from a number, and nothing in the rules knows it.
    [unread] = json.loads(gateway.run("rules", "test", "--json", str(path)).stdout)
    assert unread["status"] == "needs-triage" and unread["trace"]["result"]["department"] == "general-office"
    # Nothing registered, spooled or stored; the file stays where it was.
    assert gateway.list_json() == [] and gateway.spool_files("new") == [] and gateway.spool_files("work") == []
    assert not list((gateway.state / "messages").rglob("*.msg")) and path.read_bytes() == fax


def test_rules_test_sets_an_unreadable_fax_aside_and_goes_on(tmp_path: Path, fax: bytes) -> None:
    gateway = Gateway(tmp_path, extra=FAX_SETTINGS, rules=DELIVERY_RULES)
    broken, mail = tmp_path / "broken.tif", tmp_path / "a.eml"
    broken.write_bytes(corrupt(fax, keep=0.01))
    mail.write_bytes(make_message(1, subject="Please confirm the delivery date"))
    proc = gateway.run("rules", "test", "--json", str(broken), str(mail), check=False)
    assert proc.returncode == 1, proc.stderr  # the other file is classified all the same
    [result] = json.loads(proc.stdout)
    assert result["file"] == str(mail) and result["trace"]["result"]["department"] == "business"
    assert f"{broken}: " in proc.stderr


def test_a_fax_file_taken_in_by_hand_has_the_drop_folders_facts(tmp_path: Path, fax: bytes) -> None:
    gateway = Gateway(tmp_path, extra=FAX_SETTINGS)
    config = loaded(gateway)
    path = tmp_path / "fax_+8620123456_20261122-090000.tif"
    path.write_bytes(fax)
    (tmp_path / "fax_+8620123456_20261122-090000.info").write_text("Sender: +86 21 5555 0000\nPages: 1\n")
    meta = intake.file_meta(config, path, fax)
    assert (meta["channel"], meta["intake"]) == ("fax", "file")
    assert meta["fax"]["number"] == "+86 21 5555 0000"  # the sidecar before the file name
    assert meta["fax"]["pages"] == 1 and meta["fax"]["file_name"] == path.name
    assert intake.file_meta(config, tmp_path / "a.eml", make_message(1))["channel"] == "email"


def test_ingest_file_registers_a_message_and_refuses_what_it_cannot_read(tmp_path: Path, fax: bytes) -> None:
    gateway = Gateway(tmp_path, extra=FAX_SETTINGS)
    config = rulebook.load(str(gateway.config))
    spool = Spool(config.spool_dir, config.message_dir)
    registry = Registry.from_config(config)
    registry.upgrade()
    try:
        pipeline = Pipeline(config, spool, registry)
        mail, broken = tmp_path / "a.eml", tmp_path / "broken.tif"
        mail.write_bytes(make_message(1))
        broken.write_bytes(corrupt(fax, keep=0.01))
        first = intake.ingest_file(config, spool, pipeline, mail)
        assert (first.result, first.number) == ("registered", "2026-000001")
        again = intake.ingest_file(config, spool, pipeline, mail)
        assert (again.result, again.number) == ("duplicate", "2026-000001")
        refused = intake.ingest_file(config, spool, pipeline, broken)
        assert refused.result == "refused" and refused.number is None and spool.pending() == []
        missing = intake.ingest_file(config, spool, pipeline, tmp_path / "missing.eml")
        assert missing.result == "refused" and missing.reason == "cannot read: No such file or directory"
        # A Date whose moment in UTC is past the year 9999: registered, its date a defect.
        (tmp_path / "far.eml").write_bytes(make_message(2).replace(b"Mon, 23 Nov 2026 10:00:00 +0800",
                                                                   b"Fri, 31 Dec 9999 23:59:59 -1400"))
        far = intake.ingest_file(config, spool, pipeline, tmp_path / "far.eml")
        assert (far.result, far.number) == ("registered", "2026-000002"), far
        kept = registry.letter("2026-000002")
        assert kept is not None and kept.sent_at is None and any("beyond the calendar" in d for d in kept.defects)
        (tmp_path / "empty.eml").write_bytes(b"")
        empty = intake.ingest_file(config, spool, pipeline, tmp_path / "empty.eml")
        assert (empty.result, empty.reason) == ("refused", "empty file: nothing to register")
        assert spool.pending() == [] and registry.count() == 2
    finally:
        registry.close()


def test_local_days_bound_listings_in_the_organisations_time_zone(tmp_path: Path) -> None:
    config = loaded(Gateway(tmp_path))  # Asia/Shanghai, UTC+8
    start, end = queries.received_between(config, date(2026, 11, 1), date(2026, 11, 30))
    assert start == datetime(2026, 10, 31, 16, 0, tzinfo=timezone.utc)
    assert end == datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)
    assert queries.received_between(config, None, None) == (None, None)
    assert queries.overdue_moment(config, date(2026, 11, 23)) == datetime(2026, 11, 23, 16, 0, tzinfo=timezone.utc)
    assert queries.local_moment(config, datetime(2026, 11, 23, 9, 0)).astimezone(timezone.utc) == \
        datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)


def test_days_outside_the_registers_years_are_refused_by_name(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    for args in (("letters", "list", "--until", "9998-12-31", "--since", "1900-01-01"),
                 ("report", "--month", "1900-01")):
        assert gateway.run(*args).returncode == 0
    for args, option, value in ((("letters", "list", "--until", "9999-12-31"), "--until", "9999-12-31"),
                                (("letters", "search", "order", "--since", "0001-01-01"), "--since", "0001-01-01"),
                                (("letters", "list", "--overdue", "--as-of", "9999-12-31"), "--as-of", "9999-12-31"),
                                (("reminders", "run", "--dry-run", "--now", "9999-12-31 09:00"), "--now",
                                 "9999-12-31 09:00"),
                                (("rules", "replay", "--since", "1899-12-31"), "--since", "1899-12-31")):
        refused = gateway.run(*args, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, (args, refused.stderr)
        assert f"Invalid value for '{option}': {value}: outside the register's days (1900-01-01 to 9998-12-31)" \
            in refused.stderr, refused.stderr
    for args in (("report", "--month", "0001-01"), ("archive", "run", "--month", "0000-01"),
                 ("archive", "verify", "--month", "9999-12")):
        refused = gateway.run(*args, check=False)
        assert refused.returncode == 2 and "the year is outside 1900 to 9998" in refused.stderr, refused.stderr


def test_a_misspelt_filter_is_refused_by_name_not_answered_with_nothing(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    for args, option, says in ((("letters", "list", "--status", "needs_triage"), "--status",
                                "'needs_triage' is none of acknowledged,"),
                               (("letters", "search", "order", "--department", "sales"), "--department",
                                "'sales' is none of business, general-office"),
                               (("letters", "list", "--category", "inquiry"), "--category",
                                "'inquiry' is none of external.business,"),
                               (("letters", "list", "--limit", "-5"), "'--limit'", "-5 is not in the range"),
                               # Beyond what the registry's integers hold: refused here, not by the driver.
                               (("letters", "list", "--limit", "99999999999999999999999"), "'--limit'",
                                "99999999999999999999999 is not in the range 1<=x<=9223372036854775807"),
                               (("outbox", "list", "--limit", "-1"), "'--limit'", "-1 is not in the range"),
                               (("archive", "grant", "99999999999999999999999", "--as", "admin"), "'BORROWING_ID'",
                                "99999999999999999999999 is not in the range")):
        refused = gateway.run(*args, check=False)
        assert refused.returncode == 2 and f"Invalid value for {option}: {says}" in refused.stderr, refused.stderr
    assert gateway.run("letters", "list", "--status", "needs-triage", "--department", "business",
                       "--category", "external.business", "--limit", "1").returncode == 0


def test_status_open_lists_and_finds_every_letter_not_yet_closed(tmp_path: Path) -> None:
    """`--status open`, as the queues' filter "open (not yet closed)": any state before closed."""
    gateway = Gateway(tmp_path)
    gateway.run("ingest", *write_messages(tmp_path, [make_message(n, subject=f"Order {n}", to="sales@example.org")
                                                     for n in range(3)]))
    gateway.run("letters", "ack", "2026-000002")
    gateway.run("letters", "close", "2026-000003", "--result", "done")
    listed = [r["number"] for r in gateway.list_json("--status", "open")]
    assert listed == ["2026-000001", "2026-000002"]
    found = json.loads(gateway.run("letters", "search", "order", "--status", "open", "--json").stdout)["letters"]
    assert sorted(r["number"] for r in found) == ["2026-000001", "2026-000002"]


def test_text_that_is_not_utf8_is_a_usage_error_naming_the_parameter(tmp_path: Path, fax: bytes) -> None:
    """A byte that is not UTF-8 in an argument (a terminal set to GBK) reaches the command as a lone
    surrogate: every command's text is refused where it is read, exit 2, never a traceback (nor a
    note recorded with it)."""
    gateway = Gateway(tmp_path)
    message, scan = tmp_path / "letter.eml", tmp_path / "scan.tif"
    message.write_bytes(make_message(1))
    scan.write_bytes(fax)
    gateway.run("ingest", str(message))
    for args, parameter, shown in ((("letters", "search", "合同\udcff"), "'QUERY'", "合同\\xff"),
                                   (("letters", "note", "2026-000001", "a\udcc4\udce3"), "'TEXT'", "a\\xc4\\xe3"),
                                   (("letters", "show", "\udcff"), "'NUMBER'", "\\xff"),
                                   (("letters", "list", "--department", "\udcff"), "'--department'", "\\xff"),
                                   (("letters", "reply", "2026-000001", "--text", "\udcff"), "'--text'", "\\xff"),
                                   (("users", "add", "bob", "--name", "B\udcff", "--no-password"), "'--name'",
                                    "B\\xff"),
                                   (("ingest", "--channel", "post", "--sender", "\udcff", str(scan)), "'--sender'",
                                    "\\xff")):
        refused = gateway.run(*args, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, (args, refused.stderr)
        assert f"Invalid value for {parameter}: '{shown}' is not UTF-8 text" in refused.stderr, refused.stderr
    assert [e["action"] for e in gateway.show_json("2026-000001")["events"]].count("note") == 0
    assert len(gateway.list_json()) == 1
    # A file's name is not text: one that is not UTF-8 is taken as it is.
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/\xff.eml"))
    odd.write_bytes(make_message(2))
    assert "registered as 2026-000002" in gateway.run("ingest", str(odd)).stdout


def test_a_department_removed_from_the_configuration_still_lists_its_letters(tmp_path: Path) -> None:
    records = '\n[[departments]]\nid = "records"\nname = "Records"\nowners = ["records.desk@example.org"]\n' \
              'head = "records.head@example.org"\naddresses = ["records@example.org"]\n'
    gateway = Gateway(tmp_path, extra=records)
    (tmp_path / "letter.eml").write_bytes(make_message(1, to="records@example.org"))
    gateway.run("ingest", str(tmp_path / "letter.eml"))
    assert [row["department"] for row in gateway.list_json("--department", "records")] == ["records"]
    gateway.config.write_text(gateway.config.read_text().replace(records, "\n"))
    assert "records" not in loaded(gateway).departments
    assert [row["number"] for row in gateway.list_json("--department", "records")] == ["2026-000001"]
    refused = gateway.run("letters", "list", "--department", "recordz", check=False)
    assert refused.returncode == 2 and "'recordz' is none of business, general-office" in refused.stderr


def test_commands_name_what_they_cannot_use(tmp_path: Path) -> None:
    """A FIFO is no letter (reading it would wait for ever), a report has no folder to go to, a mail
    id no registry can hold, nobody of that name, a configuration saved with a byte-order mark."""
    import os

    gateway = Gateway(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "one.eml").write_bytes(make_message(1))
    taken = gateway.run("ingest", str(tmp_path / "pipe"), str(tmp_path / "one.eml"), check=False, timeout=60)
    assert taken.returncode == 1 and f"{tmp_path / 'pipe'}: not a regular file" in taken.stderr, taken.stderr
    assert "registered as 2026-000001" in taken.stdout
    report = gateway.run("report", "--month", "2026-11", "-o", str(tmp_path / "missing" / "r.html"), check=False)
    assert report.returncode == 2 and f"cannot write {tmp_path / 'missing' / 'r.html'}: No such file" in report.stderr
    retry = gateway.run("outbox", "retry", "99999999999999999999999", check=False)
    assert retry.returncode == 2 and "is not in the range" in retry.stderr and "Traceback" not in retry.stderr
    nobody = gateway.run("users", "disable", "nobody", check=False)
    assert nobody.returncode == 1 and "no person named 'nobody'" in nobody.stderr, nobody.stderr
    gateway.config.write_bytes(b"\xef\xbb\xbf" + gateway.config.read_bytes())
    assert gateway.run("check-config").returncode == 0


def test_retry_all_with_nothing_in_quarantine_is_not_an_error(gateway: Gateway) -> None:
    """`quarantine retry --all` from a timer or a runbook: an empty quarantine is nothing to do
    (exit 0), not a usage error; naming nothing at all still is one."""
    emptied = gateway.run("quarantine", "retry", "--all", check=False)
    assert emptied.returncode == 0 and emptied.stdout.strip() == "no quarantined items", emptied.stderr
    assert "Usage" not in emptied.stderr
    unnamed = gateway.run("quarantine", "retry", check=False)
    assert unnamed.returncode == 2 and "name at least one item, or --all" in unnamed.stderr


def test_quarantined_items_are_shown_and_put_back(tmp_path: Path) -> None:
    config = loaded(Gateway(tmp_path))
    spool = Spool(config.spool_dir, config.message_dir)
    item_id = spool.quarantine_new(b"not a message", {"intake": "smtp"}, "cannot read item: test")
    _, detail = operations.quarantine_detail(spool, item_id)
    assert detail["reason"] == "cannot read item: test" and detail["meta"]["intake"] == "smtp"
    with pytest.raises(LookupError, match="no quarantined item nope"):
        operations.quarantine_detail(spool, "nope")
    done = operations.retry_quarantined(spool, [item_id, "nope"])
    assert [(r.item_id, r.found) for r in done] == [(item_id, True), ("nope", False)]
    assert spool.quarantined() == [] and len(spool.pending()) == 1
    registry = Registry.from_config(config)
    registry.upgrade()
    try:
        status = operations.status(config, spool, registry)
    finally:
        registry.close()
    assert {k: status["spool"][k] for k in ("waiting", "in_progress", "quarantined")} == {
        "waiting": 1, "in_progress": 0, "quarantined": 0}
    assert status["daemon"] == {"running": False, "pid": None, "configuration": None} and status["attention"] == []


def test_status_names_an_archive_in_trouble_a_spool_backing_up_and_a_disk_too_full(tmp_path: Path) -> None:
    """A package that failed its check, one written a day ago and never checked, an item waiting a
    quarter of an hour, and a spool's disk below min_free_bytes each need an operator."""
    from sqlalchemy import insert

    from gateway.registry.models import ArchivePackage

    config = loaded(Gateway(tmp_path))
    spool = Spool(config.spool_dir, config.message_dir)
    registry = Registry.from_config(config)
    registry.upgrade()
    try:
        assert operations.status(config, spool, registry)["attention"] == []
        now = datetime.now(timezone.utc)
        package = {"category": "external.business", "kind": "mail", "manifest": "{}", "letters": 1, "size": 1,
                   "sha256": "0" * 64}
        with registry.write() as conn:
            conn.execute(insert(ArchivePackage), [
                {**package, "month": "2026-09", "part": 1, "path": "a", "created_at": now, "status": "corrupt"},
                {**package, "month": "2026-10", "part": 1, "path": "b", "created_at": now - timedelta(days=2),
                 "status": "written"},
                {**package, "month": "2026-11", "part": 1, "path": "c", "created_at": now, "status": "written"}])
        item = spool.enqueue(make_message(1), {"intake": "file"})
        old = time.time() - 20 * 60
        os.utime(item.path, (old, old))
        full = Config(path=config.path, state_dir=config.state_dir, model=config.model.model_copy(update={
            "spool": config.model.spool.model_copy(update={"min_free_bytes": 2 ** 50})}))
        attention = operations.status(full, spool, registry)["attention"]
    finally:
        registry.close()
    assert attention[0] == "the spool is backing up: its oldest item has waited 20 min"
    assert attention[1].startswith("the spool's disk has ") and "below [spool] min_free_bytes" in attention[1]
    assert attention[2:] == ["1 archive package(s) failed verification (gateway archive verify)",
                             "1 archive package(s) written over a day ago and never verified (gateway archive verify)"]


def test_status_names_the_files_the_fax_drop_folder_leaves_there(tmp_path: Path, fax: bytes) -> None:
    """A file the watcher leaves in the drop folder (one over [fax] max_file_bytes, an empty one)
    needs an operator once it has sat there a quarter of an hour; a fax it took, a file still being
    written (a name it ignores) and a folder do not, nor anything with [fax] not enabled."""
    from gateway.adapters.fax_drop import FaxDropWatcher

    limit = max(1024, len(fax))
    config = loaded(Gateway(tmp_path, extra=f"[fax]\nstable_seconds = 0\nmax_file_bytes = {limit}\n"))
    spool = Spool(config.spool_dir, config.message_dir)
    watcher = FaxDropWatcher(config, spool)
    drop = config.fax_drop_dir
    (drop / "fax_0105551234.tif").write_bytes(fax)
    (drop / "huge.tif").write_bytes(b"II*\x00" + bytes(limit))
    (drop / "empty.tif").write_bytes(b"")
    (drop / "incoming.tif.part").write_bytes(b"II*\x00")
    (drop / "done").mkdir()
    watcher.scan()
    assert watcher.scan() == 1 and len(spool.pending()) == 1  # the fax; the others are left
    later = datetime.now(timezone.utc) + timedelta(minutes=20)
    registry = Registry.from_config(config)
    registry.upgrade()
    try:
        assert operations.status(config, spool, registry)["attention"] == []  # just written: waited on
        attention = operations.status(config, spool, registry, later)["attention"]
        off = Config(path=config.path, state_dir=config.state_dir, model=config.model.model_copy(update={
            "fax": config.model.fax.model_copy(update={"enabled": False})}))
        assert operations.status(off, spool, registry, later)["attention"] == []
    finally:
        registry.close()
    assert attention == [f"2 file(s) in the fax drop folder {drop} not taken for over 15 min (the daemon's log "
                         "names each and why it stays)"]


def test_status_names_mail_the_relay_has_not_taken_for_a_quarter_of_an_hour(tmp_path: Path, sink: SmtpSink) -> None:
    """Mail retried with an error for a quarter of an hour (a relay refusing the gateway, then not
    answering at all) needs an operator, with the last error; mail just queued does not."""
    from gateway.outbound.sender import OutboxSender
    from test_outbox_faults import configured, letter_with_mail

    config, registry = configured(tmp_path, sink.address)
    spool = Spool(config.spool_dir, config.message_dir)
    later = datetime.now(timezone.utc) + timedelta(minutes=20)
    try:
        letter_with_mail(registry, 2)
        assert operations.status(config, spool, registry, later)["attention"] == []  # queued, never tried
        sink.mail_answer = "530 5.7.0 Authentication required"
        sender = OutboxSender(config, registry)
        sender.deliver_due()
        assert [m.status for m in registry.outbox()] == ["pending", "pending"]
        assert operations.status(config, spool, registry)["attention"] == []  # failing for a moment only
        refused = operations.status(config, spool, registry, later)["attention"]
        sink.stop()
        time.sleep(0.05)  # retried after 0.01 s
        sender.deliver_due()
        unreachable = operations.status(config, spool, registry, later)
    finally:
        registry.close()
    assert refused == [f"2 mail(s) queued over 15 min ago and not delivered, the relay failing: relay refused the "
                       f"sender {config.model.outbound.from_address}: 530 5.7.0 Authentication required "
                       "(gateway outbox list --status pending)"]
    [line] = unreachable["attention"]  # the last error now: the relay not answering
    assert line.startswith(f"2 mail(s) queued over 15 min ago and not delivered, the relay failing: "
                           f"relay {sink.address}: ")
    assert "refused" in line and "530" not in line


def test_status_names_archive_copies_missing_and_a_copy_folder_not_there(tmp_path: Path) -> None:
    """A verified package missing from one of [archive] copies (removed by hand, a disk replaced)
    needs an operator until `archive verify` writes it again; a copy folder not there at all is
    one item, however many packages it lacks."""
    from test_archive_copies import archived_with_copy, packages

    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03")

    def attention() -> list[str]:
        return list(json.loads(gateway.run("status", "--json", check=False).stdout)["attention"])

    assert attention() == []
    (copy / packages(gateway)["mail"]["path"]).unlink()
    assert attention() == [f"1 verified archive package(s) missing from the copy folder {copy} "
                           "(gateway archive verify writes them again)"]
    gateway.run("archive", "verify")
    assert attention() == []
    shutil.rmtree(copy)
    assert attention() == [f"the archive copy folder {copy} is not there (a share not mounted?): once it is, "
                           "gateway archive verify writes the copies"]


def test_status_counts_items_in_progress_and_its_exit_status_says_how_things_stand(
        gateway: Gateway, notify: Notify) -> None:
    """0 all well, 1 something needs an operator (listed), 2 the daemon is not running, 3 the
    status cannot be read; an item a worker holds in spool/work is counted as in progress."""
    gateway.run("db", "upgrade")
    spool = Spool(gateway.state / "spool", gateway.state / "messages")
    stopped = gateway.run("status", check=False)
    assert stopped.returncode == 2 and "daemon: not running" in stopped.stdout, stopped.stdout + stopped.stderr
    daemon = start_and_wait_ready(gateway, notify)
    try:
        well = gateway.run("status", check=False)
        assert well.returncode == 0, well.stdout + well.stderr
        assert "spool: 0 waiting, 0 in progress, 0 quarantined" in well.stdout and "needs attention" not in well.stdout
        # An item claimed by a worker (here this process, holding it as a worker does), and one
        # given up on.
        held = spool.enqueue(make_message(1), {"intake": "file"}, claim=True)
        spool.quarantine_new(b"not a message", {"intake": "smtp"}, "cannot read item: test")
        needs = gateway.run("status", check=False)
        assert needs.returncode == 1, needs.stdout + needs.stderr
        assert "spool: 0 waiting, 1 in progress, 1 quarantined" in needs.stdout
        assert "needs attention:\n  1 item(s) in quarantine (gateway quarantine list)\n" in needs.stdout, needs.stdout
        as_json = gateway.run("status", "--json", check=False)
        data = json.loads(as_json.stdout)
        assert as_json.returncode == 1 and data["attention"] == ["1 item(s) in quarantine (gateway quarantine list)"]
        assert (data["spool"]["waiting"], data["spool"]["in_progress"]) == (0, 1)
        spool.discard(held)
    finally:
        stop(daemon)
    gateway.config.write_text(gateway.config.read_text() + "\n[bogus]\n")
    unreadable = gateway.run("status", check=False)
    assert unreadable.returncode == 3 and "bogus" in unreadable.stderr, unreadable.stderr
    mistyped = gateway.run("status", "--jsno", check=False)  # as monitoring plugins do: not 2, "not running"
    assert mistyped.returncode == 3 and "No such option" in mistyped.stderr, mistyped.stderr
