"""The register's full-text index: its terms for a letter and for a query, and the queries.

Chinese is written without spaces, and neither SQLite FTS5's tokenizers nor PostgreSQL's parsers
cut it into words: `unicode61` keeps a run of Chinese as one token and `trigram` needs three
characters, so 合同 inside 供货合同续签 is never found. Every run of Chinese (and Japanese, Korean)
characters is therefore indexed as overlapping two-character tokens, and its last character as a
token of its own (供货 货合 合同 同续 续签 签); a query's run is looked up as the same tokens in a row
(a phrase), which finds any substring of two characters or more. A single character of a query is
a prefix: it begins a two-character token, or it is the last of a run (国 finds 王建国).
Traditional characters are folded to simplified on both sides (投訴 finds 投诉), Latin text to
lower case, and Latin words match by prefix; a query's Latin letters and digits are looked up in
both widths (ＡＢＣ１ and abc1), as a letter may have either. The tokens are plain words
separated by spaces, which FTS5's `unicode61` and PostgreSQL's `simple` configuration both take
as they are."""
from __future__ import annotations

import operator
import re
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import regex
from sqlalchemy import (Connection, Text, and_, bindparam, case, cast, column, delete, func, insert, literal,
                        literal_column, or_, select, table)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import selectinload

from gateway.addressing import address_forms
from gateway.fold import fold, lower, simplified
from gateway.registry.models import Letter, entry_sender
from gateway.registry.people import ContentScope, LetterFilter, Scope, content_clause, filter_clause, scope_clause
from gateway.registry.store import Store

# Han, kana and hangul: the scripts written without spaces between words.
_CJK_RUN = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+")
_PIECES = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+"
                        r"|[[\p{L}\p{N}]--[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]]+", regex.V1)
# The same pieces as (run of those scripts, other piece), one of the two empty: one pass tells them apart.
_GROUPED_PIECES = regex.compile(r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+)"
                                r"|([[\p{L}\p{N}]--[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]]+)", regex.V1)
MAX_INDEXED_CHARS = 200_000  # of one letter's text: enough for any letter, bounded for a hostile one


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) == 1 else list(map(operator.add, run, run[1:]))


def _run_tokens(run: str) -> list[str]:
    """A run's tokens in the index: its pairs, then its last character alone, which begins no pair."""
    return [run] if len(run) == 1 else [*map(operator.add, run, run[1:]), run[-1]]


# The two pairs with the NUL that joined two runs, the first run's last character kept as its own
# token. Text never holds a NUL here: the byte table below makes it a space.
_ACROSS_RUNS = re.compile(r"\x00 \x00[^ ] ")
_LONG_WORD = 24  # characters: below this, making the tokens one by one costs less
_CODE_POINT = next(code for code in "IL" if array(code).itemsize == 4)  # an unsigned 32-bit array item
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"  # its bytes in the machine's order


def _bigram_text(runs: Sequence[str]) -> str:
    """The tokens of runs of two characters or more (_run_tokens), in order, as one text: every
    pair of neighbouring characters laid out by array slices (one code point in four bytes), not
    string by string. A long sentence of Chinese has hundreds of pairs; this takes a third of the time."""
    chars = array(_CODE_POINT, "\x00".join(runs).encode(_UTF32))
    pairs = array(_CODE_POINT, [32]) * (3 * (len(chars) - 1))  # first, second, space
    pairs[0::3] = chars[:-1]
    pairs[1::3] = chars[1:]
    return _ACROSS_RUNS.sub(" ", pairs.tobytes().decode(_UTF32)) + runs[-1][-1]


# ASCII bytes that are neither letters nor digits, as spaces; every other byte (letters, digits and
# each byte of a non-ASCII character's UTF-8) as it is.
_ASCII_SEPARATORS = bytes(b if chr(b).isalnum() and b < 128 or b >= 128 else 32 for b in range(256))


