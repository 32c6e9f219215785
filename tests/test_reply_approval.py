"""Replies under approval in a real browser (Debian's chromium): a member drafts a reply to an urgent
letter with an attachment, its department head returns it with a comment, the member redrafts it,
head and leader in charge approve it in order, and it reaches the sender at an SMTP sink as a reply
(In-Reply-To their letter, its number in the subject, our From, the attachment). Sending or
approving before the chain completes is refused in the web and the CLI; an approval waiting too
long is reminded under a given clock, once per pass."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import conftest
import pytest
from browser_support import SignIn, browser_fixture, rows_within_the_screen, signed_in_pages  # noqa: F401
from playwright.sync_api import Browser, expect
from smtp_sink import SmtpSink
from sqlalchemy import text, update
from web_support import PASSWORD, PEOPLE, Person, Site

from gateway.outbound.sender import OutboxSender
from gateway.registry.models import Letter
from gateway.registry.replies import ReplyRecords
from gateway.report.figures import Period, compute
from gateway.services.access import Forbidden, Refused
from gateway.services.incomplete import Incomplete
from gateway.services.replies import Replies
from gateway.track import reminders

pytestmark = pytest.mark.timeout(300)

EXTRA = """
[outbound]
relay = "{relay}"
from_address = "gateway@example.org"
from_name = "Example Org"

[replies]
top_leadership = ["tom@example.org"]
approval_reminder_working_days = 1

[[replies.approval]]
when = {{confidentiality = "confidential"}}
chain = ["head", "leader", "top"]

[[replies.approval]]
when = {{urgency = ["urgent", "special"]}}
chain = ["head", "leader"]

