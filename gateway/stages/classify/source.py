"""Reading rules.yaml into plain data while remembering the line of every value.

Validation errors then name the line an operator has to fix, not only a key path. A plain rules
file is read fast by yaml_rs, and its lines are found by PyYAML only when a problem is worded;
everything else is read by PyYAML with its lines.
"""
from __future__ import annotations

import re
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

    def __init__(self, file: Path, text: str, data: Any = None):
        """`data`: the document's data (never None) as another process read it from the same
        text, which is then not read again."""
        self.file = file
        self.text = text
        self.issues: list[RuleIssue] = []
        self._composed: Any = _UNREAD  # the document's nodes (None: the document is empty)
        if data is None:
            data = _read_fast(text)
        if data is not _UNREAD:
            self.data: Any = data
            return
        # Only plain scalars' values go through it, and it keeps nothing alive after the reading.
        self._constructor = yaml.constructor.SafeConstructor()
        root = self._root
        if "&" in text and root is not None and _expands_beyond(root, _MOST_VALUES):
            raise RulesError([RuleIssue(file, None, "", f"its aliases expand to more than {_MOST_VALUES:,} values "
                                                        "(an alias refers to a list of aliases, over and over)")])
        try:
            try:
                self.data = {} if root is None else self._quick(root)
            except _Unusual:
                self.data = self._value(root, ())  # type: ignore[arg-type]
        except RecursionError:
            issue = RuleIssue(file, None, "", "an alias refers to itself (or nesting is too deep)")
            raise RulesError([issue]) from None
        if self.issues:
            raise RulesError(self.issues)

    @property
    def _root(self) -> yaml.Node | None:
        """The document's nodes with their lines, composed by PyYAML when first asked for: at once
        for a document the fast reading left alone, else only when a line is wanted (a problem to
        word, or rules not written as a block list)."""
        if self._composed is _UNREAD:
            try:
                self._composed = yaml.compose(self.text, Loader=_Loader)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                problem = getattr(exc, "problem", None) or str(exc)
                raise RulesError([RuleIssue(self.file, mark.line + 1 if mark else None, "",
                                            f"not valid YAML: {problem}")]) from None
        return self._composed

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
        if self._composed is _UNREAD and len(path) == 1 and isinstance(path[0], str):
            items = self.data.get(path[0]) if isinstance(self.data, dict) else None
            lines = _block_item_lines(self.text, path[0])
            if isinstance(items, list) and len(lines) == len(items):
                return lines
        node, depth = self._nearest(path)
        if depth < len(path) or not isinstance(node, yaml.SequenceNode):
            return []
        return [item.start_mark.line + 1 for item in node.value]

    def issue(self, path: Path_, reason: str) -> RuleIssue:
        return RuleIssue(self.file, self.line(path), key_path(path), reason)


# -- the fast reading -----------------------------------------------------------------------------
# yaml_rs reads a rules file several times faster than PyYAML's C loader, and keeps no lines. It
# reads YAML 1.2, where PyYAML reads YAML 1.1: a plain `yes`, `on`, `12:30` or `2026-03-01` is
# text to it and a boolean, number or date to PyYAML; `017` is 17 to it and 15 to PyYAML; `1e3` and
# `0o17` are numbers to it and text to PyYAML. Its data is taken only where both read the same: no
# string that PyYAML would have resolved to something else (whether it was quoted is unknown
# here), no float (whose text is unknown here), nothing in the text that the patterns below find.
# Anything else, and every document with a mistake, is read by PyYAML, which words the problems
# with their lines. (Where PyYAML would refuse a document that yaml_rs reads, as YAML 1.2 allows:
# a tab after a list's dash, a flow mapping continued on a line indented less, the data it gives
# still has to pass validation, and PyYAML words any problem found there.)