def index_terms(*texts: str) -> str:
    """The tokens of a letter's searchable text, in order, separated by spaces.

    The same tokens as folding the whole text and cutting it into pieces, only cheaper (every
    letter registered pays it). ASCII punctuation and spaces always separate pieces, so they are
    first turned into spaces by a byte table over the text's UTF-8 (a few nanoseconds a character,
    where a Unicode pattern costs some tens) and the text is split there: a word of ASCII is then a
    piece of its own, and only words with other characters are cut by the pattern. Case is folded
    over the whole text; the script table of fold() maps Han characters to Han characters only, so
    it is applied only to the words that have characters beyond ASCII."""
    tokens: list[str] = []
    budget = MAX_INDEXED_CHARS
    for text in texts:
        if not text or budget <= 0:
            continue
        text = lower(text[:budget])
        budget -= len(text)
        # Only ASCII bytes change, so the result is still UTF-8. surrogatepass: a lone surrogate
        # (from a hostile header) is kept as the pattern would see it. Any whitespace that str.split
        # cuts at beyond ASCII (U+3000, say) is neither letter nor digit: the pattern would cut there too.
        cut = text.encode("utf-8", "surrogatepass").translate(_ASCII_SEPARATORS).decode("utf-8", "surrogatepass")
        if cut.isascii():
            tokens += cut.split()
            continue
        for word in cut.split():
            if word.isascii():
                tokens.append(word)
                continue
            pieces = _GROUPED_PIECES.findall(simplified(word))
            if len(word) >= _LONG_WORD and pieces and all(len(run) > 1 for run, _ in pieces):
                tokens.append(_bigram_text([run for run, _ in pieces]))  # a sentence of Chinese
                continue
            for run, other in pieces:
                if other:
                    tokens.append(other)
                else:
                    tokens += _run_tokens(run)
    return " ".join(tokens)


@dataclass(frozen=True)
class Term:
    """One word of a query: tokens that must follow each other; the last may be a prefix. `other`:
    the same word with its Latin letters, digits and punctuation in the other width (ａｂｃ１ for abc1),
    which finds it as well; empty when it has none."""

    tokens: tuple[str, ...]
    prefix: bool
    other: tuple[str, ...] = ()


# ASCII's letters, digits and punctuation and their full-width forms (U+FF01 to U+FF5E), which a
# Chinese input method types in its full-width mode (全角): a query finds the word in either width.
_HALF_WIDTH = {code + 0xFEE0: code for code in range(0x21, 0x7F)} | {0x3000: 0x20}
_FULL_WIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}


def _word_tokens(word: str) -> tuple[tuple[str, ...], bool] | None:
    pieces = _PIECES.findall(word)
    if not pieces:
        return None
    tokens: list[str] = []
    for piece in pieces[:-1]:
        # A run with more after it ends where the text's run ends, which has its last character's token.
        tokens += _run_tokens(piece) if _CJK_RUN.fullmatch(piece) else [piece]
    # The last may go on in the text: its pairs alone. A lone Chinese character is a prefix: it
    # begins a two-character token (合 finds 合同) or is the token of a run's last (国 finds 王建国).
    last = pieces[-1]
    cjk = _CJK_RUN.fullmatch(last)
    tokens += _bigrams(last) if cjk else [last]
    return tuple(tokens), not cjk or len(last) == 1


def query_terms(query: str) -> list[Term]:
    """The query's words: a Chinese run is a phrase of its two-character tokens, a Latin word or
    number a prefix; words joined by punctuation (an address, a letter number) are one phrase.
    Latin letters and digits are looked up in both widths: the index keeps them as the letter has them."""
    terms = []
    for word in fold(query[:500]).translate(_HALF_WIDTH).split():
        found = _word_tokens(word)
        if found is None:
            continue
        tokens, prefix = found
        other = _word_tokens(word.translate(_FULL_WIDTH))
        terms.append(Term(tokens, prefix, other[0] if other and other[0] != tokens else ()))
    return terms


def entry_terms(*, number: str, sender_name: str = "", sender_address: str = "", fax_number: str | None = None,
                fax_sender: str | None = None) -> str:
    """What anyone who sees a letter's register entry may find it by: its number and sender, as the
    entry shows them (`entry_sender`), the address's domain in Unicode and in A-labels alike."""
    name, address = entry_sender(sender_name, sender_address, fax_sender, fax_number)
    return index_terms(number, name, *address_forms(address))


def content_terms(*, subject: str, body_text: str, attachment_names: Sequence[str] = (),
                  sender_details: Sequence[str] = ()) -> str:
    """What only those who may read a letter's content find it by: subject, text (a fax's read
    text included), attachment names and the sender's details shown with the content, not in the
    register entry everyone sees (a paper letter's organisation, telephone and postal address)."""
    return index_terms(subject, *sender_details, " ".join(attachment_names), body_text)


