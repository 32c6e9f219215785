"""Reports: the figures checked against values computed here by hand from the letters' own events."""
from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from conftest import Gateway, make_message, write_messages

RULES = """
rules:
  - name: complaints
    when: {subject: [complaint]}
    set: {category: external.inquiry_complaint, department: business}
  - name: orders
    when: {subject: [order]}
    set: {category: external.business, department: business}
"""


def test_quarter_report_figures_as_json_csv_and_html(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, rules=RULES)
    gateway.run("ingest", *write_messages(tmp_path, (
        make_message(n, subject=subject) for n, subject in enumerate(["A complaint", "Order 1", "Hello", "Order 2"]))))
    gateway.run("letters", "ack", "2026-000001")
    gateway.run("letters", "close", "2026-000001", "--result", "answered")
    gateway.run("letters", "close", "2026-000002", "--result", "late")
    gateway.run("letters", "reassign", "2026-000003", "business", "--reason", "settled from triage")
    gateway.run("letters", "reassign", "2026-000004", "general-office", "--reason", "misrouted")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        for number, received, deadline in [("2026-000001", "2026-03-10 02:00:00", "2099-01-01 00:00:00"),
                                           ("2026-000002", "2026-03-10 02:00:00", "2026-03-11 15:59:59"),
                                           ("2026-000003", "2026-03-10 02:00:00", "2099-01-01 00:00:00"),
                                           ("2026-000004", "2026-02-15 02:00:00", "2026-02-20 15:59:59")]:
            db.execute("UPDATE letters SET received_at = ?, deadline = ? WHERE number = ?",
                       (received + ".000000", deadline + ".000000", number))
    gateway.run("archive", "run", "--month", "2026-03")  # February is not archived

    events = {n: gateway.show_json(n)["events"] for n in ("2026-000001", "2026-000002")}

    def at(number: str, action: str) -> datetime:
        return datetime.fromisoformat(next(e["at"] for e in events[number] if e["action"] == action))
    march = datetime(2026, 3, 10, 2, 0, tzinfo=timezone.utc)
    ack_hours = (at("2026-000001", "acknowledged") - at("2026-000001", "registered")).total_seconds() / 3600
    close_hours = sorted((at(n, "closed") - march).total_seconds() / 3600 for n in ("2026-000001", "2026-000002"))
    end_of_quarter = datetime(2026, 3, 31, 16, 0, tzinfo=timezone.utc)  # 1 April, 00:00 in Shanghai

    report = json.loads(gateway.run("report", "--quarter", "2026-Q1", "--format", "json").stdout)
    assert report["letters"] == 4
    assert report["volumes"] == {
        "channel": {"email": 4},
        "category": {"external.business": 2, "external.inquiry_complaint": 1, "uncategorised": 1},
        "department": {"business": 3, "general-office": 1}}
    assert report["timeliness"] == {"closed": 2, "closed_within_deadline": 1, "rate": 0.5}
    assert report["time_to_acknowledge"] == {"count": 1, "mean_hours": round(ack_hours, 2),
                                             "p90_hours": round(ack_hours, 2)}
    assert report["time_to_close"] == {"count": 2, "mean_hours": round(sum(close_hours) / 2, 2),
                                       "p90_hours": round(close_hours[1], 2)}
    # As of the end of the quarter, the late order (closed only later) and the February order were open and late.
    assert [(o["number"], o["days_overdue"]) for o in report["overdue"]] == [
        ("2026-000004", round((end_of_quarter - datetime(2026, 2, 20, 15, 59, 59, tzinfo=timezone.utc))
                              .total_seconds() / 86400, 1)),
        ("2026-000002", round((end_of_quarter - datetime(2026, 3, 11, 15, 59, 59, tzinfo=timezone.utc))
                              .total_seconds() / 86400, 1))]
    # Routed by the rules: 1, 2 and 4 (3 went to triage); 4 was re-routed by a person.
    assert report["accuracy"] == {"routed": 3, "rerouted_by_a_person": 1, "rate": round(2 / 3, 4)}
    assert report["archive"] == {"due": 4, "archived": 3, "completeness": 0.75}
    assert report["as_of"] == end_of_quarter.isoformat()

    march_only = json.loads(gateway.run("report", "--month", "2026-03", "--format", "json").stdout)
    assert march_only["letters"] == 3 and march_only["archive"]["completeness"] == 1.0

    table = list(csv.reader(io.StringIO(gateway.run("report", "--quarter", "2026-Q1", "--format", "csv").stdout)))
    assert table[0] == ["section", "key", "value"]
    assert ["timeliness", "rate", "0.5"] in table and ["archive", "completeness", "0.75"] in table
    assert ["volume by department", "business", "3"] in table and ["overdue", "2026-000004", str(
        report["overdue"][0]["days_overdue"])] in table

    out = tmp_path / "q1.html"
    gateway.run("report", "--quarter", "2026-Q1", "--output", str(out))
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3  # channel, category, department
    assert "50.0%" in page and "66.7%" in page and "75.0%" in page and "2026-000004" in page
    assert not math.isnan(report["time_to_close"]["mean_hours"])

    bad = gateway.run("report", "--month", "2026-13", check=False)
    assert bad.returncode == 2 and "neither a month (YYYY-MM) nor a quarter (YYYY-Qn)" in bad.stderr


