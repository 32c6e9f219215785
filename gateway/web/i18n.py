"""Languages of the web register: simplified Chinese and English, every string through gettext.

The catalogue is the .po file itself, read once at start and turned into a gettext catalogue in
memory (no compiled .mo file in the repository). The language of the request being served sits in
a context variable, so that the same gettext functions serve templates and Python code alike.
"""
from __future__ import annotations

import gettext as gettext_mod
import io
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.services.access import Refused
    from gateway.web.preview import PreviewError

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("zh", "en")
# Our language codes to the catalogue's locale folder; English is the source language.
CATALOGUES = {"zh": "zh_Hans"}
LANGUAGE_NAMES = {"zh": "中文", "en": "English"}
HTML_LANG = {"zh": "zh-Hans", "en": "en"}

_current: ContextVar[str] = ContextVar("web_language", default="en")


def N_(message: str) -> str:
    """Marks a string for the catalogue; it is translated where it is shown."""
    return message


@cache
def translations(language: str) -> gettext_mod.NullTranslations:
    locale = CATALOGUES.get(language)
    if locale is None:
        return gettext_mod.NullTranslations()
    # One catalogue from every .po file of the language (a file per group of pages).
    catalog = None
    for path in sorted((LOCALE_DIR / locale / "LC_MESSAGES").glob("*.po")):
        with open(path, "rb") as po:
            part = read_po(po, locale=locale)
        if catalog is None:
            catalog = part
            continue
        for message in part:
            if message.id:
                catalog[message.id] = message
    if catalog is None:
        return gettext_mod.NullTranslations()
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext_mod.GNUTranslations(buffer)


def language_of(value: str | None, default: str) -> str:
    return value if value in LANGUAGES else default


def use(language: str) -> None:
    """Serve the rest of this request in `language`."""
    _current.set(language if language in LANGUAGES else "en")


def current() -> str:
    return _current.get()


def gettext(message: str) -> str:
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """A word whose translation depends on where it is used (the same English, other Chinese)."""
    return translations(_current.get()).pgettext(context, message)


_ = gettext

# The register's values, shown translated wherever they appear.
STATUS = {
    "open": N_("open (not yet closed)"),
    "received": N_("received"), "registered": N_("registered"), "needs-triage": N_("needs triage"),
    "routed": N_("routed"), "acknowledged": N_("acknowledged"), "in-progress": N_("in progress"),
    "answered": N_("answered"), "closed": N_("closed"), "archived": N_("archived"),
    "awaiting-sender": N_("awaiting the sender"), "withdrawn": N_("withdrawn"),
}
CATEGORY = {
    "internal.inter_department": N_("internal: between departments"),
    "internal.employee_to_department": N_("internal: employee to department"),
    "internal.employee_to_employee": N_("internal: employee to employee"),
    "external.business": N_("external: business"),
    "external.official": N_("external: official"),
    "external.inquiry_complaint": N_("external: inquiry or complaint"),
}
URGENCY = {"regular": N_("regular"), "urgent": N_("urgent"), "special": N_("special")}
CHANNEL = {"email": N_("e-mail"), "fax": N_("fax"), "post": N_("post"), "courier": N_("courier"),
           "front-desk": N_("front desk")}
CONFIDENTIALITY = {"normal": N_("normal"), "confidential": N_("confidential")}
QUEUE = {"mine": N_("My letters"), "departments": N_("My departments"), "triage": N_("Triage"),
         "overdue": N_("Overdue"), "all": N_("All letters")}
ACTION = {"ack": N_("Acknowledge"), "progress": N_("In progress"), "answer": N_("Answered"),
          "close": N_("Close"), "note": N_("Note"), "assign": N_("Assign"), "reassign": N_("Reassign"),
          "hold": N_("Legal hold"), "tag": N_("Tag"), "reference": N_("Sender's reference"),
          "proceed": N_("Go on without them"),
          "incomplete": N_("Ask the sender"), "withdraw": N_("Close as withdrawn")}
ROLE = {"registry": N_("registry office"), "member": N_("member"), "head": N_("department head"),
        "leader": N_("leader"), "auditor": N_("auditor"), "admin": N_("administrator")}
