"""The web register over HTTP: every route × every role × letters of their own department, another
department and confidential ones — allowed, or exactly 404 (a letter they may not know of, or
whose content they may not read) or 403 (a page for another role); not signed in → the sign-in
page; a missing or wrong CSRF token → 403; throttled sign-in; an audit row for each read.

The routes are taken from the application itself, so a new route without a rule here fails."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from gateway.web.app import create_app
from gateway.web.server import WebServer
from test_access import EXPECTED, LETTERS, MATRIX, PASSWORD, A, World, build_world
from web_support import hidden, meta_csrf

pytestmark = pytest.mark.timeout(300)

ROLES = tuple(EXPECTED)  # reg, mem.a, mem.b, head.a, leader, auditor, admin, owen, grace
ADDRESS = "127.0.0.1"


class Client(httpx.Client):
    csrf = ""


@dataclass
class Site:
    world: World
    app: Starlette
    url: str
    clients: dict[str, Client]
    positions: dict[str, int]  # letter key -> its attachment's position
    opened: list[Client]

    def client(self) -> Client:
        client = Client(base_url=self.url, follow_redirects=False, timeout=30)
        self.opened.append(client)
        return client

    def sign_in(self, login: str, password: str = PASSWORD) -> Client:
        client = self.client()
        token = hidden(client.get("/signin").text, "csrf")
        done = client.post("/signin", data={"login": login, "password": password, "csrf": token})
        assert done.status_code == 303, (login, done.status_code)
        page = client.get("/letters")
        assert page.status_code == 200, (login, page.status_code)
        client.csrf = meta_csrf(page.text)
        assert client.csrf, "the page gives htmx its CSRF token"
        return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    world = build_world(tmp_path_factory.mktemp("web-access"), "", cli=False)
    for login in ("scratch", "tess"):  # the people pages' subject; the throttled one
        world.people.add(login, emails=[f"{login}@example.org"], password=PASSWORD, actor="test")
    app = create_app(world.access.config, registry=world.registry)
    server = WebServer(app, "127.0.0.1:0")
    server.start()
    positions = {}
    for key in LETTERS:
        letter = world.registry.letter(world.n(key))
        assert letter is not None
        [attachment] = letter.attachments
        positions[key] = attachment.position
    s = Site(world, app, server.url, {}, positions, [])
    s.clients = {login: s.sign_in(login) for login in ROLES}
    yield s
    for client in s.opened:
        client.close()
    server.stop()
    world.registry.close()


# -- the rules ----------------------------------------------------------------
# A rule gives the status for (person or None for not signed in, letter key).
Rule = Callable[[str | None, str], int]
SIGNIN = 0  # "303 to the sign-in page" for someone not signed in


def visible(login: str, key: str) -> bool:
    return EXPECTED[login][key] is not None


def content(login: str, key: str) -> bool:
    rights = EXPECTED[login][key]
    return rights is not None and rights[0]


def entry_rule(login: str | None, key: str) -> int:
    return SIGNIN if login is None else 200 if visible(login, key) else 404


def content_rule(login: str | None, key: str) -> int:
    return SIGNIN if login is None else 200 if content(login, key) else 404


def note_rule(login: str | None, key: str) -> int:
    if login is None:
        return SIGNIN
    rights = EXPECTED[login][key]
    return 404 if rights is None else 303 if "note" in rights[1] else 403


def incomplete_rule(status: int) -> Rule:
    """Asking the sender for missing materials, withdrawing and going on without them: the registry
    office and the letter's department (its people and its owner) only; with nothing filled in (or
    no letter awaiting its sender), `status`."""
    def rule(login: str | None, key: str) -> int:
        if login is None:
            return SIGNIN
        rights = EXPECTED[login][key]
        return 404 if rights is None else status if rights[1] & {"ack", "reassign"} else 403
    return rule


def reply_rule(status: int) -> Rule:
    """Drafting a reply: those who may answer the letter and read it (`status`: nothing written,
    400); the others who see it 403."""
    def rule(login: str | None, key: str) -> int:
        if login is None:
            return SIGNIN
        rights = EXPECTED[login][key]
        return 404 if rights is None else status if rights[0] and "answer" in rights[1] else 403
    return rule


def seen_rule(status: int) -> Rule:
    """`status` for whoever sees the letter, else 404."""
    return lambda login, key: SIGNIN if login is None else 404 if EXPECTED[login][key] is None else status


def person(status: int) -> Rule:
    return lambda login, key: SIGNIN if login is None else status


def role(name: str, status: int = 200) -> Rule:
    roles = {"auditor": {"auditor"}, "admin": {"admin"}, "report": {"auditor", "leader", "reg"},
             "registry": {"reg"}}[name]
    return lambda login, key: SIGNIN if login is None else status if login in roles else 403


TRIAGE_QUEUE = {"reg", "mem.a", "head.a"}  # the registry office and the triage department's people


def triage_rule(status: int) -> Rule:
    return lambda login, key: SIGNIN if login is None else status if login in TRIAGE_QUEUE else 404


def public(anonymous: int, signed_in: int) -> Rule:
    return lambda login, key: anonymous if login is None else signed_in


def circulate_rule(login: str | None, key: str) -> int:
    if login is None:
        return SIGNIN
    # the registry office and leaders: no readers named is 400, but a confidential letter they may
    # not read is theirs to circulate no more than to read (403)
    return 404 if not visible(login, key) else 400 if login in ("reg", "leader") and content(login, key) else 403


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/signin"): public(200, 303),
    ("POST", "/signin"): public(403, 403),  # without the pre-session token (signing in: its own test)
    # the code after the password: nothing waits for one (two-step sign-in: test_web_account)
    ("GET", "/signin/code"): public(303, 303),
    # a forgotten password: no [web] base_url for a link to point to, so none is offered (test_web_account)
    ("GET", "/signin/reset"): public(404, 404),
    ("POST", "/signin/reset"): public(404, 404),
    ("GET", "/signin/reset/{token}"): public(404, 404),
    ("POST", "/signin/reset/{token}"): public(404, 404),
    ("POST", "/signin/code"): public(401, 401),
    ("GET", "/signin/oidc"): public(404, 404),  # no single sign-on configured
    ("GET", "/signin/oidc/callback"): public(404, 404),
    ("POST", "/signout"): person(303),
    ("POST", "/me/language"): person(303),
    ("GET", "/me"): person(200),
    ("POST", "/me/password"): person(400),  # nothing filled in (changing it: test_web_account)
    ("POST", "/me/sessions/end"): person(303),  # their other browsers: none but this one is signed in
    ("POST", "/me/two-step"): person(400),  # nothing chosen
    ("GET", "/"): person(303),
    ("GET", "/letters"): person(200),
    ("GET", "/letters.csv"): person(200),
    ("GET", "/letters/{number}"): entry_rule,
    ("POST", "/letters/{number}/act"): note_rule,
    ("GET", "/letters/{number}/original"): content_rule,
    ("GET", "/letters/{number}/attachments/{position:int}"): content_rule,
    ("GET", "/letters/{number}/attachments/{position:int}/pages"): content_rule,
    ("GET", "/letters/{number}/attachments/{position:int}/pages/{page:int}.png"): content_rule,
    ("GET", "/audit"): role("auditor"),
    ("GET", "/audit.csv"): role("auditor"),
    ("GET", "/people"): role("admin"),
    ("POST", "/people"): role("admin", 303),
    ("GET", "/people/new"): role("admin"),
    ("GET", "/people/{login}"): role("admin"),
    ("POST", "/people/{login}"): role("admin", 303),
    ("POST", "/people/{login}/password"): role("admin", 303),
    ("POST", "/people/{login}/disabled"): role("admin", 303),
    ("POST", "/people/{login}/two-step"): role("admin", 409),  # the person has no two-step sign-in
    ("GET", "/search"): person(200),
    ("GET", "/triage"): triage_rule(200),
    # sending the triage letter to the department it is with already: refused, 409 (others: 404)
    ("POST", "/triage"): triage_rule(409),
    ("POST", "/letters/bulk"): person(200),  # each letter checked on its own, the result a page
    ("POST", "/views"): person(303),
    ("POST", "/views/{id:int}/delete"): person(404),  # no such view of theirs
    ("GET", "/dashboard"): person(200),
    ("GET", "/reports"): role("report"),
    ("GET", "/reports/download"): role("report"),
    ("GET", "/operations"): role("admin"),
    # nothing named to retry: 400 for the administrator (others: 403)
    ("POST", "/operations/quarantine/retry"): role("admin", 400),
    ("POST", "/operations/outbox/retry"): role("admin", 400),
    ("GET", "/static/{path}"): public(200, 200),
    ("GET", "/paper"): role("registry"),
    ("POST", "/paper"): role("registry", 400),  # no scans, no sender: refused, naming the fields
    # nothing named as missing: 400; no letter awaits its sender: withdrawing or going on without the
    # materials is refused, 409
    ("POST", "/letters/{number}/incomplete"): incomplete_rule(400),
    ("POST", "/letters/{number}/withdraw"): incomplete_rule(409),
    ("POST", "/letters/{number}/proceed"): incomplete_rule(409),
    ("GET", "/rate/{token}"): public(404, 404),  # the sender's page, no sign-in: a made-up link is none
    ("POST", "/rate/{token}"): public(403, 403),  # without the form's own token (rating: test_satisfaction)
    ("GET", "/approvals"): person(200),
    ("POST", "/letters/{number}/reply"): reply_rule(400),  # nothing written: 400 (replies: test_reply_approval)
    # no reply to approve, return or send: refused, 409
    ("POST", "/letters/{number}/reply/approve"): seen_rule(409),
    ("POST", "/letters/{number}/reply/return"): seen_rule(409),
    ("POST", "/letters/{number}/reply/send"): seen_rule(409),
    ("GET", "/letters/{number}/reply/{reply:int}/attachments/{attachment:int}"): public(404, 404),  # none such
    ("GET", "/to-read"): person(200),
    # no readers named: 400 for the registry office and leaders (on letters they may read), the others
    # may not start one
    ("POST", "/letters/{number}/circulate"): circulate_rule,
    ("POST", "/letters/{number}/sign"): seen_rule(409),  # nothing circulating: refused, 409
    ("POST", "/letters/{number}/borrow"): seen_rule(400),  # no reason given: 400
    ("GET", "/borrowing"): person(200),
    ("POST", "/borrowing/{id:int}/decide"): person(400),  # neither grant nor refuse chosen
    ("POST", "/borrowing/{id:int}/return"): person(404),  # no such borrowing
}
LETTER_ROUTES = [key for key in RULES if "{number}" in key[1]]


def app_routes(app: Starlette) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount):
            out.add(("GET", route.path + "/{path}"))
        else:
            assert isinstance(route, Route), route
            out |= {(method, route.path) for method in (route.methods or ()) if method != "HEAD"}
    return out


def test_every_route_has_a_rule(site: Site) -> None:
    assert app_routes(site.app) - set(RULES) == set(), "routes without an access rule in this test"
    assert {("GET", "/letters/{number}"), ("POST", "/letters/{number}/act"), ("GET", "/audit"),
            ("GET", "/people")} <= app_routes(site.app)


_new = iter(range(10**6))


def request(site: Site, client: Client, route: tuple[str, str], key: str) -> httpx.Response:
    """One request to `route` for the letter `key`, with a plausible form and the client's CSRF token."""
    method, path = route
    number = site.world.n(key)
    url = (path.replace("{number}", quote(number)).replace("{position:int}", str(site.positions[key]))
           .replace("{page:int}", "1").replace("{login}", "scratch").replace("{path}", "htmx.min.js")
           .replace("{id:int}", "999999"))
    if method == "GET":
        return client.get(url, params={"/letters": {"queue": "all"}, "/search": {"q": "4711"}}.get(path))
    form = {"csrf": client.csrf}
    if path == "/letters/{number}/act":
        form |= {"action": "note", "text": "seen on the web"}
    elif path == "/me/language":
        form |= {"language": "en", "next": "/letters"}
    elif path == "/people":
        form |= {"login": f"new{next(_new)}", "name": "New Person", "emails": "", "password": PASSWORD}
    elif path == "/people/{login}":
        form |= {"name": "Scratch", "emails": "scratch@example.org"}
    elif path == "/people/{login}/password":
        form |= {"password": "another long password"}
    elif path == "/people/{login}/disabled":
        form |= {"disabled": "0"}
    elif path == "/triage":
        form |= {"number": site.world.n("TRIAGE"), "department": A, "reason": "stays"}
    elif path == "/letters/bulk":
        form |= {"action": "tag", "text": "web", "number": number}
    elif path == "/views":
        form |= {"name": f"view {next(_new)}", "queue": "all", "sort": "number"}
    return client.post(url, data=form)


