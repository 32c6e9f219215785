"""The monthly archive: mixed mail and fax, verification, corruption, a crash midway, retention and hold."""
from __future__ import annotations

import csv
import json
import mailbox
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import Gateway, make_message, write_messages
from fax_samples import ENGLISH, tiff_fax

RULES = """
rules:
  - name: complaints
    when: {subject: [complaint]}
    set: {category: external.inquiry_complaint, department: business}
  - name: business
    when: {recipient_department: [business]}
    set: {category: external.business, department: business}
"""


def execute(gateway: Gateway, url: str, sql: str) -> None:
    """Change the register behind the gateway's back (the tests' time machine)."""
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("'2026-03-10 02:00:00.000000'", "'2026-03-10 02:00:00+00'")
                         .replace("'2019-05-10 02:00:00.000000'", "'2019-05-10 02:00:00+00'"))
    else:
        with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
            db.execute(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def archived(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Gateway, str]:
    """Four mails in two categories and a fax, one letter closed, all received in 2026-03."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    gateway = Gateway(tmp_path, rules=RULES, registry_url=url)
    files = write_messages(tmp_path, (
        make_message(n, subject=subject, to=to,
                     body="Dear team,\nFrom the start we were unhappy.\n>From a quote.\n" if n == 0 else "Hello.\n")
        for n, (subject, to) in enumerate([("complaint one", "liaison@example.org"), ("Order 1", "sales@example.org"),
                                           ("Order 2", "sales@example.org"),
                                           ("complaint two", "liaison@example.org")])))
    fax = tmp_path / "fax_0105551234.tif"
    fax.write_bytes(tiff_fax([ENGLISH], resolution="fine", compression="group4"))
    files.append(str(fax))
    gateway.run("ingest", *files)
    gateway.run("letters", "close", "2026-000001", "--result", "answered")
    execute(gateway, url, "UPDATE letters SET received_at = '2026-03-10 02:00:00.000000'")  # as if in March
    return gateway, "2026-03"


def package_rows(gateway: Gateway) -> list[dict]:
    return json.loads(gateway.run("archive", "list", "--json").stdout)


def test_a_month_of_mail_and_fax_is_packed_verified_and_released(archived: tuple[Gateway, str]) -> None:
    gateway, month = archived
    out = gateway.run("archive", "run", "--month", month).stdout
    packages = {(p["category"], p["kind"]): p for p in package_rows(gateway)}
    assert set(packages) == {("external.inquiry_complaint", "mail"), ("external.business", "mail"),
                             ("uncategorised", "fax")}
    assert all(p["status"] == "verified" for p in packages.values()), out
    root = gateway.state / "archive"
    complaints = packages[("external.inquiry_complaint", "mail")]
    assert complaints["path"] == "2026/03/external.inquiry_complaint/part-001.mbox.zst"
    # Ordinary tools open it: zstd, then any mbox reader.
    mbox_file = root / "complaints.mbox"
    mbox_file.write_bytes(subprocess.run(["zstd", "-dc", str(root / complaints["path"])], capture_output=True,
                                         check=True).stdout)
    box = mailbox.mbox(str(mbox_file))
    messages = list(box)
    box.close()
    assert sorted(m["Subject"] for m in messages) == ["complaint one", "complaint two"]
    assert "From the start" in messages[0].get_payload() or "From the start" in messages[1].get_payload()
    with open(root / complaints["manifest"], newline="") as f:
        manifest = list(csv.DictReader(f))
    assert [r["letter_number"] for r in manifest] == ["2026-000001", "2026-000004"]
    assert all(r["archive_number"].startswith("A202603-") and len(r["sha256"]) == 64 for r in manifest)
    fax = packages[("uncategorised", "fax")]
    [fax_file] = list((root / fax["path"]).iterdir())
    assert fax_file.name.endswith("_fax_0105551234.tif") and fax_file.read_bytes()[:4] == b"II*\x00"

    letters = {letter["number"]: gateway.show_json(str(letter["number"])) for letter in gateway.list_json()}
    numbers = sorted(letter["archive_number"] for letter in letters.values())
    assert numbers == [f"A202603-{n:05d}" for n in range(1, 6)]  # unique, gap-free
    assert letters["2026-000001"]["status"] == "archived"  # closed, then archived
    assert letters["2026-000002"]["status"] == "routed"  # still open: archived copy, live letter
    # Released after verification, for letters that are done; open ones keep their copy.
    assert [n for n, letter in sorted(letters.items()) if letter["raw_released"]] == ["2026-000001"]
    assert not (gateway.state / letters["2026-000001"]["raw_path"]).exists()
    assert (gateway.state / letters["2026-000002"]["raw_path"]).exists()
    original = gateway.run("letters", "extract", "2026-000001", str(gateway.state.parent / "y"))
    assert original.returncode == 0  # read back from the package
    extracted = gateway.run("letters", "extract", "2026-000005", str(gateway.state.parent / "x")).stdout
    assert extracted.strip().endswith(".tif")
    for number, letter in letters.items():  # each letter says where it went, once
        [event] = [e for e in letter["events"] if e["action"] == "archived"]
        assert event["actor"] == "gateway" and event["details"]["archive_number"] == letter["archive_number"]
        assert event["details"]["package"] in {p["path"] for p in packages.values()}, (number, event)
    # Idempotent.
    assert "nothing (more) to archive" in gateway.run("archive", "run", "--month", month).stdout
    assert len(package_rows(gateway)) == 3


def test_a_corrupted_package_is_detected(archived: tuple[Gateway, str]) -> None:
    gateway, month = archived
    gateway.run("archive", "run", "--month", month, "--no-verify")
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    path = gateway.state / "archive" / business["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fax = next(p for p in package_rows(gateway) if p["kind"] == "fax")
    [fax_file] = list((gateway.state / "archive" / fax["path"]).iterdir())
    fax_file.write_bytes(fax_file.read_bytes()[:-10])
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1
    assert f"error: {business['path']}: SHA-256 differs from the one recorded when it was written" in proc.stderr
    assert "content differs from the manifest" in proc.stderr
    statuses = {p["category"]: p["status"] for p in package_rows(gateway)}
    assert statuses == {"external.business": "corrupt", "external.inquiry_complaint": "verified",
                        "uncategorised": "corrupt"}
    # Nothing of a corrupt package is released from the message store.
    assert (gateway.state / gateway.show_json("2026-000002")["raw_path"]).exists()


def test_a_crash_midway_then_the_run_resumes(archived: tuple[Gateway, str]) -> None:
    gateway, month = archived
    assert "orphans/" not in gateway.run("archive", "verify").stderr
    crashed = gateway.run("archive", "run", "--month", month, check=False,
                          env=gateway.env(GATEWAY_CRASH_AT="archive-before-commit"))
    assert crashed.returncode == -9
    assert package_rows(gateway) == []
    leftovers = list((gateway.state / "archive" / "2026").rglob("part-001*"))
    assert leftovers  # written, never recorded
    resumed = gateway.run("archive", "run", "--month", month)
    [aside] = list((gateway.state / "archive" / "orphans").iterdir())
    assert list(aside.rglob("part-001*"))  # set aside, not deleted
    assert (f"archive of {month}: what a run that crashed left, in no package of the register, set aside in "
            f"{aside} (never removed by the gateway: gateway archive verify says what to do)") in resumed.stderr
    left = sum(1 for f in (gateway.state / "archive" / "orphans").rglob("*") if f.is_file())
    assert (f"kept orphans/: {left} file(s) set aside from runs that crashed, in no package of the register: never "
            "destroyed by a purge") in gateway.run("archive", "purge", "--dry-run").stdout
    # Never removed by the gateway: verify tells the operator they wait, and what to do, once.
    verified = gateway.run("archive", "verify")
    said = [line for line in verified.stderr.splitlines() if "orphans/" in line]
    assert said == [f"warning: orphans/: {left} file(s) set aside from runs that crashed wait in "
                    f"{gateway.state / 'archive' / 'orphans'}, in no package of the register (after a registry "
                    "restored from an older backup, perhaps the only copy of their letters): compare their "
                    "manifests with the register (gateway archive list, gateway letters show NUMBER) and remove "
                    "them by hand once they are not needed; the gateway never removes them"], verified.stderr
    assert left and left == sum(1 for f in (gateway.state / "archive" / "orphans").rglob("*") if f.is_file())
    rows = package_rows(gateway)
    assert len(rows) == 3 and all(r["part"] == 1 and r["status"] == "verified" for r in rows)
    numbers = [gateway.show_json(str(letter["number"]))["archive_number"] for letter in gateway.list_json()]
    assert sorted(numbers) == [f"A202603-{n:05d}" for n in range(1, 6)]


def test_purge_needs_approval_spares_held_letters_and_keeps_a_record(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, rules=RULES, extra="[archive]\nretention_years = 10\n[archive.retention]\n"
                                                   '"external.business" = 5\n')
    gateway.run("ingest", *write_messages(tmp_path, (
        make_message(n, subject=subject, to="sales@example.org" if n else "liaison@example.org")
        for n, subject in enumerate(["complaint", "order"]))))
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:  # received and closed long ago
        db.execute("UPDATE letters SET received_at = '2019-05-10 02:00:00.000000', status = 'closed'")
    gateway.run("archive", "run", "--month", "2019-05")

    refused = gateway.run("archive", "purge", check=False)
    assert refused.returncode == 2 and "destruction needs --approved-by LOGIN" in refused.stderr
    # Approved by a person of the register with the leader role, enabled: not by a name made up.
    gateway.run("users", "add", "wang", "--name", "Director Wang", "--role", "leader", "--no-password")
    gateway.run("users", "add", "li", "--name", "Clerk Li", "--role", "registry", "--no-password")
    gateway.run("users", "add", "zhao", "--name", "Director Zhao", "--role", "leader", "--no-password")
    gateway.run("users", "disable", "zhao")
    for named, says in (("Director Wang", "no enabled person named 'Director Wang'"),
                        ("li", "li (Clerk Li) does not have the leader role"),
                        ("zhao", "no enabled person named 'zhao'")):
        # A dry run naming who approves is refused the same way: its yes means the purge would go ahead.
        for dry_run in ((), ("--dry-run",)):
            refused = gateway.run("archive", "purge", *dry_run, "--approved-by", named, check=False)
            assert refused.returncode == 2 and f"error: --approved-by: {says}: destruction is approved by a " \
                "person of the web register with the leader role" in refused.stderr, (dry_run, refused.stderr)
            assert "would be destroyed" not in refused.stdout
    refused = gateway.run("archive", "purge", "--dry-run", "--approved-by", " ", check=False)
    assert refused.returncode == 2 and "destruction needs --approved-by LOGIN" in refused.stderr
    assert (gateway.state / "archive/2019/05/external.business/part-001.mbox.zst").exists()
    for approved in ((), ("--approved-by", "wang")):  # without an approver, only what is due is shown
        dry = gateway.run("archive", "purge", "--dry-run", *approved).stdout
        # Business letters keep 5 years (over); complaints the default 10 (not over).
        assert "2019/05/external.business/part-001.mbox.zst: would be destroyed" in dry
        assert "retention of 10 years not over" in dry
    assert (gateway.state / "archive/2019/05/external.business/part-001.mbox.zst").exists()

    gateway.run("letters", "hold", "2026-000002", "--reason", "court case 17/2026")
    held = gateway.run("archive", "purge", "--approved-by", "WANG").stdout
    assert "on legal hold (2026-000002)" in held and "nothing is past retention" in held
    assert (gateway.state / "archive/2019/05/external.business/part-001.mbox.zst").exists()

    gateway.run("letters", "hold", "2026-000002", "--reason", "case closed", "--release")
    done = gateway.run("archive", "purge", "--approved-by", "wang").stdout
    assert "2019/05/external.business/part-001.mbox.zst: destroyed" in done
    assert not (gateway.state / "archive/2019/05/external.business/part-001.mbox.zst").exists()
    assert not (gateway.state / "archive/2019/05/external.business/part-001.manifest.csv").exists()
    assert (gateway.state / "archive/2019/05/external.inquiry_complaint/part-001.mbox.zst").exists()
    letter = gateway.show_json("2026-000002")
    assert letter["purged_at"] and letter["archive_number"]  # the register entry stays
    [destroyed] = [e for e in letter["events"] if e["action"] == "destroyed"]
    assert destroyed["details"]["approved_by"] == "wang"
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        [(approved, packages, letters)] = db.execute("SELECT approved_by, packages, letters FROM destruction_records")
    assert approved == "wang" and json.loads(packages) == ["2019/05/external.business/part-001.mbox.zst"]
    assert json.loads(letters) == [["2026-000002", letter["archive_number"]]]
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:  # in the audit log, with who ran it
        [(actor, subject, details)] = db.execute("SELECT actor, subject, details FROM audit WHERE action = 'destroyed'")
    assert actor.startswith("cli:") and subject == "wang"
    assert json.loads(details) == {"approved_by": "wang", "name": "Director Wang", "record": 1,
                                   "packages": ["2019/05/external.business/part-001.mbox.zst"], "letters": 1}
    assert "nothing is past retention" in gateway.run("archive", "purge", "--approved-by", "wang").stdout
