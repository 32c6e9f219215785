"""The check stage: who really sent this mail?

Every e-mail item gets a *trust verdict* before it is classified or obeyed: whether its From
address is proven, how, and the evidence. A From header alone proves nothing — anyone can
write one. The address counts as proven by

- SMTP AUTH: the session authenticated as a user allowed to send as that address;
- DKIM: a valid signature (not rsa-sha1, nor under a key in testing mode), covering From and the
  whole body, whose d= is aligned with the From domain;
- DMARC: the From domain publishes a DMARC record and an aligned SPF (or DKIM) pass meets it;
- a trusted `Authentication-Results` header: written by one of the organisation's own MTAs
  (its authserv-id is configured), saying DMARC passed for the From domain or DKIM passed
  with a d= aligned as the From domain's DMARC record says (relaxed without one). Every other
  Authentication-Results header is ignored (and recorded).

DKIM, SPF and DMARC are checked only for mail received by the SMTP listener, which saw the
connection. Mail fetched by IMAP, from the fax inbox or taken in by hand has no SMTP
envelope worth checking: its verdict comes from trusted Authentication-Results only.

A trusted Authentication-Results header on mail received by the SMTP listener counts only when
the SMTP client is one of the organisation's relays (`[trust] trusted_relays`): anyone else
connecting to the listener could have written it. Whatever the intake, only the top of the header
counts: one below the Received header of a hop from outside (the border's) was in the mail
before it reached the organisation. From such a relay SPF is not checked: the
client's address is the relay's, not that of the server the sender used.

DNS goes through a resolver built from `[trust]` (its own servers and time limits), and all of
one message's lookups share one deadline (`check_deadline_seconds`): after it, a lookup is a
temperror without being asked, so one slow domain cannot hold up registration. A lookup that
fails or times out is a `temperror` on the verdict: recorded, never a crash and never a refusal
by itself (DMARC is then `temperror`, not `fail`, when the failed lookup could have made it pass).

The organisational domain (relaxed alignment, the DMARC record's fallback) comes from the
Public Suffix List shipped with the `publicsuffixlist` package: evil.com.cn and example.com.cn
are two organisations, mail.example.co.uk belongs to example.co.uk.
"""
from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any

import dkim
import dns.exception
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import spf
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed
from publicsuffixlist import PublicSuffixList

from gateway.addressing import canonical
from gateway.stages.addresses import is_internal

UNVERIFIED_INTERNAL = "unverified-internal-sender"
# Header fields a message has at most once (RFC 5322 3.6). A DKIM verifier checks the last of each
# (the one a signature covers); a reader takes the first: a field added above a signed mail would
# be read as the signed one's (another From of the signing domain, another Subject).
SINGLE_FIELDS = ("from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
                 "references")
REPEATED_FIELD = "repeated-header"
# The From field names no address and the sender was read from Sender, which DKIM, DMARC and an
# Authentication-Results header do not vouch for (they are about From).
SENDER_NOT_FROM = "sender-not-from"
# The header fields the DKIM check read are not those the letter was read with: a bare CR ends a
# line for Python's parser and not for dkimpy's, and the normaliser reads a bounded number of
# fields. A field placed so would be shown while the signature covers another.
AMBIGUOUS_HEADER = "ambiguous-header"
# A DKIM result for a signature that verifies but whose l= leaves the end of the body unsigned:
# anything may have been appended there (RFC 6376 6.1.3 and 8.2 let a verifier refuse such a
# signature, "PERMFAIL (unsigned content)"; RFC 8601's name for a signature not acceptable here).
DKIM_UNSIGNED_CONTENT = "policy"
FROM_NOT_SIGNED = "the signature does not cover the From field"
RSA_SHA1 = "rsa-sha1 is not accepted (RFC 8301)"
KEY_TESTING = "the key is in testing mode (t=y)"
_DKIM_LOG = logging.getLogger("gateway.stages.check.dkim")
MAX_SIGNATURES = 5  # DKIM signatures verified per message: each costs a lookup
MAX_AUTHENTICATION_RESULTS = 20  # trusted and ignored headers stored each, per message
_SMTP_INTAKE = "smtp"
NOT_A_TRUSTED_RELAY = "added before it reached us: the client is not a trusted relay"
BELOW_BORDER = "below the Received header of a hop from outside: written before the mail reached us"
OUTSIDE_MAILBOX = ("fetched from a mailbox not behind the organisation's MTAs (authentication_results = false): "
                   "anyone may have written it")
SPF_FROM_RELAY = "the client is a trusted relay, not the sender's server"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DmarcRefused(Exception):
    """The From domain's DMARC policy says reject and the policy in force refuses such mail."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Verdict:
    from_address: str
    from_domain: str
    authenticated: bool = False
    address: str | None = None  # the From address, when proven
    method: str | None = None  # smtp-auth | dkim | dmarc | authentication-results
    smtp_auth_user: str | None = None
    # domain, selector, result, aligned; and reason, for "policy" and a "permerror" dkimpy would pass
    dkim: list[dict[str, Any]] = field(default_factory=list)
    spf: dict[str, Any] | None = None  # result, domain; and reason, when not checked from a relay
    dmarc: dict[str, Any] | None = None  # result, policy, domain
    authentication_results: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"trusted": [], "ignored": []})
    flags: list[str] = field(default_factory=list)
    temperror: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain data, sharing nothing with it: what dataclasses.asdict gives, without
        its deep copy of every string (a few percent of a letter's registration)."""
        return {name: _plain_copy(getattr(self, name)) for name in _VERDICT_FIELDS}

    def prove(self, method: str) -> None:
        if not self.authenticated:
            self.authenticated, self.method, self.address = True, method, self.from_address


