"""Registering a paper letter (post, courier, front desk): the registry office's form.

The service (gateway/services/paper.py) checks, spools and registers; this page asks and answers.
A refused form comes back with everything typed, and the scans it carried are kept on the
server under the form's token, so that nothing has to be chosen again.
"""
from __future__ import annotations

import re
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.services.paper import CHANNELS, FieldError, PaperLetter, PaperRefused, Scan, form_prefix, \
    parse_received, register_paper
from gateway.spool import Spool, SpoolError
from gateway.stages.normalise.filenames import safe_filename
from gateway.web import i18n
from gateway.web.app import Req, page
from gateway.web.i18n import N_, _

TEXT_FIELDS = ("channel", "sender_name", "organisation", "address", "phone", "email", "received_at", "subject",
               "reference", "note")
LABELS = {"channel": N_("Received by"), "sender_name": N_("Sender"), "organisation": N_("Organisation"),
          "address": N_("Postal address"), "phone": N_("Telephone"), "email": N_("E-mail address"),
          "received_at": N_("Received at"), "subject": N_("Subject"), "reference": N_("Sender's reference"),
          "note": N_("Note"), "scans": N_("Scans")}
# The service's messages (English, with parameters), for the catalogue.
MESSAGES = (N_("choose how it came: post, courier or front desk"), N_("the sender's name is needed"),
            N_("at most %(limit)s characters"), N_("“%(value)s” is not an e-mail address"),
            N_("a telephone number has digits, spaces and + ( ) - only"),
            N_("the time it was received cannot be in the future"),
            N_("“%(value)s” is not a date and time such as 2026-11-22 09:30"),
            N_("add the scans of the letter (PDF, TIFF, JPEG or PNG)"), N_("at most %(limit)s files"),
            N_("the files together exceed %(limit)s MiB"), N_("%(reason)s"))
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ITEM = re.compile(r"[0-9]{20}-[0-9a-f]{8}")  # a spool item's id
KEEP_SECONDS = 24 * 3600  # scans of a form never sent again are dropped after a day


def routes() -> list[BaseRoute]:
    return [Route("/paper", form, methods=["GET"]), Route("/paper", register, methods=["POST"])]


@page(role="registry")
def form(req: Req) -> Response:
    now = datetime.now(req.web.tz).strftime("%Y-%m-%dT%H:%M")
    values = {name: "" for name in TEXT_FIELDS} | {"channel": "post", "received_at": now}
    return _page(req, values, {}, secrets.token_urlsafe(18), [])


@page(role="registry")
def register(req: Req) -> Response:
    values = {name: req.field(name) for name in TEXT_FIELDS}
    token = req.field("token")
    if not _TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(18)
    staged = _staging(req, token)
    # A kept scan's name is checked before the disk is asked: a crafted one may be no file name.
    kept = [name for name in req.fields("kept") if name == safe_filename(name) and (staged / name).is_file()]
    uploads = [u for u in req.form.getlist("scans") if isinstance(u, UploadFile) and u.filename]
    if req.fields("kept") and not kept and not uploads:
        # The scans this form kept are gone: the same form, sent twice, was registered by the
        # first request (which removed them). Say so, rather than ask for the scans again.
        number = req.web.registry.number_by_intake_key(form_prefix(token), prefix=True)
        if number:
            return RedirectResponse("/paper?" + urlencode({"registered": number, "result": "known"}),
                                    status_code=303)
    placed = [(_position(name), Scan(name.partition("-")[2], (staged / name).read_bytes())) for name in kept]
    # The files make one letter in the order given: a file sent again for a refused one goes back
    # where that one was, into the places no scan kept on the server holds (checked or not), in
    # order; further files follow the last.
    held = {_position(p.name) for p in staged.iterdir()} if staged.is_dir() else set()
    end = max(held, default=-1) + 1
    free = iter([n for n in range(end) if n not in held] + list(range(end, end + len(uploads))))
    placed += [(next(free), Scan(str(upload.filename), upload.file.read())) for upload in uploads]
    placed.sort(key=lambda pair: pair[0])
    scans = [scan for _, scan in placed]
    errors: list[FieldError] = []
    received_at = None
    if values["received_at"]:
        try:
            received_at = parse_received(values["received_at"], req.web.tz)
        except PaperRefused as refused:
            errors += refused.errors
    letter = PaperLetter(channel=values["channel"], sender_name=values["sender_name"], scans=scans,
                         organisation=values["organisation"], address=values["address"], phone=values["phone"],
                         email=values["email"], subject=values["subject"], note=values["note"],
                         received_at=received_at, reference=values["reference"])
    from gateway.daemon.pipeline import Pipeline

    config = req.web.config
    spool = Spool(config.spool_dir, config.message_dir, max_attempts=config.model.spool.max_attempts)
    try:
        if errors:
            raise PaperRefused(errors)
        done = register_paper(config, spool, Pipeline(config, spool, req.web.registry), letter, by=req.who.login,
                              intake="web", form_token=token)
    except PaperRefused as refused:
        return _page(req, values, _by_field(refused.errors), token, _stage(staged, placed, refused.errors), 400)
    except SpoolError as exc:
        message = _("The spool cannot take the letter now (%(reason)s). Nothing was registered; try again.") \
            % {"reason": str(exc)}
        return _page(req, values, {"": [message]}, token, _stage(staged, placed, []), 503)
    shutil.rmtree(staged, ignore_errors=True)
    if done.number:
        return RedirectResponse("/paper?" + urlencode({"registered": done.number, "result": done.result}),
                                status_code=303)
    if done.result == "released":
        return RedirectResponse("/paper?" + urlencode({"spooled": done.item_id}), status_code=303)
    message = _("The scans were received (item %(item)s) but could not be registered: %(reason)s") \
        % {"item": done.item_id, "reason": done.reason or done.result}
    return _page(req, values, {"": [message]}, secrets.token_urlsafe(18), [], 500)


