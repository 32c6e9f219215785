"""Classification rules: compiled from rules.yaml, applied in order, every decision explained.

A rule is `when` (conditions) and `set` (actions). Rules are tried in file
order; the first rule to set a field wins it (later rules may still add tags
and fill fields left unset), and a matching rule stops the search unless it
says `stop: false`. Whatever no rule routes goes to triage.

Speed does not depend much on the number of rules: every keyword of every rule
sits in one Aho-Corasick automaton that reads each field of a letter once, and
a rule that needs a keyword (or a sender domain) is only looked at when that
keyword was found (or the domain matches). Rules that need neither are always
looked at.
"""
from __future__ import annotations

import fnmatch
import gc
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick_rs
import regex
from pydantic import ValidationError

from gateway.stages.classify import schema
from gateway.stages.classify.facts import Facts
from gateway.fold import fold
from gateway.stages.classify.organisation import Organisation
from gateway.stages.classify.source import Located, Path_, RuleIssue, RulesError

_ASCII_WORD = re.compile(r"[0-9a-z]")

Evidence = list[str]


class Scan:
    """One letter as the conditions see it: folded fields and the keywords found in them."""

    def __init__(self, facts: Facts, ctx: Organisation, automaton: Any, keywords: list[str],
                 regex_timeout: float):
        self.facts = facts
        self.ctx = ctx
        self.regex_timeout = regex_timeout
        self.text = {"subject": facts.subject, "body": facts.body, "sender_name": facts.sender_name,
                     "attachment_names": "\n".join(name for name, _ in facts.attachments)}
        self.hits: dict[str, dict[int, int]] = {}  # field -> keyword id -> end of first hit
        for name, text in self.text.items():
            found: dict[int, int] = {}
            if text and keywords:
                folded = fold(text)
                for kw_id, start, end in automaton.find_matches_as_indexes(folded, overlapping=True):
                    if kw_id in found:
                        continue
                    # Latin-script keywords start at a word: "order" is not found in "border".
                    if _ASCII_WORD.match(keywords[kw_id][0]) and start > 0 and _ASCII_WORD.match(folded[start - 1]):
                        continue
                    found[kw_id] = end - 1
            self.hits[name] = found
        self.found_ids = {kw for found in self.hits.values() for kw in found}

    def quote(self, name: str, kw_id: int, keyword: str) -> str:
        text, end = self.text[name], self.hits[name][kw_id]
        start = end - len(keyword) + 1
        before, after = text[max(0, start - 12):start], text[end + 1:end + 13]
        snippet = f"{before}[{text[start:end + 1]}]{after}".replace("\n", " ")
        return f"{name.replace('_', ' ')} has {keyword!r}: …{snippet}…"


class RegexTimedOut(Exception):
    """A regular expression ran out of time: its rule can be decided neither way."""


class Condition:
    """Compiled condition. `needs` is a set of triggers one of which must be present for it to hold,
    or None when it can hold without any (then its rule is always looked at)."""

    needs: frozenset[tuple[str, Any]] | None = None
    keyword_ids: frozenset[int] = frozenset()

    def check(self, scan: Scan) -> Evidence | None:  # evidence when it holds, None when not
        raise NotImplementedError


class AllOf(Condition):
    def __init__(self, parts: list[Condition]):
        self.parts = parts
        known = [p.needs for p in parts if p.needs is not None]
        self.needs = min(known, key=len) if known else None
        self.keyword_ids = frozenset().union(*(p.keyword_ids for p in parts))

    def check(self, scan: Scan) -> Evidence | None:
        evidence: Evidence = []
        for part in self.parts:
            found = part.check(scan)
            if found is None:
                return None
            evidence += found
        return evidence


class AnyOf(Condition):
    def __init__(self, parts: list[Condition]):
        self.parts = parts
        known = [p.needs for p in parts]
        self.needs = None if any(n is None for n in known) else frozenset().union(*known)  # type: ignore[arg-type]
        self.keyword_ids = frozenset().union(*(p.keyword_ids for p in parts))

    def check(self, scan: Scan) -> Evidence | None:
        for part in self.parts:
            found = part.check(scan)
            if found is not None:
                return found
        return None


class Not(Condition):
    def __init__(self, part: Condition, label: str):
        self.part = part
        self.label = label

    def check(self, scan: Scan) -> Evidence | None:
        return [f"not ({self.label})"] if self.part.check(scan) is None else None