_VERDICT_FIELDS = tuple(f.name for f in fields(Verdict))


def _plain_copy(value: Any) -> Any:
    """A copy of JSON-like data: new dicts and lists, the same immutable leaves."""
    if isinstance(value, dict):
        return {key: _plain_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_copy(item) for item in value]
    return value


# -- the resolver ---------------------------------------------------------

def make_resolver(nameservers: list[str], timeout: float, lifetime: float) -> dns.resolver.Resolver:
    """A resolver with its own servers ("IP" or "IP:PORT", "[v6]:PORT") and time limits;
    no servers: the system's (resolv.conf)."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                for host, port in map(split_nameserver, nameservers)]
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    # Answers are kept for their TTL, NXDOMAIN included: a burst of mail from one domain (or
    # from none, as most senders publish no DMARC) asks once, not twice a message.
    resolver.cache = dns.resolver.LRUCache()
    return resolver


def split_nameserver(entry: str) -> tuple[str, int]:
    """"127.0.0.1:5353" -> ("127.0.0.1", 5353); a bare address uses port 53. Raises ValueError."""
    entry = entry.strip()
    host, port = entry, "53"
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r}: expected [address]:port")
            port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    ipaddress.ip_address(host)  # a name would need a resolver of its own
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r}: port must be 1-65535")
    return host, int(port)


class DnsTempError(Exception):
    """A lookup failed for now (timeout, no server answered)."""


class DeadlinePassed(dns.exception.DNSException):
    """The check's DNS deadline has passed: the lookup was not asked."""


class Answers:
    """The resolver's answers by name and type, each kept exactly as long as the resolver's own
    cache keeps it (its TTL; an NXDOMAIN's or an empty answer's from the SOA that came with it),
    and None for a name or type that has no records.

    In front of the resolver because a cached answer still costs dnspython about 35 µs (the name
    parsed, a resolution set up, two cache probes, an exception made for NXDOMAIN), and every
    letter asks two (SPF and DMARC of its sender's domain), most of them of the same few domains."""

    MAX_KEPT = 10_000  # names and types; all forgotten at once beyond that

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver
        self._kept: dict[tuple[str, Any], tuple[float, dns.resolver.Answer | None]] = {}

    def lookup(self, name: str, rdtype: Any, lifetime: float) -> dns.resolver.Answer | None:
        key = (name.lower(), rdtype)
        kept = self._kept.get(key)
        if kept is not None and time.time() < kept[0]:
            return kept[1]
        answer: dns.resolver.Answer | None
        try:
            answer = self.resolver.resolve(name, rdtype, search=False, lifetime=lifetime)
            expiration = answer.expiration
        except dns.resolver.NXDOMAIN:
            answer, expiration = None, self._negative_expiration(name, dns.rdatatype.ANY)
        except dns.resolver.NoAnswer:
            answer, expiration = None, self._negative_expiration(name, rdtype)
        if expiration > time.time():
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
            self._kept[key] = (expiration, answer)
        return answer

    def _negative_expiration(self, name: str, rdtype: Any) -> float:
        """Until when the resolver's cache keeps the negative answer it has just had (0: not kept)."""
        cache = self.resolver.cache
        if cache is None:
            return 0.0
        kept = cache.get((dns.name.from_text(name), dns.rdatatype.RdataType.make(rdtype), dns.rdataclass.IN))
        return kept.expiration if kept is not None else 0.0


class Lookups:
    """The DNS of one check: the answers, and one deadline for all the check's lookups
    (DKIM keys, SPF's up to ten, DMARC's two), however many there are."""

    def __init__(self, answers: Answers, deadline_seconds: float):
        self.answers = answers
        self.deadline = time.monotonic() + deadline_seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def resolve(self, name: str, rdtype: Any) -> dns.resolver.Answer | None:
        """The answer, or None when the name or the type has no records."""
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlinePassed()
        lifetime = min(float(self.answers.resolver.lifetime or remaining), remaining)
        return self.answers.lookup(name, rdtype, lifetime)


def txt_records(lookups: Lookups, name: str) -> list[bytes]:
    """The TXT records of a name, each joined from its strings; [] if none (NXDOMAIN, no answer,
    or a name that cannot exist, such as one with an empty label)."""
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException:
        return []  # a syntax question, not a DNS failure: asking again will not help
    try:
        answer = lookups.resolve(name, dns.rdatatype.TXT)
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
        raise DnsTempError(f"{name}: {type(exc).__name__}") from exc
    except dns.exception.DNSException as exc:
        raise DnsTempError(f"{name}: {exc}") from exc
    return [] if answer is None else [b"".join(rdata.strings) for rdata in answer]


# pyspf looks records up through its module-level DNSLookup; during a check it is the
# lookups of that check (a context variable, so that concurrent checks keep theirs).
_spf_lookups: ContextVar[Lookups | None] = ContextVar("spf_lookups", default=None)