def _page(req: Req, values: dict[str, str], errors: dict[str, list[str]], token: str, kept: list[str],
          status: int = 200) -> Response:
    registered, spooled = _outcome(req)
    return req.render("paper/register.html", status, values=values, errors=errors, token=token, kept=kept,
                      channels=CHANNELS, labels={k: _(v) for k, v in LABELS.items()},
                      registered=registered, again=req.arg("result") == "known", spooled=spooled)


def _outcome(req: Req) -> tuple[str, str]:
    """(the letter registered, the spool item waiting) that the address says the last sending
    gave, each only if the register or the spool says so: a link is anyone's to write, and the
    register's page does not repeat what it says. An item registered since shows as its letter."""
    registered, spooled = req.arg("registered"), req.arg("spooled")
    if spooled:
        if not _ITEM.fullmatch(spooled):
            return "", ""
        registered = req.web.registry.number_by_intake_key(f"spool:{spooled}") or ""
        if not registered:
            config = req.web.config
            return "", spooled if Spool(config.spool_dir, config.message_dir).holds(spooled) else ""
    if registered and req.web.access.visible(req.who, registered) is None:
        return "", ""
    return registered, ""


def _by_field(errors: list[FieldError]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for error in errors:
        params: dict[str, Any] = error.params
        out.setdefault(error.field, []).append(i18n.gettext(error.message) % params if params
                                               else i18n.gettext(error.message))
    return out


def _staging(req: Req, token: str) -> Path:
    root = req.web.config.state_dir / "paper-forms"
    _sweep(root)
    return root / token


def _position(name: str) -> int:
    """A kept scan's place among the form's files: its name's "NN-" (_stage)."""
    head = name.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _stage(staged: Path, scans: list[tuple[int, Scan]], errors: list[FieldError]) -> list[str]:
    """Keep a refused form's scans (the readable ones), each with its place among the files, until
    it is sent again; their names. A refused file leaves its place free for the one sent again."""
    if any(e.field == "scans" for e in errors):
        bad = {str(e) for e in errors if e.field == "scans"}
        scans = [(n, s) for n, s in scans if not any(m.startswith(f"{s.name}:") for m in bad)]
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True, exist_ok=True)
    names = []
    for n, scan in scans:
        name = safe_filename(f"{n:02d}-{scan.name}")
        (staged / name).write_bytes(scan.data)
        names.append(name)
    return names


def _sweep(root: Path) -> None:
    try:
        folders = list(root.iterdir())
    except FileNotFoundError:
        return
    for folder in folders:
        try:
            if time.time() - folder.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue
