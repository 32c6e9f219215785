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


_STR = "tag:yaml.org,2002:str"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (the C one when PyYAML has it: 10,000 rules are 30,000 lines), with the
    calls it makes back into Python for every node cut short. The safe loader has no path
    resolvers, so descending and ascending do nothing, a collection gets its default tag and a
    quoted scalar is a string; a plain scalar's tag depends on its text alone, and the same
    keys and values come back on every rule."""

    def __init__(self, stream: str):
        super().__init__(stream)
        # Set on the instance, where the C composer finds them first: a closure over its locals
        # for resolving, and built-in callables that take the arguments and do nothing for the
        # resolver's descending and ascending (their results are ignored). Three calls a node,
        # 160,000 nodes for 10,000 rules: a tenth of the reading.
        plain_tags: dict[str, str] = {}
        resolve_plain = super().resolve
        scalar, sequence = yaml.ScalarNode, yaml.SequenceNode
        sequence_tag, mapping_tag = self.DEFAULT_SEQUENCE_TAG, self.DEFAULT_MAPPING_TAG
        # The implicit resolvers (null, booleans, numbers, ...) are found by a value's first
        # character: a plain value that starts with none of theirs (a rule's name, a tag) is text.
        implicit_starts = self.yaml_implicit_resolvers.keys()
        every_start = None in implicit_starts

        def resolve(kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
            if kind is scalar:
                if not implicit[0]:
                    return _STR
                tag = plain_tags.get(value)
                if tag is None:
                    if not every_start and value[:1] not in implicit_starts:
                        return _STR
                    tag = plain_tags[value] = resolve_plain(kind, value, implicit)
                return tag
            return sequence_tag if kind is sequence else mapping_tag

        nothing: dict[Any, Any] = {}
        self.resolve = resolve
        self.descend_resolver = nothing.get  # (parent, index): a lookup in an empty dict
        self.ascend_resolver = tuple  # (): an empty tuple


# Values a rules file may hold once its aliases are expanded: 10,000 rules hold some 160,000. A
# few lines of aliases of aliases would otherwise expand to billions.
_MOST_VALUES = 2_000_000


def _expands_beyond(root: yaml.Node, most: int) -> bool:
    """Whether the document, each alias expanded, holds more than `most` values. Only a document
    with anchors is walked; the walk stops at `most`."""
    seen, stack = 0, [root]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > most:
            return True
        if isinstance(node, yaml.MappingNode):
            stack.extend(value for pair in node.value for value in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return False


class _Unusual(Exception):
    """Something the quick reading of a document does not handle: the careful one takes over."""


class Located:
    """The data of a YAML document and the line each value starts on."""

    def __init__(self, file: Path, text: str):
        self.file = file
        self.issues: list[RuleIssue] = []
        # Only plain scalars' values go through it, and it keeps nothing alive after the reading.
        self._constructor = yaml.constructor.SafeConstructor()
        try:
            self._root: yaml.Node | None = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            raise RulesError([RuleIssue(file, mark.line + 1 if mark else None, "",
                                        f"not valid YAML: {problem}")]) from None
        if "&" in text and self._root is not None and _expands_beyond(self._root, _MOST_VALUES):
            raise RulesError([RuleIssue(file, None, "", f"its aliases expand to more than {_MOST_VALUES:,} values "
                                                        "(an alias refers to a list of aliases, over and over)")])
        try:
            try:
                self.data: Any = {} if self._root is None else self._quick(self._root)
            except _Unusual:
                self.data = self._value(self._root, ())  # type: ignore[arg-type]
        except RecursionError:
            issue = RuleIssue(file, None, "", "an alias refers to itself (or nesting is too deep)")
            raise RulesError([issue]) from None
        if self.issues:
            raise RulesError(self.issues)

    def _quick(self, node: yaml.Node) -> Any:
        """The data of a well-formed document: no key paths kept (`line` finds a line when asked).
        Strings, most of the values, are taken in place: a call for each would cost a tenth of the reading."""
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value in node.value:
                key = key_node.value
                if not isinstance(key, str) or key in out:
                    raise _Unusual
                quick = value.tag == _STR and isinstance(value, yaml.ScalarNode)
                out[key] = value.value if quick else self._quick(value)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [c.value if c.tag == _STR and isinstance(c, yaml.ScalarNode) else self._quick(c) for c in node.value]
        return node.value if node.tag == _STR else self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, LookupError):
            raise _Unusual from None

    def _value(self, node: yaml.Node, path: Path_) -> Any:
        """The data of any document, with an issue for every key or value that cannot be read."""
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
        # Scalars through the safe constructor: true/false, numbers, strings (`!!bool perhaps`: a LookupError).
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, LookupError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.issues.append(RuleIssue(self.file, node.start_mark.line + 1, key_path(path),
                                         f"cannot read this value ({node.tag}): {problem}"))
            return None

    def _nearest(self, path: Path_) -> tuple[yaml.Node | None, int]:
        """The node at this path, or the nearest one above it that the file has; and its depth."""
        node = self._root
        for depth, part in enumerate(path):
            child = None
            if isinstance(node, yaml.MappingNode):
                # The first of keys given twice: the one the data holds.
                child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child = node.value[part]
            if child is None:
                return node, depth
            node = child
        return node, len(path)

    def line(self, path: Path_) -> int | None:
        """The line of the value at this path, or of the nearest value above it that the file has."""
        node, _ = self._nearest(path)
        return None if node is None else node.start_mark.line + 1

    def item_lines(self, path: Path_) -> list[int]:
        """The line of every item of the list at this path (none when there is no list there)."""
        node, depth = self._nearest(path)
        if depth < len(path) or not isinstance(node, yaml.SequenceNode):
            return []
        return [item.start_mark.line + 1 for item in node.value]

    def issue(self, path: Path_, reason: str) -> RuleIssue:
        return RuleIssue(self.file, self.line(path), key_path(path), reason)
