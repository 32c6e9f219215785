"""Addresses and the organisation: the one answer to "is this address one of ours?"."""
from __future__ import annotations

from collections.abc import Iterable


def is_internal(address: str, domains: Iterable[str]) -> bool:
    """Is the address in one of the organisation's domains (or a subdomain of one)?

    Says nothing about who really sent a mail: a From header can claim any address."""
    domain = address.strip().lower().rpartition("@")[2]
    return bool(domain) and any(domain == d or domain.endswith("." + d) for d in (d.lower() for d in domains))
