"""Replies to a letter's sender under approval (回复信件 … 按照审批流程进行审批).

The letter's handler (its owner, its department's members and head: whoever may answer it, as
gateway.services.access decides) drafts a reply with attachments; it stays editable until
submitted. Submitting starts the approval chain the first matching [[replies.approval]] rule
chooses from the letter's category, urgency, confidentiality and tags (else
[replies] default_chain): "head" (a head of its department), "leader" (its department's leaders
in charge) and "top" ([replies] top_leadership), in that order. Each approver approves or returns
only the step waiting for them; nobody approves a reply they wrote. A returned reply goes back to
its handler and a new submission starts the chain again. When the last step approves, the reply
leaves through the outbox as a reply to the sender's letter (In-Reply-To its Message-ID, the
number in the subject) and the letter is answered; a sender without an e-mail address gets it by
post, which the registry office records. Nothing leaves before the whole chain approved.
The web, the CLI and the reminder pass all come through here.
"""
from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from gateway.config import Config
from gateway.registry import Registry
from gateway.registry.lifecycle import TransitionRefused
from gateway.registry.models import Letter, Reply, ReplyAttachment, ReplyStep
from gateway.registry.plan import NewMail
from gateway.registry.replies import (EDITABLE, DraftChanged, NewReplyAttachment, Outgoing, ReplyChanged, ReplyRecords,
                                      text_digest)
from gateway.services.access import Access, Forbidden, Refused, named, typed_text
from gateway.services.incomplete import request_address
from gateway.services.people import People, Principal
from gateway.stages.normalise.filenames import safe_filename, safe_media_type
from gateway.stages.route import new_mail
from gateway.track.approvals import approvers

ROLES = ("head", "leader", "top")
MAX_TEXT = 50_000
MAX_ATTACHMENTS = 20
MAX_COMMENT = 4000  # an approver's comment, as its form takes it
MAX_NOTE = 500  # where and how a reply was posted
# Refusals for what was filled in (the others: rights, order and the reply's state).
INPUT_REFUSALS = frozenset({"need-reply-text", "reply-too-long", "too-many-attachments", "attachments-too-large",
                            "need-comment", "empty-attachment", "attachment-too-large", "attachment-name-twice",
                            "reply-mail-too-large", "comment-too-long", "note-too-long"})


def _shown_size(size: int) -> str:
    """A size as a person reads it."""
    if size >= 1048576:
        return f"{size / 1048576:.1f} MiB"
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"


# What a reply's mail comes to, a little over rather than under: headers, the text and each file
# in base64 (4 bytes for 3, lines of 76 and CRLF) with its part's headers.
MAIL_HEADERS = 4096
PART_HEADERS = 512


