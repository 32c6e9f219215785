"""Borrowing from the archive on the web: the request on an archived letter's page, the page of
borrowings (awaiting my approval, mine, and for the registry office and auditors the whole register),
grant, refuse and return (gateway.services.borrowing decides who may)."""
from __future__ import annotations

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.access import Forbidden, Refused
from gateway.services.borrowing import INPUT_REFUSALS, Borrowings
from gateway.web import i18n
from gateway.web.app import Problem, Req, page
from gateway.web.i18n import N_, _
from gateway.web.routes.letters import letter_step, letter_url

REFUSAL = {
    "borrow-person": N_("only a person of the register borrows"),
    "need-reason": N_("give the reason for reading it"),
    "reason-too-long": N_("a reason of at most %(limit)s characters"),
    "comment-too-long": N_("a comment of at most %(limit)s characters"),
    "bad-days": N_("a period of 1 to %(limit)s days"),
    "borrow-state": N_("not possible for %(number)s now (not archived, a request of yours is open already, or "
                       "decided already)"),
    "forbidden-borrow-head": N_("only the head of its department approves reading %(number)s"),
    "forbidden-borrow-leader": N_("only a leader in charge of its department approves reading %(number)s"),
    "own-request": N_("nobody approves their own request"),
    "borrow-settled": N_("the request to read %(number)s was settled already: %(status)s"),
}
STATUS = {"requested": N_("awaiting approval"), "granted": N_("lent"), "refused": N_("not granted"),
          "returned": N_("given back"), "expired": N_("period over")}
# A borrowing's status in a refusal, worded as the borrowing page words it.
i18n.KINDS["borrow_status"] = STATUS
i18n.PARAM_KINDS["borrow-settled"] = {"status": "borrow_status"}


def routes() -> list[BaseRoute]:
    return [
        Route("/borrowing", borrowings, methods=["GET"]),
        Route("/letters/{number}/borrow", borrow, methods=["POST"]),
        Route("/borrowing/{id:int}/decide", decide, methods=["POST"]),
        Route("/borrowing/{id:int}/return", give_back, methods=["POST"]),
    ]


def service(req: Req) -> Borrowings:
    return Borrowings(req.web.config, req.web.registry, req.web.access)


def _page(req: Req, *, status: int = 200, error: str = "", message: str = "") -> Response:
    books = service(req)
    who = req.who
    return req.render("borrowing/page.html", status, awaiting=books.awaiting(who), mine=books.mine(who),
                      register=books.register(who) if books.may_see_register(who) else None,
                      now=req.web.access.clock(), letter_url=letter_url, error=error, message=message,
                      status_label=lambda s: i18n.gettext(STATUS[s]) if s in STATUS else s,
                      departments=req.web.config.departments)


@page()
def borrowings(req: Req) -> Response:
    done = req.done()
    messages = {"granted": _("Granted."), "refused": _("Refused."), "returned": _("Returned.")}
    return _page(req, message=messages.get(done, ""))


@page()
def borrow(req: Req) -> Response:
    number = req.request.path_params["number"]
    try:
        days = int(req.field("days") or "0")
    except ValueError:
        days = 0
    refused = letter_step(req, number, "borrow", lambda: service(req).request(
        req.who, number, reason=req.field("reason"), days=days, now=req.web.access.clock()),
        input_refusals=INPUT_REFUSALS, words=REFUSAL, kept={"reason": req.field("reason"), "days": req.field("days")})
    if isinstance(refused, Response):
        return refused
    return RedirectResponse(req.done_url(letter_url(number), "borrow"), status_code=303)


def _step(req: Req, action: str) -> Response:
    borrowing_id = req.request.path_params["id"]
    books = service(req)
    now = req.web.access.clock()
    try:
        if action == "return":
            books.give_back(req.who, borrowing_id, now=now)
        else:
            books.decide(req.who, borrowing_id, grant=action == "granted", comment=req.field("comment"), now=now)
    except LookupError:
        raise Problem(404) from None
    except Refused as exc:
        return _page(req, status=403 if isinstance(exc, Forbidden) else 400 if exc.key in INPUT_REFUSALS else 409,
                     error=_("Not done: %(reason)s") % {"reason": i18n.refusal(exc, REFUSAL)})
    return RedirectResponse(req.done_url("/borrowing", "returned" if action == "return" else action), status_code=303)


@page()
def decide(req: Req) -> Response:
    decision = req.field("decision")
    if decision not in ("grant", "refuse"):
        raise Problem(400, _("Choose to grant or to refuse."))
    return _step(req, "granted" if decision == "grant" else "refused")


@page()
def give_back(req: Req) -> Response:
    return _step(req, "return")
