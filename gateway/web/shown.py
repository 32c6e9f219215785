"""What the pages show of the register's own words: people by name, an event's details under
labels in the page's language, the classifier's trace translated, file sizes in the page's units.

Nothing here decides anything: it only words what the services recorded. A value no table knows is
shown as it is, never dropped.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from gateway.services.paper import paper_subject
from gateway.stages.fax.metadata import fax_subject
from gateway.web import i18n
from gateway.web.i18n import N_, _

# Who did something, when it was not a person.
SYSTEM_ACTOR = {"gateway": N_("System"), "file": N_("File import"), "smtp": N_("SMTP listener"),
                "imap": N_("IMAP mailbox"), "fax-drop": N_("Fax folder"), "web": N_("Web register"),
                "sender": N_("Sender")}
# How someone signed in.
METHOD = {"password": N_("password"), "oidc": N_("single sign-on")}
# How a rating came, or a reply went.
VIA = {"web": N_("web page"), "mail": N_("e-mail"), "post": N_("post")}

# An event's or audit row's detail keys, worded. Keys not listed are shown as they are.
DETAIL = {
    "to": N_("sent to"), "from": N_("from"), "notify": N_("notified"), "language": N_("language"),
    "size": N_("size"), "number": N_("number"), "defects": N_("defects found"), "attachments": N_("attachments"),
    "archive_number": N_("archive number"), "urgency": N_("urgency"), "category": N_("category"),
    "confidentiality": N_("confidentiality"), "tags": N_("tags"), "tag": N_("tag"), "owner": N_("assigned to"),
    "matched": N_("rules matched"), "deadline": N_("deadline"), "queue": N_("queue"), "matches": N_("matches"),
    "roles": N_("roles"), "name": N_("name"), "emails": N_("e-mail addresses"), "departments": N_("departments"),
    "department": N_("department"), "method": N_("method"), "reason": N_("reason"), "error": N_("error"),
    "round": N_("round"), "request_to": N_("request sent to"), "remaining_days": N_("working days left"),
    "paused_deadline": N_("paused deadline"), "next": N_("next step"), "missing": N_("missing"),
    "created": N_("new draft"), "characters": N_("characters"), "chain": N_("approval chain"),
    "by": N_("needed by"), "text": N_("text"), "readers": N_("readers"),
    "first_deadline": N_("first reader's deadline"),
    "next_reader": N_("next reader"), "next_deadline": N_("next reader's deadline"),
    "candidates": N_("likely departments"), "result": N_("result"),
    "note": N_("note"), "comment": N_("comment"), "instruction": N_("instruction"), "late": N_("late"),
    "until": N_("until"), "days": N_("days"), "borrower": N_("borrower"), "assignee": N_("assigned to"),
    "status": N_("status"), "channel": N_("channel"), "kind": N_("kind"), "count": N_("count"),
    "rows": N_("rows"), "format": N_("format"), "period": N_("period"), "report": N_("report"),
    "pages": N_("pages"), "filename": N_("file name"), "recipient": N_("recipient"), "reader": N_("reader"),
    "score": N_("score"), "trust": N_("trust"), "on": N_("on"), "step": N_("step"), "role": N_("role"),
    "approver": N_("approver"), "reassign": N_("reassign"), "attempts": N_("attempts"),
    "replies": N_("replies"), "circulations": N_("circulations"), "reference": N_("sender's reference"),
    "before": N_("before"), "query": N_("query"),
    "letters": N_("letters"), "outcome": N_("outcome"), "summary": N_("summary"), "rule": N_("rule"),
    "signed_by": N_("signed by"), "requested_by": N_("requested by"), "resumed": N_("resumed"),
    "refused": N_("refused"), "contact": N_("contact"), "target": N_("target"), "via": N_("via"),
    "approved_by": N_("approved by"), "packages": N_("archive packages"), "complete": N_("chain complete"),
    "waiting_since": N_("waiting since"), "replaced_deadline": N_("deadline before"),
    "not_reopened": N_("not reopened"),
    # An answer by mail.
    "authenticated": N_("sender proven as"), "authenticated_by": N_("proven by"), "command": N_("command"),
    "argument": N_("argument"), "obeyed": N_("obeyed"), "automatic": N_("automatic reply"),
    "temperror": N_("DNS lookup failed"), "received_at": N_("received at"),
    "refusal_notice": N_("refusal sent to"), "notice_suppressed": N_("refusal not sent again to"),
}
STATE_CHANGE = {"from": N_("status before"), "to": N_("status after")}
OWNER_CHANGE = {"from": N_("assigned before to"), "to": N_("now assigned to")}
# Kept for the record, of interest to the operator: shown folded away under "Technical details".
TECHNICAL = frozenset({
    "keys", "key", "package", "rules", "rules_then", "rules_now", "message_id", "sha", "sha256", "shas", "raw_path",
    "draft", "outbox", "request", "circulation", "borrowing", "reply", "reply_id", "source_key", "uid",
    "uidvalidity", "item_id", "path", "envelope", "seq", "rowid", "instance", "pid", "host", "selector",
    "authserv_id", "line", "rule", "version", "series", "header", "slot", "record", "feedback", "raw_sha256",
})
# Keys whose values are a register code, shown through the label tables.
CODED = {"status": "status", "category": "category", "urgency": "urgency", "confidentiality": "confidentiality",
         "channel": "channel", "queue": "queue"}
PEOPLE = frozenset({"owner", "notify", "assignee", "borrower", "reader", "signed_by", "requested_by", "approver",
                    "approved_by"})
DEPARTMENTS = frozenset({"department", "departments", "candidates", "to_department", "from_department"})
# A circulation's readers: `person:LOGIN` or `department:ID` (its head signs for it).
READERS = frozenset({"readers", "reader", "next_reader"})
LANGUAGE = {"zh": "中文", "en": "English"}
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


class Names:
    """People's display names by sign-in name (or by one of their addresses: a letter's owner is
    an address), read once per page when first asked. `load` gives (login, name, addresses)."""

    def __init__(self, load: Callable[[], Iterable[tuple[str, str, Iterable[str]]]]):
        self._load = load
        self._names: dict[str, str] | None = None
        self._logins: dict[str, str] = {}

    def login(self, value: str) -> str:
        """The sign-in name of a sign-in name or of a person's address; else the value as it is."""
        self.name(value)
        return self._logins.get(value.lower(), value)

    def name(self, login: str | None) -> str | None:
        if self._names is None:
            self._names = {}
            for person, name, addresses in self._load():
                self._names[person] = name
                for address in addresses:
                    self._logins.setdefault(address.lower(), person)
        return self._names.get(self._logins.get((login or "").lower(), login or ""))

    def plain(self, login: str | None) -> str:
        """A person (or the system) in words, for a sentence: the name, else the sign-in name."""
        if not login:
            return "—"
        # A person first: a login may be spelt as one of the gateway's own names ("web").
        name = self.name(login)
        if name:
            return name
        known = SYSTEM_ACTOR.get(login)
        return _(known) if known else login

    def __call__(self, login: str | None) -> Markup:
        """A person as a page shows them: the name, then the sign-in name small and grey."""
        if not login:
            return Markup("—")
        if login.startswith("person:"):
            return self(login.partition(":")[2])
        name = self.name(login)
        known = SYSTEM_ACTOR.get(login)
        if known and not name:  # a person first: a login may be spelt as one of the gateway's names
            return Markup('<span title="{1}">{0}</span>').format(_(known), login)
        if name and name != login:
            person = self.login(login)
            title = Markup(' title="{0}"').format(login) if person != login else ""
            return Markup('{0} <span class="muted small login"{2}>{1}</span>').format(name, person, title)
        return Markup("{0}").format(login)


