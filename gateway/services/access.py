"""Who may see and do what with a letter — decided here and nowhere else.

The web register, the CLI and answers by e-mail all ask this module. It hands out a letter with
the caller's rights, or nothing (which the web shows as 404, the same as a number that does not
exist), and writes an audit row for every read of content: opening a letter's text, downloading an
attachment or its original, exporting a list.

The rule, in words:
- The register entry (number, sender, status, dates, department) of a letter: the registry office,
  leaders, auditors and administrators see every letter's; members and heads see those that are,
  or once were, with one of their departments, those assigned to them, and those granted to them.
- Its content (subject, text, attachments, original, OCR text, trace): for an ordinary letter, the
  registry office, leaders, and members and heads who see its entry; auditors and administrators
  only with a grant. A confidential letter's content only its owner, a head of its department,
  and people granted it.
- Steps: members and heads of its department (and the person it is assigned to) acknowledge,
  handle, answer and close it; the registry office and the department reassign; the registry
  office and the department's people assign; the registry office, leaders and the department's
  head put it under legal hold; anyone who may act, and leaders and the registry office, add notes.
- Circulation (gateway.services.circulation): its readers see its register entry, and the reader
  whose turn it is an ordinary letter's content too, whatever their department.
- An archived letter's content: only through a borrowing granted for now (gateway.services.borrowing),
  for everyone; a confidential one in page previews only, never as a download.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import regex

from gateway.addressing import shown_address
from gateway.config import Config
from gateway.registry import LetterFilter, Registry, Scope, lifecycle
from gateway.registry.circulation import CirculationRecords
from gateway.registry.people import CLOSED_FILTERS, ContentScope
from gateway.registry.models import AuditRow, Letter, OcrReading, OutboxMail
from gateway.report.spreadsheet import SheetWriter
from gateway.services import queries
from gateway.services.letters import LetterSteps, UnknownDepartment
from gateway.services.people import People, PersonRecord, Principal
from gateway.stages.reference import LONGEST as REFERENCE_LONGEST
from gateway.stages.reference import ONE_LINE_CONTROL, typed_reference

ACTIONS = ("ack", "progress", "answer", "close", "note", "assign", "reassign", "hold", "tag", "reference")
# Refusals of what was sent (no such step, a field missing or naming no one); the others are the
# person's rights (Forbidden) and the letter's state, which a colleague's step may have changed.
INPUT_REFUSALS = frozenset({"impossible", "need-department", "unknown-department", "need-reason", "need-text",
                            "need-result", "need-close-result", "need-person", "no-assignee", "not-in-department",
                            "too-long", "bad-tag", "need-on", "bad-reference"})
BULK_LIMIT = 500  # letters in one bulk step
EXPORT_CHUNK = 500  # letters read at a time for an export
AUDIT_CHUNK = 2000  # audit rows read at a time for an export
# A step's text (a note, a reason, a close's result, which an inquiry's sender is mailed): the forms
# take 2,000 characters; a request made by hand may not store or mail more.
MAX_STEP_TEXT = 2000
QUEUES = ("mine", "departments", "triage", "overdue", "all")
CONTENT_READS = ("read", "download", "original", "preview")
PREVIEW_WITHIN_READ = timedelta(minutes=10)


def typed_text(text: str) -> str:
    """A text as a person typed it, its ends trimmed: a browser sends a textarea's line breaks as
    CRLF, which its maxlength counts as one character each, so they are one here too."""
    return text.replace("\r\n", "\n").strip()


def step_text(text: str, field: str = "") -> str:
    """A step's text (a note, a reason, a close's result, a remark): typed_text, refused (never
    cut short) past MAX_STEP_TEXT characters. A `field` names it in the refusal and its key
    (`reason-too-long`), for a form with more than one such field."""
    text = typed_text(text)
    if len(text) > MAX_STEP_TEXT:
        what = f"a {field} of at most" if field else "at most"
        raise Refused(f"{what} {MAX_STEP_TEXT} characters (this has {len(text)})",
                      f"{field}-too-long" if field else "too-long", limit=str(MAX_STEP_TEXT))
    return text


class Refused(Exception):
    """A step the letter's state does not allow, or its input is wanting; the message says why.

    `key` names the reason for those who word it in another language (the web register), with
    `params` to fill in; the message is the English wording."""

    def __init__(self, message: str, key: str = "", **params: str):
        super().__init__(message)
        self.key = key
        self.params = params


class Forbidden(Refused):
    """A step the person has no right to take."""


@dataclass(frozen=True)
class Rights:
    content: bool
    actions: frozenset[str]
    reasons: dict[str, Refused] = field(default_factory=dict)  # why an action is not among `actions`

    def refusal(self, action: str) -> Refused | None:
        if action in self.actions:
            return None
        return self.reasons.get(action, Refused(f"{action} is not possible here", "impossible", action=action))


@dataclass
class LetterView:
    letter: Letter
    rights: Rights


@dataclass(frozen=True)
class RegisterEntry:
    """A letter's register entry as everyone who sees the letter sees it, whether or not they may
    read its content: the web page's and `gateway letters show`'s alike. The sender is the sender's
    name, else a fax's sender, and the sender's address, else a fax's number (a drop-folder fax has
    only those); a fax by mail shows the mail's sender."""
    number: str
    sender_name: str
    sender_address: str
    status: str
    received_at: datetime
    department: str | None
    urgency: str
    confidentiality: str
    legal_hold: bool
    overdue: bool


