"""Full-text search of the register: Chinese words inside sentences in either script, Latin words
by prefix, numbers, addresses and attachment names, a fax's text once read — on SQLite FTS5 and
PostgreSQL — and never a letter, or a word of a letter's content, the person may not read."""
from __future__ import annotations

import json
import operator
import random
import textwrap
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import make_message, wait_for
from fax_samples import ENGLISH, pdf_fax, tiff_fax
from ocr_corpus import sample
from sqlalchemy import event, text
from web_support import Site

from gateway.registry import schema
from gateway.fold import fold
from gateway.registry.search import _CJK_RUN, _PIECES, index_terms, registered_terms
from gateway.services.access import QueueQuery
from gateway.services.paper import PaperLetter, Scan, register_paper
from gateway.services.people import Principal
from gateway.services.queries import reindex_missing
from gateway.stages.fax.text import TextReader

RULES = textwrap.dedent("""
    rules:
      - name: confidential
        when:
          keywords: {any: ["机密"], in: [subject]}
        set: {confidentiality: confidential}
        stop: false
      - name: by-address
        when:
          any:
            - recipient_department: any
            - mailbox_department: any
        set: {department: recipient, category: external.business}
""")
OPERATOR = Principal.operator("clerk")
# Fax-to-email: the fax's number from the subject, its sender (the station's name) from the text.
FAX_MAIL = """
[fax.email]
senders = ["fax@faxservice.example"]
body_pattern = '(?i)station (?P<sender_name>[^.\\n]+)'
"""


class Register(Site):
    """A register with the search's letters; `find` lists the names of the letters a search finds."""

    @property
    def numbers(self) -> dict[str, str]:
        return self.letters

    def find(self, query: str, who: Principal = OPERATOR, **filters: object) -> list[str]:
        page = self.access.search(who, query, QueueQuery(queue="all", **filters), address="127.0.0.1")  # type: ignore[arg-type]
        names = {number: name for name, number in self.letters.items()}
        return [names.get(r.number, r.number) for r in page.rows]


def with_attachment(subject: str, sender: str, to: str, name: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0800"
    message.set_content("Please find the document attached.\n")
    message.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename=name)
    return bytes(message)


def fill(register: Register) -> None:
    register.ingest("contract", make_message(1, subject="关于2027年度供货合同的续签事宜", to="sales@example.org",
                                            body="王经理您好：附件为合同草案，请审阅。\n"))
    register.ingest("complaint", make_message(2, subject="投訴：訂單延遲交付", to="liaison@example.org",
                                             body="我在十一月初下的訂單至今未到貨。\n"))
    register.ingest("quotation", make_message(3, subject="Quotation request for 500 units", to="sales@example.org",
                                              body="Please send a quotation.\n"))
    register.ingest("attached", with_attachment("Documents", "Zhang Wei <zhang.wei@partner.cn>",
                                                "sales@example.org", "报价单2026.pdf"))
    register.ingest("secret", make_message(5, subject="机密：并购条款", to="sales@example.org",
                                          sender="Wang Fang <wang.fang@partner.cn>", body="关于并购谈判的条款。\n"))


@pytest.fixture
def register(tmp_path: Path) -> Iterator[Register]:
    r = Register(tmp_path, rules=RULES, extra=FAX_MAIL)
    fill(r)
    yield r
    r.close()


@pytest.fixture
def pg_register(tmp_path: Path, pg_url: str) -> Iterator[Register]:
    r = Register(tmp_path, rules=RULES, extra=FAX_MAIL, registry_url=pg_url)
    fill(r)
    yield r
    r.close()


def check_finding(register: Register) -> None:
    assert register.find("合同") == ["contract"]  # two characters inside a sentence
    assert register.find("续签") == ["contract"]
    assert register.find("合同 续签") == ["contract"]  # every word
    assert register.find("合同续签") == []  # a phrase that is not in it
    assert register.find("供货合同") == ["contract"]
    assert register.find("合") == ["contract"]  # a lone character begins a word
    # ...or ends a run of Chinese: a sentence's, a subject's, a name's before digits.
    assert register.find("宜") == ["contract"] and register.find("阅") == ["contract"]
    assert sorted(register.find("单")) == ["attached", "complaint"]  # 报价单2026.pdf, 訂單
    assert register.find("价单2026") == ["attached"] and register.find("单2026") == ["attached"]
    assert register.find("投诉") == ["complaint"]  # simplified finds traditional
    assert register.find("訂單") == ["complaint"]  # and traditional itself
    assert register.find("订单") == ["complaint"]
    assert register.find("quot") == ["quotation"]  # Latin by prefix, any case
    assert register.find("UNITS quotation") == ["quotation"]
    assert register.find("zhang.wei@partner") == ["attached"]  # an address
    assert register.find("报价单") == ["attached"]  # an attachment's name
    assert register.find(register.numbers["quotation"]) == ["quotation"]  # a letter number
    assert register.find("合同 quotation") == []
    assert register.find("   ") == [] and register.find("!!!") == []
    # Filters combine with the search.
    assert register.find("合同", department="general-office") == []
    assert register.find("合同", department="business") == ["contract"]