def test_every_route_for_every_role_and_letter(site: Site) -> None:
    world = site.world
    auditor = world.who("auditor")
    before = max((r.id for r in world.access.audit(auditor, limit=1)), default=0)
    wrong: list[str] = []
    served = app_routes(site.app)  # a rule may be written before its page is served
    for login in (None, *ROLES):
        for route, rule in RULES.items():
            if route not in served:
                continue
            for key in (MATRIX if route in LETTER_ROUTES else ("A",)):
                if login is None:
                    client = site.client()
                elif route == ("POST", "/signout"):
                    client = site.sign_in(login)  # a session of its own to end
                else:
                    client = site.clients[login]
                response = request(site, client, route, key)
                expected = rule(login, key)
                got = response.status_code
                if expected == SIGNIN:
                    expected = 303
                    if not response.headers.get("location", "").startswith("/signin?next="):
                        wrong.append(f"{login} {route} {key}: to {response.headers.get('location')}")
                if got != expected:
                    wrong.append(f"{login} {route} {key}: {got}, expected {expected}")
                if response.headers.get("x-frame-options") != "DENY":
                    wrong.append(f"{login} {route} {key}: no frame denial")
                if route == ("POST", "/signout") and login is not None:
                    if client.get("/letters").status_code != 303:
                        wrong.append(f"{login}: still signed in after signing out")
                if route == ("GET", "/letters/{number}") and got == 200 and login is not None:
                    wrong += hidden_content(login, key, response.text)
    assert not wrong, "\n".join(wrong)

    # each read of content is an audit row, and nothing else is
    rows = [r for r in world.access.audit(auditor, limit=100000) if r.id > before]
    for login in ROLES:
        for key in MATRIX:
            number = world.n(key)
            actions = [r.action for r in rows if r.actor == login and r.letter_number == number]
            reads = {a: actions.count(a) for a in ("read", "download", "original", "preview")}
            if content(login, key):
                # page images shown with the letter are part of its read: no row of their own
                assert reads["read"] >= 1 and reads["download"] == 1 and reads["original"] == 1, (login, key, reads)
                assert {r.address for r in rows if r.actor == login and r.letter_number == number} == {ADDRESS}
            else:
                assert reads == {"read": 0, "download": 0, "original": 0, "preview": 0}, (login, key, reads)
        exports = [r for r in rows if r.actor == login and r.action == "export" and r.subject.startswith("queue")]
        assert len(exports) == 1, (login, exports)
        reports = [r for r in rows if r.actor == login and r.action == "export" and r.subject.startswith("report")]
        assert len(reports) == (1 if login in ("auditor", "leader", "reg") else 0), (login, reports)
    assert [r.actor for r in rows if r.action == "audit-export"] == ["auditor"]


