"""Console operators: accounts with argon2 password hashes, sign-in sessions, the audit log.

Plain functions over a SQLAlchemy session and an explicit `now`; no Flask.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import drip
from app.mailbox import MailboxKeys
from app.models import AuditEntry, Operator, OperatorSession, Subscriber

#: Shortest password `flask admin create` accepts.
MIN_PASSWORD_LENGTH = 12

_hasher = PasswordHasher()


@cache
def _unknown_operator_hash() -> str:
    """Verified against when the address is unknown, so an unknown address costs the
    same argon2 work as a wrong password and the timing tells nothing.

    Made on first use, not at import: every process imports this module, few sign anyone in.
    """
    return _hasher.hash(secrets.token_urlsafe(24))


class Actor(Protocol):
    """Whoever takes an action: an operator, or an API token acting for one."""

    @property
    def email(self) -> str:
        """The name the audit log keeps."""
        ...


class OperatorError(ValueError):
    """An operator account cannot be created; the message says why."""


def operator_address(raw: str) -> str | None:
    """An operator's sign-in address in canonical form, or None if it cannot be one.

    Operators sign in with an address as an identity, never mailed: internal names
    such as admin@localhost are fine.
    """
    address = raw.strip().lower()
    local, at, domain = address.partition("@")
    if not (local and at and domain) or len(address) > 320 or any(c.isspace() for c in address):
        return None
    return address


def create_operator(session: Session, email: str, password: str, *, now: datetime) -> Operator:
    """Add an operator with an argon2 hash of `password`; OperatorError if it cannot be."""
    address = operator_address(email)
    if address is None:
        raise OperatorError(f"{email!r} is not an email address")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    operator = Operator(email=address, password_hash=_hasher.hash(password), created_at=now)
    try:
        with session.begin_nested():
            session.add(operator)
    except IntegrityError:
        raise OperatorError(f"an operator {address} already exists") from None
    return operator


def operator_exists(session: Session, address: str) -> bool:
    """Whether an operator signs in with this (canonical) address."""
    return session.scalar(select(Operator.id).where(Operator.email == address)) is not None


def authenticate(session: Session, email: str, password: str, *, now: datetime) -> Operator | None:
    """The operator with this address and password, or None; the same work either way."""
    address = operator_address(email)
    operator = (
        session.scalar(select(Operator).where(Operator.email == address)) if address else None
    )
    try:
        _hasher.verify(operator.password_hash if operator else _unknown_operator_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if operator is None:
        return None
    if _hasher.check_needs_rehash(operator.password_hash):
        operator.password_hash = _hasher.hash(password)
    operator.last_login_at = now
    return operator


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, operator: Operator, *, now: datetime) -> str:
    """Start a console session for `operator`; return the token for the cookie."""
    token = secrets.token_urlsafe(32)
    session.add(
        OperatorSession(
            token_hash=_digest(token), operator_id=operator.id, created_at=now, last_seen_at=now
        )
    )
    return token


def session_operator(
    session: Session, token: str, *, idle: timedelta, now: datetime
) -> Operator | None:
    """The operator signed in with `token`, if the session exists and was used within `idle`.

    Using the session keeps it alive; an idle one is deleted.
    """
    found = session.scalar(
        select(OperatorSession).where(OperatorSession.token_hash == _digest(token))
    )
    if found is None:
        return None
    if now - found.last_seen_at > idle:
        session.delete(found)
        return None
    found.last_seen_at = now
    return found.operator


def close_session(session: Session, token: str) -> None:
    """End the console session with `token` (sign out)."""
    session.execute(delete(OperatorSession).where(OperatorSession.token_hash == _digest(token)))


def record(
    session: Session,
    operator: Actor,
    action: str,
    *,
    subscriber_id: int | None,
    detail: str = "",
    now: datetime,
) -> AuditEntry:
    """Add an audit entry: which operator did what to which subscription, and when."""
    entry = AuditEntry(
        at=now,
        operator_email=operator.email,
        action=action,
        subscriber_id=subscriber_id,
        detail=detail,
    )
    session.add(entry)
    return entry


#: What an operator may do to a subscription.
ACTIONS = ("pause", "resume", "unsubscribe", "send-now", "erase")


def act(
    session: Session,
    operator: Actor,
    subscriber: Subscriber,
    action: str,
    *,
    policy: drip.Policy,
    keys: MailboxKeys,
    now: datetime,
) -> bool:
    """Apply one of ACTIONS through the course rules and audit it; say whether it changed.

    Erasing deletes the subscription with its consent record and ledger; its audit
    entry keeps only the id, since the address is what was asked to be erased.
    An action that does not apply changes nothing and is audited as "no change".
    """
    subscriber_id = subscriber.id
    if action == "erase":
        drip.forget(session, subscriber, keys=keys, now=now)
        record(session, operator, action, subscriber_id=subscriber_id, now=now)
        return True
    moves: dict[str, Callable[[], bool]] = {
        "pause": lambda: drip.pause(session, subscriber, now=now),
        "resume": lambda: drip.resume(session, subscriber, policy=policy, now=now),
        "unsubscribe": lambda: drip.unsubscribe(session, subscriber, keys=keys, now=now),
        "send-now": lambda: drip.send_now(
            session, subscriber, total_steps=policy.total_steps, now=now
        ),
    }
    if action not in moves:
        raise ValueError(f"unknown action {action!r}")
    changed = moves[action]()
    detail = f"status {subscriber.status}, next step {subscriber.next_step}"
    record(
        session,
        operator,
        action,
        subscriber_id=subscriber_id,
        detail=detail if changed else "no change: " + detail,
        now=now,
    )
    return changed
