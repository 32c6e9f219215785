"""Classification rules: compiled from rules.yaml, applied in order, every decision explained.

A rule is `when` (conditions) and `set` (actions). Rules are tried in file
order; the first rule to set a field wins it (later rules may still add tags
and fill fields left unset), and a matching rule stops the search unless it
says `stop: false`. Whatever no rule routes goes to triage.

Speed does not depend much on the number of rules: every keyword of every rule
sits in one Aho-Corasick automaton (a DFA) that reads each field of a letter once, and
a rule that needs a keyword (or a sender domain) is only looked at when that
keyword was found (or the domain matches). Rules that need neither are always
looked at.
"""
from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ahocorasick_rs
import regex

from gateway.stages.classify.facts import Facts
from gateway.stages.classify.fold import fold
from gateway.stages.classify.source import Located, Path_, RuleIssue, RulesError
from gateway.config import CATEGORY_NAMES
from gateway.stages.autoreply import safe_address

if TYPE_CHECKING:
    from gateway.config import Config

CATEGORIES = CATEGORY_NAMES
URGENCIES = ("regular", "urgent", "special")
CONFIDENTIALITIES = ("normal", "confidential")
CHANNELS = ("email", "fax")
TEXT_FIELDS = ("subject", "body", "sender_name", "attachment_names")
SCALAR_ACTIONS = ("category", "department", "owner", "urgency", "confidentiality", "deadline_days")
_ASCII_WORD = re.compile(r"[0-9a-z]")

Evidence = list[str]


@dataclass
class Context:
    """What a condition may consult besides the letter: the organisation."""

    own_domains: frozenset[str]
    department_addresses: dict[str, str]  # address -> department id
    department_people: dict[str, str]  # owner, head or member address -> department id

    @classmethod
    def of(cls, config: Config) -> Context:
        addresses: dict[str, str] = {}
        people: dict[str, str] = {}
        for dept in config.model.departments:
            for address in dept.addresses:
                addresses.setdefault(address, dept.id)
            for person in [*dept.owners, dept.head, *dept.members]:
                people.setdefault(person, dept.id)
        return cls(frozenset(config.model.gateway.domains), addresses, people)

    def is_internal(self, address: str) -> bool:
        domain = address.rpartition("@")[2]
        return bool(domain) and any(domain == d or domain.endswith("." + d) for d in self.own_domains)

    def sender_department(self, facts: Facts) -> str | None:
        address = facts.sender_address
        return self.department_addresses.get(address) or self.department_people.get(address)

    def recipient_departments(self, facts: Facts) -> list[str]:
        found = [self.department_addresses[a] for a in facts.recipients if a in self.department_addresses]
        return list(dict.fromkeys(found))


class Scan:
    """One letter as the conditions see it: folded fields and the keywords found in them."""

    def __init__(self, facts: Facts, ctx: Context, automaton: Any, keywords: list[str], regex_timeout: float):
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
        self.needs = frozenset(("kw", i) for i in ids)

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

    @property
    def needs_triage(self) -> bool:
        return self.triage is not None

    def trace(self) -> dict[str, Any]:
        return {"rules": self.rules_version, "matched": self.matched, "triage": self.triage,
                **({"skipped": self.skipped} if self.skipped else {}),
                "result": {"category": self.category, "department": self.department, "owner": self.owner,
                           "urgency": self.urgency, "confidentiality": self.confidentiality,
                           "deadline_days": self.deadline_days, "tags": self.tags}}