def test_chinese_latin_numbers_addresses_and_attachment_names_are_found(register: Register) -> None:
    check_finding(register)


def check_reindexed_for_last_characters(register: Register) -> None:
    """A register indexed before a run's last character was a token of its own: its upgrade takes
    the letters with Chinese out of the index, and the daemon's start puts them back."""
    contract = register.registry.letter(register.numbers["contract"])
    assert contract is not None
    entry, content = registered_terms(contract)
    register.registry.index_letters([(contract.id, entry, " ".join(
        " ".join(map(operator.add, run, run[1:])) if len(run) > 1 and _CJK_RUN.fullmatch(run) else run
        for run in _PIECES.findall(fold(f"{contract.subject} {contract.body_text}"))))])
    assert register.find("宜") == [] and register.find("合同") == ["contract"]
    with register.registry.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0022'"))
    assert schema.upgrade(register.registry.engine)
    assert register.find("合同") == [] and register.find("quotation") == ["quotation"]  # ASCII alone: kept
    assert reindex_missing(register.registry) == len(register.numbers) - 1
    assert register.find("宜") == ["contract"] and register.find("合同") == ["contract"]


def test_letters_indexed_before_are_indexed_again_for_a_runs_last_character(register: Register) -> None:
    check_reindexed_for_last_characters(register)


def check_full_width(register: Register) -> None:
    """Latin letters, digits and punctuation typed in full width (a Chinese input method's 全角) find
    their ordinary forms, and the other way round."""
    full = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}
    register.ingest("iso", make_message(6, subject="ＩＳＯ９００１认证的复审", to="sales@example.org"))
    assert register.find("ＱＵＯＴ") == ["quotation"]
    assert register.find("ｑｕｏｔａｔｉｏｎ\u3000ｕｎｉｔｓ") == ["quotation"]  # an ideographic space
    assert register.find(register.numbers["quotation"].translate(full)) == ["quotation"]  # ２０２６－０００００３
    assert register.find("报价单２０２６") == ["attached"]
    assert register.find("zhang.wei＠partner") == ["attached"]
    assert register.find("iso9001认证") == ["iso"] and register.find("ＩＳＯ") == ["iso"]
    assert register.find("ISO 复审") == ["iso"] and register.find("９００１") == []  # a word begins it


def test_full_width_letters_and_digits_find_their_ordinary_forms(register: Register) -> None:
    check_full_width(register)


def check_address_forms(register: Register) -> None:
    """A sender's domain is found in Unicode and in A-labels alike, however the letter wrote it; a
    register indexed before has those letters indexed again at the daemon's start."""
    register.ingest("a-labels", make_message(7, subject="IDN", to="sales@example.org",
                                             sender="Zhang San <zhang@xn--fsqu00a.xn--fiqs8s>"))
    register.ingest("u-labels", make_message(8, subject="UTF-8", to="sales@example.org",
                                             sender="Li Si <li@公司.中国>"))
    for query, found in (("例子", ["a-labels"]), ("zhang@例子.中国", ["a-labels"]), ("xn--fsqu00a", ["a-labels"]),
                         ("zhang@xn--fsqu00a.xn--fiqs8s", ["a-labels"]), ("公司", ["u-labels"]),
                         ("li@xn--55qx5d.xn--fiqs8s", ["u-labels"]), ("li@公司.中国", ["u-labels"])):
        assert register.find(query) == found, query
    with register.registry.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0025'"))
    for name in ("a-labels", "u-labels"):  # as they were indexed: the address as the letter gave it
        letter = register.registry.letter(register.numbers[name])
        assert letter is not None
        entry, content = registered_terms(letter)
        register.registry.index_letters([(letter.id, index_terms(letter.number, letter.sender_name,
                                                                 letter.sender_address), content)])
    assert register.find("例子") == [] and register.find("li@xn--55qx5d.xn--fiqs8s") == []
    assert schema.upgrade(register.registry.engine)
    assert reindex_missing(register.registry) == 2
    assert register.find("例子") == ["a-labels"] and register.find("li@xn--55qx5d.xn--fiqs8s") == ["u-labels"]