@dataclass(frozen=True)
class Detail:
    key: str
    label: str
    value: Markup


@dataclass
class Details:
    shown: list[Detail]
    technical: list[Detail]


def _text(value: Any) -> str:
    from gateway.web.app import show

    return show(value)


class Describer:
    """An event's details worded for one page: labels, local times, codes and names."""

    def __init__(self, when: Callable[[datetime | None], str], names: Names, departments: Mapping[str, Any]):
        self.when, self.names, self.departments = when, names, departments

    def department(self, value: str) -> str:
        known = self.departments.get(value)
        return known.name if known is not None else value

    def value(self, key: str, value: Any) -> Markup:
        if value is None or value == "" or value == []:
            return Markup("—")
        if isinstance(value, (list, tuple)):
            return Markup(", ").join(self.value(key, v) for v in value)
        if isinstance(value, bool):
            return Markup(escape(_("yes") if value else _("no")))
        if isinstance(value, str):
            if ISO_TIME.match(value):
                try:
                    return Markup(escape(self.when(datetime.fromisoformat(value))))
                except ValueError:
                    pass
            if key in CODED:
                return Markup(escape(i18n.label(CODED[key], value)))
            if key in DEPARTMENTS:
                return Markup(escape(self.department(value)))
            if key in READERS and value.startswith("department:"):
                return Markup(escape(self.department(value.partition(":")[2])))
            if key in PEOPLE or (key in READERS and value.startswith("person:")):
                return self.names(value)
            if key == "chain" or key == "next" or key == "role":
                return Markup(escape(_reply_role(value)))
            if key == "reason":
                from gateway.web.routes.work import TRIAGE_REASON

                if value in TRIAGE_REASON:
                    return Markup(escape(_(TRIAGE_REASON[value])))
            if key == "roles":
                return Markup(escape(i18n.label("role", value)))
            if key == "method" and value in METHOD:
                return Markup(escape(_(METHOD[value])))
            if key == "via" and value in VIA:
                return Markup(escape(_(VIA[value])))
            if key == "language":
                return Markup(escape(LANGUAGE.get(value, value)))
            if key == "size" and value.isdigit():
                return Markup(escape(filesize(int(value))))
            if key in SENTENCE_KEYS:
                return Markup(escape(sentence(value)))
            if key == "kind" and value in i18n.MAIL_KIND:
                return Markup(escape(i18n.label("mail_kind", value)))
            if key == "kind" and value in i18n.STATUS:
                return Markup(escape(i18n.label("status", value)))
        if key == "size" and isinstance(value, int):
            return Markup(escape(filesize(value)))
        return Markup(escape(_text(value)))

    def __call__(self, details: Mapping[str, Any] | None, action: str = "") -> Details:
        out = Details([], [])
        for key, value in (details or {}).items():
            label = _(DETAIL[key]) if key in DETAIL else key
            shown = self.value(key, value)
            if key in ("from", "to") and action == "assigned":
                label, shown = _(OWNER_CHANGE[key]), self.names(value) if value else Markup("—")
            elif key in ("from", "to") and isinstance(value, str) and value in i18n.STATUS:
                label, shown = _(STATE_CHANGE[key]), Markup(escape(i18n.label("status", value)))
            (out.technical if key in TECHNICAL else out.shown).append(Detail(key, label, shown))
        return out


