"""A report as JSON, as CSV (one figure per row) and as one HTML file with its charts inline (SVG)."""
from __future__ import annotations

import html
import io
import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.report.spreadsheet import SheetWriter


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def rows(report: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = [("period", "name", report["period"]),
                                       ("period", "first_day", report["first_day"]),
                                       ("period", "last_day", report["last_day"]),
                                       ("period", "timezone", report["timezone"]),
                                       ("period", "letters", report["letters"])]
    for dimension, counts in report["volumes"].items():
        out += [(f"volume by {dimension}", key, value) for key, value in counts.items()]
    for section in ("timeliness", "time_to_acknowledge", "time_to_close", "accuracy", "archive"):
        out += [(section, key, value) for key, value in report[section].items()]
    out.append(("volume by channel", "paper (post, courier, front desk)", report["paper"]))
    out += [("incomplete submissions", key, value) for key, value in report["incomplete"].items()]
    satisfaction = report["satisfaction"]
    out += [("satisfaction", key, satisfaction[key]) for key in ("rated", "mean", "satisfied", "share_satisfied")]
    for dimension in ("department", "category"):
        for group, figures in satisfaction[f"by_{dimension}"].items():
            out += [(f"satisfaction by {dimension}", f"{group} {key}", figures[key])
                    for key in ("rated", "mean", "share_satisfied")]
    out += [("reopened", key, value) for key, value in report["reopened"].items()]
    out += [("replies", key, value) for key, value in report["replies"].items()]
    out += [("time_to_approve", key, value) for key, value in report["time_to_approve"].items()]
    circulation = report["circulation"]
    out += [("circulation", key, circulation[key]) for key in ("due", "on_time", "rate")]
    for reader, figures in circulation["by_reader"].items():
        out += [("circulation by reader", f"{reader} {key}", value) for key, value in figures.items()]
    out += [("borrowings", key, value) for key, value in report["borrowings"].items()]
    out += [("overdue", item["number"], item["days_overdue"]) for item in report["overdue"]]
    return out


def as_csv(report: dict[str, Any]) -> str:
    text = io.StringIO()
    writer = SheetWriter(text, lineterminator="\n")
    writer.writerow(["section", "key", "value"])
    writer.writerows((section, key, "" if value is None else value) for section, key, value in rows(report))
    return text.getvalue()


def _bars(title: str, counts: dict[str, int]) -> str:
    """A horizontal bar chart as inline SVG: opens in any browser, needs nothing else."""
    if not counts:
        return f"<h3>{html.escape(title)}</h3><p>none</p>"
    top = max(counts.values()) or 1
    height = 26 * len(counts) + 10
    parts = [f'<h3>{html.escape(title)}</h3>',
             f'<svg role="img" aria-label="{html.escape(title)}" width="640" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="13">']
    for i, (label, value) in enumerate(counts.items()):
        width = int(380 * value / top)
        y = 8 + i * 26
        parts.append(f'<text x="0" y="{y + 14}">{html.escape(str(label))}</text>'
                     f'<rect x="230" y="{y}" width="{max(width, 1)}" height="18" fill="#3b6ea5"/>'
                     f'<text x="{236 + width}" y="{y + 14}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _local(moment: str, timezone_name: str) -> str:
    """An ISO instant as the organisation's wall-clock time."""
    return datetime.fromisoformat(moment).astimezone(ZoneInfo(timezone_name)).strftime("%Y-%m-%d %H:%M")


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f}%"


def _hours(value: float | None) -> str:
    return "–" if value is None else str(value)


def _row(heading: str, *cells: str) -> str:
    return f"<tr><th>{heading}</th>{''.join(cells)}</tr>"


def _satisfaction_table(report: dict[str, Any]) -> str:
    parts = []
    for dimension in ("department", "category"):
        groups = report["satisfaction"][f"by_{dimension}"]
        body = "".join(f"<tr><td>{html.escape(str(group))}</td><td>{f['rated']}</td><td>{_hours(f['mean'])}</td>"
                       f"<td>{_pct(f['share_satisfied'])}</td></tr>" for group, f in groups.items())
        parts.append(f"<h3>Satisfaction by {dimension}</h3><table><tr><th>{dimension.title()}</th><th>Rated</th>"
                     f"<th>Mean (1–5)</th><th>Satisfied (4–5)</th></tr>{body}</table>" if groups else "")
    return "".join(parts)


def as_html(report: dict[str, Any], organisation: str = "") -> str:
    t, a, c = report["timeliness"], report["accuracy"], report["archive"]
    s, i, r = report["satisfaction"], report["incomplete"], report["reopened"]
    replies, approve = report["replies"], report["time_to_approve"]
    circulation, borrowed = report["circulation"], report["borrowings"]
    ack, close = report["time_to_acknowledge"], report["time_to_close"]
    overdue_rows = "".join(
        f"<tr><td>{html.escape(o['number'])}</td><td>{html.escape(str(o['department']))}</td>"
        f"<td>{html.escape(str(o['category']))}</td><td>{html.escape(_local(o['deadline'], report['timezone']))}</td>"
        f"<td>{o['days_overdue']}</td><td>{html.escape(o['subject'])}</td></tr>" for o in report["overdue"])
    figures = "\n".join([
        _row("Timeliness rate", f'<td class="k">{_pct(t["rate"])}</td>',
             f"<td>{t['closed_within_deadline']} of {t['closed']} closed letters within their deadline</td>"),
        _row("Classification accuracy", f'<td class="k">{_pct(a["rate"])}</td>',
             f"<td>{a['routed'] - a['rerouted_by_a_person']} of {a['routed']} routed letters"
             " not re-routed by a person</td>"),
        _row("Archive completeness", f'<td class="k">{_pct(c["completeness"])}</td>',
             f"<td>{c['archived']} of {c['due']} letters due for archiving</td>"),
        _row("Time to acknowledge", f"<td>{_hours(ack['mean_hours'])} h mean</td>",
             f"<td>{_hours(ack['p90_hours'])} h at the 90th percentile ({ack['count']} letters)</td>"),
        _row("Time to close", f"<td>{_hours(close['mean_hours'])} h mean</td>",
             f"<td>{_hours(close['p90_hours'])} h at the 90th percentile ({close['count']} letters)</td>"),
        _row("Satisfaction", f'<td class="k">{_pct(s["share_satisfied"])}</td>',
             f"<td>{s['satisfied']} of {s['rated']} rated letters rated 4 or 5; mean {_hours(s['mean'])} of 5</td>"),
        _row("Incomplete submissions", f"<td>{i['requested']}</td>",
             f"<td>senders asked for missing materials: {i['supplemented']} supplemented, {i['withdrawn']} withdrawn, "
             f"{i['proceeded']} gone on without them, {i['awaiting']} awaiting the sender</td>"),
        _row("Reopened", f"<td>{r['letters']}</td>",
             f"<td>letters reopened after a sender's low rating ({r['times']} time(s))</td>"),
        _row("Paper letters", f"<td>{report['paper']}</td>", "<td>by post, courier and at the front desk</td>"),
        _row("Time to approve a reply", f"<td>{_hours(approve['mean_hours'])} h mean</td>",
             f"<td>{_hours(approve['p90_hours'])} h at the 90th percentile; {replies['approved']} of "
             f"{replies['submitted']} submitted drafts approved, {replies['returned']} returned</td>"),
        _row("Circulation on time", f'<td class="k">{_pct(circulation["rate"])}</td>',
             f"<td>{circulation['on_time']} of {circulation['due']} readings signed within their deadline</td>"),
        _row("Borrowings", f"<td>{borrowed['requested']}</td>",
             f"<td>requested: {borrowed['granted']} granted, {borrowed['refused']} refused, {borrowed['returned']} "
             f"returned, {borrowed['expired']} expired, {borrowed['awaiting']} awaiting a decision</td>"),
    ])
    overdue_head = "".join(f"<th>{name}</th>" for name in
                           ("Number", "Department", "Category", "Deadline", "Days overdue", "Subject"))
    by = f" — {html.escape(organisation)}" if organisation else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Correspondence report {html.escape(report['period'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}.k{{font-size:1.6em;font-weight:bold}}</style></head>
<body>
<h1>Correspondence report {html.escape(report['period'])}{by}</h1>
<p>Letters received {html.escape(report['first_day'])} – {html.escape(report['last_day'])}
({html.escape(report['timezone'])}); figures as of {html.escape(_local(report['as_of'], report['timezone']))}.
{report['letters']} letter(s).</p>
<table>
{figures}
</table>
{_bars('Letters by channel', report['volumes']['channel'])}
{_bars('Letters by category', report['volumes']['category'])}
{_bars('Letters by department', report['volumes']['department'])}
{_satisfaction_table(report)}
<h2>Overdue ({len(report['overdue'])})</h2>
<table><tr>{overdue_head}</tr>
{overdue_rows}</table>
</body></html>
"""