def hidden_content(login: str, key: str, html: str) -> list[str]:
    """The letter page shows the subject, text and attachment only to those who may read them."""
    subject, _ = LETTERS[key]
    shown = {"subject": subject in html, "text": f"scan attached ({key})" in html,
             "attachment": f"{key.lower()}-scan.png" in html}
    if content(login, key):
        return [f"{login} {key}: {what} missing" for what, present in shown.items() if not present]
    return [f"{login} {key}: {what} shown without the right" for what, present in shown.items() if present]


def test_queues_hide_what_a_person_may_not_read(site: Site) -> None:
    wrong = []
    for login in ROLES:
        html = site.clients[login].get("/letters?queue=all").text
        for key in MATRIX:
            number, subject = site.world.n(key), LETTERS[key][0]
            listed = number in html
            if listed != visible(login, key):
                wrong.append(f"{login} {key}: listed {listed}")
            if (subject in html) != content(login, key):
                wrong.append(f"{login} {key}: subject shown {subject in html}")
        csv = site.clients[login].get("/letters.csv?queue=all").text
        for key in MATRIX:
            if (LETTERS[key][0] in csv) != content(login, key) or (site.world.n(key) in csv) != visible(login, key):
                wrong.append(f"{login} {key}: export wrong")
    assert not wrong, "\n".join(wrong)


