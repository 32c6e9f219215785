"""The sender's satisfaction over the daemon (its SMTP listener, outbox and web listener) with a real
SMTP sink: the result mail's link rates once (a second use and a forged or altered link refused, no
sign-in needed), a reply "2" to the result mail reopens the letter and tells the department head,
and the public page is rate-limited per client address."""
from __future__ import annotations

import json
import re
import smtplib
import time
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from gateway import config as config_mod
from gateway.outbound.outward import BadToken, ExpiredToken, check_rating_token, rating_token

from conftest import Gateway, Notify, outbound_settings, wait_for
from smtp_sink import SmtpSink
from web_support import hidden

pytestmark = pytest.mark.timeout(300)

RULES = """
rules:
  - name: complaints
    when: {keywords: [complaint]}
    set: {category: external.inquiry_complaint, department: business}
"""
EXTRA = """
{outbound}
[satisfaction]
per_address_per_hour = {limit}
"""


def configured(tmp_path: Path, sink: SmtpSink, limit: int = 100) -> Gateway:
    gateway = Gateway(tmp_path, extra=EXTRA.format(outbound=outbound_settings(sink.address), limit=limit), rules=RULES)
    text = gateway.config.read_text()
    listen = f'listen = "127.0.0.1:{gateway.web_port}"'
    gateway.config.write_text(text.replace(listen, f'{listen}\nbase_url = "http://127.0.0.1:{gateway.web_port}"', 1))
    return gateway


def send(gateway: Gateway, *, subject: str, body: str, sender: str = "alice@partner.example",
         headers: dict[str, str] | None = None) -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "sales@example.org"
    message["Subject"] = subject
    message["Message-ID"] = f"<{time.time_ns()}@partner.example>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", gateway.smtp_port, timeout=30) as client:
        client.sendmail(sender, ["sales@example.org"], message.as_bytes())


def events(gateway: Gateway, number: str, action: str) -> list[dict[str, Any]]:
    return [e for e in gateway.show_json(number)["events"] if e["action"] == action]  # type: ignore[index]


def result_mail(sink: SmtpSink, number: str) -> EmailMessage:
    def found() -> list[EmailMessage]:
        return [r.message for r in sink.to("alice@partner.example")
                if r.message["X-Gateway-Letter"] == number and "result" in str(r.message["Subject"])]
    wait_for(found, 30, f"the result of {number}")
    return found()[0]


