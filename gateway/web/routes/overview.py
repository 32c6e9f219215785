"""The state of the whole loop: the dashboard, the reports and the operations page.

Charts are drawn here as plain numbers (positions and lengths) that the templates place in inline
SVG: no script and no inline style (the Content-Security-Policy allows neither)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.report import render as report_render
from gateway.report.figures import Period
from gateway.report.figures import compute as report_figures
from gateway.services import dashboard, operations
from gateway.services.queries import outbox_mail
from gateway.spool import Spool
from gateway.web import i18n, security
from gateway.web.app import LARGEST_ID, Problem, Req, page
from gateway.web.i18n import N_, _
from gateway.web.routes.letters import letter_url
from gateway.web.shown import subject as shown_subject

REPORT_ROLES = ("auditor", "leader", "registry")
FORMATS = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
           "json": "application/json; charset=utf-8"}
DONE = {"item": N_("Put back in the spool; the gateway processes it again now."),
        "items": N_("Every quarantined item is back in the spool."),
        "mail": N_("Queued again; the gateway sends it now.")}
BAR_SPAN = 360  # SVG units of the longest bar


def routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", dashboard_page, methods=["GET"]),
        Route("/reports", reports, methods=["GET"]),
        Route("/reports/download", report_download, methods=["GET"]),
        Route("/operations", operations_page, methods=["GET"]),
        Route("/operations/quarantine/retry", quarantine_retry, methods=["POST"]),
        Route("/operations/outbox/retry", outbox_retry, methods=["POST"]),
    ]


# -- charts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    length: float  # SVG units
    url: str | None = None


@dataclass(frozen=True)
class Segment:
    status: str
    value: int
    x: float
    length: float
    url: str | None


def bars(items: list[tuple[str, int, str | None]]) -> list[Bar]:
    top = max((v for _, v, _ in items), default=0) or 1
    return [Bar(label, value, round(BAR_SPAN * value / top, 1), url) for label, value, url in items]


def stacked(departments: list[dashboard.DepartmentFigures]) -> list[tuple[dashboard.DepartmentFigures,
                                                                            list[Segment]]]:
    """Each department's open letters as one bar, a segment per state."""
    top = max((d.open.count for d in departments), default=0) or 1
    out = []
    for dep in departments:
        x = 0.0
        segments = []
        for status, figure in dep.by_status.items():
            length = round(BAR_SPAN * figure.count / top, 1)
            segments.append(Segment(status, figure.count, x, length, figure.url))
            x += length
        out.append((dep, segments))
    return out


def gauge(rate: float | None) -> str:
    """The SVG path of a half-circle gauge filled to `rate` (0..1), centre (60, 60), radius 50."""
    share = min(max(rate or 0.0, 0.0), 1.0)
    angle = math.pi * (1 - share)
    x, y = 60 + 50 * math.cos(angle), 60 - 50 * math.sin(angle)
    return f"M 10 60 A 50 50 0 0 1 {x:.2f} {y:.2f}" if share > 0 else ""


# -- the dashboard ------------------------------------------------------------------------------
@page()
def dashboard_page(req: Req) -> Response:
    web = req.web
    board = dashboard.compute(web.config, web.registry, web.access, req.who)
    intake = bars([(i18n.label("channel", c), f.count, f.url) for c, f in board.intake.items()])
    return req.render("overview/dashboard.html", board=board, intake=intake, stacked=stacked(board.departments),
                      gauge=gauge(board.timeliness.rate), span=BAR_SPAN)


# -- reports --------------------------------------------------------------------------------------
def _may_report(req: Req) -> None:
    if not req.who.has(*REPORT_ROLES):
        raise Problem(403, _("This page is for people with the role: %(role)s.")
                      % {"role": ", ".join(i18n.label("role", r) for r in REPORT_ROLES)})


