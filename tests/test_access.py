"""Who sees and does what, decided by the access service: a matrix of people × letters, queues and
counts, audit rows of reads, sign-in throttling, the end of sessions, rights from [[departments]],
`gateway users`, and steps on letters through the lifecycle.

Letters arrive the real way (`gateway ingest`), people are added with `gateway users add`; the
services are then asked in-process, against SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest import Gateway, PostgresServer
from gateway import config as config_mod
from gateway.registry import Registry
from gateway.registry.models import WebSession
from gateway.registry.store import utcnow
from gateway.services.access import ACTIONS, INPUT_REFUSALS, Access, Forbidden, QueueQuery, Refused
from gateway.services.people import People, Principal, SignInRefused, Throttled

pytestmark = pytest.mark.timeout(300)

PASSWORD = "correct horse battery"
A, B = "general-office", "business"

# 机密 makes a letter confidential, 专人 gives it an owner, 投诉 makes it a complaint; the rest
# go to the department they were addressed to (or to triage).
RULES = """
rules:
  - name: confidential
    when: {subject: ["机密"]}
    set: {confidentiality: confidential}
    stop: false
  - name: personal
    when: {subject: ["专人"]}
    set: {owner: owen@example.org}
    stop: false
  - name: complaints
    when: {subject: ["投诉"]}
    set: {category: external.inquiry_complaint, department: recipient}
  - name: by-address
    when:
      any:
        - recipient_department: any
        - mailbox_department: any
    set: {department: recipient}
