"""Circulation on the web: start it on the letter page, sign it when it is your turn, and the
"to read" queue (gateway.services.circulation decides who may and whose turn it is)."""
from __future__ import annotations

from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.circulation import INPUT_REFUSALS, Circulations
from gateway.services.borrowing import Borrowings
from gateway.services.people import PersonRecord, Principal
from gateway.web.app import Req, Web, page
from gateway.web.i18n import N_
from gateway.web.routes.letters import letter_step, letter_url

# Why a circulation step was refused, in the page's language (the service's words are English).
REFUSAL = {
    "forbidden-circulate": N_("only the registry office and leaders start a circulation"),
    "circulate-confidential": N_("%(number)s is confidential: only one allowed its content (by a grant) may "
                                 "circulate it"),
    "need-readers": N_("name the readers in order"),
    "too-many-readers": N_("at most %(limit)s readers"),
    "unknown-reader": N_("no person or department %(reader)s"),
    "reader-twice": N_("%(reader)s is named twice: each reader signs once"),
    "reader-confidential": N_("the letter is confidential and %(reader)s may not read it: circulate it only to "
                              "people allowed its content"),
    "circulation-state": N_("%(number)s cannot be circulated now (closed, or being circulated already)"),
    "no-circulation": N_("%(number)s is not being circulated"),
    "not-a-reader": N_("only the readers it was circulated to sign it, in order; it is %(reader)s's turn and it "
                       "cannot be passed on to anyone else"),
    "not-your-turn": N_("it is %(reader)s's turn: it comes to you once they have signed"),
    "signed-already": N_("you have signed it already"),
    "circulation-moved": N_("the circulation moved on since this page was opened: nothing was signed; look at it "
                            "again"),
    "instruction-too-long": N_("an instruction of at most %(limit)s characters"),
    "circulation-archived": N_("%(number)s was archived: its circulation is signed no more"),
}


def routes() -> list[BaseRoute]:
    return [
        Route("/to-read", to_read, methods=["GET"]),
        Route("/letters/{number}/circulate", circulate, methods=["POST"]),
        Route("/letters/{number}/sign", sign, methods=["POST"]),
    ]


def template_globals() -> dict[str, Any]:
    """What the sidebar asks of this module: the counts beside "To read" and "Borrowing"; and the
    leaders the circulate form names."""
    return {"to_read_count": to_read_count, "borrowings_waiting": borrowings_waiting,
            "circulation_leaders": circulation_leaders}


def to_read_count(web: Web, who: Principal) -> int:
    return len(Circulations(web.config, web.registry, web.access).to_read(who))


def borrowings_waiting(web: Web, who: Principal) -> int:
    return len(Borrowings(web.config, web.registry, web.access).awaiting(who))


def circulation_leaders(web: Web) -> list[PersonRecord]:
    """The leaders who can be named as readers (not disabled), by name: the circulate form asks for
    sign-in names, which the one circulating need not know by heart."""
    return sorted((p for p in web.people.list() if "leader" in p.roles and not p.disabled), key=lambda p: p.name)


def service(req: Req) -> Circulations:
    return Circulations(req.web.config, req.web.registry, req.web.access)


@page()
def to_read(req: Req) -> Response:
    items = service(req).to_read(req.who)
    now = req.web.access.clock()
    # A subject is shown only where the content is the person's: the rule of every list of letters
    # (the to-read list itself leaves out a letter archived while it circulated).
    content = req.web.access.content_ids(req.who, [letter for letter, _step in items], now=now)
    return req.render("circulation/to_read.html", items=items, now=now, letter_url=letter_url,
                      departments=req.web.config.departments, content=content)


@page()
def circulate(req: Req) -> Response:
    number = req.request.path_params["number"]
    names = [line for value in req.fields("readers") for line in value.replace(",", "\n").splitlines()]
    refused = letter_step(req, number, "circulate", lambda: service(req).start(
        req.who, number, names, now=req.web.access.clock()), input_refusals=INPUT_REFUSALS, words=REFUSAL,
        kept={"readers": "\n".join(req.fields("readers")).strip()})
    if isinstance(refused, Response):
        return refused
    return RedirectResponse(req.done_url(letter_url(number), "circulate", anchor="circulation"),
                            status_code=303)


@page()
def sign(req: Req) -> Response:
    number = req.request.path_params["number"]
    refused = letter_step(req, number, "sign", lambda: service(req).sign(
        req.who, number, req.field("instruction"), now=req.web.access.clock(),
        seen=req.field("step") if "step" in req.form else None),
        input_refusals=INPUT_REFUSALS, words=REFUSAL, kept={"instruction": req.field("instruction")})
    if isinstance(refused, Response):
        return refused
    return RedirectResponse(req.done_url(letter_url(number), "sign", anchor="circulation"), status_code=303)