# Event and audit actions (what happened), as recorded in the timeline and the audit log.
EVENT = {
    "received": N_("received"), "registered": N_("registered"), "classified": N_("classified"),
    "routed": N_("routed"), "needs-triage": N_("sent to triage"), "acknowledged": N_("acknowledged"),
    "in-progress": N_("in progress"), "answered": N_("answered"), "answer": N_("answer received"),
    "closed": N_("closed"), "note": N_("note"), "reassigned": N_("reassigned"), "assigned": N_("assigned"),
    "incomplete": N_("materials requested from the sender"), "supplemented": N_("supplement received"),
    "withdrawn": N_("withdrawn"), "rated": N_("rated by the sender"), "reopened": N_("reopened"),
    "proceeded": N_("gone on without the missing materials"),
    "follow-up": N_("mail from someone else about it"), "rating-refused": N_("second rating not counted"),
    "request-sent": N_("request to the sender sent"), "sender-notice-sent": N_("notice about the sender sent"),
    "archived": N_("archived"), "archived-late": N_("later replies or circulation archived"),
    "reference-set": N_("sender's reference set"),
    "destroyed": N_("destroyed"), "hold": N_("legal hold set"),
    "hold-released": N_("legal hold lifted"), "tagged": N_("tagged"), "search": N_("search"),
    "text-read": N_("fax text read"),
    "text-not-read": N_("fax text not readable"), "duplicate-arrival": N_("arrived again"),
    "receipt-queued": N_("receipt queued"), "receipt-suppressed": N_("receipt not sent"),
    "feedback-queued": N_("result to sender queued"), "mail-requeued": N_("mail queued again"),
    "notification-sent": N_("notification sent"), "receipt-sent": N_("receipt sent"),
    "feedback-sent": N_("result sent to sender"), "reminder-sent": N_("reminder sent"),
    "escalation-sent": N_("escalation sent"), "reminded": N_("reminded"), "escalated": N_("escalated"),
    "reminder-superseded": N_("reminder not sent: a more advanced one went instead"),
    "dead-lettered": N_("mail undeliverable"),
    "read": N_("read"), "preview": N_("preview"), "download": N_("download"), "original": N_("original downloaded"),
    "export": N_("export"), "audit-export": N_("audit log exported"), "sign-in": N_("sign-in"),
    "sign-in-failed": N_("sign-in failed"), "sign-in-throttled": N_("sign-in throttled"),
    "sign-out": N_("sign-out"), "person-added": N_("person added"), "person-changed": N_("person changed"),
    "password-set": N_("password set"), "password-changed": N_("own password changed"),
    "signed-out-elsewhere": N_("signed out of other browsers"), "two-step-on": N_("two-step sign-in turned on"),
    "two-step-off": N_("two-step sign-in turned off"),
    "two-step-reset": N_("two-step sign-in reset by an administrator"),
    "recovery-codes-renewed": N_("recovery codes renewed"),
    "sign-in-awaiting-code": N_("password right, code awaited"),
    "password-reset-asked": N_("password reset link asked for"), "password-reset": N_("password reset by link"),
    "person-disabled": N_("person disabled"),
    "person-enabled": N_("person enabled"),
    "quarantine-retry": N_("quarantined item retried"), "grant": N_("access granted"),
    "grant-revoked": N_("access revoked"), "rate-page": N_("rating page visited by a sender"),
}
# Circulation (传阅) and borrowing from the archive (借阅).
EVENT |= {
    "circulation-started": N_("circulation started"), "circulation-signed": N_("signed in circulation"),
    "circulation-reminded": N_("circulation reader reminded"), "circulation-escalated": N_("late reader reported"),
    "circulation-finished": N_("circulation finished"), "borrow-requested": N_("borrowing requested"),
    "borrow-granted": N_("borrowing granted"), "borrow-refused": N_("borrowing refused"),
    "borrow-read": N_("borrowed letter read"), "borrow-returned": N_("borrowed letter returned"),
    "borrow-expired": N_("borrowing expired"),
}
MAIL_KIND = {"notification": N_("notification"), "receipt": N_("receipt"), "feedback": N_("result to sender"),
             "reminder": N_("reminder"), "escalation": N_("escalation"),
             "request": N_("request to the sender"), "sender-notice": N_("notice about the sender"),
             "circulation": N_("circulation notice"), "borrowing": N_("borrowing notice"),
             "refused-command": N_("refusal of a mail command"), "password-reset": N_("password reset link")}