class Keywords(Condition):
    def __init__(self, ids: list[int], words: list[str], mode: str, fields: tuple[str, ...]):
        self.ids, self.words, self.mode, self.fields = ids, words, mode, fields
        self.keyword_ids = frozenset(ids)
        self.needs = frozenset([("kw", i) for i in ids])

    def check(self, scan: Scan) -> Evidence | None:
        evidence: Evidence = []
        for kw_id, word in zip(self.ids, self.words, strict=True):
            where = next((f for f in self.fields if kw_id in scan.hits[f]), None)
            if where is None:
                if self.mode == "all":
                    return None
                continue
            evidence.append(scan.quote(where, kw_id, word))
            if self.mode == "any":
                return evidence
        return evidence if evidence else None


class Test(Condition):
    """A condition decided by one function of the scan."""

    def __init__(self, test: Callable[[Scan], str | None], needs: frozenset[tuple[str, Any]] | None = None):
        self.test = test
        self.needs = needs

    def check(self, scan: Scan) -> Evidence | None:
        found = self.test(scan)
        return None if found is None else [found]


@dataclass
class Rule:
    name: str
    line: int | None
    condition: Condition
    actions: dict[str, Any]
    tags: list[str]
    stop: bool
    department_literal: str | None  # for naming triage candidates when the rule nearly matched


@dataclass
class Decision:
    category: str | None = None
    department: str | None = None
    owner: str | None = None
    urgency: str | None = None
    confidentiality: str | None = None
    deadline_days: int | None = None
    tags: list[str] = field(default_factory=list)
    matched: list[dict[str, Any]] = field(default_factory=list)
    triage: dict[str, Any] | None = None
    rules_version: str = ""
    skipped: list[dict[str, Any]] = field(default_factory=list)  # rules that could not be decided
    trust: dict[str, Any] = field(default_factory=dict)  # what the rules knew of the sender's verdict

    @property
    def needs_triage(self) -> bool:
        return self.triage is not None

    def trace(self) -> dict[str, Any]:
        return {"rules": self.rules_version, "matched": self.matched, "triage": self.triage,
                **({"skipped": self.skipped} if self.skipped else {}),
                "trust": self.trust,
                "result": {"category": self.category, "department": self.department, "owner": self.owner,
                           "urgency": self.urgency, "confidentiality": self.confidentiality,
                           "deadline_days": self.deadline_days, "tags": self.tags}}


@dataclass(frozen=True)
class RulesSource:
    """What a rule set is compiled from: plain data, cheap to pickle. A compiled rule set is not
    (its conditions are closures): a process of its own gets this and compiles the rules itself."""

    file: Path
    text: str
    organisation: Organisation

    def compile(self, data: Any = None) -> RuleSet:
        """`data`: the file's data as read() gives it, when another process read it."""
        return compile_rules(self.file, self.text, self.organisation, data)

    def read(self) -> Any:
        """The file's data (plain, picklable), for a process that compiles the rules from it."""
        return Located(self.file, self.text).data


