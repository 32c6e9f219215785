"""A stored trust verdict (gateway.stages.check) in words for people; apart from the check itself
so that showing a letter does not import the DNS, SPF and DKIM libraries."""
from __future__ import annotations

from typing import Any

__all__ = ["describe"]


def describe(trust: dict[str, Any] | None) -> str:
    """One line for people: the method and its evidence, or why nothing is proven."""
    if not trust:
        return "not checked"
    if trust.get("authenticated"):
        method = trust.get("method")
        evidence = ""
        if method == "smtp-auth":
            evidence = f"SMTP AUTH user {trust.get('smtp_auth_user')}"
        elif method == "dkim":
            passed = [d for d in trust.get("dkim", []) if d.get("result") == "pass" and d.get("aligned")]
            evidence = ", ".join(f"d={d['domain']} s={d['selector']}" for d in passed)
        elif method == "dmarc":
            dmarc, spf_result = trust.get("dmarc") or {}, trust.get("spf") or {}
            evidence = f"DMARC pass for {dmarc.get('domain')}, SPF {spf_result.get('result')} " \
                       f"for {spf_result.get('domain')}"
        elif method == "authentication-results":
            evidence = "trusted Authentication-Results from " + ", ".join(
                r["authserv_id"] for r in trust.get("authentication_results", {}).get("trusted", []))
        return f"yes, {trust.get('address')} by {method} ({evidence})"
    found = []
    for d in trust.get("dkim", []):
        why = f" ({d['reason']})" if d.get("reason") else ""
        found.append(f"DKIM {d.get('result')} d={d.get('domain')} s={d.get('selector')}"
                     f"{'' if d.get('aligned') else ' (not aligned)'}{why}")
    if trust.get("spf"):
        why = f" ({trust['spf']['reason']})" if trust["spf"].get("reason") else ""
        found.append(f"SPF {trust['spf'].get('result')} for {trust['spf'].get('domain')}{why}")
    if trust.get("dmarc"):
        dmarc = trust["dmarc"]
        found.append(f"DMARC {dmarc.get('result')} (policy {dmarc.get('policy') or 'none'}) for {dmarc.get('domain')}")
    ignored = trust.get("authentication_results", {}).get("ignored", [])
    if ignored:
        found.append(f"{len(ignored)} untrusted Authentication-Results ignored")
    if trust.get("temperror"):
        found.append("DNS temperror")
    return "no" + (f" ({'; '.join(found)})" if found else "")
