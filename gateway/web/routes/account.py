"""A person's own account: who the register takes them for, their password, and the browsers they
are signed in on. People decides and audits; this page asks."""
from __future__ import annotations

import math

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.people import MAX_PASSWORD, MIN_PASSWORD, PasswordRefused, SignInRefused, Throttled
from gateway.web import i18n
from gateway.web.app import Req, page
from gateway.web.i18n import N_, _

DONE = {"password": N_("Password changed. Your other browsers are signed out."),
        "elsewhere": N_("Your other browsers are signed out.")}


def routes() -> list[BaseRoute]:
    return [
        Route("/me", account, methods=["GET"]),
        Route("/me/password", change_password, methods=["POST"]),
        Route("/me/sessions/end", sign_out_elsewhere, methods=["POST"]),
    ]


def _page(req: Req, *, status: int = 200, error: str = "", message: str = "") -> Response:
    people = req.web.people
    record = people.get(req.who.login)
    return req.render("account.html", status, record=record, error=error, message=message,
                      browsers=people.browsers(req.session) if req.session else [],
                      departments=req.web.config.departments)


@page()
def account(req: Req) -> Response:
    done = req.arg("done")
    return _page(req, message=i18n.gettext(DONE[done]) if done in DONE else "")


def password_refusal(refused: PasswordRefused) -> str:
    """Why a password was not taken, in the page's language."""
    return {
        "short": _("A password needs at least %(n)d characters.") % {"n": MIN_PASSWORD},
        "long": _("A password has at most %(n)d characters.") % {"n": MAX_PASSWORD},
        "differ": _("The new password and its repetition differ."),
        "same": _("The new password is the one you have."),
        "none": _("You have no password to change: you sign in through single sign-on. An administrator can set one."),
    }.get(refused.reason, str(refused))


@page()
def change_password(req: Req) -> Response:
    assert req.session is not None  # page() lets only signed-in people through
    present, new, repeated = req.secret("present"), req.secret("password"), req.secret("repeated")
    if not present or not new:
        return _page(req, status=400, error=_("Give your present password and the new one."))
    try:
        req.web.people.change_own_password(req.session, present, new, repeated, address=req.address)
    except Throttled as exc:
        minutes = max(1, math.ceil(exc.retry_after / 60))
        return _page(req, status=429, error=i18n.ngettext(
            "Too many failed attempts; try again in %(n)d minute.",
            "Too many failed attempts; try again in %(n)d minutes.", minutes) % {"n": minutes})
    except SignInRefused:
        return _page(req, status=400, error=_("The present password is wrong."))
    except PasswordRefused as refused:
        return _page(req, status=400, error=password_refusal(refused))
    return RedirectResponse("/me?done=password", status_code=303)


@page()
def sign_out_elsewhere(req: Req) -> Response:
    assert req.session is not None
    req.web.people.sign_out_elsewhere(req.session, address=req.address)
    return RedirectResponse("/me?done=elsewhere", status_code=303)
