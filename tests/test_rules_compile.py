"""Compiling rules.yaml: what the quick reading gives, the lines and order it keeps, and errors where it stops."""
from __future__ import annotations

import gc
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from gateway.stages import rulebook
from gateway.stages.classify.facts import Facts
from gateway.stages.classify.organisation import Organisation
from gateway.stages.classify.rules import compile_rules
from gateway.stages.classify.source import Located, RulesError


@pytest.fixture(scope="module")
def organisation(tmp_path_factory: pytest.TempPathFactory) -> Organisation:
    folder = tmp_path_factory.mktemp("shipped")
    text = (ROOT / "config" / "gateway.toml").read_text()
    (folder / "gateway.toml").write_text(text.replace('state_dir = "../storage"', f'state_dir = "{folder / "state"}"'))
    shutil.copy(ROOT / "config" / "rules.yaml", folder / "rules.yaml")
    return rulebook.organisation(rulebook.load(folder / "gateway.toml"))


MIXED = textwrap.dedent("""\
    # comments, block and flow styles, anchors, quoted and plain scalars of every kind
    version: 1
    settings: {regex_timeout_ms: 25.5}
    defaults:
      urgency: regular
    rules:
      - name: "quoted name"
        when: {subject: [合同, 'contract']}
        set: &business {department: business, deadline_days: 3}

      - name: plain
        when:
          keywords:
            all: [invoice, "2026"]
            in: [subject, body]
        set: *business
        stop: false
      -
        name: third
        description: ~
        when: {not: {sender_internal: true}, channel: [email]}
        set:
          urgency: urgent
          tags: [x.y, a-b]
    """)


def test_the_quick_reading_gives_what_yaml_gives_and_each_rule_its_line(organisation: Organisation) -> None:
    assert Located(Path("mixed.yaml"), MIXED).data == yaml.safe_load(MIXED)
    ruleset = compile_rules(Path("mixed.yaml"), MIXED, organisation)
    assert [(r.name, r.line) for r in ruleset.rules] == [("quoted name", 7), ("plain", 11), ("third", 19)]
    assert ruleset.regex_timeout == 0.0255
    assert (ruleset.rules[1].actions, ruleset.rules[1].stop) == ({"department": "business", "deadline_days": 3}, False)


def test_evidence_and_actions_follow_the_order_the_file_gives(organisation: Organisation) -> None:
    def decided(when: str, actions: str) -> dict[str, object]:
        text = f"rules:\n  - name: r\n    when: {when}\n    set: {actions}\n"
        decision = compile_rules(Path("r.yaml"), text, organisation).classify(
            Facts("email", "a@partner.example", subject="Contract renewal"))
        [entry] = decision.matched
        return entry

    one = decided("{sender_domain: [partner.example], subject: [contract]}", "{urgency: urgent, department: hr}")
    other = decided("{subject: [contract], sender_domain: [partner.example]}", "{department: hr, urgency: urgent}")
    assert one["evidence"] == other["evidence"][::-1] and len(one["evidence"]) == 2
    assert one["evidence"][0].startswith("sender domain") and other["evidence"][0].startswith("subject has")
    assert list(one["set"]) == ["urgency", "department"] and list(other["set"]) == ["department", "urgency"]
    negated = decided("{not: {subject: [offer], sender_domain: [other.example]}}", "{department: hr}")
    assert negated["evidence"] == ["not (subject: {'any': ['offer']}; sender_domain: ['other.example'])"]


def test_every_problem_the_quick_reading_stops_at_is_named(organisation: Organisation) -> None:
    text = textwrap.dedent("""\
        rules:
          - name: a
            when: {subject: [x]}
            set: {department: hr}
            stop: !!bool perhaps
          - name: b
            when: {subject: [y]}
            when: {subject: [z]}
            set: {department: hr}
        """)
    with pytest.raises(RulesError) as caught:
        compile_rules(Path("/etc/gateway/rules.yaml"), text, organisation)
    assert [(i.line, i.key) for i in caught.value.issues] == [(5, "rules[0].stop"), (8, "rules[1].when")]
    assert "cannot read this value" in caught.value.issues[0].reason
    assert caught.value.issues[1].reason == "key given twice"


def test_compiling_leaves_the_collector_as_it_was(organisation: Organisation) -> None:
    assert gc.isenabled()
    compile_rules(Path("r.yaml"), MIXED, organisation)
    assert gc.isenabled()
    gc.disable()
    try:
        compile_rules(Path("r.yaml"), MIXED, organisation)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_aliases_of_aliases_are_refused_before_they_are_expanded(organisation: Organisation) -> None:
    """Eight lines of aliases that would expand to a hundred million keywords: refused at once,
    by name. Fewer levels expand, and the error quotes only the start of the value."""
    levels = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    bomb = "\n".join([*levels, "rules:", "  - name: x", "    when: {keywords: *h}", "    set: {department: hr}", ""])
    with pytest.raises(RulesError) as caught:
        compile_rules(Path("rules.yaml"), bomb, organisation)
    [issue] = caught.value.issues
    assert issue.reason.startswith("its aliases expand to more than 2,000,000 values")
    nested = "\n".join([*levels[:4], "rules:", "  - name: x", "    when: {keywords: [*d]}",
                        "    set: {department: hr}", ""])
    with pytest.raises(RulesError) as caught:
        compile_rules(Path("rules.yaml"), nested, organisation)
    assert len(str(caught.value)) < 1000, str(caught.value)[:2000]
    [keywords] = [issue for issue in caught.value.issues if issue.key.startswith("rules[0]")]
    assert keywords.reason.startswith("keyword must be non-empty text (got ["), keywords
    assert keywords.reason.endswith("…; quote it)"), keywords