MAIL_STATUS = {"pending": N_("pending"), "sent": N_("sent"), "dead": N_("undeliverable")}
# Where a letter came in (its intake), and the register's flags on it.
INTAKE = {"smtp": N_("SMTP listener"), "imap": N_("IMAP mailbox"), "file": N_("File import"),
          "fax-drop": N_("Fax folder"), "web": N_("Web register"), "paper": N_("Paper register")}
FLAG = {"ocr-pending": N_("fax text not read yet"), "needs-triage": N_("needs triage"),
        "partial-reception": N_("not all pages received"),
        "fax-sender-unproven": N_("fax mail not proven to come from the fax service"),
        "ambiguous-header": N_("header fields not all covered by the signature"),
        "unverified-internal-sender": N_("internal sender not verified"),
        "repeated-header": N_("header fields given twice"),
        "sender-not-from": N_("sender taken from the Sender field: only SMTP AUTH proves it"),
        "forged-loop-marker": N_("forged loop marker"), "receipt-loop-marker": N_("answer to our own receipt"),
        "copied-loop-marker": N_("loop marker of our mail copied onto another mail"),
        "bounce": N_("bounce (no envelope sender)"),
        "oversize": N_("too large: registered from its headers only"), "backlog": N_("backlog import"),
        "imported": N_("taken over by an import"), "no-notifications": N_("imported without notifications")}
KINDS = {"intake": INTAKE, "flag": FLAG, "status": STATUS, "category": CATEGORY, "urgency": URGENCY, "channel": CHANNEL,
         "confidentiality": CONFIDENTIALITY, "queue": QUEUE, "action": ACTION, "role": ROLE, "event": EVENT,
         "mail_kind": MAIL_KIND, "mail_status": MAIL_STATUS}


# The outbox's events on a letter, `<mail kind>-sent` and `<mail kind>-dead-lettered`, for the
# kinds without words of their own above.
MAIL_EVENT = {"sent": N_("%(mail)s sent"), "dead-lettered": N_("%(mail)s undeliverable")}


def label(kind: str, value: str | None) -> str:
    """A register value in the current language; an unknown value is shown as it is."""
    if value is None:
        return ""
    known = KINDS[kind].get(value)
    if known:
        return gettext(known)
    if kind == "event":
        for outcome, words in MAIL_EVENT.items():
            mail = value.removesuffix(f"-{outcome}")
            if mail != value and mail in MAIL_KIND:
                return gettext(words) % {"mail": gettext(MAIL_KIND[mail])}
    return value