def test_a_senders_domain_is_found_in_unicode_and_in_a_labels(register: Register) -> None:
    check_address_forms(register)


def test_the_same_searches_on_postgresql(pg_register: Register) -> None:
    check_finding(pg_register)
    check_reindexed_for_last_characters(pg_register)
    check_full_width(pg_register)
    check_access(pg_register)
    check_paper_sender(pg_register)
    add_fax_mails(pg_register)
    for role, reads in FAX_READERS:
        check_fax_mail(pg_register, role, reads)
    check_fax_mail_reindexed(pg_register)
    check_address_forms(pg_register)


def check_one_full_text_query(register: Register) -> None:
    """A search reads the index once: the page and the number of all matches come from one query
    (a page past the last, which has no row to carry the number, counts apart)."""
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(register.registry.engine, "before_cursor_execute", seen)
    try:
        def search(query: str, **paging: int) -> tuple[list[str], int]:
            statements.clear()
            page = register.access.search(OPERATOR, query, QueueQuery(queue="all", **paging),  # type: ignore[arg-type]
                                          address="127.0.0.1")
            assert len([s for s in statements if "letter_search" in s]) == 1, statements
            names = {number: name for name, number in register.letters.items()}
            return [names[r.number] for r in page.rows], page.total

        assert search("合同") == (["contract"], 1)
        both, total = search("partner.cn")
        assert sorted(both) == ["attached", "secret"] and total == 2
        assert search("partner.cn", per_page=1) == (both[:1], 2)
        assert search("partner.cn", per_page=1, page=2) == (both[1:], 2)
        assert search("合同 quotation") == ([], 0)
        statements.clear()
        past = register.access.search(OPERATOR, "partner.cn", QueueQuery(queue="all", per_page=1, page=3),
                                      address="127.0.0.1")
        assert past.rows == [] and past.total == 2
    finally:
        event.remove(register.registry.engine, "before_cursor_execute", seen)


def test_a_search_reads_the_index_once(register: Register) -> None:
    check_one_full_text_query(register)


def test_a_search_reads_the_index_once_on_postgresql(pg_register: Register) -> None:
    check_one_full_text_query(pg_register)


def test_a_long_letter_in_chinese_is_registered_and_found_on_postgresql(pg_register: Register) -> None:
    """150,000 characters of Chinese are some 1.6 MB of tsvector, more than PostgreSQL takes: the
    index keeps the text as far as it fits, and the letter is registered all the same."""
    rnd = random.Random(7)
    words = "".join(chr(rnd.randrange(0x4E00, 0x9FA5)) for _ in range(150_000))
    pg_register.ingest("long", make_message(7, subject="年度报告全文", to="sales@example.org", body=words + "\n"))
    assert pg_register.find("年度报告") == ["long"] and pg_register.find(words[1000:1010]) == ["long"]


def check_access(register: Register) -> None:
    register.people.add("sam", emails=["sales.desk@example.org"], actor="test")  # a member of business
    register.people.add("gina", departments=["general-office"], roles=["member"], emails=["gina@example.org"],
                        actor="test")
    register.people.add("bella", emails=["business.head@example.org"], actor="test")  # the head of business
    sam, gina, bella = (register.people.principal(n) for n in ("sam", "gina", "bella"))
    assert sam and gina and bella
    # Letters of another department are not found at all.
    assert register.find("合同", gina) == [] and register.find("投诉", gina) == ["complaint"]
    # A confidential letter's content words find nothing for a member who may not read it...
    assert register.find("并购", sam) == []
    # ...its register entry still finds it, without its subject.
    page = register.access.search(sam, "wang.fang", QueueQuery(queue="all"), address="127.0.0.1")
    assert [r.number for r in page.rows] == [register.numbers["secret"]] and page.content == set()
    # The department's head reads it, so finds it by its content.
    assert register.find("并购", bella) == ["secret"]
    assert register.find("并购") == ["secret"]  # and the operator at the server
    # Each search is an audit row naming who searched for what and how much was found.
    rows = [(r.actor, r.subject, r.details["matches"]) for r, _ in register.registry.audit_rows(action="search")
            if r.actor in ("sam", "gina")]
    assert ("sam", "并购", 0) in rows and ("gina", "投诉", 1) in rows