class RuleSet:
    def __init__(self, file: Path, text: str, rules: list[Rule], keywords: list[str], ctx: Context,
                 defaults: dict[str, str], regex_timeout: float, triage_department: str):
        self.file = file
        self.text = text
        self.version = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.rules = rules
        self.keywords = keywords
        self.ctx = ctx
        self.defaults = defaults
        self.regex_timeout = regex_timeout
        self.triage_department = triage_department
        # A DFA: its cost per character hardly grows with the number of keywords.
        self.automaton = ahocorasick_rs.AhoCorasick(keywords, implementation=ahocorasick_rs.Implementation.DFA)
        self.always: list[int] = []
        self.by_trigger: dict[tuple[str, Any], list[int]] = {}
        for index, rule in enumerate(rules):
            if rule.condition.needs is None:
                self.always.append(index)
            else:
                for trigger in rule.condition.needs:
                    self.by_trigger.setdefault(trigger, []).append(index)

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
        decision = Decision(rules_version=self.version)
        nearly: list[str] = []
        for index in self._candidates(scan):
            rule = self.rules[index]
            try:
                evidence = rule.condition.check(scan)
            except RegexTimedOut as exc:
                decision.skipped.append({"rule": rule.name, "line": rule.line,
                                         "reason": f"{exc} took longer than {self.regex_timeout * 1000:g} ms"})
                continue
            if evidence is None:
                if rule.department_literal and rule.condition.keyword_ids & scan.found_ids:
                    nearly.append(rule.department_literal)
                continue
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