def _spf_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[tuple[Any, Any]]:
    lookups = _spf_lookups.get()
    if lookups is None:
        raise spf.TempError("DNS: no resolver configured for SPF")
    try:
        answer = lookups.resolve(name, qtype)
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {type(exc).__name__}") from exc
    if answer is None:
        return []
    found: list[tuple[Any, Any]] = []
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _spf_lookup


@contextmanager
def _spf_using(lookups: Lookups) -> Iterator[None]:
    token = _spf_lookups.set(lookups)
    try:
        yield
    finally:
        _spf_lookups.reset(token)


# -- domains --------------------------------------------------------------

_PUBLIC_SUFFIXES = PublicSuffixList()  # the list shipped in the package: no network needed
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def organisational_domain(domain: str) -> str:
    """The registered name under its public suffix (mail.example.com.cn -> example.com.cn);
    a public suffix itself (com.cn) is its own, so it aligns with nothing beneath it."""
    domain = domain.lower().strip(".")
    return str(_PUBLIC_SUFFIXES.privatesuffix(domain) or domain)


def valid_domain(domain: str) -> bool:
    """A domain a From address can really have: host-name labels (IDN allowed), two or more."""
    try:
        ascii_name = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_name.lower().split(".")
    return len(ascii_name) <= 253 and len(labels) >= 2 and all(_LDH_LABEL.match(label) for label in labels)


def parse_relays(values: list[str]) -> tuple[Network, ...]:
    """"192.0.2.7", "2001:db8::/32" -> networks. Raises ValueError naming the entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or network") from exc
    return tuple(networks)


def _dkim_key(records: list[bytes]) -> bytes | None:
    """The key record among a selector's TXT records: the one starting v=DKIM1, or the only one."""
    keys = [r for r in records if re.match(rb"\s*v\s*=\s*DKIM1\s*(;|\Z)", r, re.I)]
    if keys:
        return keys[0]
    return records[0] if len(records) == 1 else None


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    domain, from_domain = domain.lower().strip("."), from_domain.lower().strip(".")
    if not domain or not from_domain:
        return False
    if mode == "s":
        return domain == from_domain
    return organisational_domain(domain) == organisational_domain(from_domain)


def _repeated_fields(header_fields: list[tuple[str, str]]) -> list[str]:
    """The fields a message may have once that it has more than once (as written: "Subject")."""
    seen: dict[str, str] = {}
    repeated: dict[str, None] = {}
    for name, _ in header_fields:
        key = name.strip().lower()
        if key in SINGLE_FIELDS:
            if key in seen:
                repeated[seen[key]] = None
            seen.setdefault(key, name.strip())
    return list(repeated)


def _tags(record: bytes | str, *, fold_case: bool = True) -> dict[str, str]:
    """Tag=value pairs; fold_case=False keeps the names' case, as DKIM reads them (RFC 6376 3.2)."""
    text = record.decode("ascii", "replace") if isinstance(record, bytes) else record
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower() if fold_case else key.strip()] = re.sub(r"\s+", "", value)
    return tags


# -- what a proof covers -----------------------------------------------------

RECIPIENT_PLACES = ("envelope", "to", "cc")  # where a mail names its recipients


def vouched_places(trust: dict[str, Any], header_fields: list[tuple[str, str]],
                   envelope_from: str | None) -> frozenset[str]:
    """Where a proven mail's recipients are vouched for by what proved it: "envelope", "to", "cc".

    SMTP AUTH vouches for everything the submitter sent. SPF (DMARC met by SPF, or a trusted
    Authentication-Results reporting beside its proof an SPF pass aligned with the From domain)
    proves the envelope sender's domain, and vouches for everything only when the envelope sender
    it checked is the From address itself: the domain's servers sent what that mailbox submitted.
    Sent by another of the domain's mailboxes (bob@ resending the owner's mail, or writing her
    From, through a relay that checks only the envelope sender against the login) it vouches for
    nothing; what else a trusted Authentication-Results proves rests on DKIM, even where no
    signature is left on the mail. A DKIM signature vouches only for the fields it names, each in
    all its instances (RFC 6376 5.4: one it does not name, a Cc say, may be added by anyone
    holding the signed mail), and never for the envelope. Over SMTP the signatures that passed are
    known; a trusted Authentication-Results does not say which one passed, so every signature of
    the From domain's organisation must cover the field. A DKIM-proven mail that SPF also passed
    for its From address came from that mailbox through the organisation's servers: everywhere.
    An unproven mail: everywhere (it commands nothing)."""
    everything = frozenset(RECIPIENT_PLACES)
    method = trust.get("method")
    if not trust.get("authenticated") or method == "smtp-auth":
        return everything
    from_domain = str(trust.get("from_domain") or "")
    address = canonical(str(trust.get("address") or ""))
    spf = trust.get("spf") or {}
    if spf.get("result") == "pass" and from_domain and aligned(str(spf.get("domain") or ""), from_domain, "r") \
            and envelope_from and canonical(envelope_from) == address:
        return everything  # sent by that mailbox through the domain's servers (Office 365's signatures name no To)
    if method == "dmarc":
        return frozenset()  # SPF alone, for another envelope sender: no signature proved anything either
    if method == "authentication-results" and any(
            canonical(str(entry.get("spf_mailfrom") or "")) == address
            for entry in (trust.get("authentication_results") or {}).get("trusted", [])):
        return everything  # the trusted header itself says SPF passed for that mailbox as envelope sender
    signatures = [_tags(value, fold_case=False) for name, value in header_fields
                  if name.strip().lower() == "dkim-signature"]
    if method == "dkim":
        # The i-th signature field is the i-th checked (the header was read alike, or nothing was
        # proven); those past the first MAX_SIGNATURES were not checked.
        results = trust.get("dkim") or []
        signatures = [tags for tags, result in zip(signatures, results, strict=False)
                      if result.get("result") == "pass" and result.get("aligned")]
    else:
        # Proven by DKIM as far as the header tells: a relay that removed the signatures it
        # checked leaves none here, and none vouches for nothing (never for everything, or the
        # owner's signed mail to someone else, delivered to the owner's reply address, would count).
        signatures = [tags for tags in signatures if aligned(tags.get("d", ""), from_domain, "r")]
    present = [name.strip().lower() for name, _ in header_fields]
    covered: list[set[str]] = []
    for tags in signatures:
        named = [n.strip().lower() for n in tags.get("h", "").split(":")]
        covered.append({f for f in ("to", "cc") if named.count(f) >= present.count(f)})
    if method == "dkim":  # one verified signature covering the field proves it
        return frozenset(set().union(*covered))
    return frozenset(set.intersection(*covered)) if covered else frozenset()


