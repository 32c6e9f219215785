"""The queues, the letter page, its steps, attachments, previews and original."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from markupsafe import Markup
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.registry import lifecycle
from gateway.registry.replies import refuse_past_reply
from gateway.registry.store import in_register
from gateway.services.access import (ACTIONS, CLOSED_FILTERS, INPUT_REFUSALS, QUEUES, AuditRecord, Forbidden,
                                     LetterView, QueueQuery, Refused)
from gateway.web import i18n, preview, security
from gateway.web.app import Problem, Req, page
from gateway.web.i18n import N_, _

FILTERS = ("status", "category", "urgency", "channel", "department", "since", "until", "deadline_before",
           "deadline_after", "closed", "work")
SORTS = ("received", "-received", "deadline", "-deadline", "number", "-number")
# A column's first click: the newest letters first, the soonest deadlines first, numbers in order.
FIRST_SORT = {"received": "-received", "deadline": "deadline", "number": "number"}
# What a successful step says (the service's own message is English only).
DONE = {"ack": N_("Acknowledged."), "progress": N_("Marked in progress."), "answer": N_("Marked answered."),
        "close": N_("Closed."), "note": N_("Note added."), "assign": N_("Assigned."),
        "reassign": N_("Reassigned."), "hold-on": N_("Legal hold set."), "hold-off": N_("Legal hold lifted."),
        "reference": N_("Sender's reference saved.")}
MAX_PREVIEW_PAGES = 30
T = TypeVar("T")


def routes() -> list[BaseRoute]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/letters", queue, methods=["GET"]),
        Route("/letters.csv", queue_csv, methods=["GET"]),
        Route("/letters/{number}", letter, methods=["GET"]),
        Route("/letters/{number}/act", act, methods=["POST"]),
        Route("/letters/{number}/original", original, methods=["GET"]),
        Route("/letters/{number}/attachments/{position:int}", attachment, methods=["GET"]),
        Route("/letters/{number}/attachments/{position:int}/pages", attachment_pages, methods=["GET"]),
        Route("/letters/{number}/attachments/{position:int}/pages/{page:int}.png", attachment_page,
              methods=["GET"]),
    ]


def letter_url(number: str) -> str:
    return "/letters/" + quote(number, safe="")


@page()
def home(req: Req) -> Response:
    # Leaders, auditors and administrators look at the whole loop first; the others at their work.
    if req.who.has("leader", "auditor", "admin") and not req.who.has("registry") and not req.who.departments:
        return RedirectResponse("/dashboard", status_code=303)
    queues = req.web.access.queues(req.who)
    if queues:
        return RedirectResponse(f"/letters?queue={queues[0]}", status_code=303)
    if req.who.has("auditor"):
        return RedirectResponse("/audit", status_code=303)
    if req.who.has("admin"):
        return RedirectResponse("/people", status_code=303)
    return req.render("empty.html")


# Past the last page a queue shows none; beyond this one the offset would be out of SQL's range.
MAX_PAGE = 100_000


def page_number(req: Req) -> int:
    """The `page` of the query string: a whole number from 1 to MAX_PAGE (anything else, the first)."""
    try:
        return min(max(1, int(req.arg("page") or 1)), MAX_PAGE)
    except ValueError:
        return 1


PAGE_SIZES = (50, 100, 200)  # letters a page of a queue: the first the default, the last the most


def page_size(text: str) -> int:
    """A `per_page` of a query string or form: one of PAGE_SIZES (anything else, the first)."""
    try:
        size = int(text or PAGE_SIZES[0])
    except ValueError:
        return PAGE_SIZES[0]
    return size if size in PAGE_SIZES else PAGE_SIZES[0]


def day_arg(text: str, field: str) -> date | None:
    """A day of a query string or form (YYYY-MM-DD), or None when not given; 400 naming the field
    (`field`, as its form labels it) and the value otherwise."""
    try:
        day = date.fromisoformat(text) if text else None
    except ValueError:
        raise Problem(400, _("%(field)s: “%(value)s” is not a date (YYYY-MM-DD).")
                      % {"field": field, "value": text}) from None
    if day is not None and not in_register(day):
        raise Problem(400, _("%(field)s: “%(value)s” is outside the register's years (1900 to 9998).")
                      % {"field": field, "value": text})
    return day


# The filters offered as lists, each with the form's label and its values (i18n's words for them).
CHOICES = {"status": (N_("Status"), i18n.STATUS), "category": (N_("Category"), i18n.CATEGORY),
           "urgency": (N_("Urgency"), i18n.URGENCY), "channel": (N_("Channel"), i18n.CHANNEL)}


# The other filters of a queue's form, as its labels name them.
DAY_FILTERS = {"since": N_("Received from"), "until": N_("to"), "deadline_after": N_("Deadline from"),
               "deadline_before": N_("Deadline before")}


def filters_in_words(query: QueueQuery, departments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The filters of a queue in use, as (label, value) in the page's language: what a printed
    sheet of the register says it holds."""
    used: list[tuple[str, str]] = []
    for name, (title, _values) in CHOICES.items():
        if value := getattr(query, name):
            used.append((_(title), i18n.label(name, value)))
    if query.department:
        department = departments.get(query.department)
        used.append((_("Department"), department.name if department else query.department))
    for name, title in DAY_FILTERS.items():
        if day := getattr(query, name):
            used.append((_(title), day.isoformat()))
    return used