class _Compiler:
    def __init__(self, source: Located, config: Config):
        self.src = source
        self.config = config
        self.departments = set(config.departments)
        self.issues: list[RuleIssue] = []
        self.keywords: list[str] = []
        self.keyword_ids: dict[str, int] = {}
        self.regex_timeout = 0.05

    def fail(self, path: Path_, reason: str) -> None:
        self.issues.append(self.src.issue(path, reason))

    def keyword(self, word: str) -> int:
        folded = fold(word.strip())
        if folded not in self.keyword_ids:
            self.keyword_ids[folded] = len(self.keywords)
            self.keywords.append(folded)
        return self.keyword_ids[folded]

    def strings(self, value: Any, path: Path_, what: str) -> list[str] | None:
        values = value if isinstance(value, list) else [value]
        if not values:
            self.fail(path, f"give at least one {what}")
            return None
        out: list[str] = []
        for i, v in enumerate(values):
            where = (*path, i) if isinstance(value, list) else path
            if not isinstance(v, str) or not v.strip():
                self.fail(where, f"{what} must be non-empty text (got {v!r}; quote it)")
                return None
            out.append(v.strip())
        return out

    def globs(self, value: Any, path: Path_, what: str) -> list[str] | None:
        values = self.strings(value, path, what)
        return None if values is None else [v.lower() for v in values]

    def condition(self, node: Any, path: Path_) -> Condition | None:
        if not isinstance(node, dict) or not node:
            self.fail(path, "a condition is a mapping such as {sender_domain: [\"*.gov.cn\"]}")
            return None
        parts: list[Condition] = []
        for key, value in node.items():
            handler = getattr(self, f"_when_{key}", None)
            if handler is None:
                self.fail((*path, key), f"unknown condition; use one of {', '.join(_CONDITIONS)}")
                continue
            compiled = handler(value, (*path, key))
            if compiled is not None:
                parts.append(compiled)
        if len(parts) != len(node):
            return None
        return parts[0] if len(parts) == 1 else AllOf(parts)

    # Conditions, one method each; the name after _when_ is the key in rules.yaml.
    def _when_all(self, value: Any, path: Path_) -> Condition | None:
        return self._group(value, path, AllOf)

    def _when_any(self, value: Any, path: Path_) -> Condition | None:
        return self._group(value, path, AnyOf)

    def _group(self, value: Any, path: Path_, kind: type[AllOf] | type[AnyOf]) -> Condition | None:
        if not isinstance(value, list) or not value:
            self.fail(path, "give a list of conditions")
            return None
        parts = [self.condition(v, (*path, i)) for i, v in enumerate(value)]
        return None if any(p is None for p in parts) else kind(parts)  # type: ignore[arg-type]

    def _when_not(self, value: Any, path: Path_) -> Condition | None:
        part = self.condition(value, path)
        return None if part is None else Not(part, "; ".join(f"{k}: {v}" for k, v in value.items()))

    def _when_channel(self, value: Any, path: Path_) -> Condition | None:
        channels = self.strings(value, path, "channel")
        if channels is None:
            return None
        if bad := [c for c in channels if c not in CHANNELS]:
            self.fail(path, f"unknown channel {bad[0]!r}; use email or fax")
            return None
        return Test(lambda s: f"channel is {s.facts.channel}" if s.facts.channel in channels else None)

    def _when_sender(self, value: Any, path: Path_) -> Condition | None:
        patterns = self.globs(value, path, "address pattern")
        if patterns is None:
            return None
        exact = all(not any(c in p for c in "*?[") for p in patterns)

        def test(s: Scan) -> str | None:
            hit = _first_glob(s.facts.sender_address, patterns)
            return None if hit is None else f"sender {s.facts.sender_address} matches {hit!r}"
        return Test(test, frozenset(("sender", p) for p in patterns) if exact else None)

    def _when_sender_domain(self, value: Any, path: Path_) -> Condition | None:
        patterns = self.globs(value, path, "domain pattern")
        if patterns is None:
            return None
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

    def _when_sender_internal(self, value: Any, path: Path_) -> Condition | None:
        if not isinstance(value, bool):
            self.fail(path, "true or false")
            return None
        if not self.config.model.gateway.domains:
            self.fail(path, "needs the organisation's domains: set gateway.domains in the configuration")
            return None

        def test(s: Scan) -> str | None:
            internal = bool(s.facts.sender_address) and s.ctx.is_internal(s.facts.sender_address)
            if internal != value:
                return None
            return f"sender {s.facts.sender_address or '(none)'} is {'' if internal else 'not '}in the organisation"
        return Test(test)

    def _departments(self, value: Any, path: Path_) -> set[str] | None | bool:
        if value == "any":
            return True
        ids = self.strings(value, path, "department id")
        if ids is None:
            return False
        if unknown := [d for d in ids if d not in self.departments]:
            self.fail(path, f"no department with id {unknown[0]!r} (known: {', '.join(sorted(self.departments))})")
            return False
        return set(ids)

    def _department_condition(self, value: Any, path: Path_, found: Callable[[Scan], list[str]],
                              says: str) -> Condition | None:
        """sender_department, recipient_department, mailbox_department: `any` or a list of ids."""
        wanted = self._departments(value, path)
        if wanted is False:
            return None

        def test(s: Scan) -> str | None:
            depts = [d for d in found(s) if wanted is True or d in wanted]  # type: ignore[operator]
            return says.format(dept=depts[0], sender=s.facts.sender_address) if depts else None
        return Test(test)

    def _when_sender_department(self, value: Any, path: Path_) -> Condition | None:
        return self._department_condition(value, path, lambda s: [d] if (d := s.ctx.sender_department(s.facts)) else [],
                                           "sender {sender} belongs to {dept}")

    def _when_recipient_department(self, value: Any, path: Path_) -> Condition | None:
        return self._department_condition(value, path, lambda s: s.ctx.recipient_departments(s.facts),
                                          "addressed to department {dept}")

    def _when_mailbox_department(self, value: Any, path: Path_) -> Condition | None:
        return self._department_condition(
            value, path, lambda s: [s.facts.mailbox_department] if s.facts.mailbox_department else [],
            "fetched from the mailbox of {dept}")

    def _when_recipient(self, value: Any, path: Path_) -> Condition | None:
        patterns = self.globs(value, path, "address pattern")
        if patterns is None:
            return None

        def test(s: Scan) -> str | None:
            for address in s.facts.recipients:
                hit = _first_glob(address, patterns)
                if hit is not None:
                    return f"recipient {address} matches {hit!r}"
            return None
        return Test(test)

    def _fields(self, value: Any, path: Path_) -> tuple[str, ...] | None:
        """The `in:` of a keyword or regex condition: which texts of the letter to look at."""
        where = self.strings(value, path, "field")
        if where is None:
            return None
        if bad := [f for f in where if f not in TEXT_FIELDS]:
            self.fail(path, f"unknown field {bad[0]!r}; use {', '.join(TEXT_FIELDS)}")
            return None
        return tuple(where)

    def _keywords(self, value: Any, path: Path_, fields: tuple[str, ...]) -> Condition | None:
        mode = "any"
        if isinstance(value, dict):
            unknown = set(value) - {"any", "all", "in"}
            if unknown:
                self.fail((*path, sorted(unknown)[0]), "unknown key; use any, all and in")
                return None
            if ("any" in value) == ("all" in value):
                self.fail(path, "give exactly one of any and all")
                return None
            if "in" in value:
                where = self._fields(value["in"], (*path, "in"))
                if where is None:
                    return None
                fields = where
            mode = "any" if "any" in value else "all"
            path, value = (*path, mode), value[mode]
        words = self.strings(value, path, "keyword")
        if words is None:
            return None
        return Keywords([self.keyword(w) for w in words], words, mode, fields)

    def _when_keywords(self, value: Any, path: Path_) -> Condition | None:
        return self._keywords(value, path, ("subject", "body"))

    def _when_subject(self, value: Any, path: Path_) -> Condition | None:
        return self._keywords(value, path, ("subject",))

    def _when_body(self, value: Any, path: Path_) -> Condition | None:
        return self._keywords(value, path, ("body",))

    def _when_sender_name(self, value: Any, path: Path_) -> Condition | None:
        return self._keywords(value, path, ("sender_name",))

    def _when_regex(self, value: Any, path: Path_) -> Condition | None:
        fields: tuple[str, ...] = ("subject", "body")
        if isinstance(value, dict):
            if set(value) - {"pattern", "in"} or "pattern" not in value:
                self.fail(path, "give pattern and, optionally, in")
                return None
            if "in" in value:
                where = self._fields(value["in"], (*path, "in"))
                if where is None:
                    return None
                fields = where
            path, value = (*path, "pattern"), value["pattern"]
        pattern = self._regex(value, path)
        if pattern is None:
            return None

        def test(s: Scan) -> str | None:
            for name in fields:
                try:
                    match = pattern.search(s.text[name], timeout=s.regex_timeout)
                except TimeoutError:
                    # Bounded: a pathological pattern costs its time limit, not the daemon.
                    raise RegexTimedOut(f"/{pattern.pattern}/ on the {name}") from None
                if match:
                    return f"{name.replace('_', ' ')} matches /{pattern.pattern}/: {match.group(0)[:60]!r}"
            return None
        return Test(test)

    def _regex(self, value: Any, path: Path_) -> Any:
        if not isinstance(value, str) or not value:
            self.fail(path, "a regular expression (quote it)")
            return None
        try:
            return regex.compile(value)
        except regex.error as exc:
            self.fail(path, f"not a valid regular expression: {exc}")
            return None

    def _when_attachment(self, value: Any, path: Path_) -> Condition | None:
        if not isinstance(value, dict) or not value or set(value) - {"type", "name"}:
            self.fail(path, "give type and/or name patterns, e.g. {type: application/pdf, name: \"*.docx\"}")
            return None
        types = self.globs(value["type"], (*path, "type"), "type pattern") if "type" in value else []
        names = self.globs(value["name"], (*path, "name"), "name pattern") if "name" in value else []
        if types is None or names is None:
            return None

        def test(s: Scan) -> str | None:
            for name, kind in s.facts.attachments:
                if (not types or _first_glob(kind.lower(), types)) and (not names or _first_glob(name.lower(), names)):
                    return f"attachment {name!r} ({kind})"
            return None
        return Test(test)

    def _when_header(self, value: Any, path: Path_) -> Condition | None:
        if not isinstance(value, dict) or "name" not in value or not isinstance(value["name"], str):
            self.fail(path, "give name and one of present, value or matches")
            return None
        tests = set(value) - {"name"}
        if len(tests) != 1 or not tests <= {"present", "value", "matches"}:
            self.fail(path, "give exactly one of present (true/false), value (a pattern) or matches (a regex)")
            return None
        name = value["name"].strip().lower()
        if "present" in value:
            present = value["present"]
            if not isinstance(present, bool):
                self.fail((*path, "present"), "true or false")
                return None
            return Test(lambda s: (f"header {name} is {'present' if present else 'absent'}"
                                   if (name in s.facts.headers) == present else None))
        if "value" in value:
            globs = self.globs(value["value"], (*path, "value"), "value pattern")
            if globs is None:
                return None

            def glob_test(s: Scan) -> str | None:
                for v in s.facts.headers.get(name, []):
                    if _first_glob(v.strip().lower(), globs):
                        return f"header {name}: {v[:80]!r}"
                return None
            return Test(glob_test)
        pattern = self._regex(value["matches"], (*path, "matches"))
        if pattern is None:
            return None

        def regex_test(s: Scan) -> str | None:
            for v in s.facts.headers.get(name, []):
                try:
                    if pattern.search(v, timeout=s.regex_timeout):
                        return f"header {name}: {v[:80]!r} matches /{pattern.pattern}/"
                except TimeoutError:
                    raise RegexTimedOut(f"/{pattern.pattern}/ on header {name}") from None
            return None
        return Test(regex_test)

    def _when_fax_number(self, value: Any, path: Path_) -> Condition | None:
        patterns = self.strings(value, path, "fax number pattern")
        if patterns is None:
            return None
        compact = [_digits(p) for p in patterns]

        def test(s: Scan) -> str | None:
            number = _digits(s.facts.fax_number or "")
            hit = _first_glob(number, compact) if number else None
            return None if hit is None else f"fax number {s.facts.fax_number} matches {hit!r}"
        return Test(test)

    # -- actions ---------------------------------------------------------
    def actions(self, node: Any, path: Path_) -> tuple[dict[str, Any], list[str]] | None:
        if not isinstance(node, dict) or not node:
            self.fail(path, f"give the fields to set: {', '.join((*SCALAR_ACTIONS, 'tags'))}")
            return None
        out: dict[str, Any] = {}
        tags: list[str] = []
        ok = True
        for key, value in node.items():
            where = (*path, key)
            checked = self.action(key, value, where)
            if checked is None:
                ok = False
            elif key == "tags":
                tags = checked
            else:
                out[key] = checked
        return (out, tags) if ok else None

    def action(self, key: str, value: Any, where: Path_) -> Any:
        choices = {"category": CATEGORIES, "urgency": URGENCIES, "confidentiality": CONFIDENTIALITIES}
        if key in choices:
            if value not in choices[key]:
                self.fail(where, f"{value!r} is not a {key}; use one of {', '.join(choices[key])}")
                return None
            return value
        if key == "department":
            if value not in self.departments and value not in ("recipient", "sender"):
                self.fail(where, f"no department with id {value!r} (known: {', '.join(sorted(self.departments))};"
                                 " or recipient, sender)")
                return None
            return value
        if key == "owner":
            if not isinstance(value, str) or not safe_address(value.strip()):
                self.fail(where, f"{value!r} is not a plain e-mail address")
                return None
            return value.strip().lower()
        if key == "deadline_days":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 365:
                self.fail(where, "a whole number of working days from 0 to 365")
                return None
            return value
        if key == "tags":
            tags = self.strings(value, where, "tag")
            if tags is not None and (bad := [t for t in tags if not re.fullmatch(r"[\w.:-]+", t)]):
                self.fail(where, f"tag {bad[0]!r}: letters, digits, '.', ':', '_' and '-' only")
                return None
            return tags
        self.fail(where, f"unknown action; use one of {', '.join((*SCALAR_ACTIONS, 'tags'))}")
        return None