def _reply_role(value: str) -> str:
    from gateway.web.routes.replies import reply_label

    return reply_label("role", value)


# -- the pipeline's and services' own sentences ---------------------------------------------------
# A letter's defects, a flag with its detail, why no receipt went, why mail was undeliverable: the
# pipeline and the services write them in English for the log; a page words those it knows in its
# language. A pattern's group named "rest" (or "rest_...") is itself such a sentence; a sentence no
# pattern knows is shown as written.
SENTENCE_KEYS = frozenset({"reason", "error", "defects", "last_error"})
FAX_FIELD = {"number": N_("fax number"), "caller id": N_("caller ID"), "sender name": N_("sender's name"),
             "received": N_("time sent"), "pages": N_("number of pages")}
# email.errors' defects, named from their class as gateway/stages/normalise/message.py does.
MIME_DEFECT = {
    "close boundary not found": N_("closing MIME boundary not found"),
    "start boundary not found": N_("opening MIME boundary not found"),
    "first header line is continuation": N_("the first header line is a continuation line"),
    "header missing required value": N_("a header field lacks its required value"),
    "header": N_("damaged header field"),
    "invalid base64 characters": N_("characters that are not base64"),
    "invalid base64 length": N_("base64 of an impossible length"),
    "invalid base64 padding": N_("damaged base64 padding"),
    "invalid date": N_("invalid date"),
    "invalid header": N_("invalid header field"),
    "invalid multipart content transfer encoding": N_("a multipart part with an invalid Content-Transfer-Encoding"),
    "malformed header": N_("malformed header field"),
    "message": N_("damaged message"),
    "misplaced envelope header": N_("an envelope header line (From ) in the wrong place"),
    "missing header body separator": N_("no blank line between the headers and the body"),
    "multipart invariant violation": N_("a multipart part that contradicts itself"),
    "no boundary in multipart": N_("a multipart part without a boundary"),
    "non asciilocal part": N_("an address whose local part is not ASCII"),
    "non printable": N_("characters that cannot be printed"),
    "obsolete header": N_("a header field in an obsolete form"),
    "undecodable bytes": N_("bytes that cannot be decoded"),
}
SENTENCES: list[tuple[re.Pattern[str], str]] = [
    # Where a defect was found, then the defect.
    (re.compile(r"^fax: (?P<rest>.+)$", re.S), N_("fax: %(rest)s")),
    (re.compile(r"^page (?P<page>\d+): (?P<rest>.+)$", re.S), N_("page %(page)s: %(rest)s")),
    (re.compile(r"^message: (?P<rest>.+)$", re.S), N_("message: %(rest)s")),
    (re.compile(r"^part (?P<part>[\d.]+): (?P<rest>.+)$", re.S), N_("part %(part)s: %(rest)s")),
    (re.compile(r"^part (?P<part>[\d.]+) file name: (?P<rest>.+)$", re.S), N_("part %(part)s, file name: %(rest)s")),
    (re.compile(r"^message file name: (?P<rest>.+)$", re.S), N_("message, file name: %(rest)s")),
    (re.compile(r"^header (?P<header>[^\s:]+): (?P<rest>.+)$", re.S), N_("header %(header)s: %(rest)s")),
    (re.compile(r"^headers: (?P<rest>.+)$", re.S), N_("headers: %(rest)s")),
    (re.compile(r"^body: (?P<rest>.+)$", re.S), N_("body: %(rest)s")),
    (re.compile(r"^encoded word (?P<word>'.*?'|\".*?\"): (?P<rest>.+)$", re.S), N_("encoded word %(word)s: %(rest)s")),
    (re.compile(r"^raw (?P<rest>.+)$", re.S), N_("raw bytes: %(rest)s")),
    (re.compile(r"^TNEF attachment name: (?P<rest>.+)$", re.S), N_("TNEF attachment name: %(rest)s")),
    (re.compile(r"^TNEF body: (?P<rest>.+)$", re.S), N_("TNEF body: %(rest)s")),
    (re.compile(r"^TNEF HTML body: (?P<rest>.+)$", re.S), N_("TNEF HTML body: %(rest)s")),
    # What reading a message found (gateway/stages/normalise). Text that did not decode as labelled:
    # what was wrong, then what it was read as (and whose charset that is).
    (re.compile(r"^(?P<rest>(?:8-bit|unknown charset|charset|text is not valid) .+?), decoded as (?P<used>[^\s,]+), "
                r"the charset (?P<rest_source>.+)$", re.S), N_("%(rest)s, read as %(used)s (%(rest_source)s)")),
    (re.compile(r"^(?P<rest>(?:8-bit|unknown charset|charset|text is not valid) .+?), decoded as (?P<used>[^\s,]+)$",
                re.S), N_("%(rest)s, read as %(used)s")),
    (re.compile(r"^(?P<rest>(?:8-bit|charset) .+?), decoded as big5 \(its characters common in Big5, rare in GBK\)$",
                re.S),
     N_("%(rest)s, read as Big5 (its characters are common in Big5 and rare in GBK)")),
    (re.compile(r"^(?P<rest>charset .+ declared, byte-order mark says \S+), (?P<rest_also>invalid bytes for \S+, "
                r"replaced)$", re.S), N_("%(rest)s; %(rest_also)s")),
    (re.compile(r"^(?P<rest>[^;]+); (?P<rest_also>truncated base64)$"), N_("%(rest)s; %(rest_also)s")),
    (re.compile(r"^8-bit text without charset is not valid utf-8$"),
     N_("8-bit text declaring no character set is not valid UTF-8")),
    (re.compile(r"^unknown charset (?P<charset>.+)$", re.S), N_("unknown character set %(charset)s")),
    (re.compile(r"^charset (?P<charset>.+) declared, byte-order mark says (?P<bom>\S+)$", re.S),
     N_("character set %(charset)s declared, the byte-order mark says %(bom)s")),
    (re.compile(r"^charset (?P<charset>.+) declared$", re.S), N_("character set %(charset)s declared")),
    (re.compile(r"^text is not valid (?P<charset>.+)$", re.S), N_("the text is not valid %(charset)s")),
    (re.compile(r"^invalid bytes for (?:charset )?(?P<charset>.+), replaced$", re.S),
     N_("bytes not valid in character set %(charset)s, replaced")),
    (re.compile(r"^(?P<count>\d+) character\(s\) of (?P<charset>.+) not in GB 2312 or CNS 11643, replaced$", re.S),
     N_("%(count)s characters of %(charset)s not in GB 2312 or CNS 11643, replaced")),
    (re.compile(r"^(?P<count>\d+) character\(s\) of (?P<charset>.+) not in CNS 11643, replaced$", re.S),
     N_("%(count)s characters of %(charset)s not in CNS 11643, replaced")),
    (re.compile(r"^(?P<count>\d+) character\(s\) of (?P<charset>.+) replaced: this system's C library has no "
                r"EUC-TW converter \(the original keeps them\)$", re.S),
     N_("%(count)s characters of %(charset)s replaced: this system's C library has no EUC-TW converter (the "
        "original keeps them)")),
    (re.compile(r"^declared in the message$"), N_("the character set declared in the message")),
    (re.compile(r"^of part (?P<part>[\d.]+)$"), N_("the character set of part %(part)s")),
    (re.compile(r"^of message$"), N_("the character set of the message")),
    (re.compile(r"^invalid quoted printable \((?P<count>\d+) \"=\" starting no escape, kept as written; the first: "
                r"(?P<first>.*)\)$", re.S),
     N_("damaged quoted-printable encoding: %(count)s “=” starting no escape, kept as written (the first: %(first)s)")),
    (re.compile(r"^not base64 \(8-bit bytes under Content-Transfer-Encoding base64, content taken as is\)$"),
     N_("not base64: 8-bit bytes under Content-Transfer-Encoding base64, the content taken as it is")),
    (re.compile(r"^not uuencoded \(Content-Transfer-Encoding uuencode, but no uuencoded file could be read from "
                r"it: content taken as is\)$"),
     N_("not uuencoded: Content-Transfer-Encoding uuencode, but no uuencoded file could be read from it; the "
        "content taken as it is")),
    (re.compile(r"^not base64 \(a message under Content-Transfer-Encoding base64, its first line a header field: "
                r"content taken as is\)$"),
     N_("not base64: a message under Content-Transfer-Encoding base64 (its first line is a header field), the "
        "content taken as it is")),
    (re.compile(r"^not base64 \(text under Content-Transfer-Encoding base64, (?P<count>\d+) of its (?P<lines>\d+) "
                r"line\(s\) no base64 \(the first: (?P<first>.*)\), content taken as is\)$", re.S),
     N_("not base64: text under Content-Transfer-Encoding base64, %(count)s of its %(lines)s lines not base64 "
        "(the first: %(first)s), the content taken as it is")),
    # The mail parser's own findings (email.errors), as gateway/stages/normalise/message.py words them.
    (re.compile(rf"^(?P<kind>{'|'.join(map(re.escape, MIME_DEFECT))})$"), N_("%(kind)s")),
    (re.compile(rf"^(?P<kind>{'|'.join(map(re.escape, MIME_DEFECT))}) \((?P<detail>.*)\)$", re.S),
     N_("%(kind)s (%(detail)s)")),
    (re.compile(r"^missing From header$"), N_("no From header")),
    (re.compile(r"^missing Date header$"), N_("no Date header")),
    (re.compile(r"^MIME structure nested too deeply to parse; headers only$"),
     N_("MIME structure nested too deeply to parse; only the headers were read")),
    (re.compile(r"^could not be parsed \((?P<error>.*)\)$", re.S), N_("could not be parsed (%(error)s)")),
    (re.compile(r"^could not be read \((?P<error>.*)\)$", re.S), N_("could not be read (%(error)s)")),
    (re.compile(r"^MIME parts nested more than (?P<depth>\d+) deep; the part found there and everything after it "
                r"were not examined \(they are in the original\)$"),
     N_("MIME parts nested more than %(depth)s deep; the part found there and everything after it were not "
        "examined (they are in the original)")),
    (re.compile(r"^direction control character\(s\) (?P<chars>.+) removed$", re.S),
     N_("direction control characters %(chars)s removed (they would reorder the text)")),
    (re.compile(r"^empty$"), N_("empty")),
    (re.compile(r"^no header fields$"), N_("no header fields")),
    (re.compile(r"^byte-order mark before the header, skipped$"), N_("a byte-order mark before the header, skipped")),
    (re.compile(r"^blank line\(s\) before the header, skipped$"), N_("blank lines before the header, skipped")),
    (re.compile(r"^more than (?P<count>\d+) MIME parts; the first (?P=count) were examined, the rest only kept in "
                r"the original$"),
     N_("more than %(count)s MIME parts; the first %(count)s were examined, the rest are only in the original")),
    (re.compile(r"^(?P<count>\d+) (?P<header>\S+) header fields; the first was read \(also: (?P<others>.*)\)$", re.S),
     N_("%(count)s %(header)s header fields; the first was read (the others: %(others)s)")),
    (re.compile(r"^(?P<count>\d+) addresses; the first is the sender \(also: (?P<others>.*)\)$", re.S),
     N_("%(count)s addresses; the first is the sender (the others: %(others)s)")),
    (re.compile(r"^HTML could not be rendered \((?P<error>.*)\), tags stripped$", re.S),
     N_("the HTML could not be rendered (%(error)s); its tags were removed")),
    (re.compile(r"^nested more than (?P<depth>\d+) deep, not examined$"),
     N_("nested more than %(depth)s deep, not examined")),
    (re.compile(r"^(?P<count>\d+) header field\(s\) beyond the first (?P<limit>\d+) not read$"),
     N_("%(count)s header fields beyond the first %(limit)s not read")),
    (re.compile(r"^(?P<count>\d+) header field\(s\) longer than (?P<limit>\d+) bytes cut short$"),
     N_("%(count)s header fields longer than %(limit)s bytes cut short")),
    (re.compile(r"^unknown Content-Transfer-Encoding (?P<encoding>.*), content taken as is$", re.S),
     N_("unknown Content-Transfer-Encoding %(encoding)s, the content taken as it is")),
    (re.compile(r"^(?P<name>[\w-]+)=(?P<plain>.*) and (?P=name)\*=(?P<text>.*) differ, (?P=name)\* used$", re.S),
     N_("%(name)s=%(plain)s and %(name)s*=%(text)s differ; %(name)s* used")),
    (re.compile(r"^(?P<name>[\w-]+)\* continuation\(s\) (?P<numbers>[\d, -]+) missing, the others joined$"),
     N_("%(name)s*: continuation %(numbers)s missing, the others joined")),
    (re.compile(r"^attached message nested too deeply to re-serialise$"),
     N_("attached message nested too deeply to be written out again")),
    (re.compile(r"^attached message cut short at the nesting limit \(whole in the original\)$"),
     N_("attached message cut short at the nesting limit (whole in the original)")),
    (re.compile(r"^(?P<count>\d+) character\(s\) that are not base64 dropped$"),
     N_("%(count)s characters that are not base64 dropped")),
    (re.compile(r"^truncated base64$"), N_("base64 cut short")),
    (re.compile(r"^8-bit text inside, kept as it is$"), N_("8-bit text inside, kept as it is")),
    (re.compile(r"^TNEF could not be decoded \((?P<error>.*)\), kept as is$", re.S),
     N_("TNEF could not be decoded (%(error)s), kept as it is")),
    (re.compile(r"^more than (?P<count>\d+) attachments; the rest are not listed \(they are in the original\)$"),
     N_("more than %(count)s attachments; the rest are not listed (they are in the original)")),
    (re.compile(r"^content type could not be detected \((?P<error>.*)\)$", re.S),
     N_("the content type could not be detected (%(error)s)")),
    (re.compile(r"^(?P<count>\d+) TNEF attribute\(s\) with a bad checksum$"),
     N_("%(count)s TNEF attributes with a bad checksum")),
    (re.compile(r"^TNEF stream cut short inside an attribute; the winmail.dat is listed as it came$"),
     N_("the TNEF stream is cut short inside an attribute; the winmail.dat is listed as it came")),
    (re.compile(r"^TNEF MAPI property list with impossible counts skipped$"),
     N_("TNEF MAPI property list with impossible counts skipped")),
    (re.compile(r"^TNEF body is compressed RTF only; its text was not extracted$"),
     N_("the TNEF body is compressed RTF only; its text was not extracted")),
    (re.compile(r"^unparseable address in (?P<value>.*)$", re.S), N_("address not understood: %(value)s")),
    (re.compile(r"^address hidden in encoded text (?P<value>.*)$", re.S),
     N_("address hidden in encoded text: %(value)s")),
    (re.compile(r"^unparseable date (?P<value>.*)$", re.S), N_("date not understood: %(value)s")),
    (re.compile(r"^the year (?P<year>\d+) is not a year of this correspondence in (?P<value>.*)$", re.S),
     N_("the year %(year)s is not a year of this correspondence, in %(value)s")),
    (re.compile(r"^a date beyond the calendar in UTC (?P<value>.*)$", re.S),
     N_("a date beyond the calendar in UTC: %(value)s")),
    (re.compile(r"^no time zone in (?P<value>.*), assumed UTC$", re.S), N_("no time zone in %(value)s, UTC assumed")),
    # A fax's facts and pages (gateway/stages/build.py, gateway/services/intake.py).
    (re.compile(r"^(?P<field>number|caller id|sender name|received|pages) unknown$"), N_("%(field)s unknown")),
    (re.compile(r"^information file (?P<name>.+?) not read: its name fits another fax as well \((?P<other>.*)\); "
                r"named (?P<fax>.+)\.info it is read$", re.S),
     N_("information file %(name)s not read: its name fits another fax as well (%(other)s); it is read when "
        "named %(fax)s.info")),
    (re.compile(r"^(?P<declared>\d+) page\(s\) announced, (?P<pages>\d+) received$"),
     N_("%(declared)s pages announced, %(pages)s received")),
    (re.compile(r"^the fax mail carries no TIFF or PDF document$"), N_("the fax mail carries no TIFF or PDF document")),
    (re.compile(r"^sidecar (?P<name>.+) cannot be read$", re.S), N_("information file %(name)s cannot be read")),
    (re.compile(r"^(?P<rest_source>.+?): page count (?P<value>.*) is not a number$", re.S),
     N_("%(rest_source)s: the page count %(value)s is not a number")),
    (re.compile(r"^(?P<rest_source>.+?): time (?P<value>.*) not understood$", re.S),
     N_("%(rest_source)s: time %(value)s not understood")),
    (re.compile(r"^file name (?P<name>.*) does not match the configured pattern$", re.S),
     N_("file name %(name)s does not match the configured pattern")),
    (re.compile(r"^file name: time (?P<value>.*) does not match (?P<format>.*)$", re.S),
     N_("file name: time %(value)s does not match %(format)s")),
    (re.compile(r"^text not read: (?P<detail>.*)$", re.S), N_("text not read: %(detail)s")),
    # Reading a fax's text (gateway/stages/fax/ocr.py).
    (re.compile(r"^OCR skipped: the time limit of (?P<seconds>\S+) s was reached$"),
     N_("text not read: the time limit of %(seconds)s s was reached")),
    (re.compile(r"^OCR failed: (?P<detail>.*)$", re.S), N_("text could not be read: %(detail)s")),
    (re.compile(r"^unreadable: (?P<detail>.*)$", re.S), N_("page unreadable: %(detail)s")),
    (re.compile(r"^document unreadable: (?P<detail>.*)$", re.S), N_("document unreadable: %(detail)s")),
    (re.compile(r"^OCR not run: unknown reader (?P<reader>.*)$", re.S),
     N_("text not read (configuration): unknown reader %(reader)s")),
    (re.compile(r"^OCR not run: invalid language list (?P<languages>.*)$", re.S),
     N_("text not read (configuration): invalid language list %(languages)s")),
    (re.compile(r"^OCR not run: (?P<detail>.*)$", re.S), N_("text not read (configuration): %(detail)s")),
    (re.compile(r"^OCR language data not installed: (?P<languages>[^ ]+(?:, [^ ]+)*)(?P<detail> .*)?$", re.S),
     N_("language data for reading text not installed: %(languages)s")),
    # A flag with its detail (gateway/stages/check.py).
    (re.compile(r"^repeated-header: (?P<fields>.+)$"), N_("header fields given twice: %(fields)s")),
    # Why no receipt went (gateway/registry/intake.py, gateway/stages/route.py, autoreply.py).
    (re.compile(r"^(?P<sent>\d+) receipt\(s\) to this sender in 24 hours \(cap (?P<cap>\d+)\)$"),
     N_("%(sent)s receipts to this sender in 24 hours (at most %(cap)s)")),
    (re.compile(r"^(?P<sent>\d+) receipt\(s\) to (?P<domain>\S+) in the last hour \(cap (?P<cap>\d+), .*\)$"),
     N_("%(sent)s receipts to %(domain)s in the last hour (at most %(cap)s)")),
    (re.compile(r"^(?P<sent>\d+) receipt\(s\) in the last hour \(cap (?P<cap>\d+), .*\)$"),
     N_("%(sent)s receipts in the last hour (at most %(cap)s)")),
    (re.compile(r"^receipts are switched off$"), N_("receipts are switched off")),
    (re.compile(r"^backlog import$"), N_("backlog import")),
    (re.compile(r"^a fax: no address to answer$"), N_("a fax: no address to answer")),
    (re.compile(r"^internal sender$"), N_("internal sender")),
    (re.compile(r"^our own address$"), N_("our own address")),
    (re.compile(r"^an answer to our own mail \(In-Reply-To/References\)$"),
     N_("an answer to our own mail (In-Reply-To/References)")),
    (re.compile(r"^mailing list \((?P<header>.*)\)$"), N_("mailing list (%(header)s)")),
    (re.compile(r"^(?P<header>Auto-Submitted|Precedence|X-Auto-Response-Suppress): (?P<value>.*)$"),
     N_("automatic mail (%(header)s: %(value)s)")),
    (re.compile(r"^our own loop header \(X-Gateway-Loop\)$"), N_("our own loop header (X-Gateway-Loop)")),
    (re.compile(r"^no sender address$"), N_("no sender address")),
    (re.compile(r"^sender (?P<sender>\S+) is a robot address$"), N_("sender %(sender)s is a robot address")),
    (re.compile(r"^sender address (?P<sender>.*) is not one we can write to safely$", re.S),
     N_("sender address %(sender)s is not one we can write to safely")),
    # Why mail was undeliverable (gateway/outbound/sender.py).
    (re.compile(r"^relay (?P<relay>\S+) does not offer SMTPUTF8 \(RFC 6531\), without which no mail reaches "
                r"(?P<recipient>\S+): its local part is not ASCII$"),
     N_("relay %(relay)s does not offer SMTPUTF8 (RFC 6531), without which no mail reaches %(recipient)s: its "
        "local part is not ASCII")),
    (re.compile(r"^claimed (?P<count>\d+) times and never finished \(the node sending it stopped each time\)$"),
     N_("claimed %(count)s times and never finished (the node sending it stopped each time)")),
    (re.compile(r"^not delivered within (?P<hours>\S+) hours: (?P<detail>.*)$", re.S),
     N_("not delivered within %(hours)s hours: %(detail)s")),
    (re.compile(r"^cannot be written: (?P<detail>.*)$", re.S), N_("cannot be written: %(detail)s")),
    # Where a fax's fact was read (the source of a fax's problem above); last: they are short.
    (re.compile(r"^sidecar (?P<name>.+)$", re.S), N_("information file %(name)s")),
    (re.compile(r"^file name$"), N_("file name")),
    (re.compile(r"^fax header line$"), N_("the fax's header line")),
    (re.compile(r"^TIFF (?P<tag>ImageDescription|DateTime)$"), N_("TIFF tag %(tag)s")),
]


