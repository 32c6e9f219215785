"""Where a confidential or archived letter's content does not reach: people who may see the
letter only as an entry learn nothing of what it says from search order, the audit log, the
mails about it or the pages that list it."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import make_message
from sqlalchemy import update
from web_support import ORDERS_RULE, WEB_RULES, Site, site_fixture  # noqa: F401  (the `site` fixture)

from gateway.archive.packer import Archiver
from gateway.outbound import circulation as circulation_mail
from gateway.outbound import outward
from gateway.registry.models import Letter
from gateway.services import intake
from gateway.services.access import QueueQuery
from gateway.services.borrowing import Borrowings
from gateway.services.circulation import Circulations
from gateway.services.incomplete import Incomplete
from gateway.services.people import Principal

pytestmark = pytest.mark.timeout(300)

TZ = ZoneInfo("Asia/Shanghai")
SECRET_NAME = "AcmeTakeoverPriceSheet.pdf"


def archived(site: Site, name: str) -> str:
    number = site.letters[name]
    site.access.act(Principal.operator("test"), number, "close", text="done")
    letter = site.registry.letter(number)
    assert letter is not None
    Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
    return number


def confidential_with_attachment(name: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = "Wang Fang <wang.fang@partner.cn>", "sales@example.org"
    message["Subject"] = "Confidential: merger"
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0800"
    message.set_content("The terms are attached.\n")
    message.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename=name)
    return bytes(message)


def test_search_orders_a_letter_one_may_not_read_by_its_entry_alone(site: Site) -> None:
    """Two confidential letters of one sender match a search for the sender's name equally by their
    entries; the one whose body holds the word fifty times does not come first for Sam, who may read
    neither (newest first, as for equal matches)."""
    sender = "Wang Fang <wang.fang@partner.cn>"
    site.ingest("holds", make_message(11, subject="Confidential: terms", to="sales@example.org", sender=sender,
                                      body="wang " * 50 + "\n"))
    site.ingest("plain", make_message(12, subject="Confidential: other", to="sales@example.org", sender=sender,
                                      body="Nothing here.\n"))
    sam, bella = site.people.principal("sam"), site.people.principal("bella")
    assert sam is not None and bella is not None
    names = {number: name for name, number in site.letters.items()}
    page = site.access.search(sam, "wang", QueueQuery(queue="all"), address="127.0.0.1")
    assert page.content == set()
    assert [names[r.number] for r in page.rows] == ["plain", "holds"]
    # Bella, the head, reads both: for her the body counts.
    page = site.access.search(bella, "wang", QueueQuery(queue="all"), address="127.0.0.1")
    assert [names[r.number] for r in page.rows] == ["holds", "plain"]


def test_the_audit_log_names_no_file_of_a_confidential_letter(site: Site, tmp_path: Path) -> None:
    """Auditors read the audit log and may not read a confidential letter: extracting its files and
    downloading its reply's attachment are recorded without their names, as a download is."""
    from gateway.registry.replies import NewReplyAttachment
    from gateway.services.replies import Replies

    number = site.ingest("merger", confidential_with_attachment(SECRET_NAME))
    bella, audrey = site.people.principal("bella"), site.people.principal("audrey")
    assert bella is not None and audrey is not None
    letter = site.registry.letter(number)
    assert letter is not None and not site.access.content_allowed(audrey, letter)
    written = site.access.extract(bella, number, tmp_path / "out", address="cli")
    assert any("AcmeTakeover" in p.name for p in written)
    replies = Replies(site.config, site.registry)
    reply_id = replies.draft(bella, number, text="Our counter-offer is attached.",
                             attach=[NewReplyAttachment("AcmeCounterOffer.pdf", "application/pdf", b"%PDF-1.4\n")])
    attachment = replies.records.attachments(reply_id)[0]
    assert replies.attachment(bella, number, reply_id, attachment.id, address="127.0.0.1") is not None
    assert site.access.attachment(bella, number, 0, address="127.0.0.1") is not None
    log = "".join(site.access.audit_csv(audrey, address="127.0.0.1"))
    assert log.count(f"bella,download,{number},") == 3, log
    assert "Acme" not in log, log


def test_a_refused_borrower_is_not_mailed_the_archived_letters_subject(site: Site) -> None:
    number = archived(site, "business")
    sam, bella = site.people.principal("sam"), site.people.principal("bella")
    assert sam is not None and bella is not None
    borrowings = Borrowings(site.config, site.registry, site.access)
    borrowings.decide(bella, borrowings.request(sam, number, reason="need it", days=3), grant=False, comment="no")
    letter = site.registry.letter(number)
    assert letter is not None and not site.access.content_allowed(sam, letter)
    mails = [m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "borrowing"]
    assert {m.details["about"] for m in mails} == {"request", "refused"}
    for mail in mails:
        text = circulation_mail.compose(site.config, mail, letter).as_string()
        assert "Order 4711" not in text and "Subject:   Archived letter" in text, text