# -- Authentication-Results (RFC 8601) ------------------------------------

_AR_METHODS = ("dkim", "spf", "dmarc")


def _ar_tokens(value: str) -> list[list[str | tuple[str]]]:
    """The header cut into its parts at the semicolons, each part its words: atoms, "=" and "/" as
    str, a quoted string's content as a 1-tuple (never taken for a word of the header's own; joined
    to the atom it runs into, as in "local part"@domain, it is part of that value).
    Comments are dropped. A quoted string can hold ';', '=' or "dmarc=pass": an address's local
    part, say, which the sender chooses."""
    parts: list[list[str | tuple[str]]] = [[]]
    atom: list[str] = []
    i, length = 0, len(value)

    def end_atom() -> None:
        if atom:
            parts[-1].append("".join(atom))
            atom.clear()

    while i < length:
        char = value[i]
        if char == '"':
            end_atom()
            quoted, i = [], i + 1
            while i < length and value[i] != '"':
                if value[i] == "\\" and i + 1 < length:
                    i += 1
                quoted.append(value[i])
                i += 1
            if i + 1 < length and not value[i + 1].isspace() and value[i + 1] not in ';=/()"':
                atom.extend(quoted)  # "local part"@domain: one value
            else:
                parts[-1].append(("".join(quoted),))
        elif char == "(":
            end_atom()
            depth, i = 1, i + 1
            while i < length and depth:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                i += 1
            continue
        elif char == ";":
            end_atom()
            parts.append([])
        elif char in "=/":
            end_atom()
            parts[-1].append(char)
        elif char.isspace():
            end_atom()
        else:
            atom.append(char)
        i += 1
    end_atom()
    return parts


def parse_authentication_results(value: str) -> dict[str, Any]:
    """{"authserv_id", "results": [{"method", "result", "properties": {...}}]}, read as RFC 8601
    writes it: results only where the header puts them, never out of a quoted string or a comment."""
    head, *resinfos = _ar_tokens(value)
    authserv_id = head[0].lower() if head and isinstance(head[0], str) else ""
    results = []
    for words in resinfos:
        # method [/ version] = result, then ptype.property = value ... (a value: an atom or a quoted string)
        if len(words) < 3 or not isinstance(words[0], str) or words[0].lower() not in _AR_METHODS:
            continue
        at = 3 if words[1] == "/" else 1
        if words[at:at + 1] != ["="] or len(words) <= at + 1 or not isinstance(words[at + 1], str):
            continue
        properties: dict[str, str] = {}
        rest = words[at + 2:]
        for n in range(len(rest) - 2):
            key, equals, given = rest[n], rest[n + 1], rest[n + 2]
            if isinstance(key, str) and "." in key and equals == "=" and given != "=":
                properties.setdefault(key.lower(), (given if isinstance(given, str) else given[0]).lower())
        results.append({"method": words[0].lower(), "result": str(words[at + 1]).lower(), "properties": properties})
    return {"authserv_id": authserv_id, "results": results}


_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", re.I)


def _received_from(value: str) -> list[str]:
    """The address literals of a Received header ("[192.0.2.7]", "[IPv6:2001:db8::1]"), before its
    date. The hop that wrote it put the client's address there; the client can only add more
    (its HELO name, an address in the envelope), never take that one away."""
    return _ADDRESS_LITERAL.findall(value.rpartition(";")[0] or value)


def _proves(results: list[dict[str, Any]], from_domain: str, dkim_alignment: Callable[[], str | None]) -> bool:
    """Does a trusted header say the From domain is authenticated? dkim_alignment gives the From
    domain's DMARC adkim ("r" without a record; None when it could not be looked up), asked only
    for a DKIM pass of another domain than the From's."""
    for r in results:
        if r["result"] != "pass":
            continue
        props = r["properties"]
        if r["method"] == "dmarc" and props.get("header.from", "") == from_domain:
            return True
        if r["method"] == "dkim":
            domain = props.get("header.d", props.get("header.i", "").rpartition("@")[2])
            if aligned(domain, from_domain, "s"):
                return True
            if aligned(domain, from_domain, "r"):
                mode = dkim_alignment()
                if mode is not None and aligned(domain, from_domain, mode):
                    return True
    return False