def test_the_period_is_shown_in_the_organisations_local_dates(tmp_path: Path) -> None:
    from gateway.report.figures import Period

    december = Period.parse("2026-12", "Asia/Shanghai")
    assert december.start == datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)  # 1 December, 00:00 in Shanghai
    assert december.days("Asia/Shanghai") == (datetime(2026, 12, 1).date(), datetime(2026, 12, 31).date())
    assert Period.parse("2026-Q1", "Asia/Shanghai").days("Asia/Shanghai") == (
        datetime(2026, 1, 1).date(), datetime(2026, 3, 31).date())

    gateway = Gateway(tmp_path, rules=RULES)
    report = json.loads(gateway.run("report", "--month", "2026-12", "--format", "json").stdout)
    assert (report["first_day"], report["last_day"], report["timezone"]) == ("2026-12-01", "2026-12-31",
                                                                           "Asia/Shanghai")
    assert report["from"] == "2026-12-01T00:00:00+08:00" and report["until"] == "2027-01-01T00:00:00+08:00"
    table = list(csv.reader(io.StringIO(gateway.run("report", "--month", "2026-12", "--format", "csv").stdout)))
    assert ["period", "first_day", "2026-12-01"] in table and ["period", "last_day", "2026-12-31"] in table
    page = gateway.run("report", "--month", "2026-12").stdout
    assert "2026-12-01 – 2026-12-31" in page and "2026-11-30" not in page and "to before" not in page


def test_a_letter_reopened_by_a_low_rating_counts_from_its_standing_close(tmp_path: Path) -> None:
    """A sender's low rating reopens a closed letter: it is open again, overdue once past its new
    deadline, and counts as closed (and on time or not) only from the close that follows."""
    from datetime import timedelta

    from web_support import Site

    from gateway.registry.outward import OutwardRecords
    from gateway.report.figures import Period, compute
    from gateway.services.people import Principal

    zone = "Asia/Shanghai"
    site = Site(tmp_path)
    try:
        site.add_people()
        site.add_letters()
        number = site.letters["business"]
        site.access.act(Principal.operator("test"), number, "close", text="done")
        letter = site.registry.letter(number)
        assert letter is not None
        month = letter.received_at.astimezone(site.config.calendar.tz).strftime("%Y-%m")
        later = datetime.now(timezone.utc) + timedelta(days=62)  # the month has ended

        def figures() -> dict:
            report = compute(site.registry, Period.parse(month, zone), zone, now=later)
            return {"overdue": number in [o["number"] for o in report["overdue"]],
                    "closed": report["timeliness"]["closed"], "to_close": report["time_to_close"]}

        before = figures()
        assert before["overdue"] is False
        OutwardRecords(site.registry).rate(number, "fb-1@x", score=1, comment="no", via="web", actor="sender",
                                           address="", reopen_at_most=2,
                                           resume=lambda _deadline, now: now + timedelta(hours=1), notify=[])
        letter = site.registry.letter(number)
        assert letter is not None and letter.status == "in-progress" and letter.deadline is not None
        reopened = figures()
        assert reopened["overdue"] is True  # open again, its new deadline long past at the period's end
        assert reopened["closed"] == before["closed"] - 1  # its first close no longer stands

        site.access.act(Principal.operator("test"), number, "close", text="done again")
        closed_again = figures()
        assert closed_again["overdue"] is False and closed_again["closed"] == before["closed"]
    finally:
        site.close()


