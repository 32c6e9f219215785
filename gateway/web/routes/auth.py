"""Signing in and out (password or single sign-on) and the person's language."""
from __future__ import annotations

from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.people import PasswordRefused, PersonRecord, Principal, SessionInfo, SignInRefused, Throttled
from gateway.web import i18n, security
from gateway.web.app import Problem, Req, Web, page, start
from gateway.web.i18n import N_, _
from gateway.web.routes.account import password_refusal, throttled_text


def routes() -> list[BaseRoute]:
    return [
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signin/reset", reset_form, methods=["GET"]),
        Route("/signin/reset", ask_reset, methods=["POST"]),
        Route("/signin/reset/{token}", new_password_form, methods=["GET"]),
        Route("/signin/reset/{token}", new_password, methods=["POST"]),
        Route("/signin/code", code_form, methods=["GET"]),
        Route("/signin/code", code, methods=["POST"]),
        Route("/signin/oidc", oidc_start, methods=["GET"]),
        Route("/signin/oidc/callback", oidc_callback, methods=["GET"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/me/language", set_language, methods=["POST"]),
    ]


def _signin_page(req: Req, *, status: int = 200, error: str = "", login: str = "") -> Response:
    """The form, with a fresh pre-session CSRF token in a cookie and in the form (double submit)."""
    oidc = req.web.config.model.web.oidc
    return _pre_session(req, "signin.html", status, error=error, login=login,
                        next=security.safe_next(req.arg("next") or req.field("next"), ""),
                        no_people=req.web.people.count() == 0, oidc_label=oidc.label if oidc.issuer else "",
                        reset_offered=req.web.people.reset_offered,
                        message=_("Your new password is set. Sign in with it.")
                        if req.done(signed_out=True) == "reset" else "")


def _pre_session(req: Req, template: str, status: int, **context: object) -> Response:
    """A page of someone not signed in, whose form carries the pre-session CSRF token (double submit)."""
    token = req.request.cookies.get(security.PRE_CSRF_COOKIE) or security.new_token()
    response = req.render(template, status, pre_csrf=token, **context)
    security.set_cookie(response, security.PRE_CSRF_COOKIE, token, secure=req.web.secure)
    return response


def _pre_session_token_ok(req: Req) -> bool:
    return security.tokens_match(req.request.cookies.get(security.PRE_CSRF_COOKIE), req.field(security.CSRF_FIELD))


# -- a forgotten password: a link to the person's own address ---------------------------------
def _reset_page(req: Req, status: int = 200, **context: object) -> Response:
    if not req.web.people.reset_offered:
        raise Problem(404)
    defaults: dict[str, object] = {"sent": False, "for_person": None, "lapsed": False, "given": "", "error": "",
                                   "minutes": req.web.config.model.web.reset_minutes}
    return _pre_session(req, "signin_reset.html", status, **{**defaults, **context})


@page(public=True)
def reset_form(req: Req) -> Response:
    return _reset_page(req)


@page(public=True)
def ask_reset(req: Req) -> Response:
    given = req.field("who")
    if not _pre_session_token_ok(req):
        return _reset_page(req, 403, given=given, error=_("This form has expired. Reload the page and try again."))
    if not given:
        return _reset_page(req, 400, error=_("Give your sign-in name or e-mail address."))
    try:
        req.web.people.ask_password_reset(given, address=req.address)
    except Throttled as exc:
        return _reset_page(req, 429, given=given, error=throttled_text(exc))
    except ValueError:
        raise Problem(404) from None
    return _reset_page(req, sent=True)


def _link_person(req: Req) -> PersonRecord | None:
    return req.web.people.reset_link_person(req.request.path_params["token"])


_LAPSED = N_("This link is used, too old, or not one of ours. Ask for a new one.")


@page(public=True)
def new_password_form(req: Req) -> Response:
    person = _link_person(req)
    if person is None:
        return _reset_page(req, 404, lapsed=True, error=_(_LAPSED))
    return _reset_page(req, for_person=person)


@page(public=True)
def new_password(req: Req) -> Response:
    person = _link_person(req)
    if person is None:
        return _reset_page(req, 404, lapsed=True, error=_(_LAPSED))
    if not _pre_session_token_ok(req):
        return _reset_page(req, 403, for_person=person,
                           error=_("This form has expired. Reload the page and try again."))
    try:
        req.web.people.reset_password(req.request.path_params["token"], req.secret("password"),
                                      req.secret("repeated"), address=req.address)
    except PasswordRefused as refused:
        return _reset_page(req, 400, for_person=person, error=password_refusal(refused))
    except SignInRefused:
        return _reset_page(req, 404, lapsed=True, error=_(_LAPSED))
    response = RedirectResponse(req.done_url("/signin", "reset", signed_out=True), status_code=303)
    security.forget_cookie(response, security.SESSION_COOKIE, secure=req.web.secure)
    return response



@page(public=True)
def signin_form(req: Req) -> Response:
    if req.session is not None:
        return RedirectResponse(security.safe_next(req.arg("next")), status_code=303)
    return _signin_page(req)


@page(public=True)
def signin(req: Req) -> Response:
    if not _pre_session_token_ok(req):
        return _signin_page(req, status=403, error=_("This form has expired. Reload the page and try again."))
    login = req.field("login")
    try:
        principal = req.web.people.authenticate(login, req.secret("password"), address=req.address)
    except Throttled as exc:
        return _signin_page(req, status=429, login=login, error=throttled_text(exc))
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
        return _code_page(req, info, status=429, error=throttled_text(exc))
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
