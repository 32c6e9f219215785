"""How an address is written for mail: an address may be in Unicode (RFC 6531/6532:
`李明@example.org`, `office@例子.中国`). A domain in Unicode has an ASCII form (A-labels,
`xn--fsqu00a.xn--fiqs8s`) that any mail system carries; a local part in Unicode has none, and
mail to it needs a relay that offers SMTPUTF8.

Used by the configuration, the stages and the outbox alike, so it stands apart from them all.
"""
from __future__ import annotations


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
