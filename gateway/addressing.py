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


def shown_domain(domain: str) -> str:
    """The domain as a reader is shown it: a label of Han characters (digits and hyphens besides)
    in Unicode, as its owner writes it (例子.中国); every other internationalised label as its
    A-label. A label in one script can still pass for another (Cyrillic аррӏе for apple), and one
    in several scripts for anything; Han has no character a Latin letter could be taken for, so a
    domain shown in Unicode does not pass for one in ASCII. ASCII without A-labels is left as it is."""
    if domain.isascii() and "xn--" not in domain.lower():
        return domain
    import idna
    import regex

    shown = []
    for label in regex.split("[.\u3002\uff0e\uff61]", domain):  # the dots UTS 46 takes as dots
        try:
            a_label = idna.encode(label, uts46=True).decode("ascii") if label else label
            u_label = idna.decode(a_label) if a_label.startswith("xn--") else a_label
        except (idna.IDNAError, UnicodeError):
            # No valid form: its Punycode, so that nothing but ASCII is shown for it either.
            shown.append(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii"))
            continue
        # 〇 (U+3007) is Han, and looks like a Latin o.
        han = regex.fullmatch(r"[\p{Han}0-9-]+", u_label) is not None and "\u3007" not in u_label
        shown.append(u_label if han else a_label)
    return ".".join(shown)


def shown_address(address: str) -> str:
    """The address with its domain as shown_domain shows it; the local part as it is."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{shown_domain(domain)}" if at else address


def address_forms(address: str) -> list[str]:
    """The address as kept, and the other ways it is written, its domain in Unicode or in A-labels:
    each finds the letter in a search."""
    forms = [address]
    local, at, domain = address.rpartition("@")
    if at and not (domain.isascii() and "xn--" not in domain.lower()):
        for form in (shown_domain(domain), ascii_domain(domain)):
            if form is not None and f"{local}@{form}" not in forms:
                forms.append(f"{local}@{form}")
    return forms
