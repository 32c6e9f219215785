"""The web register's application: one Starlette app over the register's services.

Every page is a plain function of a `Req` (the request, its person and form), run in a worker
thread because the services are synchronous; `page()` wraps it with what every route needs:
the session, the person's language, sign-in redirects, role checks and the CSRF check. Access to
letters is never decided here: Access and People answer, the pages only show the answer.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Message

from gateway.config import Config
from gateway.web import i18n, security
from gateway.web.i18n import _

if TYPE_CHECKING:
    from gateway.registry import Registry
    from gateway.services.access import Access
    from gateway.services.people import People, Principal, SessionInfo

log = logging.getLogger("gateway.web")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"


@dataclass
class Web:
    """What the pages share: the configuration, the services and the templates."""

    config: Config
    registry: Registry
    people: People
    access: Access
    env: jinja2.Environment
    proxies: list[Any]
    tz: ZoneInfo
    oauth: Any = None

    @property
    def body_limit(self) -> int:
        """The most a form may send: a paper letter's scans or a reply's attachments, whichever
        may be larger, and room for the fields."""
        from gateway.services.paper import MAX_SCAN_BYTES

        return max(MAX_SCAN_BYTES, self.config.model.replies.max_attachment_bytes) + 2**20

    @property
    def secure(self) -> bool:
        return self.config.model.web.secure_cookies

    def when(self, value: datetime | None) -> str:
        return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M") if value else ""

    def day(self, value: datetime | None) -> str:
        return value.astimezone(self.tz).strftime("%Y-%m-%d") if value else ""


class Problem(Exception):
    """Stop and show an error page with this status and message."""

    def __init__(self, status: int, message: str = "", back: str = ""):
        """`back`: the page to go back to (a path on this site) instead of the register's first page."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.back = back


@dataclass
class Req:
    request: Request
    web: Web
    address: str
    form: FormData
    lang: str
    session: SessionInfo | None = None
    session_token: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def who(self) -> Principal:
        assert self.session is not None  # page() lets only signed-in people through
        return self.session.principal

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name)
        return value.strip() if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        return [v for v in self.form.getlist(name) if isinstance(v, str)]

    def secret(self, name: str) -> str:
        """A password as typed (spaces at its ends are part of it); a file sent in its place is none."""
        value = self.form.get(name)
        return value if isinstance(value, str) else ""

    def arg(self, name: str) -> str:
        return self.request.query_params.get(name, "").strip()

    def done_url(self, path: str, step: str, *, name: str = "done", anchor: str = "",
                 signed_out: bool = False) -> str:
        """The page at `path` (as linked, quoted) naming in `name` the step this person has just
        taken, for that page to say so (`done`). The name carries a mark of this session and page
        (`signed_out`: of this browser's pre-session token, for a step taken before signing in):
        a link anyone else made, or made for another page, makes no page claim a step was taken."""
        mark = self._done_mark(unquote(path), name, step, signed_out)
        return f"{path}?{urlencode({name: f'{step}.{mark}'})}" + (f"#{anchor}" if anchor else "")

    def done(self, name: str = "done", *, signed_out: bool = False) -> str:
        """The step `done_url` named for this page in this session; "" for none, or for a name
        without its mark (a crafted link)."""
        step, _, mark = self.arg(name).rpartition(".")
        if not step or not security.tokens_match(self._done_mark(self.request.url.path, name, step, signed_out),
                                                 mark):
            return ""
        return step

    def _done_mark(self, path: str, name: str, step: str, signed_out: bool) -> str:
        key = self.request.cookies.get(security.PRE_CSRF_COOKIE) if signed_out else self.session_token
        if not key:
            return ""
        message = "\0".join(("done", path, name, step)).encode()
        return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:32]

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return render(self, template, status_code, **context)

    def error(self, status: int, message: str = "", back: str = "") -> HTMLResponse:
        return render(self, "error.html", status, status=status, message=message, back=back)


