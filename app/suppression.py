"""The suppression list and the per-mailbox confirmation cap, kept as keyed hashes.

Plain functions over a session and an explicit `now`, like the course rules that use them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import ConfirmationCount, Suppression, SuppressionReason


def suppress(
    session: Session, mailbox_hash: str, reason: SuppressionReason, *, now: datetime
) -> None:
    """Put a mailbox on the list (or renew its entry): nothing goes to it until it re-confirms."""
    entry = session.scalar(select(Suppression).where(Suppression.mailbox_hash == mailbox_hash))
    if entry is None:
        try:
            with session.begin_nested():
                session.add(
                    Suppression(mailbox_hash=mailbox_hash, reason=reason, suppressed_at=now)
                )
            return
        except IntegrityError:
            # Suppressed at the same moment by another report: renew that entry.
            entry = session.scalars(
                select(Suppression).where(Suppression.mailbox_hash == mailbox_hash)
            ).one()
    entry.reason = reason
    entry.suppressed_at = max(entry.suppressed_at, now)


def suppressed_at(session: Session, mailbox_hash: str) -> datetime | None:
    """When the mailbox was last suppressed, or None if it is not on the list."""
    return session.scalar(
        select(Suppression.suppressed_at).where(Suppression.mailbox_hash == mailbox_hash)
    )


def blocks(session: Session, mailbox_hash: str, confirmed_at: datetime | None) -> bool:
    """Whether the list forbids course emails to a mailbox confirmed at `confirmed_at`.

    Confirming again after the suppression is the one way off the list.
    """
    since = suppressed_at(session, mailbox_hash)
    return since is not None and (confirmed_at is None or confirmed_at <= since)


def take_confirmation(session: Session, mailbox_hash: str, *, limit: int, now: datetime) -> bool:
    """Count one confirmation email to the mailbox today; False (and no count) past `limit`."""
    day = now.date()
    for _attempt in (1, 2):
        # One conditional UPDATE, so concurrent workers cannot both take the last one.
        taken = session.execute(
            update(ConfirmationCount)
            .where(
                ConfirmationCount.mailbox_hash == mailbox_hash,
                ConfirmationCount.day == day,
                ConfirmationCount.sent < limit,
            )
            .values(sent=ConfirmationCount.sent + 1)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            return True
        if session.get(ConfirmationCount, (mailbox_hash, day)) is not None:
            return False
        try:
            with session.begin_nested():
                session.add(ConfirmationCount(mailbox_hash=mailbox_hash, day=day, sent=1))
            return True
        except IntegrityError:
            continue  # another worker made today's row first: count against it
    return False