def test_a_supplement_notice_of_a_confidential_letter_names_neither_what_was_asked_nor_the_files(
        site: Site, tmp_path: Path) -> None:
    number = site.letters["secret"]  # confidential, Business; from alice@partner.example
    sam = site.people.principal("sam")  # one of Business's owners, who may not read it
    letter = site.registry.letter(number)
    assert sam is not None and letter is not None and not site.access.content_allowed(sam, letter)
    by = (datetime.now(site.config.calendar.tz) + timedelta(days=10)).date()
    Incomplete(site.config, site.registry).mark(Principal.operator("clerk"), number,
                                                missing=["The signed merger price sheet"], by=by)
    request = next(m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "request")
    message = EmailMessage()
    message["From"], message["To"] = "Alice Partner <alice@partner.example>", "sales@example.org"
    message["Subject"] = f"Re: [{number}] Materials missing"
    message["Message-ID"] = "<supplement-1@partner.example>"
    message["In-Reply-To"] = message["References"] = request.message_id
    message["Date"] = "Mon, 23 Nov 2026 12:00:00 +0800"
    message.set_content("Here it is.\n")
    message.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename=SECRET_NAME)
    path = tmp_path / "supplement.eml"
    path.write_bytes(bytes(message))
    assert intake.ingest_file(site.config, site.spool, site.pipeline, path).number == number
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "in-progress"
    [notice] = [m for m in site.registry.outbox(letter_id=letter.id)
                if m.kind == "sender-notice" and m.recipient == "sales.desk@example.org"]
    text = outward.notice(site.config, notice, letter).get_content()
    assert "Acme" not in text and "1 file(s), named in the register" in text, text


def test_a_leaders_instruction_on_a_confidential_letter_stays_in_the_register(site: Site) -> None:
    number = site.letters["secret"]
    site.people.grant("leo", letter=number, reason="to instruct", actor="ada")
    leo, sam = site.people.principal("leo"), site.people.principal("sam")
    letter = site.registry.letter(number)
    assert leo is not None and sam is not None and letter is not None
    assert site.access.content_allowed(leo, letter) and not site.access.content_allowed(sam, letter)
    circulations = Circulations(site.config, site.registry, site.access)
    circulations.start(Principal.operator("clerk"), number, ["leo"])
    circulations.sign(leo, number, "Accept the AcmeTakeover price of 40 million")
    mails = [m for m in site.registry.outbox(letter_id=letter.id) if m.kind == "circulation"
             and m.details["about"] in ("instruction", "finished")]
    assert {m.details["about"] for m in mails} == {"instruction", "finished"}
    for mail in mails:
        text = circulation_mail.compose(site.config, mail, letter).get_content()
        assert "AcmeTakeover" not in text and "(not sent by mail: read it in the register)" in text, text
    # An ordinary letter's instruction is mailed as written.
    ordinary = site.letters["office"]
    circulations.start(Principal.operator("clerk"), ordinary, ["leo"])
    circulations.sign(leo, ordinary, "Receive them on Tuesday")
    told = site.registry.letter(ordinary)
    assert told is not None
    [instruction] = [m for m in site.registry.outbox(letter_id=told.id) if m.kind == "circulation"
                     and m.details["about"] == "instruction"]
    assert "Receive them on Tuesday" in circulation_mail.compose(site.config, instruction, told).get_content()


def test_a_letter_archived_while_circulating_leaves_the_readers_list_and_is_reminded_no_more(
        site: Site) -> None:
    from gateway.registry.circulation import CirculationRecords

    number = site.letters["business"]  # "Order 4711 for next quarter"
    circulations = Circulations(site.config, site.registry, site.access)
    circulations.start(Principal.operator("clerk"), number, ["gina"])
    gina = site.sign_in("gina")
    assert "Order 4711" in gina.get("/to-read").text  # her turn: hers to read
    assert [step.number for step in CirculationRecords(site.registry).due_steps()] == [number]
    archived(site, "business")
    page = gina.get("/to-read")
    assert page.status_code == 200 and number not in page.text and "Order 4711" not in page.text
    assert CirculationRecords(site.registry).due_steps() == []


def test_the_triage_desk_shows_no_likely_department_drawn_from_a_letter_one_may_not_read(
        tmp_path: Path) -> None:
    """A confidential letter needing a department, whose subject's 订单 nearly matched the orders
    rule: the registry office, which may not read it, is not shown Business as likely (that is the
    subject's word); for an ordinary letter the hint stays."""
    site = Site(tmp_path, rules=WEB_RULES.replace("rules:\n", "rules:\n" + ORDERS_RULE, 1))
    try:
        site.add_people()
        secret = site.ingest("secret-order", make_message(41, subject="Confidential: 订单 for the takeover",
                                                          to="nobody@example.org"))
        plain = site.ingest("plain-order", make_message(42, subject="订单 for next month", to="nobody@example.org"))
        for number in (secret, plain):
            letter = site.registry.letter(number)
            assert letter is not None and letter.status == "needs-triage"
        site.people.set_language("rita", "en")
        desk = site.sign_in("rita").get("/triage").text

        def item(number: str) -> str:
            found = re.search(rf'id="t-{re.escape(number)}".*?</article>', desk, re.S)
            assert found is not None
            return found.group(0)

        assert "Likely:" not in item(secret) and 'name="department" value="business"' not in item(secret)
        assert "Likely:</strong> Business" in item(plain) and 'name="department" value="business"' in item(plain)
    finally:
        site.close()


