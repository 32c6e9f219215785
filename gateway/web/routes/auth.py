"""Signing in and out (password or single sign-on) and the person's language."""
from __future__ import annotations

import math
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.people import Principal, SessionInfo, SignInRefused, Throttled
from gateway.web import i18n, security
from gateway.web.app import Problem, Req, Web, page, start
from gateway.web.i18n import _


def routes() -> list[BaseRoute]:
    return [
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signin/code", code_form, methods=["GET"]),
        Route("/signin/code", code, methods=["POST"]),
        Route("/signin/oidc", oidc_start, methods=["GET"]),
        Route("/signin/oidc/callback", oidc_callback, methods=["GET"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/me/language", set_language, methods=["POST"]),
    ]


def _signin_page(req: Req, *, status: int = 200, error: str = "", login: str = "") -> Response:
    """The form, with a fresh pre-session CSRF token in a cookie and in the form (double submit)."""
    token = req.request.cookies.get(security.PRE_CSRF_COOKIE) or security.new_token()
    oidc = req.web.config.model.web.oidc
    response = req.render("signin.html", status, error=error, login=login, pre_csrf=token,
                          next=security.safe_next(req.arg("next") or req.field("next"), ""),
                          no_people=req.web.people.count() == 0,
                          oidc_label=oidc.label if oidc.issuer else "")
    security.set_cookie(response, security.PRE_CSRF_COOKIE, token, secure=req.web.secure)
    return response


@page(public=True)
def signin_form(req: Req) -> Response:
    if req.session is not None:
        return RedirectResponse(security.safe_next(req.arg("next")), status_code=303)
    return _signin_page(req)


@page(public=True)
def signin(req: Req) -> Response:
    if not security.tokens_match(req.request.cookies.get(security.PRE_CSRF_COOKIE), req.field(security.CSRF_FIELD)):
        return _signin_page(req, status=403, error=_("This form has expired. Reload the page and try again."))
    login = req.field("login")
    try:
        principal = req.web.people.authenticate(login, req.secret("password"), address=req.address)
    except Throttled as exc:
        minutes = max(1, math.ceil(exc.retry_after / 60))
        return _signin_page(req, status=429, login=login, error=i18n.ngettext(
            "Too many failed attempts; try again in %(n)d minute.",
            "Too many failed attempts; try again in %(n)d minutes.", minutes) % {"n": minutes})
    except SignInRefused:
        return _signin_page(req, status=401, login=login, error=_("Wrong name or password."))
    target = security.safe_next(req.field("next"))
    if principal.two_step:  # the password was the first step: the code page next, this target after it
        return _signed_in(req, principal, "/signin/code?next=" + quote(target, safe=""))
    return _signed_in(req, principal, target)


def _signed_in(req: Req, principal: Principal, target: str, method: str = "password") -> Response:
    web = req.web
    token, _csrf = web.people.open_session(principal, address=req.address, method=method,
                                           user_agent=req.request.headers.get("user-agent", ""))
    response = RedirectResponse(target, status_code=303)
    security.set_cookie(response, security.SESSION_COOKIE, token, secure=web.secure)
    security.forget_cookie(response, security.PRE_CSRF_COOKIE, secure=web.secure)
    return response


def _code_page(req: Req, info: SessionInfo, *, status: int = 200, error: str = "") -> Response:
    """The second step's form, in the person's own language; its token is the waiting session's."""
    req.lang = i18n.language_of(info.principal.language, req.web.config.model.web.language)
    i18n.use(req.lang)
    return req.render("signin_code.html", status, error=error or "", name=info.principal.name,
                      code_csrf=info.csrf, next=security.safe_next(req.arg("next") or req.field("next"), ""))


def _waiting(req: Req) -> SessionInfo | None:
    token = req.request.cookies.get(security.SESSION_COOKIE) or ""
    return req.web.people.awaiting_code(token) if "\x00" not in token else None


@page(public=True)
def code_form(req: Req) -> Response:
    info = _waiting(req)
    if info is None:  # signed in already, or nothing waits (lapsed): the start
        return RedirectResponse(security.safe_next(req.arg("next")) if req.session else "/signin", status_code=303)
    return _code_page(req, info)


@page(public=True)
def code(req: Req) -> Response:
    info = _waiting(req)
    if info is None:
        return _signin_page(req, status=401, error=_("The sign-in took too long. Sign in again."))
    if not security.tokens_match(info.csrf, req.field(security.CSRF_FIELD)):
        return _code_page(req, info, status=403, error=_("This form has expired. Reload the page and try again."))
    try:
        req.web.people.second_step(req.request.cookies.get(security.SESSION_COOKIE) or "", req.field("code"),
                                   address=req.address)
    except Throttled as exc:
        minutes = max(1, math.ceil(exc.retry_after / 60))
        return _code_page(req, info, status=429, error=i18n.ngettext(
            "Too many failed attempts; try again in %(n)d minute.",
            "Too many failed attempts; try again in %(n)d minutes.", minutes) % {"n": minutes})
    except SignInRefused:
        return _code_page(req, info, status=401, error=_("That code is not right. Take the one the app shows now."))
    return RedirectResponse(security.safe_next(req.field("next")), status_code=303)


@page()
def signout(req: Req) -> Response:
    if req.session_token:
        req.web.people.close_session(req.session_token, address=req.address)
    response = RedirectResponse("/signin", status_code=303)
    security.forget_cookie(response, security.SESSION_COOKIE, secure=req.web.secure)
    return response


@page()
def set_language(req: Req) -> Response:
    language = req.field("language")
    if language not in i18n.LANGUAGES:
        raise Problem(400, _("Unknown language."))
    req.web.people.set_language(req.who.login, language)
    return RedirectResponse(security.safe_next(req.field("next")), status_code=303)


# -- single sign-on (OpenID Connect): authlib's client is asynchronous ---------------------------
async def oidc_start(request: Request) -> Response:
    web: Web = request.app.state.web
    if web.oauth is None:
        req = await run_in_threadpool(start, request, FormData())
        return await run_in_threadpool(req.error, 404, "")
    request.session["next"] = security.safe_next(request.query_params.get("next"))
    redirect_uri = (web.config.model.web.base_url + "/signin/oidc/callback" if web.config.model.web.base_url
                    else str(request.url_for("oidc_callback")))
    response: Response = await web.oauth.oidc.authorize_redirect(request, redirect_uri)
    return response


async def oidc_callback(request: Request) -> Response:
    web: Web = request.app.state.web
    req = await run_in_threadpool(start, request, FormData())
    i18n.use(req.lang)
    if web.oauth is None:
        return await run_in_threadpool(req.error, 404, "")
    try:
        token = await web.oauth.oidc.authorize_access_token(request)
    except Exception as exc:  # authlib raises its own errors and httpx's
        return await run_in_threadpool(_signin_page, req, status=401,
                                       error=_("Single sign-on did not succeed: %(reason)s") % {"reason": str(exc)})
    claims = dict(token.get("userinfo") or {})
    try:
        principal = await run_in_threadpool(web.people.principal_for_oidc, claims, address=req.address)
    except SignInRefused:
        return await run_in_threadpool(_signin_page, req, status=403, error=_(
            "Single sign-on named no one who may sign in here. Ask an administrator to add your e-mail address."))
    target = security.safe_next(request.session.pop("next", "/"))
    return await run_in_threadpool(_signed_in, req, principal, target, "oidc")
