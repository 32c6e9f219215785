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
    people.update("ada", name="Ada Lovelace", actor="ada")  # the rest of their own entry is theirs
    assert sorted(people.principal("ada").roles) == ["admin"]  # type: ignore[union-attr]

    # On the people page: refused with the reason, nothing changed, an audit row for nothing.
    browser = site.sign_in("ada")
    page = browser.post("/people/ada", data={"csrf": browser.csrf, "name": "Ada", "emails": "ada@example.org",
                                             "roles": ["admin", "registry"]})
    assert page.status_code == 400 and "another administrator must" in page.text
    assert sorted(people.principal("ada").roles) == ["admin"]  # type: ignore[union-attr]
    assert not [r for r, _ in site.registry.audit_rows(action="person-changed")
                if r.subject == "ada" and "roles" in r.details]

    # Another administrator may; so may the operator at the server's shell.
    people.add("bert", roles=["admin"], emails=["bert@example.org"], actor="test")
    people.update("ada", roles=["admin", "auditor"], actor="bert")
    assert sorted(people.principal("ada").roles) == ["admin", "auditor"]  # type: ignore[union-attr]
    site.gateway.run("users", "grant", "ada", "--role", "leader")
    assert "leader" in people.principal("ada").roles  # type: ignore[union-attr]