def test_a_rating_link_counts_once_and_a_reply_two_reopens_the_letter(
        tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configured(tmp_path, sink)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        for n in (1, 2):
            send(gateway, subject=f"A complaint {n}", body="I want to complain about the delivery.\n")
        sink.wait_for(4)
        gateway.run("letters", "close", "2026-000001", "--result", "We sent the goods again.")
        result = result_mail(sink, "2026-000001")
        text = result.get_content()
        assert "We sent the goods again." in text
        [link] = re.findall(rf"http://127\.0\.0\.1:{gateway.web_port}/rate/\S+", text)

        with httpx.Client(timeout=30, follow_redirects=False) as browser:  # never signed in
            page = browser.get(link)
            assert page.status_code == 200 and "办理评价" in page.text and "How did we do?" in page.text
            assert page.text.index("您对本次办理是否满意") < page.text.index("Were you satisfied")  # Chinese first
            assert "2026-000001" in page.text and "A complaint 1" in page.text
            token = hidden(page.text, "csrf")
            # Without the form's own token (a post from another site): refused, nothing recorded.
            with httpx.Client(timeout=30) as other:
                assert other.post(link, data={"score": "1", "csrf": token}).status_code == 403
            done = browser.post(link, data={"score": "4", "comment": "Quick, thank you", "csrf": token})
            assert done.status_code == 200 and "感谢您的评价" in done.text
            again = browser.post(link, data={"score": "1", "comment": "changed my mind", "csrf": token})
            assert again.status_code == 409 and "已评价过" in again.text
            assert "already been rated" in browser.get(link).text
            # A forged link and an altered one: a clear 4xx page, never a 500.
            forged = link.rsplit("/", 1)[0] + "/bm90IG91cnM.6789abcd.abcd" + "A" * 22
            bare = link.split("?")[0]
            altered = bare[:-3] + ("AAA" if not bare.endswith("AAA") else "BBB")
            for bad in (forged, altered, link.rsplit("/", 1)[0] + "/x"):
                response = browser.get(bad)
                assert response.status_code == 404 and "此评价链接无效" in response.text, bad
        [rated] = events(gateway, "2026-000001", "rated")
        assert (rated["details"]["score"], rated["details"]["comment"], rated["details"]["via"]) == \
            (4, "Quick, thank you", "web")
        assert gateway.show_json("2026-000001")["status"] == "closed"  # a 4 is satisfied

        # The second: the sender answers the result mail with a 2 on its first line.
        gateway.run("letters", "close", "2026-000002", "--result", "We looked into it.")
        second = result_mail(sink, "2026-000002")
        # Before that, a mail that only claims the sender's From and names the number: not counted,
        # nothing reopened, and the sender's own rating still to come.
        send(gateway, subject="Re: [2026-000002] your result", body="1\nterrible\n")
        wait_for(lambda: events(gateway, "2026-000002", "rating-refused"), 30, "the forged rating refused")
        [forged] = events(gateway, "2026-000002", "rating-refused")
        assert forged["details"]["reason"].startswith("neither a reply to the result mail nor from a proven address")
        assert gateway.show_json("2026-000002")["status"] == "closed" and not events(gateway, "2026-000002", "rated")
        send(gateway, subject=f"Re: {second['Subject']}", body="2\nThe goods never came.\n\n> We looked into it.\n",
             headers={"In-Reply-To": second["Message-ID"], "References": second["Message-ID"]})
        wait_for(lambda: events(gateway, "2026-000002", "reopened"), 30, "the letter reopened")
        letter = gateway.show_json("2026-000002")
        assert letter["status"] == "in-progress" and letter["deadline"]
        [rated] = events(gateway, "2026-000002", "rated")
        assert (rated["details"]["score"], rated["details"]["comment"], rated["details"]["via"]) == \
            (2, "The goods never came.", "mail")
        [reopened] = events(gateway, "2026-000002", "reopened")
        assert reopened["details"]["notify"] == ["business.head@example.org"]
        wait_for(lambda: sink.to("business.head@example.org"), 30, "the head told")
        [told] = [r.message for r in sink.to("business.head@example.org")]
        assert told["Subject"] == "[2026-000002] Reopened: the sender is not satisfied"
        assert "The goods never came." in told.get_content()
        assert len(gateway.list_json()) == 2  # the rating is not a letter
        # One rating per result mail: a second reply is recorded, not counted.
        send(gateway, subject=f"Re: {second['Subject']}", body="1\nStill nothing.\n",
             headers={"In-Reply-To": second["Message-ID"]})
        wait_for(lambda: len(events(gateway, "2026-000002", "rating-refused")) == 2, 30, "the second rating refused")
        assert len(events(gateway, "2026-000002", "rated")) == 1
        # A stranger's reply with a score counts for nothing (it is not from the sender).
        send(gateway, sender="mallory@elsewhere.example", subject="Re: Your letter 2026-000001: the result",
             body="1\n", headers={"In-Reply-To": result["Message-ID"]})
        wait_for(lambda: len(gateway.list_json()) == 3, 30, "the stranger's mail registered as a letter")
        assert len(events(gateway, "2026-000001", "rated")) == 1

        # The month's report, against the ratings given here: a 4 and a 2 (the refused 1 not counted).
        month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
        report = json.loads(gateway.run("report", "--month", month, "--format", "json").stdout)
        overall = {"rated": 2, "mean": (4 + 2) / 2, "satisfied": 1, "share_satisfied": 0.5}
        assert {key: report["satisfaction"][key] for key in overall} == overall
        assert report["satisfaction"]["by_department"] == {"business": overall}
        assert report["satisfaction"]["by_category"] == {"external.inquiry_complaint": overall}
        assert report["reopened"] == {"letters": 1, "times": 1}
        table = gateway.run("report", "--month", month, "--format", "csv").stdout
        assert "satisfaction,share_satisfied,0.5" in table and "reopened,letters,1" in table
    finally:
        daemon.stop()


def test_the_public_page_is_rate_limited_per_client_address(tmp_path: Path, notify: Notify, sink: SmtpSink) -> None:
    gateway = configured(tmp_path, sink, limit=3)
    daemon = gateway.start(NOTIFY_SOCKET=str(notify.path))
    notify.wait_for("READY=1")
    try:
        url = f"http://127.0.0.1:{gateway.web_port}/rate/guessing"
        with httpx.Client(timeout=30) as browser:
            assert [browser.get(url).status_code for _ in range(4)] == [404, 404, 404, 429]
            assert "访问过于频繁" in browser.get(url).text
    finally:
        daemon.stop()


def test_the_rating_page_words_a_paper_letters_subject_in_the_pages_language(tmp_path: Path) -> None:
    """A paper letter's subject is the one the gateway wrote (in English in the register); the
    sender's page shows it in the page's language, as the register's own pages do."""
    from fax_samples import ENGLISH, pdf_fax
    from web_support import WEB_RULES, Site

    from gateway.outbound.outward import invitation
    from gateway.services.paper import PaperLetter, Scan, register_paper
    from gateway.services.people import Principal
    from gateway.registry.models import OcrJob
    from gateway.stages.fax.text import TextReader
    from sqlalchemy import select

    rules = WEB_RULES.replace("rules:\n", """rules:
  - name: complaint by post
    when:
      keywords: {any: ["王芳"], in: [sender_name]}
    set: {category: external.inquiry_complaint, department: business}
""", 1)
    site = Site(tmp_path, rules=rules, web='base_url = "http://letters.example.org"')
    try:
        done = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
            channel="post", sender_name="王芳", organisation="东方机电", email="wang@partner.example",
            scans=[Scan("a.pdf", pdf_fax([ENGLISH]))]), by="rita", intake="web")
        assert done.number
        reader = TextReader(site.config, site.registry)  # as the daemon does: read the scan, then classify
        try:
            def read() -> bool:
                reader.run_once()
                with site.registry.read() as conn:
                    return conn.execute(select(OcrJob.letter_id)).first() is None
            wait_for(read, 120, "the scan read")
        finally:
            reader.stop()
        assert site.gateway.show_json(done.number)["department"] == "business"
        site.access.act(Principal.operator("test"), done.number, "close", text="We sent the goods again.")
        [mail] = [m for m in site.registry.outbox() if m.kind == "feedback"]
        assert site.gateway.show_json(done.number)["subject"] == "Letter by post from 王芳 (东方机电), 1 page(s)"
        # The link in a result mail names the mail's language, so the page opens in it whatever
        # the web register's default, and the form keeps it for the page after sending.
        links = {lang: re.findall(r"http://letters\.example\.org(/rate/\S+)", invitation(site.config, mail, lang))[0]
                 for lang in ("zh", "en")}
        assert links["zh"].endswith("?lang=zh") and links["en"].endswith("?lang=en")
        links = {lang: site.url + path for lang, path in links.items()}
        with httpx.Client(timeout=30) as browser:
            shown = {lang: browser.get(link) for lang, link in links.items()}
            assert all(page.status_code == 200 and done.number in page.text for page in shown.values())
            assert "Letter by post" not in shown["zh"].text
            assert "邮寄来信，来自 王芳（东方机电），共 1 页" in shown["zh"].text
            assert "Letter by post from 王芳 (东方机电), 1 page(s)" in shown["en"].text
            form = shown["en"].text  # the register's default language is Chinese
            thanks = browser.post(links["en"].split("?")[0], data={"score": "5", "csrf": hidden(form, "csrf"),
                                                                   "lang": hidden(form, "lang")})
            assert thanks.status_code == 200 and "Letter by post from 王芳 (东方机电), 1 page(s)" in thanks.text
    finally:
        site.close()