def test_search_never_shows_what_the_person_may_not_read(register: Register) -> None:
    check_access(register)


def check_paper_sender(register: Register) -> None:
    done = register_paper(register.config, register.spool, register.pipeline, PaperLetter(
        channel="post", sender_name="王建国", organisation="红星机械厂", address="广州市幸福路12号",
        phone="13800138000", scans=[Scan("a.pdf", pdf_fax([ENGLISH]))]), by="rita", intake="web")
    register.letters["paper"] = str(done.number)
    register.people.add("audrey", roles=["auditor"], emails=["audrey@example.org"], actor="test")
    audrey = register.people.principal("audrey")
    assert audrey
    # Whoever reads the letter finds it by its sender's organisation, telephone and postal address...
    for words in ("王建国", "红星机械厂", "13800138000", "幸福路"):
        assert register.find(words) == ["paper"]
    # ...someone who sees its register entry only (name, number, status) by that entry alone: the
    # rest of what the registry office recorded of its sender is not theirs to learn by searching.
    assert register.find("王建国", audrey) == ["paper"] and register.find("国", audrey) == ["paper"]
    for words in ("红星机械厂", "13800138000", "幸福路", "王建国 幸福路"):
        page = register.access.search(audrey, words, QueueQuery(queue="all"), address="127.0.0.1")
        assert (page.rows, page.total) == ([], 0), words
    # A register indexed before they were content terms: its upgrade takes such letters out of the
    # index, and the daemon's start puts them back with the terms cut now.
    letter = register.registry.letter(register.letters["paper"])
    assert letter is not None
    register.registry.index_letters([(letter.id, index_terms(letter.number, "王建国", "红星机械厂", "13800138000",
                                                             "广州市幸福路12号"), "")])
    assert register.find("幸福路", audrey) == ["paper"]
    with register.registry.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0021'"))
    assert schema.upgrade(register.registry.engine)
    # (0023 takes every letter with Chinese out as well.)
    assert register.find("王建国") == [] and reindex_missing(register.registry) >= 1
    assert register.find("幸福路", audrey) == [] and register.find("幸福路") == ["paper"]


def test_a_paper_letters_sender_details_are_found_only_with_its_content(register: Register) -> None:
    check_paper_sender(register)


def fax_mail(number: str, station: str, confidential: bool = False) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = "Fax Service <fax@faxservice.example>", "sales@example.org"
    message["Subject"] = f"{'机密 ' if confidential else ''}Fax from {number} (1 page)"
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0800"
    message.set_content(f"You have received a fax from station {station}.\n")
    message.add_attachment(pdf_fax([ENGLISH]), maintype="application", subtype="pdf", filename="fax.pdf")
    return bytes(message)


def add_fax_mails(register: Register) -> None:
    register.ingest("fax-mail", fax_mail("+86 21 6666 7777", "东方机电"))
    register.ingest("fax-secret", fax_mail("+86 21 5555 8888", "蓝天贸易", confidential=True))
    # A fax is classified once its text is read (not here): confidential as its rule would make it.
    with register.registry.write() as conn:
        conn.execute(text("UPDATE letters SET confidentiality = 'confidential' WHERE number = :n"),
                     {"n": register.numbers["fax-secret"]})
    for name in ("fax-mail", "fax-secret"):
        letter = register.registry.letter(register.numbers[name])
        assert letter is not None and (letter.channel, letter.department) == ("fax", "general-office")
        assert letter.confidentiality == ("confidential" if name == "fax-secret" else "normal")
        assert letter.sender_address == "fax@faxservice.example" and letter.fax_number and letter.fax_sender_name


def principal_with(register: Register, role: str) -> Principal:
    """Someone of that role: a member or the head of the faxes' department (the general office,
    which triages them), or a role over every department."""
    if known := register.people.principal(role):
        return known
    if role == "member":
        register.people.add(role, emails=["office@example.org"], actor="test")
    elif role == "head":
        register.people.add(role, emails=["office.head@example.org"], actor="test")
    else:
        register.people.add(role, roles=[role], emails=[f"{role}@example.org"], actor="test")
    who = register.people.principal(role)
    assert who
    return who