def sentence(text: str) -> str:
    """One of the pipeline's or services' sentences in the page's language; unknown, as written
    (in English, always as written)."""
    if i18n.current() == "en":
        return text
    for pattern, template in SENTENCES:
        found = pattern.match(text)
        if found is None:
            continue
        words = {k: v or "" for k, v in found.groupdict().items()}
        for key in words:
            if key.startswith("rest"):
                words[key] = sentence(words[key])
        if "field" in words:
            words["field"] = _(FAX_FIELD[words["field"]])
        if "kind" in words:
            words["kind"] = _(MIME_DEFECT[words["kind"]])
        return _(template) % words
    return text


def flag(value: str) -> str:
    """A letter's flag in the page's language; one with its detail ("repeated-header: From") too."""
    known = i18n.FLAG.get(value)
    return _(known) if known else sentence(value)



# A fax read from a file has no subject of its own: the gateway writes one in English
# (gateway/stages/fax/metadata.py). A page words it in its language when the letter's subject is
# exactly that form of the letter's own facts; a subject someone wrote (a fax service's mail) is
# shown as written, however alike.
FAX_SUBJECT = {(True, False): N_("Fax from %(number)s, %(pages)s pages"),
               (True, True): N_("Fax from %(number)s (%(sender)s), %(pages)s pages"),
               (False, False): N_("Fax from an unknown number, %(pages)s pages"),
               (False, True): N_("Fax from an unknown number (%(sender)s), %(pages)s pages")}