def _spf_pass_mailbox(results: list[dict[str, Any]], from_domain: str) -> str | None:
    """The envelope sender a header reports an SPF pass for, when it is a mailbox of the From
    domain's organisation; None when it reports none (a bare domain names no mailbox)."""
    for r in results:
        if r["method"] != "spf" or r["result"] != "pass":
            continue
        mailfrom = r["properties"].get("smtp.mailfrom", "")
        if "@" in mailfrom and aligned(mailfrom.rpartition("@")[2], from_domain, "r"):
            return str(mailfrom)
    return None


# -- the check --------------------------------------------------------------

MaySendAs = Callable[[str, str], bool]


@dataclass(frozen=True)
class TrustPolicy:
    trusted_authserv_ids: frozenset[str]
    refuse_dmarc_reject: bool
    internal_domains: tuple[str, ...]
    trusted_relays: tuple[Network, ...] = ()  # SMTP clients whose trusted Authentication-Results count
    check_deadline_seconds: float = 8.0  # all of one message's DNS lookups


class Checker:
    def __init__(self, resolver: dns.resolver.Resolver, policy: TrustPolicy, may_send_as: MaySendAs):
        self.answers = Answers(resolver)
        self.policy = policy
        self.may_send_as = may_send_as

    def check(self, raw: bytes, from_address: str, header_fields: list[tuple[str, str]],
              envelope: dict[str, Any], intake: str, *, may_refuse: bool = False,
              sender_field: str = "From", outside_mailbox: bool = False) -> Verdict:
        """The verdict of one mail. Raises DmarcRefused only with may_refuse (an SMTP client
        still waiting for the answer) and the refuse policy. sender_field: the header field
        from_address was read from (Sender, when From names no address). outside_mailbox: fetched
        from a mailbox the organisation's MTAs do not deliver to, whose Authentication-Results
        nobody removed on the way in."""
        from_address = canonical(from_address)  # as the configuration names its people
        from_domain = from_address.rpartition("@")[2] if "@" in from_address else ""
        verdict = Verdict(from_address=from_address, from_domain=from_domain)
        smtp = intake == _SMTP_INTAKE
        auth_user = envelope.get("auth_user") if smtp else None
        if auth_user:
            verdict.smtp_auth_user = str(auth_user)
            if from_address and self.may_send_as(str(auth_user), from_address):
                verdict.prove("smtp-auth")
        signed_names: list[str] | None = None
        # The From domain's DMARC adkim, once known: what a trusted header's DKIM pass must align by.
        alignment: list[str | None] = []
        from_relay = smtp and self._trusted_relay(envelope.get("client"))
        if smtp and from_domain:
            lookups = Lookups(self.answers, self.policy.check_deadline_seconds)
            signed_names = self._dkim(raw, verdict, lookups)
            self._spf(envelope, verdict, lookups, from_relay)
            if valid_domain(from_domain):
                alignment.append(self._dmarc(verdict, lookups))
            else:  # no DNS answer could ever exist for it: a permanent error, not a temporary one
                verdict.dmarc = {"result": "permerror", "policy": None, "domain": from_domain}

        def dkim_alignment() -> str | None:
            if not alignment:  # mail not checked over SMTP: asked only now, and once
                alignment.append(self._dkim_alignment(
                    verdict, Lookups(self.answers, self.policy.check_deadline_seconds)))
            return alignment[0]
        # Over SMTP, anyone can connect and write an Authentication-Results header; it is the
        # organisation's MTA's only when that MTA is the client.
        relayed = not smtp or from_relay
        self._authentication_results(header_fields, verdict, relayed, dkim_alignment, fetched=not smtp,
                                     outside_mailbox=outside_mailbox)
        repeated = _repeated_fields(header_fields)
        if repeated:
            verdict.flags.append(f"{REPEATED_FIELD}: {', '.join(repeated)}")
        ambiguous = signed_names is not None and signed_names != [name.strip().lower() for name, _ in header_fields]
        if ambiguous:
            verdict.flags.append(AMBIGUOUS_HEADER)
        not_from = bool(from_address) and sender_field.lower() != "from"
        if not_from:
            verdict.flags.append(SENDER_NOT_FROM)
        if (repeated or ambiguous or not_from) and verdict.authenticated and verdict.method != "smtp-auth":
            # Proven by nothing but SMTP AUTH: the submitter's account vouches for what it sends.
            verdict.authenticated, verdict.address, verdict.method = False, None, None
        if from_domain and not verdict.authenticated and is_internal(from_address, self.policy.internal_domains):
            verdict.flags.append(UNVERIFIED_INTERNAL)
        dmarc = verdict.dmarc or {}
        if (may_refuse and smtp and self.policy.refuse_dmarc_reject and not verdict.authenticated
                and dmarc.get("result") == "fail" and dmarc.get("policy") == "reject"):
            raise DmarcRefused(f"DMARC policy of {dmarc.get('domain')} says reject: "
                               f"no aligned DKIM or SPF pass for {from_domain}")
        return verdict

    def _trusted_relay(self, client: object) -> bool:
        try:
            address = ipaddress.ip_address(str(client or ""))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.policy.trusted_relays)

    def _dkim(self, raw: bytes, verdict: Verdict, lookups: Lookups) -> list[str] | None:
        """The signatures checked into the verdict; returns the names of the header fields as
        dkimpy read them (lower case), or None when it could not read the message."""
        try:
            checker = _StreamedBodyDKIM(raw, logger=_DKIM_LOG)
            signatures = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
            names = [name.decode("latin-1").strip().lower() for name, _ in checker.headers]
        except Exception:
            return None  # not parseable as a message: no signature can be checked
        for index, value in enumerate(signatures[:MAX_SIGNATURES]):
            # The d= and s= dkimpy verifies with: a "D=" beside them is another tag, whose domain
            # the signer chose freely.
            tags = _tags(value, fold_case=False)
            domain, selector = tags.get("d", "").lower(), tags.get("s", "")
            # dkimpy turns most errors into a plain False: the key lookup says which it was.
            lookup: dict[str, str] = {}

            def key_record(name: bytes | str, timeout: float = 5,
                           lookup: dict[str, str] = lookup) -> bytes | None:
                text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
                try:
                    key = _dkim_key(txt_records(lookups, text))
                except DnsTempError as exc:
                    lookup["error"] = "temperror"
                    raise dkim.DnsTimeoutError(str(exc)) from exc
                if key is None:
                    lookup["error"] = "permerror"  # no key at that selector
                elif "y" in _tags(key).get("t", "").lower().split(":"):
                    lookup["testing"] = "y"
                return key
            checker.unsigned_body_bytes, reason = 0, ""
            try:
                result = "pass" if checker.verify(idx=index, dnsfunc=key_record) else "fail"
            except dkim.DnsTimeoutError:
                result = "temperror"
            except _NotAcceptable as exc:
                result, reason = "permerror", exc.reason
            except dkim.DKIMException:
                result = "fail"  # body hash or signature does not match
            except Exception:
                result = "permerror"  # a malformed signature must not break the check
            if result != "pass" and lookup.get("error"):
                result = lookup["error"]
            if result == "temperror":
                verdict.temperror = True
            entry: dict[str, Any] = {"domain": domain, "selector": selector, "result": result,
                                     "aligned": aligned(domain, verdict.from_domain, "r")}
            if reason:
                entry["reason"] = reason
            if result == "pass" and lookup.get("testing"):
                # RFC 6376 3.6.1: mail signed in testing mode is treated as unsigned mail.
                entry["result"], entry["reason"] = DKIM_UNSIGNED_CONTENT, KEY_TESTING
            elif result == "pass" and checker.unsigned_body_bytes:
                # The signed part verifies, but what follows it (a forged part, say) is anyone's.
                entry["result"] = DKIM_UNSIGNED_CONTENT
                entry["reason"] = (f"l={tags.get('l')} leaves {checker.unsigned_body_bytes} bytes "
                                   "of the body unsigned")
            verdict.dkim.append(entry)
        return names

    def _spf(self, envelope: dict[str, Any], verdict: Verdict, lookups: Lookups, from_relay: bool) -> None:
        client = str(envelope.get("client") or "")
        helo = str(envelope.get("helo") or "")
        mail_from = str(envelope.get("mail_from") or "")
        sender = mail_from or f"postmaster@{helo}"
        # The domain pyspf checks, and so the one its result is about: after the first @, and a
        # sender without one is a domain itself (RFC 7208 4.3), never the HELO name beside it.
        domain = spf.split_email(sender, helo)[1].lower()
        if from_relay:
            # SPF is about the server that handed the mail over, here our own relay, which the
            # sender's domain may well allow (its own outgoing MTA): it would pass mail forged
            # at the border. The relay's Authentication-Results speaks for that hop.
            verdict.spf = {"result": "none", "domain": domain, "reason": SPF_FROM_RELAY}
            return
        try:
            ipaddress.ip_address(client)
        except ValueError:
            verdict.spf = {"result": "none", "domain": domain}
            return
        # pyspf's own limit, besides the deadline each lookup keeps to
        limit = max(0.1, min(float(self.answers.resolver.lifetime or 5) * 4, lookups.remaining()))
        with _spf_using(lookups):
            try:
                result, _explanation = spf.check2(i=client, s=sender, h=helo, timeout=limit, querytime=limit)
            except Exception:  # pyspf raises on some malformed input; an SPF question, not a crash
                result = "permerror"
        if result == "temperror":
            verdict.temperror = True
        verdict.spf = {"result": str(result), "domain": domain}

    @staticmethod
    def _dmarc_record(from_domain: str, lookups: Lookups) -> tuple[dict[str, str], str] | None:
        """The DMARC record that applies to the From domain, as tags, and where it was found;
        None when there is none. Raises DnsTempError."""
        for candidate in dict.fromkeys([from_domain, organisational_domain(from_domain)]):
            records = [r for r in txt_records(lookups, f"_dmarc.{candidate}.")
                       if re.match(rb"\s*v\s*=\s*DMARC1\s*(;|\Z)", r, re.I)]
            if len(records) > 1:
                return None  # RFC 7489 6.6.3: more than one record, no DMARC at all
            if records:
                return _tags(records[0]), candidate
        return None

    def _dkim_alignment(self, verdict: Verdict, lookups: Lookups) -> str | None:
        """The From domain's DMARC adkim ("r" without a record); None when the lookup failed."""
        if not valid_domain(verdict.from_domain):
            return "r"
        try:
            found = self._dmarc_record(verdict.from_domain, lookups)
        except DnsTempError:
            verdict.temperror = True
            return None
        return "r" if found is None else found[0].get("adkim", "r").lower()

    def _dmarc(self, verdict: Verdict, lookups: Lookups) -> str | None:
        """DMARC into the verdict; returns the record's adkim ("r" without a record), or None
        when the record could not be looked up."""
        from_domain = verdict.from_domain
        try:
            found = self._dmarc_record(from_domain, lookups)
        except DnsTempError:
            verdict.temperror = True
            verdict.dmarc = {"result": "temperror", "policy": None, "domain": from_domain}
            return None
        if found is None:
            verdict.dmarc = {"result": "none", "policy": None, "domain": from_domain}
            self._dkim_alone(verdict)
            return "r"
        record, found_at = found
        policy = record.get("p", "none").lower()
        if found_at != from_domain and "sp" in record:
            policy = record["sp"].lower()  # a subdomain under its organisation's record
        adkim, aspf = record.get("adkim", "r").lower(), record.get("aspf", "r").lower()
        for entry in verdict.dkim:
            entry["aligned"] = aligned(entry["domain"], from_domain, adkim)
        dkim_pass = any(d["result"] == "pass" and d["aligned"] for d in verdict.dkim)
        spf_pass = bool(verdict.spf and verdict.spf["result"] == "pass"
                        and aligned(verdict.spf["domain"], from_domain, aspf))
        passed = dkim_pass or spf_pass
        # A lookup that failed for now might have passed: the answer is "try later", never "fail"
        # (a fail under p=reject may be refused; a DNS hiccup must not be).
        undecided = any(d["result"] == "temperror" and d["aligned"] for d in verdict.dkim) or bool(
            verdict.spf and verdict.spf["result"] == "temperror" and aligned(verdict.spf["domain"], from_domain, aspf))
        result = "pass" if passed else "temperror" if undecided else "fail"
        verdict.dmarc = {"result": result, "policy": policy, "domain": found_at}
        if dkim_pass:
            verdict.prove("dkim")
        elif spf_pass:
            verdict.prove("dmarc")
        return adkim

    @staticmethod
    def _dkim_alone(verdict: Verdict) -> None:
        """No DMARC record: an aligned DKIM signature still proves the From domain; SPF alone
        proves only the envelope sender, never the From header."""
        if any(d["result"] == "pass" and d["aligned"] for d in verdict.dkim):
            verdict.prove("dkim")

    def _authentication_results(self, header_fields: list[tuple[str, str]], verdict: Verdict,
                                relayed: bool, dkim_alignment: Callable[[], str | None], *, fetched: bool,
                                outside_mailbox: bool = False) -> None:
        """relayed: the mail came through the organisation's own MTAs (or was fetched from their
        mailboxes), so a header with their authserv-id at the top of the header is theirs. A DKIM
        pass it reports aligns with the From domain as that domain's DMARC record says (adkim),
        relaxed without one.

        Only the top of the header is theirs (RFC 8601 5 and 7.1; trace fields are prepended): each
        hop writes above what it received, so what lies below the border's own Received header
        (the first recording a client that is not a trusted relay: the outside server) was, but
        for the border's verdict, there before the mail reached the organisation, whatever
        authserv-id it names. Where the border writes its verdict is its own choice: above its
        Received header, or just below it, as OpenDKIM and OpenDMARC insert it (at index 1) and
        Gmail does. Over SMTP the walk starts at the top (our own Received records the relay the
        check already trusts): a verdict met above the border's Received says the border writes
        there, and the zone ends at that Received; else it ends at the next Received below it, the
        outside server's. Fetched (IMAP, a file), the fields above the topmost trusted header are
        the mailbox's delivery trace, written after it; the walk starts at that header and ends at
        the next Received of a client from outside. Between the border's Received and the next
        one a header the sender put first in the mail cannot be told from the border's own by
        where it is: the border deletes those with its authserv-id (RFC 8601 5), as OpenDKIM does."""
        stored = verdict.authentication_results
        inside = not fetched  # within the organisation's part of the header
        anchored = not fetched
        border_seen = trusted_above_border = False
        for name, value in header_fields:
            key = name.strip().lower()
            if key == "received":
                if inside:
                    outside = not all(map(self._trusted_relay, _received_from(value) or [""]))
                    if fetched:
                        inside = not outside
                    elif border_seen:
                        inside = False  # the outside server's own: all below is the sender's
                    elif outside:
                        border_seen = True  # the border's own: its verdict may follow just below it
                        inside = not trusted_above_border
                continue
            if key != "authentication-results":
                continue
            parsed = parse_authentication_results(value)
            entry: dict[str, Any] = {"authserv_id": parsed["authserv_id"],
                                     "results": [f"{r['method']}={r['result']}" + "".join(
                                         f" {k}={v}" for k, v in r["properties"].items()) for r in parsed["results"]]}
            trusted_id = bool(parsed["authserv_id"]) and parsed["authserv_id"] in self.policy.trusted_authserv_ids
            if trusted_id and not anchored:
                inside = anchored = True  # the topmost one: the delivery trace above it is the organisation's
            if not trusted_id:
                entry["reason"] = "authserv-id not trusted"
            elif outside_mailbox:  # nobody removed a sender's own on the way in, wherever it stands
                entry["reason"] = OUTSIDE_MAILBOX
            elif not relayed:
                entry["reason"] = NOT_A_TRUSTED_RELAY
            elif not inside:
                entry["reason"] = BELOW_BORDER
            else:
                trusted_above_border = trusted_above_border or not border_seen
                if len(stored["trusted"]) < MAX_AUTHENTICATION_RESULTS:
                    stored["trusted"].append(entry)
                if verdict.from_domain and _proves(parsed["results"], verdict.from_domain, dkim_alignment):
                    verdict.prove("authentication-results")
                    # What the proof rests on, as this same header says (vouched_places): only an SPF
                    # pass for the From address as envelope sender vouches for the envelope and every field.
                    mailbox = _spf_pass_mailbox(parsed["results"], verdict.from_domain)
                    if mailbox is not None:
                        entry["spf_mailfrom"] = mailbox
                continue
            # Bounded: a message can carry any number of such headers.
            if len(stored["ignored"]) < MAX_AUTHENTICATION_RESULTS:
                stored["ignored"].append(entry)


