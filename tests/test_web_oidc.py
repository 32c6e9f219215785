"""Single sign-on against a real OpenID Connect provider on loopback: discovery, the authorization
code flow with state and nonce, an RS256-signed ID token checked against the provider's keys. The
provider proves an address; only an enabled person holding it signs in, and every outcome is an
audit row."""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from web_support import Site

from gateway.web.server import WebServer

CLIENT_ID = "gateway-register"
CLIENT_SECRET = "s3cret-for-tests-only"


@dataclass
class Provider:
    """An OpenID provider that signs in whoever `next_claims` says, as a real one would after its login page."""

    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "test-key"}))
    next_claims: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    issuer: str = ""
    token_requests: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/jwks", self.jwks),
        ])

    async def discovery(self, request: Request) -> Response:
        return JSONResponse({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"], **self.next_claims}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        form = await request.form()
        auth = request.headers.get("authorization", "")
        assert auth.startswith("Basic ") or form.get("client_secret") == CLIENT_SECRET
        grant = self.codes.pop(str(form["code"]), None)
        if grant is None or grant.pop("redirect_uri") != form["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, 400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": grant.get("email", "x"), "iat": now,
                  "exp": now + 300, **{k: v for k, v in grant.items() if v is not None}}
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                             "expires_in": 300, "id_token": id_token})

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider()
    server = WebServer(p.app(), "127.0.0.1:0")
    p.issuer = f"http://{server.start()}"
    yield p
    server.stop()


@pytest.fixture
def sso_site(tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, str]]:
    monkeypatch.setenv("GATEWAY_OIDC_SECRET", CLIENT_SECRET)
    site = Site(tmp_path, extra=f"""
[web.oidc]
issuer = "{provider.issuer}"
client_id = "{CLIENT_ID}"
label = "Company SSO"
""")
    site.add_people()
    site.add_letters()
    server = WebServer(site.app, "127.0.0.1:0")
    url = f"http://{server.start()}"
    yield site, url
    server.stop()
    site.close()


def sign_in_by_sso(url: str, provider: Provider, claims: dict[str, Any]) -> httpx.Response:
    """Press the button and follow every redirect, as a browser does."""
    provider.next_claims = claims
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = browser.get(f"{url}/signin")
        assert "Company SSO" in page.text
        done = browser.get(f"{url}/signin/oidc", params={"next": "/letters?queue=all"})
        done.cookies_seen = dict(browser.cookies)  # type: ignore[attr-defined]
        return done


def test_a_verified_address_of_an_enabled_person_signs_them_in(sso_site: tuple[Site, str],
                                                               provider: Provider) -> None:
    site, url = sso_site
    done = sign_in_by_sso(url, provider, {"email": "rita@example.org", "email_verified": True})
    assert done.status_code == 200 and done.url.path == "/letters", done.text[:500]
    assert "gw_session" in done.cookies_seen  # type: ignore[attr-defined]
    assert site.letters["business"] in done.text  # the registry office's whole register
    rows = site.registry.audit_rows(actor="rita", action="sign-in")
    assert [r.details.get("method") for r, _ in rows] == ["oidc"]


def test_single_sign_on_grants_nothing_by_itself(sso_site: tuple[Site, str], provider: Provider) -> None:
    site, url = sso_site
    # Someone the provider knows but the register does not.
    stranger = sign_in_by_sso(url, provider, {"email": "mallory@example.org", "email_verified": True})
    assert stranger.url.path == "/signin/oidc/callback" and stranger.status_code == 403
    assert "gw_session" not in stranger.cookies_seen  # type: ignore[attr-defined]
    # An address the provider has not verified, or has not said it verified.
    for verified in ({"email_verified": False}, {}, {"email_verified": "false"}, {"email_verified": 1}):
        unverified = sign_in_by_sso(url, provider, {"email": "rita@example.org", **verified})
        assert unverified.status_code == 403, verified
        assert "gw_session" not in unverified.cookies_seen, verified  # type: ignore[attr-defined]
    # A disabled person.
    site.people.set_disabled("sam", True, actor="test")
    disabled = sign_in_by_sso(url, provider, {"email": "sales.desk@example.org", "email_verified": True})
    assert disabled.status_code == 403 and "gw_session" not in disabled.cookies_seen  # type: ignore[attr-defined]
    failed = [(r.actor, r.details.get("reason")) for r, _ in site.registry.audit_rows(action="sign-in-failed")]
    assert failed == [("sales.desk@example.org", "no person with this address"),  # newest first
                      *[("rita@example.org", "no verified e-mail from single sign-on")] * 4,
                      ("mallory@example.org", "no person with this address")]


def test_a_forged_callback_is_refused(sso_site: tuple[Site, str], provider: Provider) -> None:
    site, url = sso_site
    with httpx.Client(follow_redirects=False, timeout=20) as browser:
        # A code and state the browser never asked for (login CSRF): no session.
        forged = browser.get(f"{url}/signin/oidc/callback", params={"code": "abc", "state": "xyz"})
        assert forged.status_code in (401, 403) and "gw_session" not in browser.cookies
    assert site.registry.audit_rows(action="sign-in") == []
