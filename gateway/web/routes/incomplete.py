"""Incomplete submissions on the letter page: ask the sender for what is missing, and withdraw a
letter whose sender never sent it (gateway.services.incomplete decides who may)."""
from __future__ import annotations

from datetime import date

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.access import Forbidden, Refused
from gateway.services.incomplete import INPUT_REFUSALS, Incomplete
from gateway.web import i18n
from gateway.web.app import Problem, Req, page
from gateway.web.i18n import _
from gateway.web.routes.letters import _letter_page, letter_url


def routes() -> list[BaseRoute]:
    return [
        Route("/letters/{number}/incomplete", mark, methods=["POST"]),
        Route("/letters/{number}/withdraw", withdraw, methods=["POST"]),
    ]


def _refused(req: Req, number: str, exc: Refused, action: str) -> Response:
    view = req.web.access.letter(req.who, number, address=req.address, audit=False)
    if view is None:
        raise Problem(404)
    status = 403 if isinstance(exc, Forbidden) else 400 if exc.key in INPUT_REFUSALS else 409
    return _letter_page(req, view, status=status, failed_action=action,
                        error=_("Not done: %(reason)s") % {"reason": i18n.refusal(exc)})


@page()
def mark(req: Req) -> Response:
    number = req.request.path_params["number"]
    try:
        by: date | None = date.fromisoformat(req.field("by")) if req.field("by") else None
    except ValueError:
        by = None
    missing = [line for field in req.fields("missing") for line in field.splitlines()]
    try:
        Incomplete(req.web.config, req.web.registry).mark(req.who, number, missing=missing, by=by)
    except LookupError:
        raise Problem(404) from None
    except Refused as exc:
        return _refused(req, number, exc, "incomplete")
    return RedirectResponse(f"{letter_url(number)}?done=incomplete", status_code=303)


@page()
def withdraw(req: Req) -> Response:
    number = req.request.path_params["number"]
    try:
        Incomplete(req.web.config, req.web.registry).withdraw(req.who, number, reason=req.field("text"))
    except LookupError:
        raise Problem(404) from None
    except Refused as exc:
        return _refused(req, number, exc, "withdraw")
    return RedirectResponse(f"{letter_url(number)}?done=withdraw", status_code=303)
