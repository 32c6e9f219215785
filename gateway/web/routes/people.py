"""People, for administrators: the list, adding, changing roles, departments and addresses,
disabling and enabling, setting a password. People decides and audits; this page asks."""
from __future__ import annotations

import re
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.people import ROLES, PasswordRefused, PersonRecord
from gateway.web import i18n
from gateway.web.app import Problem, Req, page
from gateway.web.routes.account import password_refusal
from gateway.web.i18n import N_, _

DONE = {"added": N_("Person added."), "saved": N_("Changes saved."), "password": N_("Password set."),
        "disabled": N_("Disabled: signed out everywhere."), "enabled": N_("Enabled."),
        "two-step-off": N_("Two-step sign-in turned off: signed out everywhere.")}


def routes() -> list[BaseRoute]:
    return [
        Route("/people", people_list, methods=["GET"]),
        Route("/people", add, methods=["POST"]),
        Route("/people/new", new, methods=["GET"]),
        Route("/people/{login}", person, methods=["GET"]),
        Route("/people/{login}", update, methods=["POST"]),
        Route("/people/{login}/password", password, methods=["POST"]),
        Route("/people/{login}/disabled", disabled, methods=["POST"]),
        Route("/people/{login}/two-step", two_step_off, methods=["POST"]),
    ]


def person_url(login: str) -> str:
    return "/people/" + quote(login, safe="")


def _split(text: str) -> list[str]:
    return [part for part in re.split(r"[\s,;，；]+", text) if part]


def _form(req: Req, record: PersonRecord | None, *, status: int = 200, error: str = "",
          values: dict[str, object] | None = None) -> Response:
    current = values or ({"login": record.login, "name": record.name, "emails": ", ".join(record.emails),
                          "departments": record.departments, "roles": record.roles,
                          "language": record.language or ""} if record else
                         {"login": "", "name": "", "emails": "", "departments": [], "roles": [], "language": ""})
    done = req.done()
    return req.render("person.html", status, record=record, values=current, error=error, roles=ROLES,
                      departments=req.web.config.departments,
                      message=i18n.gettext(DONE[done]) if done in DONE else "",
                      action=person_url(record.login) if record else "/people")


def _submitted(req: Req) -> dict[str, object]:
    return {"login": req.field("login"), "name": req.field("name"), "emails": req.field("emails"),
            "departments": req.fields("departments"), "roles": req.fields("roles"),
            "language": req.field("language")}


@page(role="admin")
def people_list(req: Req) -> Response:
    people = req.web.people

    def required(record: PersonRecord) -> bool:
        principal = people.principal(record.login)
        return principal is not None and people.two_step_required(principal)

    return req.render("people.html", people=people.list(), person_url=person_url,
                      departments=req.web.config.departments, required=required)


@page(role="admin")
def new(req: Req) -> Response:
    return _form(req, None)


@page(role="admin")
def add(req: Req) -> Response:
    values = _submitted(req)
    try:
        record = req.web.people.add(
            req.field("login"), name=req.field("name"), emails=_split(req.field("emails")),
            departments=req.fields("departments"), roles=req.fields("roles"),
            password=req.secret("password") or None, language=req.field("language") or None,
            actor=req.who.login, address=req.address)
    except PasswordRefused as refused:
        return _form(req, None, status=400, error=password_refusal(refused), values=values)
    except ValueError as exc:
        return _form(req, None, status=400, error=str(exc), values=values)
    return RedirectResponse(req.done_url(person_url(record.login), "added"), status_code=303)


def _record(req: Req) -> PersonRecord:
    record = req.web.people.get(req.request.path_params["login"])
    if record is None:
        raise Problem(404)
    return record


@page(role="admin")
def person(req: Req) -> Response:
    return _form(req, _record(req))


@page(role="admin")
def update(req: Req) -> Response:
    record = _record(req)
    values = {**_submitted(req), "login": record.login}
    try:
        req.web.people.update(record.login, name=req.field("name"), emails=_split(req.field("emails")),
                              departments=req.fields("departments"), roles=req.fields("roles"),
                              language=req.field("language"), actor=req.who.login, address=req.address)
    except ValueError as exc:
        return _form(req, record, status=400, error=str(exc), values=values)
    return RedirectResponse(req.done_url(person_url(record.login), "saved"), status_code=303)


@page(role="admin")
def password(req: Req) -> Response:
    record = _record(req)
    try:
        req.web.people.set_password(record.login, req.secret("password"), actor=req.who.login,
                                    address=req.address)
    except PasswordRefused as refused:
        return _form(req, record, status=400, error=password_refusal(refused))
    except ValueError as exc:
        return _form(req, record, status=400, error=str(exc))
    return RedirectResponse(req.done_url(person_url(record.login), "password"), status_code=303)


@page(role="admin")
def disabled(req: Req) -> Response:
    record = _record(req)
    disable = req.field("disabled") == "1"
    if disable and record.login == req.who.login:
        return _form(req, record, status=409, error=_("You cannot disable yourself."))
    req.web.people.set_disabled(record.login, disable, actor=req.who.login, address=req.address)
    return RedirectResponse(req.done_url(person_url(record.login), "disabled" if disable else "enabled"),
                            status_code=303)


@page(role="admin")
def two_step_off(req: Req) -> Response:
    """For a lost phone: the person signs in with their password alone until they set it up again."""
    record = _record(req)
    if record.login == req.who.login:
        return _form(req, record, status=409, error=_(
            "You cannot turn off your own two-step sign-in here; use My account, or ask another administrator."))
    try:
        req.web.people.reset_two_step(record.login, actor=req.who.login, address=req.address)
    except ValueError:
        return _form(req, record, status=409, error=_("%(login)s has no two-step sign-in.") % {"login": record.login})
    return RedirectResponse(req.done_url(person_url(record.login), "two-step-off"), status_code=303)
