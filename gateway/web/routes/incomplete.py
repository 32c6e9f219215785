"""Incomplete submissions on the letter page: ask the sender for what is missing, and withdraw a
letter whose sender never sent it or go on without it (gateway.services.incomplete decides who may)."""
from __future__ import annotations

from collections.abc import Callable

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.incomplete import INPUT_REFUSALS, Incomplete
from gateway.web.app import Req, page
from gateway.web.routes.letters import letter_step, letter_url


def routes() -> list[BaseRoute]:
    return [
        Route("/letters/{number}/incomplete", mark, methods=["POST"]),
        Route("/letters/{number}/withdraw", withdraw, methods=["POST"]),
        Route("/letters/{number}/proceed", proceed, methods=["POST"]),
    ]


@page()
def mark(req: Req) -> Response:
    number = req.request.path_params["number"]
    missing = [line for field in req.fields("missing") for line in field.splitlines()]
    refused = letter_step(req, number, "incomplete", lambda: Incomplete(req.web.config, req.web.registry).mark(
        req.who, number, missing=missing, by=req.field("by")), input_refusals=INPUT_REFUSALS,
        kept={"missing": "\n".join(missing), "by": req.field("by")})
    if isinstance(refused, Response):
        return refused
    return RedirectResponse(req.done_url(letter_url(number), "incomplete"), status_code=303)


@page()
def withdraw(req: Req) -> Response:
    return _settled(req, "withdraw", Incomplete.withdraw)


@page()
def proceed(req: Req) -> Response:
    return _settled(req, "proceed", Incomplete.proceed)


def _settled(req: Req, step: str, settle: Callable[..., object]) -> Response:
    """Ending a wait for the sender's materials (withdrawn, or going on without them), with the remark given."""
    number = req.request.path_params["number"]
    refused = letter_step(req, number, step, lambda: settle(Incomplete(req.web.config, req.web.registry), req.who,
                                                            number, reason=req.field("text")),
                          input_refusals=INPUT_REFUSALS, kept={"text": req.field("text")})
    if isinstance(refused, Response):
        return refused
    return RedirectResponse(req.done_url(letter_url(number), step), status_code=303)
