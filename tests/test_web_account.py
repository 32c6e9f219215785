"""A person's own account page: who the register takes them for, changing their own password (the
present one proves it is them; their other browsers are signed out), and signing out elsewhere."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_support import PASSWORD, Browser, Person, Site, hidden, meta_csrf

from gateway.web import security

NEW = "a new and longer passphrase"


@pytest.fixture(name="site")
def people_only(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    s.add_people()
    yield s
    s.close()


def signed_in(client: Browser) -> bool:
    return client.get("/letters").status_code == 200


def can_sign_in(site: Site, login: str, password: str) -> bool:
    client = site.client()
    token = hidden(client.get("/signin").text, "csrf")
    return client.post("/signin", data={"login": login, "password": password, "csrf": token}).status_code == 303


def audit_actions(site: Site, actor: str) -> list[str]:
    auditor = site.people.principal("audrey")
    assert auditor is not None
    return [row.action for row in site.access.audit(auditor, actor=actor)]


def change(client: Browser, present: str, new: str, repeated: str | None = None) -> tuple[int, str]:
    response = client.post("/me/password", data={"csrf": client.csrf, "present": present, "password": new,
                                                 "repeated": new if repeated is None else repeated})
    return response.status_code, response.headers.get("location") or response.text


def test_the_account_page_says_who_the_register_takes_one_for(site: Site) -> None:
    sam = site.sign_in("sam")
    page = sam.get("/me")
    assert page.status_code == 200 and "我的账户" in page.text  # [web] language = "zh"
    assert "sales.desk@example.org" in page.text
    # sam's department comes from the configuration (the address is Business's owner's)
    assert re.search(r"<dt>部门</dt><dd>[^<]*Business", page.text), page.text
    assert "此浏览器" in page.text and "您只在此浏览器上登录" in page.text
    assert 'href="/me"' in sam.get("/letters").text  # the name at the top leads there
    leo = site.sign_in("leo")
    leo.post("/me/language", data={"csrf": leo.csrf, "language": "en", "next": "/me"})
    english = leo.get("/me")
    assert "My account" in english.text and "leader" in english.text and "Change password" in english.text


def test_a_person_changes_their_own_password_with_the_present_one(site: Site) -> None:
    here, elsewhere = site.sign_in("sam"), site.sign_in("sam")
    assert "已登录的浏览器" in here.get("/me").text and "退出其他所有浏览器" in here.get("/me").text

    refused = [
        (change(here, "not my password", NEW), "当前密码不正确"),
        (change(here, PASSWORD, NEW, "a new and longer passphrasE"), "两次输入的新密码不一致"),
        (change(here, PASSWORD, "short"), "密码至少需要 10 个字符"),
        (change(here, PASSWORD, PASSWORD), "新密码与当前密码相同"),
        (change(here, "", NEW), "请填写当前密码和新密码"),
    ]
    for (status, text), words in refused:
        assert status == 400 and words in text, (status, words)
    assert signed_in(here) and signed_in(elsewhere)
    assert can_sign_in(site, "sam", PASSWORD), "a refused change changes nothing"

    status, location = change(here, PASSWORD, NEW)
    assert (status, location) == (303, "/me?done=password")
    assert "密码已修改" in here.get(location).text
    assert signed_in(here), "the browser that changed it stays signed in"
    assert not signed_in(elsewhere), "every other browser is signed out"
    assert not can_sign_in(site, "sam", PASSWORD) and can_sign_in(site, "sam", NEW)
    actions = audit_actions(site, "sam")
    assert "password-changed" in actions and actions.count("sign-in-failed") == 2  # one wrong present, one old password


def test_a_browser_left_signed_in_cannot_guess_the_password(site: Site) -> None:
    """Wrong present passwords are failed sign-ins: counted, and throttled, with those of the sign-in page."""
    borrowed = site.sign_in("gina")
    for _ in range(site.config.model.web.signin_failures_per_account):
        assert change(borrowed, "guess", NEW)[0] == 400
    status, text = change(borrowed, PASSWORD, NEW)
    assert status == 429 and "失败次数过多" in text
    assert not can_sign_in(site, "gina", PASSWORD), "the sign-in page counts them too"
    assert "password-changed" not in audit_actions(site, "gina")


def test_signing_out_of_every_other_browser(site: Site) -> None:
    here, phone, laptop = site.sign_in("rita"), site.sign_in("rita"), site.sign_in("rita")
    other = site.sign_in("ada")
    assert here.get("/me").text.count("<tr class=\"browser\">") == 3
    done = here.post("/me/sessions/end", data={"csrf": here.csrf})
    assert done.status_code == 303 and done.headers["location"] == "/me?done=elsewhere"
    assert signed_in(here) and not signed_in(phone) and not signed_in(laptop)
    assert signed_in(other), "someone else's browsers are theirs"
    page = here.get("/me").text
    assert page.count("<tr class=\"browser\">") == 1 and "您只在此浏览器上登录" in page
    auditor = site.people.principal("audrey")
    assert auditor is not None
    [row] = [r for r in site.access.audit(auditor, actor="rita") if r.action == "signed-out-elsewhere"]
    assert row.details == {"signed_out": 2}


def test_a_person_without_a_password_is_told_so(site: Site) -> None:
    """Single sign-on people (added with no password) have nothing to change here."""
    site.add_people((Person("olga", emails=("olga@example.org",)),))
    site.people.update("olga", name="Olga", actor="test")
    site.registry.update_person("olga", {"password_hash": None}, audit=None)
    principal = site.people.principal("olga")
    assert principal is not None
    token, _csrf = site.people.open_session(principal, address="127.0.0.1", method="oidc")
    client = site.client()
    client.cookies.set(security.SESSION_COOKIE, token)
    page = client.get("/me")
    assert "您没有密码" in page.text and 'name="present"' not in page.text
    client.csrf = meta_csrf(page.text)
    status, text = change(client, "anything at all", NEW)
    assert status == 400 and "您没有可修改的密码" in text
    assert site.people.get("olga").has_password is False  # type: ignore[union-attr]


def test_an_administrator_is_told_why_a_password_is_refused_in_the_pages_language(site: Site) -> None:
    ada = site.sign_in("ada")
    short = ada.post("/people/sam/password", data={"csrf": ada.csrf, "password": "short"})
    assert short.status_code == 400 and "密码至少需要 10 个字符" in short.text
    added = ada.post("/people", data={"csrf": ada.csrf, "login": "pat", "name": "Pat", "password": "x" * 1025})
    assert added.status_code == 400 and "密码最多 1024 个字符" in added.text
    assert can_sign_in(site, "sam", PASSWORD) and site.people.get("pat") is None