def choice_arg(req: Req, name: str) -> str | None:
    """A list filter of the query string, or None when not given; 400 naming it when it is none of
    the form's values (a list that would be empty, its form showing "any", tells nobody why)."""
    value = req.arg(name)
    label, known = CHOICES[name]
    if value and value not in known:
        raise Problem(400, _("%(field)s: there is none called “%(value)s”.") % {"field": _(label), "value": value})
    return value or None


def department_arg(req: Req) -> str | None:
    """The department filter, or None; 400 naming it when no department of that id is known."""
    value = req.arg("department")
    if value and not req.web.access.known_department(value):
        raise Problem(400, _("%(field)s: there is none called “%(value)s”.") % {"field": _("Department"),
                                                                            "value": value})
    return value or None


def _query(req: Req, default: str = "") -> QueueQuery:
    """The queue and its filters from the request's query string (`default`: the queue when none
    is named; else the person's first)."""
    queues = req.web.access.queues(req.who)
    name = req.arg("queue") or default or (queues[0] if queues else "all")
    if name not in QUEUES or name not in queues:
        raise Problem(404)
    number = page_number(req)
    sort = req.arg("sort")
    since, until = day_arg(req.arg("since"), _("Received from")), day_arg(req.arg("until"), _("Received until"))
    deadline_after = day_arg(req.arg("deadline_after"), _("Deadline from"))
    deadline_before = day_arg(req.arg("deadline_before"), _("Deadline before"))
    # Days given the wrong way round select nothing: say so, rather than list no letters.
    if since and until and since > until:
        raise Problem(400, _("Received from %(first)s to %(last)s: the first day is after the last.")
                      % {"first": since.isoformat(), "last": until.isoformat()})
    if deadline_after and deadline_before and deadline_after >= deadline_before:
        raise Problem(400, _("Deadline from %(first)s and before %(last)s: no day is in between.")
                      % {"first": deadline_after.isoformat(), "last": deadline_before.isoformat()})
    return QueueQuery(queue=name, status=choice_arg(req, "status"), category=choice_arg(req, "category"),
                      urgency=choice_arg(req, "urgency"), channel=choice_arg(req, "channel"),
                      department=department_arg(req), since=since, until=until, deadline_before=deadline_before,
                      deadline_after=deadline_after, sort=sort if sort in SORTS else "-received",
                      closed=req.arg("closed") if req.arg("closed") in CLOSED_FILTERS else None,
                      work=req.arg("work") == "1", page=number, per_page=page_size(req.arg("per_page")))


@page()
def queue(req: Req) -> Response:
    query = _query(req)
    result = req.web.access.queue(req.who, query)
    kept = {name: req.arg(name) for name in ("queue", *FILTERS) if req.arg(name)}
    kept["queue"] = query.queue
    if query.per_page != PAGE_SIZES[0]:
        kept["per_page"] = str(query.per_page)

    def link(**change: Any) -> str:
        params = {**kept, "sort": query.sort, "page": str(query.page), **{k: str(v) for k, v in change.items()}}
        return "/letters?" + urlencode({k: v for k, v in params.items() if v and not (k == "page" and v == "1")})

    def sort_link(column: str) -> tuple[str, str]:
        """The link that sorts by `column` (reversing the current order) and the arrow shown: ▲
        ascending, ▼ descending."""
        if query.sort == column:
            return link(sort="-" + column, page=1), "▲"
        if query.sort == "-" + column:
            return link(sort=column, page=1), "▼"
        return link(sort=FIRST_SORT[column], page=1), ""

    from gateway.web.routes import work

    now = datetime.now(timezone.utc)
    return req.render("letters.html", result=result, query=query, filters=kept, link=link, sort_link=sort_link,
                      now=now, departments=req.web.config.departments, statuses=i18n.STATUS,
                      categories=i18n.CATEGORY, urgencies=i18n.URGENCY, channels=i18n.CHANNEL,
                      csv_link="/letters.csv?" + urlencode({**kept, "sort": query.sort}), letter_url=letter_url,
                      filters_in_words=lambda: filters_in_words(query, req.web.config.departments),
                      page_sizes=PAGE_SIZES,
                      **work.queue_context(req, query, result))