def test_the_dashboard_counts_the_closes_that_stand_as_the_report_does(tmp_path: Path) -> None:
    """A close a sender's low rating undid no longer counts on the dashboard either, even when
    the letter ended otherwise since (withdrawn for want of materials); a close after the
    reopening counts."""
    from datetime import timedelta

    from gateway.config import load
    from gateway.registry import Registry
    from gateway.registry.outward import OutwardRecords
    from gateway.report.figures import Period, compute as report
    from gateway.services.access import Access
    from gateway.services.dashboard import compute as dashboard
    from gateway.services.incomplete import Incomplete
    from gateway.services.letters import LetterSteps
    from gateway.services.people import Principal

    gateway = Gateway(tmp_path)
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n, to="sales@example.org") for n in range(3))))
    config = load(gateway.config)
    registry = Registry.from_config(config)
    try:
        steps, operator, cal = LetterSteps(config, registry), Principal.operator("test"), config.calendar
        for number in ("2026-000001", "2026-000002", "2026-000003"):
            steps.step(number, "close", actor="desk", text="done")
        for number in ("2026-000002", "2026-000003"):
            OutwardRecords(registry).rate(number, f"<result-{number}@example.org>", score=1, comment="no", via="web",
                                          actor="sender", address="", reopen_at_most=2,
                                          resume=lambda _days, now: cal.deadline(now, 5), notify=[])
        Incomplete(config, registry).mark(operator, "2026-000002", missing=["The stamp"],
                                          by=datetime.now(cal.tz).date() + timedelta(days=5))
        Incomplete(config, registry).withdraw(operator, "2026-000002", reason="never sent")
        steps.step("2026-000003", "close", actor="desk", text="done again")
        assert [registry.letter(n).status for n in ("2026-000001", "2026-000002", "2026-000003")] == [  # type: ignore[union-attr]
            "closed", "withdrawn", "closed"]
        now = datetime.now(timezone.utc)
        board = dashboard(config, registry, Access(config, registry), operator, now=now)
        zone = config.model.gateway.timezone
        figures = report(registry, Period.parse(now.astimezone(cal.tz).strftime("%Y-%m"), zone), zone, now=now)
        assert figures["timeliness"]["closed"] == board.timeliness.closed.count == 2
        assert figures["timeliness"]["closed_within_deadline"] == board.timeliness.on_time.count == 2
    finally:
        registry.close()


