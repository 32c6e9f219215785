"""The states of a letter and the moves between them; anything else is refused, saying why.

received -> registered -> routed -> acknowledged -> in-progress -> answered -> closed -> archived,
beside needs-triage (no department yet), awaiting-sender (materials are missing: the sender was asked
for them and the deadline waits; it resumes with their supplement, or when its department goes on
without them), withdrawn (the sender never sent them; ended like closed),
quarantined (an item that could not be registered, kept in the spool) and dead-lettered (mail about
it that could not be delivered; an event, the letter keeps its state). A dissatisfied sender's
rating reopens an answered or closed letter.
"""
from __future__ import annotations

from dataclasses import dataclass

STATES = ("received", "registered", "needs-triage", "routed", "acknowledged", "in-progress", "awaiting-sender",
          "answered", "closed", "withdrawn", "archived")
OPEN = ("registered", "needs-triage", "routed", "acknowledged", "in-progress", "awaiting-sender", "answered")
# Ended: nothing more is expected of anyone; archived with the month.
ENDED = ("closed", "withdrawn")


@dataclass(frozen=True)
class Action:
    name: str  # the event recorded
    to: str | None  # the new state; None: the state stays (a note)
    allowed_from: tuple[str, ...]
    verb: str  # for messages: "acknowledged", "closed", ...


ACTIONS = {
    "ack": Action("acknowledged", "acknowledged", ("routed",), "acknowledged"),
    "progress": Action("in-progress", "in-progress", ("routed", "acknowledged", "answered"), "put in progress"),
    "answer": Action("answered", "answered", ("routed", "acknowledged", "in-progress"), "marked answered"),
    "close": Action("closed", "closed", ("routed", "acknowledged", "in-progress", "answered"), "closed"),
    # Materials are missing: the sender is asked and the letter waits with its deadline paused.
    "incomplete": Action("incomplete", "awaiting-sender", ("routed", "acknowledged", "in-progress"),
                         "marked incomplete"),
    "supplement": Action("supplemented", "in-progress", ("awaiting-sender",), "resumed with a supplement"),
    "withdraw": Action("withdrawn", "withdrawn", ("awaiting-sender",), "closed as withdrawn"),
    # The department goes on without what the sender did not send: in progress, its deadline back.
    "proceed": Action("proceeded", "in-progress", ("awaiting-sender",), "resumed without the materials"),
    # A dissatisfied sender: the case goes on until they are satisfied.
    "reopen": Action("reopened", "in-progress", ("answered", "closed"), "reopened"),
    "note": Action("note", None, OPEN + ENDED, "annotated"),
    "reassign": Action("reassigned", None, OPEN, "reassigned"),
}


def unacknowledged(status: str) -> str:
    """The state of a letter given to another owner (a person, or another department): an
    acknowledgement is its owner's, so an acknowledged letter is routed again, for the new owner to
    acknowledge; one further on (in progress, answered) keeps its state, and its deadline stays."""
    return "routed" if status == "acknowledged" else status


class TransitionRefused(Exception):
    """The letter's state does not allow this action."""


class Unchanged(ValueError):
    """The step would change nothing: the letter is already as asked (a form sent twice, or a
    colleague was quicker). `key` and `params` name the case for those who word it in another
    language."""

    def __init__(self, message: str, key: str, **params: str):
        super().__init__(message)
        self.key, self.params = key, params


class ReplyInHand(TransitionRefused):
    """A reply waits for approval or for the post, and the step would leave the letter where that
    reply could no longer answer it (closed, answered otherwise, waiting for its sender)."""

    def __init__(self, number: str, reply_status: str, action: str):
        waits = "for approval" if reply_status == "pending" else "for the registry office to post it"
        super().__init__(f"{number} has a reply waiting {waits}: it cannot be {ACTIONS[action].verb} before the "
                         "reply has gone or was returned to its handler")
        self.number, self.reply_status, self.action = number, reply_status, action


class LetterMoved(TransitionRefused):
    """The letter changed hands (department or owner) between the moment a person's rights to it
    were decided and the moment their step took its lock."""

    def __init__(self, number: str, department: str | None, owner: str | None):
        super().__init__(f"{number} changed hands meanwhile (now with {department or 'no department'}"
                         f"{', assigned to ' + owner if owner else ''}): nothing was done; look at it again")
        self.number, self.department, self.owner = number, department, owner


# Who a letter was with when a person's rights to it were decided: (department, owner).
Seen = tuple[str | None, str | None]


def unmoved(number: str, department: str | None, owner: str | None, seen: Seen | None) -> None:
    """Raise LetterMoved if the letter, read under its lock, is not with whom the rights were
    decided for (a step checked before the lock must not land on a letter that moved meanwhile)."""
    if seen is not None and (department, (owner or "").lower()) != (seen[0], (seen[1] or "").lower()):
        raise LetterMoved(number, department, owner)


def check(number: str, status: str, action: str) -> Action:
    move = ACTIONS[action]
    if status not in move.allowed_from:
        allowed = ", ".join(move.allowed_from)
        raise TransitionRefused(f"{number} is {status}: it cannot be {move.verb} (only when {allowed})")
    return move
