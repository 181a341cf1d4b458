"""The ledger and claim SQL: who is claimed by whom until when, and one row per email;
the suppression list, the confirmation caps and the reports about sent emails.

Dialect differences live here and only here (PostgreSQL `FOR UPDATE SKIP LOCKED`,
`UPDATE ... RETURNING` on both). The store knows no course rules: which email is
due and what happens after it are the course's business (app/drip.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Table,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from app.db import UTCDateTime, ValueList, one_of, row_one_of
from app.models import (
    ENDED_STATUSES,
    Click,
    ConfirmationCount,
    Consent,
    Delivery,
    DeliveryStatus,
    EmailKind,
    LinkClicks,
    MailEvent,
    MailEventKind,
    SignupRequest,
    Subscriber,
    SubscriberStatus,
    Suppression,
    SuppressionReason,
    WebhookEvent,
)

#: Naive UTC datetimes (as columns store them) count seconds from this.
_NAIVE_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Claim:
    """Subscriptions claimed together, and a key naming exactly this due work."""

    ids: list[int]
    key: str


def claim_due(
    session: Session,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    statuses: tuple[SubscriberStatus, ...],
    ids: list[int] | None = None,
) -> Claim | None:
    """Claim up to `limit` subscriptions in `statuses` whose next email is due.

    A claim lasts `lease`: two ticks or two web requests never claim the same
    subscription at once, and a claim whose job was lost lapses and is taken again.
    The key depends only on which subscriptions and which due moments were
    claimed, so claiming the same work again (after a lapse) gives the same key.
    """
    claims = claim_due_batches(
        session, now=now, lease=lease, limit=limit, batch=limit, statuses=statuses, ids=ids
    )
    return claims[0] if claims else None


def claim_due_batches(
    session: Session,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    batch: int,
    statuses: tuple[SubscriberStatus, ...],
    ids: list[int] | None = None,
) -> list[Claim]:
    """Claim up to `limit` due subscriptions in one statement, as claims of `batch` each.

    Each claim's key is made as `claim_due` makes it, from its own subscriptions.
    """
    due = (
        select(Subscriber.id)
        .where(
            Subscriber.next_send_at <= now,
            Subscriber.status.in_(statuses),
            or_(Subscriber.claimed_until.is_(None), Subscriber.claimed_until <= now),
        )
        .order_by(Subscriber.next_send_at)
        .limit(limit)
    )
    if ids is not None:
        due = due.where(Subscriber.id.in_(ids))
    chosen: ColumnElement[bool] = Subscriber.id.in_(due.scalar_subquery())
    if session.get_bind().dialect.name == "postgresql":
        # Concurrent ticks skip each other's rows instead of waiting on them.
        due = due.with_for_update(skip_locked=True)
        # = ANY(ARRAY(...)): the chosen rows are found by primary key; with IN the
        # planner joins the whole table against them.
        chosen = Subscriber.id == any_(func.array(due.scalar_subquery()))
    # A Core statement on the session's connection, and the due moment as the naive UTC
    # the column stores: tens of thousands of rows skip the ORM's and UTCDateTime's
    # per-row work.
    table = Subscriber.__table__
    assert isinstance(table, Table)
    rows = sorted(
        session.connection().execute(
            update(table)
            .where(chosen)
            .values(claimed_until=now + lease)
            .returning(table.c.id, type_coerce(table.c.next_send_at, DateTime()))
        ),
        key=itemgetter(0),
    )
    claims = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        # (naive UTC - naive epoch) is the float the aware moment's .timestamp() gives.
        material = ",".join(
            f"{row_id}@{(due_at - _NAIVE_EPOCH).total_seconds():.6f}" for row_id, due_at in part
        )
        claims.append(
            Claim(
                [row_id for row_id, _ in part], hashlib.sha256(material.encode()).hexdigest()[:24]
            )
        )
    return claims


def start_claims(session: Session, ids: list[int], *, now: datetime, lease: timedelta) -> list[int]:
    """Renew the claims a starting job holds, for `lease` from now; return the ids still held.

    A claim that lapsed before the job started is not renewed: that subscription
    may have been claimed again and queued elsewhere, so this job leaves it alone.
    """
    if not ids:
        return []
    held = session.scalars(
        update(Subscriber)
        .where(one_of(Subscriber.id, ids), Subscriber.claimed_until > now)
        .values(claimed_until=now + lease)
        .returning(Subscriber.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(held)


def release_claims(session: Session, ids: list[int], *, retry_at: datetime | None = None) -> None:
    """Give claims back; with `retry_at`, their due emails also wait until then."""
    if not ids:
        return
    if retry_at is not None:
        session.execute(
            update(Subscriber)
            .where(one_of(Subscriber.id, ids), Subscriber.next_send_at < retry_at)
            .values(next_send_at=retry_at)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(Subscriber)
        .where(one_of(Subscriber.id, ids))
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )


class Handover:
    """Marks ledger rows `handed_at`, each in a transaction of its own, on one connection.

    The mark is the smallest write there is (one statement, autocommitted on
    PostgreSQL), since it is made once per email while the relay waits for the
    message's final ".". Its commit waits for the disk like any other: a mark lost
    in a database crash would leave a row that the relay has, unmarked, to be sent
    again (the fault soak's PostgreSQL crash showed one such duplicate with
    `synchronous_commit` off). Use it as a context manager.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    def __enter__(self) -> Handover:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def mark(self, delivery_ids: list[int], now: datetime) -> set[int]:
        """Commit, in one statement, that these emails' final "." are about to go out;
        return the ids of those still `sending`.

        A row no longer `sending` (erased, or taken over after a lapse) is left out
        of the answer: its email must not be handed over. Raises what the database
        raises if it cannot be written: none of them may go out then.
        """
        try:
            connection = self._connection or self._open()
            marked = set(
                connection.scalars(
                    update(Delivery)
                    .where(
                        one_of(Delivery.id, delivery_ids), Delivery.status == DeliveryStatus.SENDING
                    )
                    .values(handed_at=now)
                    .returning(Delivery.id)
                )
            )
            connection.commit()
        except SQLAlchemyError:
            self._discard()
            raise
        return marked

    def _open(self) -> Connection:
        connection = self._engine.connect()
        if connection.dialect.name == "postgresql":
            # Autocommit: each mark is one statement and one round trip, and commit()
            # sends nothing. (SQLite's commit costs no round trip: it keeps its own.)
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        self._connection = connection
        return connection

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()

    def close(self) -> None:
        """Give the connection back to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def lock_subscriber(session: Session, subscriber_id: int) -> Subscriber | None:
    """The subscription, locked for this transaction; None if it is gone."""
    return session.get(Subscriber, subscriber_id, with_for_update=True)


def lock_subscribers(
    session: Session, ids: list[int], *, with_consent: bool = True
) -> list[Subscriber]:
    """The subscriptions still there, locked for this transaction, with their consent records
    (loaded one by one on first use when `with_consent` is False: the sending path, which
    needs them only for a suppressed mailbox).

    Locked in id order, so two transactions locking overlapping sets cannot deadlock.
    """
    if not ids:
        return []
    query = select(Subscriber).where(one_of(Subscriber.id, ids)).order_by(Subscriber.id)
    if with_consent:
        query = query.options(selectinload(Subscriber.consent))
    return list(session.scalars(query.with_for_update(of=Subscriber)))


def deliveries(session: Session, ids: list[int]) -> list[Delivery]:
    """The ledger rows with these ids, in id order (one query)."""
    if not ids:
        return []
    return list(
        session.scalars(select(Delivery).where(one_of(Delivery.id, ids)).order_by(Delivery.id))
    )


@dataclass(frozen=True)
class LedgerEntry:
    """Which email a ledger row records, and its status."""

    id: int
    subscriber_id: int
    kind: EmailKind
    number: int
    status: DeliveryStatus


def ledger_entries(session: Session, ids: list[int]) -> list[LedgerEntry]:
    """The ledger rows with these ids, as plain values, in id order (one query)."""
    if not ids:
        return []
    rows = session.execute(
        select(Delivery.id, Delivery.subscriber_id, Delivery.kind, Delivery.number, Delivery.status)
        .where(one_of(Delivery.id, ids))
        .order_by(Delivery.id)
    )
    return [
        LedgerEntry(row_id, subscriber_id, EmailKind(kind), number, DeliveryStatus(status))
        for row_id, subscriber_id, kind, number, status in rows
    ]


def set_sent(session: Session, ids: list[int], now: datetime) -> None:
    """Mark these ledger rows sent at `now`, clearing any error (one statement)."""
    if ids:
        session.execute(
            update(Delivery)
            .where(one_of(Delivery.id, ids))
            .values(status=DeliveryStatus.SENT, sent_at=now, error=None, failure_class=None)
            .execution_options(synchronize_session=False)
        )


def ledger_rows(
    session: Session, emails: list[tuple[int, EmailKind, int]]
) -> dict[tuple[int, EmailKind, int], Delivery]:
    """The ledger rows of these (subscriber, kind, number) emails that exist (one query)."""
    if not emails:
        return {}
    rows = session.scalars(
        select(Delivery).where(
            row_one_of((Delivery.subscriber_id, Delivery.kind, Delivery.number), emails)
        )
    )
    return {(row.subscriber_id, EmailKind(row.kind), row.number): row for row in rows}


def add_ledger_rows(session: Session, rows: list[dict[str, object]]) -> dict[int, int]:
    """Insert new ledger rows in one statement; return {subscriber id: row id} of those inserted.

    A row another worker inserted first (same subscriber, kind and number) is left
    out of the answer instead of failing the statement.
    """
    if not rows:
        return {}
    returning = (Delivery.subscriber_id, Delivery.id)
    if session.get_bind().dialect.name != "postgresql":
        # Parameters as a list: SQLAlchemy sends them as multi-row VALUES batches
        # ("insertmanyvalues") from one cached statement.
        statement = sqlite_insert(Delivery).on_conflict_do_nothing().returning(*returning)
        inserted = session.execute(statement, rows)
        return {subscriber_id: row_id for subscriber_id, row_id in inserted}
    # PostgreSQL: `SELECT FROM unnest(...)` of one array per column, so the statement's
    # text is the same for any number of rows (VALUES batches are parsed anew each time).
    names = list(rows[0])
    table = Delivery.__table__
    source = (
        func.unnest(
            *(
                bindparam(None, [row[name] for row in rows], type_=ValueList(table.c[name].type))
                for name in names
            )
        )
        .table_valued(*names)
        .render_derived()
    )
    statement = (
        postgresql_insert(Delivery)
        .from_select(names, select(source))
        .on_conflict_do_nothing()
        .returning(*returning)
    )
    return {subscriber_id: row_id for subscriber_id, row_id in session.execute(statement)}


def suppressions_of(session: Session, mailbox_hashes: list[str]) -> dict[str, datetime]:
    """When each of these mailboxes was last suppressed, for those on the list (one query)."""
    if not mailbox_hashes:
        return {}
    rows = session.execute(
        select(Suppression.mailbox_hash, Suppression.suppressed_at).where(
            one_of(Suppression.mailbox_hash, mailbox_hashes)
        )
    )
    return {mailbox_hash: when for mailbox_hash, when in rows}


def ledger_row(
    session: Session, subscriber_id: int, kind: EmailKind, number: int
) -> Delivery | None:
    """The ledger row of one email of one subscription, if it exists."""
    return session.scalar(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == kind,
            Delivery.number == number,
        )
    )


def add_ledger_row(session: Session, delivery: Delivery) -> bool:
    """Insert a new ledger row; False if another worker inserted the same email first."""
    try:
        with session.begin_nested():
            session.add(delivery)
    except IntegrityError:
        return False
    return True


def last_sent_at(session: Session, subscriber_id: int, kind: EmailKind) -> datetime | None:
    """When the subscription's last email of `kind` was sent, if one was."""
    return session.scalar(
        select(func.max(Delivery.sent_at)).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.kind == kind,
            Delivery.status == DeliveryStatus.SENT,
        )
    )


def drop_ledger_rows(session: Session, subscriber_id: int, kind: EmailKind) -> None:
    """Remove the subscription's ledger rows of `kind` (a course taken again starts afresh)."""
    session.execute(
        delete(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.kind == kind)
        .execution_options(synchronize_session=False)
    )


def lock_pauses_ended(session: Session, *, now: datetime) -> list[Subscriber]:
    """Paused subscriptions whose `resume_at` has come, locked for this transaction.

    On PostgreSQL two schedulers skip each other's rows, so each pause ends once.
    """
    query = select(Subscriber).where(
        Subscriber.status == SubscriberStatus.PAUSED, Subscriber.resume_at <= now
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def due_moments(
    session: Session, *, statuses: tuple[SubscriberStatus, ...], until: datetime
) -> list[datetime]:
    """When each subscription in `statuses` is next due, for those due before `until`."""
    return [
        moment
        for moment in session.scalars(
            select(Subscriber.next_send_at).where(
                Subscriber.status.in_(statuses), Subscriber.next_send_at < until
            )
        )
        if moment is not None
    ]


def counts(session: Session, *, now: datetime) -> dict[str, int]:
    """Figures for operators: subscriptions by status, emails by ledger status, due now."""
    figures = {
        f"subscribers_{status}": count
        for status, count in session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        )
    }
    figures |= {
        f"emails_{status}": count
        for status, count in session.execute(
            select(Delivery.status, func.count()).group_by(Delivery.status)
        )
    }
    figures["emails_sent_last_24h"] = (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.status == DeliveryStatus.SENT, Delivery.sent_at >= now - timedelta(days=1)
            )
        )
        or 0
    )
    figures["due_now"] = (
        session.scalar(
            select(func.count()).select_from(Subscriber).where(Subscriber.next_send_at <= now)
        )
        or 0
    )
    return figures