class RuleSet:
    def __init__(self, source: RulesSource, rules: list[Rule], keywords: list[str], defaults: dict[str, str],
                 regex_timeout: float):
        self.source = source
        self.file = source.file
        self.text = source.text
        self.version = hashlib.sha256(source.text.encode()).hexdigest()[:12]
        self.rules = rules
        self.keywords = keywords
        self.ctx = source.organisation
        self.defaults = defaults
        self.regex_timeout = regex_timeout
        self.triage_department = source.organisation.triage_department
        # A contiguous NFA: its cost per character hardly grows with the number of keywords, as a
        # DFA's, and it is built several times faster (16,000 keywords: some 25 ms against 140 ms).
        self.automaton = ahocorasick_rs.AhoCorasick(
            keywords, implementation=ahocorasick_rs.Implementation.ContiguousNFA)
        self.always: list[int] = []
        self.by_trigger: dict[tuple[str, Any], list[int]] = {}
        # Keyword -> rules naming a department that use it: a letter with the keyword but not the
        # rest of such a rule names that department as a likely one when it goes to triage. Not
        # found through the triggers: a rule is indexed under its narrowest condition (a domain,
        # say), which a letter that only shares its keyword never reaches.
        self.department_rules_by_keyword: dict[int, list[int]] = {}
        for index, rule in enumerate(rules):
            if rule.condition.needs is None:
                self.always.append(index)
            else:
                for trigger in rule.condition.needs:
                    self.by_trigger.setdefault(trigger, []).append(index)
            if rule.department_literal:
                for keyword in rule.condition.keyword_ids:
                    self.department_rules_by_keyword.setdefault(keyword, []).append(index)

    def __len__(self) -> int:
        return len(self.rules)

    def _candidates(self, scan: Scan) -> list[int]:
        triggers: set[tuple[str, Any]] = {("kw", i) for i in scan.found_ids}
        domain = scan.facts.sender_domain
        if domain:
            triggers.add(("domain", domain))
            parts = domain.split(".")
            triggers.update(("below", ".".join(parts[i:])) for i in range(1, len(parts)))
        if scan.facts.sender_address:
            triggers.add(("sender", scan.facts.sender_address))
        chosen = set(self.always)
        for trigger in triggers:
            chosen.update(self.by_trigger.get(trigger, ()))
        return sorted(chosen)

    def classify(self, facts: Facts) -> Decision:
        scan = Scan(facts, self.ctx, self.automaton, self.keywords, self.regex_timeout)
        decision = Decision(rules_version=self.version, trust={
            "sender_verified": facts.sender_verified, "method": facts.trust_method,
            "unverified_internal_sender": facts.unverified_internal})
        matched: set[int] = set()
        for index in self._candidates(scan):
            rule = self.rules[index]
            try:
                evidence = rule.condition.check(scan)
            except RegexTimedOut as exc:
                decision.skipped.append({"rule": rule.name, "line": rule.line,
                                         "reason": f"{exc} took longer than {self.regex_timeout * 1000:g} ms"})
                continue
            if evidence is None:
                continue
            matched.add(index)
            entry: dict[str, Any] = {"rule": rule.name, "line": rule.line, "evidence": evidence, "set": {},
                                     "kept": {}}
            for key, value in rule.actions.items():
                if key == "department" and value in ("recipient", "sender"):
                    resolved = (self.ctx.sender_department(facts) if value == "sender"
                                else next(iter(self.ctx.recipient_departments(facts)), None)
                                or facts.mailbox_department)
                    if resolved is None:
                        entry["kept"][key] = f"no {value} department"
                        continue
                    value = resolved
                current = getattr(decision, key)
                if current is not None:
                    entry["kept"][key] = f"already {current!r}"
                    continue
                setattr(decision, key, value)
                entry["set"][key] = value
            new_tags = [t for t in rule.tags if t not in decision.tags]
            if new_tags:
                decision.tags += new_tags
                entry["set"]["tags"] = new_tags
            if not entry["kept"]:
                del entry["kept"]
            entry["stop"] = rule.stop
            decision.matched.append(entry)
            if rule.stop:
                break
        nearly = [self.rules[i].department_literal or "" for i in sorted(
            {i for keyword in scan.found_ids for i in self.department_rules_by_keyword.get(keyword, ())} - matched)]
        for key, value in self.defaults.items():
            if getattr(decision, key) is None:
                setattr(decision, key, value)
        if decision.department is None:
            candidates = [*self.ctx.recipient_departments(facts),
                          *([facts.mailbox_department] if facts.mailbox_department else []), *nearly]
            candidates = [c for c in dict.fromkeys(candidates) if c != self.triage_department]
            decision.triage = {
                "reason": "no rule matched" if not decision.matched else "no rule set a department",
                "candidates": candidates}
            decision.department = self.triage_department
        return decision


# -- compiling ------------------------------------------------------------

class _EmptyCondition(Exception):
    def __init__(self, path: Path_):
        self.path = path


