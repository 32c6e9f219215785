"""Whether a letter may be answered automatically (RFC 3834, and mail loops of our own)."""
from __future__ import annotations

import re
import unicodedata

from gateway.addressing import ascii_domain

_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_ASCII_ATEXT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-")
_ROBOT_LOCAL_PARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply",
                      "bounce", "bounces", "listserv", "majordomo", "owner-")
_ROBOT_SUFFIXES = ("-request", "-bounces", "-owner")
# The Message-IDs we give our own mail (gateway.stages.route.new_mail): 32 hex digits at our domain.
_OUR_MESSAGE_ID = re.compile(r"<([0-9a-f]{32})@([^<>\s]+)>", re.IGNORECASE)


def safe_address(address: str) -> bool:
    """A plain addr-spec we can put in RCPT TO and a header: no spaces, quotes, CR/LF or comments.

    One in Unicode (RFC 6531) is one too: a local part of letters, digits and signs of any script
    (no control, format or space characters), a domain that is a host name in A-labels or U-labels."""
    if address.isascii():
        return len(address) <= 254 and bool(_ADDRESS.fullmatch(address))
    local, at, domain = address.rpartition("@")
    domain = ascii_domain(domain) or ""
    return (bool(at and local) and len(address.encode("utf-8", "surrogatepass")) <= 254
            and bool(_ADDRESS.fullmatch(f"x@{domain}"))
            and all(c in _ASCII_ATEXT if c.isascii() else unicodedata.category(c)[0] not in "CZ" for c in local))


def answers_our_mail(headers: dict[str, list[str]], our_domain: str) -> bool:
    """Does this mail name one of our own Message-IDs in In-Reply-To or References, so that it is
    an answer to mail we sent (a receipt, most likely)? An auto-responder that writes from a new
    address every time (VERP) is still recognised by what it answers."""
    domain = our_domain.lower()
    return any(found.group(2).lower() == domain
               for name in ("in-reply-to", "references") for value in headers.get(name, [])
               for found in _OUR_MESSAGE_ID.finditer(value))


def automatic_reason(headers: dict[str, list[str]], envelope_from: str | None) -> str | None:
    """Why a mail is an automatic one (a bounce, an absence notice, a server's rule or a list's
    mail, RFC 3834), or None: what it says was not written by a person to this letter."""
    def each(name: str) -> list[str]:
        return [value.strip().lower() for value in headers.get(name, [])]

    if envelope_from is not None and envelope_from.strip() in ("", "<>"):
        return "null envelope sender (a bounce or a notification)"
    if [value.replace(" ", "") for value in each("return-path")[:1]] == ["<>"]:
        return "null sender (Return-Path: <>)"
    # Every value, not the first only: "Auto-Submitted: no" above "auto-replied" is still automatic.
    for auto in each("auto-submitted"):
        if auto and auto.split(";")[0].strip() != "no":
            return f"Auto-Submitted: {auto[:40]}"
    for precedence in (value.split(";")[0].strip() for value in each("precedence")):
        if precedence in ("bulk", "junk", "list", "auto_reply"):
            return f"Precedence: {precedence}"
    return None


def no_reply_reason(headers: dict[str, list[str]], sender: str, envelope_from: str | None, *,
                    own_mail: bool) -> str | None:
    """Why no automatic reply may go to `sender` (the reply address), or None if one may.

    `own_mail`: the mail carries our X-Gateway-Loop marker, of any kind of our mail, and its
    token verifies (gateway.stages.tokens.loop_marker_state); the header's mere presence
    proves nothing."""
    def first(name: str) -> str:
        values = headers.get(name)
        return values[0].strip().lower() if values else ""

    automatic = automatic_reason(headers, envelope_from)
    if automatic:
        return automatic
    listed = sorted(name for name in headers if name.startswith("list-"))
    if listed:
        return f"mailing list ({listed[0]})"
    suppress = {token.strip() for token in first("x-auto-response-suppress").split(",")}
    if suppress & {"all", "autoreply", "oof"}:  # Microsoft's names for "no automatic answers"
        return f"X-Auto-Response-Suppress: {first('x-auto-response-suppress')[:40]}"
    if own_mail:
        return "our own loop header (X-Gateway-Loop)"
    if not sender:
        return "no sender address"
    local = sender.lower().partition("@")[0]
    if (any(local == part or (part.endswith("-") and local.startswith(part)) for part in _ROBOT_LOCAL_PARTS)
            or local.endswith(_ROBOT_SUFFIXES)):
        return f"sender {sender} is a robot address"
    if not safe_address(sender):
        return f"sender address {sender!r} is not one we can write to safely"
    return None