def test_an_archived_letters_reply_is_content_its_approver_reads_only_by_borrowing(site: Site) -> None:
    """The head approved the reply while the letter was open; archived, its reply is the letter's
    content like the rest: not on the page without a borrowing granted for now."""
    from gateway.services.replies import Replies

    number = site.letters["business"]
    sam, bella = site.people.principal("sam"), site.people.principal("bella")
    assert sam is not None and bella is not None
    replies = Replies(site.config, site.registry)
    replies.draft(sam, number, text="Dear customer, order 4711 ships on 3 March; the discount of 17.5% stays.")
    replies.submit(sam, number)
    replies.approve(bella, number)  # the head: the default chain's only step; the reply goes out
    assert replies.panel(bella, site.registry.letter(number)).reply is not None  # type: ignore[arg-type]
    site.access.act(Principal.operator("test"), number, "close", text="done")
    letter = site.registry.letter(number)
    assert letter is not None
    Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
    letter = site.registry.letter(number)
    assert letter is not None and letter.status == "archived" and not site.access.content_allowed(bella, letter)
    assert replies.panel(bella, letter).reply is None
    site.people.set_language("bella", "en")
    page = site.sign_in("bella").get(f"/letters/{number}")
    assert page.status_code == 200 and "Archived: its content is read through an approved borrowing." in page.text
    assert "17.5%" not in page.text


def test_a_supplement_to_an_archived_letter_is_recorded_beside_it_not_made_part_of_it(site: Site) -> None:
    from gateway.registry.outward import FollowUp, OutwardRecords
    from gateway.registry.plan import NewAttachment

    number = site.letters["business"]
    site.access.act(Principal.operator("test"), number, "close", text="done")
    letter = site.registry.letter(number)
    assert letter is not None
    Archiver(site.config, site.registry).run(letter.received_at.astimezone(TZ).strftime("%Y-%m"))
    before = site.registry.letter(number)
    assert before is not None and before.status == "archived"
    late = FollowUp(number, "supplement", "alice@partner.example", "Here is the signed contract after all.",
                    verified=True, matched_by="reply", attachments=[NewAttachment(
                        filename="contract.pdf", original_filename="contract.pdf", declared_type="application/pdf",
                        detected_type="application/pdf", size=10, sha256="0" * 64, origin="supplement")])
    done = OutwardRecords(site.registry).supplement(
        late, keys=["test:late-supplement"], raw_sha256="1" * 64, raw_path="messages/late.eml",
        received_at=datetime.now(timezone.utc), resume=lambda days, now: None, notify=[])
    after = site.registry.letter(number)
    assert done.number == number and after is not None and after.status == "archived"
    assert after.body_text == before.body_text and len(after.attachments) == len(before.attachments)
    [recorded] = [e for e in after.events if e.action == "follow-up"]
    assert recorded.details["reason"].startswith("the letter is archived: recorded only")
    assert recorded.details["attachments"] == ["contract.pdf"] and recorded.details["raw_path"] == "messages/late.eml"


@pytest.mark.parametrize("login", ["audrey", "rita", "ada"])
def test_the_shell_shows_the_register_entry_the_page_shows(site: Site, login: str) -> None:
    """Who sees a drop-folder fax's entry only (an auditor or administrator an ordinary one, the
    registry office a confidential one) sees its sender's number from the shell as on the page:
    the same entry, and nothing of its content."""
    number = site.letters["fax"]
    if login == "rita":
        with site.registry.write() as conn:
            conn.execute(update(Letter).where(Letter.number == number).values(confidentiality="confidential"))
    site.people.set_language(login, "en")
    page = site.sign_in(login).get(f"/letters/{number}").text
    assert "Register entry" in page and "+8620123456" in page and "PURCHASE" not in page.upper()
    shown = json.loads(site.gateway.run("letters", "show", number, "--json", "--as", login).stdout)
    assert shown.pop("content").startswith("not yours to read: ")
    letter = site.registry.letter(number)
    assert letter is not None
    assert shown == {"number": number, "sender_name": "", "sender_address": "+8620123456", "status": letter.status,
                     "received_at": letter.received_at.isoformat(), "department": "general-office",
                     "urgency": letter.urgency, "confidentiality": letter.confidentiality, "legal_hold": False,
                     "overdue": False}
    text = site.gateway.run("letters", "show", number, "--as", login).stdout
    assert "sender_address: +8620123456" in text