class _Builder:
    """Validated rules (schema.py) into conditions that run: closures, keyword ids, triggers."""

    def __init__(self) -> None:
        self.keywords: list[str] = []
        self.keyword_ids: dict[str, int] = {}
        # The method for each condition (`_when_` and its key), looked up once, not for every rule.
        self.builds: dict[str, Callable[[Any], Condition]] = {
            name.removeprefix("_when_"): getattr(self, name) for name in dir(self) if name.startswith("_when_")}

    def keyword_ids_of(self, words: list[str]) -> list[int]:
        """The id of each keyword (folded; the same folded word has one id across all rules)."""
        ids, known = [], self.keyword_ids
        for word in words:
            folded = fold(word)
            kw_id = known.get(folded)
            if kw_id is None:
                kw_id = known[folded] = len(self.keywords)
                self.keywords.append(folded)
            ids.append(kw_id)
        return ids

    def condition(self, when: schema.Conditions, written: dict[str, Any], path: Path_) -> Condition:
        """`written`: the same conditions as the file has them, whose order the evidence follows;
        `path`: where they are in the file."""
        parts = [self._part(key, value, written[key], path) for key, value in when.given(written)]
        return parts[0] if len(parts) == 1 else AllOf(parts)

    def _part(self, key: str, value: Any, written: Any, path: Path_) -> Condition:
        if value is None:
            # `subject:` with nothing after it: the schema lets every condition be absent, and
            # takes an empty one for absent; refused here, where it costs no call of its own.
            raise _EmptyCondition((*path, key))
        if key in ("all", "any"):
            parts = [self.condition(c, w, (*path, key, n)) for n, (c, w) in enumerate(zip(value, written, strict=True))]
            return AllOf(parts) if key == "all" else AnyOf(parts)
        if key == "not":
            return Not(self.condition(value, written, (*path, key)), value.label(written))
        return self.builds[key](value)

    # Conditions, one method each; the name after _when_ is the key in rules.yaml (all, any and not: `_part`).

    def _when_channel(self, channels: list[str]) -> Condition:
        return Test(lambda s: f"channel is {s.facts.channel}" if s.facts.channel in channels else None)

    def _when_sender(self, patterns: list[str]) -> Condition:
        exact = all(not any(c in p for c in "*?[") for p in patterns)

        def test(s: Scan) -> str | None:
            hit = _first_glob(s.facts.sender_address, patterns)
            return None if hit is None else f"sender {s.facts.sender_address} matches {hit!r}"
        return Test(test, frozenset(("sender", p) for p in patterns) if exact else None)

    def _when_sender_domain(self, patterns: list[str]) -> Condition:
        needs: set[tuple[str, Any]] | None = set()
        for p in patterns:
            if p.startswith("*.") and not any(c in p[2:] for c in "*?["):
                needs.add(("below", p[2:]))  # type: ignore[union-attr]
            elif not any(c in p for c in "*?["):
                needs.add(("domain", p))  # type: ignore[union-attr]
            else:
                needs = None
                break

        def test(s: Scan) -> str | None:
            hit = _first_glob(s.facts.sender_domain, patterns) if s.facts.sender_domain else None
            return None if hit is None else f"sender domain {s.facts.sender_domain} matches {hit!r}"
        return Test(test, frozenset(needs) if needs is not None else None)

    def _when_sender_internal(self, value: bool) -> Condition:
        def test(s: Scan) -> str | None:
            internal = s.ctx.sender_is_internal(s.facts)
            if internal != value:
                return None
            if s.facts.unverified_internal:
                return f"sender {s.facts.sender_address} claims the organisation but is not verified"
            return f"sender {s.facts.sender_address or '(none)'} is {'' if internal else 'not '}in the organisation"
        return Test(test)

    def _when_sender_verified(self, value: bool) -> Condition:
        def test(s: Scan) -> str | None:
            verified = s.facts.sender_verified
            if verified != value:
                return None
            return f"sender {s.facts.sender_address or '(none)'} is {'' if verified else 'not '}verified"
        return Test(test)

    @staticmethod
    def _department_condition(ids: list[str], found: Callable[[Scan], list[str]], says: str) -> Condition:
        """sender_department, recipient_department, mailbox_department: `any` or a list of ids."""
        wanted = None if ids == ["any"] else set(ids)

        def test(s: Scan) -> str | None:
            depts = [d for d in found(s) if wanted is None or d in wanted]
            return says.format(dept=depts[0], sender=s.facts.sender_address) if depts else None
        return Test(test)

    def _when_sender_department(self, ids: list[str]) -> Condition:
        return self._department_condition(ids, lambda s: [d] if (d := s.ctx.sender_department(s.facts)) else [],
                                          "sender {sender} belongs to {dept}")

    def _when_recipient_department(self, ids: list[str]) -> Condition:
        return self._department_condition(ids, lambda s: s.ctx.recipient_departments(s.facts),
                                          "addressed to department {dept}")

    def _when_mailbox_department(self, ids: list[str]) -> Condition:
        return self._department_condition(
            ids, lambda s: [s.facts.mailbox_department] if s.facts.mailbox_department else [],
            "fetched from the mailbox of {dept}")

    def _when_recipient(self, patterns: list[str]) -> Condition:
        def test(s: Scan) -> str | None:
            for address in s.facts.recipients:
                hit = _first_glob(address, patterns)
                if hit is not None:
                    return f"recipient {address} matches {hit!r}"
            return None
        return Test(test)

    def _keywords(self, match: schema.KeywordMatch, fields: tuple[str, ...]) -> Condition:
        words = match.words
        return Keywords(self.keyword_ids_of(words), words, match.mode,
                        tuple(match.in_) if match.in_ is not None else fields)

    def _when_keywords(self, match: schema.KeywordMatch) -> Condition:
        return self._keywords(match, ("subject", "body"))

    def _when_subject(self, match: schema.KeywordMatch) -> Condition:
        return self._keywords(match, ("subject",))

    def _when_body(self, match: schema.KeywordMatch) -> Condition:
        return self._keywords(match, ("body",))

    def _when_sender_name(self, match: schema.KeywordMatch) -> Condition:
        return self._keywords(match, ("sender_name",))

    def _when_regex(self, match: schema.RegexMatch) -> Condition:
        fields = tuple(match.in_) if match.in_ is not None else ("subject", "body")
        pattern = regex.compile(match.pattern)

        def test(s: Scan) -> str | None:
            for name in fields:
                try:
                    found = pattern.search(s.text[name], timeout=s.regex_timeout)
                except TimeoutError:
                    # Bounded: a pathological pattern costs its time limit, not the daemon.
                    raise RegexTimedOut(f"/{pattern.pattern}/ on the {name}") from None
                if found:
                    return f"{name.replace('_', ' ')} matches /{pattern.pattern}/: {found.group(0)[:60]!r}"
            return None
        return Test(test)

    def _when_attachment(self, match: schema.AttachmentMatch) -> Condition:
        types, names = match.type_ or [], match.name or []

        def test(s: Scan) -> str | None:
            for name, kind in s.facts.attachments:
                if (not types or _first_glob(kind.lower(), types)) and (not names or _first_glob(name.lower(), names)):
                    return f"attachment {name!r} ({kind})"
            return None
        return Test(test)

    def _when_header(self, match: schema.HeaderMatch) -> Condition:
        name = match.name
        if match.present is not None:
            present = match.present
            return Test(lambda s: (f"header {name} is {'present' if present else 'absent'}"
                                   if (name in s.facts.headers) == present else None))
        if match.value is not None:
            globs = match.value

            def glob_test(s: Scan) -> str | None:
                for v in s.facts.headers.get(name, []):
                    if _first_glob(v.strip().lower(), globs):
                        return f"header {name}: {v[:80]!r}"
                return None
            return Test(glob_test)
        pattern = regex.compile(match.matches)

        def regex_test(s: Scan) -> str | None:
            for v in s.facts.headers.get(name, []):
                try:
                    if pattern.search(v, timeout=s.regex_timeout):
                        return f"header {name}: {v[:80]!r} matches /{pattern.pattern}/"
                except TimeoutError:
                    raise RegexTimedOut(f"/{pattern.pattern}/ on header {name}") from None
            return None
        return Test(regex_test)

    def _when_fax_number(self, patterns: list[str]) -> Condition:
        compact = [_digits(p) for p in patterns]

        def test(s: Scan) -> str | None:
            number = _digits(s.facts.fax_number or "")
            hit = _first_glob(number, compact) if number else None
            return None if hit is None else f"fax number {s.facts.fax_number} matches {hit!r}"
        return Test(test)