# -- DKIM over a large body -------------------------------------------------

_BLANK_LINE = re.compile(rb"(?:\A|\n)\r?\n")  # the first empty line, as dkimpy splits lines
_LINE_END = re.compile(rb"\r?\n")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP = re.compile(rb"[\t ]+")
_BODY_BLOCK = 1 << 20


class _NotAcceptable(dkim.ValidationError):
    """A signature dkimpy would verify but that proves nothing here, and why (`reason`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _StreamedBodyDKIM(dkim.DKIM):
    """dkimpy, but the body is canonicalised and hashed a block at a time from the raw message.

    dkimpy splits the whole message into lines, joins the body again and canonicalises it in
    several whole copies: four times a large message's size. Here it is given only the header
    (which is all it needs besides the body hash); the body hash is computed as dkimpy computes
    it and checked against bh=, and dkimpy checks the rest of the signature as ever.

    A signature with l= is checked over its first l bytes of the canonical body, as dkimpy checks
    it; how many bytes follow them is left in `unsigned_body_bytes` for the caller to judge."""

    def __init__(self, raw: bytes, **kwargs: Any) -> None:
        blank = _BLANK_LINE.search(raw)
        self._raw = raw
        self._body_start = blank.end() if blank else len(raw)
        self.unsigned_body_bytes = 0  # of the signature verified last: canonical body beyond its l=
        super().__init__(raw[:self._body_start] if blank else raw, **kwargs)

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                           sig_header: tuple[bytes, bytes], dnsfunc: Any) -> Any:
        if b"from" not in include_headers:
            # RFC 6376 5.4 and 6.1.1: one not covering From vouches for no author (PERMFAIL);
            # dkimpy refuses to sign so, but verifies such a signature.
            raise _NotAcceptable(FROM_NOT_SIGNED)
        if sig.get(b"a", b"").lower() == b"rsa-sha1":
            raise _NotAcceptable(RSA_SHA1)  # RFC 8301 3.1: verifiers must not consider it valid
        if b"bh" in sig:
            try:
                policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
            except InvalidCanonicalizationPolicyError:
                return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)  # says why
            hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]()
            limit = int(sig[b"l"]) if b"l" in sig and not self.tlsrpt else None
            unsigned = 0
            for block in _canonical_body(self._raw, self._body_start, policy.body_algorithm is Relaxed):
                if limit is not None:
                    unsigned += max(0, len(block) - limit)
                    block = block[:limit]
                    limit -= len(block)
                hasher.update(block)
            self.unsigned_body_bytes = unsigned
            try:
                expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except TypeError as exc:
                raise dkim.MessageFormatError(str(exc)) from exc
            if hasher.digest() != expected:
                raise dkim.ValidationError(f"body hash mismatch (expected {sig[b'bh']!r})")
            sig = {tag: value for tag, value in sig.items() if tag != b"bh"}  # checked: dkimpy skips it
        return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)


def _canonical_body(raw: bytes, start: int, relaxed: bool) -> Iterator[bytes]:
    """The body as dkimpy canonicalises it (lines joined with CRLF; for relaxed, white space at
    line ends removed and runs of it made one space; empty lines at the end dropped, one CRLF
    closing the body, and a relaxed body of nothing but that CRLF empty), in blocks of whole lines."""
    withheld = 0  # CRLFs that count only if more content follows
    emitted = False
    position, size = start, len(raw)
    while position < size:
        cut = size
        if position + _BODY_BLOCK < size:
            found = raw.rfind(b"\n", position, position + _BODY_BLOCK)
            if found < 0:
                found = raw.find(b"\n", position + _BODY_BLOCK)
            cut = size if found < 0 else found + 1
        block = _LINE_END.sub(b"\r\n", raw[position:cut])
        position = cut
        if relaxed:
            block = _WSP.sub(b" ", _TRAILING_WSP.sub(b"\r\n", block))
        end = len(block)
        while block.endswith(b"\r\n", 0, end):
            end -= 2
        if end:
            if withheld:
                yield b"\r\n" * withheld
            yield block if end == len(block) else block[:end]
            emitted = True
            withheld = 0
        withheld += (len(block) - end) // 2
    if emitted or not relaxed:
        yield b"\r\n"
