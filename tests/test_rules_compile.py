"""Compiling rules.yaml: what the quick reading gives, the lines and order it keeps, and errors where it stops."""
from __future__ import annotations

import gc
import random
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
from gateway.stages.classify import source
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


FAST_ALIKE = [
    MIXED.replace("&business ", "").replace("*business", "{department: business, deadline_days: 3}")
    .replace("25.5", "25").replace('"2026"', "'y2026'"),
    "a: 1_000\nb: 1x1F\nc: -12\nd: a@b, 'c' d\ne: 2026年3月\n# R&D, `x`, [?y]\n",
    "rules: []\n",
    'rules:\n- name: "引号 \\u4e2d \\x41 \\t tab"\n  when: {subject: [\'it\'\'s\']}\n  set: {department: hr}\n',
    "rules:\n  - name: folded\n    description: >\n      two\n      lines\n    note: |\n      - kept\n        as is\n"
    "    when: {keywords: [plain text on, more]}\n    set: {department: hr, deadline_days: -3}\n",
    "defaults: {urgency: regular, category: null}\nrules:\n  - {name: n, when: {channel: [fax]}, set: {stop: true}}\n",
]
# Read differently by YAML 1.2 (yaml_rs) and 1.1 (PyYAML), or beyond what the fast reading vouches
# for: each is left to PyYAML, which gives what it always gave.
FAST_UNALIKE = [
    "a: yes\n", "a: [on, off]\n", "a: 017\n", "a: [-017]\n", "a: 12:30\n", "a: 2026-03-01\n", "a: 1e3\n",
    "a: 0o17\n", "a: !custom x\n", "a: .inf\n", "a: 2.5\n", "'yes': 1\n", "a: 'no'\n", "a: &x 1\nb: *x\n",
    "a: !!str 12\n",
    "%YAML 1.1\n---\na: b\n", "a: 1\n---\nb: 2\n", "a: b\x07\n", "a: 1\na: 2\n", "a: [unclosed\n", "",
    "a: _5\n", "a: [0O2]\n", "a: [?b]\n", "a: [b, |c]\n", "a: {b: >x}\n", "a: [b, :c]\n", "\ufeffa: b\n",
    "a: b\x85c\n", "a: |\n   \n",
]


@pytest.mark.parametrize("text", FAST_ALIKE + FAST_UNALIKE)
def test_whichever_reads_a_document_its_data_is_what_pyyaml_gives(text: str) -> None:
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        with pytest.raises(RulesError):
            Located(Path("r.yaml"), text)
        return
    if text == "a: 1\na: 2\n":  # PyYAML keeps the last; a rules file names the key given twice
        with pytest.raises(RulesError, match="key given twice"):
            Located(Path("r.yaml"), text)
        return
    assert Located(Path("r.yaml"), text).data == ({} if expected is None else expected)
    assert (source._read_fast(text) is source._UNREAD) == (text in FAST_UNALIKE)


def test_a_plain_rules_file_is_read_fast_and_its_rules_keep_their_lines(organisation: Organisation) -> None:
    shipped = (ROOT / "config" / "rules.yaml").read_text()
    assert source._read_fast(shipped) is not source._UNREAD
    text = textwrap.dedent("""\
        # rules at the indentation of their key, comments and blank lines between them
        rules:
        - name: first
          description: |
            - a line of text,
            - not a rule
          when: {subject: [a]}

          set: {department: hr}
        # a comment
        -   name: second
            when:
              subject: [b]
            set: {department: hr}
        -
          name: third
          when: {subject: [c]}
          set: {department: hr}
        defaults: {urgency: regular}
        """)
    flow = "rules: [{name: first, when: {subject: [a]}, set: {department: hr}},\n" \
           "        {name: second, when: {subject: [b]}, set: {department: hr}}]\n"
    for document, lines in ((text, [3, 11, 16]), (flow, [1, 2]), (shipped, None)):
        fast = Located(Path("r.yaml"), document)
        assert fast._composed is source._UNREAD  # nothing composed for reading it
        composed = [node.start_mark.line + 1 for key, value in yaml.compose(document).value
                    if key.value == "rules" for node in value.value]
        assert fast.item_lines(("rules",)) == composed == (lines or composed)
        ruleset = compile_rules(Path("r.yaml"), document, organisation)
        assert [rule.line for rule in ruleset.rules] == composed


def test_the_fast_reading_gives_pyyamls_data_for_any_value_and_any_damaged_file() -> None:
    """Seeded random values (numbers, booleans, nulls and near misses) as a value, a list item and
    a key, and rules files with a few characters changed: wherever the fast reading gives data and
    PyYAML reads the document, the data are PyYAML's, types included."""
    rng = random.Random(7)

    def alike(text: str) -> None:
        fast = source._read_fast(text)
        if fast is source._UNREAD:
            return
        try:
            expected = yaml.safe_load(text)
        except yaml.YAMLError:
            return
        assert repr(fast) == repr(expected), text

    pieces = [*"0123456789_+-.eExobacdfABCDF:~ nNuUlLtTrRsSyYoOiI,", "inf", "nan", "true", "null", "0x", "0o", "e+"]
    for _ in range(3000):
        token = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))).strip()
        for text in (f"a: {token}\n", f"a: [{token}]\n", f"{token}: a\n"):
            alike(text)
    shipped = (ROOT / "config" / "rules.yaml").read_text()
    changes = [*" -:#[]{},'\"\n\t|>?&!%@`~0123456789yesno._x", "\n  ", "\n- ", "1e3", "\u2028", "\ufeff"]
    for _ in range(300):
        text = list(shipped)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            text[at:at + rng.randint(0, 1)] = [rng.choice(changes)]
        alike("".join(text))


def test_a_default_category_of_null_is_no_default_category(organisation: Organisation) -> None:
    rules = "rules:\n  - name: r\n    when: {subject: [x]}\n    set: {department: hr}\n"
    written = compile_rules(Path("r.yaml"), "defaults: {urgency: urgent, category: null}\n" + rules, organisation)
    left_out = compile_rules(Path("r.yaml"), "defaults: {urgency: urgent}\n" + rules, organisation)
    assert written.defaults == left_out.defaults == {"urgency": "urgent", "confidentiality": "normal"}
    with pytest.raises(RulesError, match="defaults.urgency"):
        compile_rules(Path("r.yaml"), "defaults: {urgency: null}\n" + rules, organisation)