@dataclass(frozen=True)
class QueueQuery:
    queue: str = "mine"
    status: str | None = None
    category: str | None = None
    urgency: str | None = None
    channel: str | None = None
    department: str | None = None
    since: date | None = None
    until: date | None = None
    deadline_before: date | None = None
    deadline_after: date | None = None  # deadline on or after this local day
    closed: str | None = None  # "timed" or "on-time": the letters the timeliness figures count
    work: bool = False  # only the letters the person works on (work_scope), as the dashboard counts
    sort: str = "-received"
    page: int = 1
    per_page: int = 50


@dataclass
class QueuePage:
    rows: list[Letter]
    total: int
    page: int
    pages: int
    query: QueueQuery
    content: set[int] = field(default_factory=set)  # ids of rows whose subject the person may see


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    letter_number: str | None
    subject: str
    address: str
    details: dict[str, Any]


@dataclass(frozen=True)
class BulkResult:
    number: str
    done: bool
    message: str  # what happened, or why not (English)
    refusal: Refused | None = None


@dataclass(frozen=True)
class SavedViewRecord:
    id: int
    name: str
    query: QueueQuery


_VIEW_FIELDS = ("queue", "status", "category", "urgency", "channel", "department", "since", "until",
                "deadline_before", "deadline_after", "closed", "work", "sort", "per_page")


def query_to_dict(query: QueueQuery) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _VIEW_FIELDS:
        value = getattr(query, name)
        if name == "work":
            if value:
                out[name] = "1"  # as the queue page's link says it
        elif value not in (None, ""):
            out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def query_from_dict(data: dict[str, Any]) -> QueueQuery:
    values: dict[str, Any] = {}
    for name in _VIEW_FIELDS:
        value = data.get(name)
        if value in (None, ""):
            continue
        if name in ("since", "until", "deadline_before", "deadline_after"):
            try:
                value = date.fromisoformat(str(value))
            except ValueError:
                continue
        elif name == "work":
            value = value in (True, "1")
        elif name == "per_page":
            try:
                value = int(value)
            except (TypeError, ValueError):
                continue
        values[name] = value
    return QueueQuery(**values)


_TAG = regex.compile(r"^[\p{L}\p{N}][\p{L}\p{N}._-]{0,39}$")


def _tag(text: str) -> str:
    tag = text.strip()
    if not _TAG.match(tag):
        raise Refused(f"{tag[:50]!r} is not a tag: 1 to 40 letters, digits, '.', '_' or '-'", "bad-tag")
    return tag


def _record(row: AuditRow, number: str | None) -> AuditRecord:
    return AuditRecord(row.id, row.at, row.actor, row.action, number, row.subject, row.address, row.details)


