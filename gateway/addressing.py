"""How an address is written for mail, and the one form in which addresses are compared.

An address may be in Unicode (RFC 6531/6532: `李明@example.org`, `office@例子.中国`). A domain in
Unicode has an ASCII form (A-labels, `xn--fsqu00a.xn--fiqs8s`) that any mail system carries; a
local part in Unicode has none, and mail to it needs a relay that offers SMTPUTF8. The same
person's address comes in more than one spelling: upper or lower case, composed or decomposed
characters (NFC, NFD), the domain in U-labels or in A-labels (as mail programs without SMTPUTF8
write it). `canonical` gives them all one form; an ASCII address is only lower-cased, as always.

Used by the configuration, the stages and the outbox alike, so it stands apart from them all.
"""
from __future__ import annotations

import unicodedata


def ascii_domain(domain: str) -> str | None:
    """The domain in ASCII, lower case, its internationalised labels as A-labels (IDNA 2008 with
    the UTS 46 mapping, which also takes a full-width 。 as a dot); None when it is no host name."""
    if domain.isascii():
        return domain.lower()
    import idna  # only for a domain in Unicode: every command reads the configuration

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def needs_smtputf8(address: str) -> bool:
    """Whether mail to (or from) the address needs a relay that offers SMTPUTF8 (RFC 6531): its
    local part is not ASCII. A domain in Unicode alone does not: it is written in A-labels."""
    return not address.rpartition("@")[0].isascii()


def canonical(address: str) -> str:
    """The address as the gateway keeps and compares it: stripped, lower case, in Unicode's NFC
    (RFC 6532 3.1), an internationalised domain in A-labels. The configuration keeps its people in
    this form; a From address, an SMTP AUTH sender and a reply token's address are compared in it."""
    address = address.strip()
    if address.isascii():
        return address.lower()
    normal = unicodedata.normalize("NFC", address.lower())
    local, at, domain = normal.rpartition("@")
    return f"{local}@{ascii_domain(domain) or domain}" if at else normal