[[replies.approval]]
when = {{tags = ["important"]}}
chain = ["head", "leader"]
"""
# Leo is the leader in charge of both departments; Olga heads the General Office by its head's address.
LEADERS = 'head = "office.head@example.org"\n', 'head = "office.head@example.org"\nleaders = ["leo@example.org"]\n'
LEADERS_B = ('head = "business.head@example.org"\n',
             'head = "business.head@example.org"\nleaders = ["leo@example.org"]\n')
MORE_PEOPLE = (Person("olga", emails=("office.head@example.org",)), Person("tom", emails=("tom@example.org",)))


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(conftest, "DEPARTMENTS", conftest.DEPARTMENTS.replace(*LEADERS).replace(*LEADERS_B))
    s = Site(tmp_path, extra=EXTRA.format(relay=sink.address))
    s.add_people(PEOPLE + MORE_PEOPLE)
    s.add_letters()
    yield s
    s.close()


@pytest.fixture(name="sign_in")
def sign_in_fixture(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[SignIn]:
    yield from signed_in_pages(browser, site.url, PASSWORD, request)


def deliver(site: Site) -> None:
    OutboxSender(site.config, site.registry).deliver_due()


def actions(site: Site, number: str) -> list[str]:
    letter = site.registry.letter(number)
    assert letter is not None
    return [e.action for e in sorted(letter.events, key=lambda e: e.id)]


def test_a_reply_returned_redrafted_approved_in_order_and_delivered(site: Site, sign_in: SignIn,
                                                                    sink: SmtpSink, tmp_path: Path) -> None:
    number = site.letters["urgent"]
    letter = site.registry.letter(number)
    assert letter is not None and letter.urgency == "urgent" and letter.message_id
    replies = Replies(site.config, site.registry)

    # Gina (a member of the General Office) drafts the reply with an attachment and submits it.
    gina = sign_in("gina")
    gina.goto(f"/letters/{number}")
    gina.locator("#reply textarea[name=text]").fill("Dear Alice,\nwe sign the contract today.\n")
    gina.locator("#reply input[type=file]").set_input_files(
        files=[{"name": "contract.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 our contract"}])
    gina.click("#reply button[value=submit]")
    expect(gina.locator("#reply .flash")).to_contain_text("Submitted for approval")
    expect(gina.locator("#reply .reply-chain li")).to_have_count(2)
    expect(gina.locator("#reply .reply-chain li").first).to_contain_text("waiting")
    gina.screenshot(path=str(tmp_path / "submitted.png"), full_page=True)

    # Nothing leaves, and nobody skips a step: the leader before the head, the sending, the drafter.
    leo = site.people.principal("leo")
    assert leo is not None
    with pytest.raises(Refused) as refused:
        replies.approve(leo, number)
    assert refused.value.key == "out-of-order"
    with pytest.raises(Refused) as refused:
        replies.send(leo, number)
    assert refused.value.key == "chain-incomplete"
    with pytest.raises(Forbidden):
        replies.approve(site.people.principal("gina"), number)  # type: ignore[arg-type]
    web_leo = site.sign_in("leo")
    refused_web = web_leo.post(f"/letters/{number}/reply/approve", data={"csrf": web_leo.csrf})
    assert refused_web.status_code == 409 and "须按顺序审批" in refused_web.text  # in Chinese, the default
    refused_web = web_leo.post(f"/letters/{number}/reply/send", data={"csrf": web_leo.csrf})
    assert refused_web.status_code == 409
    cli = site.gateway.run("letters", "approve", number, "--as", "leo", check=False)
    assert cli.returncode == 1 and "approvals go in order" in cli.stderr
    cli = site.gateway.run("letters", "reply", number, "--send", check=False)
    assert cli.returncode == 1 and "nothing is sent before every approver" in cli.stderr
    cli = site.gateway.run("letters", "approve", number, check=False)  # the operator is nobody in the chain
    assert cli.returncode == 1 and "--as" in cli.stderr

    # Olga (the head) finds it in her queue and returns it with a comment.
    olga = sign_in("olga")
    olga.goto("/approvals")
    expect(olga.locator("nav a[href='/approvals'] .count")).to_have_text("1")
    olga.click(f"a[href='/letters/{number}#reply']")
    expect(olga.locator("#reply .reply-text")).to_contain_text("we sign the contract today")
    olga.locator("#reply textarea[name=comment]").fill("Name the contract number, please.")
    olga.click("#reply button[formaction$='/reply/return']")
    expect(olga.locator("#reply .flash")).to_contain_text("Returned")

    # Gina sees why, changes it and submits again: the chain starts over.
    gina.goto(f"/letters/{number}")
    expect(gina.locator("#reply .notice")).to_contain_text("Name the contract number, please.")
    gina.locator("#reply textarea[name=text]").fill("Dear Alice,\nwe sign contract 4711 today.\n")
    gina.click("#reply button[value=submit]")
    expect(gina.locator("#reply .flash")).to_contain_text("Submitted for approval")

    # Head, then leader in charge approve; the last approval sends the reply at once, so it asks
    # first, naming where it goes (an earlier step asks nothing: nothing leaves yet).
    asked: list[str] = []
    olga.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    olga.goto(f"/letters/{number}")
    olga.locator("#reply textarea[name=comment]").fill("Fine now.")
    olga.click("#reply button:has-text('Approve')")
    expect(olga.locator("#reply .flash")).to_contain_text("Approved")
    assert asked == []
    assert site.registry.letter(number).status != "answered"  # type: ignore[union-attr]
    leo_page = sign_in("leo")
    leo_page.goto("/approvals")
    expect(leo_page.locator("nav a[href='/approvals'] .count")).to_have_text("1")
    leo_page.click(f"a[href='/letters/{number}#reply']")
    leo_page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    leo_page.click("#reply button:has-text('Approve')")
    assert asked == ["Approve and send the reply to alice@partner.example now? Once sent it cannot be called back."]
    assert [r.status for r in replies.records.replies(letter.id)][-1] == "pending"  # not asked: nothing sent
    leo_page.once("dialog", lambda dialog: dialog.accept())
    leo_page.click("#reply button:has-text('Approve')")
    expect(leo_page.locator("#reply .flash")).to_contain_text("sent to the sender")
    expect(leo_page.locator("#reply .reply-chain li.step-approved")).to_have_count(2)
    leo_page.screenshot(path=str(tmp_path / "sent.png"), full_page=True)

    # The reply reaches the sender through the outbox, as a reply to their letter.
    deliver(site)
    [received] = [r for r in sink.to("alice@partner.example") if r.message["Subject"].startswith("Re: [")]
    message = received.message
    assert message["Subject"] == f"Re: [{number}] 紧急：合同签署"
    assert message["In-Reply-To"] == message["References"] == f"<{letter.message_id}>"
    assert "gateway@example.org" in message["From"]
    assert "we sign contract 4711 today" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [attached] = list(message.iter_attachments())
    assert attached.get_filename() == "contract.pdf" and attached.get_content() == b"%PDF-1.4 our contract"
    after = site.registry.letter(number)
    assert after is not None and after.status == "answered"
    trail = actions(site, number)
    for action in ("reply-drafted", "reply-submitted", "reply-returned", "reply-approved", "reply-sent"):
        assert action in trail, (action, trail)
    assert trail.count("reply-submitted") == 2 and trail.count("reply-approved") == 2
    [sent] = [e for e in after.events if e.action == "reply-sent"]
    assert sent.details["message_id"] == message["Message-ID"]
    assert sent.details["recipient"] == "alice@partner.example" and sent.details["outbox"]
    [returned] = [e for e in after.events if e.action == "reply-returned"]
    assert (returned.actor, returned.details["comment"]) == ("olga", "Name the contract number, please.")
    # A sent reply is not sent twice.
    cli = site.gateway.run("letters", "reply", number, "--send", check=False)
    assert cli.returncode == 1 and "sent already" in cli.stderr


def test_an_approval_waiting_too_long_is_reminded(site: Site, sink: SmtpSink,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    number = site.letters["office"]  # ordinary: the head alone approves
    replies = Replies(site.config, site.registry)
    gina = site.people.principal("gina")
    assert gina is not None
    done = site.gateway.run("letters", "reply", number, "--text", "Thank you, see you next week.", "--submit",
                            "--as", "gina")
    assert "submitted for approval by head" in done.stdout
    assert [w.number for w in replies.awaiting(site.people.principal("olga"))] == [number]  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    assert not [r for r in reminders.approvals(site.config, site.registry, now)]
    later = now + timedelta(days=4)  # at least one working day on
    stale = ReplyRecords(site.registry).waiting()  # what a second pass read before the first one committed
    [reminded] = reminders.approvals(site.config, site.registry, later)
    assert reminded.kind == "reply-approval" and [m.recipient for m in reminded.mail] == ["office.head@example.org"]
    assert reminders.approvals(site.config, site.registry, later) == []  # once per pass
    # Two passes at once (the daemon's and `gateway reminders run`): the one that read the step before
    # the other reminded it finds it changed under the lock, and reminds no one.
    with monkeypatch.context() as patch:
        patch.setattr(ReplyRecords, "waiting", lambda self: stale)
        assert reminders.approvals(site.config, site.registry, later + timedelta(seconds=2)) == []
    assert actions(site, number).count("reply-reminded") == 1
    deliver(site)
    notices = [r.message["Subject"] for r in sink.to("office.head@example.org")]
    assert f"[{number}] Reminder: reply awaiting your approval" in notices
    # Approved by the head alone, the reply leaves.
    olga = site.people.principal("olga")
    assert olga is not None and replies.approve(olga, number) == "sent"
    # The month's report: one draft submitted and approved, none returned, approved in the time between.
    letter = site.registry.letter(number)
    assert letter is not None
    submitted = next(e.at for e in letter.events if e.action == "reply-submitted")
    approved = next(e.at for e in letter.events if e.action == "reply-approved")
    tz = site.config.model.gateway.timezone
    month = Period.parse(submitted.astimezone(ZoneInfo(tz)).strftime("%Y-%m"), tz)
    report = compute(site.registry, month, tz)
    assert report["replies"] == {"submitted": 1, "approved": 1, "returned": 0}
    hours = round((approved - submitted).total_seconds() / 3600, 2)
    assert report["time_to_approve"] == {"count": 1, "mean_hours": hours, "p90_hours": hours}


def form_field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, name
    return found.group(1)


def test_a_page_left_open_approves_nothing_it_did_not_show(site: Site) -> None:
    number = site.letters["urgent"]  # head, then the leader in charge
    gina, olga, leo = site.sign_in("gina"), site.sign_in("olga"), site.sign_in("leo")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "V1: we sign today.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    assert olga.post(f"{url}/approve", data={"stage": form_field(olga.get(f"/letters/{number}").text, "stage"),
                                             "csrf": olga.csrf}).status_code == 303
    read = leo.get(f"/letters/{number}").text  # Leo reads V1 ...
    assert "V1: we sign today." in read
    stale = {"stage": form_field(read, "stage"), "comment": "V1 is fine", "csrf": leo.csrf}
    # ... and, in another tab, returns it; it is rewritten and the head approves the new text.
    assert leo.post(f"{url}/return", data={**stale, "comment": "redo"}).status_code == 303
    assert gina.post(url, data={"text": "V2: we pay a penalty.", "action": "submit", "csrf": gina.csrf,
                                "draft_of": form_field(gina.get(f"/letters/{number}").text, "draft_of")}
                     ).status_code == 303
    assert olga.post(f"{url}/approve", data={"stage": form_field(olga.get(f"/letters/{number}").text, "stage"),
                                             "csrf": olga.csrf}).status_code == 303
    # The form of the page Leo read approves nothing: he never saw V2. His comment stays in the form.
    refused = leo.post(f"{url}/approve", data=stale)
    assert refused.status_code == 409 and "V1 is fine</textarea>" in refused.text
    assert "回复已被他人处理：请刷新页面" in refused.text
    assert actions(site, number).count("reply-sent") == 0
    assert leo.post(f"{url}/approve", data={**stale, "stage": form_field(refused.text, "stage")}).status_code == 303
    assert actions(site, number).count("reply-sent") == 1


def test_an_approval_sent_twice_sends_once_and_the_second_is_told_it_went(site: Site) -> None:
    number = site.letters["office"]  # the head's step alone
    gina, olga, olga_elsewhere = site.sign_in("gina"), site.sign_in("olga"), site.sign_in("olga")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    stage = form_field(olga.get(f"/letters/{number}").text, "stage")
    assert olga.post(f"{url}/approve", data={"stage": stage, "csrf": olga.csrf}).status_code == 303
    # The same page approved again from another browser (or a double click): nothing more is sent,
    # and she is told the reply went, not that the letter has none.
    again = olga_elsewhere.post(f"{url}/approve", data={"stage": stage, "comment": "Fine",
                                                        "csrf": olga_elsewhere.csrf})
    assert again.status_code == 409 and "回复已发送" in again.text and "没有回复" not in again.text
    assert actions(site, number).count("reply-approved") == 1 and actions(site, number).count("reply-sent") == 1


def test_a_phone_shows_each_reply_awaiting_approval_with_its_subject_and_deadline_in_sight(
        site: Site, sign_in: SignIn) -> None:
    """At 390 px the approvals list is read down the screen, a letter a block: its number, subject
    (whole words) and deadline within the screen, the deadline named, no column out of sight."""
    number = site.letters["office"]  # the head's step alone
    gina = site.sign_in("gina")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    olga = sign_in("olga", lang="zh")
    olga.set_viewport_size({"width": 390, "height": 800})
    olga.goto("/approvals")
    row = rows_within_the_screen(olga.locator("table.approvals"), ("a", "td.subject", "td.deadline"))
    expect(row).to_have_count(1)
    subject = row.locator("td.subject")
    assert subject.evaluate("c => c.getClientRects().length && c.getBoundingClientRect().height") < 30  # one line
    named = row.locator("td.deadline").evaluate("c => getComputedStyle(c, '::before').content")
    assert "办理期限" in named, named


def test_the_reply_panel_calls_the_letters_sender_as_the_page_does_in_chinese(site: Site) -> None:
    """The page calls whoever wrote the letter 来信人 (its heading: 答复来信人); the reply sent to
    them, and the mail that took it, are words for the same person, not 寄件人."""
    number = site.letters["office"]  # the head's step alone
    gina, olga = site.sign_in("gina"), site.sign_in("olga")  # in Chinese, the default
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    stage = form_field(olga.get(f"/letters/{number}").text, "stage")
    done = olga.post(f"{url}/approve", data={"stage": stage, "csrf": olga.csrf}, follow_redirects=True)
    assert done.status_code == 200 and "答复来信人" in done.text
    assert "已审批通过并发送给来信人。" in done.text and "寄件人" not in done.text


def test_a_step_refused_for_the_replys_state_names_that_state_in_the_pages_language(site: Site) -> None:
    number = site.letters["business"]  # the head's step alone
    sam, bella = site.sign_in("sam"), site.sign_in("bella")  # both in Chinese, the default
    url = f"/letters/{number}/reply"
    submitted = {"text": "We confirm the order.", "action": "submit", "csrf": sam.csrf, "draft_of": ""}
    assert sam.post(url, data=submitted).status_code == 303
    again = sam.post(url, data=submitted)  # the same form sent twice
    assert again.status_code == 409 and "回复当前为待审批：不能再修改" in again.text
    stage = form_field(bella.get(f"/letters/{number}").text, "stage")
    returned = {"stage": stage, "comment": "Name the quantity", "csrf": bella.csrf}
    assert bella.post(f"{url}/return", data=returned).status_code == 303
    twice = bella.post(f"{url}/return", data=returned)
    assert twice.status_code == 409 and "回复当前为已退回，不在待审批状态" in twice.text


def test_an_approval_out_of_order_names_the_step_waiting_in_the_pages_language(site: Site) -> None:
    number = site.letters["urgent"]  # the head, then the leader in charge
    gina, leo = site.sign_in("gina"), site.sign_in("leo")  # in Chinese, the default
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We sign today.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    page = leo.get(f"/letters/{number}").text
    assert "第1步（部门负责人）尚未审批：须按顺序审批" in page and "（head）" not in page
    stage = form_field(site.sign_in("olga").get(f"/letters/{number}").text, "stage")  # as the head's page has it
    early = leo.post(f"{url}/approve", data={"stage": stage, "csrf": leo.csrf})
    assert early.status_code == 409 and "第1步（部门负责人）尚未审批" in early.text
    assert actions(site, number).count("reply-approved") == 0


def test_a_comment_as_long_as_its_form_takes_is_kept_whole_with_its_line_breaks(site: Site) -> None:
    number = site.letters["urgent"]
    gina, olga = site.sign_in("gina"), site.sign_in("olga")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We sign today.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    # 3,929 characters as the form counts them (maxlength 4000); a browser sends each line break as CRLF.
    comment = "\r\n".join(["请补充违约条款和签署日期。"] * 280) + "\r\n最后：请今天改好。"
    assert len(comment.replace("\r\n", "\n")) <= 4000 < len(comment)
    assert olga.post(f"{url}/return", data={"stage": form_field(olga.get(f"/letters/{number}").text, "stage"),
                                            "comment": comment, "csrf": olga.csrf}).status_code == 303
    replies = Replies(site.config, site.registry)
    reply = replies._open(site.registry.letter(number))  # type: ignore[arg-type]
    assert reply is not None
    assert [s.comment for s in replies.records.steps(reply.id)] == [comment.replace("\r\n", "\n")]


def test_a_comment_longer_than_its_form_takes_is_refused_not_cut_short(site: Site) -> None:
    number = site.letters["office"]  # the head's step alone
    gina, olga = site.sign_in("gina"), site.sign_in("olga")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    stage = form_field(olga.get(f"/letters/{number}").text, "stage")
    comment = "请核对日期。" * 700  # 4,200 characters: more than the form takes
    refused = olga.post(f"{url}/approve", data={"stage": stage, "comment": comment, "csrf": olga.csrf})
    assert refused.status_code == 400 and "审批意见最多 4000 个字符" in refused.text
    assert f"{comment}</textarea>" in refused.text  # kept to shorten
    assert actions(site, number).count("reply-approved") == 0
    assert olga.post(f"{url}/approve", data={"stage": stage, "comment": comment[:4000],
                                             "csrf": olga.csrf}).status_code == 303


def test_a_posting_note_longer_than_its_form_takes_is_refused_not_cut_short(site: Site) -> None:
    from fax_samples import ENGLISH, pdf_fax

    from gateway.services.paper import PaperLetter, Scan, register_paper

    done = register_paper(site.config, site.spool, site.pipeline, PaperLetter(
        channel="post", sender_name="王芳", scans=[Scan("a.pdf", pdf_fax([ENGLISH]))]), by="rita", intake="web")
    assert done.number
    number = done.number
    with site.registry.write() as conn:  # as when its scan has been read and routed to the General Office
        conn.execute(text("UPDATE letters SET status = 'routed', department = 'general-office' WHERE number = :n"),
                     {"n": number})
    gina, olga, rita = site.sign_in("gina"), site.sign_in("olga"), site.sign_in("rita")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": gina.csrf}).status_code == 303
    stage = form_field(olga.get(f"/letters/{number}").text, "stage")
    assert olga.post(f"{url}/approve", data={"stage": stage, "csrf": olga.csrf}).status_code == 303  # to be posted
    note = "挂号信 RR123456789CN，寄往上海市浦东新区。" * 20  # more than the form's 500 characters
    refused = rita.post(f"{url}/send", data={"note": note, "csrf": rita.csrf})
    assert refused.status_code == 400 and "邮寄记录最多 500 个字符" in refused.text
    assert f'value="{note}"' in refused.text  # kept to shorten
    assert "reply-sent" not in actions(site, number)
    assert rita.post(f"{url}/send", data={"note": note[:500], "csrf": rita.csrf}).status_code == 303
    letter = site.registry.letter(number)
    assert letter is not None
    [sent] = [e.details for e in letter.events if e.action == "reply-sent"]
    assert sent["recipient"] == note[:500]


def test_two_writers_of_one_draft_lose_neither_text(site: Site) -> None:
    site.add_people((Person("gwen", roles=("member",), departments=("general-office",),
                            emails=("gwen@example.org",)),))
    number = site.letters["office"]
    gina, gwen = site.sign_in("gina"), site.sign_in("gwen")
    url = f"/letters/{number}/reply"
    assert gina.post(url, data={"text": "Dear Alice,", "action": "save", "draft_of": "",
                                "csrf": gina.csrf}).status_code == 303
    opened = form_field(gwen.get(f"/letters/{number}").text, "draft_of")  # Gwen opens the draft ...
    assert gina.post(url, data={"text": "Dear Alice, Gina's paragraph.", "action": "save", "csrf": gina.csrf,
                                "draft_of": form_field(gina.get(f"/letters/{number}").text, "draft_of")}
                     ).status_code == 303
    # ... and saves hers over a draft Gina has changed since: refused, her text kept beside Gina's.
    refused = gwen.post(url, data={"text": "Dear Alice, Gwen's paragraph.", "action": "save", "draft_of": opened,
                                   "csrf": gwen.csrf})
    assert refused.status_code == 409 and "在此期间已有他人保存了草稿" in refused.text
    assert "Gwen&#39;s paragraph.</textarea>" in refused.text and "Gina&#39;s paragraph." in refused.text
    reply = Replies(site.config, site.registry)._open(site.registry.letter(number))  # type: ignore[arg-type]
    assert reply is not None and reply.text == "Dear Alice, Gina's paragraph."
    # A first draft written by two at once: the second is told, not merged away.
    inquiry = site.letters["inquiry"]
    site.add_people((Person("bob", roles=("member",), departments=("business",), emails=("bob@example.org",)),))
    bob, sam = site.sign_in("bob"), site.sign_in("sam")
    assert bob.post(f"/letters/{inquiry}/reply", data={"text": "Bob's", "action": "save", "draft_of": "",
                                                       "csrf": bob.csrf}).status_code == 303
    late = sam.post(f"/letters/{inquiry}/reply", data={"text": "Sam's", "action": "save", "draft_of": "",
                                                       "csrf": sam.csrf})
    assert late.status_code == 409 and "Sam&#39;s</textarea>" in late.text
    # Merged and saved from the page as it is now.
    assert gwen.post(url, data={"text": "Dear Alice, both paragraphs.", "action": "save", "csrf": gwen.csrf,
                                "draft_of": form_field(refused.text, "draft_of")}).status_code == 303


def test_an_empty_file_attached_to_a_reply_is_refused_not_dropped(site: Site) -> None:
    number = site.letters["office"]
    gina = site.sign_in("gina")  # in Chinese, the default
    url = f"/letters/{number}/reply"
    form = {"text": "Dear Alice, the signed contract is attached.", "action": "save", "draft_of": "",
            "csrf": gina.csrf}
    refused = gina.post(url, data=form, files=[("files", ("contract.pdf", b"", "application/pdf"))])
    assert refused.status_code == 400 and "contract.pdf 是空文件（0 字节）：请重新选择文件" in refused.text
    assert "the signed contract is attached.</textarea>" in refused.text
    assert Replies(site.config, site.registry)._open(site.registry.letter(number)) is None  # type: ignore[arg-type]
    saved = gina.post(url, data=form, files=[("files", ("contract.pdf", b"%PDF-1.4 ...", "application/pdf"))])
    assert saved.status_code == 303


def test_a_replys_files_are_checked_as_its_text_is_each_named_when_refused(
        tmp_path: Path, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file against the attachments' limit, the files together, their number, their names,
    and the mail they make against what the relay takes: refused while drafted, naming the file,
    in the web and the command alike; a reply within them all reaches the sender."""
    monkeypatch.setattr(conftest, "DEPARTMENTS", conftest.DEPARTMENTS.replace(*LEADERS).replace(*LEADERS_B))
    extra = EXTRA.format(relay=sink.address).replace("[replies]\n", "[replies]\nmax_attachment_bytes = 98304\n")
    site = Site(tmp_path, extra=extra.replace("[outbound]\n", "[outbound]\nmax_message_bytes = 122880\n"))
    try:
        site.add_people(PEOPLE + MORE_PEOPLE)
        site.add_letters()
        number = site.letters["office"]  # the head alone approves
        gina = site.sign_in("gina")  # in Chinese, the default
        url = f"/letters/{number}/reply"
        form = {"text": "Dear Alice, the files are attached.", "action": "save", "csrf": gina.csrf}

        def refused(*files: tuple[str, int]) -> str:
            answer = gina.post(url, data=form, files=[("files", (name, b"x" * size, "application/pdf"))
                                                      for name, size in files])
            assert answer.status_code == 400 and "the files are attached.</textarea>" in answer.text
            return re.sub(r"\s+", " ", answer.text)

        assert "a.pdf 大小为 100 KiB，超过回复附件合计允许的96 KiB" in refused(("a.pdf", 102400))
        assert "加上 c.pdf，附件共 100 KiB，超过允许的96 KiB" in refused(("b.pdf", 51200), ("c.pdf", 51200))
        mail = refused(("d.pdf", 46080), ("e.pdf", 46080))  # 90 KiB, but more than 120 KiB as mail
        assert "加上 e.pdf，回复作为邮件将达" in mail and "超过发信服务器接受的120 KiB" in mail
        assert Replies(site.config, site.registry)._open(site.registry.letter(number)) is None  # type: ignore[arg-type]
        big = tmp_path / "big.pdf"
        big.write_bytes(b"x" * 102400)
        cli = site.gateway.run("letters", "reply", number, "--text", "Files attached.", "--attach", str(big),
                               "--as", "gina", check=False)
        assert cli.returncode == 1
        assert "big.pdf is 100 KiB, more than the 96 KiB a reply's attachments may come to" in cli.stderr

        saved = gina.post(url, data=form, files=[("files", ("f.pdf", b"%PDF-1.4 " + b"x" * 61440, "application/pdf"))])
        assert saved.status_code == 303
        assert "回复中已有名为 F.PDF 的附件：请删除其中一个或改名" in refused(("F.PDF", 10))
        assert "最多20个附件：g19.txt 超出了这个数目" in refused(*((f"g{n}.txt", 1) for n in range(20)))

        assert gina.post(url, data={**form, "action": "submit"}).status_code == 303
        olga = site.people.principal("olga")
        assert olga is not None and Replies(site.config, site.registry).approve(olga, number) == "sent"
        deliver(site)
        [sent] = [r for r in sink.to("alice@partner.example") if r.message["Subject"].startswith("Re:")]
        assert len(sent.data) <= 122880
        [attached] = list(sent.message.iter_attachments())
        assert attached.get_filename() == "f.pdf"
    finally:
        site.close()


