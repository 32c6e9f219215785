"""No one widens their own rights: an administrator manages everyone's roles but their own, in the
service, on the people page and with `gateway users grant` alike; another administrator (or the
server's operator) can."""
from __future__ import annotations

import pytest
from web_support import Site, site_fixture  # noqa: F401  (the fixture)

from gateway.services.people import People


def test_an_administrator_cannot_widen_their_own_rights(site: Site) -> None:
    people: People = site.people
    with pytest.raises(ValueError, match="no one changes their own roles"):
        people.update("ada", roles=["admin", "registry"], actor="ada")
    with pytest.raises(ValueError, match="no one grants rights to themselves"):
        people.grant("ada", letter=site.letters["secret"], actor="ada")
    with pytest.raises(ValueError, match="no one grants rights to themselves"):
        people.grant("ada", roles=["leader"], actor="ada")
    # An address is a right too: the head of Business's would make her its head, and its owner's
    # the owner of what is assigned to it.
    for address in ("business.head@example.org", "sales.desk@example.org"):
        with pytest.raises(ValueError, match="no one adds e-mail addresses to themselves"):
            people.update("ada", emails=["ada@example.org", address], actor="ada")
    people.update("ada", name="Ada Lovelace", actor="ada")  # the rest of their own entry is theirs
    assert sorted(people.principal("ada").roles) == ["admin"]  # type: ignore[union-attr]

    # On the people page: refused with the reason, nothing changed, an audit row for nothing.
    browser = site.sign_in("ada")
    page = browser.post("/people/ada", data={"csrf": browser.csrf, "name": "Ada", "emails": "ada@example.org",
                                             "roles": ["admin", "registry"]})
    assert page.status_code == 400 and "another administrator must" in page.text
    assert sorted(people.principal("ada").roles) == ["admin"]  # type: ignore[union-attr]
    page = browser.post("/people/ada", data={"csrf": browser.csrf, "name": "Ada", "roles": ["admin"],
                                             "emails": "ada@example.org, business.head@example.org"})
    assert page.status_code == 400 and "another administrator must" in page.text
    assert people.principal("ada").headed == frozenset()  # type: ignore[union-attr]
    assert browser.get(f"/letters/{site.letters['secret']}/original").status_code == 404
    assert not [r for r, _ in site.registry.audit_rows(action="person-changed")
                if r.subject == "ada" and "roles" in r.details]

    # Another administrator may; so may the operator at the server's shell.
    people.add("bert", roles=["admin"], emails=["bert@example.org"], actor="test")
    people.update("ada", roles=["admin", "auditor"], actor="bert")
    assert sorted(people.principal("ada").roles) == ["admin", "auditor"]  # type: ignore[union-attr]
    site.gateway.run("users", "grant", "ada", "--role", "leader")
    assert "leader" in people.principal("ada").roles  # type: ignore[union-attr]


def test_a_member_cannot_take_a_confidential_letter_to_read_it(site: Site) -> None:
    """Assigning a letter makes its assignee the owner, who reads a confidential one: a member who
    may not read it cannot assign it to themselves. The head of the department, or the registry
    office, assigns it to them."""
    number = site.letters["secret"]  # confidential, of Business; sam is in Business, bella its head
    sam = site.sign_in("sam")
    taken = sam.post(f"/letters/{number}/act", data={"csrf": sam.csrf, "action": "assign", "assignee": "sam"})
    assert taken.status_code == 403 and "只有其部门负责人或收发室可以将它分派给您" in taken.text
    assert site.registry.letter(number).owner is None  # type: ignore[union-attr]
    assert "The terms are attached." not in sam.get(f"/letters/{number}").text
    assert sam.get(f"/letters/{number}/original").status_code == 404
    # The same through the bulk step of a queue.
    bulk = sam.post("/letters/bulk", data={"csrf": sam.csrf, "action": "assign", "assignee": "sam",
                                           "number": [number]})
    assert bulk.status_code == 200 and "只有其部门负责人或收发室可以将它分派给您" in bulk.text, bulk.text
    assert site.registry.letter(number).owner is None  # type: ignore[union-attr]

    bella = site.sign_in("bella")
    given = bella.post(f"/letters/{number}/act", data={"csrf": bella.csrf, "action": "assign", "assignee": "sam"})
    assert given.status_code == 303, given.text
    assert "The terms are attached." in sam.get(f"/letters/{number}").text  # its owner now


def test_single_sign_on_takes_a_verified_claim_given_as_text(site: Site) -> None:
    people: People = site.people
    assert people.principal_for_oidc({"email": "Rita@example.org", "email_verified": "true"},
                                     address="127.0.0.1").login == "rita"


def test_the_registers_own_actor_names_are_no_sign_in_names(site: Site) -> None:
    """"gateway" (system events), "sender" (the rating page) and the intakes' names are who acted
    when no person did: a person of that name would be taken for them in the history and the audit log."""
    for login in ("gateway", "web", "sender", "file"):
        with pytest.raises(ValueError, match="the register's own name for who acted"):
            site.people.add(login, name="Someone", actor="ada")
    assert site.people.add("webster", name="Webster", actor="ada").login == "webster"
