"""`one_of` and `row_one_of`: a list bound as one parameter, on the suite's database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.db import one_of, row_one_of, session_scope
from app.models import Delivery, DeliveryStatus, EmailKind, Subscriber, Suppression
from app.services import Services
from tests.support import FakeClock, active_subscriber


def statement_text(services: Services, count: int) -> str:
    ids = list(range(count))
    statement = select(Subscriber.id).where(one_of(Subscriber.id, ids))
    return str(statement.compile(dialect=services.engine.dialect))


def test_the_statement_is_the_same_for_any_number_of_ids(services: Services) -> None:
    assert statement_text(services, 1) == statement_text(services, 500)
    assert "IN (" not in statement_text(services, 3).replace("IN (SELECT", "")


def test_one_of_finds_exactly_the_listed_rows(services: Services, clock: FakeClock) -> None:
    ids = [active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(5)]
    with session_scope(services.sessions) as session:
        found = session.scalars(
            select(Subscriber.id).where(one_of(Subscriber.id, [ids[1], ids[3], 10**9]))
        ).all()
        assert sorted(found) == [ids[1], ids[3]]
        assert session.scalars(select(Subscriber.id).where(one_of(Subscriber.id, []))).all() == []
        session.add(Suppression(mailbox_hash="a" * 64, reason="bounce", suppressed_at=clock.now))
        session.add(Suppression(mailbox_hash="b" * 64, reason="bounce", suppressed_at=clock.now))
        session.flush()
        hashes = session.scalars(
            select(Suppression.mailbox_hash).where(
                one_of(Suppression.mailbox_hash, ["b" * 64, "c" * 64])
            )
        ).all()
        assert hashes == ["b" * 64]


def test_row_one_of_matches_whole_rows_only(services: Services, clock: FakeClock) -> None:
    first, second = (active_subscriber(services, f"r{n}@example.com", clock.now) for n in range(2))
    with session_scope(services.sessions) as session:
        for subscriber_id, number in ((first, 1), (first, 2), (second, 1)):
            session.add(
                Delivery(
                    subscriber_id=subscriber_id,
                    kind=EmailKind.STEP,
                    number=number,
                    message_id=f"<{subscriber_id}.{number}@onward.test>",
                    status=DeliveryStatus.SENT,
                    started_at=clock.now,
                )
            )
        session.flush()
        columns = (Delivery.subscriber_id, Delivery.kind, Delivery.number)
        wanted = [(first, EmailKind.STEP, 2), (second, EmailKind.STEP, 2), (second, "step", 1)]
        rows = session.execute(select(*columns).where(row_one_of(columns, wanted))).all()
        assert sorted((s, str(k), n) for s, k, n in rows) == [
            (first, "step", 2),
            (second, "step", 1),
        ]
        # A row matches only as a whole: no mixing of one wanted row's subscriber with
        # another's number.
        crossed = [(first, EmailKind.CONFIRMATION, 1), (second, EmailKind.STEP, 9)]
        assert session.execute(select(*columns).where(row_one_of(columns, crossed))).all() == []
        assert session.execute(select(*columns).where(row_one_of(columns, []))).all() == []


def test_datetimes_go_through_the_column_type(services: Services, clock: FakeClock) -> None:
    subscriber_id = active_subscriber(services, "ada@example.com", clock.now)
    with session_scope(services.sessions) as session:
        later = clock.now + timedelta(hours=1)
        session.get_one(Subscriber, subscriber_id).next_send_at = later
        session.flush()
        found = session.scalars(
            select(Subscriber.id).where(one_of(Subscriber.next_send_at, [later]))
        ).all()
        assert found == [subscriber_id]
