"""A person's own account: who the register takes them for, their password, and the browsers they
are signed in on. People decides and audits; this page asks."""
from __future__ import annotations

import math
import re
from urllib.parse import parse_qs, urlsplit

from markupsafe import Markup

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.people import (MAX_PASSWORD, MIN_PASSWORD, PasswordRefused, SignInRefused, Throttled,
                                     TwoStepRefused)
from gateway.web import i18n
from gateway.web.app import Req, page
from gateway.web.i18n import N_, _

DONE = {"password": N_("Password changed. Your other browsers are signed out."),
        "elsewhere": N_("Your other browsers are signed out."),
        "two-step-off": N_("Two-step sign-in is off. You sign in with your password alone.")}


def routes() -> list[BaseRoute]:
    return [
        Route("/me", account, methods=["GET"]),
        Route("/me/password", change_password, methods=["POST"]),
        Route("/me/sessions/end", sign_out_elsewhere, methods=["POST"]),
        Route("/me/two-step", two_step, methods=["POST"]),
    ]


def _page(req: Req, *, status: int = 200, error: str = "", message: str = "",
          codes: list[str] | None = None) -> Response:
    assert req.session is not None  # page() lets only signed-in people through
    people = req.web.people
    record = people.get(req.who.login)
    uri = people.two_step_uri(req.session)
    return req.render("account.html", status, record=record, error=error, message=message,
                      browsers=people.browsers(req.session), departments=req.web.config.departments,
                      browser_words=browser_words,
                      two_step_required=people.two_step_required(req.who), codes=codes or [],
                      qr=_qr_svg(uri) if uri else "", secret=_grouped_secret(uri) if uri else "")


# (name, pattern) in the order that tells them apart: Edge and Opera say "Chrome" too, Chrome "Safari".
_BROWSERS = (("WeChat", r"MicroMessenger"), ("Edge", r"Edg(?:e|A|iOS)?/"), ("Opera", r"OPR/|Opera"),
             ("Firefox", r"Firefox/|FxiOS/"), ("Chromium", r"Chromium/"), ("Chrome", r"Chrome/|CriOS/"),
             ("Safari", r"Safari/"), ("curl", r"^curl/"), ("Python", r"python-|httpx"))
_SYSTEMS = (("iPhone", r"iPhone"), ("iPad", r"iPad"), ("Android", r"Android"), ("Windows", r"Windows"),
            ("macOS", r"Mac OS X|Macintosh"), ("Linux", r"Linux|X11"))


def browser_words(user_agent: str) -> str:
    """What a person recognises of a User-Agent: "Firefox · Windows"; the header itself if neither is known."""
    browser = next((name for name, pattern in _BROWSERS if re.search(pattern, user_agent)), "")
    system = next((name for name, pattern in _SYSTEMS if re.search(pattern, user_agent)), "")
    return " · ".join(part for part in (browser, system) if part) or user_agent[:60]


def _qr_svg(uri: str) -> Markup:
    """The otpauth:// URI as a QR code for the authenticator app, an SVG inline (no script, no style)."""
    import segno

    return Markup(segno.make(uri, error="m").svg_inline(scale=4, dark="#1d2330", light="#fff"))


def _grouped_secret(uri: str) -> str:
    """The secret from the URI, in groups of four, for typing into an app by hand."""
    secret = parse_qs(urlsplit(uri).query).get("secret", [""])[0]
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


@page()
def account(req: Req) -> Response:
    done = req.done()
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


def two_step_refusal(refused: TwoStepRefused) -> str:
    """Why a two-step sign-in step was not taken, in the page's language."""
    return {
        "on": _("Two-step sign-in is on already."),
        "off": _("Two-step sign-in is not on."),
        "none": _("Start again: scan a new code with the app."),
        "code": _("That code is not right. Take the one the app shows now."),
        "required": _("Your role requires two-step sign-in; it cannot be turned off. If your phone is lost, "
                      "an administrator can turn it off for you to set it up again."),
    }.get(refused.reason, str(refused))


def throttled_text(exc: Throttled) -> str:
    """Too many failed attempts, and for how long, in the page's language."""
    minutes = max(1, math.ceil(exc.retry_after / 60))
    return i18n.ngettext("Too many failed attempts; try again in %(n)d minute.",
                         "Too many failed attempts; try again in %(n)d minutes.", minutes) % {"n": minutes}


def _refused(req: Req, refused: SignInRefused | PasswordRefused | TwoStepRefused) -> Response:
    """The account page again, saying why a step that needs the present password was refused."""
    if isinstance(refused, Throttled):
        return _page(req, status=429, error=throttled_text(refused))
    if isinstance(refused, SignInRefused):
        return _page(req, status=400, error=_("The present password is wrong."))
    if isinstance(refused, PasswordRefused):
        return _page(req, status=400, error=password_refusal(refused))
    return _page(req, status=409 if refused.reason in ("on", "off", "required") else 400,
                 error=two_step_refusal(refused))


@page()
def two_step(req: Req) -> Response:
    assert req.session is not None
    people, action, present = req.web.people, req.field("action"), req.secret("present")
    if action not in ("start", "on", "codes", "off"):
        return _page(req, status=400, error=_("Choose what to do with two-step sign-in."))
    if action != "start" and not present:
        return _page(req, status=400, error=_("Give your present password."))
    try:
        if action == "start":
            people.start_two_step(req.session)
            return RedirectResponse("/me#two-step", status_code=303)
        if action == "on":
            codes = people.turn_on_two_step(req.session, present, req.field("code"), address=req.address)
            return _page(req, codes=codes, message=_(
                "Two-step sign-in is on. Your other browsers are signed out. Keep the recovery codes below."))
        if action == "codes":
            codes = people.renew_recovery_codes(req.session, present, address=req.address)
            return _page(req, codes=codes, message=_("New recovery codes; the old ones no longer work."))
        people.turn_off_two_step(req.session, present, req.field("code"), address=req.address)
    except (SignInRefused, PasswordRefused, TwoStepRefused) as refused:
        return _refused(req, refused)
    return RedirectResponse(req.done_url("/me", "two-step-off"), status_code=303)


@page()
def change_password(req: Req) -> Response:
    assert req.session is not None  # page() lets only signed-in people through
    present, new, repeated = req.secret("present"), req.secret("password"), req.secret("repeated")
    if not present or not new:
        return _page(req, status=400, error=_("Give your present password and the new one."))
    try:
        req.web.people.change_own_password(req.session, present, new, repeated, address=req.address)
    except (SignInRefused, PasswordRefused) as refused:
        return _refused(req, refused)
    return RedirectResponse(req.done_url("/me", "password"), status_code=303)


@page()
def sign_out_elsewhere(req: Req) -> Response:
    assert req.session is not None
    req.web.people.sign_out_elsewhere(req.session, address=req.address)
    return RedirectResponse(req.done_url("/me", "elsewhere"), status_code=303)