def test_the_approvals_list_shows_subject_drafter_urgency_and_deadline(site: Site) -> None:
    """Each waiting reply with its letter's subject, drafter, urgency and deadline, and how many wait."""
    number = site.letters["urgent"]  # head, then leader
    with site.registry.write() as conn:
        conn.execute(update(Letter).where(Letter.number == number)
                     .values(deadline=datetime.now(timezone.utc) - timedelta(hours=2)))
    gina, olga = site.sign_in("gina"), site.sign_in("olga")
    assert gina.post(f"/letters/{number}/reply", data={"text": "Signed today.", "action": "submit",
                                                       "csrf": gina.csrf}).status_code == 303
    page = olga.get("/approvals")  # in Chinese, the default
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert "1 份答复待您审批" in words  # how many, as every list says
    assert number in words and "紧急：合同签署" in words  # the subject, as her queues show it
    assert "拟稿人" in words and "Gina gina" in words  # who drafted it, by name
    assert "紧急" in words and "已逾期" in words  # its urgency, and a deadline already passed
    assert re.search(r'<td class="nowrap deadline overdue"[^>]*>[^<]*\d{4}-\d{2}-\d{2} \d{2}:\d{2}', page.text)


def test_a_letter_whose_reply_waits_offers_no_step_the_reply_would_refuse(site: Site) -> None:
    number = site.letters["office"]  # the head alone approves
    gina, olga = site.sign_in("gina"), site.sign_in("olga")
    before = gina.get(f"/letters/{number}").text  # in Chinese, the default
    assert 'value="close"' in before and 'value="reassign"' in before and "通知来信人补充" in before
    assert gina.post(f"/letters/{number}/reply", data={"text": "Our reply.", "action": "submit",
                                                       "csrf": gina.csrf}).status_code == 303
    waiting = gina.get(f"/letters/{number}").text
    assert "答复审批或邮寄中，暂不能办结、转办或标记已答复" in waiting
    for step in ("close", "answer", "reassign"):
        assert f'value="{step}"' not in waiting, step
    assert "通知来信人补充" not in waiting  # asking the sender for more would be refused too
    assert 'value="note"' in waiting and 'value="ack"' in waiting  # what the reply does not stop stays
    gina_principal = site.people.principal("gina")
    assert gina_principal is not None
    with pytest.raises(Refused, match="reply waiting for approval"):  # the page offers what the service allows
        site.access.act(gina_principal, number, "close", text="done")
    assert olga.post(f"/letters/{number}/reply/approve", data={"csrf": olga.csrf}).status_code == 303
    answered = gina.get(f"/letters/{number}").text
    assert "答复审批或邮寄中" not in answered and 'value="close"' in answered


