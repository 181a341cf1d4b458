"""API tokens for the admin API: made, checked, used and revoked.

Plain functions over a SQLAlchemy session and an explicit `now`; no Flask.

A token is 32 bytes from `secrets` (256 bits), shown once. Only its SHA-256 is
stored: with that much entropy no one can find a token from its hash by guessing, so
a slow password hash (argon2) would only add work to every API call.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiScope, ApiToken

#: Every token starts with this, so a leaked one is easy to recognise (and to scan for).
PREFIX = "onw_"
#: Longest label accepted.
MAX_LABEL = 100


class TokenError(ValueError):
    """A token cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class TokenActor:
    """An API token acting for the operator who made it, as the audit log names it."""

    label: str
    operator_email: str

    @property
    def email(self) -> str:
        """`operator (token "label")`, kept within the audit log's column."""
        return f'{self.operator_email} (API token "{self.label}")'[:320]


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, label: str, scope: str, *, operator_email: str, now: datetime
) -> tuple[ApiToken, str]:
    """Make a token; return its row and the token itself (shown once, never stored)."""
    label = " ".join(label.split())
    if not label or len(label) > MAX_LABEL:
        raise TokenError(f"the label must be 1 to {MAX_LABEL} characters")
    if scope not in set(ApiScope):
        raise TokenError("the scope must be read or write")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        label=label,
        token_hash=digest(token),
        scope=ApiScope(scope),
        operator_email=operator_email,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row, token


def authenticate(session: Session, token: str, *, now: datetime) -> ApiToken | None:
    """The live token row for `token`, marked as used now; None if unknown or revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = now
    return row


def revoke(session: Session, token_id: int, *, now: datetime) -> bool:
    """Revoke a token for good; say whether it was live."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    return True


def all_tokens(session: Session) -> list[ApiToken]:
    """Every token, newest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))


def allows(row: ApiToken, needed: ApiScope) -> bool:
    """Whether the token's scope covers `needed` (write covers read)."""
    return row.scope == ApiScope.WRITE or needed == ApiScope.READ
