"""What the rules look at: the facts of one letter, whichever way they were gathered."""
from __future__ import annotations

import email
from collections.abc import Container
from dataclasses import dataclass, field
from email import policy as email_policy
from typing import TYPE_CHECKING, Any

from gateway.registry.models import entry_sender
from gateway.stages.normalise.headers import decode_header_value

if TYPE_CHECKING:
    from gateway.stages.normalise import Normalised
    from gateway.registry.models import Letter

# Matching reads at most this much of a body: a 20 MB text attachment rendered
# as body must not make classification slow; the opening of a letter decides it.
BODY_LIMIT = 200_000


@dataclass
class Facts:
    channel: str  # email | fax
    sender_address: str = ""  # lower case; '' for a fax
    sender_name: str = ""
    recipients: list[str] = field(default_factory=list)  # envelope, To and Cc; lower case
    subject: str = ""
    body: str = ""
    attachments: list[tuple[str, str]] = field(default_factory=list)  # (file name, detected type)
    headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> decoded values
    fax_number: str | None = None
    mailbox_department: str | None = None  # the department whose IMAP mailbox it came from
    sender_verified: bool = False  # the check stage proved the sender address (stages/check.py)
    # The From address claims the organisation but is not proven: treated as external.
    unverified_internal: bool = False
    trust_method: str | None = None  # how the sender was proven (smtp-auth, dkim, ...), for the trace
    # The headers of each message a delivery report (multipart/report) returns: a report on our
    # own mail is known by the loop marker among them (route.py).
    returned_headers: list[dict[str, list[str]]] = field(default_factory=list)
    # What the mail says, as our loop marker's MAC covers it (gateway.stages.tokens.loop_content):
    # read only when it carries a marker naming us; "" otherwise, which verifies nothing.
    loop_content: str = ""

    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2] if "@" in self.sender_address else ""


def header_map(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in fields:
        out.setdefault(name.strip().lower(), []).append(value)
    return out


def headers_of(raw: bytes) -> dict[str, list[str]]:
    """The top-level headers of a stored message, decoded (cheap: the body is not parsed)."""
    parser = email.parser.BytesHeaderParser(policy=email_policy.compat32)
    try:
        message = parser.parsebytes(raw)
    except Exception:
        return {}
    return header_map([(name, decode_header_value(str(value))[0]) for name, value in message.raw_items()])


_RETURNED_MESSAGES = frozenset({"message/rfc822", "message/global"})
_RETURNED_HEADERS = frozenset({"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"})
_MOST_RETURNED = 10  # a report returns one message; a few more are looked at, not thousands


def returned_headers(raw: bytes, header_fields: list[tuple[str, str]]) -> list[dict[str, list[str]]]:
    """The headers of the messages a delivery report returns (RFC 6522: a multipart/report with
    the returned message, or its headers, as a part), decoded; none for any other message."""
    content_type = next((value for name, value in header_fields if name.lower() == "content-type"), "")
    if not content_type.strip().lower().startswith("multipart/report"):
        return []
    # Parsed within the normaliser's limits: a report is a hostile sender's message like any other.
    from gateway.stages.normalise.bounded import Budget, parse
    from gateway.stages.normalise.model import Limits

    try:
        message = parse(raw, Budget(Limits()))
        found: list[dict[str, list[str]]] = []
        for part in message.walk():
            if len(found) >= _MOST_RETURNED:
                break
            kind, payload = part.get_content_type(), part.get_payload()
            if kind in _RETURNED_MESSAGES and isinstance(payload, list) and payload \
                    and isinstance(payload[0], email.message.Message):
                fields = payload[0].raw_items()
            elif kind in _RETURNED_HEADERS:
                data = part.get_payload(decode=True)
                fields = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(
                    data if isinstance(data, bytes) else b"").raw_items()
            else:
                continue
            found.append(header_map([(name, decode_header_value(_unfolded(str(value)))[0])
                                     for name, value in fields]))
        return found
    except Exception:  # a report that cannot be read returns nothing we could recognise
        return []


def _unfolded(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", "\t").strip()


def _trust_facts(trust: dict[str, Any] | None) -> dict[str, Any]:
    """What the rules may know of a verdict; without one nothing is proven (and nothing flagged:
    letters registered before the check stage existed keep their classification on replay)."""
    trust = trust or {}
    return {"sender_verified": bool(trust.get("authenticated")),
            "unverified_internal": "unverified-internal-sender" in trust.get("flags", []),
            "trust_method": trust.get("method") if trust.get("authenticated") else None}


def facts_from_mail(parsed: Normalised, *, channel: str, envelope_rcpts: list[str],
                    mailbox_department: str | None, fax_number: str | None = None,
                    trust: dict[str, Any] | None = None,
                    returned: list[dict[str, list[str]]] | None = None, loop_content: str = "") -> Facts:
    return Facts(
        channel=channel,
        sender_address=parsed.sender.address.lower() if parsed.sender else "",
        sender_name=parsed.sender.name if parsed.sender else "",
        recipients=_unique([*envelope_rcpts, *(a.address.lower() for a in [*parsed.to, *parsed.cc])]),
        subject=parsed.subject,
        body=parsed.body_text[:BODY_LIMIT],
        attachments=[(a.original_filename or a.filename, a.detected_type) for a in parsed.attachments],
        headers=header_map(parsed.header_fields),
        fax_number=fax_number,
        mailbox_department=mailbox_department,
        **_trust_facts(trust),
        returned_headers=returned or [],
        loop_content=loop_content,
    )


def facts_from_letter(letter: Letter, headers: dict[str, list[str]],
                      departments: Container[str] | None = None, loop_content: str = "") -> Facts:
    """Facts from a registered letter (replay, and faxes classified once their text is read).

    A mailbox's department is kept only if it is among `departments` (the configured ids), when given."""
    recipients: dict[str, Any] = letter.recipients or {}
    listed = [*recipients.get("envelope", []),
              *(a.get("address", "") for a in [*recipients.get("to", []), *recipients.get("cc", [])])]
    hint = (letter.envelope or {}).get("department_hint") if letter.envelope else None
    return Facts(
        channel=letter.channel,
        # The rules' sender address is a mail address only: a fax's number is its own fact
        # (fax_number), unlike the register entry's sender (entry_sender), which falls back to it.
        sender_address=(letter.sender_address or "").lower(),
        sender_name=entry_sender(letter.sender_name, letter.sender_address, letter.fax_sender_name,
                                 letter.fax_number)[0],
        recipients=_unique([str(a).lower() for a in listed if a]),
        subject=letter.subject,
        body=letter.body_text[:BODY_LIMIT],
        attachments=[(a.original_filename or a.filename, a.detected_type) for a in letter.attachments],
        headers=headers,
        fax_number=letter.fax_number,
        mailbox_department=hint if departments is None or hint in departments else None,
        **_trust_facts(letter.trust),
        loop_content=loop_content,
    )


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
