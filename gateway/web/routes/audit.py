"""The audit log for auditors: filters, and the same rows as CSV."""
from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.services.access import Refused
from gateway.web import i18n, security
from gateway.web.app import Problem, Req, page
from gateway.web.i18n import _
from gateway.web.routes.letters import day_arg, page_number

FILTERS = ("since", "until", "actor", "action", "letter")
# What the audit log records (the filter offers their labels; the rows' codes are these).
ACTIONS = ("read", "download", "preview", "original", "export", "audit-export", "search", "sign-in",
           "sign-in-failed", "sign-in-throttled", "sign-out", "person-added", "person-changed", "password-set",
           "password-changed", "signed-out-elsewhere", "two-step-on", "two-step-off", "two-step-reset",
           "recovery-codes-renewed", "password-reset-asked", "password-reset", "sign-in-awaiting-code",
           "person-disabled", "person-enabled", "grant", "grant-revoked", "quarantine-retry", "mail-requeued",
           "rate-page")
PER_PAGE = 100
MAX_PAGES = 200  # beyond, the CSV export has them all


def routes() -> list[BaseRoute]:
    return [Route("/audit", audit, methods=["GET"]), Route("/audit.csv", audit_csv, methods=["GET"])]


def _filters(req: Req) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FILTERS:
        value = req.arg(name)
        if not value:
            continue
        if name in ("since", "until"):
            out[name] = day_arg(value, _("Recorded from") if name == "since" else _("Recorded until"))
        else:
            out[name] = value
    return out


@page(role="auditor")
def audit(req: Req) -> Response:
    filters = _filters(req)
    number = min(page_number(req), MAX_PAGES)
    try:
        # The rows up to this page's and one more, to know whether a next page exists.
        rows = req.web.access.audit(req.who, limit=number * PER_PAGE + 1, **filters)
    except Refused as exc:
        raise Problem(403, str(exc)) from None
    more = len(rows) > number * PER_PAGE
    rows = rows[(number - 1) * PER_PAGE:number * PER_PAGE]
    shown = {name: req.arg(name) for name in FILTERS if req.arg(name)}

    def link(page: int) -> str:
        params = {**shown, **({"page": str(page)} if page > 1 else {})}
        return "/audit" + ("?" + urlencode(params) if params else "")

    known = set(ACTIONS) | ({shown["action"]} if shown.get("action") else set())
    actions = sorted(known, key=lambda a: i18n.label("event", a))
    return req.render("audit.html", rows=rows, filters=shown, page=number, more=more and number < MAX_PAGES,
                      link=link, actions=actions, csv_link="/audit.csv" + ("?" + urlencode(shown) if shown else ""))


@page(role="auditor")
def audit_csv(req: Req) -> Response:
    try:
        text = req.web.access.audit_csv(req.who, address=req.address, **_filters(req))
    except Refused as exc:
        raise Problem(403, str(exc)) from None
    # Streamed: every row, however many, without holding them all.
    body = itertools.chain(("\ufeff",), text)  # the byte order mark tells spreadsheets it is UTF-8
    return StreamingResponse((piece.encode("utf-8") for piece in body), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": security.content_disposition("audit.csv"),
                                      "Cache-Control": "no-store"})
