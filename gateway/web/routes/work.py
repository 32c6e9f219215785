"""Daily work at volume: search, triage, bulk steps, saved views.

Access is the services' answer here too: search and queues return only what the person may see
(and say whose subjects they may read), and every step — one letter settled from the triage page
or fifty acknowledged at once — goes through Access.act, which checks each letter on its own.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.access import (INPUT_REFUSALS, Forbidden, QueuePage, QueueQuery, Refused, query_from_dict,
                                     query_to_dict)
from gateway.web import i18n
from gateway.web.app import Problem, Req, page
from gateway.web.i18n import N_, _
from gateway.web.routes.letters import DONE, FILTERS, PAGE_SIZES, _query, letter_url, page_number, page_size

BULK_ACTIONS = ("ack", "assign", "reassign", "tag")
BULK_DONE = {**DONE, "tag": N_("Tag added.")}
BULK_INPUT_REFUSALS = INPUT_REFUSALS | {"too-many"}
# The triage reasons the classifier gives (gateway/stages/classify/rules.py), in the page's language.
TRIAGE_REASON = {"no rule matched": N_("no rule matched"), "no rule set a department": N_("no rule set a department")}


def routes() -> list[BaseRoute]:
    return [
        Route("/search", search, methods=["GET"]),
        Route("/triage", triage, methods=["GET"]),
        Route("/triage", settle, methods=["POST"]),
        Route("/letters/bulk", bulk, methods=["POST"]),
        Route("/views", save_view, methods=["POST"]),
        Route("/views/{id:int}/delete", delete_view, methods=["POST"]),
    ]


def list_url(query: QueueQuery) -> str:
    """The queue page of these filters, sort and page size (the default size left out, as the
    queue page's own links do)."""
    return "/letters?" + urlencode({k: str(v) for k, v in query_to_dict(query).items()
                                    if not (k == "per_page" and v == PAGE_SIZES[0])})


def view_url(query: QueueQuery, view_id: int) -> str:
    """The queue page a saved view opens: its filters and sort, and which view it is."""
    return list_url(query) + "&" + urlencode({"view": str(view_id)})


def local_path(value: str, fallback: str) -> str:
    """Where to go back to: only a path on this site."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else fallback


def _department_name(req: Req, department: str | None) -> str:
    known = req.web.config.departments.get(department or "")
    return known.name if known else (department or "—")


# -- the queue page's bulk selection and saved views (context for letters.html) ----------------
def queue_context(req: Req, query: QueueQuery, result: QueuePage) -> dict[str, Any]:
    """What the queue page needs for selecting letters, acting on them at once and saving its
    filters as a view. The bulk bar lists only the steps the person's roles can ever take (the
    service still checks each letter)."""
    who = req.who
    steps = [a for a in BULK_ACTIONS
             if (a == "ack" and who.departments) or (a in ("assign", "reassign") and (who.departments or who.has(
                 "registry"))) or (a == "tag" and (who.departments or who.has("registry", "leader")))]
    # People of the departments on this page, for "assign" (the service checks each letter's department).
    assignees: dict[str, str] = {}
    if "assign" in steps:
        seen: set[str] = set()
        for row in result.rows:
            if row.department and row.department not in seen:
                seen.add(row.department)
                for person in req.web.access.assignees(who, row.number):
                    assignees.setdefault(person.login, person.name)
    views = req.web.access.views(who)
    current = next((v for v in views if str(v.id) == req.arg("view")), None)
    back = req.request.url.path + (f"?{req.request.url.query}" if req.request.url.query else "")
    params = {k: v for k, v in req.request.query_params.items() if k != "view"}
    return {"bulk_actions": steps, "assignees": sorted(assignees.items(), key=lambda p: p[1]), "back": back,
            "current_view": current, "unsaved": "/letters?" + urlencode(params)}


# -- search ----------------------------------------------------------------------------------------
@page()
def search(req: Req) -> Response:
    text = req.arg("q")
    query = _query(req, default="all")
    result = req.web.access.search(req.who, text, query, address=req.address) if text else None
    kept = {name: req.arg(name) for name in FILTERS if req.arg(name)}

    def link(**change: Any) -> str:
        params = {"q": text, "queue": query.queue, **kept, "page": str(query.page),
                  **{k: str(v) for k, v in change.items()}}
        return "/search?" + urlencode({k: v for k, v in params.items() if v and not (k == "page" and v == "1")})

    return req.render("work/search.html", text=text, result=result, query=query, filters=kept, link=link,
                      search_queues=req.web.access.queues(req.who), now=datetime.now(timezone.utc),
                      departments=req.web.config.departments, statuses=i18n.STATUS, categories=i18n.CATEGORY,
                      urgencies=i18n.URGENCY, channels=i18n.CHANNEL, letter_url=letter_url)


# -- triage ------------------------------------------------------------------------------------------
def _triage_page(req: Req, *, status: int = 200, message: str = "", error: str = "", failed: str = "") -> Response:
    who = req.who
    if "triage" not in req.web.access.queues(who):
        raise Problem(404)
    result = req.web.access.queue(who, QueueQuery(queue="triage", sort="received", page=page_number(req)))
    items = []
    for letter in result.rows:
        rights = req.web.access.rights(who, letter)
        trace = (letter.classification or {}) if letter.id in result.content else {}
        triage = (letter.classification or {}).get("triage") or {}
        reason = triage.get("reason", "")
        refusal = rights.refusal("reassign")
        content = letter.id in result.content
        items.append({
            "letter": letter, "content": content,
            # Likely departments come from the letter's words too: for those who may read it.
            "candidates": [c for c in triage.get("candidates", []) if c in req.web.config.departments and content],
            "reason": i18n.gettext(TRIAGE_REASON[reason]) if reason in TRIAGE_REASON else reason,
            "matched": trace.get("matched", []),
            "refusal": i18n.refusal(refusal) if refusal is not None else "",
        })
    return req.render("work/triage.html", status, result=result, items=items, message=message, error=error,
                      failed=failed, departments=req.web.config.departments, letter_url=letter_url,
                      triage_link=lambda page: f"/triage?page={page}")


@page()
def triage(req: Req) -> Response:
    done, to = req.arg("done"), req.arg("to")
    # Said only of a letter the person sees and that is with that department: the query string is
    # anyone's to write, and a link must not put words of its own on the register's page.
    letter = req.web.access.visible(req.who, done) if done else None
    message = ""
    if letter is not None and letter.department == to:
        message = _("%(number)s sent to %(department)s.") % {"number": letter.number,
                                                              "department": _department_name(req, to)}
    return _triage_page(req, message=message)


@page()
def settle(req: Req) -> Response:
    """Send a letter from triage to a department: the department's button, or the one chosen."""
    number = req.field("number")
    department = req.field("department") or req.field("other")
    try:
        req.web.access.act(req.who, number, "reassign", department=department or None,
                           text=req.field("reason") or _("Settled on the triage page"), address=req.address,
                           as_seen=req.field("seen"))
    except LookupError:
        raise Problem(404) from None
    except Refused as exc:
        return _triage_page(req, status=403 if isinstance(exc, Forbidden) else 409, failed=number,
                            error=_("%(number)s not sent: %(reason)s") % {"number": number,
                                                                          "reason": i18n.refusal(exc)})
    return RedirectResponse("/triage?" + urlencode({"done": number, "to": department}), status_code=303)