def _base64_size(size: int) -> int:
    encoded = 4 * -(-size // 3)
    return encoded + 2 * -(-encoded // 76)


def mail_size_of_text(text: str) -> int:
    return MAIL_HEADERS + PART_HEADERS + _base64_size(len(text.encode("utf-8")))


def mail_size_of_file(name: str, size: int) -> int:
    return PART_HEADERS + 3 * len(name.encode("utf-8")) + _base64_size(size)


@dataclass(frozen=True)
class StepState:
    """One step of the chain as the letter page shows it."""

    position: int
    role: str
    approvers: list[str]  # who may take it (addresses)
    state: str  # approved | waiting | returned | later
    decision: ReplyStep | None = None


def stage(reply: Reply) -> str:
    """Where a reply stands, as an approval form carries it: the reply, its round and its step. A
    form opened on an earlier round (returned and rewritten since) or step approves nothing."""
    return f"{reply.id}.{reply.round}.{reply.step}"


def draft_started_from(reply: Reply | None) -> str:
    """What a draft form carries of the text it shows (see ReplyRecords.save_draft)."""
    return text_digest(reply.text) if reply is not None else ""


@dataclass
class ReplyPanel:
    """A letter's reply as one person sees it, and what they may do with it."""

    reply: Reply | None
    attachments: list[ReplyAttachment] = field(default_factory=list)
    steps: list[StepState] = field(default_factory=list)
    history: list[ReplyStep] = field(default_factory=list)  # every decision, every round
    chain: list[str] = field(default_factory=list)
    rule: str = ""
    moved: list[tuple[str, str]] = field(default_factory=list)  # (step, the level above taking it): its writers'
    may_draft: bool = False
    may_edit: bool = False
    may_approve: bool = False
    may_post: bool = False
    # Where this person's approval mails the reply, when theirs is the chain's last step (asked first).
    sends_to: str = ""
    refusal: Refused | None = None  # why this person cannot approve the waiting step
    earlier: list[Reply] = field(default_factory=list)  # replies sent before this one


@dataclass(frozen=True)
class Awaiting:
    """A reply waiting for this person's approval: for their queue."""

    number: str
    department: str | None
    role: str
    step: int
    steps: int
    since: datetime | None


def chain_for(config: Config, letter: Letter) -> tuple[list[str], str]:
    """The approval chain for a reply to this letter, and the rule that chose it."""
    for i, rule in enumerate(config.model.replies.approval):
        if all(_matches(letter, key, value) for key, value in rule.when.items()):
            return list(rule.chain), f"replies.approval[{i}]"
    return list(config.model.replies.default_chain), "replies.default_chain"


def _matches(letter: Letter, key: str, value: str | list[str]) -> bool:
    wanted = {value} if isinstance(value, str) else set(value)
    if key == "tags":
        return bool(wanted & set(letter.tags or []))
    return getattr(letter, key) in wanted


def may_take(config: Config, who: Principal, letter: Letter, role: str) -> bool:
    """Is this person an approver of this role for this letter? Never the operator at a shell:
    an approval is a person's, by name."""
    if who.is_operator:
        return False
    if role == "head" and letter.department in who.headed:
        return True
    return bool(who.emails & set(approvers(config, letter, role)))


class Replies:
    """Replies under approval, for one configuration and registry."""

    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.records = ReplyRecords(registry)
        self.access = Access(config, registry)
        self.people = People(config, registry)

    # -- finding the letter and its reply ----------------------------------------------
    def _open(self, letter: Letter) -> Reply | None:
        """The letter's reply in hand (a draft, under approval, returned or waiting for the post)."""
        found = [r for r in self.records.replies(letter.id) if r.status not in ("sent", "posted")]
        return found[-1] if found else None

    def letter_of(self, who: Principal, number: str) -> Letter:
        """The letter, for someone who may see it or approve its reply; else LookupError."""
        letter = self.access.visible(who, number)
        if letter is not None:
            return letter
        letter = self.registry.letter(number)
        reply = self._open(letter) if letter is not None else None
        if letter is None or reply is None or not any(may_take(self.config, who, letter, r) for r in reply.chain):
            raise LookupError(f"no letter {number}")
        return letter

    def _may_handle(self, who: Principal, letter: Letter) -> None:
        """The letter's handlers draft and submit: those who may answer it and read it."""
        rights = self.access.rights(who, letter)
        why = rights.refusal("answer")
        if why is not None:
            if isinstance(why, Forbidden):
                raise Forbidden(f"only the people of its department may reply to {letter.number}", "forbidden-reply",
                                number=letter.number, department=why.params.get("department", "-"))
            raise Refused(f"{letter.number} is {letter.status}: a reply is drafted while it is routed, "
                          "acknowledged or in progress", "reply-state", number=letter.number, status=letter.status)
        if not rights.content:
            raise Forbidden(f"{letter.number} is confidential: only those who may read it reply to it",
                            "forbidden-reply-content", number=letter.number)

    # -- what the letter page shows ----------------------------------------------------
    def panel(self, who: Principal, letter: Letter) -> ReplyPanel:
        replies = self.records.replies(letter.id)
        current = next((r for r in reversed(replies) if r.status not in ("sent", "posted")), None)
        earlier = [r for r in replies if r.status in ("sent", "posted")]
        shown = current or (earlier[-1] if earlier else None)
        try:
            self._may_handle(who, letter)
            handler = True
        except Refused:
            handler = False
        panel = ReplyPanel(shown, earlier=earlier[:-1] if current is None else earlier,
                           may_draft=handler and current is None)
        if shown is None:
            return panel
        approver = any(may_take(self.config, who, letter, role) for role in shown.chain)
        # An archived letter's replies are its content: only through a borrowing granted for now,
        # whoever handled or approved them.
        content = self.access.content_allowed(who, letter) if letter.status == "archived" else (
            handler or approver or self.access.content_allowed(who, letter))
        if not content:
            return ReplyPanel(None)
        panel.attachments = self.records.attachments(shown.id)
        panel.history = self.records.steps(shown.id)
        if shown.chain:
            panel.chain, panel.rule = list(shown.chain), shown.rule
        else:  # the chain it would take, submitted by this person
            panel.chain, panel.rule = chain_for(self.config, letter)
            if handler:
                with suppress(Refused):
                    panel.chain, panel.moved = self._others_approve(letter, panel.chain, [*shown.authors, who.login])
        panel.may_edit = handler and shown.status in EDITABLE
        panel.may_post = shown.status == "to-post" and who.has("registry")
        this_round = {s.position: s for s in panel.history if s.round == shown.round}
        for position, role in enumerate(panel.chain):
            decision = this_round.get(position)
            if decision is not None:
                state = decision.decision
            elif shown.status == "pending" and position == shown.step:
                state = "waiting"
            elif shown.status in ("sent", "posted", "to-post"):
                state = "approved"
            else:
                state = "later"
            panel.steps.append(StepState(position, role, approvers(self.config, letter, role), state, decision))
        if shown.status == "pending":
            try:
                self._check_approver(who, letter, shown)
                panel.may_approve = True
                if shown.step + 1 == len(shown.chain):
                    panel.sends_to = request_address(letter) or ""
            except Refused as exc:
                panel.refusal = exc if approver else None
        return panel

    def read(self, who: Principal, number: str, *, address: str) -> ReplyPanel:
        """The letter's reply as `panel` shows it, read apart from the letter's page (the command):
        its text is the letter's content, so showing it is an audited read. Raises LookupError."""
        letter = self.letter_of(who, number)
        panel = self.panel(who, letter)
        if panel.reply is not None:
            self.access.record(who, "read", address=address, letter_id=letter.id, subject=letter.number,
                               details={"reply": panel.reply.id})
        return panel

    def attachment(self, who: Principal, number: str, reply_id: int, attachment_id: int, *,
                   address: str) -> ReplyAttachment | None:
        """A reply's attachment, for those who see the reply and may take the letter's files away
        (not a borrower of a confidential letter); an audited read."""
        try:
            letter = self.letter_of(who, number)
        except LookupError:
            return None
        if not self.access.downloadable(who, letter):
            return None
        reply = self.records.reply(reply_id)
        if reply is None or reply.letter_id != letter.id or self.panel(who, letter).reply is None:
            return None
        found = self.records.attachment_content(reply_id, attachment_id)
        if found is not None:
            self.access.record(who, "download", address=address, letter_id=letter.id,
                               subject=named(letter, found.filename, f"reply attachment {attachment_id}"),
                               details={"reply": reply_id})
        return found

    # -- the handler's steps -------------------------------------------------------------
    def draft(self, who: Principal, number: str, *, text: str, attach: list[NewReplyAttachment] | None = None,
              remove: list[int] | None = None, started_from: str | None = None) -> int:
        """Write or change the letter's draft reply (a returned one too). Returns its id.
        Raises LookupError, Forbidden and Refused. `started_from`: `draft_started_from` of the
        draft the writer's form showed ("" for none yet); None: not checked (a command)."""
        letter = self.letter_of(who, number)
        self._may_handle(who, letter)
        text = typed_text(text)
        if len(text) > MAX_TEXT:
            raise Refused(f"a reply of at most {MAX_TEXT} characters", "reply-too-long", limit=str(MAX_TEXT))
        reply = self._open(letter)
        if reply is not None and reply.status not in EDITABLE:
            raise Refused(f"the reply to {number} is {reply.status}: it can no longer be changed", "reply-locked",
                          number=number, status=reply.status)
        add = [NewReplyAttachment(safe_filename(a.filename), safe_media_type(a.content_type or ""),
                                  a.content) for a in attach or []]
        if empty := next((a.filename for a in add if not a.content), None):
            # Refused, not dropped: the writer would believe the reply carries it.
            raise Refused(f"{empty} is empty (0 bytes): choose the file again", "empty-attachment", name=empty)
        if reply is None and not text and not add:
            raise Refused("write the reply first", "need-reply-text")
        kept = self.records.attachments(reply.id) if reply is not None else []
        removed = {a.id for a in kept if a.id in set(remove or [])}
        self._check_files(text, [(a.filename, a.size) for a in kept if a.id not in removed],
                          [(a.filename, len(a.content)) for a in add])
        try:
            return self.records.save_draft(letter.id, reply.id if reply else None, actor=who.login, text=text,
                                           add=add, remove=sorted(removed), started_from=started_from)
        except DraftChanged as exc:
            raise Refused(str(exc), "draft-changed", number=number) from None
        except ReplyChanged as exc:
            raise Refused(str(exc), "reply-moved", number=number) from None

    def _check_files(self, text: str, kept: list[tuple[str, int]], added: list[tuple[str, int]]) -> None:
        """A reply's files (name, size) as its text is checked: each one, how many, how much together,
        and the mail they make against what the relay takes; refused naming the file that does
        not fit (the first added that does not, else the last kept). Names: two files of one
        name (in any case) would overwrite each other where the sender saves them."""
        limit = self.config.model.replies.max_attachment_bytes
        relay_limit = self.config.model.outbound.max_message_bytes
        files = kept + added
        seen: set[str] = set()
        for name, _size in files:
            if name.casefold() in seen:
                raise Refused(f"the reply already has an attachment named {name}: remove one or rename it",
                              "attachment-name-twice", name=name)
            seen.add(name.casefold())

        def culprit(at: int) -> str:
            return files[max(at, len(kept))][0] if added else files[at][0]

        if len(files) > MAX_ATTACHMENTS:
            raise Refused(f"at most {MAX_ATTACHMENTS} attachments: {culprit(MAX_ATTACHMENTS)} is one too many",
                          "too-many-attachments", limit=str(MAX_ATTACHMENTS), name=culprit(MAX_ATTACHMENTS))
        total, mail = 0, mail_size_of_text(text)
        allowed, relay = _shown_size(limit), _shown_size(relay_limit)
        for at, (name, size) in enumerate(files):
            if size > limit:
                shown = _shown_size(size)
                raise Refused(f"{name} is {shown}, more than the {allowed} a reply's attachments may come to",
                              "attachment-too-large", name=name, size=shown, limit=allowed)
            total += size
            mail += mail_size_of_file(name, size)
            if total > limit:
                shown = _shown_size(total)
                raise Refused(f"with {culprit(at)} the attachments come to {shown}, more than the {allowed} allowed",
                              "attachments-too-large", name=culprit(at), size=shown, limit=allowed)
            if mail > relay_limit:
                shown = _shown_size(mail)
                raise Refused(f"with {culprit(at)} the reply would be {shown} as mail (attachments grow by a third "
                              f"when encoded), more than the {relay} the outgoing mail server takes",
                              "reply-mail-too-large", name=culprit(at), size=shown, limit=relay)

    def submit(self, who: Principal, number: str) -> list[str]:
        """Start the approval chain of the letter's draft. Returns the chain."""
        letter = self.letter_of(who, number)
        self._may_handle(who, letter)
        reply = self._open(letter)
        if reply is None:
            raise Refused(f"{number} has no draft reply", "no-reply", number=number)
        if reply.status not in EDITABLE:
            raise Refused(f"the reply to {number} is {reply.status}: it was submitted already", "reply-locked",
                          number=number, status=reply.status)
        if not reply.text.strip():
            raise Refused("write the reply first", "need-reply-text")
        # Again: the limits may have changed since the draft was saved.
        self._check_files(reply.text, [], [(a.filename, a.size) for a in self.records.attachments(reply.id)])
        chain, rule = chain_for(self.config, letter)
        writers = list(dict.fromkeys([*reply.authors, who.login]))  # submitting makes one a writer too
        chain, moved = self._others_approve(letter, chain, writers)
        if moved:
            rule += "; its only approvers wrote it: " + ", ".join(f"{role} → {above}" for role, above in moved)
        notify = self._notify(letter, chain[0], reply.id, "waiting", step=1)
        if not notify:
            raise Refused(f"no one is configured to approve as {chain[0]} for {number}", "no-approver",
                          role=chain[0], number=number)
        try:
            self.records.submit(reply.id, actor=who.login, chain=chain, rule=rule, notify=notify)
        except ReplyChanged as exc:
            raise Refused(str(exc), "reply-moved", number=number) from None
        return chain

    def _others_approve(self, letter: Letter, chain: list[str],
                        writers: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """The chain with every step someone other than the reply's writers can take, and the
        steps moved up. Nobody approves a reply they wrote, so a step whose only approvers wrote
        it (a head answering their department's letter themselves) would wait for ever: it goes
        up a level instead — head to leader, leader to top — or is left out where the chain goes
        there already. Refused when no level above has anyone else to approve."""
        written_by = {address for login in writers if (person := self.people.principal(login)) is not None
                      for address in person.emails}
        kept: list[str] = []
        moved: list[tuple[str, str]] = []
        for role in chain:
            taken = role
            while not self._approvers_besides(letter, taken, writers, written_by):
                above = ROLES[ROLES.index(taken) + 1:] if taken in ROLES else ()
                if not above:
                    raise Refused(f"nobody but the reply's writers may approve it as {role}, nor anyone above: "
                                  "let someone else write or submit it", "no-other-approver", role=role,
                                  number=letter.number)
                taken = above[0]
            if taken != role:
                moved.append((role, taken))
            if taken not in kept and (taken == role or taken not in chain):
                kept.append(taken)
        return kept, moved

    def _approvers_besides(self, letter: Letter, role: str, writers: list[str], written_by: set[str]) -> bool:
        """Has this step an approver who did not write the reply: a configured address of no
        writer's, or a person of the role (a head by their stored department) who is no writer?"""
        if set(approvers(self.config, letter, role)) - written_by:
            return True
        return role == "head" and any(
            record.login not in writers and (person := self.people.principal(record.login)) is not None
            and letter.department in person.headed for record in self.people.list())

    # -- the approvers' steps -------------------------------------------------------------
    def _check_approver(self, who: Principal, letter: Letter, reply: Reply) -> str:
        """The role this person approves now; else why not (Forbidden or Refused)."""
        number = letter.number
        if reply.status != "pending":
            raise Refused(f"the reply to {number} is {reply.status}, not waiting for approval", "not-pending",
                          number=number, status=reply.status)
        role = reply.chain[reply.step]
        if who.is_operator:
            raise Forbidden("an approval is given by a person: name them with --as", "approver-person")
        if who.login in reply.authors:
            raise Forbidden(f"{who.login} wrote this reply: someone else approves it", "own-draft")
        if may_take(self.config, who, letter, role):
            return role
        later = [r for r in reply.chain[reply.step + 1:] if may_take(self.config, who, letter, r)]
        if later:
            raise Refused(f"step {reply.step + 1} ({role}) has not approved it yet: approvals go in order",
                          "out-of-order", role=role, step=str(reply.step + 1))
        raise Forbidden(f"step {reply.step + 1} of the reply to {number} is for {role}", "not-approver",
                        role=role, number=number)

    def approve(self, who: Principal, number: str, *, comment: str = "", seen: str | None = None) -> str:
        """Approve the step waiting for this person. Returns the reply's status afterwards
        (pending: the next step waits; sent; to-post). `seen`: the reply's `stage` on the page the
        approver read; a reply that moved on since (returned and rewritten, say) is refused, never
        approved unread. None: not checked (a command names the reply as it is)."""
        return self._decide(who, number, "approved", comment, seen)

    def give_back(self, who: Principal, number: str, *, comment: str, seen: str | None = None) -> str:
        """Return the reply to its handler, saying why."""
        return self._decide(who, number, "returned", comment, seen)

    def _decide(self, who: Principal, number: str, decision: str, comment: str, seen: str | None) -> str:
        letter = self.letter_of(who, number)
        reply = self._open(letter)
        if reply is None:
            if any(r.status in ("sent", "posted") for r in self.records.replies(letter.id)):
                # A second approval of the last step (another tab, a double click) finds it gone.
                raise Refused(f"the reply to {number} was sent already", "sent-already", number=number)
            raise Refused(f"{number} has no reply waiting for approval", "no-reply", number=number)
        if seen is not None and seen != stage(reply):
            # The registry checks round and step again under the reply's lock (ReplyRecords.decide).
            raise Refused("the reply moved on meanwhile: reload it", "reply-moved", number=number)
        self._check_approver(who, letter, reply)
        comment = typed_text(comment)
        if len(comment) > MAX_COMMENT:
            raise Refused(f"a comment of at most {MAX_COMMENT} characters (this has {len(comment)})",
                          "comment-too-long", limit=str(MAX_COMMENT))
        if decision == "returned" and not comment:
            raise Refused("say what is to change", "need-comment")
        last = reply.step + 1 == len(reply.chain)
        outgoing = None
        if decision == "returned":
            notify = self._to_authors(letter, reply, "returned", comment)
        elif not last:
            notify = self._notify(letter, reply.chain[reply.step + 1], reply.id, "waiting", step=reply.step + 2)
        else:
            notify, outgoing = [], self._outgoing(letter, reply)
        try:
            return self.records.decide(reply.id, actor=who.login, round_=reply.round, position=reply.step,
                                       decision=decision, comment=comment, notify=notify, outgoing=outgoing)
        except ReplyChanged as exc:
            raise Refused(str(exc), "reply-moved", number=number) from None
        except TransitionRefused as exc:
            raise Refused(str(exc), "state", number=number, status=letter.status, action="answer") from None

    def send(self, who: Principal, number: str, *, note: str = "") -> str:
        """The registry office's step: an approved reply to a sender without an e-mail address was
        posted (recorded; the letter answered). Refused before the whole chain approved; a mailed
        reply leaves by itself when the last approver approves."""
        letter = self.letter_of(who, number)
        reply = self._open(letter)
        if reply is None:
            sent = [r for r in self.records.replies(letter.id) if r.status in ("sent", "posted")]
            if sent:
                raise Refused(f"the reply to {number} was sent already", "sent-already", number=number)
            raise Refused(f"{number} has no reply", "no-reply", number=number)
        if reply.status != "to-post":
            left = len(reply.chain) - reply.step if reply.status == "pending" else len(reply.chain) or 1
            raise Refused(f"the reply to {number} is {reply.status}: nothing is sent before every approver of its "
                          f"chain approved ({left} step(s) to go)", "chain-incomplete", number=number,
                          left=str(left))
        if not who.has("registry"):
            raise Forbidden("the registry office posts replies", "forbidden-post")
        note = note.strip()
        if len(note) > MAX_NOTE:
            raise Refused(f"a note of at most {MAX_NOTE} characters (this has {len(note)})", "note-too-long",
                          limit=str(MAX_NOTE))
        try:
            self.records.posted(reply.id, actor=who.login, note=note)
        except ReplyChanged as exc:
            raise Refused(str(exc), "reply-moved", number=number) from None
        except TransitionRefused as exc:
            raise Refused(str(exc), "state", number=number, status=letter.status, action="answer") from None
        return "posted"

    # -- queues -------------------------------------------------------------------------
    def awaiting(self, who: Principal) -> list[Awaiting]:
        """Replies whose waiting step is this person's to take."""
        if who.is_operator or not (who.emails or who.headed):
            return []
        out = []
        for waiting in self.records.waiting():
            role = waiting.chain[waiting.step]
            if who.login in waiting.authors:
                continue
            if role == "head" and waiting.department in who.headed:
                mine = True
            else:
                department = self.config.departments.get(waiting.department or "")
                pool = (department.leaders if department else []) if role == "leader" else \
                    self.config.model.replies.top_leadership if role == "top" else \
                    ([department.head] if department else [])
                mine = bool(who.emails & set(pool))
            if mine:
                out.append(Awaiting(waiting.number, waiting.department, role, waiting.step + 1, len(waiting.chain),
                                    waiting.step_since))
        return out

    # -- the reminder pass ----------------------------------------------------------------
    # -- mail -------------------------------------------------------------------------
    def _notify(self, letter: Letter, role: str, reply_id: int, about: str, **details: object) -> list[NewMail]:
        return [new_mail(self.config, "approval", address, about=about, draft=reply_id, role=role,
                         **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in details.items()})
                for address in dict.fromkeys(approvers(self.config, letter, role))]

    def _to_authors(self, letter: Letter, reply: Reply, about: str, comment: str) -> list[NewMail]:
        addresses: list[str] = []
        for login in reply.authors:
            person = self.people.principal(login)
            addresses += sorted(person.emails) if person else []
        if not addresses and letter.owner:
            addresses = [letter.owner]
        return [new_mail(self.config, "approval", a, about=about, draft=reply.id, comment=comment)
                for a in dict.fromkeys(addresses)]

    def _outgoing(self, letter: Letter, reply: Reply) -> Outgoing:
        """The reply as it leaves: a mail to the sender's address, or nothing (by post)."""
        from gateway.outbound.replies import reply_message

        address = request_address(letter)
        if not address:
            return Outgoing(None, None)
        mail = new_mail(self.config, "sender-reply", address, draft=reply.id)
        attachments = [a for a in (self.records.attachment_content(reply.id, a.id)
                                   for a in self.records.attachments(reply.id)) if a is not None]
        return Outgoing(mail, reply_message(self.config, letter, reply.text, attachments, mail))
