"""Reading rules.yaml into plain data while remembering the line of every value.

Validation errors then name the line an operator has to fix, not only a key path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class RuleIssue:
    file: Path
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.key or '(top level)'}: {self.reason}"


class RulesError(Exception):
    def __init__(self, issues: list[RuleIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def key_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


class Located:
    """The data of a YAML document and the line each value starts on."""

    def __init__(self, file: Path, text: str):
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.issues: list[RuleIssue] = []
        # The C loader when PyYAML has it: a rule set of 10,000 rules is 30,000 lines.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        self._constructor = yaml.SafeLoader("")
        try:
            node = yaml.compose(text, Loader=loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            raise RulesError([RuleIssue(file, mark.line + 1 if mark else None, "",
                                        f"not valid YAML: {problem}")]) from None
        try:
            self.data: Any = {} if node is None else self._value(node, ())
        except RecursionError:
            issue = RuleIssue(file, None, "", "an alias refers to itself (or nesting is too deep)")
            raise RulesError([issue]) from None
        if self.issues:
            raise RulesError(self.issues)

    def _value(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.issues.append(RuleIssue(self.file, key_node.start_mark.line + 1, key_path(path),
                                                 "keys must be plain names"))
                    continue
                if key in out:
                    self.issues.append(RuleIssue(self.file, key_node.start_mark.line + 1,
                                                 key_path((*path, key)), "key given twice"))
                    continue
                out[key] = self._value(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._value(child, (*path, i)) for i, child in enumerate(node.value)]
        # Scalars through the safe constructor: true/false, numbers, strings.
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issues.append(RuleIssue(self.file, node.start_mark.line + 1, key_path(path),
                                         f"cannot read this value ({node.tag}): {problem}"))
            return None

    def line(self, path: Path_) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def issue(self, path: Path_, reason: str) -> RuleIssue:
        return RuleIssue(self.file, self.line(path), key_path(path), reason)