def test_a_letter_overdue_at_the_periods_end_stays_so_when_its_sender_is_asked_later(tmp_path: Path) -> None:
    """The overdue list is as of the end of the period: a letter late then stays on it, with the
    deadline it had then, when its sender is asked for materials afterwards (its deadline paused)
    or its department goes on without them (a new deadline)."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    gateway = Gateway(tmp_path, rules=RULES)
    gateway.run("ingest", *write_messages(tmp_path, [make_message(1, subject="Order 1")]))
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = ?, deadline = ? WHERE number = ?",
                   ("2026-03-10 02:00:00.000000", "2026-03-11 15:59:59.000000", "2026-000001"))
    end_of_march = datetime(2026, 3, 31, 16, 0, tzinfo=timezone.utc)
    late = ("2026-000001", "2026-03-11T23:59:59+08:00",
            round((end_of_march - datetime(2026, 3, 11, 15, 59, 59, tzinfo=timezone.utc)).total_seconds() / 86400, 1))

    def overdue() -> list[tuple[str, str, float]]:
        report = json.loads(gateway.run("report", "--month", "2026-03", "--format", "json").stdout)
        return [(o["number"], o["deadline"], o["days_overdue"]) for o in report["overdue"]]
    assert overdue() == [late]
    by = (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=5)).isoformat()
    gateway.run("letters", "incomplete", "2026-000001", "--missing", "The stamp", "--by", by)
    assert overdue() == [late]
    gateway.run("letters", "proceed", "2026-000001")
    assert overdue() == [late]


def test_a_letter_late_before_its_sender_was_asked_is_late_when_it_resumes(tmp_path: Path) -> None:
    """The wait for a sender's materials does not count against timeliness, and does not undo a
    lateness before it either: a letter already past its deadline when its sender was asked keeps
    that deadline when it resumes, and its close counts late; one asked in time gets the working
    days it had left again and closes on time."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    gateway = Gateway(tmp_path, rules=RULES)
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n, subject=f"Order {n}") for n in range(2))))
    now = datetime.now(timezone.utc)
    past = (now - timedelta(days=3)).replace(microsecond=0)
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET deadline = ? WHERE number = ?",
                   (past.strftime("%Y-%m-%d %H:%M:%S.000000"), "2026-000001"))
    by = (now.astimezone(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=5)).isoformat()
    for number in ("2026-000001", "2026-000002"):
        gateway.run("letters", "incomplete", number, "--missing", "The stamp", "--by", by)
        gateway.run("letters", "proceed", number)
        gateway.run("letters", "close", number, "--result", "done")
    assert datetime.fromisoformat(str(gateway.show_json("2026-000001")["deadline"])) == past
    month = now.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    report = json.loads(gateway.run("report", "--month", month, "--format", "json").stdout)
    assert report["timeliness"] == {"closed": 2, "closed_within_deadline": 1, "rate": 0.5}


def test_a_letter_late_at_the_periods_end_stays_on_its_overdue_list_when_reopened_later(tmp_path: Path) -> None:
    """A letter late at the end of the period and answered or closed afterwards is reopened by its
    sender's low rating: the reopening gives it a new deadline, and the period's overdue list
    still shows it, with the deadline it had then."""
    from datetime import timedelta

    from gateway.config import load
    from gateway.registry import Registry
    from gateway.registry.outward import OutwardRecords

    gateway = Gateway(tmp_path, rules=RULES)
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n, subject=f"Order {n}") for n in range(2))))
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = ?, deadline = ?",
                   ("2026-03-10 02:00:00.000000", "2026-03-11 15:59:59.000000"))
    end_of_march = datetime(2026, 3, 31, 16, 0, tzinfo=timezone.utc)
    days = round((end_of_march - datetime(2026, 3, 11, 15, 59, 59, tzinfo=timezone.utc)).total_seconds() / 86400, 1)
    late = [(number, "2026-03-11T23:59:59+08:00", days) for number in ("2026-000001", "2026-000002")]

    def overdue() -> list[tuple[str, str, float]]:
        report = json.loads(gateway.run("report", "--month", "2026-03", "--format", "json").stdout)
        return [(o["number"], o["deadline"], o["days_overdue"]) for o in report["overdue"]]
    assert overdue() == late
    gateway.run("letters", "answer", "2026-000001", "--text", "answered at last")
    gateway.run("letters", "close", "2026-000002", "--result", "done at last")
    assert overdue() == late  # open at the end of March, whatever happened since
    config = load(gateway.config)
    registry = Registry.from_config(config)
    try:
        for number in ("2026-000001", "2026-000002"):
            _, reopened = OutwardRecords(registry).rate(
                number, f"<result-{number}@example.org>", score=1, comment="no", via="web", actor="sender",
                address="", reopen_at_most=2, resume=lambda _days, now: config.calendar.deadline(now, 5), notify=[])
            assert reopened
            letter = registry.letter(number)
            assert letter is not None and letter.status == "in-progress"
            assert letter.deadline is not None and letter.deadline > datetime.now(timezone.utc) + timedelta(days=1)
    finally:
        registry.close()
    assert overdue() == late