def letter_terms(*, number: str, sender_name: str, sender_address: str, fax_number: str | None,
                 fax_sender: str | None, subject: str, body_text: str, attachment_names: Sequence[str],
                 sender_details: Sequence[str]) -> tuple[str, str]:
    """(entry terms, content terms) of a letter. A fax that came by mail shows the mail's sender in
    its entry: the fax's own number and sender, shown with its content, are content terms."""
    shown = entry_sender(sender_name, sender_address, fax_sender, fax_number)
    hidden = [value for value in (fax_sender, fax_number) if value and value not in shown]
    return (entry_terms(number=number, sender_name=sender_name, sender_address=sender_address,
                        fax_number=fax_number, fax_sender=fax_sender),
            content_terms(subject=subject, body_text=body_text, attachment_names=attachment_names,
                          sender_details=(*sender_details, *hidden)))


def registered_terms(letter: Letter, body_text: str | None = None, *, fax_number: str | None = None) -> tuple[str, str]:
    """(entry terms, content terms) of a registered letter, with `body_text` for its text and
    `fax_number` for a fax's number if given (what the letter is about to have)."""
    return letter_terms(number=letter.number, sender_name=letter.sender_name, sender_address=letter.sender_address,
                        fax_number=letter.fax_number if fax_number is None else fax_number,
                        fax_sender=letter.fax_sender_name, subject=letter.subject,
                        body_text=letter.body_text if body_text is None else body_text,
                        attachment_names=[a.original_filename or a.filename for a in letter.attachments],
                        sender_details=(letter.sender_organisation, letter.sender_phone,
                                        letter.sender_postal_address, letter.sender_reference))


def _fts5_query(terms: list[Term]) -> str:
    # Tokens are letters and digits only, so quoting them needs no escaping.
    def phrase(tokens: tuple[str, ...], prefix: bool) -> str:
        return f'"{" ".join(tokens)}"' + ("*" if prefix else "")

    # An OR group joins the others only by an explicit AND.
    return " AND ".join(f"({phrase(t.tokens, t.prefix)} OR {phrase(t.other, t.prefix)})" if t.other
                        else phrase(t.tokens, t.prefix) for t in terms)


def _tsquery(terms: list[Term]) -> str:
    def phrase(tokens: tuple[str, ...], prefix: bool) -> str:
        return "(" + " <-> ".join(f"'{token}'" for token in tokens) + (":*" if prefix else "") + ")"

    return " & ".join(f"({phrase(t.tokens, t.prefix)} | {phrase(t.other, t.prefix)})" if t.other
                      else phrase(t.tokens, t.prefix) for t in terms)


_SQLITE_INDEX = table("letter_search", column("rowid"), column("entry"), column("content"))
_PG_INDEX = table("letter_search", column("letter_id"), column("entry"), column("content"), column("tsv"),
                  column("tsv_entry"))
# Built once: every registration batch writes its terms.
_SQLITE_DELETE = delete(_SQLITE_INDEX).where(_SQLITE_INDEX.c.rowid.in_(bindparam("ids", expanding=True)))
_SQLITE_INSERT = insert(_SQLITE_INDEX)
_PG_INSERT = pg_insert(_PG_INDEX)
_PG_UPSERT = _PG_INSERT.on_conflict_do_update(index_elements=["letter_id"],
                                              set_={"entry": _PG_INSERT.excluded.entry,
                                                    "content": _PG_INSERT.excluded.content})


# PostgreSQL refuses a tsvector whose lexemes and positions take more than 1 MiB - 1 bytes (MAXSTRPOS),
# and with it the letter's whole registration: 200,000 characters of Chinese text make some 2 MB.
# A little less, for a token its parser cuts in two.
_TSVECTOR_BYTES = 1_000_000


def fit_tsvector(entry: str, content: str) -> str:
    """`content`, cut short at the token where the tsvector of entry and content together would be
    more than PostgreSQL takes (as it is when it fits: nearly always). Each distinct token costs its
    UTF-8 bytes, an alignment byte, its count of positions and a position; each later occurrence a
    position, up to the 256 kept: an upper bound of what PostgreSQL counts."""
    tokens = entry.count(" ") + content.count(" ") + 2
    if 4 * (len(entry) + len(content)) + 5 * tokens <= _TSVECTOR_BYTES:
        return content
    seen: dict[str, int] = {}
    size = 0
    head, words = entry.split(" "), content.split(" ")
    for position, token in enumerate([*head, *words]):
        count = seen.get(token, 0)
        if count == 0:
            size += len(token.encode("utf-8", "surrogatepass")) + 5
        elif count < 256:
            size += 2
        seen[token] = count + 1
        if size > _TSVECTOR_BYTES:
            return " ".join(words[:max(0, position - len(head))])
    return content