def test_a_comment_as_long_as_the_rating_form_takes_is_kept_whole_with_its_line_breaks(tmp_path: Path) -> None:
    """The page's comment box takes 2,000 characters, a line break one of them; a browser sends
    each as CRLF, which must not push the comment's end off."""
    from gateway.outbound.outward import invitation
    from gateway.services.people import Principal
    from web_support import Site

    site = Site(tmp_path, web='base_url = "http://letters.example.org"')
    try:
        site.add_letters()
        number = site.letters["inquiry"]
        site.access.act(Principal.operator("test"), number, "close", text="The goods leave on Monday.")
        [mail] = [m for m in site.registry.outbox() if m.kind == "feedback"]
        path = re.findall(r"http://letters\.example\.org(/rate/\S+)", invitation(site.config, mail, "zh"))[0]
        lines = ["送货晚了三天，包装也有破损。"] * 130 + ["最后：希望下次准时。"]
        comment = "\r\n".join(lines)  # as the browser sends it
        assert len(comment.replace("\r\n", "\n")) <= 2000 < len(comment)
        with httpx.Client(timeout=30) as browser:
            form = browser.get(site.url + path).text
            thanks = browser.post(site.url + path.split("?")[0], data={
                "score": "4", "comment": comment, "csrf": hidden(form, "csrf"), "lang": hidden(form, "lang")})
            assert thanks.status_code == 200
        letter = site.registry.letter(number)
        assert letter is not None
        [rated] = [e.details for e in letter.events if e.action == "rated"]
        assert rated["comment"] == "\n".join(lines)
    finally:
        site.close()


def test_a_rating_link_stops_counting_once_its_key_is_retired_past_the_grace(tmp_path: Path) -> None:
    """As for reply addresses: a rotation because a secret may have leaked stops the links it
    signed once [replies] previous_key_grace_days is over, though the link's own days are not."""
    gateway = Gateway(tmp_path, extra="[replies]\nprevious_key_grace_days = 0\n", rules=RULES)
    config = config_mod.load(str(gateway.config))
    sent = datetime.now(timezone.utc)
    token = rating_token(config, "result-1@example.org", sent)
    assert check_rating_token(config, token).message_id == "<result-1@example.org>"

    assert "is accepted for 0 more day(s)" in gateway.run("keys", "rotate").stdout
    with pytest.raises(ExpiredToken, match=r"the link no longer counts: its key \w{4} was retired on .* "
                                           r"more than 0 day\(s\) ago"):
        check_rating_token(config, token, now=sent + timedelta(seconds=5))
    fresh = rating_token(config, "result-1@example.org", sent)
    assert check_rating_token(config, fresh).message_id == "<result-1@example.org>"
    encoded, stamp, signed = fresh.split(".")
    with pytest.raises(BadToken):  # an unknown key is still simply not ours
        check_rating_token(config, f"{encoded}.{stamp}.zzzz{signed[4:]}")