def test_a_letter_whose_reply_waits_is_not_closed_under_it(site: Site) -> None:
    number = site.letters["office"]  # the head alone approves
    gina, olga = site.sign_in("gina"), site.sign_in("olga")
    assert gina.post(f"/letters/{number}/reply", data={"text": "Our reply.", "action": "submit",
                                                       "csrf": gina.csrf}).status_code == 303
    closed = gina.post(f"/letters/{number}/act", data={"action": "close", "text": "done", "csrf": gina.csrf,
                                                       "seen": "general-office"})
    assert closed.status_code == 409 and "有一份答复正在等待审批或邮寄" in closed.text
    gina_principal = site.people.principal("gina")
    assert gina_principal is not None
    for action, department in (("answer", None), ("close", None), ("reassign", "business")):
        with pytest.raises(Refused, match="reply waiting for approval"):
            site.access.act(gina_principal, number, action, text="done", department=department)
    with pytest.raises(Refused, match="reply waiting for approval"):
        Incomplete(site.config, site.registry).mark(gina_principal, number, missing=["the invoice"],
                                                        by=date.today() + timedelta(days=7))
    assert site.registry.letter(number).status == "routed"  # type: ignore[union-attr]
    assert olga.post(f"/letters/{number}/reply/approve", data={"csrf": olga.csrf}).status_code == 303
    assert site.registry.letter(number).status == "answered"  # type: ignore[union-attr]
    assert site.access.act(gina_principal, number, "close", text="done") == f"{number}: answered → closed"