# -- bulk steps ----------------------------------------------------------------------------------------
@page()
def bulk(req: Req) -> Response:
    action = req.field("action")
    back = local_path(req.field("back"), "/letters")
    numbers = req.fields("number")
    if action not in BULK_ACTIONS:
        return req.render("work/bulk.html", 400, results=[], action="", back=back, target="",
                          error=_("Choose what to do with the selected letters."))
    if not numbers:
        return req.render("work/bulk.html", 400, results=[], action=action, back=back, target="",
                          error=_("No letters selected: tick the boxes of the letters first."))
    try:
        results = req.web.access.bulk(req.who, numbers, action, text=req.field("text"),
                                      department=req.field("department") or None,
                                      assignee=req.field("assignee") or None, address=req.address,
                                      seen={n.strip(): req.field(f"seen-{n}") for n in numbers
                                            if f"seen-{n}" in req.form})
    except Refused as exc:
        # A field missing or naming nothing, or too many letters: the form's fault (400), not the letters'.
        return req.render("work/bulk.html", 400 if exc.key in BULK_INPUT_REFUSALS else 409, results=[],
                          action=action, back=back, target="",
                          error=_("Not done: %(reason)s") % {"reason": i18n.refusal(exc)})
    rows = [{"number": r.number, "done": r.done,
             "message": i18n.gettext(BULK_DONE[action]) if r.done
             else (i18n.refusal(r.refusal) if r.refusal is not None else r.message)} for r in results]
    done = sum(1 for r in results if r.done)
    return req.render("work/bulk.html", results=rows, action=action, back=back, done=done,
                      refused=len(results) - done, letter_url=letter_url, error="",
                      target=_department_name(req, req.field("department")) if action == "reassign" else "")


# -- saved views ----------------------------------------------------------------------------------------
@page()
def save_view(req: Req) -> Response:
    """Save the queue's filters, sort and page size (the hidden fields of the queue page's form)
    under a name."""
    queues = req.web.access.queues(req.who)
    name = req.field("queue")
    if name not in queues:
        raise Problem(404)
    values = {k: req.field(k) for k in ("status", "category", "urgency", "channel", "department", "since", "until",
                                         "deadline_before", "deadline_after", "closed", "work", "sort")}
    query = replace(query_from_dict({"queue": name, **{k: v for k, v in values.items() if v}}),
                    per_page=page_size(req.field("per_page")))
    try:
        view_id = req.web.access.save_view(req.who, req.field("name"), query)
    except Refused as exc:
        # A name it cannot take is bad input (the form's `required` lets spaces through): back to the
        # list as it was filtered, to name it again.
        raise Problem(400 if exc.key == "view-name" else 409,
                      _("The view was not saved: %(reason)s") % {"reason": i18n.refusal(exc)},
                      back=list_url(query)) from None
    return RedirectResponse(view_url(query, view_id), status_code=303)


@page()
def delete_view(req: Req) -> Response:
    if not req.web.access.delete_view(req.who, req.request.path_params["id"]):
        raise Problem(404)
    return RedirectResponse(local_path(req.field("back"), "/letters"), status_code=303)
