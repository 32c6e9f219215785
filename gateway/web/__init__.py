"""The web register: server-rendered pages over the register's services (gateway.services)."""
from __future__ import annotations

from gateway.web.app import create_app

__all__ = ["create_app"]
