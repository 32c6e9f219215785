"""A small organisation for web tests: a configured gateway with people in every role and a few
letters (ordinary, confidential, urgent, an inquiry, a fax, one for triage), the web register
served by a real uvicorn on 127.0.0.1 (WebServer), and httpx clients that sign in."""
from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from conftest import Gateway, make_message
from fax_samples import ENGLISH, tiff_fax
from starlette.applications import Starlette

from gateway.config import Config
from gateway.daemon.pipeline import Pipeline
from gateway.registry import Registry
from gateway.services import intake
from gateway.services.access import Access
from gateway.services.people import People
from gateway.spool import Spool
from gateway.stages import rulebook
from gateway.web.app import create_app
from gateway.web.server import WebServer

PASSWORD = "correct horse battery"

# By address; subjects marked confidential, urgent or as an inquiry say so; the rest to triage.
WEB_RULES = textwrap.dedent("""
    rules:
      - name: urgent
        when:
          keywords: {any: ["urgent", "紧急"], in: [subject]}
        set: {urgency: urgent}
        stop: false
      - name: confidential
        when:
          keywords: {any: ["confidential", "机密"], in: [subject]}
        set: {confidentiality: confidential}
        stop: false
      - name: inquiries
        when:
          keywords: {any: ["inquiry", "咨询"], in: [subject]}
        set: {category: external.inquiry_complaint, department: recipient}
      - name: by-address
        when:
          any:
            - recipient_department: any
            - mailbox_department: any
        set: {department: recipient, category: external.business}
""")
# A subject word 订单 from a sender outside vip.example nearly matches "orders": Business is then a
# likely department on the triage desk. For WEB_RULES.replace("rules:\n", "rules:\n" + ORDERS_RULE).
ORDERS_RULE = """\
  - name: orders
    when:
      all:
        - keywords: {any: ["订单"], in: [subject]}
        - sender_domain: ["vip.example"]
    set: {department: business}
"""

FAX_SETTINGS = """
[fax]
filename_pattern = '^fax_(?P<number>[0-9+]+)_(?P<received>[0-9]{8}-[0-9]{6})'
filename_time_format = "%Y%m%d-%H%M%S"
ocr_workers = 1
"""


@dataclass(frozen=True)
class Person:
    login: str
    roles: tuple[str, ...] = ()
    departments: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


# One person per role; "sam" is a member of Business by the configuration (its owner's address),
# "bella" heads Business by the configuration (its head's address), "gina" is a member of the
# General Office by her stored department.
PEOPLE = (
    Person("ada", roles=("admin",), emails=("ada@example.org",)),
    Person("rita", roles=("registry",), emails=("rita@example.org",)),
    Person("sam", emails=("sales.desk@example.org",)),
    Person("bella", emails=("business.head@example.org",)),
    Person("gina", roles=("member",), departments=("general-office",), emails=("gina@example.org",)),
    Person("leo", roles=("leader",), emails=("leo@example.org",)),
    Person("audrey", roles=("auditor",), emails=("audrey@example.org",)),
)


class Browser(httpx.Client):
    """A client with the session's CSRF token, as a page gives it to forms and htmx."""

    csrf = ""


class Clock:
    """A settable time for the web's time-limited rights (Access.clock)."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Site:
    """The gateway, its registry and services, people and letters; `client()` is a browser."""

    def __init__(self, tmp: Path, extra: str = "", rules: str = WEB_RULES, web: str = "", registry_url: str = ""):
        """`extra`: more TOML sections; `web`: more lines of the [web] section; `registry_url`: a
        PostgreSQL database instead of SQLite."""
        self.tmp = tmp
        self.gateway = Gateway(tmp, registry_url=registry_url, extra=FAX_SETTINGS + extra, rules=rules)
        if web:
            text = self.gateway.config.read_text()
            self.gateway.config.write_text(text.replace("\n[web]\n", f"\n[web]\n{web.strip()}\n", 1))
        self.config: Config = rulebook.load(str(self.gateway.config))
        self.registry = Registry.from_config(self.config)
        self.registry.upgrade()
        self.spool = Spool(self.config.spool_dir, self.config.message_dir)
        self.pipeline = Pipeline(self.config, self.spool, self.registry)
        self.people = People(self.config, self.registry)
        self.access = Access(self.config, self.registry)
        self.letters: dict[str, str] = {}  # name -> number
        self._app: Starlette | None = None
        self._server: WebServer | None = None
        self._clients: list[Browser] = []

    # -- contents -------------------------------------------------------
    def add_people(self, people: tuple[Person, ...] = PEOPLE) -> None:
        for p in people:
            self.people.add(p.login, name=p.login.title(), emails=p.emails, departments=p.departments,
                            roles=p.roles, password=PASSWORD, actor="test")

    def ingest(self, name: str, raw: bytes, filename: str = "") -> str:
        path = self.tmp / (filename or f"{name}.eml")
        path.write_bytes(raw)
        done = intake.ingest_file(self.config, self.spool, self.pipeline, path)
        assert done.result == "registered" and done.number, done
        self.letters[name] = done.number
        return done.number

    def add_letters(self) -> None:
        self.ingest("business", make_message(1, subject="Order 4711 for next quarter", to="sales@example.org",
                                             body="Please confirm the order.\n<script>alert(1)</script>\n"))
        self.ingest("office", make_message(2, subject="Visit next week", to="liaison@example.org"))
        self.ingest("secret", make_message(3, subject="Confidential: merger terms", to="sales@example.org",
                                           body="The terms are attached.\n"))
        self.ingest("inquiry", make_message(4, subject="Inquiry about delivery dates", to="sales@example.org"))
        self.ingest("urgent", make_message(5, subject="紧急：合同签署", to="liaison@example.org",
                                           body="请今天签署合同。\n"))
        self.ingest("triage", make_message(6, subject="Hello there", to="nobody@example.org"))
        self.ingest("fax", tiff_fax([ENGLISH, ["PAGE TWO"]]), filename="fax_+8620123456_20261122-090000.tif")

    # -- the web --------------------------------------------------------
    @property
    def app(self) -> Starlette:
        if self._app is None:
            self._app = create_app(self.config, registry=self.registry)
        return self._app

    @property
    def url(self) -> str:
        """The web register's address (served from the first call on)."""
        if self._server is None:
            self._server = WebServer(self.app, "127.0.0.1:0")
            self._server.start()
        return self._server.url

    def client(self) -> Browser:
        """A browser without a session; redirects are not followed unless asked."""
        client = Browser(base_url=self.url, follow_redirects=False, timeout=30)
        self._clients.append(client)
        return client

    def sign_in(self, login: str, password: str = PASSWORD, client: Browser | None = None) -> Browser:
        """A browser signed in as `login`, with the session's CSRF token."""
        client = client or self.client()
        form = client.get("/signin")
        token = hidden(form.text, "csrf")
        done = client.post("/signin", data={"login": login, "password": password, "csrf": token})
        assert done.status_code == 303, done.text
        page = client.get("/", follow_redirects=True)
        client.csrf = meta_csrf(page.text)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        if self._server is not None:
            self._server.stop()
        self.registry.close()


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return found.group(1)


def meta_csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)"', html)
    return found.group(1) if found else ""


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path) -> Iterator[Site]:
    """People in every role and the standard letters."""
    s = Site(tmp_path)
    s.add_people()
    s.add_letters()
    yield s
    s.close()
