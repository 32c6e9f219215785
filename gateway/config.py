"""Configuration: one TOML file, typed and validated before anything starts.

Every error names the file, the key and the reason, so an operator can fix a
broken file without reading code. Relative paths resolve against the
directory of the config file, so a checkout runs the same from any cwd.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import ErrorDetails

from gateway.addressing import ascii_domain, canonical, needs_smtputf8
from gateway.spool.durable import make_dirs

if TYPE_CHECKING:
    from gateway.stages.classify.rules import RuleSet
    from gateway.track.calendar import WorkingCalendar

ENV_VAR = "GATEWAY_CONFIG"
CHECKOUT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
SYSTEM_CONFIG = Path("/etc/gateway/gateway.toml")

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


# Seconds, minutes and the like: beyond this a wait would overflow the platform's clock.
_LARGEST_NUMBER = 1e9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """A value of the type its key takes, as TOML writes it: pydantic would read `true` as 1,
        `"no"` as false, `"5"` as 5 and `0` as 1970-01-01, where the writer surely meant
        something else."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            _written_as(field.annotation, value)
        return value

    @field_validator("*")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and abs(value) > _LARGEST_NUMBER:
            raise ValueError(f"at most {_LARGEST_NUMBER:,.0f}")
        if isinstance(value, (str, Path)) and "\x00" in str(value):
            raise ValueError("contains a NUL character")
        return value


def _written_as(annotation: Any, value: Any) -> None:
    """Refuse `value` where TOML wrote another type than `annotation` (bool, int, float, date,
    or a list or optional of one) takes."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) else [annotation]
    if len(options) != 1 or value is None:
        return
    kind = options[0]
    if typing.get_origin(kind) is list and isinstance(value, list):
        [item] = typing.get_args(kind) or [Any]
        for element in value:
            _written_as(item, element)
        return
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"must be a number, not {value!r}")
    if kind is int and isinstance(value, float):
        raise ValueError(f"must be a whole number, not {value!r}")
    if kind is date and not isinstance(value, (date, str)):
        raise ValueError(f"must be a date (2026-10-01), not {value!r}")


def smtputf8_warning(address: str) -> str:
    """Why check-config warns about a person's address whose local part is not ASCII."""
    return (f"{address}: its local part is not ASCII: mail to it needs an outbound relay that offers SMTPUTF8 "
            "(RFC 6531); through one that does not, every mail to it is dead-lettered")


def _check_address(value: str) -> str:
    """The address in the one form addresses are compared in (gateway.addressing.canonical):
    lower case, NFC, an internationalised domain in A-labels."""
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an e-mail address")
    return canonical(value)