def failed_deliveries(session: Session, *, limit: int = 20) -> list[Delivery]:
    """The most recent emails given up on, with their errors, for operators."""
    return list(
        session.scalars(
            select(Delivery)
            .where(Delivery.status == DeliveryStatus.FAILED)
            .order_by(Delivery.started_at.desc(), Delivery.id.desc())
            .limit(limit)
        )
    )


def delivery_by_message_id(session: Session, message_id: str | None) -> Delivery | None:
    """The ledger row of the email with this Message-ID (with or without angle brackets)."""
    if not message_id:
        return None
    bare = message_id.strip().strip("<>")
    return session.scalar(select(Delivery).where(Delivery.message_id == f"<{bare}>"))


def last_sent(session: Session, subscriber_id: int) -> Delivery | None:
    """The subscription's most recently sent email, if any."""
    return session.scalar(
        select(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.sent_at.is_not(None))
        .order_by(Delivery.sent_at.desc())
        .limit(1)
    )


def subscriber_by_email(session: Session, email: str) -> Subscriber | None:
    """The subscription of an address: a live one first, else the most recent."""
    return session.scalar(
        select(Subscriber)
        .where(Subscriber.email == email.strip().lower())
        .order_by(Subscriber.status.in_(ENDED_STATUSES), Subscriber.id.desc())
        .limit(1)
    )