@page()
def queue_csv(req: Req) -> Response:
    query = _query(req)
    text = req.web.access.export_csv(req.who, query, address=req.address)
    # Streamed: every row of the queue, however many, without holding them all.
    body = itertools.chain(("\ufeff",), text)  # the byte order mark tells spreadsheets it is UTF-8
    return StreamingResponse((piece.encode("utf-8") for piece in body), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": security.content_disposition(f"letters-{query.queue}.csv"),
                                      "Cache-Control": "no-store"})


STEP_CARD = frozenset({"ack", "progress", "answer", "close", "note", "assign", "reassign", "hold"})  # letter.html


def _view(req: Req, number: str) -> LetterView:
    view = req.web.access.letter(req.who, number, address=req.address)
    if view is None:
        raise Problem(404)
    return view


def _letter_page(req: Req, view: LetterView, *, status: int = 200, message: str = "", error: str = "",
                 failed_action: str = "", kept: Mapping[str, str] | None = None) -> Response:
    access, who, number = req.web.access, req.who, view.letter.number
    # A step a reply in hand would refuse is not offered: the page says why instead.
    held = held_by_reply(req, view.letter, view.rights.actions | {"incomplete"})
    rights = replace(view.rights, actions=view.rights.actions - held)
    # The Steps card only with a step in it, or a step of this person's a reply holds back: an
    # empty card, or a note about steps they never had, tells a reader nothing.
    steps_card = bool(rights.actions & STEP_CARD) or bool(held & view.rights.actions)
    assignees = access.assignees(who, number) if "assign" in rights.actions else []
    letter = view.letter
    events = sorted(letter.events, key=lambda e: (e.at, e.id)) if rights.content else []
    return req.render(
        "letter.html", status, view=view, letter=letter, entry=access.entry(letter), rights=rights,
        message=message, error=error, done=req.done(), reply_done=req.done("reply"),
        downloadable=access.downloadable(who, letter),
        failed_action=failed_action, kept=kept or {}, events=events, reply_holds=held,
        held_steps=held & view.rights.actions, steps_card=steps_card,
        readers=_readers(access.readers(who, number)) if rights.content else [],
        outbox=access.outbox(who, number) if rights.content else [],
        ocr_reading=access.ocr_reading(who, number) if rights.content else None,
        assignees=assignees, departments=req.web.config.departments, actions=ACTIONS,
        previewable=lambda a: preview.kind(a.detected_type) is not None,
        letter_url=letter_url(number), trace=letter.classification if rights.content else None,
        # Sanitised by Access (nh3, remote content blocked); safe to place in the page as it is.
        formatted=Markup(html) if rights.content and (html := access.formatted(who, number)) else None)


# The steps that move a letter where a reply waiting for approval or the post could no longer answer it.
REPLY_BOUND = frozenset({"ack", "progress", "answer", "close", "reassign", "incomplete"})


def held_by_reply(req: Req, letter: Any, actions: frozenset[str] | set[str]) -> frozenset[str]:
    """Which of `actions` a reply in hand would refuse now: the registry's own rule
    (refuse_past_reply), asked without the letter's lock; the step itself asks it again under it."""
    held = set()
    with req.web.registry.read() as conn:
        for action in sorted(REPLY_BOUND & set(actions)):
            try:
                refuse_past_reply(conn, letter.id, letter.number, action)
            except lifecycle.ReplyInHand:
                held.add(action)
    return frozenset(held)


@dataclass
class Reader:
    actor: str
    at: datetime
    address: str
    count: int


def _readers(rows: list[AuditRecord]) -> list[Reader]:
    """Who read the letter's content, one line a person: the latest read and how many (the audit
    log has every row)."""
    readers: dict[str, Reader] = {}
    for row in rows:  # newest first
        if row.actor in readers:
            readers[row.actor].count += 1
        else:
            readers[row.actor] = Reader(row.actor, row.at, row.address, 1)
    return list(readers.values())