# A paper letter registered without a subject gets one likewise (gateway/services/paper.py).
PAPER_CHANNELS = ("post", "courier", "front-desk")
PAPER_SUBJECT = {
    ("post", False): N_("Letter by post from %(who)s, %(pages)s pages"),
    ("post", True): N_("Letter by post from %(who)s (%(organisation)s), %(pages)s pages"),
    ("courier", False): N_("Letter by courier from %(who)s, %(pages)s pages"),
    ("courier", True): N_("Letter by courier from %(who)s (%(organisation)s), %(pages)s pages"),
    ("front-desk", False): N_("Letter at the front desk from %(who)s, %(pages)s pages"),
    ("front-desk", True): N_("Letter at the front desk from %(who)s (%(organisation)s), %(pages)s pages"),
}


def subject(letter: Any) -> str:
    """A letter's subject as a page shows it; "" when it has none."""
    text: str = letter.subject or ""
    if i18n.current() == "en":
        return text
    if letter.channel in PAPER_CHANNELS:
        return _paper_subject(letter, text)
    if letter.channel != "fax" or letter.sender_address or letter.fax_pages is None:
        return text
    sender = letter.fax_sender_name or ""
    # The text reader may find the number after the subject was written without it.
    for number in dict.fromkeys((letter.fax_number, None)):
        if text == fax_subject(number, sender, letter.fax_pages):
            return _(FAX_SUBJECT[bool(number), bool(sender)]) % {
                "number": number, "sender": sender, "pages": letter.fax_pages}
    return text


