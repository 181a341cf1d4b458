"""The operator's console at /admin: sign-in, overview, funnel, subscribers, problems, emails."""

from __future__ import annotations

from app.web.admin import integrations, views
from app.web.admin.auth import bp

__all__ = ["bp", "integrations", "views"]