Email = Annotated[str, Field(min_length=3)]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class Department(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str = Field(min_length=1)
    owners: list[Email] = Field(min_length=1)
    head: Email
    addresses: list[Email] = []
    members: list[Email] = []
    # The leaders in charge (分管领导): they approve what needs more than the head, such as
    # borrowing a confidential archived letter.
    leaders: list[Email] = []

    @field_validator("owners", "addresses", "members", "leaders")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        return [_check_address(v) for v in values]

    @field_validator("head")
    @classmethod
    def _head(cls, value: str) -> str:
        return _check_address(value)


class GatewaySection(_Strict):
    state_dir: Path = Path("../storage")
    timezone: str = "UTC"
    letter_number: str = "{year}-{seq:06d}"
    domains: list[str] = []

    @field_validator("domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        # A domain in Chinese (例子.中国) is kept in A-labels, the form addresses are compared in.
        values = [ascii_domain(v) or v for v in values]
        for value in values:
            if "@" in value or "." not in value or not re.fullmatch(r"[A-Za-z0-9.-]+", value):
                raise ValueError(f"{value!r} is not a domain name")
        return [v.lower() for v in values]

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("letter_number")
    @classmethod
    def _template(cls, value: str) -> str:
        # Imported here: numbering depends on nothing but the template.
        from gateway.registry.numbers import NumberTemplate

        NumberTemplate(value)  # raises ValueError naming the problem
        return value


class RegistrySection(_Strict):
    url: str = ""
    echo_sql: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # The two databases the registry runs on; anything else would fail only at the first command.
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("a SQLite URL (sqlite:////path/registry.sqlite3) or a PostgreSQL one "
                             "(postgresql://user@host/database); empty: SQLite in the state directory")
        return value


class SpoolSection(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    workers: int = Field(default=2, ge=1, le=64)
    batch_size: int = Field(default=32, ge=1, le=1000)
    rescan_seconds: float = Field(default=30.0, gt=0)
    # Below this much free space on the state directory's filesystem, SMTP answers 452 at MAIL
    # and IMAP fetches nothing (the mail waits with its sender or on the server); 0: no floor.
    min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=2 ** 50)
    # Items larger than this are registered in a lane of their own (a second helper process), so
    # that parsing a huge message never keeps ordinary senders waiting; 0: one lane for all.
    large_item_bytes: int = Field(default=1024 * 1024, ge=0, le=2 ** 40)
    # That lane's helper is started by the first large item and stopped after this long without one.
    large_item_idle_seconds: float = Field(default=600.0, gt=0)
    # Helper processes that register the spool workers' full batches (worker n uses helper n mod
    # this): a backlog (a first IMAP sync) is registered on as many cores. The first is the one
    # SMTP's items and smaller batches use; the others run only while there is a backlog.
    registrars: int = Field(default=2, ge=1, le=16)


class NormaliseSection(_Strict):
    summary_chars: int = Field(default=300, ge=40, le=5000)
    # How much of one message is examined (see gateway/stages/normalise/model.py `Limits`); the
    # rest stays in the original and is named in a defect. Bounds keep a hostile message cheap.
    max_parts: int = Field(default=1000, ge=10, le=100_000)
    max_depth: int = Field(default=40, ge=2, le=100)
    max_header_fields: int = Field(default=500, ge=50, le=100_000)
    max_header_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)


class TriageSection(_Strict):
    department: str


_WEEKDAYS = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
CATEGORY_NAMES = ("internal.inter_department", "internal.employee_to_department", "internal.employee_to_employee",
                  "external.business", "external.official", "external.inquiry_complaint")


class CalendarSection(_Strict):
    weekend: list[_WEEKDAYS] = ["saturday", "sunday"]
    holidays: list[date] = []
    working_days: list[date] = []  # make-up working days: worked although they fall on a weekend

    @model_validator(mode="after")
    def _consistent(self) -> CalendarSection:
        both = sorted(set(self.holidays) & set(self.working_days))
        if both:
            raise ValueError(f"{both[0].isoformat()} is both a holiday and a working day")
        if len(set(self.weekend)) == 7:
            raise ValueError("every day of the week is a weekend day: nothing could ever be due")
        return self


class DeadlinesSection(_Strict):
    acknowledge_days: int = Field(default=1, ge=0, le=365)
    answer_days: int = Field(default=5, ge=0, le=365)
    category: dict[str, int] = {}
    urgency: dict[Literal["regular", "urgent", "special"], Annotated[int, Field(ge=0, le=365)]] = {
        "urgent": 2, "special": 1}

    @field_validator("category")
    @classmethod
    def _categories(cls, values: dict[str, int]) -> dict[str, int]:
        for key, days in values.items():
            if key not in CATEGORY_NAMES:
                raise ValueError(f"{key!r} is not a category; use {', '.join(CATEGORY_NAMES)}")
            if not 0 <= days <= 365:
                raise ValueError(f"{key}: {days} is not a number of working days from 0 to 365")
        return values

    def answer_within(self, category: str | None, urgency: str) -> int:
        """Working days to answer: the category's (or the default), shortened by urgency."""
        days = self.category.get(category or "", self.answer_days)
        return min(days, self.urgency.get(urgency, days))  # type: ignore[call-overload]


class RemindersSection(_Strict):
    enabled: bool = True
    check_minutes: float = Field(default=30.0, gt=0)
    before_working_days: int = Field(default=1, ge=0, le=30)
    repeat_working_days: int = Field(default=1, ge=1, le=30)
    escalate_after: int = Field(default=2, ge=1, le=100)


class SatisfactionSection(_Strict):
    """The sender's satisfaction: the rating link in a result mail and its public page."""

    link_days: int = Field(default=30, ge=1, le=365)  # how long a rating link stays valid
    # Visits of the rating page (forms shown and sent) allowed per client address and hour.
    per_address_per_hour: int = Field(default=30, ge=1, le=100000)
    reopen_at_most: int = Field(default=2, ge=1, le=4)  # a rating this low or lower reopens the letter


class CirculationSection(_Strict):
    """A letter read and signed by people or departments in order (传阅)."""

    reading_working_days: int = Field(default=2, ge=1, le=30)  # each reader's time to read and sign
    max_readers: int = Field(default=20, ge=1, le=100)


class BorrowingSection(_Strict):
    """Reading an archived letter: a request approved by its department's head (a confidential
    one: by a leader in charge), for a number of days."""

    max_days: int = Field(default=30, ge=1, le=365)


class ArchiveSection(_Strict):
    enabled: bool = True
    folder: Path = Path("archive")  # relative to state_dir
    compression: Literal["zstd", "gzip"] = "zstd"
    run_day: int = Field(default=1, ge=1, le=28)
    run_hour: int = Field(default=2, ge=0, le=23)
    retention_years: int = Field(default=10, ge=1, le=100)
    retention: dict[str, int] = {}
    release_after_verify: bool = True
    # Further folders (another disk, a network share) that each hold a copy of every package,
    # written and checked when the package is verified; relative to state_dir.
    copies: list[Path] = []

    @field_validator("copies")
    @classmethod
    def _copies(cls, values: list[Path]) -> list[Path]:
        if len(set(values)) != len(values):
            raise ValueError("a folder is named twice")
        return values

    @field_validator("retention")
    @classmethod
    def _retention(cls, values: dict[str, int]) -> dict[str, int]:
        for key, years in values.items():
            if key not in CATEGORY_NAMES and key != "uncategorised":
                raise ValueError(f"{key!r} is not a category; use {', '.join(CATEGORY_NAMES)} or uncategorised")
            if not 1 <= years <= 100:
                raise ValueError(f"{key}: {years} is not a number of years from 1 to 100")
        return values


class ClassifySection(_Strict):
    # Unset: rules.yaml beside this file if there is one, else no rules (all to triage).
    rules_file: Path | None = None


class OutboundSection(_Strict):
    relay: str = ""  # HOST:PORT; empty: mail waits in the outbox until one is set
    tls: Literal["none", "starttls", "implicit"] = "none"
    tls_ca_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    from_address: Email = "gateway@localhost"
    from_name: str = "Correspondence Gateway"
    helo_name: str = Field(default="localhost", pattern=r"^[A-Za-z0-9.-]+$")
    poll_seconds: float = Field(default=5.0, gt=0)
    retry_min_seconds: float = Field(default=60.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    give_up_hours: float = Field(default=48.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    attach_original_max_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    # The largest message the relay takes (its SIZE); a reply whose mail would be larger is refused
    # while it is drafted, not dead-lettered once approved.
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    loop_id: str = Field(default="", pattern=r"^[A-Za-z0-9.@_-]*$")

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        return _host_port(value) if value else value

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        address = _check_address(value)
        if needs_smtputf8(address):
            # It is the envelope sender of every mail and begins every reply address: each would
            # need SMTPUTF8 (RFC 6531), and mail to ASCII addresses cannot say so.
            raise ValueError(f"{value!r}: the gateway's own address needs a local part in ASCII")
        return address

    @model_validator(mode="after")
    def _consistent(self) -> OutboundSection:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        if self.username is not None and self.tls == "none":
            raise ValueError('a password is sent only over TLS: set tls = "starttls" or "implicit"')
        return self


class ReceiptsSection(_Strict):
    enabled: bool = True
    per_sender_per_day: int = Field(default=3, ge=0, le=1000)
    # Against auto-responders that answer from a new address each time (VERP): caps per
    # recipient domain and altogether, over the last hour.
    per_domain_per_hour: int = Field(default=30, ge=0, le=100_000)
    per_hour: int = Field(default=300, ge=0, le=1_000_000)
    default_language: Literal["zh", "en"] = "zh"
    templates: Path | None = None  # a folder of receipt.<language>.txt; unset: the built-in ones

    @model_validator(mode="after")
    def _caps(self) -> ReceiptsSection:
        if self.per_domain_per_hour > self.per_hour:
            raise ValueError(f"per_domain_per_hour ({self.per_domain_per_hour}) is above per_hour ({self.per_hour}): "
                             "one domain could never reach it")
        return self


class ApprovalRule(_Strict):
    """Which letters' replies need which approvals: `when` names letter fields (category, urgency,
    confidentiality, tags) and the values that match (a list: any of them; tags: any tag given);
    `chain` the approvers in order: head (the department's head), leader (its leaders in charge,
    [[departments]] leaders), top (replies.top_leadership). The first rule that matches decides."""

    when: dict[Literal["category", "urgency", "confidentiality", "tags"], str | list[str]] = {}
    chain: list[Literal["head", "leader", "top"]] = Field(min_length=1)

    @field_validator("chain")
    @classmethod
    def _once(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("an approver appears twice in the chain")
        return values


class RepliesSection(_Strict):
    """Signed reply addresses (gateway.stages.tokens): how long a retired key still counts; and
    replies to senders under approval (gateway.services.replies)."""

    previous_key_grace_days: float = Field(default=14.0, ge=0, le=365)
    approval: list[ApprovalRule] = []
    default_chain: list[Literal["head", "leader", "top"]] = Field(default=["head"], min_length=1)
    top_leadership: list[Email] = []
    approval_reminder_working_days: int = Field(default=1, ge=1, le=30)
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # a reply's attachments together

    @field_validator("top_leadership")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        return [_check_address(v) for v in values]


class DaemonSection(_Strict):
    wakeup_endpoint: str = "ipc://{state_dir}/run/wakeup.sock"
    events_endpoint: str = "ipc://{state_dir}/run/events.sock"
    events_hwm: int = Field(default=100_000, ge=1000)
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)

    @field_validator("wakeup_endpoint", "events_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        # Bound by the daemon at start and reached by the commands: a ZeroMQ address another
        # process can connect to, or the daemon would fail only when it binds it.
        if value.startswith("ipc://") and len(value) > len("ipc://"):
            return value
        if value.startswith("tcp://"):
            try:
                _host_port(value.removeprefix("tcp://"))
                return value
            except ValueError:
                pass
        raise ValueError(f"{value!r} is not ipc://PATH or tcp://HOST:PORT")

    @model_validator(mode="after")
    def _apart(self) -> DaemonSection:
        if self.wakeup_endpoint == self.events_endpoint:
            raise ValueError("wakeup_endpoint and events_endpoint are one endpoint: each needs its own")
        return self


class SmtpSection(_Strict):
    enabled: bool = True
    listen: list[str] = Field(default=["127.0.0.1:2525"], min_length=1)
    hostname: str = Field(default="localhost", min_length=1, pattern=r"^[A-Za-z0-9.-]+$")
    accept_addresses: list[str] = []
    accept_domains: list[str] = []
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_sessions: int = Field(default=100, ge=1)
    max_recipients: int = Field(default=100, ge=1)
    max_connections_per_minute: int = Field(default=60, ge=0)
    # The connection rate counts sessions accepted within this many seconds (a minute unless shortened).
    rate_limit_window: float = Field(default=60.0, ge=1, le=3600)
    # Networks (the organisation's own relays) whose connections the rate limit never refuses.
    rate_limit_exempt: list[str] = []
    command_timeout: float = Field(default=300.0, gt=0)
    data_timeout: float = Field(default=600.0, gt=0)
    # The whole of DATA, however steadily its lines come (data_timeout is silence between them).
    data_total_timeout: float = Field(default=3600.0, gt=0)
    # The whole session, however often its commands come; a DATA under way is let finish first.
    session_timeout: float = Field(default=1800.0, gt=0)
    # When 250 is answered: once the message is in the registry ("registered"), or once it is
    # fsynced in the spool ("spooled", Postfix's promise), registration following from the spool.
    acknowledge: Literal["registered", "spooled"] = "registered"
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    auth_users_file: Path | None = None
    # AUTH user -> the organisation addresses its mail may carry in From (see auth_user_may_send_as).
    auth_senders: dict[str, list[str]] = {}
    # Failed AUTH attempts: per session, then 421 and hang up; per client address within the window.
    max_auth_failures_per_session: int = Field(default=3, ge=1)
    max_auth_failures_per_address: int = Field(default=10, ge=1)
    auth_failure_window: float = Field(default=600.0, gt=0)
    auth_failure_delay: float = Field(default=1.0, ge=0, le=30)
    auth_check_threads: int = Field(default=2, ge=1, le=16)

    @field_validator("auth_senders")
    @classmethod
    def _auth_senders(cls, values: dict[str, list[str]]) -> dict[str, list[str]]:
        for user in values:
            if not user or ":" in user or user != user.strip():
                raise ValueError(f"{user!r} is not a user name of auth_users_file")
        return {user: [_check_address(a) for a in addresses] for user, addresses in values.items()}

    @field_validator("listen")
    @classmethod
    def _listen(cls, values: list[str]) -> list[str]:
        return [_host_port(value) for value in values]

    @field_validator("accept_addresses")
    @classmethod
    def _accept(cls, values: list[str]) -> list[str]:
        return [_check_address(v) for v in values]

    @field_validator("rate_limit_exempt")
    @classmethod
    def _exempt(cls, values: list[str]) -> list[str]:
        import ipaddress

        networks = []
        for value in values:
            try:
                networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network (such as 10.0.0.0/8)") from None
        return networks

    @field_validator("accept_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        for value in values:
            if "@" in value or "." not in value:
                raise ValueError(f"{value!r} is not a domain name")
        return [ascii_domain(v) or v.lower() for v in values]  # as addresses are compared: in A-labels


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class ImapAccount(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", max_length=128)
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, gt=0, lt=65536)
    tls: Literal["implicit", "starttls", "plain"] = "implicit"
    tls_ca_file: Path | None = None
    username: str = Field(min_length=1)
    auth: Literal["password", "xoauth2", "oauthbearer"] = "password"
    password_env: str | None = None
    password_file: Path | None = None
    token_command: list[str] | None = Field(default=None, min_length=1)
    folders: list[str] = Field(default=["INBOX"], min_length=1)
    department: str | None = None
    poll_seconds: float = Field(default=60.0, gt=0)
    idle: bool = True
    after: Literal["seen", "move", "delete", "keep"] = "seen"
    move_to: str | None = None
    first_import: Literal["all", "since", "unseen"] = "all"
    import_since: date | None = None
    # Its mail came through the organisation's MTAs, which remove incoming Authentication-Results
    # naming their authserv-ids: false for a mailbox at an outside provider, where a sender's own
    # such header would arrive untouched, and none counts.
    authentication_results: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ImapAccount:
        if self.tls == "plain" and self.host.lower() not in _LOOPBACK:
            raise ValueError(f"tls = \"plain\" is allowed only towards loopback, not {self.host!r}")
        if self.after == "move" and not self.move_to:
            raise ValueError('after = "move" needs move_to')
        if self.after == "move" and self.move_to is not None and any(
                _same_folder(self.move_to, folder) for folder in self.folders):
            # Moved into a folder it watches, a message comes back under a new UID at every poll.
            raise ValueError(f"move_to {self.move_to!r} is one of the folders this account watches: "
                             "each message would be taken again and again; move them elsewhere")
        if self.first_import == "since" and self.import_since is None:
            raise ValueError('first_import = "since" needs import_since')
        if self.auth == "password" and (self.password_env is None) == (self.password_file is None):
            raise ValueError("give exactly one of password_env and password_file")
        if self.auth != "password" and not self.token_command:
            raise ValueError(f"auth = {self.auth!r} needs token_command")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.tls == "implicit" else 143)


def _same_folder(a: str, b: str) -> bool:
    """IMAP folder names are case-sensitive, but for INBOX (RFC 3501 §5.1)."""
    return a == b or a.upper() == b.upper() == "INBOX"


class ImapSection(_Strict):
    fetch_batch: int = Field(default=200, ge=1, le=5000)
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    idle_renew_seconds: float = Field(default=25 * 60.0, gt=0, le=29 * 60.0)
    reconnect_min_seconds: float = Field(default=2.0, gt=0)
    reconnect_max_seconds: float = Field(default=300.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    accounts: list[ImapAccount] = []


def _check_regex(value: str | None, groups: set[str]) -> str | None:
    if value is None:
        return None
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    unknown = set(compiled.groupindex) - groups
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(groups))}")
    return value


FAX_FIELDS = {"number", "caller_id", "sender_name", "received", "pages"}


class FaxEmailSection(_Strict):
    senders: list[str] = []  # addresses, or "@domain" for any address there
    subject_pattern: str | None = (r"(?i)fax\s+from\s+(?P<number>\+?[0-9][0-9 -]{3,}[0-9])"
                                    r"(?:\s*\((?P<pages>[0-9]+)\s*pages?\))?")
    body_pattern: str | None = r"(?i)(?P<pages>[0-9]+)\s*(?:pages?|页|頁)"
    time_format: str = "%Y-%m-%d %H:%M:%S"

    @field_validator("senders")
    @classmethod
    def _senders(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            if value.startswith("@"):
                if "." not in value:
                    raise ValueError(f"{value!r} is not @domain")
                out.append(value.lower())
            else:
                out.append(_check_address(value))
        return out

    @field_validator("subject_pattern", "body_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        return _check_regex(value, FAX_FIELDS)

    def is_fax_service(self, address: str) -> bool:
        address = address.lower()
        return address in self.senders or "@" + address.rpartition("@")[2] in self.senders


class FaxSection(_Strict):
    enabled: bool = True
    drop_folder: Path = Path("fax-drop")
    poll_seconds: float = Field(default=5.0, gt=0)
    stable_seconds: float = Field(default=10.0, ge=0)
    # A fax is read whole (pages decoded, text recognised): a larger file stays in the folder.
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    ignore: list[str] = [".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*~", "*.lock"]
    filename_pattern: str | None = None
    filename_time_format: str = "%Y%m%d%H%M%S"
    ocr_languages: str = Field(default="eng+chi_sim+chi_tra", pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")
    ocr_workers: int = Field(default=1, ge=1, le=16)
    ocr_timeout_seconds: float = Field(default=120.0, gt=0)
    ocr_reader: Literal["auto", "ppocr", "tesseract"] = "auto"
    ocr_min_confidence: float = Field(default=0.85, ge=0, le=1)
    email: FaxEmailSection = FaxEmailSection()

    @field_validator("filename_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        return _check_regex(value, FAX_FIELDS)


class MetricsSection(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _host_port(value)


class OidcSection(_Strict):
    """Single sign-on through an OpenID Connect provider (optional)."""

    issuer: str = ""  # e.g. https://sso.example.org/realms/org; empty: no single sign-on
    client_id: str = ""
    client_secret_env: str = "GATEWAY_OIDC_SECRET"  # the secret comes from this environment variable
    scopes: str = "openid email profile"
    label: str = "Single sign-on"  # the button on the sign-in page

    @model_validator(mode="after")
    def _consistent(self) -> OidcSection:
        if self.issuer and not self.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError(f"issuer {self.issuer!r} must be an https:// URL")
        if self.issuer and not self.client_id:
            raise ValueError("issuer is set but client_id is empty")
        return self


class WebSection(_Strict):
    """The web register."""

    enabled: bool = True  # served by `gateway run` too
    listen: str = "127.0.0.1:8080"
    workers: int = Field(default=1, ge=1, le=64)  # `gateway web` only
    language: Literal["zh", "en"] = "zh"  # a person's own choice wins
    # The address people use (https://register.example.org); links in mail point there. Behind a
    # TLS-terminating reverse proxy its https:// makes session cookies Secure.
    base_url: str = ""
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs).
    trusted_proxies: list[str] = []
    session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    session_absolute_hours: int = Field(default=12, ge=1, le=24 * 30)
    # Failed sign-ins allowed within signin_window_minutes, per account and per client address.
    signin_failures_per_account: int = Field(default=5, ge=1, le=1000)
    signin_failures_per_address: int = Field(default=20, ge=1, le=100000)
    signin_window_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # People with any of these roles sign in with a password and an authenticator app's code; until
    # they have turned two-step sign-in on, every page sends them to their account page to do so.
    two_step_roles: list[Literal["registry", "member", "head", "leader", "auditor", "admin"]] = []
    # "Forgot your password?" mails a link that works once, for this long; it needs base_url (the
    # link's address) and is off with 0.
    reset_minutes: int = Field(default=30, ge=0, le=24 * 60)
    oidc: OidcSection = OidcSection()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        from gateway.stages.check import parse_relays

        return [str(network) for network in parse_relays(values)]  # ValueError names the entry

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")


class LoggingSection(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    timestamps: bool = True


class TrustSection(_Strict):
    """The check stage: the resolver for DKIM, SPF and DMARC, whose Authentication-Results count,
    and what to do when DMARC says reject."""

    nameservers: list[str] = []  # "IP" or "IP:PORT" ("[v6]:PORT"); empty: the system's resolvers
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)  # one query to one server
    lifetime_seconds: float = Field(default=5.0, gt=0, le=120)  # one lookup, all tries together
    trusted_authserv_ids: list[str] = []  # Authentication-Results written by the organisation's MTAs
    # Over SMTP, those count only when the client is one of these relays (IPs or CIDRs).
    trusted_relays: list[str] = []
    check_deadline_seconds: float = Field(default=8.0, gt=0, le=300)  # all DNS lookups of one message
    dmarc_policy: Literal["record", "refuse"] = "record"

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, values: list[str]) -> list[str]:
        from gateway.stages.check import split_nameserver

        for value in values:
            split_nameserver(value)  # ValueError names the entry
        return values

    @field_validator("trusted_relays")
    @classmethod
    def _relays(cls, values: list[str]) -> list[str]:
        from gateway.stages.check import parse_relays

        return [str(network) for network in parse_relays(values)]  # ValueError names the entry

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv_ids(cls, values: list[str]) -> list[str]:
        if bad := [v for v in values if not v.strip() or any(c.isspace() or c == ";" for c in v.strip())]:
            raise ValueError(f"{bad[0]!r} is not an authserv-id (a host name such as mx.example.org)")
        return [v.strip().lower() for v in values]


class NodeSection(_Strict):
    # This node's name among the nodes sharing the registry; empty: the host name.
    name: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9._-]*$")


class ClusterSection(_Strict):
    # A dead node's IMAP folders and claimed work (outbox mail, OCR jobs) move on after this long
    # without its heartbeat; the heartbeat comes every third of it.
    takeover_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)
    # A job claimed this often without being finished (its node died each time) is given up.
    max_claims: int = Field(default=5, ge=1, le=100)


class StorageSection(_Strict):
    # The message store and the archive: directories every node mounts (NFS, CephFS, ...) when
    # several nodes share the registry. Empty: under the state directory (one node).
    messages_dir: Path | None = None
    archive_dir: Path | None = None


class ConfigModel(_Strict):
    gateway: GatewaySection = GatewaySection()
    registry: RegistrySection = RegistrySection()
    spool: SpoolSection = SpoolSection()
    normalise: NormaliseSection = NormaliseSection()
    triage: TriageSection
    classify: ClassifySection = ClassifySection()
    calendar: CalendarSection = CalendarSection()
    deadlines: DeadlinesSection = DeadlinesSection()
    reminders: RemindersSection = RemindersSection()
    satisfaction: SatisfactionSection = SatisfactionSection()
    circulation: CirculationSection = CirculationSection()
    borrowing: BorrowingSection = BorrowingSection()
    archive: ArchiveSection = ArchiveSection()
    outbound: OutboundSection = OutboundSection()
    receipts: ReceiptsSection = ReceiptsSection()
    replies: RepliesSection = RepliesSection()
    daemon: DaemonSection = DaemonSection()
    smtp: SmtpSection = SmtpSection()
    trust: TrustSection = TrustSection()
    imap: ImapSection = ImapSection()
    fax: FaxSection = FaxSection()
    metrics: MetricsSection = MetricsSection()
    web: WebSection = WebSection()
    logging: LoggingSection = LoggingSection()
    node: NodeSection = NodeSection()
    cluster: ClusterSection = ClusterSection()
    storage: StorageSection = StorageSection()
    departments: list[Department] = Field(min_length=1)


# What a reload cannot change, because it is read once at start (where the daemon listens, what
# it schedules, which folders it watches): what the log names it, its section, and its keys (None:
# the whole section). The timezone is one: the registry numbers letters by the year in it and the
# archive job is scheduled in it, both at start, so every other reader keeps it too. So are the
# message store and archive folders: the store is mounted at start, and letters archived in a new
# folder would be where none of the running parts (nor the register's packages) are. So are the
# archive's copies: which folders hold a package is fixed for those already written, and the running
# parts read, restore and destroy packages in the copies they started with.
RESTART_ONLY: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("gateway.state_dir", "gateway", ("state_dir",)),
    ("registry.url", "registry", None),
    ("gateway.letter_number", "gateway", ("letter_number",)),
    ("gateway.timezone", "gateway", ("timezone",)),
    ("storage", "storage", None),
    ("archive folder", "archive", ("folder",)),
    ("archive copies", "archive", ("copies",)),
    ("daemon", "daemon", None),
    ("spool", "spool", None),
    ("node.name", "node", None),
    ("cluster", "cluster", None),
    ("metrics", "metrics", None),
    ("reminder schedule", "reminders", ("enabled", "check_minutes")),
    ("archive schedule", "archive", ("enabled", "run_day", "run_hour")),
    ("smtp listeners and TLS", "smtp", ("enabled", "listen", "hostname", "tls_certificate", "tls_key",
                                        "auth_users_file", "max_message_bytes", "command_timeout", "require_tls")),
    ("web listener and single sign-on", "web", ("enabled", "listen", "oidc")),
    ("fax drop folder and OCR pool", "fax", ("enabled", "drop_folder", "ocr_workers")),
)


# What every node sharing one registry must be given alike, and each node compares with the others
# (registry/leases.py, SettingsWatch): a node timing takeovers otherwise takes a live node's folders
# and claims, or leaves a dead one's too long; other departments, triage, calendar, deadlines or
# reminders route, time and chase the same letter otherwise depending on the node; another
# timezone or number template numbers letters of one series differently; other intake limits
# make another letter of the same message. The rules are compared
# by the version each letter records. Listed as in RESTART_ONLY.
SHARED: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("cluster", "cluster", None),
    ("departments", "departments", None),
    ("triage", "triage", None),
    ("gateway.timezone", "gateway", ("timezone",)),
    ("gateway.letter_number", "gateway", ("letter_number",)),
    ("gateway.domains", "gateway", ("domains",)),
    ("calendar", "calendar", None),
    ("deadlines", "deadlines", None),
    ("reminders", "reminders", None),
    # What a letter is made of: over [imap] max_message_bytes a message is registered from its
    # headers only (and a move's copy is known by the digest of those), and [normalise] bounds how
    # much of a message is examined; any node may watch a folder or register a spooled item.
    ("imap.max_message_bytes", "imap", ("max_message_bytes",)),
    ("normalise", "normalise", None),
)


# What of an IMAP account every node must be given alike: the folder it leases (account and folder
# name) must be the same mailbox on every node, and whichever node watches it must do the same with
# its mail (the action, where it moves it, what the first import takes, the department it hints).
# How a node reaches the server and signs in (TLS, a CA file, a password file or token command, its
# polling) is its own: paths and secrets may differ from node to node.
_IMAP_SHARED = ("name", "host", "username", "folders", "department", "after", "move_to", "first_import",
                "import_since")


def _imap_accounts(model: ConfigModel) -> list[dict[str, Any]]:
    accounts = []
    for account in sorted(model.imap.accounts, key=lambda a: a.name):
        dumped = account.model_dump(mode="json", include=set(_IMAP_SHARED))
        dumped["port"] = account.effective_port
        dumped["folders"] = sorted(dumped["folders"])
        accounts.append(dumped)
    return accounts


def shared_settings(model: ConfigModel) -> dict[str, str]:
    """A digest of each of the SHARED settings, by the name the log gives it, and of the IMAP
    accounts' shared part ("imap accounts")."""
    values: dict[str, Any] = {}
    for name, section, keys in SHARED:
        value = getattr(model, section)
        values[name] = ([v.model_dump(mode="json") for v in value] if isinstance(value, list)
                        else value.model_dump(mode="json", include=set(keys) if keys else None))
    values["imap accounts"] = _imap_accounts(model)
    return {name: hashlib.sha256(json.dumps(dumped, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
            for name, dumped in values.items()}


@dataclass(frozen=True)
class ConfigIssue:
    file: Path
    key: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.key or '(top level)'}: {self.reason}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class Config:
    """The validated configuration with every path made absolute."""

    path: Path
    model: ConfigModel
    state_dir: Path
    # The compiled rules, set by whoever loads the rules with the configuration
    # (gateway.stages.rulebook); this module never compiles rules itself.
    rules: RuleSet | None = None

    @property
    def ruleset(self) -> RuleSet:
        if self.rules is None:
            raise RuntimeError("configuration loaded without its rules")
        return self.rules

    @property
    def rules_path(self) -> Path | None:
        """The rules file, or None when none is configured and none sits beside the config."""
        configured = self.resolve(self.model.classify.rules_file)
        if configured is not None:
            return configured
        beside = self.path.parent / "rules.yaml"
        return beside if beside.exists() else None

    @property
    def calendar(self) -> WorkingCalendar:
        from gateway.track.calendar import WorkingCalendar

        cal = self.model.calendar
        return WorkingCalendar(self.model.gateway.timezone, list(cal.weekend), cal.holidays, cal.working_days)

    @property
    def loop_id(self) -> str:
        """Marks mail the gateway sent itself (X-Gateway-Loop), so that it never answers itself."""
        return self.model.outbound.loop_id or self.model.outbound.from_address

    @property
    def departments(self) -> dict[str, Department]:
        return {d.id: d for d in self.model.departments}

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def message_dir(self) -> Path:
        return self.state_dir / "messages"

    @property
    def fax_drop_dir(self) -> Path:
        folder = self.model.fax.drop_folder
        return folder if folder.is_absolute() else self.state_dir / folder

    @property
    def archive_dir(self) -> Path:
        folder = self.model.storage.archive_dir or self.model.archive.folder
        return folder if folder.is_absolute() else self.state_dir / folder

    @property
    def archive_copies(self) -> list[Path]:
        return [folder if folder.is_absolute() else self.state_dir / folder for folder in self.model.archive.copies]

    @property
    def shared_message_dir(self) -> Path | None:
        """Where the message store really lives when `[storage] messages_dir` names a shared
        directory; `message_dir` (the name every stored path is relative to) points there."""
        folder = self.model.storage.messages_dir
        if folder is None:
            return None
        folder = folder if folder.is_absolute() else self.state_dir / folder
        return None if folder == self.message_dir else folder

    @property
    def node_name(self) -> str:
        import socket

        return self.model.node.name or socket.gethostname()

    def cluster_warnings(self) -> list[str]:
        """What `gateway check-config` warns about when several nodes may share the registry."""
        if not self.registry_url.startswith("postgresql"):
            return []
        warnings = []
        if not self.model.node.name:
            warnings.append(f"node.name: not set; the host name {self.node_name!r} names this node, and two "
                            "nodes must never share a name")
        if self.model.storage.messages_dir is None:
            warnings.append(f"storage.messages_dir: not set; the message store is {self.message_dir}, local to "
                            "this node: with several nodes on this registry, the others cannot read the originals")
        if self.model.storage.archive_dir is None and not self.model.archive.folder.is_absolute():
            warnings.append(f"storage.archive_dir: not set; the archive is {self.archive_dir}, local to this node")
        return warnings

    def address_warnings(self) -> list[str]:
        """What `gateway check-config` warns about people's addresses: one whose local part is not
        ASCII (李明@example.org) gets mail only through a relay that offers SMTPUTF8 (RFC 6531),
        which only the daemon finds out, in the relay's EHLO; through any other its mail is
        dead-lettered. A domain in Unicode alone needs nothing: it is written in A-labels."""
        warnings: list[str] = []
        for i, dept in enumerate(self.model.departments):
            people = [*((f"owners[{j}]", a) for j, a in enumerate(dept.owners)), ("head", dept.head),
                      *((f"members[{j}]", a) for j, a in enumerate(dept.members)),
                      *((f"leaders[{j}]", a) for j, a in enumerate(dept.leaders))]
            warnings += [f"departments[{i}].{key}: {smtputf8_warning(address)}"
                         for key, address in people if needs_smtputf8(address)]
        return warnings

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def registry_url(self) -> str:
        return self.model.registry.url or f"sqlite:///{self.state_dir / 'registry.sqlite3'}"

    def endpoint(self, template: str) -> str:
        return template.replace("{state_dir}", str(self.state_dir))

    def resolve(self, value: Path | None) -> Path | None:
        """A path from the config file, relative to the file's folder."""
        return None if value is None else (value if value.is_absolute() else self.path.parent / value)

    def accepts(self, address: str) -> bool:
        """Is this a recipient the SMTP listener takes mail for?"""
        address = canonical(address)
        smtp = self.model.smtp
        local, _, domain = address.rpartition("@")
        return (address in smtp.accept_addresses or domain in smtp.accept_domains
                or self.department_for_address(address) is not None
                # RFC 5321 4.5.1: mail about mail (abuse, delivery problems) reaches "postmaster",
                # bare or at any of the organisation's domains; it is registered as a letter.
                or address == "postmaster" or (local == "postmaster" and domain in self.model.gateway.domains)
                # Departments answer the gateway's notifications by replying to them, at its
                # address or at a signed reply address (<local>+<token>@<domain>) of it.
                or address == self.model.outbound.from_address or self.is_reply_address(address))

    def is_reply_address(self, address: str) -> bool:
        """One of the gateway's own reply addresses, <local>+...@<domain> of from_address."""
        local, _, domain = self.model.outbound.from_address.lower().rpartition("@")
        mine, _, theirs = address.lower().rpartition("@")
        return theirs == domain and mine.startswith(f"{local}+")

    def auth_user_may_send_as(self, user: str | None, address: str | None) -> bool:
        """Does mail submitted by this SMTP AUTH user prove this From address?

        Only the addresses listed for the user under [smtp.auth_senders]; a
        user without an entry proves no address at all."""
        if not user or not address:
            return False
        return canonical(address.strip().strip("<>")) in self.model.smtp.auth_senders.get(user, ())

    def department_for_address(self, address: str) -> str | None:
        address = canonical(address)
        for dept in self.model.departments:
            if address in dept.addresses:
                return dept.id
        return None


def locate(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config wins, then $GATEWAY_CONFIG, then the checkout's example, then /etc."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if CHECKOUT_CONFIG.exists():
        return CHECKOUT_CONFIG
    return SYSTEM_CONFIG


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _reason(err: ErrorDetails) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"wrong type: {msg.lower()} (got {err.get('input')!r})"
    return msg


def load(path: str | os.PathLike[str] | None = None, *, check_dirs: bool = True) -> Config:
    """Read, validate and resolve the configuration, or raise ConfigError listing every problem.

    The rules file is not read here: gateway.stages.rulebook.load reads both."""
    file = locate(path).resolve()
    try:
        text = file.read_text(encoding="utf-8-sig")  # Notepad starts a file with a BOM
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(file, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, "", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(file, "", f"not valid TOML: {exc}")]) from None

    # Where each key is written matters only to an error message: a valid file is not scanned.
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        lines = _KeyLines(text)
        issues = [ConfigIssue(file, _key_path(e["loc"]), _reason(e), lines.find(e["loc"])) for e in exc.errors()]
        raise ConfigError(issues) from None

    state_dir = model.gateway.state_dir
    if not state_dir.is_absolute():
        state_dir = (file.parent / state_dir).resolve()
    config = Config(path=file, model=model, state_dir=state_dir)

    issues = _cross_checks(config)
    if check_dirs:
        issues += _directory_checks(config)
    if issues:
        lines = _KeyLines(text)
        raise ConfigError([ConfigIssue(i.file, i.key, i.reason, lines.find(_key_loc(i.key)))
                           if i.file == file and i.line is None else i for i in issues])
    return config


_TOML_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_TOML_DOTTED = re.compile(rf"{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*")
_TOML_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_TOML_DOTTED.pattern})\s*\]")
_TOML_ASSIGNMENT = re.compile(rf"^\s*({_TOML_DOTTED.pattern})\s*=")