def _paper_subject(letter: Any, text: str) -> str:
    found = re.fullmatch(r"Letter .+, (\d+) page\(s\)", text)
    if found is None or text != paper_subject(letter.channel, letter.sender_name or "",
                                              letter.sender_organisation or "", int(found.group(1))):
        return text
    who = (letter.sender_name or "").strip()
    organisation = (letter.sender_organisation or "").strip()
    return _(PAPER_SUBJECT[letter.channel, bool(organisation)]) % {
        "who": who, "organisation": organisation, "pages": found.group(1)}

# -- file sizes --------------------------------------------------------------------------------
def filesize(size: int | None) -> str:
    """A size in bytes in the page's units: 字节/KB/MB in Chinese, bytes/kB/MB in English."""
    if size is None:
        return "—"
    if size < 1024:
        return i18n.ngettext("%(num)d byte", "%(num)d bytes", size) % {"num": size}
    for unit in ("KB", "MB", "GB"):
        size_f = size / 1024
        if size_f < 1024 or unit == "GB":
            return f"{size_f:.1f} {unit}".replace(".0 ", " ")
        size = int(size_f)
    return str(size)


def whole_days(days: float | None) -> str:
    """Days late as whole days (a day begun counts): "3 天" / "3 days", not "2.4"."""
    if days is None:
        return "—"
    count = max(0, math.ceil(days))
    return i18n.ngettext("%(num)d day", "%(num)d days", count) % {"num": count}


