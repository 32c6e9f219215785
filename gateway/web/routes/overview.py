"""The state of the whole loop: the dashboard, the reports and the operations page."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