def subscriptions_of(session: Session, email: str) -> list[Subscriber]:
    """Every subscription an address ever had, oldest first."""
    return list(
        session.scalars(select(Subscriber).where(Subscriber.email == email).order_by(Subscriber.id))
    )


def last_confirmed_before(session: Session, email: str, subscriber_id: int) -> Subscriber | None:
    """The address's most recent subscription before `subscriber_id` that was confirmed."""
    return session.scalar(
        select(Subscriber)
        .join(Consent)
        .where(
            Subscriber.email == email,
            Subscriber.id < subscriber_id,
            Consent.confirmed_at.is_not(None),
        )
        .order_by(Subscriber.id.desc())
        .limit(1)
    )


def signup_requests_of(session: Session, email: str) -> list[SignupRequest]:
    """Every sign-up request of an address, oldest first."""
    return list(
        session.scalars(
            select(SignupRequest).where(SignupRequest.email == email).order_by(SignupRequest.id)
        )
    )


def take_signup_request(session: Session, request_id: int, *, now: datetime) -> bool:
    """Mark a waiting sign-up request as being decided now; False if it was already.

    One conditional UPDATE: of a job and a tick taking the same request, one wins.
    """
    taken = session.execute(
        update(SignupRequest)
        .where(SignupRequest.id == request_id, SignupRequest.processed_at.is_(None))
        .values(processed_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def waiting_signup_requests(session: Session, *, before: datetime, limit: int) -> list[int]:
    """Ids of sign-up requests made before `before` and not decided yet, oldest first."""
    return list(
        session.scalars(
            select(SignupRequest.id)
            .where(SignupRequest.processed_at.is_(None), SignupRequest.created_at < before)
            .order_by(SignupRequest.id)
            .limit(limit)
        )
    )


def erase_address(session: Session, email: str) -> int:
    """Delete every subscription (with its consent and ledger) and sign-up request of an
    address; return how many subscriptions went.

    Its webhook events go too (their bodies name the address); clicks and the rest
    follow their subscription through the foreign keys' ON DELETE CASCADE.
    """
    session.execute(
        delete(WebhookEvent)
        .where(
            WebhookEvent.subscriber_id.in_(
                select(Subscriber.id).where(Subscriber.email == email).scalar_subquery()
            )
        )
        .execution_options(synchronize_session=False)
    )
    gone = session.execute(
        delete(Subscriber)
        .where(Subscriber.email == email)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(SignupRequest)
        .where(SignupRequest.email == email)
        .execution_options(synchronize_session=False)
    )
    return int(gone.rowcount)  # type: ignore[attr-defined]


def erase_unconfirmed(session: Session, *, requested_before: datetime) -> int:
    """Delete the pending subscriptions whose confirmation was asked for before then, with
    their webhook events (their bodies name the address); return how many went.

    One DELETE each (the database cascades to consent and ledger rows), so two
    schedulers doing this at once simply find nothing left the second time.
    """
    never_confirmed = (
        select(Subscriber.id)
        .where(
            Subscriber.status == SubscriberStatus.PENDING,
            Subscriber.confirmation_requested_at < requested_before,
        )
        .scalar_subquery()
    )
    session.execute(
        delete(WebhookEvent)
        .where(WebhookEvent.subscriber_id.in_(never_confirmed))
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        delete(Subscriber)
        .where(Subscriber.id.in_(never_confirmed))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def add_mail_event(session: Session, event: MailEvent) -> bool:
    """Record a report about a sent email; False if the same (source, event id) was recorded."""
    try:
        with session.begin_nested():
            session.add(event)
    except IntegrityError:
        return False
    return True


def count_mail_events(
    session: Session, mailbox_hash: str, kind: MailEventKind, *, since: datetime
) -> int:
    """Reports of one kind about one mailbox since `since`."""
    return (
        session.scalar(
            select(func.count())
            .select_from(MailEvent)
            .where(
                MailEvent.mailbox_hash == mailbox_hash,
                MailEvent.kind == kind,
                MailEvent.occurred_at > since,
            )
        )
        or 0
    )


def mail_events(
    session: Session, kinds: tuple[MailEventKind, ...], *, since: datetime
) -> list[tuple[str | None, str, datetime]]:
    """(template, kind, when) of every report of these kinds since `since`."""
    rows = session.execute(
        select(MailEvent.template, MailEvent.kind, MailEvent.occurred_at).where(
            MailEvent.kind.in_(kinds), MailEvent.occurred_at >= since
        )
    )
    return [(template, str(kind), occurred) for template, kind, occurred in rows]


def sent_since(session: Session, since: datetime) -> int:
    """Emails the relay accepted since `since`."""
    return (
        session.scalar(select(func.count()).select_from(Delivery).where(Delivery.sent_at >= since))
        or 0
    )


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


def take_confirmation(session: Session, mailbox_hash: str, *, limit: int, now: datetime) -> bool:
    """Count one confirmation email to the mailbox today; False (and no count) past `limit`."""
    day: date = now.date()
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


def count_click(session: Session, template: str, link: str, *, now: datetime) -> None:
    """Add one click to a link's count (created at its first click)."""
    values = {"template": template, "link": link, "clicks": 1, "last_at": now}
    upsert = (
        postgresql_insert(LinkClicks)
        if session.get_bind().dialect.name == "postgresql"
        else sqlite_insert(LinkClicks)
    )
    session.execute(
        upsert.values(**values).on_conflict_do_update(
            index_elements=["template", "link"],
            set_={"clicks": LinkClicks.clicks + 1, "last_at": now},
        )
    )


def add_click(
    session: Session, subscriber_id: int, template: str, link: str, *, now: datetime
) -> None:
    """Note that this subscription followed this link (CLICK_TRACKING=per-person only)."""
    session.add(Click(subscriber_id=subscriber_id, template=template, link=link, at=now))


def _select_among(
    session: Session, columns: list[Column[Any]], among: Column[str], values: list[str]
) -> list[tuple[Any, ...]]:
    """The `columns` of the rows whose `among` is one of `values`, in one statement.

    On PostgreSQL through the driver as `= ANY(array)`, the array sent in binary: the
    text form `one_of` binds costs the client more than the lookup costs the server (an
    import chunk sends thousands of strings).
    """
    if session.get_bind().dialect.name != "postgresql":
        # SQLite: `one_of`'s one parameter, not thousands (so the statement is compiled once).
        return [
            tuple(row) for row in session.execute(select(*columns).where(one_of(among, values)))
        ]
    driver = session.connection().connection.driver_connection
    assert driver is not None, "a pooled connection always has its driver connection"
    names = ", ".join(column.name for column in columns)
    with driver.cursor() as cursor:
        cursor.execute(
            f"SELECT {names} FROM {among.table.name} WHERE {among.name} = ANY(%b)", [values]
        )
        return list(cursor.fetchall())


def suppressed_among(session: Session, mailbox_hashes: list[str]) -> set[str]:
    """Which of these mailbox hashes are on the suppression list (one query)."""
    if not mailbox_hashes:
        return set()
    table = Suppression.__table__
    assert isinstance(table, Table)
    column = table.c.mailbox_hash
    return {found for (found,) in _select_among(session, [column], column, mailbox_hashes)}


def subscriptions_among(session: Session, emails: list[str]) -> dict[str, set[str]]:
    """The statuses of every subscription (live or ended) of these addresses (one query)."""
    found: dict[str, set[str]] = {}
    if not emails:
        return found
    table = Subscriber.__table__
    assert isinstance(table, Table)
    for email, status in _select_among(
        session, [table.c.email, table.c.status], table.c.email, emails
    ):
        found.setdefault(email, set()).add(str(status))
    return found


def insert_subscriptions(
    session: Session, subscribers: list[dict[str, object]], consents: list[dict[str, object]]
) -> Sequence[int]:
    """Insert subscriptions and their consent records (the same order) in bulk; the new
    subscriptions' ids, in that order.

    Straight to the driver: not ORM bulk inserts (they split the rows by which values
    are NULL), nor Core's executemany (it processes every row's parameters in Python).
    PostgreSQL takes the rows through COPY, in the session's transaction, with ids drawn
    from the sequence first (nothing to read back); SQLite, a library in this process,
    one executemany, and the new ids are read back by key.
    """
    if not subscribers:
        return []
    table, consent_table = Subscriber.__table__, Consent.__table__
    assert isinstance(table, Table) and isinstance(consent_table, Table)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        ids: Sequence[int] = session.scalars(
            text(
                # The subquery runs once: pg_get_serial_sequence per row costs 4x.
                "SELECT nextval((SELECT pg_get_serial_sequence(:table, 'id'))::regclass) "
                "FROM generate_series(1, :count)"
            ),
            {"table": table.name, "count": len(subscribers)},
        ).all()
        for row, subscriber_id in zip(subscribers, ids, strict=True):
            row["id"] = subscriber_id
        _write_rows(connection, table, subscribers)
    else:
        _write_rows(connection, table, subscribers)
        keys = [str(row["key"]) for row in subscribers]
        found = _select_among(session, [table.c.key, table.c.id], table.c.key, keys)
        by_key = {key: subscriber_id for key, subscriber_id in found}
        ids = [by_key[key] for key in keys]
    for consent, subscriber_id in zip(consents, ids, strict=True):
        consent["subscriber_id"] = subscriber_id
    _write_rows(connection, consent_table, consents)
    return ids


def _write_rows(connection: Connection, table: Table, rows: list[dict[str, object]]) -> None:
    """Write rows (dicts with the same keys) into a table through the driver, stored as
    the models store them.

    This skips SQLAlchemy's type processing, so its one rule that changes a value is
    applied here: datetimes go in as naive UTC (app/db.py's UTCDateTime), and on SQLite,
    which has no datetime type, as the text SQLAlchemy itself writes and reads back.
    """
    columns = list(rows[0])
    for name in columns:
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
    moments = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, UTCDateTime)]
    driver = connection.connection.driver_connection
    assert driver is not None, "a pooled connection always has its driver connection"
    names = ", ".join(columns)
    as_text = connection.dialect.name != "postgresql"
    pick = itemgetter(*columns)
    # An import's rows mostly share a few moments (its start): convert each one once.
    stored: dict[object, object] = {None: None}

    def values(row: dict[str, object]) -> list[object]:
        found = list(pick(row))
        for i in moments:
            moment = found[i]
            if moment in stored:
                found[i] = stored[moment]
            else:
                found[i] = stored[moment] = _naive_utc(moment, as_text=as_text)
        return found

    if not as_text:
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(values(row))
        return
    marks = ", ".join("?" for _ in columns)
    cursor = driver.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO {table.name} ({names}) VALUES ({marks})", [values(r) for r in rows]
        )
    finally:
        cursor.close()


def _naive_utc(value: object, *, as_text: bool) -> object:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("Onward stores aware UTC datetimes only")
    naive = value.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(" ", "microseconds") if as_text else naive