# -- the classifier's trace ----------------------------------------------------------------------
# The classifier's evidence (gateway/stages/classify/rules.py), worded in the page's language. A
# sentence no pattern knows is shown as the classifier wrote it.
FIELD = {"subject": N_("subject"), "body": N_("text"), "sender name": N_("sender's name"),
         "sender_name": N_("sender's name")}
EVIDENCE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<field>subject|body|sender name) has '(?P<word>.*?)': …(?P<snippet>.*)…$", re.S),
     N_("%(field)s has “%(word)s”: …%(snippet)s…")),
    (re.compile(r"^addressed to department (?P<dept>\S+)$"), N_("addressed to department %(dept)s")),
    (re.compile(r"^fetched from the mailbox of (?P<dept>\S+)$"), N_("fetched from the mailbox of %(dept)s")),
    (re.compile(r"^sender (?P<sender>\S+) belongs to (?P<dept>\S+)$"), N_("sender %(sender)s belongs to %(dept)s")),
    (re.compile(r"^sender domain (?P<sender>\S+) matches '(?P<pattern>.*)'$"),
     N_("sender's domain %(sender)s matches “%(pattern)s”")),
    (re.compile(r"^sender (?P<sender>\S+) matches '(?P<pattern>.*)'$"), N_("sender %(sender)s matches “%(pattern)s”")),
    (re.compile(r"^sender (?P<sender>\S+) claims the organisation but is not verified$"),
     N_("sender %(sender)s claims to be of the organisation but is not verified")),
    (re.compile(r"^sender (?P<sender>\S+) is in the organisation$"), N_("sender %(sender)s is in the organisation")),
    (re.compile(r"^sender (?P<sender>\S+) is not in the organisation$"),
     N_("sender %(sender)s is not in the organisation")),
    (re.compile(r"^sender (?P<sender>\S+) is verified$"), N_("sender %(sender)s is verified")),
    (re.compile(r"^sender (?P<sender>\S+) is not verified$"), N_("sender %(sender)s is not verified")),
    (re.compile(r"^recipient (?P<address>\S+) matches '(?P<pattern>.*)'$"),
     N_("recipient %(address)s matches “%(pattern)s”")),
    (re.compile(r"^channel is (?P<channel>\S+)$"), N_("channel is %(channel)s")),
    (re.compile(r"^fax number (?P<number>\S+) matches '(?P<pattern>.*)'$"),
     N_("fax number %(number)s matches “%(pattern)s”")),
    (re.compile(r"^attachment '(?P<name>.*)' \((?P<kind>.*)\)$"), N_("attachment “%(name)s” (%(kind)s)")),
    (re.compile(r"^no (?P<dept>\S+) department$"), N_("there is no department %(dept)s")),
    (re.compile(r"^already '(?P<value>.*)'$"), N_("already %(value)s")),
]