_CONDITIONS = sorted(name.removeprefix("_when_") for name in vars(_Compiler) if name.startswith("_when_"))


def _first_glob(value: str, patterns: Iterable[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(value, p)), None)


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit() or c in "+*?[]")


def compile_rules(file: Path, text: str, config: Config) -> RuleSet:
    source = Located(file, text)
    compiler = _Compiler(source, config)
    data = source.data
    if not isinstance(data, dict):
        raise RulesError([source.issue((), "the file must be a mapping with a `rules:` list")])
    for key in data:
        if key not in ("version", "settings", "defaults", "rules"):
            compiler.fail((key,), "unknown key; use version, settings, defaults and rules")
    if data.get("version", 1) != 1:
        compiler.fail(("version",), "only version 1 is known")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        compiler.fail(("settings",), "a mapping")
    else:
        for key, value in settings.items():
            if key != "regex_timeout_ms":
                compiler.fail(("settings", key), "unknown setting; use regex_timeout_ms")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10_000:
                compiler.fail(("settings", key), "milliseconds from 1 to 10000")
            else:
                compiler.regex_timeout = value / 1000
    defaults: dict[str, str] = {"urgency": "regular", "confidentiality": "normal"}
    given = data.get("defaults") or {}
    if not isinstance(given, dict):
        compiler.fail(("defaults",), "a mapping")
    else:
        for key, value in given.items():
            if key not in ("urgency", "confidentiality", "category"):
                compiler.fail(("defaults", key), "unknown default; use urgency, confidentiality or category")
            elif (checked := compiler.action(key, value, ("defaults", key))) is not None:
                defaults[key] = checked
    rules: list[Rule] = []
    names: dict[str, int] = {}
    listed = data.get("rules")
    if not isinstance(listed, list):
        compiler.fail(("rules",), "required: a list of rules")
        listed = []
    for i, node in enumerate(listed):
        path: Path_ = ("rules", i)
        if not isinstance(node, dict):
            compiler.fail(path, "a rule is a mapping with name, when and set")
            continue
        for key in node:
            if key not in ("name", "description", "when", "set", "stop"):
                compiler.fail((*path, key), "unknown key; use name, description, when, set and stop")
        name = node.get("name")
        if not isinstance(name, str) or not name.strip():
            compiler.fail((*path, "name"), "required: a name for the rule")
            name = f"rules[{i}]"
        elif name in names:
            compiler.fail((*path, "name"), f"another rule is called {name!r} (line {source.line(('rules', names[name]))})")
        names.setdefault(name, i)
        if "when" not in node:
            compiler.fail(path, "required: when (the conditions)")
            continue
        if "set" not in node:
            compiler.fail(path, "required: set (the actions)")
            continue
        condition = compiler.condition(node["when"], (*path, "when"))
        actions = compiler.actions(node["set"], (*path, "set"))
        stop = node.get("stop", True)
        if not isinstance(stop, bool):
            compiler.fail((*path, "stop"), "true or false")
        if condition is None or actions is None:
            continue
        department = actions[0].get("department")
        rules.append(Rule(name=name, line=source.line(path), condition=condition, actions=actions[0],
                          tags=actions[1], stop=bool(stop),
                          department_literal=department if department in compiler.departments else None))
    if compiler.issues:
        raise RulesError(compiler.issues)
    return RuleSet(file, text, rules, compiler.keywords, Context.of(config), defaults,
                   compiler.regex_timeout, config.model.triage.department)


def no_rules(config: Config) -> RuleSet:
    """No rules file: every letter goes to triage, and the trace says why."""
    return compile_rules(Path("(no rules file)"), "rules: []\n", config)


def load_rules(file: Path, config: Config) -> RuleSet:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError([RuleIssue(file, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([RuleIssue(file, None, "", f"cannot read: {exc}")]) from None
    return compile_rules(file, text, config)