# Why a step was refused (gateway/services/access.py Refused.key), worded in the page's language.
REFUSAL = {
    "forbidden-ack": N_("only the people of department %(department)s may do this"),
    "forbidden-progress": N_("only the people of department %(department)s may do this"),
    "forbidden-answer": N_("only the people of department %(department)s may do this"),
    "forbidden-close": N_("only the people of department %(department)s may do this"),
    "forbidden-note": N_("only the people of department %(department)s, the registry office and leaders may add "
                         "notes"),
    "forbidden-assign": N_("only the people of department %(department)s and the registry office may assign it"),
    "forbidden-reassign": N_("only the people of department %(department)s and the registry office may reassign "
                             "it"),
    "forbidden-hold": N_("only the head of department %(department)s, the registry office and leaders may put it "
                         "on legal hold"),
    "forbidden-tag": N_("only the people of department %(department)s, the registry office and leaders may tag it"),
    "forbidden-audit": N_("only auditors read the audit log"),
    "bad-tag": N_("a tag is 1 to 40 letters, digits, '.', '_' or '-'"),
    "forbidden-reference": N_("only those of department %(department)s and of the registry office who may read it "
                              "may put its sender's reference right"),
    "bad-reference": N_("a sender's reference is one line of at most %(limit)s characters"),
    "same-reference": N_("%(number)s has this sender's reference already"),
    "no-letter": N_("no letter %(number)s"),
    "too-many": N_("at most %(limit)s letters at once"),
    "view-name": N_("a view needs a name of 1 to 60 characters"),
    "state": N_("%(number)s is %(status)s: “%(action)s” is not possible now"),
    "destroyed": N_("%(number)s was destroyed"),
    "need-department": N_("choose the department to send it to"),
    "unknown-department": N_("there is no department %(department)s"),
    "already-there": N_("%(number)s is already with department %(department)s"),
    "already-assigned": N_("%(number)s is already assigned to %(person)s"),
    "no-one-assigned": N_("%(number)s is assigned to no one"),
    "hold-already-on": N_("%(number)s is already on legal hold"),
    "hold-already-off": N_("%(number)s is not on legal hold"),
    "reply-in-hand": N_("%(number)s has a reply waiting for approval or for the post: “%(action)s” waits until "
                        "the reply has gone or was returned to its handler"),
    "moved": N_("%(number)s changed hands meanwhile (now with department %(department)s): nothing was done; "
                "look at it again"),
    "moved-owner": N_("%(number)s changed hands meanwhile (now assigned to %(person)s): nothing was done; look at "
                      "it again"),
    "impossible": N_("there is no step “%(action)s”"),
    "too-long": N_("at most %(limit)s characters"),
    "need-reason": N_("give the reason"),
    "need-on": N_("say whether to put the legal hold on or lift it (field “on”: on or off)"),
    "need-text": N_("a note needs text"),
    "need-result": N_("closing an inquiry or complaint needs its result: the sender receives it"),
    "need-close-result": N_("closing a letter needs its result: what came of it is recorded with the letter"),
    "need-person": N_("choose the person to assign it to"),
    "no-assignee": N_("%(person)s cannot be assigned letters (unknown, disabled or no e-mail address)"),
    "not-in-department": N_("%(person)s is not in department %(department)s"),
    "self-assign-confidential": N_("%(number)s is confidential: only the head of its department or the registry "
                                   "office may assign it to you"),
    "forbidden-incomplete": N_("only the people of department %(department)s and the registry office may ask its "
                               "sender for missing materials"),
    "forbidden-withdraw": N_("only the people of department %(department)s and the registry office may withdraw it"),
    "forbidden-proceed": N_("only the people of department %(department)s and the registry office may go on "
                            "without the missing materials"),
    "need-missing": N_("name what is missing"),
    "too-many-missing": N_("at most %(limit)s missing items"),
    "missing-too-long": N_("each missing item in at most %(limit)s characters"),
    "need-date": N_("give the day it is needed by"),
    "not-a-date": N_("the day it is needed by, “%(value)s”, is not a date (YYYY-MM-DD)"),
    "date-passed": N_("%(day)s has passed: give a later day"),
    "date-far": N_("%(day)s is more than a year away: give a nearer day"),
}


# Refusals whose values are not a letter's (a reply's status, an approver's role): by refusal
# key, the kind of KINDS that words each such value.
PARAM_KINDS: dict[str, dict[str, str]] = {}


def refusal(exc: Refused, own: Mapping[str, str] | None = None) -> str:
    """A refusal in the current language: in English the service's own (more detailed) words.
    `own` holds the words of a page's own refusals, looked up before the common ones."""
    template = (own or {}).get(exc.key) or REFUSAL.get(exc.key)
    if template is None or current() == "en":
        return str(exc)
    params = dict(exc.params)
    for name, kind in {"status": "status", "action": "action", **PARAM_KINDS.get(exc.key, {})}.items():
        if name in params:
            params[name] = label(kind, params[name])
    return gettext(template) % params


# Why an attachment's page cannot be shown (`preview.PreviewError`'s keys). A reader's detail
# (pypdf's or Pillow's words) stays as the library wrote it.
PREVIEW_PROBLEM = {
    "no-page": N_("no such page"),
    "no-preview": N_("no preview for %(type)s"),
    "too-large": N_("too large for a preview (%(size)s MB; at most 50 MB)"),
    "bomb": N_("the picture is too large to show (a decompression bomb?)"),
    "picture-unreadable": N_("the picture cannot be read: %(detail)s"),
    "picture-undecodable": N_("the picture cannot be decoded: %(detail)s"),
    "pdf-unreadable": N_("the PDF cannot be read: %(detail)s"),
    "pdf-undrawable": N_("the PDF cannot be drawn: %(detail)s"),
    "pdf-slow": N_("the PDF page took longer than %(seconds)s s to draw"),
    "no-pdftoppm": N_("pdftoppm cannot run: %(detail)s"),
}


def preview_problem(exc: PreviewError) -> str:
    """Why a page cannot be shown, in the current language (in English, the preview's own words)."""
    template = PREVIEW_PROBLEM.get(exc.key)
    if template is None or current() == "en":
        return str(exc)
    return gettext(template) % exc.params