class Trace:
    """The decision trace's sentences and values in the page's language."""

    def __init__(self, departments: Mapping[str, Any]):
        self.departments = departments

    def department(self, value: str) -> str:
        known = self.departments.get(value)
        return known.name if known is not None else value

    def evidence(self, text: str) -> str:
        for pattern, template in EVIDENCE:
            found = pattern.match(text)
            if found is None:
                continue
            words = found.groupdict()
            if "dept" in words:
                words["dept"] = self.department(words["dept"])
            if "field" in words:
                words["field"] = _(FIELD.get(words["field"], words["field"]))
            if "channel" in words:
                words["channel"] = i18n.label("channel", words["channel"])
            return _(template) % words
        return text

    def reason(self, text: str) -> str:
        from gateway.web.routes.work import TRIAGE_REASON

        return _(TRIAGE_REASON[text]) if text in TRIAGE_REASON else text

    def field(self, key: str) -> str:
        return _(DETAIL[key]) if key in DETAIL else key

    def value(self, key: str, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(self.value(key, v) for v in value)
        if not isinstance(value, str):
            return _text(value)
        if key in CODED:
            return i18n.label(CODED[key], value)
        if key == "department":
            return self.department(value)
        if key == "owner":
            return value
        return value


def breakable(address: str) -> Markup:
    """An address that may wrap after its @, and a long domain before its dots too: a narrow column
    breaks it where a reader expects, and the table need not widen to hold it on one line."""
    local, at, domain = address.rpartition("@")
    if not at:
        return escape(address)
    labels = re.split(r"(?=\.)", domain) if len(domain) > 20 else [domain]
    return Markup("<wbr>").join(escape(part) for part in [local + at, *labels])