class Access:
    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.people = People(config, registry)
        self.steps = LetterSteps(config, registry)
        # What time it is for time-limited rights (borrowings); a test sets its own.
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    # -- what a person sees -------------------------------------------
    def scope(self, who: Principal) -> Scope:
        if who.has("registry", "leader", "auditor", "admin"):
            return Scope(everything=True)
        return Scope(departments=who.departments, owners=who.emails, person_id=who.person_id)

    def work_scope(self, who: Principal) -> Scope:
        """The letters a person works on: for a department's people, those with their departments
        now (not those they passed on), those assigned to them and those granted; for the roles that
        see the whole register, all of it. What the dashboard counts."""
        scope = self.scope(who)
        return scope if scope.everything else replace(scope, current_only=True)

    def content_scope(self, who: Principal) -> ContentScope:
        """The same rule as content_ids(), as a filter the registry applies in SQL (search)."""
        if who.is_operator:
            return ContentScope(everything=True)
        # Archived letters: only those lent to them now (a borrowing), as content_ids() decides.
        return ContentScope(ordinary=who.has("registry", "leader"), related=who.departments, owners=who.emails,
                            headed=who.headed, person_id=who.person_id, lent_at=self.clock())

    def content_allowed(self, who: Principal, letter: Letter, *, now: datetime | None = None) -> bool:
        return letter.id in self.content_ids(who, [letter], now=now)

    def content_ids(self, who: Principal, letters: list[Letter], *, now: datetime | None = None) -> set[int]:
        """Of these letters (all within the person's scope), those whose content they may read."""
        if who.is_operator:
            return {letter.id for letter in letters}
        allowed = set()
        undecided = []
        archived = [letter for letter in letters if letter.status == "archived"]
        if archived:
            # An archived letter's content: only through a borrowing granted for now, whoever asks.
            records = CirculationRecords(self.registry)
            allowed |= records.lent(who.person_id, [a.id for a in archived], now or self.clock()) \
                if who.person_id is not None else set()
        for letter in letters:
            if letter.status == "archived":
                continue
            owner = (letter.owner or "").lower() in who.emails
            if letter.confidentiality == "confidential":
                if owner or letter.department in who.headed:
                    allowed.add(letter.id)
                else:
                    undecided.append(letter)
            elif who.has("registry", "leader") or owner or self._related(who, letter):
                allowed.add(letter.id)
            else:  # auditors and administrators: content only by grant
                undecided.append(letter)
        if undecided and who.person_id is not None:
            allowed |= {letter.id for letter in undecided if self.registry.granted(who.person_id, letter.id)}
        ordinary = [letter.id for letter in undecided if letter.id not in allowed
                    and letter.confidentiality != "confidential"]
        if ordinary:  # the reader whose turn it is in a circulation, whatever their department
            turns = CirculationRecords(self.registry).current_readers(ordinary)
            allowed |= {letter_id for letter_id, (kind, target) in turns.items()
                        if (kind, target) == ("person", who.login) or (kind == "department" and target in who.headed)}
        return allowed

    def department_name(self, department: str | None) -> str:
        """A department as a refusal names it to a person: its name, or its id once it is no longer configured."""
        known = self.config.departments.get(department or "")
        return known.name if known else (department or "-")

    def overtaken(self, exc: Exception, letter: Letter, action: str) -> Refused:
        """A step the letter's state refused under its lock: said with the state it is in now (a
        colleague's step may have landed since it was read, two closes at once)."""
        now = self.registry.letter(letter.number)
        return Refused(str(exc), "state", number=letter.number, status=now.status if now else letter.status,
                       action=action)

    def known_department(self, department: str) -> bool:
        """A department a filter may name: one configured, or one since removed that still has letters."""
        return department in self.config.departments or self.registry.department_in_register(department)

    def _related(self, who: Principal, letter: Letter) -> bool:
        """Is, or was, the letter with one of the person's departments?"""
        if letter.department in who.departments:
            return True
        return bool(who.departments and self.registry.departments_of(letter.id) & who.departments)

    def visible(self, who: Principal, number: str) -> Letter | None:
        letter = self.registry.letter(number)
        if letter is None:
            return None
        if not self.registry.in_scope(self.scope(who), letter.id) and not CirculationRecords(
                self.registry).is_reader(letter.id, who.login, who.headed):  # circulated to them
            return None
        return letter

    def rights(self, who: Principal, letter: Letter) -> Rights:
        content = self.content_allowed(who, letter)
        in_department = letter.department in who.departments or who.is_operator
        assigned = (letter.owner or "").lower() in who.emails
        head = letter.department in who.headed or who.is_operator
        registry = who.has("registry")
        may: dict[str, bool] = {
            "ack": in_department or assigned, "progress": in_department or assigned,
            "answer": in_department or assigned, "close": in_department or assigned,
            "note": in_department or assigned or who.has("registry", "leader"),
            "assign": registry or in_department, "reassign": registry or in_department,
            "hold": registry or who.has("leader") or head,
            "tag": in_department or assigned or who.has("registry", "leader"),
            # Its sender's reference is part of its content: set by those who read it.
            "reference": content and (in_department or assigned or registry),
        }
        actions: set[str] = set()
        reasons: dict[str, Refused] = {}
        department = self.department_name(letter.department)
        for action, allowed in may.items():
            if not allowed:
                who_may = {"assign": "the people of department {d} and the registry office",
                           "reassign": "the people of department {d} and the registry office",
                           "hold": "the head of department {d}, the registry office and leaders",
                           "reference": "those of department {d} and of the registry office who may read it"}.get(
                    action, "the people of department {d}" + (", the registry office and leaders"
                                                               if action in ("note", "tag") else ""))
                reasons[action] = Forbidden(f"only {who_may.format(d=department)} may {action} {letter.number}",
                                            f"forbidden-{action}", department=department, number=letter.number)
                continue
            if action in ("tag", "reference"):
                pass  # any letter, open or not, may be tagged, and its reference put right
            elif action == "assign":
                if letter.status not in lifecycle.OPEN:
                    reasons[action] = Refused(f"{letter.number} is {letter.status}: only an open letter can be "
                                              "assigned", "state", number=letter.number, status=letter.status,
                                              action=action)
                    continue
            elif action == "hold":
                if letter.purged_at is not None:
                    reasons[action] = Refused(f"{letter.number} was destroyed", "destroyed", number=letter.number)
                    continue
            else:
                move = lifecycle.ACTIONS[action]
                if letter.status not in move.allowed_from:
                    reasons[action] = Refused(f"{letter.number} is {letter.status}: it cannot be {move.verb} "
                                              f"(only when {', '.join(move.allowed_from)})", "state",
                                              number=letter.number, status=letter.status, action=action)
                    continue
            actions.add(action)
        return Rights(content=content, actions=frozenset(actions), reasons=reasons)

    def letter(self, who: Principal, number: str, *, address: str, audit: bool = True) -> LetterView | None:
        """The letter with the person's rights, or None if they may not know of it. Showing its
        content is an audited read."""
        letter = self.visible(who, number)
        if letter is None:
            return None
        rights = self.rights(who, letter)
        if rights.content and audit:
            self.record(who, "read", address=address, letter_id=letter.id, subject=letter.number)
            if letter.status == "archived" and who.person_id is not None and not who.is_operator:
                CirculationRecords(self.registry).borrow_read(letter.id, who.person_id, who.login, self.clock())
        return LetterView(letter, rights)

    def entry(self, letter: Letter) -> RegisterEntry:
        """The register entry of a letter the person sees (from `letter()`)."""
        sender_name, sender_address = queries.letter_sender(letter)
        return RegisterEntry(
            number=letter.number, sender_name=sender_name, sender_address=sender_address, status=letter.status,
            received_at=letter.received_at, department=letter.department, urgency=letter.urgency,
            confidentiality=letter.confidentiality, legal_hold=letter.legal_hold,
            overdue=bool(letter.deadline and letter.deadline < self.clock()
                         and letter.status not in ("closed", "archived")))

    @staticmethod
    def withheld(letter: Letter) -> str:
        """Why someone who sees a letter's register entry may not read its content (the cases the
        letter page names too): archived, confidential, or a role that reads by grant only."""
        if letter.status == "archived":
            return (f"{letter.number} is archived: its content is read through an approved borrowing "
                    "(gateway archive borrow)")
        if letter.confidentiality == "confidential":
            return "confidential letters are read by their owner, the head of their department and people granted them"
        return ("your role sees this letter's register entry, not its content; a grant opens it "
                "(gateway users grant LOGIN --letter NUMBER)")

    @staticmethod
    def downloadable(who: Principal, letter: Letter) -> bool:
        """A borrowed confidential letter is read in the browser only: page previews, no files."""
        return who.is_operator or not (letter.status == "archived" and letter.confidentiality == "confidential")

    def _content(self, who: Principal, number: str) -> Letter | None:
        letter = self.visible(who, number)
        return letter if letter is not None and self.content_allowed(who, letter) else None

    def attachment(self, who: Principal, number: str, position: int, *, address: str,
                   purpose: str = "download") -> tuple[str, bytes, str] | None:
        """(name, bytes, detected type) of one attachment; an audited read."""
        letter = self._content(who, number)
        if letter is None:
            return None
        attachment = next((a for a in letter.attachments if a.position == position), None)
        if attachment is None or (purpose != "preview" and not self.downloadable(who, letter)):
            return None
        from gateway.archive.packer import ArchiveError

        try:
            content = queries.attachment_content(self.config, self.registry, letter, attachment)
        except ArchiveError:  # its original destroyed with its package, or damaged: nothing to give
            return None
        if content is None:
            return None
        # The page images of a letter just opened are part of that read: one row, not one per image.
        if purpose != "preview" or not self.registry.read_since(
                who.login, letter.id, datetime.now(timezone.utc) - PREVIEW_WITHIN_READ, ("read", "preview")):
            self.record(who, purpose, address=address, letter_id=letter.id,
                        subject=named(letter, attachment.filename, f"attachment {attachment.position}"))
        return attachment.filename, content, attachment.detected_type or "application/octet-stream"

    def original(self, who: Principal, number: str, *, address: str) -> tuple[str, bytes] | None:
        """The original as received (.eml, or the fax file); an audited read."""
        from gateway.archive.packer import ArchiveError, read_original

        letter = self._content(who, number)
        if letter is None or not self.downloadable(who, letter):
            return None
        try:
            raw = read_original(self.config, self.registry, letter)
        except ArchiveError:  # destroyed with its package, or damaged: nothing to give
            return None
        name = letter.attachments[0].filename if letter.is_fax_file else f"{letter.number}.eml"
        self.record(who, "original", address=address, letter_id=letter.id,
                    subject=named(letter, name, f"{letter.number} original"))
        return name, raw

    def extract(self, who: Principal, number: str, directory: Path, *, address: str) -> list[Path]:
        """Write a letter's documents as files into `directory` (queries.extract_attachments) for
        someone who may download them; an audited read. Raises LookupError for a letter they cannot
        see, Forbidden for one they may not take files of, and what extracting raises."""
        letter = self.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if not self.content_allowed(who, letter):
            raise Forbidden(f"{number}: its content is not yours to read")
        if not self.downloadable(who, letter):  # as on the web: page previews only, never files
            raise Forbidden(f"{number}: a borrowed confidential letter is read as page previews in the web "
                            "register only")
        written = queries.extract_attachments(self.config, self.registry, number, directory)
        self.record(who, "download", address=address, letter_id=letter.id,
                    subject=named(letter, ", ".join(path.name for path in written), f"{len(written)} file(s)"))
        return written

    def formatted(self, who: Principal, number: str) -> str | None:
        """The letter's HTML as its sender formatted it, made safe to show inside a page: scripts,
        styles, forms and event handlers removed by nh3, and remote content blocked (images only
        from data: URLs, so opening a letter never tells its sender so). None when it has no HTML
        or the person may not read it. Part of the read `letter()` audits."""
        import nh3

        from gateway.archive.packer import ArchiveError, read_original
        from gateway.stages.normalise import html_body

        letter = self._content(who, number)
        if letter is None or letter.is_fax_file:
            return None
        try:
            html = html_body(read_original(self.config, self.registry, letter))
        except ArchiveError:  # destroyed with its package, or damaged: the page shows its text
            return None
        if not html:
            return None

        def keep(tag: str, attribute: str, value: str) -> str | None:
            if attribute == "src":
                return value if value.startswith("data:image/") else None
            return value

        return nh3.clean(html, url_schemes={"http", "https", "mailto", "data"}, attribute_filter=keep,
                         link_rel="noopener noreferrer nofollow", strip_comments=True)

    def readers(self, who: Principal, number: str) -> list[AuditRecord]:
        """Who read the letter's content, newest first."""
        letter = self.visible(who, number)
        if letter is None:
            return []
        return [_record(row, n) for row, n in self.registry.audit_rows(letter_id=letter.id, actions=CONTENT_READS)]

    def outbox(self, who: Principal, number: str) -> list[OutboxMail]:
        letter = self.visible(who, number)
        return self.registry.outbox(letter_id=letter.id) if letter is not None else []

    def ocr_reading(self, who: Principal, number: str) -> OcrReading | None:
        """How a fax's or scan's text was read; part of the content, like the text itself."""
        from gateway.services.queries import ocr_reading

        letter = self.visible(who, number)
        if letter is None or letter.id not in self.content_ids(who, [letter]):
            return None
        return ocr_reading(self.registry, letter.id)

    # -- queues ---------------------------------------------------------
    def queues(self, who: Principal) -> list[str]:
        """The person's queues, the one they land on first: triage for the registry office, the
        department's for its people, the whole register for leaders, auditors and administrators."""
        names = ["triage"] if who.has("registry") else []
        if who.departments:
            names.append("departments")
            if self.config.model.triage.department in who.departments and "triage" not in names:
                names.append("triage")
        if who.has("registry", "leader", "auditor", "admin"):
            names.append("all")
        if who.emails or who.departments:
            names.append("mine")
        names.append("overdue")
        if "all" not in names:
            names.append("all")
        return names

    def _filter(self, who: Principal, query: QueueQuery) -> LetterFilter:
        since, until = queries.received_between(self.config, query.since, query.until)
        deadline_before = queries.day_start(query.deadline_before, queries.local_zone(self.config)) \
            if query.deadline_before else None
        f = LetterFilter(statuses=(query.status,) if query.status else (), category=query.category,
                         urgency=query.urgency, channel=query.channel,
                         departments=(query.department,) if query.department else (),
                         since=since, until=until, deadline_before=deadline_before,
                         closed=query.closed if query.closed in CLOSED_FILTERS else None)
        if query.status == "open":  # any state before closed
            f = replace(f, statuses=lifecycle.OPEN)
        if query.deadline_after is not None:
            f = replace(f, deadline_after=queries.day_start(query.deadline_after, queries.local_zone(self.config)))
        if query.queue == "mine":
            return replace(f, owners=tuple(sorted(who.emails)), nothing=not who.emails,
                           statuses=f.statuses or lifecycle.OPEN)
        if query.queue == "departments":
            departments = tuple(sorted(who.departments))
            if query.department:
                departments = tuple(d for d in departments if d == query.department)
            return replace(f, departments=departments, nothing=not departments)
        if query.queue == "triage":
            return replace(f, statuses=("needs-triage",))
        if query.queue == "overdue":
            # Within the person's work scope (see _scope_for), as the dashboard counts it.
            return replace(f, overdue_at=datetime.now(timezone.utc))
        return f

    def queue(self, who: Principal, query: QueueQuery) -> QueuePage:
        if query.queue not in QUEUES:
            raise ValueError(f"no queue {query.queue!r}")
        from gateway.registry.people import SORTS

        sort = query.sort if query.sort in SORTS else "-received"
        per_page = max(1, min(query.per_page, 200))
        page = max(1, query.page)
        letter_filter = self._filter(who, query)
        scope = self._scope_for(who, letter_filter, work=query.queue == "overdue" or query.work)
        rows, total = self.registry.letters_page(scope, letter_filter, sort=sort, offset=(page - 1) * per_page,
                                                 limit=per_page)
        pages = max(1, -(-total // per_page))
        return QueuePage(rows, total, page, pages, replace(query, sort=sort, page=page, per_page=per_page),
                         self.content_ids(who, rows))

    def search(self, who: Principal, text: str, query: QueueQuery, *, address: str) -> QueuePage:
        """Letters the person may see that hold every word of `text` (a Chinese word anywhere in a
        sentence, traditional or simplified; Latin words by prefix), within the queue's filters, best
        match first. Subjects they may not read stay hidden, and a word found only in a confidential
        letter's content does not show it to them: such letters are searched by their register entry
        alone. Each search is an audit row."""
        from gateway.registry.search import query_terms

        terms = query_terms(text)
        per_page = max(1, min(query.per_page, 200))
        page = max(1, query.page)
        scope = self.work_scope(who) if query.queue == "overdue" or query.work else self.scope(who)
        rows, total = self.registry.search_page(scope, self.content_scope(who), self._filter(who, query),
                                                terms, offset=(page - 1) * per_page, limit=per_page)
        content = self.content_ids(who, rows)
        self.record(who, "search", address=address, subject=text[:200],
                    details={"queue": query.queue, "matches": total})
        return QueuePage(rows, total, page, max(1, -(-total // per_page)),
                         replace(query, page=page, per_page=per_page), content)

    def counts(self, who: Principal) -> dict[str, int]:
        """The sidebar's numbers. "All" is counted on its own page only: for a department's people it
        is the costliest count (letters once with them), and it says the least."""
        counts = {}
        for name in self.queues(who):
            if name != "all":
                letter_filter = self._filter(who, QueueQuery(queue=name))
                counts[name] = self.registry.letters_count(self._scope_for(who, letter_filter, work=name == "overdue"),
                                                       letter_filter)
        return counts

    def _scope_for(self, who: Principal, letter_filter: LetterFilter, *, work: bool) -> Scope:
        """The person's scope, or none at all when the filter alone keeps within it (their own
        departments' letters, or those assigned to them): the same rows, without the costly part
        of the scope (letters once with their departments).

        `work`: only their work scope (their departments' letters now, those assigned to them,
        those granted), not letters their departments passed on: what the overdue queue chases and
        what the dashboard's figures count (their links ask for it)."""
        scope = self.work_scope(who) if work else self.scope(who)
        if scope.everything:
            return scope
        if letter_filter.departments and set(letter_filter.departments) <= who.departments:
            return Scope(everything=True)
        if letter_filter.owners and set(letter_filter.owners) <= who.emails:
            return Scope(everything=True)
        return scope

    def export_csv(self, who: Principal, query: QueueQuery, *, address: str) -> Iterator[str]:
        """A queue as CSV, every row of it (subjects only where the person may read them); an
        audited export. The rows are the queue's as of the call, in its order; the text comes in
        pieces, a chunk of letters at a time, so a queue of any length takes little memory."""
        if query.queue not in QUEUES:
            raise ValueError(f"no queue {query.queue!r}")
        from gateway.registry.people import SORTS

        sort = query.sort if query.sort in SORTS else "-received"
        letter_filter = self._filter(who, query)
        scope = self._scope_for(who, letter_filter, work=query.queue == "overdue" or query.work)
        ids = self.registry.letter_ids(scope, letter_filter, sort=sort)
        self.record(who, "export", address=address, subject=f"queue {query.queue}",
                    details={"rows": len(ids), "query": {k: str(v) for k, v in vars(query).items()
                                                          if v not in (None, "")}})
        return self._csv_rows(who, ids)

    def _csv_rows(self, who: Principal, ids: list[int]) -> Iterator[str]:
        tz = queries.local_zone(self.config)
        out = io.StringIO()
        writer = SheetWriter(out)
        # The sender as the queue's row shows it (a drop-folder fax by its number and sender, a
        # domain as shown_address shows it); last, the address as the letter gave it.
        writer.writerow(["number", "received_at", "channel", "sender_name", "sender_address", "subject",
                         "department", "category", "urgency", "confidentiality", "status", "deadline",
                         "sender_address_as_given", "sender_reference"])
        for at in range(0, len(ids), EXPORT_CHUNK):
            rows = self.registry.letters_by_ids(ids[at:at + EXPORT_CHUNK])
            allowed = self.content_ids(who, rows)  # decided with each chunk
            for r in rows:
                sender_name, sender_address = queries.letter_sender(r)
                writer.writerow([r.number, r.received_at.astimezone(tz).isoformat(), r.channel, sender_name,
                                 shown_address(sender_address), r.subject if r.id in allowed else "",
                                 r.department or "", r.category or "", r.urgency, r.confidentiality, r.status,
                                 r.deadline.astimezone(tz).isoformat() if r.deadline else "", sender_address,
                                 r.sender_reference if r.id in allowed else ""])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        if out.tell():
            yield out.getvalue()  # the header of an empty queue

    # -- steps ----------------------------------------------------------
    def assignees(self, who: Principal, number: str) -> list[PersonRecord]:
        """People a letter may be assigned to: those of its department with an address."""
        letter = self.visible(who, number)
        if letter is None or letter.department is None:
            return []
        out = []
        for record in self.people.list():
            principal = self.people.principal(record.login)
            if principal and principal.emails and letter.department in principal.departments:
                out.append(record)
        return out

    def act(self, who: Principal, number: str, action: str, *, text: str = "", department: str | None = None,
            assignee: str | None = None, on: bool | None = None, address: str = "",
            as_seen: str | None = None, as_owner: str | None = None) -> str:
        """Take a step on a letter. Returns what happened, in words. Raises LookupError (no letter
        the person may know of) and Refused (why not).

        `as_seen`: the department the letter was with on the page the person acted from ("" for
        none, as on the triage desk); a letter moved since is refused, not moved again by a page
        left open. None: not checked (a command names its letter afresh). `as_owner`: likewise the
        address it was assigned to there ("" for no one): a colleague's assignment since is not
        overwritten unseen."""
        if action not in ACTIONS:
            raise Refused(f"no step {action!r}", "impossible", action=action)
        letter = self.visible(who, number)
        if letter is None:
            raise LookupError(f"no letter {number}")
        if as_seen is not None and as_seen != (letter.department or ""):
            moved = lifecycle.LetterMoved(number, letter.department, letter.owner)
            raise Refused(str(moved), "moved", number=number, department=self.department_name(letter.department))
        if as_owner is not None and as_owner.lower() != (letter.owner or "").lower():
            moved = lifecycle.LetterMoved(number, letter.department, letter.owner)
            raise Refused(str(moved), "moved-owner", number=number, person=letter.owner or "-")
        why = self.rights(who, letter).refusal(action)
        if why is not None:
            raise why
        text = step_text(text)
        # The rights above were decided for the letter as it was read; the registry takes the step
        # only if, under the letter's lock, it is still with that department and owner.
        seen = (letter.department, letter.owner)
        try:
            if action == "reassign":
                # Said here with their keys (the page words them in its language); the service
                # below checks them again under the letter's lock.
                department = self._reassign_input(department, text)
                if department == letter.department:
                    raise Refused(f"{number} is already with {department}", "already-there", number=number,
                                  department=self.department_name(department))
                before, after, _ = self.steps.reassign(number, department, reason=text, actor=who.login, seen=seen)
                return f"{number}: {before or '-'} → {after}"
            if action == "assign":
                return self._assign(who, letter, assignee, text, seen)
            if action == "hold":
                # Said, never guessed from the letter: a page left open would lift the hold it meant to set.
                if on is None:
                    raise Refused("say whether to put the legal hold on or lift it (on: on or off)", "need-on")
                if not text:
                    raise Refused("a legal hold needs a reason", "need-reason")
                self.steps.hold(number, on=on, reason=text, actor=who.login, seen=seen)
                return f"{number}: legal hold {'on' if on else 'off'}"
            if action == "reference":
                reference = typed_reference(text)
                if len(reference) > REFERENCE_LONGEST or ONE_LINE_CONTROL.search(text):
                    raise Refused(f"a sender's reference is one line of at most {REFERENCE_LONGEST} characters",
                                  "bad-reference", limit=str(REFERENCE_LONGEST))
                before, after = self.registry.set_reference(number, reference, actor=who.login, seen=seen)
                return f"{number}: sender's reference {before or '-'} → {after or '-'}"
            if action == "tag":
                tag = _tag(text)
                added = self.registry.add_tag(number, tag, actor=who.login, seen=seen)
                return f"{number}: tagged {tag}" if added else f"{number}: already tagged {tag}"
            if action == "note" and not text:
                raise Refused("a note needs text", "need-text")
            # A letter closes with what came of it, as the register records it (`letters close
            # --result`, `done: <result>` by mail); an inquiry's sender is mailed it besides.
            if action == "close" and not text:
                if letter.category == "external.inquiry_complaint":
                    raise Refused("closing an inquiry or complaint needs its result: the sender receives it",
                                  "need-result")
                raise Refused("closing a letter needs its result: what came of it is recorded with the letter",
                              "need-close-result")
            before, after = self.steps.step(number, action, actor=who.login, text=text, seen=seen)
            return f"{number}: {before} → {after}" if before != after else f"{number}: note recorded ({after})"
        except lifecycle.LetterMoved as exc:
            raise Refused(str(exc), "moved", number=number,
                          department=self.department_name(exc.department)) from None
        except lifecycle.ReplyInHand as exc:
            raise Refused(str(exc), "reply-in-hand", number=number, action=action) from None
        except lifecycle.Unchanged as exc:
            params = dict(exc.params)
            if "department" in params:
                params["department"] = self.department_name(params["department"])
            raise Refused(str(exc), exc.key, **params) from None
        except lifecycle.TransitionRefused as exc:
            raise self.overtaken(exc, letter, action) from None
        except (UnknownDepartment, ValueError) as exc:
            raise Refused(str(exc)) from None

    def bulk(self, who: Principal, numbers: list[str], action: str, *, text: str = "",
             department: str | None = None, assignee: str | None = None, address: str = "",
             seen: Mapping[str, str] | None = None) -> list[BulkResult]:
        """One step on many letters, each checked for rights and state on its own: what one refuses
        does not stop the others. The results in the order given. `seen`: by number, the department
        each letter was with on the page the person acted from (see `act`'s `as_seen`)."""
        numbers = list(dict.fromkeys(n.strip() for n in numbers if n.strip()))
        if len(numbers) > BULK_LIMIT:
            raise Refused(f"at most {BULK_LIMIT} letters at once", "too-many", limit=str(BULK_LIMIT))
        # What the request itself lacks is refused once, as bad input, before any letter: not
        # the same refusal on every letter as if each were at fault.
        if action == "reassign":
            self._reassign_input(department, step_text(text))
        elif action == "assign" and not assignee:
            raise Refused("choose the person to assign it to", "need-person")
        results = []
        for number in numbers:
            try:
                done = self.act(who, number, action, text=text, department=department, assignee=assignee,
                                address=address, as_seen=(seen or {}).get(number))
                results.append(BulkResult(number, True, done))
            except LookupError:
                results.append(BulkResult(number, False, f"no letter {number}",
                                          Refused(f"no letter {number}", "no-letter", number=number)))
            except Refused as exc:
                results.append(BulkResult(number, False, str(exc), exc))
        return results

    def _reassign_input(self, department: str | None, text: str) -> str:
        """A reassignment's department, its fields refused when they cannot do: no department, an
        unknown one, no reason."""
        if not department:
            raise Refused("choose the department to send it to", "need-department")
        if department not in self.config.departments:
            raise Refused(f"no department {department!r} (known: {', '.join(sorted(self.config.departments))})",
                          "unknown-department", department=department)
        if not text:
            raise Refused("a reassignment needs a reason", "need-reason")
        return department

    # -- saved views ------------------------------------------------------
    def views(self, who: Principal) -> list[SavedViewRecord]:
        if who.person_id is None:
            return []
        return [SavedViewRecord(v.id, v.name, query_from_dict(v.query))
                for v in self.registry.saved_views(who.person_id)]

    def save_view(self, who: Principal, name: str, query: QueueQuery) -> int:
        """Save the queue's filters and sort under a name (replacing a view of that name)."""
        name = " ".join(name.split())
        if not 1 <= len(name) <= 60:
            raise Refused("a view needs a name of 1 to 60 characters", "view-name")
        if who.person_id is None:
            raise Refused("only a person has saved views", "view-person")
        if query.queue not in QUEUES:
            raise Refused(f"no queue {query.queue!r}", "impossible", action=query.queue)
        return self.registry.save_view(who.person_id, name, query_to_dict(query))

    def delete_view(self, who: Principal, view_id: int) -> bool:
        return who.person_id is not None and self.registry.delete_view(who.person_id, view_id)

    def _assign(self, who: Principal, letter: Letter, assignee: str | None, note: str, seen: lifecycle.Seen) -> str:
        if not assignee:
            raise Refused("choose the person to assign it to", "need-person")
        person = self.people.principal(assignee)
        if person is None or not person.emails:
            raise Refused(f"no one named {assignee!r} can be assigned letters (unknown, disabled or no address)",
                          "no-assignee", person=assignee)
        if letter.department not in person.departments:
            raise Refused(f"{person.name} is not in department {letter.department}", "not-in-department",
                          person=person.name, department=self.department_name(letter.department))
        if person.login == who.login and not self.content_allowed(who, letter):
            # The owner reads a confidential letter: taking it would be reading it without a right to.
            raise Forbidden(f"{letter.number} is confidential: only the head of its department or the registry "
                            "office may assign it to you", "self-assign-confidential", number=letter.number)
        from gateway.stages.route import new_mail  # composing mail: not for commands that only read

        email = sorted(person.emails)[0]
        notify = [] if email in who.emails else [
            new_mail(self.config, "notification", email, department=letter.department, assigned_by=who.name)]
        acks = sorted((e for e in letter.events if e.action == "acknowledged"), key=lambda e: (e.at, e.id))
        self.registry.assign(letter.number, email, actor=who.login, note=note, notify=notify, seen=seen,
                             acknowledged=person.login == who.login or bool(acks and acks[-1].actor == person.login))
        return f"{letter.number}: assigned to {person.name}"

    # -- the audit log --------------------------------------------------
    def record(self, who: Principal, action: str, *, address: str, letter_id: int | None = None,
               subject: str = "", details: dict[str, Any] | None = None) -> None:
        self.registry.audit([{"actor": who.login, "action": action, "letter_id": letter_id, "subject": subject,
                              "address": address, "details": details or {}}])

    def audit(self, who: Principal, *, since: date | None = None, until: date | None = None,
              actor: str | None = None, action: str | None = None, letter: str | None = None,
              limit: int = 500, older_than: tuple[datetime, int] | None = None) -> list[AuditRecord]:
        """Audit rows, newest first; only for auditors. Raises Refused. `older_than`: only those
        after this row (its time and id), for the next chunk."""
        if not who.has("auditor"):
            raise Forbidden("only auditors read the audit log", "forbidden-audit")
        start, end = queries.received_between(self.config, since, until)
        letter_id = None
        if letter:
            row = self.registry.letter(letter)
            if row is None:
                return []
            letter_id = row.id
        return [_record(row, number) for row, number in
                self.registry.audit_rows(since=start, until=end, actor=actor or None, action=action or None,
                                         letter_id=letter_id, limit=limit, older_than=older_than)]

    def audit_csv(self, who: Principal, *, address: str, **filters: Any) -> Iterator[str]:
        """The audit rows the filters select as CSV, every one, newest first, as the log stood
        when the export began; read and written a chunk at a time. Its own audit row comes after
        the rows it holds (it is not among them). Raises Refused."""
        first = self.audit(who, limit=AUDIT_CHUNK, **filters)
        self.record(who, "audit-export", address=address, details={"filters": {k: str(v) for k, v in filters.items()}})
        return self._audit_rows(who, first, filters)

    def _audit_rows(self, who: Principal, chunk: list[AuditRecord], filters: dict[str, Any]) -> Iterator[str]:
        tz = queries.local_zone(self.config)
        out = io.StringIO()
        writer = SheetWriter(out)
        writer.writerow(["at", "actor", "action", "letter", "subject", "address", "details"])
        while True:
            for r in chunk:
                writer.writerow([r.at.astimezone(tz).isoformat(), r.actor, r.action, r.letter_number or "",
                                 r.subject, r.address, "; ".join(f"{k}={v}" for k, v in r.details.items())])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if len(chunk) < AUDIT_CHUNK:
                return
            chunk = self.audit(who, limit=AUDIT_CHUNK, older_than=(chunk[-1].at, chunk[-1].id), **filters)


def named(letter: Letter, name: str, neutral: str) -> str:
    """What an audit row calls a file read: its name, but for a confidential letter's (a name is
    content, and the audit log is read by auditors, who may not read the letter)."""
    return neutral if letter.confidentiality == "confidential" else name