def render(req: Req, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    web = req.web
    i18n.use(req.lang)
    who = req.session.principal if req.session else None
    queues: list[tuple[str, int | None]] = []
    if who is not None:
        counts = web.access.counts(who)
        queues = [(name, counts.get(name)) for name in web.access.queues(who)]
    from gateway.web import shown

    person = shown.Names(lambda: [(p.login, p.name, p.emails) for p in web.people.list()])
    departments = web.config.departments
    page = web.env.get_template(template).render(
        request=req.request, path=req.request.url.path, who=who, lang=req.lang, queues=queues,
        csrf=req.session.csrf if req.session else "", label=i18n.label, when=web.when, day=web.day,
        languages=i18n.LANGUAGE_NAMES, html_lang=i18n.HTML_LANG[req.lang], person=person,
        describe=shown.Describer(web.when, person, departments), trace_words=shown.Trace(departments),
        whole_days=shown.whole_days, printed_at=lambda: web.when(web.access.clock()),
        **context)
    headers = dict(req.extra_headers)
    if who is not None:
        headers["Cache-Control"] = "no-store"  # pages of a signed-in person may show letters
    return HTMLResponse(page, status_code=status_code, headers=headers)


Handler = Callable[[Req], Response]
Endpoint = Callable[[Request], Awaitable[Response]]


def page(*, public: bool = False, role: str | None = None) -> Callable[[Handler], Endpoint]:
    """Make `handler` a route: session and language first; then, unless `public`, a signed-in
    person (else to the sign-in page), the role if one is named, and on POST the CSRF token."""
    def wrap(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            form = FormData()
            # Nobody signed in to a page that needs it: the body is not read (uploads would be taken
            # in first); serve() sends them to the sign-in page.
            if request.method in security.UNSAFE_METHODS and (
                    public or await run_in_threadpool(_signed_in, request)):
                try:
                    form = await _read_form(request)
                except _TooLarge as large:
                    return await run_in_threadpool(_too_large, request, large.limit)
            try:
                return await run_in_threadpool(serve, request, form, handler, public, role)
            finally:
                await form.close()
        endpoint.__name__ = handler.__name__
        return endpoint
    return wrap


class _TooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit


def _too_large(request: Request, limit: int) -> Response:
    req = start(request, FormData())  # the page's language is set here, in this thread
    return req.error(413, _("What was sent is larger than the register takes (%(limit)s MiB together). Nothing "
                            "was kept: send fewer or smaller files.") % {"limit": limit // 2**20})


def _signed_in(request: Request) -> bool:
    web: Web = request.app.state.web
    token = request.cookies.get(security.SESSION_COOKIE)
    return token is not None and "\x00" not in token and web.people.session(token) is not None


async def _read_form(request: Request) -> FormData:
    """The request's form, refused (_TooLarge) once its body passes the limit: at once when it says
    its length, else as the bytes come (a body sent in chunks says none)."""
    limit = request.app.state.web.body_limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge(limit)
    received = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _TooLarge(limit)
        return message

    return await Request(request.scope, counted).form()


def serve(request: Request, form: FormData, handler: Handler, public: bool, role: str | None) -> Response:
    req = start(request, form)
    try:
        if any(isinstance(v, int) and v > LARGEST_ID for v in request.path_params.values()):
            raise Problem(404)  # no row has such an id (and the database driver would fail on it)
        if (where := _nul_in(request, form)) is not None:
            # No text of the register holds one, and PostgreSQL refuses it in any query: said here,
            # by name, for every page, before a handler passes it to the database.
            raise Problem(400, _("%(field)s holds a NUL character (\\0), which no text here may hold.")
                          % {"field": where})
        if not public:
            if req.session is None:
                return RedirectResponse(security.signin_url(request), status_code=303)
            if req.session.owes_two_step and not _open_before_two_step(request.url.path):
                return RedirectResponse("/me", status_code=303)
            if role and not req.who.has(role):
                raise Problem(403, _("This page is for people with the role: %(role)s.")
                              % {"role": i18n.label("role", role)})
            if request.method in security.UNSAFE_METHODS and not security.tokens_match(
                    req.session.csrf, req.field(security.CSRF_FIELD) or request.headers.get(security.CSRF_HEADER)):
                raise Problem(403, _("This form has expired. Reload the page and try again."))
        return handler(req)
    except Problem as problem:
        return req.error(problem.status, problem.message, problem.back)
    except Exception:
        log.exception("web: %s %s failed", request.method, request.url.path)
        return req.error(500)


LARGEST_ID = 2**63 - 1  # the registry's integers are 64-bit


def _open_before_two_step(path: str) -> bool:
    """What someone whose role requires two-step sign-in may open before turning it on."""
    return path in ("/me", "/signout") or path.startswith("/me/")


def _nul_in(request: Request, form: FormData) -> str | None:
    """The name of the first query, path or form value (or name) that holds a NUL, if one does."""
    if "\x00" in request.url.path:
        return _("the address")
    for name, value in (*request.query_params.multi_items(), *request.path_params.items(), *form.multi_items()):
        if "\x00" in name or (isinstance(value, str) and "\x00" in value):
            return name.replace("\x00", "\\0")
    return None


def start(request: Request, form: FormData) -> Req:
    """The request's person (if signed in) and language."""
    web: Web = request.app.state.web
    token = request.cookies.get(security.SESSION_COOKIE)
    token = token if token and "\x00" not in token else None  # no session holds one (nor may a query)
    info = web.people.session(token) if token else None
    default = web.config.model.web.language
    if info is not None:
        lang = i18n.language_of(info.principal.language, default)
    else:
        wanted = request.query_params.get("lang") or form.get("lang") or request.cookies.get("gw_lang")
        lang = i18n.language_of(wanted if isinstance(wanted, str) else None, default)
    i18n.use(lang)
    return Req(request=request, web=web, address=security.client_address(request, web.proxies), form=form,
               lang=lang, session=info, session_token=token if info else None)


# -- errors outside any page (unknown paths, wrong methods) --------------------------------------
async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    req = await run_in_threadpool(start, request, FormData())
    return await run_in_threadpool(req.error, status, "")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             extensions=["jinja2.ext.i18n"], undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True,  # type: ignore[attr-defined]
                                  pgettext=i18n.pgettext)
    env.filters["show"] = show
    from gateway.addressing import shown_address

    env.filters["address"] = shown_address  # a domain in Unicode only where it cannot pass for another
    from gateway.web.shown import breakable, filesize, flag, sentence, subject

    env.filters["breakable"] = breakable
    env.filters["filesize"] = filesize
    env.filters["subject"] = subject
    env.filters["sentence"] = sentence
    from gateway.services.queries import letter_sender

    env.filters["sender"] = letter_sender  # (name, address), as the register entry shows it
    env.globals["flag"] = flag
    from gateway.web.routes import replies  # its pages' parts on the letter page and in the sidebar

    env.globals.update(replies.template_globals())
    from gateway.web.routes import circulation  # the sidebar's counts of letters to read and borrowings to approve

    env.globals.update(circulation.template_globals())
    from gateway.web.routes.work import view_url

    env.globals["view_url"] = view_url  # the sidebar's saved views open as saving them did
    return env


def show(value: Any) -> str:
    """A detail value (from an event or audit row) as words: lists joined, nothing as a dash."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(show(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={show(v)}" for k, v in value.items())
    return str(value)


def routes() -> list[BaseRoute]:
    from gateway.web.routes import (account, audit, auth, borrowing, circulation, incomplete, letters, overview, paper,
                                    people, rate, replies, work)

    return [*auth.routes(), *account.routes(), *work.routes(), *letters.routes(), *audit.routes(), *people.routes(),
            *overview.routes(), *paper.routes(), *incomplete.routes(), *rate.routes(), *replies.routes(),
            *circulation.routes(), *borrowing.routes(),
            Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static")]


def create_app(config: Config, *, registry: Registry | None = None) -> Starlette:
    """The web register for this configuration; it opens its own registry connection unless given one."""
    from gateway.registry import Registry
    from gateway.services.access import Access
    from gateway.services.people import People

    registry = registry or Registry.from_config(config)
    web = Web(config=config, registry=registry, people=People(config, registry), access=Access(config, registry),
              env=environment(), proxies=security.parse_networks(config.model.web.trusted_proxies),
              tz=ZoneInfo(config.model.gateway.timezone))
    middleware = [Middleware(security.SecurityHeaders)]
    oidc = config.model.web.oidc
    if oidc.issuer:
        from authlib.integrations.starlette_client import OAuth
        from starlette.middleware.sessions import SessionMiddleware

        secret = os.environ.get(oidc.client_secret_env, "")
        web.oauth = OAuth()
        web.oauth.register("oidc", server_metadata_url=oidc.issuer.rstrip("/") + "/.well-known/openid-configuration",
                           client_id=oidc.client_id, client_secret=secret or None,
                           client_kwargs={"scope": oidc.scopes})
        # The sign-on's state and nonce wait in a signed cookie between the redirect and the callback;
        # its key derives from the client secret so that every worker process agrees on it.
        key = hashlib.sha256(f"gateway-web-oidc:{secret}:{oidc.client_id}".encode()).hexdigest() if secret \
            else secrets.token_hex(32)
        middleware.append(Middleware(SessionMiddleware, secret_key=key, session_cookie="gw_oidc",
                                     max_age=600, same_site="lax", https_only=web.secure))
    app = Starlette(routes=routes(), middleware=middleware,
                    exception_handlers={HTTPException: http_error})
    app.state.web = web
    return app


def reload_app(app: Starlette, config: Config) -> None:
    """A reloaded configuration for a running app: departments, roles, sessions, languages and
    trusted proxies as the rest of the daemon takes them. Its registry connection and single
    sign-on stay those it was made with (they take a restart). The pages read `app.state.web`
    once per request, so each request sees one configuration, the old or the new."""
    from gateway.services.access import Access
    from gateway.services.people import People

    old: Web = app.state.web
    app.state.web = replace(
        old, config=config, people=People(config, old.registry), access=Access(config, old.registry),
        proxies=security.parse_networks(config.model.web.trusted_proxies), tz=ZoneInfo(config.model.gateway.timezone))


def factory() -> Starlette:
    """For `uvicorn --factory` in worker processes: the configuration from $GATEWAY_CONFIG."""
    from gateway.stages import rulebook

    return create_app(rulebook.load(os.environ.get("GATEWAY_CONFIG"), with_rules=False))