def check_fax_mail(register: Register, role: str, reads: tuple[str, ...]) -> None:
    """A fax that came by mail shows the mail's sender in its register entry, the fax's own number
    and sender (the station's name) only with its content: only those who may read it find it by them."""
    who = principal_with(register, role)
    assert sorted(register.find("fax@faxservice.example", who)) == ["fax-mail", "fax-secret"]  # its entry
    for name, words in (("fax-mail", "6666 7777"), ("fax-mail", "东方机电"), ("fax-secret", "5555 8888"),
                        ("fax-secret", "蓝天贸易"), ("fax-secret", "faxservice 5555")):
        page = register.access.search(who, words, QueueQuery(queue="all"), address="127.0.0.1")
        found = [r.number for r in page.rows]
        assert (found, page.total) == (([register.numbers[name]], 1) if name in reads else ([], 0)), (role, words)
    for words in ("6666 7777", "5555 8888", "蓝天贸易"):  # whoever reads everything
        assert len(register.find(words)) == 1


FAX_READERS = [("auditor", ()), ("admin", ()), ("registry", ("fax-mail",)), ("leader", ("fax-mail",)),
               ("member", ("fax-mail",)), ("head", ("fax-mail", "fax-secret"))]


@pytest.mark.parametrize("role,reads", FAX_READERS)
def test_a_fax_by_mails_number_and_sender_are_found_only_with_its_content(
        register: Register, role: str, reads: tuple[str, ...]) -> None:
    add_fax_mails(register)
    check_fax_mail(register, role, reads)


def check_fax_mail_reindexed(register: Register) -> None:
    """A register indexed when they were entry terms: its upgrade takes such letters out of the
    index, and the daemon's start puts them back with the terms cut now."""
    auditor = principal_with(register, "auditor")
    letter = register.registry.letter(register.numbers["fax-mail"])
    assert letter is not None
    entry, content = registered_terms(letter)
    register.registry.index_letters([(letter.id, f"{entry} {index_terms(letter.fax_number or '')}", content)])
    assert register.find("6666 7777", auditor) == ["fax-mail"]
    with register.registry.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0023'"))
    assert schema.upgrade(register.registry.engine)
    assert register.find("6666 7777") == [] and reindex_missing(register.registry) == 2
    assert register.find("6666 7777", auditor) == [] and register.find("6666 7777") == ["fax-mail"]


def test_a_fax_by_mail_indexed_before_is_indexed_again(register: Register) -> None:
    add_fax_mails(register)
    check_fax_mail_reindexed(register)


def test_a_faxs_text_is_found_once_read_and_older_letters_are_indexed(register: Register) -> None:
    number = register.ingest("fax", tiff_fax([ENGLISH]), filename="fax_+8620123456_20261122-090000.tif")
    assert register.find("8620123456") == ["fax"]  # its number, before any text is read
    assert register.find("采购") == []
    letter = register.registry.letter(number)
    assert letter is not None
    register.registry.ocr_done(letter.id, "关于采购订单的咨询\n报价单见附件", summary="关于采购订单的咨询", defects=[],
                               pages=1, seconds=0.5, routing=None)
    assert register.find("采购") == ["fax"] and register.find("咨询 8620123456") == ["fax"]
    # A register that predates the index: its letters are indexed by the daemon's start.
    with register.registry.write() as conn:
        conn.execute(text("DELETE FROM letter_search"))
    assert register.find("合同") == []
    assert reindex_missing(register.registry) == len(register.numbers)
    assert register.find("合同") == ["contract"] and register.find("采购") == ["fax"]
    assert reindex_missing(register.registry) == 0


def read_fax(register: Register, number: str) -> None:
    """The daemon's reader, until the fax is read."""
    reader = TextReader(register.config, register.registry, poll_seconds=0.2)
    reader.start()
    try:
        wait_for(lambda: "text-read" in [e.action for e in register.registry.letter(number).events],  # type: ignore[union-attr]
                 120, "the fax to be read")
    finally:
        reader.stop()


