"""A batch of spool items through the stages and into the registry.

A worker's whole contract is `process(items)`: every claimed item leaves it
finished (registered, its file kept as the raw copy), failed (back in line
with a backoff, or quarantined) or released (the registry is down; not the
item's fault, so the attempt does not count). The plan of each item comes
from the stages (`gateway.stages.build`); answers go through the same service
the CLI and the web use (`gateway.services.letters`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import Config
from gateway.faults import checkpoint
from gateway.registry import NewLetter, Registered, Registry, RegistryUnavailable
from gateway.registry.outward import OutwardRecords
from gateway.services.incomplete import SenderMail
from gateway.services.letters import LetterSteps
from gateway.spool import Spool, SpoolItem
from gateway.stages.build import AnswerItem, LetterBuilder
from gateway.stages.check import DmarcRefused

log = logging.getLogger("gateway.daemon.pipeline")

Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Outcome:
    item_id: str
    result: str  # registered | duplicate | known | answer | retry | quarantined | released | refused
    number: str | None = None
    reason: str | None = None


class Pipeline:
    def __init__(self, config: Config, spool: Spool, registry: Registry,
                 publish: Publish | None = None):
        self.spool = spool
        self.registry = registry
        self.publish = publish or (lambda topic, body: None)
        self.steps = LetterSteps(config, registry)
        self.builder = LetterBuilder(config, registry.answered_letter,
                                     lambda sha: str(spool.stored_path(sha).relative_to(self.config.state_dir)),
                                     OutwardRecords(registry).sender_thread)

    @property
    def config(self) -> Config:
        return self.builder.config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload: the next items are built and answers decided with the new settings and rules."""
        self.builder.config = config
        self.steps.config = config

    def build(self, item: SpoolItem, *, may_refuse: bool = False) -> NewLetter | AnswerItem:
        return self.builder.build(item, may_refuse=may_refuse)

    def process(self, items: list[SpoolItem], *, discard_when_unavailable: bool = False) -> list[Outcome]:
        """Normalise and register a batch. With discard_when_unavailable (an intake
        that can still answer "try again", like SMTP), items the registry could
        not take are deleted instead of kept, so that the retry is the only copy."""
        outcomes: list[Outcome] = []
        ready: list[tuple[SpoolItem, NewLetter]] = []
        for item in items:
            try:
                # Only a sender still waiting for the answer can be refused; for anything
                # already accepted the verdict is just recorded.
                built = self.build(item, may_refuse=discard_when_unavailable)
            except DmarcRefused as exc:
                log.info("item %s refused: %s", item.id, exc.reason)
                self.spool.discard(item)  # nothing registered, nothing quarantined: the sender is told 550
                outcomes.append(Outcome(item.id, "refused", reason=exc.reason))
                continue
            except Exception as exc:  # one bad item never blocks the others
                outcomes.append(self._failed(item, failure("cannot read item", exc)))
                item.forget_raw()
                continue
            item.forget_raw()  # a batch of large messages must not stay in memory
            if isinstance(built, AnswerItem):
                outcomes.append(self._record_answer(item, built, discard_when_unavailable))
            else:
                ready.append((item, built))
        if not ready:
            return outcomes
        checkpoint("before-commit")
        try:
            results = self.registry.register([new for _, new in ready])
        except RegistryUnavailable as exc:
            if discard_when_unavailable:
                log.warning("registry unavailable, %d item(s) refused for a retry by the sender: %s",
                            len(ready), exc)
            else:
                log.warning("registry unavailable, %d item(s) stay spooled: %s", len(ready), exc)
            return outcomes + [self._unavailable(item, exc, discard_when_unavailable) for item, _ in ready]
        except Exception:
            # Try each alone: the one that fails must not hold back the rest.
            for item, new in ready:
                outcomes += self._register_alone(item, new, discard_when_unavailable)
            return outcomes
        checkpoint("after-commit")
        self._store([(item, new.raw_sha256) for item, new in ready], results)
        for (item, new), result in zip(ready, results, strict=True):
            outcomes.append(self._finish(item, new, result))
        return outcomes

    def _record_answer(self, item: SpoolItem, answer: AnswerItem, discard_when_unavailable: bool) -> Outcome:
        try:
            if answer.follow_up is not None:  # the letter's sender writing back, not a department
                result = SenderMail(self.config, self.registry).record(
                    answer.follow_up, keys=answer.keys, raw_sha256=answer.sha256, raw_path=answer.raw_path,
                    received_at=answer.received_at)
            else:
                result = self.steps.record_answer(answer.answer, keys=answer.keys, raw_sha256=answer.sha256,
                                                  raw_path=answer.raw_path, received_at=answer.received_at,
                                                  trust=answer.trust)
        except RegistryUnavailable as exc:
            return self._unavailable(item, exc, discard_when_unavailable)
        except Exception as exc:
            log.exception("item %s: answer not recorded", item.id)
            return self._failed(item, failure("answer not recorded", exc))
        self._store([(item, answer.sha256)], [result])
        a = answer.answer
        if answer.follow_up is not None:
            log.info("%s: %s from its sender %s", result.number, answer.follow_up.kind, a.sender)
            return self._published(item, result)
        log.info("%s: answer from %s%s", result.number, a.sender,
                 f": {a.command} {a.argument}".rstrip() if a.command else " (no command)")
        return self._published(item, result)

    def _register_alone(self, item: SpoolItem, new: NewLetter, discard_when_unavailable: bool) -> list[Outcome]:
        try:
            [result] = self.registry.register([new])
        except RegistryUnavailable as exc:
            return [self._unavailable(item, exc, discard_when_unavailable)]
        except Exception as exc:
            log.exception("item %s: registration failed", item.id)
            return [self._failed(item, failure("registration failed", exc))]
        self._store([(item, new.raw_sha256)], [result])
        return [self._finish(item, new, result)]

    def _unavailable(self, item: SpoolItem, exc: Exception, discard: bool) -> Outcome:
        (self.spool.discard if discard else self.spool.release)(item)
        return Outcome(item.id, "released", reason=str(exc))

    def _finish(self, item: SpoolItem, new: NewLetter, result: Registered) -> Outcome:
        """A registered (and stored) item: logged and published."""
        if result.outcome == "registered":
            sender = f"{new.sender_name} <{new.sender_address}>" if new.sender_name else f"<{new.sender_address}>"
            log.info("%s registered: %s from %s, %d attachment(s)%s", result.number,
                     _quote(new.subject), sender, len(new.attachments),
                     f", {len(new.defects)} defect(s)" if new.defects else "")
        elif result.outcome == "duplicate":
            log.info("%s received again (same bytes, item %s): recorded as an event", result.number, item.id)
        return self._published(item, result, channel=new.channel, department=new.department)

    def _store(self, finished: list[tuple[SpoolItem, str]], results: list[Registered]) -> None:
        """Committed: from here on nothing may undo the registration or lose the bytes."""
        try:
            self.spool.finish_all(finished)
        except OSError as exc:
            # The files stay in work/; recover() brings them back and they are recognised as known.
            log.error("%s recorded, but the spool could not move them to the store: %s",
                      ", ".join(r.number for r in results), exc)

    def _published(self, item: SpoolItem, result: Registered, **details: Any) -> Outcome:
        """Tell listeners (a wake-up, never the only copy: see events.py)."""
        try:
            self.publish(f"letter.{result.outcome}", {"number": result.number, "status": result.status,
                                                      **details, "item": item.id, "at": time.time()})
        except Exception:
            log.exception("%s: event not published", result.number)
        return Outcome(item.id, result.outcome, result.number)

    def _failed(self, item: SpoolItem, reason: str) -> Outcome:
        quarantined = self.spool.fail(item, reason)
        if quarantined:
            log.error("item %s quarantined after %d attempts: %s", item.id, item.attempts + 1, reason)
            self.publish("item.quarantined", {"item": item.id, "reason": reason, "at": time.time()})
            return Outcome(item.id, "quarantined", reason=reason)
        log.warning("item %s failed (attempt %d of %d), will retry: %s", item.id, item.attempts + 1,
                    self.spool.max_attempts, reason)
        return Outcome(item.id, "retry", reason=reason)


def failure(what: str, exc: BaseException, limit: int = 300) -> str:
    """A failed item's reason, one line: a database error's own cause, not the statement and
    its parameters that SQLAlchemy adds (kilobytes of them; the log has the whole error)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    return f"{what}: {type(cause).__name__}: {text if len(text) <= limit else text[:limit - 1] + '…'}"


def _quote(text: str, limit: int = 80) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
