"""The public rating page: a letter's sender rates its handling 1 to 5 through the one-time link in
the result mail. No sign-in: the signed link is the key, the form carries a double-submit token
(cookie and field) against cross-site posting, and visits are limited per client address."""
from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.services.satisfaction import AlreadyRated, BadToken, ExpiredToken, RatingPage, Satisfaction, Throttled
from gateway.web import security
from gateway.web.app import Req, page


def routes() -> list[BaseRoute]:
    return [
        Route("/rate/{token}", form, methods=["GET"]),
        Route("/rate/{token}", rate, methods=["POST"]),
    ]


def _page(req: Req, state: str, status: int = 200, *, found: RatingPage | None = None, score: int = 0,
          comment: str = "", reopened: bool = False) -> Response:
    token = req.request.cookies.get(security.PRE_CSRF_COOKIE) or security.new_token()
    response = req.render("rate/page.html", status, state=state, found=found, score=score, comment=comment,
                          reopened=reopened, form_token=token)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the link is the key: never pass it on
    if state == "form":
        security.set_cookie(response, security.PRE_CSRF_COOKIE, token, secure=req.web.secure)
    return response


def _service(req: Req) -> Satisfaction | Response:
    service = Satisfaction(req.web.config, req.web.registry)
    try:
        service.visit(req.address)
    except Throttled:
        return _page(req, "throttled", 429)
    return service


def _open(req: Req, service: Satisfaction) -> RatingPage | Response:
    try:
        return service.page(req.request.path_params["token"])
    except ExpiredToken:
        return _page(req, "expired", 410)
    except BadToken:
        return _page(req, "invalid", 404)


@page(public=True)
def form(req: Req) -> Response:
    service = _service(req)
    if isinstance(service, Response):
        return service
    found = _open(req, service)
    if isinstance(found, Response):
        return found
    if found.rating is not None:
        return _page(req, "already", found=found)
    return _page(req, "form", found=found)


@page(public=True)
def rate(req: Req) -> Response:
    if not security.tokens_match(req.request.cookies.get(security.PRE_CSRF_COOKIE), req.field(security.CSRF_FIELD)):
        return _page(req, "stale", 403)
    service = _service(req)
    if isinstance(service, Response):
        return service
    found = _open(req, service)
    if isinstance(found, Response):
        return found
    comment = req.field("comment")  # its length as the form counts it: Satisfaction._rate
    try:
        score = int(req.field("score"))
    except ValueError:
        score = 0
    if score not in range(1, 6):
        return _page(req, "form", 400, found=found, comment=comment)
    try:
        _rating, reopened = service.by_link(req.request.path_params["token"], score, comment, address=req.address)
    except AlreadyRated:
        return _page(req, "already", 409, found=found)
    return _page(req, "thanks", found=found, score=score, reopened=reopened)