"""

# [web] limits small enough to reach in a test.
WEB = "session_idle_minutes = 5\nsession_absolute_hours = 1\nsignin_failures_per_account = 3\n" \
      "signin_failures_per_address = 5\n"

PEOPLE: dict[str, list[str]] = {
    "reg": ["--email", "reg@example.org", "--role", "registry"],
    "mem.a": ["--email", "mem.a@example.org", "--department", A, "--role", "member"],
    "mem.b": ["--email", "sales.desk@example.org"],  # an owner of business in [[departments]]
    "head.a": ["--email", "office.head@example.org"],  # the head of general-office in [[departments]]
    "leader": ["--email", "leader@example.org", "--role", "leader"],
    "auditor": ["--email", "auditor@example.org", "--role", "auditor"],
    "admin": ["--email", "admin@example.org", "--role", "admin"],
    "owen": ["--email", "owen@example.org"],  # owns the letter 专人 gives him
    "grace": ["--email", "grace@example.org"],  # granted the content of one confidential letter
}

# key: (subject, to)
LETTERS = {
    "A": ("Order 4711 from a partner", "liaison@example.org"),
    "B": ("Quotation for next quarter", "sales@example.org"),
    "CA": ("机密 contract draft", "liaison@example.org"),
    "CO": ("机密 专人 personnel matter", "liaison@example.org"),
    "AB": ("Meant for business", "liaison@example.org"),  # reassigned to business below
    "ACT": ("投诉 late delivery", "liaison@example.org"),
    "ACT2": ("Routine request", "liaison@example.org"),
    "TRIAGE": ("Nobody's letter", "nobody@example.org"),
}
MATRIX = ("A", "B", "CA", "CO", "AB")  # the rest: with general-office, ordinary, for steps

A_NAME = "General Office"  # refusals name the department as people know it
# tags go wherever notes do
ALL8 = frozenset({"ack", "progress", "answer", "close", "note", "tag", "assign", "reassign"})
# the sender's reference is put right by those of the department and the registry office who read it
ALL9 = ALL8 | {"reference"}
NONE: frozenset[str] = frozenset()
HIDDEN = None  # the letter is not visible at all

# person -> letter -> (content?, actions) or HIDDEN; every letter is routed and open here.
EXPECTED: dict[str, dict[str, tuple[bool, frozenset[str]] | None]] = {
    "reg": {k: (k not in ("CA", "CO"), frozenset({"note", "tag", "assign", "reassign", "hold"}
                                                 | ({"reference"} if k not in ("CA", "CO") else set())))
            for k in MATRIX},
    "mem.a": {"A": (True, ALL9), "B": HIDDEN, "CA": (False, ALL8), "CO": (False, ALL8), "AB": (True, NONE)},
    "mem.b": {"A": HIDDEN, "B": (True, ALL9), "CA": HIDDEN, "CO": HIDDEN, "AB": (True, ALL9)},
    "head.a": {"A": (True, frozenset(ACTIONS)), "B": HIDDEN, "CA": (True, frozenset(ACTIONS)),
               "CO": (True, frozenset(ACTIONS)), "AB": (True, NONE)},
    "leader": {k: (k not in ("CA", "CO"), frozenset({"note", "tag", "hold"})) for k in MATRIX},
    # the auditor is granted B's content; the administrator nothing
    "auditor": {k: (k == "B", NONE) for k in MATRIX},
    "admin": {k: (False, NONE) for k in MATRIX},
    "owen": {"A": HIDDEN, "B": HIDDEN, "CA": HIDDEN, "AB": HIDDEN,
             "CO": (True, frozenset({"ack", "progress", "answer", "close", "note", "tag", "reference"}))},
    "grace": {"A": HIDDEN, "B": HIDDEN, "CA": (True, NONE), "CO": HIDDEN, "AB": HIDDEN},
}
# who sees the other letters (all with general-office)
IN_A = {"reg", "mem.a", "head.a", "leader", "auditor", "admin"}


def png(text: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (40 + len(text), 20), color=200).save(out, "PNG")
    return out.getvalue()


def letter_mail(n: int, key: str, subject: str, to: str) -> bytes:
    """A letter with a small image attached (named after its key)."""
    message = EmailMessage()
    message["From"] = "Alice Partner <alice@partner.example>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<letter-{n}-{key.lower()}@partner.example>"
    message.set_content(f"Dear team,\nplease see the scan attached ({key}).\nAlice\n")
    message.add_attachment(png(key), maintype="image", subtype="png", filename=f"{key.lower()}-scan.png")
    return message.as_bytes()


@dataclass
class World:
    gateway: Gateway
    registry: Registry
    people: People
    access: Access
    numbers: dict[str, str]  # LETTERS key -> number

    def who(self, login: str) -> Principal:
        principal = self.people.principal(login)
        assert principal is not None, login
        return principal

    def n(self, key: str) -> str:
        return self.numbers[key]


def with_web_settings(gateway: Gateway, settings: str) -> None:
    text = gateway.config.read_text()
    assert "\n[web]\n" in text
    gateway.config.write_text(text.replace("\n[web]\n", "\n[web]\n" + settings, 1))


def build_world(tmp: Path, registry_url: str, *, cli: bool, extra: str = "") -> World:
    """Letters by `gateway ingest`; people by `gateway users add` (`cli`) or the service it calls.
    `extra`: more sections of the configuration."""
    gateway = Gateway(tmp, registry_url=registry_url, rules=RULES, extra=extra)
    with_web_settings(gateway, WEB)
    files = []
    for i, (key, (subject, to)) in enumerate(LETTERS.items()):
        path = tmp / f"{i}-{key}.eml"
        path.write_bytes(letter_mail(i, key, subject, to))
        files.append(path)
    out = gateway.run("ingest", *map(str, files)).stdout
    numbers = dict(re.findall(r"\d+-(\w+)\.eml: registered as (\S+)", out))
    assert set(numbers) == set(LETTERS), out
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    people = People(config, registry)
    if cli:
        with ThreadPoolExecutor(4) as pool:  # one process each: the slow part is Python starting
            list(pool.map(lambda item: gateway.run("users", "add", item[0], *item[1], "--password-stdin",
                                                   input=f"{PASSWORD}\n".encode()), PEOPLE.items()))
        gateway.run("users", "grant", "grace", "--letter", numbers["CA"], "--reason", "legal review")
        gateway.run("users", "grant", "auditor", "--letter", numbers["B"])
    else:  # the same service the command calls, without a process per person
        for login, args in PEOPLE.items():
            options: dict[str, list[str]] = {"--email": [], "--department": [], "--role": []}
            for option, value in zip(args[::2], args[1::2], strict=True):
                options[option].append(value)
            people.add(login, emails=options["--email"], departments=options["--department"],
                       roles=options["--role"], password=PASSWORD, actor="test")
        people.grant("grace", letter=numbers["CA"], reason="legal review", actor="test")
        people.grant("auditor", letter=numbers["B"], actor="test")
    world = World(gateway, registry, people, Access(config, registry), numbers)
    world.access.act(world.who("reg"), numbers["AB"], "reassign", department=B, text="belongs to business",
                     address="192.0.2.1")
    return world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = ""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
    w = build_world(tmp_path_factory.mktemp(f"access-{request.param}"), url, cli=request.param == "sqlite")
    yield w
    w.registry.close()


# Sign-in, sessions and the command do not depend on the database's dialect: SQLite only.
sqlite_only = pytest.mark.parametrize("world", ["sqlite"], indirect=True)


# -- who sees what ------------------------------------------------------------
def test_matrix_of_people_and_letters(world: World) -> None:
    got: dict[str, dict[str, tuple[bool, frozenset[str]] | None]] = {}
    for login in EXPECTED:
        who = world.who(login)
        got[login] = {}
        for key in MATRIX:
            view = world.access.letter(who, world.n(key), address="192.0.2.7", audit=False)
            got[login][key] = None if view is None else (view.rights.content, view.rights.actions)
            assert view is None or view.letter.number == world.n(key)
    mismatches = {f"{login}/{key}": (got[login][key], EXPECTED[login][key])
                  for login in EXPECTED for key in MATRIX if got[login][key] != EXPECTED[login][key]}
    assert not mismatches, f"(got, expected): {mismatches}"


def test_a_letter_no_one_may_know_of_and_a_number_that_does_not_exist_look_the_same(world: World) -> None:
    for login in ("mem.b", "owen", "grace"):
        assert world.access.letter(world.who(login), world.n("A"), address="x") is None
        assert world.access.letter(world.who(login), "2026-999999", address="x") is None
        assert world.access.readers(world.who(login), world.n("A")) == []
        assert world.access.outbox(world.who(login), world.n("A")) == []
        assert world.access.assignees(world.who(login), world.n("A")) == []
    assert world.access.outbox(world.who("mem.a"), world.n("A")), "the receipt to the sender is mail about it"


def test_refusals_say_why(world: World) -> None:
    rights = world.access.letter(world.who("leader"), world.n("A"), address="x", audit=False)
    assert rights is not None
    assert rights.rights.refusal("note") is None
    why = rights.rights.refusal("ack")
    assert isinstance(why, Forbidden) and A_NAME in str(why) and world.n("A") in str(why)
    why = rights.rights.refusal("assign")
    assert isinstance(why, Forbidden) and "registry office" in str(why)


def visible_keys(world: World, login: str) -> set[str]:
    expected = {k for k in MATRIX if EXPECTED[login][k] is not None}
    return expected | ({"ACT", "ACT2", "TRIAGE"} if login in IN_A else set())


def test_queues_and_counts_show_only_visible_letters(world: World) -> None:
    by_number = {v: k for k, v in world.numbers.items()}
    for login in EXPECTED:
        who = world.who(login)
        page = world.access.queue(who, QueueQuery(queue="all", per_page=200))
        seen = {by_number[letter.number] for letter in page.rows}
        # letters of earlier tests in this module may have moved state, never department
        assert seen == visible_keys(world, login), login
        assert page.total == len(seen), login
        assert "all" not in world.access.counts(who)  # counted on its page only
        shown = {by_number[letter.number] for letter in page.rows if letter.id in page.content}
        readable = {k for k in seen if k in MATRIX and EXPECTED[login][k][0]}  # type: ignore[index]
        readable |= {k for k in seen if k not in MATRIX and login not in ("auditor", "admin")}
        assert shown == readable, login


def test_the_queues_of_a_member_a_head_an_owner_and_the_registry_office(world: World) -> None:
    access = world.access
    keys = {v: k for k, v in world.numbers.items()}

    def queue(login: str, name: str, **filters: str) -> set[str]:
        page = access.queue(world.who(login), QueueQuery(queue=name, **filters))  # type: ignore[arg-type]
        return {keys[letter.number] for letter in page.rows}

    # each lands on the first: the department's people on theirs, the registry office on triage
    assert access.queues(world.who("mem.a")) == ["departments", "triage", "mine", "overdue", "all"]
    assert access.queues(world.who("mem.b")) == ["departments", "mine", "overdue", "all"]
    assert access.queues(world.who("reg"))[0] == "triage"
    assert access.queues(world.who("leader"))[0] == "all"
    assert queue("mem.a", "departments") == {"A", "CA", "CO", "ACT", "ACT2", "TRIAGE"}  # AB moved on
    assert queue("mem.b", "departments") == {"B", "AB"}
    assert queue("owen", "mine") == {"CO"}
    assert queue("reg", "triage") == {"TRIAGE"}
    assert queue("mem.a", "triage") == {"TRIAGE"}
    assert queue("reg", "all", category="external.inquiry_complaint") == {"ACT"}
    assert queue("mem.a", "all", department=B) == {"AB"}
    assert queue("mem.b", "departments", department=A) == set()
    counts = access.counts(world.who("owen"))
    assert counts["mine"] == 1 and counts["overdue"] == len(queue("owen", "overdue"))
    # the sidebar's numbers are the queues' totals
    for login in ("mem.a", "mem.b", "head.a", "reg", "leader"):
        who = world.who(login)
        for name, count in access.counts(who).items():
            assert count == access.queue(who, QueueQuery(queue=name)).total, (login, name)


def test_every_queue_lists_and_counts_the_same_letters_in_every_order(world: World) -> None:
    """Counts, and rows in an order no index gives (by deadline), find a person's letters part by
    part of their scope (their departments', once theirs, assigned, granted: one set of ids); rows
    in an indexed order test the scope as one condition. Each way gives the same letters."""
    for login in EXPECTED:
        who = world.who(login)
        counts = world.access.counts(who)
        for name in world.access.queues(who):
            pages = {sort: world.access.queue(who, QueueQuery(queue=name, sort=sort, per_page=200))
                     for sort in ("-received", "number", "deadline", "-deadline")}
            listed = {sort: sorted(letter.number for letter in page.rows) for sort, page in pages.items()}
            assert len({tuple(numbers) for numbers in listed.values()}) == 1, (login, name, listed)
            assert {page.total for page in pages.values()} == {len(listed["-received"])}, (login, name)
            assert counts.get(name, len(listed["-received"])) == len(listed["-received"]), (login, name)


def test_the_overdue_queue_lists_what_the_dashboard_counts_as_overdue(tmp_path: Path) -> None:
    """A department's member chases their department's letters, those assigned to them and those
    granted to them, whatever department holds them: the dashboard's overdue figure counts those,
    and its link, the overdue queue (and its number in the sidebar), lists the same letters."""
    import sqlite3

    from conftest import make_message, write_messages
    from gateway.services.dashboard import compute

    gateway = Gateway(tmp_path)
    gateway.run("ingest", *write_messages(tmp_path, (make_message(n, to="sales@example.org") for n in range(4))))
    gateway.run("users", "add", "pat", "--email", "pat@example.org", "--role", "member", "--department", B,
                "--no-password")
    gateway.run("users", "grant", "pat", "--letter", "2026-000003", "--reason", "to help")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET deadline = datetime('now', '-2 days')")  # all four overdue
        # 2: with general-office, assigned to pat; 3: with general-office, granted to pat;
        # 4: passed on to general-office by business, nothing to do with pat any more.
        db.execute(f"UPDATE letters SET department = '{A}' WHERE number IN ('2026-000002', '2026-000003', "
                   "'2026-000004')")
        db.execute("UPDATE letters SET owner = 'pat@example.org' WHERE number = '2026-000002'")
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    try:
        access = Access(config, registry)
        pat = People(config, registry).principal("pat")
        assert pat is not None
        board = compute(config, registry, access, pat)
        page = access.queue(pat, QueueQuery(queue="overdue"))
        assert sorted(letter.number for letter in page.rows) == ["2026-000001", "2026-000002", "2026-000003"]
        assert board.overdue_total.count == page.total == access.counts(pat)["overdue"] == 3
        assert board.overdue_total.url == "/letters?queue=overdue" and board.overdue_total.exact
        # Each department's figure opens that department's part of the same queue.
        for row in board.departments:
            listed = access.queue(pat, QueueQuery(queue="overdue", department=row.id))
            assert listed.total == row.overdue.count, row.id
    finally:
        registry.close()


# -- audit of reads ---------------------------------------------------------
def rows_for(world: World, *, actor: str, action: str, number: str) -> list[str]:
    return [r.address for r in world.access.audit(world.who("auditor"), actor=actor, action=action, letter=number)]


def test_reads_downloads_originals_and_exports_are_audited(world: World) -> None:
    access, number = world.access, world.n("A")
    mem_a = world.who("mem.a")
    assert access.letter(mem_a, number, address="198.51.100.1") is not None
    assert rows_for(world, actor="mem.a", action="read", number=number) == ["198.51.100.1"]

    [attachment] = access.letter(mem_a, number, address="198.51.100.2").letter.attachments  # type: ignore[union-attr]
    name, content, kind = access.attachment(mem_a, number, attachment.position, address="198.51.100.3") or ("", b"", "")
    assert (name, kind, content) == ("a-scan.png", "image/png", png("A"))
    assert rows_for(world, actor="mem.a", action="download", number=number) == ["198.51.100.3"]

    original = access.original(mem_a, number, address="198.51.100.4")
    assert original is not None and original[0] == f"{number}.eml" and b"<letter-0-a@partner.example>" in original[1]
    assert rows_for(world, actor="mem.a", action="original", number=number) == ["198.51.100.4"]

    # without content: no read, no attachment, no original, and no row
    head_b_letter = world.n("CA")
    assert access.letter(mem_a, head_b_letter, address="198.51.100.5") is not None
    assert access.original(mem_a, head_b_letter, address="198.51.100.5") is None
    assert access.attachment(world.who("admin"), number, attachment.position, address="198.51.100.5") is None
    assert access.original(world.who("mem.b"), number, address="198.51.100.5") is None
    assert not [r for r in access.audit(world.who("auditor")) if r.address == "198.51.100.5"]

    readers = access.readers(world.who("leader"), number)
    assert {(r.actor, r.action) for r in readers} >= {("mem.a", "read"), ("mem.a", "download"),
                                                      ("mem.a", "original")}
    assert all(r.letter_number == number for r in readers)

    exported = "".join(access.export_csv(mem_a, QueueQuery(queue="departments"), address="198.51.100.6"))
    subjects = {row["number"]: row["subject"] for row in csv.DictReader(io.StringIO(exported))}
    assert subjects[number] == LETTERS["A"][0]
    assert subjects[world.n("CA")] == ""  # a confidential subject stays hidden in an export too
    assert world.n("B") not in subjects
    [export] = [r for r in access.audit(world.who("auditor"), actor="mem.a", action="export")
                if r.address == "198.51.100.6"]
    assert export.details["rows"] == len(subjects)


def test_the_audit_log_is_for_auditors_only(world: World) -> None:
    for login in ("reg", "leader", "admin", "head.a"):
        with pytest.raises(Refused):
            world.access.audit(world.who(login))
        with pytest.raises(Refused):
            world.access.audit_csv(world.who(login), address="x")
    text = "".join(world.access.audit_csv(world.who("auditor"), address="203.0.113.9"))
    assert "grant" in {row["action"] for row in csv.DictReader(io.StringIO(text))}
    assert [r.address for r in world.access.audit(world.who("auditor"), action="audit-export")] == ["203.0.113.9"]


# -- signing in -------------------------------------------------------------
@sqlite_only
def test_sign_in_is_throttled_per_account(world: World) -> None:
    people = world.people
    people.add("victim", emails=["victim@example.org"], password=PASSWORD, actor="test")
    assert people.authenticate("victim", PASSWORD, address="10.1.0.1").login == "victim"
    for i in range(3):  # signin_failures_per_account
        with pytest.raises(SignInRefused) as refused:
            people.authenticate("victim", f"wrong password {i}", address=f"10.1.0.{i + 2}")
        assert not isinstance(refused.value, Throttled)
        assert str(refused.value) == "wrong name or password"
    with pytest.raises(Throttled) as throttled:  # even the right password, from anywhere
        people.authenticate("victim", PASSWORD, address="10.1.9.9")
    assert throttled.value.retry_after > 0
    actions = [r.action for r in world.access.audit(world.who("auditor"), actor="victim")]
    assert actions.count("sign-in-failed") == 3 and actions.count("sign-in-throttled") == 1
    assert people.authenticate("mem.a", PASSWORD, address="10.1.9.9").login == "mem.a"  # others are not


@sqlite_only
def test_sign_in_is_throttled_per_address(world: World) -> None:
    people = world.people
    people.add("walker", emails=["walker@example.org"], password=PASSWORD, actor="test")
    for i in range(5):  # signin_failures_per_address, each name under its own limit
        with pytest.raises(SignInRefused) as refused:
            people.authenticate(f"nobody{i}", PASSWORD, address="10.2.0.1")
        assert str(refused.value) == "wrong name or password"
    with pytest.raises(Throttled):
        people.authenticate("walker", PASSWORD, address="10.2.0.1")
    assert people.authenticate("walker", PASSWORD, address="10.2.0.2").login == "walker"


@sqlite_only
def test_a_disabled_person_or_one_without_a_password_cannot_sign_in(world: World) -> None:
    people = world.people
    people.add("nopass", emails=["nopass@example.org"], actor="test")
    with pytest.raises(SignInRefused):
        people.authenticate("nopass", PASSWORD, address="10.3.0.1")
    people.add("gone", emails=["gone@example.org"], password=PASSWORD, actor="test")
    people.set_disabled("gone", True, actor="test")
    with pytest.raises(SignInRefused):
        people.authenticate("gone", PASSWORD, address="10.3.0.2")
    assert people.principal("gone") is None
    people.set_disabled("gone", False, actor="test")
    assert people.authenticate("gone", PASSWORD, address="10.3.0.2").login == "gone"


# -- sessions ---------------------------------------------------------------
def backdate(world: World, token_hash: str, **ages: timedelta) -> None:
    with world.registry.write() as conn:
        conn.execute(update(WebSession).where(WebSession.token_hash == token_hash)
                     .values(**{column: utcnow() - age for column, age in ages.items()}))


@sqlite_only
def test_sessions_end_on_sign_out_disable_and_password_change(world: World) -> None:
    people = world.people
    people.add("sam", emails=["sam@example.org"], password=PASSWORD, actor="test")
    sam = people.authenticate("sam", PASSWORD, address="10.4.0.1")
    other, _ = people.open_session(world.who("mem.a"), address="10.4.0.9")

    token, csrf = people.open_session(sam, address="10.4.0.1")
    info = people.session(token)
    assert info is not None and info.principal.login == "sam" and info.csrf == csrf
    assert people.session(token + "x") is None
    people.close_session(token, address="10.4.0.1")
    assert people.session(token) is None

    token, _ = people.open_session(sam, address="10.4.0.1")
    people.set_disabled("sam", True, actor="test")
    people.set_disabled("sam", False, actor="test")
    assert people.session(token) is None, "disabling ends the sessions; enabling does not bring them back"

    token, _ = people.open_session(sam, address="10.4.0.1")
    people.set_password("sam", "another long password", actor="test")
    assert people.session(token) is None
    assert people.session(other) is not None, "another person's session lives on"
    actions = [r.action for r in world.access.audit(world.who("auditor"), actor="sam")]
    assert actions.count("sign-in") == 3 and actions.count("sign-out") == 1


@sqlite_only
def test_sessions_end_after_the_idle_and_absolute_timeouts(world: World) -> None:
    people = world.people
    people.add("tim", emails=["tim@example.org"], password=PASSWORD, actor="test")
    tim = people.authenticate("tim", PASSWORD, address="10.5.0.1")
    idle, _ = people.open_session(tim, address="10.5.0.1")
    hashed = people.session(idle).token_hash  # type: ignore[union-attr]
    backdate(world, hashed, last_seen_at=timedelta(minutes=4))  # session_idle_minutes = 5
    assert people.session(idle) is not None
    backdate(world, hashed, last_seen_at=timedelta(minutes=4))
    assert people.session(idle) is not None, "a page view four minutes ago counts as activity"
    backdate(world, hashed, last_seen_at=timedelta(minutes=6))
    assert people.session(idle) is None
    backdate(world, hashed, last_seen_at=timedelta(0))
    assert people.session(idle) is None, "an idle session stays ended"

    old, _ = people.open_session(tim, address="10.5.0.1")
    hashed = people.session(old).token_hash  # type: ignore[union-attr]
    backdate(world, hashed, created_at=timedelta(minutes=59))  # session_absolute_hours = 1
    assert people.session(old) is not None
    backdate(world, hashed, created_at=timedelta(minutes=61), last_seen_at=timedelta(0))
    assert people.session(old) is None


@sqlite_only
def test_a_page_view_keeps_a_session_alive(world: World) -> None:
    people = world.people
    people.add("una", emails=["una@example.org"], password=PASSWORD, actor="test")
    token, _ = people.open_session(people.authenticate("una", PASSWORD, address="10.6.0.1"), address="10.6.0.1")
    hashed = people.session(token).token_hash  # type: ignore[union-attr]
    backdate(world, hashed, last_seen_at=timedelta(minutes=4))
    assert people.session(token) is not None  # touches last_seen
    session = world.registry.web_session(hashed)
    assert session is not None and utcnow() - session.last_seen_at < timedelta(minutes=1)


# -- rights from [[departments]] ------------------------------------------
def test_departments_owners_and_heads_map_to_people_by_address(world: World) -> None:
    head = world.who("head.a")
    assert (head.departments, head.headed, head.roles) == ({A}, {A}, {"member", "head"})
    member = world.who("mem.b")
    assert (member.departments, member.headed, member.roles) == ({B}, frozenset(), {"member"})
    stored = world.who("mem.a")
    assert (stored.departments, stored.headed, stored.roles) == ({A}, frozenset(), {"member"})
    owen = world.who("owen")
    assert (owen.departments, owen.roles) == (frozenset(), frozenset())
    # an address the configuration names and no person holds: its rights alone (answers by mail)
    nobody = world.people.principal_by_email("Business.Head@example.org")
    assert nobody is not None and (nobody.departments, nobody.headed) == ({B}, {B})
    assert world.people.principal_by_email("stranger@example.org") is None
    # assignees of a letter of general-office: its people with an address
    assignees = {p.login for p in world.access.assignees(world.who("reg"), world.n("A"))}
    assert {"mem.a", "head.a"} <= assignees and not assignees & {"mem.b", "leader", "owen"}


# -- steps ------------------------------------------------------------------
def events(world: World, key: str) -> list[tuple[str, str]]:
    letter = world.registry.letter(world.n(key))
    assert letter is not None
    return [(e.action, e.actor) for e in letter.events]


def test_steps_refused_for_want_of_rights(world: World) -> None:
    access, number = world.access, world.n("ACT2")
    before = events(world, "ACT2")
    cases = {("leader", "ack"): A_NAME, ("auditor", "note"): A_NAME, ("admin", "hold"): "leaders",
             ("mem.a", "hold"): "leaders", ("reg", "close"): A_NAME}
    for (login, action), words in cases.items():
        with pytest.raises(Forbidden, match=re.escape(words)):
            access.act(world.who(login), number, action, text="x", address="x")
    with pytest.raises(Forbidden):
        access.act(world.who("grace"), world.n("CA"), "note", text="x", address="x")
    with pytest.raises(Forbidden):
        access.act(world.who("owen"), world.n("CO"), "assign", assignee="mem.a", address="x")
    with pytest.raises(LookupError):
        access.act(world.who("mem.b"), number, "ack", address="x")  # not visible: like no letter
    with pytest.raises(LookupError):
        access.act(world.who("mem.a"), "2026-999999", "ack", address="x")
    with pytest.raises(Refused, match="no step"):
        access.act(world.who("mem.a"), number, "destroy", address="x")
    assert events(world, "ACT2") == before, "nothing happened"


def test_steps_refused_for_the_letters_state_or_missing_input(world: World) -> None:
    access, number, mem_a = world.access, world.n("ACT2"), world.who("mem.a")
    with pytest.raises(Refused, match="legal hold on or lift it") as unsaid:
        access.act(world.who("head.a"), number, "hold", text="a lawsuit is expected", address="x")
    assert unsaid.value.key in INPUT_REFUSALS
    with pytest.raises(Refused, match="reason"):
        access.act(world.who("head.a"), number, "hold", on=True, address="x")
    for action, kwargs, words in (("note", {}, "text"), ("reassign", {}, "department"),
                                  ("reassign", {"department": "nowhere"}, "nowhere"),
                                  ("assign", {}, "person"), ("assign", {"assignee": "mem.b"}, "not in department"),
                                  ("assign", {"assignee": "nobody"}, "nobody")):
        with pytest.raises(Refused, match=re.escape(words)):
            access.act(mem_a, number, action, address="x", **kwargs)  # type: ignore[arg-type]
    assert access.act(mem_a, number, "ack", address="x") == f"{number}: routed → acknowledged"
    with pytest.raises(Refused, match="acknowledged: it cannot be acknowledged"):
        access.act(mem_a, number, "ack", address="x")
    view = access.letter(mem_a, number, address="x", audit=False)
    assert view is not None and "ack" not in view.rights.actions and "close" in view.rights.actions
    why = view.rights.refusal("ack")
    assert why is not None and not isinstance(why, Forbidden) and "acknowledged" in str(why)


def test_a_complaint_acknowledged_assigned_and_closed_through_the_lifecycle(world: World) -> None:
    access, number = world.access, world.n("ACT")
    mem_a, head_a = world.who("mem.a"), world.who("head.a")
    access.act(mem_a, number, "ack", address="x")
    access.act(mem_a, number, "progress", address="x")
    access.act(mem_a, number, "note", text="called the customer", address="x")
    assert access.act(mem_a, number, "assign", assignee="head.a", text="yours", address="x") \
        == f"{number}: assigned to head.a"
    assert world.registry.letter(number).owner == "office.head@example.org"  # type: ignore[union-attr]
    assert "mine" in access.queues(head_a) and number in {
        r.number for r in access.queue(head_a, QueueQuery(queue="mine")).rows}
    with pytest.raises(Refused, match="result"):
        access.act(head_a, number, "close", address="x")
    access.act(head_a, number, "hold", text="a lawsuit is expected", on=True, address="x")
    assert world.registry.letter(number).legal_hold  # type: ignore[union-attr]
    assert access.act(head_a, number, "close", text="Redelivered; a refund follows.", address="x") \
        == f"{number}: in-progress → closed"
    steps = events(world, "ACT")
    for step in (("acknowledged", "mem.a"), ("in-progress", "mem.a"), ("note", "mem.a"),
                 ("assigned", "mem.a"), ("closed", "head.a")):
        assert step in steps
    assert "feedback-queued" in [action for action, _ in steps]
    feedback = [m for m in access.outbox(mem_a, number) if m.recipient == "alice@partner.example"
                and m.kind != "receipt"]
    assert feedback, [(m.kind, m.recipient) for m in access.outbox(mem_a, number)]
    view = access.letter(mem_a, number, address="x", audit=False)
    assert view is not None and view.rights.actions == {"note", "tag", "reference"}
    why = view.rights.refusal("close")
    assert why is not None and not isinstance(why, Forbidden) and "closed" in str(why)


def test_a_reassigned_letter_keeps_its_trace(world: World) -> None:
    assert ("reassigned", "reg") in events(world, "AB")
    letter = world.registry.letter(world.n("AB"))
    assert letter is not None and letter.department == B


# -- gateway users ----------------------------------------------------------
@sqlite_only
def test_the_users_command_round_trip(world: World) -> None:
    gw = world.gateway
    gw.run("users", "add", "zoe", "--name", "Zoe Zhang", "--email", "zoe@example.org", "--department", B,
           "--role", "member", "--language", "en", "--password-stdin", input=f"{PASSWORD}\n".encode())
    listed = {p["login"]: p for p in json.loads(gw.run("users", "list", "--json").stdout)}
    assert (listed["zoe"]["name"], listed["zoe"]["departments"], listed["zoe"]["roles"], listed["zoe"]["language"]) \
        == ("Zoe Zhang", [B], ["member"], "en")
    assert (listed["head.a"]["roles"], listed["head.a"]["heads"]) == (["head", "member"], [A])
    assert world.people.authenticate("zoe", PASSWORD, address="10.7.0.1").departments == {B}

    refused = gw.run("users", "add", "zoe2", "--department", "nowhere", "--no-password", check=False)
    assert refused.returncode != 0 and "nowhere" in refused.stderr
    refused = gw.run("users", "add", "zoe", "--no-password", check=False)
    assert refused.returncode != 0 and "exists" in refused.stderr
    refused = gw.run("users", "passwd", "zoe", "--password-stdin", input=b"short\n", check=False)
    assert refused.returncode != 0 and "10" in refused.stderr

    gw.run("users", "passwd", "zoe", "--password-stdin", input=b"a new long password\n")
    with pytest.raises(SignInRefused):
        world.people.authenticate("zoe", PASSWORD, address="10.7.0.2")
    gw.run("users", "grant", "zoe", "--letter", world.n("CA"), "--role", "leader")
    zoe = world.who("zoe")
    assert "leader" in zoe.roles and world.access.content_allowed(zoe, world.registry.letter(world.n("CA")))  # type: ignore[arg-type]
    gw.run("users", "grant", "zoe", "--letter", world.n("CA"), "--role", "leader", "--revoke")
    zoe = world.who("zoe")
    assert "leader" not in zoe.roles
    assert world.access.letter(zoe, world.n("CA"), address="x") is None
    gw.run("users", "disable", "zoe")
    assert world.people.principal("zoe") is None
    with pytest.raises(SignInRefused):
        world.people.authenticate("zoe", "a new long password", address="10.7.0.3")
    audited = {r.action for r in world.access.audit(world.who("auditor")) if r.subject == "zoe"}
    assert {"person-added", "password-set", "grant", "grant-revoked", "person-changed", "person-disabled"} <= audited


@sqlite_only
def test_the_operator_is_named_by_no_one_elses_name(world: World) -> None:
    """--by names the operator at the shell; it never writes another person's name, or the name the
    register gives the sender or itself, into a letter's events or the audit log."""
    gw, number, secret = world.gateway, world.n("ACT2"), world.n("CA")
    letter = world.registry.letter(secret)
    assert letter is not None
    for name in ("reg", "Head.A", "sender", "system"):  # a person (any case), the register's own names
        read = gw.run("letters", "show", secret, "--by", name, check=False)
        assert read.returncode == 1 and "--as" in read.stderr and "contract draft" not in read.stdout, name
        noted = gw.run("letters", "note", number, "a remark", "--by", name, check=False)
        assert noted.returncode == 1 and "--as" in noted.stderr, name
    assert not [row for row, _ in world.registry.audit_rows(letter_id=letter.id) if row.actor in ("reg", "Head.A")]
    assert not [e for e in world.registry.letter(number).events  # type: ignore[union-attr]
                if e.action == "note" and e.actor in ("reg", "Head.A", "sender", "system")]
    # The person acts as themselves, with their rights; the operator under a name of their own.
    assert "contract draft" not in gw.run("letters", "show", secret, "--as", "reg").stdout
    assert "contract draft" in gw.run("letters", "show", secret, "--by", "night.clerk").stdout
    assert len(world.registry.audit_rows(letter_id=letter.id, actor="night.clerk", action="read")) == 1
    # A blank name, or one with a line break, names no one; --by beside --as would be dropped unsaid.
    for name, says in (("   ", "--by: no name given"), ("", "--by: no name given"),
                       ("night.clerk\nreg", "--by: 'night.clerk\\nreg' holds a control character")):
        noted = gw.run("letters", "note", number, "a remark", "--by", name, check=False)
        assert noted.returncode == 1 and says in noted.stderr, (name, noted.stderr)
    both = gw.run("letters", "note", number, "a remark", "--as", "reg", "--by", "night.clerk", check=False)
    assert both.returncode == 2 and "give one of them" in both.stderr, both.stderr
    assert not [e for e in world.registry.letter(number).events  # type: ignore[union-attr]
                if e.action == "note" and e.actor.strip() in ("", "reg", "night.clerk\nreg", "night.clerk")]
    noted = gw.run("letters", "note", number, "a remark", "--by", " night.clerk ")
    # Run as the daemon's own user without sudo, the login is the register's name for the gateway.
    env = {k: v for k, v in gw.env().items() if k != "SUDO_USER"}
    as_daemon = gw.run("letters", "note", number, "a remark", check=False, env={**env, "LOGNAME": "gateway"})
    assert as_daemon.returncode == 1 and "the login 'gateway' is the register's own name" in as_daemon.stderr
    assert [e.actor for e in world.registry.letter(number).events if e.action == "note"] == ["night.clerk"]  # type: ignore[union-attr]
