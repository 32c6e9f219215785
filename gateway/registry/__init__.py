"""The registry: the second place where durability lives, at the bottom of the code.

Everything a stage or a service decides about an item arrives here as a plan (plain data, see
`plan.py`) and is written in one transaction: the letter, its attachments, its events, the
intake keys that make a second arrival recognisable and the mail the change causes. Numbers
come from a per-series counter row incremented inside that same transaction, so a rolled-back
registration gives its number back and the series has no gaps. The registry imports nothing
above it: no rules, no templates, no files.

One module per concern, over one unit of work (`store.Store.write`):
`intake` (registration, a fax's text), `decisions` (people's steps, reassignment, answers,
holds), `outbox`, `reminders`, `archive`, `reads`, `people` (people, sessions, grants, the audit log and
the letters a person's scope covers), `search` (the full-text index).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.registry.archive import ArchiveRecords
from gateway.registry.decisions import Decisions
from gateway.registry.intake import Registration
from gateway.registry.models import Attachment, Event, Letter
from gateway.registry.outbox import Outbox
from gateway.registry.people import LetterFilter, PeopleRecords, Scope
from gateway.registry.plan import (Answer, AnswerPlan, LateItem, NewAttachment, NewLetter, NewMail, Registered,
                                   Routing, ToArchive)
from gateway.registry.reads import Reads
from gateway.registry.reminders import ReminderRecords
from gateway.registry.search import SearchRecords
from gateway.registry.store import RegistryUnavailable, make_engine

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["Registry", "NewLetter", "NewAttachment", "NewMail", "Routing", "Answer", "AnswerPlan", "Registered",
           "ToArchive", "LateItem", "Scope", "LetterFilter", "RegistryUnavailable", "Letter", "Attachment", "Event",
           "make_engine"]


class Registry(Registration, Decisions, Outbox, ReminderRecords, ArchiveRecords, Reads, PeopleRecords,
               SearchRecords):
    """The register, as one object over one engine."""

    @classmethod
    def from_config(cls, config: Config) -> Registry:
        model = config.model
        return cls(config.registry_url, number_template=model.gateway.letter_number,
                   timezone_name=model.gateway.timezone, echo=model.registry.echo_sql)
