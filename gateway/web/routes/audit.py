"""The audit log for auditors: filters, and the same rows as CSV."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.services.access import Refused
from gateway.web import security
from gateway.web.app import Problem, Req, page
from gateway.web.routes.letters import day_arg

FILTERS = ("since", "until", "actor", "action", "letter")


def routes() -> list[BaseRoute]:
    return [Route("/audit", audit, methods=["GET"]), Route("/audit.csv", audit_csv, methods=["GET"])]


def _filters(req: Req) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FILTERS:
        value = req.arg(name)
        if not value:
            continue
        if name in ("since", "until"):
            out[name] = day_arg(value)
        else:
            out[name] = value
    return out


@page(role="auditor")
def audit(req: Req) -> Response:
    filters = _filters(req)
    try:
        rows = req.web.access.audit(req.who, **filters)
    except Refused as exc:
        raise Problem(403, str(exc)) from None
    shown = {name: req.arg(name) for name in FILTERS if req.arg(name)}
    return req.render("audit.html", rows=rows, filters=shown, limit=500,
                      csv_link="/audit.csv" + ("?" + urlencode(shown) if shown else ""))


@page(role="auditor")
def audit_csv(req: Req) -> Response:
    try:
        text = req.web.access.audit_csv(req.who, address=req.address, **_filters(req))
    except Refused as exc:
        raise Problem(403, str(exc)) from None
    return Response(text.encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": security.content_disposition("audit.csv"),
                             "Cache-Control": "no-store"})
