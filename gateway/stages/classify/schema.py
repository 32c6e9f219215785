"""The schema of rules.yaml, as pydantic models.

Validation needs a little of the organisation (its departments, categories,
domains and intake addresses): it comes as the validation context, an
`Organisation` of plain values, never the configuration itself. Every message
is written for an operator; `rules.py` turns pydantic's error locations back
into the file's lines and key paths.

Pydantic's own checks are kept where they are as good as a validator of ours, because
every validator written in Python costs a call for each of 10,000 rules: an unknown key
(`extra_forbidden`) and a value that is not a mapping (`model_type`) are pydantic's errors,
which `reason` words with what that mapping accepts (`unknown_key`, `shape_hint`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Annotated, Any, ClassVar, TypeAlias, get_args

import regex
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from gateway.addressing import canonical
from gateway.stages.autoreply import safe_address
from gateway.stages.classify.organisation import Organisation

URGENCIES = ("regular", "urgent", "special")
CONFIDENTIALITIES = ("normal", "confidential")
CHANNELS = ("email", "fax")
TEXT_FIELDS = ("subject", "body", "sender_name", "attachment_names")
SCALAR_ACTIONS = ("category", "department", "owner", "urgency", "confidentiality", "deadline_days")
DEPARTMENT_REFERENCES = ("recipient", "sender")  # `department: recipient` and `department: sender`
_TAG = re.compile(r"[\w.:-]+")


def _organisation(info: ValidationInfo) -> Organisation:
    if info.context is None:
        raise RuntimeError("rules are validated with the organisation as the context")
    organisation: Organisation = info.context["organisation"]
    return organisation


def _error(kind: str, message: str) -> PydanticCustomError:
    # Without a context the message is taken as written: braces in it stay braces.
    return PydanticCustomError(kind, message)


def _shown(value: Any, limit: int = 80) -> str:
    """A value as an error quotes it: the start of a long one (a list of a thousand items, say)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _text(what: str, *, lower: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _error("text", f"{what} must be non-empty text (got {_shown(value)}; quote it)")
        return value.strip().lower() if lower else value.strip()
    return check


def _one_or_more(what: str) -> BeforeValidator:
    """One text or a list of them (each item is checked by `_item`)."""
    def one_or_more(value: Any) -> list[Any]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise _error("empty", f"give at least one {what}")
        return values
    return BeforeValidator(one_or_more)


def _item(what: str, *, lower: bool = False) -> BeforeValidator:
    """Each item non-empty and stripped (and lower-cased for patterns)."""
    return BeforeValidator(_text(what, lower=lower))


def _check_regex(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _error("regex", "a regular expression (quote it)")
    try:
        regex.compile(value)  # the module caches it: compiling the rule again costs nothing
    except regex.error as exc:
        raise _error("regex", f"not a valid regular expression: {exc}") from None
    return value


def _check_fields(value: list[str] | None) -> list[str] | None:
    if value is not None and (bad := [f for f in value if f not in TEXT_FIELDS]):
        raise _error("field", f"unknown field {bad[0]!r}; use {', '.join(TEXT_FIELDS)}")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise _error("choice", f"{value!r} is not a {key}; use one of {', '.join(choices)}")
    return value


def _grade(value: Any, info: ValidationInfo) -> Any:
    """A category, urgency or confidentiality (the field's name says which): one of its values."""
    key = info.field_name or ""
    fixed = {"urgency": URGENCIES, "confidentiality": CONFIDENTIALITIES}
    return _choice(key, value, fixed[key] if key in fixed else _organisation(info).categories)


_tag_text = _text("tag")


def _tag(value: Any) -> str:
    tag = _tag_text(value)
    if not _TAG.fullmatch(tag):
        raise _error("tag", f"tag {tag!r}: letters, digits, '.', ':', '_' and '-' only")
    return tag


# The value types of rules.yaml, each with the words its errors use.
Keywords: TypeAlias = Annotated[list[Annotated[str, _item("keyword")]], _one_or_more("keyword")]
TextFields: TypeAlias = Annotated[list[Annotated[str, _item("field")]], _one_or_more("field")]
Channels: TypeAlias = Annotated[list[Annotated[str, _item("channel")]], _one_or_more("channel")]
AddressPatterns: TypeAlias = Annotated[list[Annotated[str, _item("address pattern", lower=True)]],
                                       _one_or_more("address pattern")]
DomainPatterns: TypeAlias = Annotated[list[Annotated[str, _item("domain pattern", lower=True)]],
                                      _one_or_more("domain pattern")]
DepartmentIds: TypeAlias = Annotated[list[Annotated[str, _item("department id")]],
                                     _one_or_more("department id")]  # or `any`
FaxNumberPatterns: TypeAlias = Annotated[list[Annotated[str, _item("fax number pattern")]],
                                         _one_or_more("fax number pattern")]
TypePatterns: TypeAlias = Annotated[list[Annotated[str, _item("type pattern", lower=True)]],
                                    _one_or_more("type pattern")]
NamePatterns: TypeAlias = Annotated[list[Annotated[str, _item("name pattern", lower=True)]],
                                    _one_or_more("name pattern")]
ValuePatterns: TypeAlias = Annotated[list[Annotated[str, _item("value pattern", lower=True)]],
                                     _one_or_more("value pattern")]
Tags: TypeAlias = Annotated[list[Annotated[str, BeforeValidator(_tag)]], _one_or_more("tag")]
Regex: TypeAlias = Annotated[str, BeforeValidator(_check_regex)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    unknown_key: ClassVar[str]  # the reason given for a key the mapping does not take
    shape_hint: ClassVar[str] = "a mapping"  # the reason given for a value that is not a mapping


class _NonEmpty(_Schema):
    """A mapping that says nothing when empty (`when: {}`): refused with its shape hint."""

    @model_validator(mode="after")
    def _not_empty(self) -> Any:
        if not self.model_fields_set:
            raise _error("shape", self.shape_hint)
        return self


class _Ordered(_NonEmpty):
    """A mapping whose order counts (evidence and traces follow the file), read with the mapping
    as written beside it. The order is not kept on the model: a model validator that could see
    it (a wrapping one) would cost 10,000 rules a fifth of their validation."""

    def given(self, written: Iterable[str]) -> list[tuple[str, Any]]:
        """(key in rules.yaml, validated value), in the order of `written`, the mapping validated."""
        attribute, values = _attributes(type(self)), self.__dict__
        return [(key, values[attribute[key]]) for key in written]


@cache
def _attributes(model: type[BaseModel]) -> dict[str, str]:
    """A model's keys in rules.yaml (aliases) and the attributes that hold them."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def _models_in(annotation: Any) -> list[type[_Schema]]:
    """The models a field's type holds: `Conditions | None`, `list[Conditions]`, `Annotated[..]`."""
    if isinstance(annotation, type) and issubclass(annotation, _Schema):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def model_at(loc: tuple[str | int, ...]) -> type[_Schema] | None:
    """The model whose mapping sits at this location of pydantic's (list items are numbers, keys
    are as in rules.yaml), or None where no mapping of the schema is."""
    model: type[_Schema] = RulesFile
    for part in loc:
        if isinstance(part, int):
            continue
        name = _attributes(model).get(part)
        inner = _models_in(model.model_fields[name].annotation) if name else []
        if not inner:
            return None
        model = inner[0]
    return model


class KeywordMatch(_Schema):
    """`[..]`, `{any: [..]}` or `{all: [..]}`, optionally with `in: [fields]`."""

    unknown_key = "unknown key; use any, all and in"
    any_: Keywords | None = Field(None, alias="any")
    all_: Keywords | None = Field(None, alias="all")
    in_: TextFields | None = Field(None, alias="in")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {"any": value}

    @model_validator(mode="after")
    def _one_mode(self) -> KeywordMatch:
        if (self.any_ is None) == (self.all_ is None):
            raise _error("keywords", "give exactly one of any and all")
        return self

    _fields = field_validator("in_")(_check_fields)

    @property
    def mode(self) -> str:
        return "any" if self.any_ is not None else "all"

    @property
    def words(self) -> list[str]:
        return self.any_ if self.any_ is not None else self.all_  # type: ignore[return-value]


class RegexMatch(_Schema):
    """A pattern, or `{pattern: .., in: [fields]}`."""

    unknown_key = "unknown key; use pattern and in"
    pattern: Regex
    in_: TextFields | None = Field(None, alias="in")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {"pattern": value}

    _fields = field_validator("in_")(_check_fields)


class AttachmentMatch(_NonEmpty):
    unknown_key = "unknown key; use type and name"
    shape_hint = "give type and/or name patterns, e.g. {type: application/pdf, name: \"*.docx\"}"
    type_: TypePatterns | None = Field(None, alias="type")
    name: NamePatterns | None = None


class HeaderMatch(_Schema):
    unknown_key = "unknown key; use name and one of present, value or matches"
    shape_hint = "give name and one of present, value or matches"
    name: Annotated[str, BeforeValidator(_text("header name", lower=True))]
    present: StrictBool | None = None
    value: ValuePatterns | None = None
    matches: Regex | None = None

    @model_validator(mode="after")
    def _one_test(self) -> HeaderMatch:
        if sum(test is not None for test in (self.present, self.value, self.matches)) != 1:
            raise _error("header", "give exactly one of present (true/false), value (a pattern) or matches (a regex)")
        return self


class Conditions(_Ordered):
    """`when:`. Several conditions in one mapping must all hold. Keys are those of rules.yaml."""

    channel: Channels | None = None
    sender: AddressPatterns | None = None
    sender_domain: DomainPatterns | None = None
    sender_name: KeywordMatch | None = None
    sender_internal: StrictBool | None = None
    sender_verified: StrictBool | None = None  # the check stage proved the From address
    sender_department: DepartmentIds | None = None  # ids, or `any`
    recipient_department: DepartmentIds | None = None
    mailbox_department: DepartmentIds | None = None
    recipient: AddressPatterns | None = None
    keywords: KeywordMatch | None = None
    subject: KeywordMatch | None = None
    body: KeywordMatch | None = None
    regex: RegexMatch | None = None
    attachment: AttachmentMatch | None = None
    header: HeaderMatch | None = None
    fax_number: FaxNumberPatterns | None = None
    all_: list[Conditions] | None = Field(None, alias="all")
    any_: list[Conditions] | None = Field(None, alias="any")
    not_: Conditions | None = Field(None, alias="not")
    shape_hint = "a condition is a mapping such as {sender_domain: [\"*.gov.cn\"]}"
    unknown_key = "unknown condition"  # the keys it takes are added below, once they are known

    @field_validator("all_", "any_", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise _error("group", "give a list of conditions")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: list[str]) -> list[str]:
        if bad := [c for c in value if c not in CHANNELS]:
            raise _error("channel", f"unknown channel {bad[0]!r}; use email or fax")
        return value

    @field_validator("sender_internal")
    @classmethod
    def _needs_domains(cls, value: bool, info: ValidationInfo) -> bool:
        if not _organisation(info).domains:
            raise _error("domains", "needs the organisation's domains: set gateway.domains in the configuration")
        return value

    @field_validator("sender_department", "recipient_department", "mailbox_department")
    @classmethod
    def _departments(cls, value: list[str], info: ValidationInfo) -> list[str]:
        known = _organisation(info).departments
        if value != ["any"] and (unknown := [d for d in value if d not in known]):
            raise _error("department", f"no department with id {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return value

    def label(self, written: Iterable[str]) -> str:
        """The conditions as an operator wrote them (`written`, as `given` takes it), for a trace (`not (...)`)."""
        return "; ".join(f"{key}: {_plain(value)}" for key, value in self.given(written))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


CONDITION_KEYS = sorted((f.alias or name) for name, f in Conditions.model_fields.items())
Conditions.unknown_key = f"unknown condition; use one of {', '.join(CONDITION_KEYS)}"
ACTION_KEYS = (*SCALAR_ACTIONS, "tags")


class Actions(_Ordered):
    """`set:`, the fields a matching rule sets."""

    unknown_key = f"unknown action; use one of {', '.join(ACTION_KEYS)}"
    category: Any = None
    department: Any = None
    owner: Any = None
    urgency: Any = None
    confidentiality: Any = None
    deadline_days: Any = None
    tags: Tags | None = None
    shape_hint = f"give the fields to set: {', '.join(ACTION_KEYS)}"

    _grades = field_validator("category", "urgency", "confidentiality")(_grade)

    @field_validator("department")
    @classmethod
    def _department(cls, value: Any, info: ValidationInfo) -> Any:
        known = _organisation(info).departments
        if value not in known and value not in DEPARTMENT_REFERENCES:
            raise _error("department", f"no department with id {value!r} (known: {', '.join(sorted(known))};"
                                       " or recipient, sender)")
        return value

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str) or not safe_address(value.strip()):
            raise _error("owner", f"{value!r} is not a plain e-mail address")
        address = canonical(value)  # as the configuration keeps its people
        department = _organisation(info).department_addresses.get(address)
        if department is not None:
            # As for a department's owners in the configuration: what is sent there comes back as a letter.
            raise _error("owner", f"{address} is an address of department {department!r}: its notifications "
                                  "would come back as letters; give the owner's own address")
        return address

    @field_validator("deadline_days")
    @classmethod
    def _days(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 365:
            raise _error("days", "a whole number of working days from 0 to 365")
        return value

    def scalars(self, written: Iterable[str]) -> dict[str, Any]:
        """The fields set besides tags, in the file's order (`written`, as `given` takes it; the trace follows it)."""
        return {key: value for key, value in self.given(written) if key != "tags"}


class Rule(_Schema):
    unknown_key = "unknown key; use name, description, when, set and stop"
    shape_hint = "a rule is a mapping with name, when and set"
    name: Annotated[str, BeforeValidator(_text("rule name"))]
    description: Any = None
    when: Conditions
    actions: Actions = Field(alias="set")
    stop: StrictBool = True


class Settings(_Schema):
    unknown_key = "unknown setting; use regex_timeout_ms"
    regex_timeout_ms: float = 50

    @field_validator("regex_timeout_ms", mode="before")
    @classmethod
    def _milliseconds(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10_000:
            raise _error("milliseconds", "milliseconds from 1 to 10000")
        return value


class Defaults(_Schema):
    unknown_key = "unknown default; use urgency, confidentiality or category"
    urgency: str = "regular"
    confidentiality: str = "normal"
    category: str | None = None

    _grades = field_validator("urgency", "confidentiality", mode="before")(_grade)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any, info: ValidationInfo) -> Any:
        """`category: null` says what leaving the key out says: no default category."""
        return None if value is None else _grade(value, info)

    def given(self) -> dict[str, str]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


def _optional_mapping(value: Any) -> Any:
    if value is None:  # `settings:` written with nothing under it
        return {}
    if not isinstance(value, dict):
        raise _error("shape", "a mapping")
    return value


def _rule_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise _error("rules", "required: a list of rules")
    return value


class RulesFile(_Schema):
    unknown_key = "unknown key; use version, settings, defaults and rules"
    shape_hint = "the file must be a mapping with a `rules:` list"
    version: Any = 1
    settings: Annotated[Settings, BeforeValidator(_optional_mapping)] = Settings()
    defaults: Annotated[Defaults, BeforeValidator(_optional_mapping)] = Defaults()
    rules: Annotated[list[Rule], BeforeValidator(_rule_list)]

    @field_validator("version")
    @classmethod
    def _version(cls, value: Any) -> int:
        if isinstance(value, bool) or value != 1:
            raise _error("version", "only version 1 is known")
        return 1


# A missing required key: what the operator has to add.
MISSING = {"rules": "required: a list of rules", "when": "required: when (the conditions)",
           "set": "required: set (the actions)", "pattern": "required: pattern (a regular expression)",
           "name": "required: name (of the header), and one of present, value or matches"}  # a rule's name: rules.py