class _KeyLines:
    """Where each table and key of a TOML file is written, so that an error names the line of the
    setting it is about (or of its table, for a key left out)."""

    def __init__(self, text: str):
        self.lines: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        arrays: dict[tuple[Any, ...], int] = {}
        in_string = False
        for number, line in enumerate(text.splitlines(), 1):
            if line.count('"""') % 2 or line.count("'''") % 2:  # a multi-line string opens or closes
                was, in_string = in_string, not in_string
                if was:
                    continue
            elif in_string:
                continue
            header = _TOML_HEADER.match(line)
            if header:
                names = tuple(_key_parts(header.group(2)))
                if header.group(1) == "[[":
                    arrays[names] = arrays.get(names, -1) + 1
                    table = (*names, arrays[names])
                else:
                    table = names
                self.lines.setdefault(table, number)
                continue
            assignment = _TOML_ASSIGNMENT.match(line)
            if assignment:
                self.lines.setdefault((*table, *_key_parts(assignment.group(1))), number)

    def find(self, loc: tuple[Any, ...]) -> int | None:
        """The line of the longest part of `loc` written in the file (an element of a list, a key
        of an inline table: the line its key is on); None if not even its table is."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _key_parts(dotted: str) -> list[str]:
    parts = []
    for part in re.findall(_TOML_KEY, dotted):
        if part[0] == '"':
            part = json.loads(part)
        elif part[0] == "'":
            part = part[1:-1]
        parts.append(part)
    return parts


def _key_loc(key: str) -> tuple[Any, ...]:
    """`departments[2].id` as the path pydantic gives: ("departments", 2, "id")."""
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", key))


def _cross_checks(config: Config) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    known: dict[str, int] = {}
    claimed: dict[str, str] = {}
    for i, dept in enumerate(config.model.departments):
        if dept.id in known:
            issues.append(ConfigIssue(config.path, f"departments[{i}].id",
                                      f"duplicate department id {dept.id!r} (also departments[{known[dept.id]}])"))
        known.setdefault(dept.id, i)
        for j, address in enumerate(dept.addresses):
            if address in claimed and claimed[address] != dept.id:
                issues.append(ConfigIssue(config.path, f"departments[{i}].addresses[{j}]",
                                          f"{address} already belongs to department {claimed[address]!r}"))
            claimed.setdefault(address, dept.id)
    for i, dept in enumerate(config.model.departments):
        for j, owner in enumerate(dept.owners):
            if owner in claimed:
                issues.append(ConfigIssue(config.path, f"departments[{i}].owners[{j}]",
                                          f"{owner} is an address of department {claimed[owner]!r}: its "
                                          "notifications would come back as letters; give owners their own addresses"))
    smtp = config.model.smtp
    unreadable: set[str] = set()
    for key in ("tls_certificate", "tls_key", "auth_users_file"):
        path = config.resolve(getattr(smtp, key))
        if path is not None and not os.access(path, os.R_OK):
            issues.append(ConfigIssue(config.path, f"smtp.{key}", f"cannot read {path}"))
            unreadable.add(key)
    # What the listener loads when it starts, loaded now: check-config's OK is then the start's.
    users = config.resolve(smtp.auth_users_file)
    if users is not None and "auth_users_file" not in unreadable:
        try:
            read_auth_users(users)
        except (OSError, ValueError) as exc:
            issues.append(ConfigIssue(config.path, "smtp.auth_users_file", str(exc)))
    certificate, private_key = config.resolve(smtp.tls_certificate), config.resolve(smtp.tls_key)
    if certificate is not None and private_key is not None and not unreadable & {"tls_certificate", "tls_key"}:
        problem = tls_problem(certificate, private_key)
        if problem:
            issues.append(ConfigIssue(config.path, "smtp.tls_certificate", problem))
    if (smtp.tls_certificate is None) != (smtp.tls_key is None):
        issues.append(ConfigIssue(config.path, "smtp.tls_key" if smtp.tls_key is None else "smtp.tls_certificate",
                                  "tls_certificate and tls_key go together"))
    if smtp.auth_users_file is not None and smtp.tls_certificate is None:
        issues.append(ConfigIssue(config.path, "smtp.auth_users_file",
                                  "AUTH is offered only over TLS: set tls_certificate and tls_key"))
    if smtp.require_tls and smtp.tls_certificate is None:
        issues.append(ConfigIssue(config.path, "smtp.require_tls", "needs tls_certificate and tls_key"))
    if smtp.auth_senders and smtp.auth_users_file is None:
        issues.append(ConfigIssue(config.path, "smtp.auth_senders", "needs auth_users_file"))
    domains = config.model.gateway.domains
    for user, addresses in smtp.auth_senders.items():
        for j, address in enumerate(addresses):
            if address.rpartition("@")[2] not in domains:
                issues.append(ConfigIssue(config.path, f"smtp.auth_senders.{user}[{j}]",
                                          f"{address} is not in the organisation's domains (gateway.domains: "
                                          f"{', '.join(domains) or 'none'}); AUTH proves only our own senders"))
    names: dict[str, int] = {}
    for i, account in enumerate(config.model.imap.accounts):
        key = f"imap.accounts[{i}]"
        if account.name in names:
            issues.append(ConfigIssue(config.path, f"{key}.name", f"duplicate account name {account.name!r}"
                                                                  f" (also imap.accounts[{names[account.name]}])"))
        names.setdefault(account.name, i)
        if account.department is not None and account.department not in known:
            issues.append(ConfigIssue(config.path, f"{key}.department",
                                      f"no department with id {account.department!r}"
                                      f" (known: {', '.join(sorted(known))})"))
        for field in ("password_file", "tls_ca_file"):
            path = config.resolve(getattr(account, field))
            if path is not None and not os.access(path, os.R_OK):
                issues.append(ConfigIssue(config.path, f"{key}.{field}", f"cannot read {path}"))
    rules = config.resolve(config.model.classify.rules_file)
    if rules is not None and not rules.is_file():
        issues.append(ConfigIssue(config.path, "classify.rules_file",
                                  f"{rules} is a directory, not a rules file" if rules.is_dir()
                                  else f"{rules}: no such file"))
    elif rules is not None and not os.access(rules, os.R_OK):
        issues.append(ConfigIssue(config.path, "classify.rules_file", f"cannot read {rules}"))
    outbound = config.model.outbound
    path = config.resolve(outbound.tls_ca_file)
    if path is not None and not os.access(path, os.R_OK):
        issues.append(ConfigIssue(config.path, "outbound.tls_ca_file", f"cannot read {path}"))
    templates = config.resolve(config.model.receipts.templates)
    for template in ([templates / f"{kind}.{language}.txt" for kind in ("receipt", "feedback")
                      for language in ("zh", "en")] if templates is not None else []):
        if not os.access(template, os.R_OK):
            issues.append(ConfigIssue(config.path, "receipts.templates", f"cannot read {template}"))
    replies = config.model.replies
    chains = [(f"replies.approval[{i}].chain", rule.chain) for i, rule in enumerate(replies.approval)]
    for key, chain in [*chains, ("replies.default_chain", replies.default_chain)]:
        if "top" in chain and not replies.top_leadership:
            issues.append(ConfigIssue(config.path, key, "names top, but replies.top_leadership is empty"))
        if "leader" in chain and (bare := [d.id for d in config.model.departments if not d.leaders]):
            issues.append(ConfigIssue(config.path, key, f"names leader, but departments {', '.join(bare)} have no "
                                                        "leaders (their replies could never be approved)"))
    if config.model.triage.department not in known:
        issues.append(ConfigIssue(config.path, "triage.department",
                                  f"no department with id {config.model.triage.department!r}"
                                  f" (known: {', '.join(sorted(known))})"))
    return issues + _folder_checks(config) + _listener_checks(config)


def _listener_checks(config: Config) -> list[ConfigIssue]:
    """Two listeners on one port of one address: the second would fail to bind only at start (the
    web register is counted even when the daemon does not serve it: `gateway web` listens there)."""
    model = config.model
    listeners = [(f"smtp.listen[{i}]", value) for i, value in enumerate(model.smtp.listen) if model.smtp.enabled]
    listeners.append(("web.listen", model.web.listen))
    if model.metrics.enabled:
        listeners.append(("metrics.listen", model.metrics.listen))
    issues: list[ConfigIssue] = []
    for key in ("wakeup_endpoint", "events_endpoint"):
        endpoint = config.endpoint(getattr(model.daemon, key))
        if endpoint.startswith("tcp://"):
            listeners.append((f"daemon.{key}", endpoint.removeprefix("tcp://")))
        elif len(os.fsencode(endpoint.removeprefix("ipc://"))) > _SOCKET_PATH_MAX:
            issues.append(ConfigIssue(config.path, f"daemon.{key}", f"{endpoint}: a Unix socket's path has at most "
                                                                    f"{_SOCKET_PATH_MAX} bytes: give a shorter one"))
    for i, (key, value) in enumerate(listeners):
        for other_key, other in listeners[:i]:
            if _same_socket(value, other):
                issues.append(ConfigIssue(config.path, key, f"{value} is also {other_key} ({other}): two "
                                                            "listeners cannot share a port; give each its own"))
                break
    return issues


# sockaddr_un's sun_path on Linux, less its closing NUL.
_SOCKET_PATH_MAX = 107


def _same_socket(a: str, b: str) -> bool:
    """Would listening on HOST:PORT `a` and `b` both bind the same port? A wildcard address
    (0.0.0.0, ::) takes the port on every address of its family (:: on both)."""
    (host_a, _, port_a), (host_b, _, port_b) = a.rpartition(":"), b.rpartition(":")
    if int(port_a) != int(port_b):
        return False
    host_a, host_b = (_listen_host(host_a), _listen_host(host_b))
    if host_a == host_b or "::" in (host_a, host_b):
        return True
    return "0.0.0.0" in (host_a, host_b) and ":" not in host_a + host_b


def _listen_host(host: str) -> str:
    host = host.strip("[]").lower()
    return "127.0.0.1" if host == "localhost" else "::" if host == "*" else host  # ZeroMQ's * is every address


def read_auth_users(path: Path) -> dict[str, str]:
    """The SMTP AUTH users file: `user:scrypt$...` lines, blank lines and # comments. Raises
    ValueError naming the file and line of the first line that is none of these."""
    users = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user or not encoded.startswith("scrypt$"):
            raise ValueError(f"{path}:{number}: expected 'user:scrypt$...' (as gateway smtp-passwd writes them)")
        users[user] = encoded
    return users


def tls_problem(certificate: Path, key: Path) -> str | None:
    """Why the certificate chain and its key do not load for a TLS server, or None if they do."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return (f"{certificate} and {key} do not load as a PEM certificate chain and its private key "
                f"({reason})")
    return None


