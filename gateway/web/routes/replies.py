"""Replies under approval on the letter page, and the queue of replies awaiting one's approval
(gateway.services.replies decides who may do what; the pages show its answer)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.registry.models import Letter
from gateway.registry.replies import NewReplyAttachment, ReplyRecords
from gateway.services.people import Principal
from gateway.services.replies import INPUT_REFUSALS, Awaiting, ReplyPanel, Replies, draft_started_from, stage
from gateway.web import i18n, security
from gateway.web.app import LARGEST_ID, Problem, Req, Web, page
from gateway.web.i18n import N_
from gateway.web.routes.letters import letter_step, letter_url

# This module's events, mail and refusals among the register's labels.
i18n.EVENT.update({
    "reply-drafted": N_("reply drafted"), "reply-submitted": N_("reply submitted for approval"),
    "reply-approved": N_("reply approved"), "reply-returned": N_("reply returned"),
    "reply-sent": N_("reply sent"), "reply-to-post": N_("reply to be posted"),
    "reply-reminded": N_("approver reminded"), "approval-sent": N_("approval notice sent"),
    "sender-reply-sent": N_("reply delivered to the relay"),
})
i18n.MAIL_KIND.update({"sender-reply": N_("reply to the sender"), "approval": N_("approval notice")})
i18n.REFUSAL.update({
    "forbidden-reply": N_("only the people of department %(department)s may reply to %(number)s"),
    "forbidden-reply-content": N_("%(number)s is confidential: only those who may read it reply to it"),
    "reply-state": N_("%(number)s is %(status)s: a reply is drafted while it is routed, acknowledged or in progress"),
    "reply-too-long": N_("a reply of at most %(limit)s characters"),
    "reply-locked": N_("the reply is %(status)s: it can no longer be changed"),
    "too-many-attachments": N_("at most %(limit)s attachments: %(name)s is one too many"),
    "empty-attachment": N_("%(name)s is empty (0 bytes): choose the file again"),
    "attachment-too-large": N_("%(name)s is %(size)s, more than the %(limit)s a reply's attachments may come to"),
    "attachments-too-large": N_("with %(name)s the attachments come to %(size)s, more than the %(limit)s allowed"),
    "attachment-name-twice": N_("the reply already has an attachment named %(name)s: remove one or rename it"),
    "reply-mail-too-large": N_("with %(name)s the reply would be %(size)s as mail (attachments grow by a third when "
                               "encoded), more than the %(limit)s the outgoing mail server takes"),
    "reply-moved": N_("the reply moved on meanwhile: reload the page"),
    "draft-changed": N_("someone saved the draft meanwhile: your text is kept below, their version beside it; "
                        "merge them and save again"),
    "no-reply": N_("%(number)s has no reply"),
    "need-reply-text": N_("write the reply first"),
    "no-approver": N_("no one is configured to approve as %(role)s"),
    "no-other-approver": N_("nobody but the reply's writers may approve it as %(role)s, nor anyone above: "
                            "let someone else write or submit it"),
    "not-pending": N_("the reply is %(status)s, not waiting for approval"),
    "approver-person": N_("an approval is given by a person"),
    "own-draft": N_("you wrote this reply: someone else approves it"),
    "out-of-order": N_("step %(step)s (%(role)s) has not approved it yet: approvals go in order"),
    "not-approver": N_("this step is for %(role)s"),
    "need-comment": N_("say what is to change"),
    "comment-too-long": N_("a comment of at most %(limit)s characters"),
    "note-too-long": N_("a note of where it was posted of at most %(limit)s characters"),
    "sent-already": N_("the reply was sent already"),
    "chain-incomplete": N_("nothing is sent before every approver of its chain approved (%(left)s step(s) to go)"),
    "forbidden-post": N_("the registry office posts replies"),
})
ROLE = {"head": N_("department head"), "leader": N_("leader in charge"), "top": N_("top leadership")}
STATUS = {"draft": N_("draft"), "pending": N_("awaiting approval"), "returned": N_("returned"), "sent": N_("sent"),
          "to-post": N_("to be posted"), "posted": N_("posted")}
STEP = {"approved": N_("approved"), "returned": N_("returned"), "waiting": N_("waiting"), "later": N_("not yet")}
# A reply's status and an approver's role in a refusal are worded as the reply panel words them.
i18n.KINDS.update({"reply_status": STATUS, "reply_role": ROLE})
i18n.PARAM_KINDS.update({"reply-locked": {"status": "reply_status"}, "not-pending": {"status": "reply_status"},
                         **{key: {"role": "reply_role"}
                            for key in ("no-approver", "no-other-approver", "out-of-order", "not-approver")}})
DONE = {"saved": N_("Draft saved."), "submitted": N_("Submitted for approval."), "approved": N_("Approved."),
        "returned": N_("Returned to the handler."), "sent": N_("Approved and sent to the sender."),
        "to-post": N_("Approved: the registry office posts it."), "posted": N_("Recorded as posted.")}


def routes() -> list[BaseRoute]:
    return [
        Route("/approvals", queue, methods=["GET"]),
        Route("/letters/{number}/reply", save, methods=["POST"]),
        Route("/letters/{number}/reply/approve", approve, methods=["POST"]),
        Route("/letters/{number}/reply/return", give_back, methods=["POST"]),
        Route("/letters/{number}/reply/send", send, methods=["POST"]),
        Route("/letters/{number}/reply/{reply:int}/attachments/{attachment:int}", attachment, methods=["GET"]),
    ]


def template_globals() -> dict[str, Any]:
    """What the letter page and the sidebar ask of this module."""
    return {"reply_panel": panel, "approvals_waiting": waiting_count, "reply_label": reply_label,
            "i18n_refusal": i18n.refusal, "reply_stage": stage, "draft_started_from": draft_started_from}


def panel(web: Web, who: Principal, letter: Letter) -> ReplyPanel:
    return Replies(web.config, web.registry).panel(who, letter)


def waiting_count(web: Web, who: Principal) -> int:
    return len(Replies(web.config, web.registry).awaiting(who))


def reply_label(kind: str, value: str) -> str:
    known = {"role": ROLE, "status": STATUS, "step": STEP}[kind].get(value)
    return i18n.gettext(known) if known else value


def _done(req: Req, number: str, done: str) -> Response:
    return RedirectResponse(req.done_url(letter_url(number), done, name="reply", anchor="reply"), status_code=303)


def _uploads(req: Req) -> list[NewReplyAttachment]:
    out = []
    for item in req.form.getlist("files"):
        if isinstance(item, UploadFile) and item.filename:
            content = item.file.read()
            out.append(NewReplyAttachment(item.filename, item.content_type or "application/octet-stream", content))
    return out


@page()
def save(req: Req) -> Response:
    number = req.request.path_params["number"]
    replies = Replies(req.web.config, req.web.registry)
    remove = [int(v) for v in req.fields("remove") if v.isascii() and v.isdigit() and int(v) <= LARGEST_ID]
    submit = req.field("action") == "submit"

    def save_and_submit() -> None:
        replies.draft(req.who, number, text=req.field("text"), attach=_uploads(req), remove=remove,
                      started_from=req.field("draft_of") if "draft_of" in req.form else None)
        if submit:
            replies.submit(req.who, number)

    refused = letter_step(req, number, "reply", save_and_submit, input_refusals=INPUT_REFUSALS, refused_unseen=True,
                          kept={"text": req.field("text")})
    if isinstance(refused, Response):
        return refused
    return _done(req, number, "submitted" if submit else "saved")


def _decide(req: Req, decision: str) -> Response:
    number = req.request.path_params["number"]
    replies = Replies(req.web.config, req.web.registry)
    decide = replies.approve if decision == "approve" else replies.give_back
    seen = req.field("stage") if "stage" in req.form else None
    status = letter_step(req, number, decision, lambda: decide(req.who, number, comment=req.field("comment"),
                                                               seen=seen),
                         input_refusals=INPUT_REFUSALS, refused_unseen=True, kept={"comment": req.field("comment")})
    if isinstance(status, Response):
        return status
    done = {"pending": "approved", "returned": "returned"}.get(status, status)
    if req.web.access.visible(req.who, number) is None:  # no letter page for them: back to their queue
        return RedirectResponse(req.done_url("/approvals", done), status_code=303)
    return _done(req, number, done)


@page()
def approve(req: Req) -> Response:
    return _decide(req, "approve")


@page()
def give_back(req: Req) -> Response:
    return _decide(req, "return")


@page()
def send(req: Req) -> Response:
    number = req.request.path_params["number"]
    refused = letter_step(req, number, "send", lambda: Replies(req.web.config, req.web.registry).send(
        req.who, number, note=req.field("note")), input_refusals=INPUT_REFUSALS, refused_unseen=True,
        kept={"note": req.field("note")})
    if isinstance(refused, Response):
        return refused
    return _done(req, number, "posted")


@page()
def attachment(req: Req) -> Response:
    params = req.request.path_params
    found = Replies(req.web.config, req.web.registry).attachment(req.who, params["number"], params["reply"],
                                                                 params["attachment"], address=req.address)
    if found is None:
        raise Problem(404)
    # Never shown in the browser: HTML, SVG and the like would run in our origin.
    return Response(found.content, media_type=found.content_type or "application/octet-stream",
                    headers={"Content-Disposition": security.content_disposition(found.filename),
                             "Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'; sandbox"})


@dataclass(frozen=True)
class Row:
    """A reply waiting for this person's approval, with its letter for the list: the subject only
    where the queues would show it."""

    waiting: Awaiting
    letter: Letter
    content: bool
    drafted_by: str | None


SOON = timedelta(days=1)  # a deadline this close is shown as pressing


@page()
def queue(req: Req) -> Response:
    web = req.web
    awaiting = Replies(web.config, web.registry).awaiting(req.who)
    authors = {w.number: w.authors for w in ReplyRecords(web.registry).waiting()}
    letters = web.registry.letters_numbered([a.number for a in awaiting])  # one query, not one a row
    readable = web.access.content_ids(req.who, list(letters.values()))
    rows = [Row(a, letters[a.number], letters[a.number].id in readable, next(iter(authors.get(a.number) or []), None))
            for a in awaiting if a.number in letters]
    done = req.done()
    now = datetime.now(timezone.utc)
    return req.render("replies/queue.html", rows=rows, letter_url=letter_url, departments=web.config.departments,
                      now=now, soon=now + SOON, message=i18n.gettext(DONE[done]) if done in DONE else "")