def test_a_reply_shown_by_the_command_is_an_audited_read(site: Site) -> None:
    number = site.letters["office"]  # the head alone approves
    gina = site.people.principal("gina")
    assert gina is not None
    Replies(site.config, site.registry).draft(gina, number, text="Dear Alice, we come on Tuesday.")
    letter = site.registry.letter(number)
    assert letter is not None

    def reads(actor: str) -> list[str]:
        return [row.actor for row, _ in site.registry.audit_rows(letter_id=letter.id, actor=actor, action="read")]

    assert reads("gina") == []
    shown = site.gateway.run("letters", "reply", number, "--as", "gina")
    assert "we come on Tuesday" in shown.stdout
    assert reads("gina") == ["gina"], "reading the reply is reading the letter's content"
    # The operator reads it too, under their name; someone who may not see the letter reads nothing.
    assert "we come on Tuesday" in site.gateway.run("letters", "reply", number, "--by", "desk").stdout
    assert reads("desk") == ["desk"]
    refused = site.gateway.run("letters", "reply", number, "--as", "sam", check=False)
    assert refused.returncode == 1 and "we come on Tuesday" not in refused.stdout
    assert reads("sam") == []


def test_a_reply_written_by_its_only_approver_goes_up_a_level_not_waiting_for_ever(site: Site) -> None:
    """Nobody approves a reply they wrote: a head answering their department's letter themselves,
    its chain the head's step alone, would wait for ever. That step goes to the leader in charge,
    as the draft says before it is submitted; where the chain goes to the leader already, it is
    left out."""
    number = site.letters["office"]  # the head's step alone; Olga heads the General Office
    olga, leo = site.sign_in("olga"), site.sign_in("leo")  # in Chinese, the default
    url = f"/letters/{number}/reply"
    assert olga.post(url, data={"text": "We come on Monday.", "action": "save", "csrf": olga.csrf}).status_code == 303
    draft = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", olga.get(f"/letters/{number}").text))
    assert "撰写人不审批自己的答复：部门负责人一级改由分管领导审批。" in draft, draft
    assert olga.post(url, data={"text": "We come on Monday.", "action": "submit", "csrf": olga.csrf,
                                "draft_of": form_field(olga.get(f"/letters/{number}").text, "draft_of")}
                     ).status_code == 303
    replies = Replies(site.config, site.registry)
    letter = site.registry.letter(number)
    assert letter is not None
    reply = replies.panel(site.people.principal("leo"), letter).reply
    assert reply is not None and reply.chain == ["leader"] and "head → leader" in reply.rule
    assert [a.number for a in replies.awaiting(site.people.principal("leo"))] == [number]
    assert replies.awaiting(site.people.principal("olga")) == []
    stage = form_field(leo.get(f"/letters/{number}").text, "stage")
    assert leo.post(f"{url}/approve", data={"stage": stage, "csrf": leo.csrf}).status_code == 303
    assert actions(site, number).count("reply-sent") == 1

    # Head, then leader: the head wrote it, so the leader alone approves.
    urgent = site.letters["urgent"]
    assert olga.post(f"/letters/{urgent}/reply", data={"text": "We sign today.", "action": "submit",
                                                       "csrf": olga.csrf}).status_code == 303
    letter = site.registry.letter(urgent)
    assert letter is not None
    reply = replies.panel(site.people.principal("leo"), letter).reply
    assert reply is not None and reply.chain == ["leader"]


def test_a_reply_only_its_writers_could_approve_is_refused_when_submitted(
        tmp_path: Path, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """No leader in charge and no top leadership above the head who wrote it: submitting says so,
    rather than start a chain nobody can take."""
    monkeypatch.setattr(conftest, "DEPARTMENTS", conftest.DEPARTMENTS.replace(LEADERS[1], LEADERS[0]))
    alone = Site(tmp_path, extra=f'[outbound]\nrelay = "{sink.address}"\nfrom_address = "gateway@example.org"\n')
    try:
        alone.add_people(PEOPLE + MORE_PEOPLE)
        alone.add_letters()
        number = alone.letters["office"]
        olga = alone.sign_in("olga")
        refused = olga.post(f"/letters/{number}/reply", data={"text": "We come on Monday.", "action": "submit",
                                                              "csrf": olga.csrf})
        assert refused.status_code == 409, refused.status_code
        assert "除答复撰写人外，无人可作为部门负责人审批，上级亦无" in refused.text
        assert "We come on Monday.</textarea>" in refused.text  # the text is kept to submit otherwise
        assert "reply-submitted" not in actions(alone, number)
    finally:
        alone.close()