@page()
def letter(req: Req) -> Response:
    view = _view(req, req.request.path_params["number"])
    done = req.done()
    return _letter_page(req, view, message=i18n.gettext(DONE[done]) if done in DONE else "")


def letter_step(req: Req, number: str, action: str, step: Callable[[], T], *,
                input_refusals: frozenset[str] = frozenset(), words: Mapping[str, str] | None = None,
                refused_unseen: bool = False, kept: Mapping[str, str] | None = None) -> T | Response:
    """Run one step on a letter for a web form: what the step returns, or the page to answer with.

    An unknown letter is 404. A refused step re-renders the letter page with the reason where
    the form was: 403 when the person may not, 400 for bad input (`input_refusals`), 409 when the
    letter is not in a state for it. Someone who cannot see the letter gets 404 — or, with
    `refused_unseen` (an approver who sees only the letter's reply), the bare refusal. `kept`: what
    the person wrote, shown again in the form instead of being lost with the refusal."""
    try:
        return step()
    except LookupError:
        raise Problem(404) from None
    except Refused as exc:
        reason = i18n.refusal(exc, words)
        forbidden = isinstance(exc, Forbidden)
        # The page shown again with the reason is a read of the letter like any other: audited.
        view = req.web.access.letter(req.who, number, address=req.address)
        if view is None:
            if refused_unseen:
                raise Problem(403 if forbidden else 409, reason) from None
            raise Problem(404) from None
        status = 403 if forbidden else 400 if exc.key in input_refusals else 409
        return _letter_page(req, view, status=status, failed_action=action, kept=kept,
                            error=_("Not done: %(reason)s") % {"reason": reason})


@page()
def act(req: Req) -> Response:
    number = req.request.path_params["number"]
    action = req.field("action")
    hold_on = {"on": True, "off": False}.get(req.field("on"))
    refused = letter_step(req, number, action, lambda: req.web.access.act(
        req.who, number, action, text=req.field("text"), department=req.field("department") or None,
        assignee=req.field("assignee") or None, on=hold_on, address=req.address,
        as_seen=req.field("seen") if "seen" in req.form else None,
        as_owner=req.field("owner_seen") if "owner_seen" in req.form else None),
        input_refusals=INPUT_REFUSALS,
        kept={name: req.field(name) for name in ("text", "department", "assignee", "on")})
    if isinstance(refused, Response):
        return refused
    done = action if action != "hold" else ("hold-on" if hold_on else "hold-off")
    return RedirectResponse(req.done_url(letter_url(number), done), status_code=303)


@page()
def original(req: Req) -> Response:
    found = req.web.access.original(req.who, req.request.path_params["number"], address=req.address)
    if found is None:
        raise Problem(404)
    name, data = found
    media = "message/rfc822" if name.endswith(".eml") else "application/octet-stream"
    return _download(name, data, media)


def _attachment(req: Req, purpose: str = "download") -> tuple[str, bytes, str]:
    params = req.request.path_params
    found = req.web.access.attachment(req.who, params["number"], params["position"], address=req.address,
                                      purpose=purpose)
    if found is None:
        raise Problem(404)
    return found


def _download(name: str, data: bytes, media: str) -> Response:
    # Never shown in the browser: HTML, SVG and the like would run in our origin.
    return Response(data, media_type=media or "application/octet-stream",
                    headers={"Content-Disposition": security.content_disposition(name), "Cache-Control": "no-store",
                             "Content-Security-Policy": "default-src 'none'; sandbox"})


@page()
def attachment(req: Req) -> Response:
    name, data, detected = _attachment(req)
    return _download(name, data, detected)


@page()
def attachment_pages(req: Req) -> Response:
    number = req.request.path_params["number"]
    position = req.request.path_params["position"]
    view = _view(req, number)
    name, data, detected = _attachment(req, "preview")
    try:
        count = preview.page_count(data, detected)
        error = ""
    except preview.PreviewError as exc:
        count, error = 0, i18n.preview_problem(exc)
    return req.render("pages.html", letter=view.letter, rights=view.rights, name=name, count=count,
                      downloadable=req.web.access.downloadable(req.who, view.letter),
                      shown=min(count, MAX_PREVIEW_PAGES), error=error, position=position,
                      letter_url=letter_url(number))


@page()
def attachment_page(req: Req) -> Response:
    name, data, detected = _attachment(req, "preview")
    try:
        png = preview.render_page(data, detected, req.request.path_params["page"])
    except preview.PreviewError as exc:
        raise Problem(404 if exc.key == "no-page" else 422, i18n.preview_problem(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