def _first_glob(value: str, patterns: Iterable[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(value, p)), None)


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit() or c in "+*?[]")


def _data_path(loc: tuple[str | int, ...], data: Any) -> Path_:
    """Pydantic's error location as a path into the file's data.

    A location also names things the file does not have: union members, and the
    `any` or `pattern` a shorthand (`subject: [..]`, `regex: ".."`) stands for.
    Only the steps that exist in the data are kept, and a last key that does not
    (a required key that is missing)."""
    path: list[str | int] = []
    for n, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        elif isinstance(data, dict) and n == len(loc) - 1:
            path.append(part)
            break
        else:
            continue
        path.append(part)
    return tuple(path)


def _issues(error: ValidationError, source: Located) -> list[RuleIssue]:
    issues = []
    for e in error.errors(include_url=False):
        path = _data_path(e["loc"], source.data)
        kind = e["type"]
        if kind == "missing":
            key = path[-1] if path else ""
            reason = ("required: a name for the rule" if key == "name" and len(path) == 3
                      else schema.MISSING.get(str(key), "required"))
        elif kind in ("bool_type", "bool_parsing"):
            reason = "true or false"
        elif kind == "extra_forbidden" and (model := schema.model_at(e["loc"][:-1])):
            reason = model.unknown_key
        elif kind == "model_type" and (model := schema.model_at(e["loc"])):
            reason = model.shape_hint
        else:
            reason = e["msg"].removeprefix("Value error, ")
        issues.append(source.issue(path, reason))
    return issues