_UNREAD: Any = object()
# What the two read differently, or only PyYAML reads as it should, looked for in the text less its
# comment lines (a false alarm costs only time). Each pattern starts with the character it is
# about, so that a search skips to it: together they cost a tenth of what the reading saves.
_NOT_FAST = tuple(re.compile(pattern, re.MULTILINE) for pattern in (
    r"[&!]",  # anchors and aliases (limited by the careful reading); tags
    r"-(?<![^\n]-)--|\.(?<![^\n]\.)\.\.",  # document markers (directives need one)
    # Numbers that start with 0 (017 is 15 to PyYAML, 17 or text to yaml_rs; 0o17 is 15 or
    # text) or with an underscore (_5 is text to PyYAML, 5 to yaml_rs).
    r"0(?<![\w.]0)\w", r"_(?<![\w.]_)_*\d",
    # Values that start with an indicator, which PyYAML refuses or reads otherwise and yaml_rs
    # takes for text: `?`, `:`, `|` or `>` in a flow (`[?a]` is an explicit key to PyYAML); `|`
    # or `>` not starting a block of text. (Both refuse a value starting with `@`, `%` or a
    # backquote.)
    r"[\[{,][ \t\n]*[?:|>]", r"[|>](?<![^ \t\n\[{,:-][|>])(?![-+1-9]*[ \t]*(?:#.*)?$)",
))
_COMMENT_LINE = re.compile(r"^[ \t]*#.*$", re.MULTILINE)
# Looked for everywhere: a character PyYAML refuses in a document; a byte order mark (kept in the
# first key by yaml_rs); YAML 1.1's own line breaks (NEL, LS, PS).
_NOT_FAST_ANYWHERE = re.compile("[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u2028\u2029\uD800-\uDFFF\uFEFF\uFFFE\uFFFF]")
_IMPLICIT = yaml.SafeLoader.yaml_implicit_resolvers


def _read_fast(text: str) -> Any:
    """The document's data when yaml_rs reads it as PyYAML would; _UNREAD otherwise."""
    if _NOT_FAST_ANYWHERE.search(text):
        return _UNREAD
    code = _COMMENT_LINE.sub("", text)
    if any(pattern.search(code) for pattern in _NOT_FAST):
        return _UNREAD
    # Loaded here, not with the module: it holds some 5 MiB, and the registrar's helpers, which
    # compile the rules from the data the daemon read, never need it.
    import yaml_rs

    try:
        data = yaml_rs.loads(text, parse_datetime=False, duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error)
    except Exception:  # a mistake (or a key it cannot make, such as a list): PyYAML words it
        return _UNREAD
    return data if data is not None and _read_alike(data) else _UNREAD


def _read_alike(data: Any) -> bool:
    """Whether PyYAML's safe loader gives the same data (see above)."""
    # Only text that starts with one of these can be read otherwise.
    starts = {*_IMPLICIT.keys(), "\n"}
    every_start = None in starts
    stack = [data]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            for key in value:
                if type(key) is not str or ((every_start or key[:1] in starts) and _read_otherwise(key)):
                    return False
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
        elif kind is str:
            if (every_start or value[:1] in starts) and _read_otherwise(value):
                return False
        elif kind is float:
            return False
    return True


def _read_otherwise(text: str) -> bool:
    """Whether PyYAML may give other data for this text: written plain, anything but a string;
    read from a block of blank lines, an empty string (where yaml_rs keeps a line break)."""
    if text[:1] == "\n":
        return not text.strip("\n")
    resolvers = [*_IMPLICIT.get(text[:1], []), *_IMPLICIT.get(None, [])]
    return any(pattern.match(text) for _, pattern in resolvers)


def _block_item_lines(text: str, key: str) -> list[int]:
    """The line of every item of the block list under a top-level key (`key:` alone on its line,
    the items below it as `- ...` at one indentation); none found when the list is not written so.
    Only believed when as many are found as the list has items."""
    found = re.search(rf"^{re.escape(key)}:[ \t]*(?:#.*)?$", text, re.MULTILINE)
    if found is None:
        return []
    lines: list[int] = []
    indent = None
    waiting = False
    number = text.count("\n", 0, found.start()) + 1
    for line in text[found.end():].split("\n")[1:]:
        number += 1
        body = line.lstrip(" ")
        if not body or body.startswith("#"):
            continue
        depth = len(line) - len(body)
        if indent is None:
            indent = depth
        if depth < indent or (depth == indent and not (body == "-" or body.startswith(("- ", "-\t")))):
            break
        if waiting:  # an item's first value on the line below its dash: PyYAML's line for it
            lines.append(number)
            waiting = False
        if depth == indent:
            if body == "-" or body[1:].lstrip(" \t").startswith("#"):
                waiting = True
            else:
                lines.append(number)
    return lines