def test_a_fax_whose_number_only_its_header_line_gives_is_found_by_it(register: Register) -> None:
    # No sidecar, no TIFF tags, a file name that says nothing: the number comes from the header
    # line once the text is read, and is in the register entry, found by whoever sees the entry.
    headed = sample("headed", "simplified", 1, header=True)
    number = register.ingest("headed", headed.tiff, filename="scan0001.tif")
    assert register.registry.letter(number).fax_number is None  # type: ignore[union-attr]
    read_fax(register, number)
    letter = register.registry.letter(number)
    assert letter is not None and letter.fax_number == "+86 21 6234 5679"
    entry_only = [principal_with(register, role) for role in ("auditor", "admin")]
    for who in (*entry_only, OPERATOR):
        assert register.find("+86 21 6234 5679", who) == ["headed"], who
    # Letters read before: schema 0025 takes them out of the index, the daemon's start indexes them again.
    entry, content = registered_terms(letter, fax_number="")
    register.registry.index_letters([(letter.id, entry, content)])
    assert register.find("6234 5679", entry_only[0]) == []
    with register.registry.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0024'"))
    assert schema.upgrade(register.registry.engine)
    assert register.find("6234 5679") == [] and reindex_missing(register.registry) == 1
    for who in (*entry_only, OPERATOR):
        assert register.find("6234 5679", who) == ["headed"], who


def test_gateway_letters_search(register: Register) -> None:
    register.gateway.run("users", "add", "sam", "--email", "sales.desk@example.org", "--no-password")
    found = json.loads(register.gateway.run("letters", "search", "投訴", "--json").stdout)
    assert found["matches"] == 1 and found["letters"][0]["number"] == register.numbers["complaint"]
    as_sam = json.loads(register.gateway.run("letters", "search", "wang.fang", "--json", "--as", "sam").stdout)
    assert [(row["number"], row["subject"]) for row in as_sam["letters"]] == [(register.numbers["secret"], "")]
    table = register.gateway.run("letters", "search", "合同").stdout
    assert register.numbers["contract"] in table and "1 letter(s) match '合同'" in table
    # A query with a byte that is not UTF-8 (a terminal set to GBK) is a usage error, not a traceback.
    refused = register.gateway.run("letters", "search", "合同\udcba\udcfc", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "Invalid value for 'QUERY': '合同\\xba\\xfc' is not UTF-8 text" in refused.stderr


def test_index_terms_are_the_folded_text_cut_into_pieces() -> None:
    """The index folds only where folding can change a token; its tokens must stay those of the
    whole text folded and cut, or letters indexed before would no longer be found."""
    import random

    from gateway.registry.search import _run_tokens

    def reference(*texts: str) -> str:
        tokens: list[str] = []
        for text in texts:
            for piece in _PIECES.findall(fold(text)):
                tokens += _run_tokens(piece) if _CJK_RUN.fullmatch(piece) else [piece]
        return " ".join(tokens)

    alphabet = "abcXYZİß投訴诉合同續簽ｱアあ한국1２٣_-. \n\t😀ǅΣσςÉ"
    chooser = random.Random(20)
    for _ in range(5000):
        text = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 40)))
        assert index_terms(text, text[:7]) == reference(text, text[:7]), text
    # Long words of Chinese (sentences between spaces), cut another way: with Latin words, lone
    # characters and punctuation among them, or none.
    chinese, punctuation = "供貨合同續簽关于本季度的供货安排我方已按约定完成备货ｱアあ한국", "，。、：「」！？"
    for _ in range(3000):
        text = "".join(chooser.choice(chooser.choices((chinese, punctuation, alphabet), (94, 5, 1))[0])
                       for _ in range(chooser.randint(20, 200)))
        assert index_terms(text) == reference(text), text
    assert index_terms("供貨合同續簽 İstanbul") == "供货 货合 合同 同续 续签 签 istanbul"
    # Every character there is (lone surrogates too), beside ASCII punctuation and Chinese.
    everything = "".join(map(chr, range(0x110000)))
    for start in range(0, len(everything), 3000):
        text = everything[start:start + 3000] + "a.b,c合同!"
        assert index_terms(text) == reference(text), hex(start)


def test_simplified_maps_every_traditional_character_and_leaves_the_rest() -> None:
    """The shortcut for text without traditional characters gives what the table gives, for every
    character there is, alone and beside traditional, simplified and ASCII text."""
    from gateway.fold import _t2s, simplified

    table = _t2s()
    assert simplified("投訴與合同續簽") == "投诉与合同续签"
    assert simplified("投诉 complaint") == "投诉 complaint"
    everything = "".join(map(chr, range(0x110000)))
    for start in range(0, len(everything), 3000):
        text = everything[start:start + 3000]
        for variant in (text, text + "續", "合同" + text, text.encode("ascii", "ignore").decode()):
            assert simplified(variant) == variant.translate(table), hex(start)