def _folder_checks(config: Config) -> list[ConfigIssue]:
    """The folders a setting names must be folders of their own: the fax drop folder is emptied
    (every file in it is taken in or set aside), and the archive and the message store are
    written and purged. A drop folder at the state directory would take the registry itself."""
    def real(path: Path) -> Path:
        return Path(os.path.realpath(path))  # a symbolic link is the folder it leads to

    state = real(config.state_dir)
    own = {f"{name} (in gateway.state_dir)": state / name for name in ("spool", "messages", "keys", "paper-forms")}
    named: dict[str, Path] = {}
    if config.model.fax.enabled:
        named["fax.drop_folder"] = real(config.fax_drop_dir)
    named["storage.archive_dir" if config.model.storage.archive_dir else "archive.folder"] = real(config.archive_dir)
    for n, copy in enumerate(config.archive_copies):
        named[f"archive.copies[{n}]"] = real(copy)
    if config.shared_message_dir is not None:
        named["storage.messages_dir"] = real(config.shared_message_dir)
    issues: list[ConfigIssue] = []
    keys = list(named)
    for i, key in enumerate(keys):
        folder = named[key]
        if state == folder or state.is_relative_to(folder):
            issues.append(ConfigIssue(config.path, key, f"{folder} is the state directory or holds it "
                                                        f"({state}): give it a folder of its own"))
            continue
        others = [*own.items(), *((k, named[k]) for k in keys[i + 1:])]
        for other_key, other in others:
            if folder == other or folder.is_relative_to(other) or other.is_relative_to(folder):
                issues.append(ConfigIssue(config.path, key, f"{folder} is, holds or lies in {other} ({other_key}):"
                                                            " give it a folder of its own"))
                break
    return issues


def _directory_checks(config: Config) -> list[ConfigIssue]:
    state = config.state_dir
    try:
        make_dirs(state)  # durable: on first boot, everything the gateway keeps lives below it
    except OSError as exc:
        return [ConfigIssue(config.path, "gateway.state_dir", f"cannot create {state}: {exc.strerror}")]
    if not state.is_dir():
        return [ConfigIssue(config.path, "gateway.state_dir", f"{state} is not a directory")]
    # A real write, not os.access(): root passes os.access() on read-only mounts.
    probe = state / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return [ConfigIssue(config.path, "gateway.state_dir",
                            f"directory {state} is not writable: {exc.strerror}")]
    return []
