"""A person's own account page: who the register takes them for, changing their own password (the
present one proves it is them; their other browsers are signed out), and signing out elsewhere."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyotp
import pytest
from smtp_sink import SmtpSink
from sqlalchemy import update
from web_support import PASSWORD, Browser, Person, Site, hidden, meta_csrf

from gateway.outbound.sender import OutboxSender
from gateway.registry.models import PasswordReset, WebSession
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
    assert status == 303 and location.startswith("/me?done=password.")
    assert "密码已修改" in here.get(location).text
    # Only the step's own redirect says so: not a crafted link, nor the link in another's browser.
    assert "密码已修改" not in here.get("/me?done=password").text
    assert "密码已修改" not in site.sign_in("bella").get(location).text
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


EDGE = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36 Edg/120.0.0.0")
WECHAT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Mobile/15E148 MicroMessenger/8.0.42")


def test_signing_out_of_every_other_browser(site: Site) -> None:
    here, phone, laptop = site.sign_in("rita"), site.client(), site.client()
    phone.headers["User-Agent"], laptop.headers["User-Agent"] = WECHAT, EDGE
    site.sign_in("rita", client=phone), site.sign_in("rita", client=laptop)
    other = site.sign_in("ada")
    listed = here.get("/me").text
    assert listed.count('<tr class="browser">') == 3
    assert "WeChat · iPhone" in listed and "Edge · Windows" in listed and "Python" in listed
    done = here.post("/me/sessions/end", data={"csrf": here.csrf})
    assert done.status_code == 303 and done.headers["location"].startswith("/me?done=elsewhere.")
    assert signed_in(here) and not signed_in(phone) and not signed_in(laptop)
    assert signed_in(other), "someone else's browsers are theirs"
    page = here.get("/me").text
    assert page.count('<tr class="browser">') == 1 and "您只在此浏览器上登录" in page
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


# -- two-step sign-in -------------------------------------------------------------------------
def step(client: Browser, action: str, **fields: str) -> httpx.Response:
    return client.post("/me/two-step", data={"csrf": client.csrf, "action": action, **fields})


def set_up_two_step(client: Browser) -> tuple[pyotp.TOTP, list[str]]:
    """Through the account page as a person would: start, read the key under the QR code, prove it."""
    assert step(client, "start").headers["location"] == "/me#two-step"
    page = client.get("/me").text
    assert "<svg" in page and "腾讯身份验证器" in page
    key = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', page)
    assert key, "the key is shown for typing by hand"
    totp = pyotp.TOTP(key.group(1).replace(" ", ""))
    done = step(client, "on", present=PASSWORD, code=totp.now())
    assert done.status_code == 200 and "两步登录已开启" in done.text, done.text[-3000:]
    codes = re.findall(r"<li><code>([a-z0-9]{5}-[a-z0-9]{5})</code></li>", done.text)
    assert len(codes) == 10 and len(set(codes)) == 10
    return totp, codes


def password_step(site: Site, login: str, client: Browser | None = None) -> Browser:
    """The first step only: the right password, and the code page next."""
    client = client or site.client()
    token = hidden(client.get("/signin").text, "csrf")
    done = client.post("/signin", data={"login": login, "password": PASSWORD, "csrf": token, "next": "/letters"})
    assert done.status_code == 303 and done.headers["location"] == "/signin/code?next=%2Fletters", done.headers
    return client


def code_step(client: Browser, code: str) -> httpx.Response:
    form = client.get("/signin/code?next=/letters")
    assert form.status_code == 200, form.status_code
    return client.post("/signin/code", data={"csrf": hidden(form.text, "csrf"), "code": code, "next": "/letters"})


def later_code(totp: pyotp.TOTP) -> str:
    """The code of the next 30 seconds, which the register takes (a phone's clock may be ahead): a
    test need not wait for a fresh code after one was used."""
    return totp.at(datetime.now(UTC) + timedelta(seconds=30))


@pytest.fixture(name="lenient")
def lenient_site(tmp_path: Path) -> Iterator[Site]:
    """Room for the failures a test makes on purpose before the throttle stops it."""
    s = Site(tmp_path, web="signin_failures_per_account = 50")
    s.add_people()
    yield s
    s.close()


def test_two_step_sign_in_from_setting_it_up_to_signing_in_with_a_code(lenient: Site) -> None:
    site = lenient
    here, elsewhere = site.sign_in("sam"), site.sign_in("sam")
    assert "设置两步登录" in here.get("/me").text
    assert step(here, "start").status_code == 303
    key = re.search(r'<code class="secret">([A-Z2-7 ]+)</code>', here.get("/me").text)
    assert key
    totp = pyotp.TOTP(key.group(1).replace(" ", ""))
    wrong_code = step(here, "on", present=PASSWORD, code="000000" if totp.now() != "000000" else "111111")
    assert wrong_code.status_code == 400 and "验证码不正确" in wrong_code.text
    wrong_password = step(here, "on", present="not my password", code=totp.now())
    assert wrong_password.status_code == 400 and "当前密码不正确" in wrong_password.text
    assert site.people.get("sam").two_step_since is None  # type: ignore[union-attr]
    done = step(here, "on", present=PASSWORD, code=totp.now())
    assert done.status_code == 200 and "两步登录已开启" in done.text
    codes = re.findall(r"<li><code>([a-z0-9]{5}-[a-z0-9]{5})</code></li>", done.text)
    assert len(codes) == 10
    assert signed_in(here) and not signed_in(elsewhere), "the other browsers signed in with a password alone"
    assert "恢复码只显示这一次" not in here.get("/me").text and "还剩 10 个恢复码" in here.get("/me").text

    # The password alone no longer signs in: the session opens no page until the code is given.
    waiting = password_step(site, "sam")
    assert waiting.get("/letters").status_code == 303
    assert code_step(waiting, "123 456" if totp.now() != "123456" else "654321").status_code == 401
    code = later_code(totp)
    signed = code_step(waiting, f" {code[:3]} {code[3:]} ")  # spaces as people type them
    assert signed.status_code == 303 and signed.headers["location"] == "/letters"
    assert signed_in(waiting)
    replayed = code_step(password_step(site, "sam"), code)
    assert replayed.status_code == 401 and "验证码不正确" in replayed.text, "a code works once"

    # A recovery code works once in place of the code, whatever its case and dashes.
    by_recovery = password_step(site, "sam")
    assert code_step(by_recovery, codes[0].upper().replace("-", "")).status_code == 303 and signed_in(by_recovery)
    assert code_step(password_step(site, "sam"), codes[0]).status_code == 401
    assert "还剩 9 个恢复码" in here.get("/me").text

    auditor = site.people.principal("audrey")
    assert auditor is not None
    rows = site.access.audit(auditor, actor="sam")
    assert [r.details.get("method") for r in rows if r.action == "sign-in"][:2] == ["password+recovery-code",
                                                                                     "password+code"]
    assert "two-step-on" in [r.action for r in rows]
    # every right password is audited as such, the sign-in once its code is given
    assert [r.action for r in rows].count("sign-in-awaiting-code") == 4

    # New recovery codes replace the old ones; turning it off needs the password and a code.
    renewed = step(here, "codes", present=PASSWORD)
    fresh = re.findall(r"<li><code>([a-z0-9]{5}-[a-z0-9]{5})</code></li>", renewed.text)
    assert len(fresh) == 10 and not set(fresh) & set(codes)
    assert code_step(password_step(site, "sam"), codes[1]).status_code == 401, "the old codes no longer work"
    refused = step(here, "off", present=PASSWORD, code="nothing")
    assert refused.status_code == 400 and site.people.get("sam").two_step_since is not None  # type: ignore[union-attr]
    off = step(here, "off", present=PASSWORD, code=fresh[0])
    assert off.headers["location"].startswith("/me?done=two-step-off.")
    assert site.people.get("sam").two_step_since is None  # type: ignore[union-attr]
    assert signed_in(site.sign_in("sam")), "the password alone signs in again"


def test_the_code_step_is_throttled_lapses_and_needs_its_token(site: Site) -> None:
    gina = site.sign_in("gina")
    totp, _codes = set_up_two_step(gina)
    waiting = password_step(site, "gina")
    form = waiting.get("/signin/code").text
    forged = waiting.post("/signin/code", data={"csrf": "forged", "code": later_code(totp)})
    assert forged.status_code == 403 and waiting.get("/letters").status_code == 303
    for _ in range(site.config.model.web.signin_failures_per_account):
        assert waiting.post("/signin/code", data={"csrf": hidden(form, "csrf"), "code": "999999"}).status_code == 401
    throttled = waiting.post("/signin/code", data={"csrf": hidden(form, "csrf"), "code": later_code(totp)})
    assert throttled.status_code == 429 and "失败次数过多" in throttled.text
    assert waiting.get("/letters").status_code == 303


def test_a_right_password_waits_five_minutes_for_its_code(site: Site) -> None:
    totp, _codes = set_up_two_step(site.sign_in("sam"))
    late = password_step(site, "sam")
    with site.registry.write() as conn:
        conn.execute(update(WebSession).where(WebSession.awaiting_code.is_(True))
                     .values(created_at=datetime.now(UTC) - timedelta(minutes=6)))
    lapsed = late.post("/signin/code", data={"csrf": "any", "code": later_code(totp)})
    assert lapsed.status_code == 401 and "登录等待时间过长" in lapsed.text
    assert late.get("/signin/code").headers["location"] == "/signin"
    assert late.get("/letters").status_code == 303


def test_a_role_that_requires_two_step_sign_in(tmp_path: Path) -> None:
    site = Site(tmp_path, web='two_step_roles = ["admin"]')
    try:
        site.add_people()
        ada = site.sign_in("ada")
        for path in ("/letters", "/people", "/operations"):
            assert ada.get(path).headers.get("location") == "/me", path
        page = ada.get("/me")
        assert page.status_code == 200 and "您的角色要求两步登录" in page.text
        assert site.sign_in("rita").get("/letters").status_code == 200, "other roles are not held up"
        set_up_two_step(ada)
        site.add_people((Person("adam", roles=("admin",), emails=("adam@example.org",)),))
        people = ada.get("/people")
        assert people.status_code == 200
        rows = dict(re.findall(r'<a href="/people/([a-z]+)">[a-z]+</a>(.*?)</tr>', people.text, re.S))
        assert "开启" in rows["ada"] and "要求开启，尚未开启" in rows["adam"] and "要求开启" not in rows["rita"]
        refused = step(ada, "off", present=PASSWORD, code="whatever")
        assert refused.status_code == 409 and "不能关闭" in refused.text
        # Single sign-on asks for no code here: the provider's own second step counts.
        admin = site.people.add("nadia", emails=["nadia@example.org"], roles=["admin"], actor="test")
        principal = site.people.principal(admin.login)
        assert principal is not None
        token, _csrf = site.people.open_session(principal, address="127.0.0.1", method="oidc")
        sso = site.client()
        sso.cookies.set(security.SESSION_COOKIE, token)
        assert sso.get("/people").status_code == 200
    finally:
        site.close()


def test_an_administrator_turns_off_two_step_sign_in_for_a_lost_phone(site: Site) -> None:
    sam, ada = site.sign_in("sam"), site.sign_in("ada")
    set_up_two_step(sam)
    assert "关闭两步登录" in ada.get("/people/sam").text
    off = ada.post("/people/sam/two-step", data={"csrf": ada.csrf})
    assert off.status_code == 303 and off.headers["location"].startswith("/people/sam?done=two-step-off.")
    assert not signed_in(sam), "signed out everywhere"
    assert signed_in(site.sign_in("sam")), "the password alone signs in"
    again = ada.post("/people/sam/two-step", data={"csrf": ada.csrf})
    assert again.status_code == 409 and "没有开启两步登录" in again.text
    set_up_two_step(ada)
    own = ada.post("/people/ada/two-step", data={"csrf": ada.csrf})
    assert own.status_code == 409 and site.people.get("ada").two_step_since is not None  # type: ignore[union-attr]

    # From the server's shell, for the last administrator's lost phone.
    done = site.gateway.run("users", "two-step-off", "ada")
    assert "turned off" in done.stdout and site.people.get("ada").two_step_since is None  # type: ignore[union-attr]
    refused = site.gateway.run("users", "two-step-off", "ada", check=False)
    assert refused.returncode != 0 and "no two-step" in refused.stderr
    auditor = site.people.principal("audrey")
    assert auditor is not None
    resets = site.access.audit(auditor, action="two-step-reset")
    assert [r.subject for r in resets] == ["ada", "sam"]
    assert resets[0].actor.startswith("cli:") and resets[1].actor == "ada"


# -- a forgotten password ---------------------------------------------------------------------
RESET_SETTINGS = 'base_url = "http://register.example.org"'


@pytest.fixture(name="mailing")
def mailing_site(tmp_path: Path, sink: SmtpSink) -> Iterator[Site]:
    """Mail to a relay on loopback, and the address links point to."""
    s = Site(tmp_path, extra=f'\n[outbound]\nrelay = "{sink.address}"\nfrom_address = "gateway@example.org"\n'
                              'from_name = "Example Org"\n', web=RESET_SETTINGS)
    s.add_people()
    yield s
    s.close()


def ask_for_link(site: Site, given: str) -> httpx.Response:
    client = site.client()
    form = client.get("/signin/reset")
    return client.post("/signin/reset", data={"csrf": hidden(form.text, "csrf"), "who": given})


def mailed_link(site: Site, sink: SmtpSink, to: str) -> str:
    OutboxSender(site.config, site.registry).deliver_due()
    [received] = sink.wait_for(1, to=to)
    text = received.message.get_content()
    found = re.search(r"http://register\.example\.org(/signin/reset/\S+)", text)
    assert found, text
    return found.group(1)


def test_a_forgotten_password_is_reset_through_a_link_mailed_to_the_persons_own_address(
        mailing: Site, sink: SmtpSink) -> None:
    site = mailing
    signed_in_before = site.sign_in("gina")
    assert "忘记密码" in site.client().get("/signin").text
    sent = ask_for_link(site, "GINA@example.org")  # an address of hers, in any case
    assert sent.status_code == 200 and "邮件" in sent.text and "30 分钟" in sent.text
    link = mailed_link(site, sink, "gina@example.org")
    [mail] = sink.to("gina@example.org")
    assert mail.message["Subject"] == "重设收文登记系统的密码" and "127.0.0.1" in mail.message.get_content()
    assert mail.message["Auto-Submitted"] == "auto-generated"

    browser = site.client()
    form = browser.get(link)
    assert form.status_code == 200 and "Gina" in form.text
    token = hidden(form.text, "csrf")
    mismatch = browser.post(link, data={"csrf": token, "password": NEW, "repeated": NEW + "!"})
    assert mismatch.status_code == 400 and "不一致" in mismatch.text
    done = browser.post(link, data={"csrf": token, "password": NEW, "repeated": NEW})
    assert done.status_code == 303 and done.headers["location"].startswith("/signin?done=reset.")
    assert "新密码已设置" in browser.get(done.headers["location"]).text
    # A link saying so, made by anyone else, says nothing: not in another browser, nor unsigned.
    assert "新密码已设置" not in site.client().get(done.headers["location"]).text
    assert "新密码已设置" not in browser.get("/signin?done=reset").text
    assert can_sign_in(site, "gina", NEW) and not can_sign_in(site, "gina", PASSWORD)
    assert not signed_in(signed_in_before), "every browser of hers is signed out"
    used = browser.get(link)
    assert used.status_code == 404 and "请重新申请" in used.text, "a link works once"
    assert browser.post(link, data={"csrf": token, "password": "yet another password", "repeated":
                                    "yet another password"}).status_code == 404
    actions = audit_actions(site, "gina")
    assert "password-reset-asked" in actions and "password-reset" in actions


def test_asking_for_a_link_tells_no_one_who_has_an_account(mailing: Site, sink: SmtpSink) -> None:
    site = mailing
    site.add_people((Person("nopass", emails=("nopass@example.org",)),))
    site.registry.update_person("nopass", {"password_hash": None}, audit=None)
    answers = {given: ask_for_link(site, given) for given in ("nobody", "nobody@example.org", "nopass", "rita")}
    texts = {given: re.sub(r'name="csrf" value="[^"]*"', "", r.text) for given, r in answers.items()}
    assert {r.status_code for r in answers.values()} == {200}
    assert len(set(texts.values())) == 1, "the same page whoever was named"
    OutboxSender(site.config, site.registry).deliver_due()
    assert [r.rcpt_tos for r in sink.wait_for(1)] == [["rita@example.org"]], "only someone who may sign in is mailed"
    # Three links an hour for a person at most: the fourth is not mailed, the page is the same.
    for _ in range(3):
        assert ask_for_link(site, "rita").status_code == 200
    OutboxSender(site.config, site.registry).deliver_due()
    assert len(sink.wait_for(3, to="rita@example.org")) == 3
    assert site.registry.outbox_due(100) == []


def test_a_reset_link_lapses_and_needs_its_form_token(mailing: Site, sink: SmtpSink) -> None:
    site = mailing
    ask_for_link(site, "sam")
    link = mailed_link(site, sink, "sales.desk@example.org")
    browser = site.client()
    browser.get(link)
    forged = browser.post(link, data={"csrf": "forged", "password": NEW, "repeated": NEW})
    assert forged.status_code == 403 and can_sign_in(site, "sam", PASSWORD)
    with site.registry.write() as conn:
        conn.execute(update(PasswordReset).values(created_at=datetime.now(UTC) - timedelta(minutes=31)))
    lapsed = browser.get(link)
    assert lapsed.status_code == 404 and "请重新申请" in lapsed.text
    assert browser.get("/signin/reset/made-up").status_code == 404


def test_no_reset_link_without_the_address_people_open(site: Site) -> None:
    """Without [web] base_url a mailed link could point nowhere: the sign-in page offers none."""
    assert "忘记密码" not in site.client().get("/signin").text
    assert site.client().get("/signin/reset").status_code == 404