def _periods(today: date) -> list[str]:
    """The current and past eleven months, and the current and past three quarters."""
    months = []
    year, month = today.year, today.month
    for _n in range(12):
        months.append(f"{year}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    quarters = []
    year, quarter = today.year, (today.month - 1) // 3 + 1
    for _n in range(4):
        quarters.append(f"{year}-Q{quarter}")
        year, quarter = (year, quarter - 1) if quarter > 1 else (year - 1, 4)
    return months + quarters


def _report(req: Req) -> tuple[Period, dict[str, Any]]:
    tz = req.web.config.model.gateway.timezone
    today = datetime.now(timezone.utc).astimezone(req.web.tz).date()
    name = req.arg("period") or f"{today.year}-{today.month:02d}"
    try:
        period = Period.parse(name, tz)
    except ValueError:
        raise Problem(400, _("%(value)s is neither a month (YYYY-MM) nor a quarter (YYYY-Qn).")
                      % {"value": name}) from None
    figures = report_figures(req.web.registry, period, tz)
    reads = req.who.has("registry", "leader")
    for item in figures["overdue"]:
        # Auditors: figures, not letter content; an archived letter's content only through a borrowing.
        if not reads or item["status"] == "archived":
            item["subject"] = ""
    return period, figures


@page()
def reports(req: Req) -> Response:
    _may_report(req)
    period, figures = _report(req)
    # A subject the gateway wrote (a fax's, a paper letter's) in the page's language; the downloads
    # keep the register's words. Only a subject the list shows as the letter's own is reworded.
    letters = req.web.registry.letters_numbered([o["number"] for o in figures["overdue"] if o["subject"]])
    for item in figures["overdue"]:
        letter = letters.get(item["number"])
        if letter is not None and item["subject"] == letter.subject:
            item["subject"] = shown_subject(letter)
    departments = req.web.config.departments
    volumes = figures["volumes"]
    charts = [
        (_("Letters by channel"), bars([(i18n.label("channel", k), v, None) for k, v in volumes["channel"].items()])),
        (_("Letters by category"), bars([(i18n.label("category", k) if k != "uncategorised" else _("uncategorised"),
                                          v, None) for k, v in volumes["category"].items()])),
        (_("Letters by department"), bars([(departments[k].name if k in departments else
                                            (k if k != "-" else _("no department")), v, None)
                                           for k, v in volumes["department"].items()])),
    ]
    today = datetime.now(timezone.utc).astimezone(req.web.tz).date()
    as_of = datetime.fromisoformat(figures["as_of"])
    return req.render("overview/reports.html", period=period, figures=figures, charts=charts, span=BAR_SPAN,
                      periods=_periods(today), gauge=gauge(figures["timeliness"]["rate"]), as_of=as_of,
                      departments=departments, formats=tuple(FORMATS), letter_url=letter_url,
                      deadline=lambda text: req.web.when(datetime.fromisoformat(text)))


@page()
def report_download(req: Req) -> Response:
    _may_report(req)
    fmt = req.arg("format") or "html"
    if fmt not in FORMATS:
        raise Problem(404)
    period, figures = _report(req)
    text = {"json": report_render.as_json, "csv": report_render.as_csv,
            "html": lambda r: report_render.as_html(r, req.web.config.model.outbound.from_name)}[fmt](figures)
    req.web.access.record(req.who, "export", address=req.address, subject=f"report {period.name} ({fmt})",
                          details={"report": period.name, "format": fmt})
    data = text.encode("utf-8-sig" if fmt == "csv" else "utf-8")
    headers = {"Content-Disposition": security.content_disposition(f"report-{period.name}.{fmt}"),
               "Cache-Control": "no-store"}
    if fmt == "html":  # a file to keep; its own inline style only, nothing runs in our origin
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    return Response(data, media_type=FORMATS[fmt], headers=headers)


# -- operations -----------------------------------------------------------------------------------
def _spool(req: Req) -> Spool:
    cfg = req.web.config
    return Spool(cfg.spool_dir, cfg.message_dir, max_attempts=cfg.model.spool.max_attempts)


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _wake(req: Req) -> None:
    """Tell a running daemon there is work, as the command line does (harmless if none runs)."""
    from gateway.daemon.events import DaemonLink

    cfg = req.web.config
    link = DaemonLink(cfg.endpoint(cfg.model.daemon.wakeup_endpoint))
    try:
        link.wake()
    finally:
        link.close()


@page(role="admin")
def operations_page(req: Req) -> Response:
    web = req.web
    spool = _spool(req)
    state = operations.overview(web.config, spool, web.registry)
    # Worded by the template in the reader's language; a failing folder's time as the page shows times.
    needs = [operations.Attention(item.kind, {**item.values, "since": _moment(item.values["since"])})
             if item.kind == "imap-failing"
             else operations.Attention(item.kind, {**item.values, "at": _moment(item.values["at"])})
             if item.kind == "reload-refused" else item
             for item in [*operations.attention(web.config, state, spool.free_bytes()),
                          *operations.served_configuration_attention(web.config)]]
    for folder in state["imap"]:
        for key in ("last_poll_at", "last_error_at"):
            folder[key] = _moment(folder[key])
    quarantined = [{**operations.quarantine_row(item), "quarantined_at": _moment(item.quarantined_at)}
                   for item in spool.quarantined()]
    dead, numbers = outbox_mail(web.registry, status="dead", limit=500)
    done = req.done()
    return req.render("overview/operations.html", state=state, needs=needs, quarantined=quarantined, dead=dead,
                      numbers=numbers, message=i18n.gettext(DONE[done]) if done in DONE else "",
                      letter_url=letter_url)


@page(role="admin")
def quarantine_retry(req: Req) -> Response:
    every = req.field("all") == "1"
    item = req.field("item")
    if not every and not item:
        raise Problem(400, _("Name an item to retry."))
    done = operations.retry_quarantined(_spool(req), None if every else [item])
    if not every and not done[0].found:
        raise Problem(404, _("No quarantined item %(item)s.") % {"item": item})
    for retried in done:
        req.web.access.record(req.who, "quarantine-retry", address=req.address, subject=retried.item_id)
    _wake(req)
    return RedirectResponse(req.done_url("/operations", "items" if every else "item"), status_code=303)


@page(role="admin")
def outbox_retry(req: Req) -> Response:
    try:
        mail_id = int(req.field("mail"))
    except ValueError:
        raise Problem(400, _("Name a mail to send again.")) from None
    if not 0 < mail_id <= LARGEST_ID:
        raise Problem(404)
    try:
        mail = operations.requeue_mail(req.web.registry, mail_id, req.who.login)
    except LookupError:
        raise Problem(404) from None
    except ValueError:
        raise Problem(409, _("Mail %(id)s is not undeliverable: nothing to send again.") % {"id": mail_id}) from None
    req.web.access.record(req.who, "mail-requeued", address=req.address, letter_id=mail.letter_id,
                          subject=f"{mail.kind} → {mail.recipient}", details={"outbox": mail_id})
    _wake(req)
    return RedirectResponse(req.done_url("/operations", "mail"), status_code=303)
