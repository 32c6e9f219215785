"""What the rules may know of the organisation, as plain values.

Whoever loads the configuration builds it (`Organisation.of`); classification
never reads the configuration itself, so it depends on nothing above it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.stages.addresses import is_internal
from gateway.stages.classify.facts import Facts


class DepartmentLike(Protocol):
    """A department as the configuration describes it; only these attributes are read."""

    id: str
    addresses: list[str]
    owners: list[str]
    head: str
    members: list[str]


@dataclass(frozen=True)
class Organisation:
    departments: tuple[str, ...]  # ids
    categories: tuple[str, ...]
    triage_department: str
    domains: frozenset[str] = frozenset()
    department_addresses: Mapping[str, str] = field(default_factory=dict)  # intake address -> department id
    department_people: Mapping[str, str] = field(default_factory=dict)  # owner, head or member -> department id

    @classmethod
    def of(cls, departments: Iterable[DepartmentLike], *, categories: Iterable[str], triage_department: str,
           domains: Iterable[str] = ()) -> Organisation:
        ids: list[str] = []
        addresses: dict[str, str] = {}
        people: dict[str, str] = {}
        for dept in departments:
            ids.append(dept.id)
            for address in dept.addresses:
                addresses.setdefault(address, dept.id)
            for person in [*dept.owners, dept.head, *dept.members]:
                people.setdefault(person, dept.id)
        return cls(tuple(ids), tuple(categories), triage_department, frozenset(domains), addresses, people)

    def is_internal(self, address: str) -> bool:
        return is_internal(address, self.domains)

    def sender_is_internal(self, facts: Facts) -> bool:
        """A sender of the organisation, unless it only claims to be (see Facts.unverified_internal)."""
        return bool(facts.sender_address) and not facts.unverified_internal and self.is_internal(facts.sender_address)

    def sender_department(self, facts: Facts) -> str | None:
        if facts.unverified_internal:
            return None  # a forged From earns no department's privileges
        address = facts.sender_address
        return self.department_addresses.get(address) or self.department_people.get(address)

    def recipient_departments(self, facts: Facts) -> list[str]:
        found = [self.department_addresses[a] for a in facts.recipients if a in self.department_addresses]
        return list(dict.fromkeys(found))