class SearchRecords(Store):
    """The full-text index: one row per letter with the terms of its register entry and of its
    content (an FTS5 table on SQLite, tsvectors with GIN indexes on PostgreSQL), written in the
    transaction that changes what the letter is found by."""

    def write_terms(self, conn: Connection, rows: Sequence[tuple[int, str, str]]) -> None:
        """(letter id, entry terms, content terms) for each letter."""
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            conn.execute(_PG_UPSERT, [{"letter_id": i, "entry": e, "content": fit_tsvector(e, c)} for i, e, c in rows])
            return
        # An FTS5 table has no upsert: the old row goes first.
        conn.execute(_SQLITE_DELETE, {"ids": [i for i, _, _ in rows]})
        conn.execute(_SQLITE_INSERT, [{"rowid": i, "entry": e, "content": c} for i, e, c in rows])

    def unindexed(self, limit: int) -> list[Letter]:
        """Letters not in the index yet (registered before it existed), with their attachments."""
        with self.session() as session:
            index = _PG_INDEX.c.letter_id if self.engine.dialect.name == "postgresql" else _SQLITE_INDEX.c.rowid
            missing = select(Letter).where(Letter.id.not_in(select(index))).order_by(Letter.id).limit(limit) \
                .options(selectinload(Letter.attachments))
            return list(session.scalars(missing))

    def index_letters(self, rows: Sequence[tuple[int, str, str]]) -> None:
        with self.write() as conn:
            self.write_terms(conn, rows)

    def search_page(self, scope: Scope, content: ContentScope, letter_filter: LetterFilter, terms: list[Term], *,
                    offset: int, limit: int) -> tuple[list[Letter], int]:
        """The letters within a scope that hold every term, best match first (then newest): a page
        and the number of all matches. A letter whose content is outside `content` counts only if
        its register entry alone holds the terms, so a search never tells what such a letter says."""
        if not terms:
            return [], 0
        if self.engine.dialect.name == "postgresql":
            # 'simple' as a bare literal, so PostgreSQL reads it as the regconfig it is.
            query = func.to_tsquery(literal_column("'simple'"), cast(literal(_tsquery(terms)), Text))
            hits = (select(_PG_INDEX.c.letter_id.label("letter_id"),
                           (-func.ts_rank_cd(_PG_INDEX.c.tsv, query)).label("rank"),
                           (-func.ts_rank_cd(_PG_INDEX.c.tsv_entry, query)).label("entry_rank"))
                    .where(_PG_INDEX.c.tsv.op("@@")(query)).subquery())
            in_entry = select(_PG_INDEX.c.letter_id).where(_PG_INDEX.c.tsv_entry.op("@@")(query))
        else:
            match = _fts5_query(terms)
            # bm25() is lower for better matches; weighted 1 and 0, it ranks by the entry alone.
            hits = (select(_SQLITE_INDEX.c.rowid.label("letter_id"),
                           literal_column("bm25(letter_search)").label("rank"),
                           literal_column("bm25(letter_search, 1.0, 0.0)").label("entry_rank"))
                    .where(literal_column("letter_search").op("MATCH")(literal(match))).subquery())
            in_entry = select(_SQLITE_INDEX.c.rowid).where(
                literal_column("letter_search").op("MATCH")(literal(f"entry : ({match})")))
        readable = content_clause(content)
        where = and_(scope_clause(scope), filter_clause(letter_filter), or_(readable, Letter.id.in_(in_entry)))
        # Nor does the order: a letter whose content is not the person's ranks by its entry alone.
        rank = case((readable, hits.c.rank), else_=hits.c.entry_rank)
        order = (rank, Letter.received_at.desc(), Letter.id.desc())
        matches = select(Letter.id).join(hits, hits.c.letter_id == Letter.id).where(where)
        # The page and the number of all matches in one query, the full-text match made once; the
        # count and the order over the letters' ids alone, their rows read for the page only.
        page = (matches.add_columns(func.count().over().label("total"),
                                    func.row_number().over(order_by=order).label("position"))
                .order_by(*order).offset(offset).limit(limit).subquery())
        with self.session() as session:
            found = session.execute(select(Letter, page.c.total).join(page, page.c.id == Letter.id)
                                    .order_by(page.c.position)).all()
            if found:
                return [row[0] for row in found], int(found[0][1])
            if offset == 0:
                return [], 0
            # A page past the last: only the count can say how many there are.
            return [], int(session.scalar(select(func.count()).select_from(matches.subquery())) or 0)