def test_a_hidden_letter_looks_like_one_that_does_not_exist(site: Site) -> None:
    client = site.clients["mem.b"]
    number = site.world.n("A")
    hidden_letter = client.get(f"/letters/{number}")
    missing = client.get("/letters/2026-999999")
    assert hidden_letter.status_code == missing.status_code == 404
    assert hidden_letter.text.replace(number, "N") == missing.text.replace("2026-999999", "N")
    for path in (f"/letters/{number}/original", f"/letters/{number}/attachments/{site.positions['A']}",
                 "/letters/..%2F..%2Fetc%2Fpasswd"):
        assert client.get(path).status_code == 404, path
    assert client.get("/letters/%00").status_code == 400  # no text of the register holds a NUL


def test_not_signed_in_every_page_leads_to_the_sign_in_page(site: Site) -> None:
    client = site.client()
    response = client.get(f"/letters/{site.world.n('A')}?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=" + quote(f"/letters/{site.world.n('A')}?x=1", safe="")
    # an ended or made-up session is no session
    client.cookies.set("gw_session", "made-up")
    assert client.get("/letters").status_code == 303


# -- CSRF -----------------------------------------------------------------------
# Signing in, its code step and a forgotten password check their own tokens
# (test_sign_in_form_needs_its_own_token, test_web_account).
POSTS = [route for route in RULES if route[0] == "POST"
         and route[1] not in ("/signin", "/signin/code", "/signin/reset", "/signin/reset/{token}")]


@pytest.mark.parametrize("token", [None, "wrong", "令牌"], ids=["missing", "wrong", "not-ascii"])
def test_a_form_without_the_right_csrf_token_is_refused(site: Site, token: str | None) -> None:
    world = site.world
    events_before = len(world.registry.letter(world.n("A")).events)  # type: ignore[union-attr]
    wrong = []
    for route in POSTS:
        if route not in app_routes(site.app):
            continue
        login = "admin" if "/people" in route[1] else "mem.a"
        client = site.clients[login]
        saved, client.csrf = client.csrf, token or ""
        try:
            if token is None:  # no field at all
                url = (route[1].replace("{number}", world.n("A")).replace("{login}", "scratch")
                       .replace("{id:int}", "1"))
                response = client.post(url, data={"action": "note", "text": "x", "language": "en"})
            else:
                response = request(site, client, route, "A")
        finally:
            client.csrf = saved
        if response.status_code != 403:
            wrong.append(f"{route}: {response.status_code}")
    assert not wrong, "\n".join(wrong)
    assert len(world.registry.letter(world.n("A")).events) == events_before  # type: ignore[union-attr]
    assert site.clients["mem.a"].get("/letters").status_code == 200, "still signed in"


def test_the_csrf_token_in_the_htmx_header_is_accepted(site: Site) -> None:
    client = site.clients["mem.a"]
    number = site.world.n("A")
    response = client.post(f"/letters/{number}/act", data={"action": "note", "text": "by htmx"},
                           headers={"X-CSRF-Token": client.csrf})
    assert response.status_code == 303
    response = client.post(f"/letters/{number}/act", data={"action": "note", "text": "by htmx"},
                           headers={"X-CSRF-Token": "wrong"})
    assert response.status_code == 403


def test_the_sign_in_form_needs_its_own_token(site: Site) -> None:
    client = site.client()
    token = hidden(client.get("/signin").text, "csrf")
    for form_token in ("", "wrong", "令牌"):
        response = client.post("/signin", data={"login": "tess", "password": PASSWORD, "csrf": form_token})
        assert response.status_code == 403, form_token
    other = site.client()  # the token of another browser's form
    assert other.post("/signin", data={"login": "tess", "password": PASSWORD, "csrf": token}).status_code == 403
    assert client.post("/signin", data={"login": "tess", "password": PASSWORD, "csrf": token}).status_code == 303


# -- throttled sign-in (last: it uses up failures of this address) ----------------------
def test_sign_in_is_throttled(site: Site) -> None:
    client = site.client()
    token = hidden(client.get("/signin?lang=en").text, "csrf")
    for i in range(3):  # signin_failures_per_account
        response = client.post("/signin", data={"login": "tess", "password": f"wrong {i}", "csrf": token,
                                                "lang": "en"})
        assert response.status_code == 401 and "Wrong name or password" in response.text
        token = hidden(response.text, "csrf")
    response = client.post("/signin", data={"login": "tess", "password": PASSWORD, "csrf": token, "lang": "en"})
    assert response.status_code == 429
    assert re.search(r"try again in \d+ minutes", response.text), response.text[:2000]
    assert "gw_session" not in response.cookies
    actions = [r.action for r in site.world.access.audit(site.world.who("auditor"), actor="tess")]
    assert actions.count("sign-in-failed") == 3 and actions.count("sign-in-throttled") == 1
    assert site.clients["mem.a"].get("/letters").status_code == 200, "the others' sessions live on"
