"""Daily work at volume: search, triage, bulk steps, saved views."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