def _duplicate_names(source: Located) -> list[RuleIssue]:
    """Every rule's name is its own: the trace and the statistics name rules."""
    listed = source.data.get("rules") if isinstance(source.data, dict) else None
    issues: list[RuleIssue] = []
    first: dict[str, int] = {}
    for i, rule in enumerate(listed if isinstance(listed, list) else []):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str) or not name.strip():
            continue
        if name in first:
            issues.append(source.issue(("rules", i, "name"),
                                       f"another rule is called {name!r} (line {source.line(('rules', first[name]))})"))
        first.setdefault(name, i)
    return issues


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Compiling makes hundreds of thousands of objects that all live on (YAML values, models,
    closures) and hardly any garbage; the cyclic collector would walk them over and over
    (with 10,000 rules, more time than everything else together). Whatever garbage there is
    waits for the next collection.

    What lives on, the compiled rules, then goes straight to the oldest generation (frozen and
    at once unfrozen: nothing is walked) instead of being walked by the first young collection
    after the pause; the next full collection looks at it, as at anything long-lived. Nothing
    else in the gateway freezes objects, so unfreezing releases only these."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def compile_rules(file: Path, text: str, organisation: Organisation, data: Any = None) -> RuleSet:
    """Validate and compile a rules file, or raise RulesError naming file, line, key and reason of every problem.

    `organisation` gives what validation checks against (department ids, categories,
    domains, intake addresses) and what conditions consult when they run. `data`: the text's
    data, when it was read already (RulesSource.read)."""
    with _collector_paused():
        return _compile(file, text, organisation, data)


def _compile(file: Path, text: str, organisation: Organisation, data: Any) -> RuleSet:
    source = Located(file, text, data)
    issues = _duplicate_names(source)
    try:
        validated = schema.RulesFile.model_validate(source.data, context={"organisation": organisation})
    except ValidationError as exc:
        issues += _issues(exc, source)
    if issues:
        raise RulesError(sorted(issues, key=lambda i: i.line or 0))
    builder = _Builder()
    rules: list[Rule] = []
    # The rules as written beside them: conditions and actions follow the file's order.
    for n, (rule, written, line) in enumerate(zip(validated.rules, source.data["rules"],
                                                  source.item_lines(("rules",)), strict=True)):
        try:
            condition = builder.condition(rule.when, written["when"], ("rules", n, "when"))
        except _EmptyCondition as empty:
            issues.append(source.issue(empty.path, "empty: give the condition a value, or leave the key out"))
            continue
        actions = rule.actions.scalars(written["set"])
        department = actions.get("department")
        rules.append(Rule(name=rule.name, line=line, condition=condition, actions=actions,
                          tags=rule.actions.tags or [], stop=rule.stop,
                          department_literal=department if department in organisation.departments else None))
    if issues:
        raise RulesError(issues)
    return RuleSet(RulesSource(file, text, organisation), rules, builder.keywords, validated.defaults.given(),
                   validated.settings.regex_timeout_ms / 1000)


def no_rules(organisation: Organisation) -> RuleSet:
    """No rules file: every letter goes to triage, and the trace says why."""
    return compile_rules(Path("(no rules file)"), "rules: []\n", organisation)


def load_rules(file: Path | None, organisation: Organisation) -> RuleSet:
    """The rules of this file, or no rules when there is none to read."""
    if file is None:
        return no_rules(organisation)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError([RuleIssue(file, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([RuleIssue(file, None, "", f"cannot read: {exc}")]) from None
    return compile_rules(file, text, organisation)
