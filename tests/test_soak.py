"""The fault soak's arithmetic: lost, duplicated, peak rate and recovery from received records."""

from __future__ import annotations

import json

import pytest

from bench.soak_report import (
    Accepted,
    Refused,
    parse_record,
    peak_rate,
    recovery,
    sent_by_the_killed,
    step_delays,
    tally,
)


def accepted(at: float, message_id: str, recipient: str = "a@example.com") -> Accepted:
    return Accepted(at, message_id, recipient)


def test_everything_once_is_nothing_lost_or_duplicated() -> None:
    records = [
        accepted(1.0, "<a1>", "a@example.com"),
        accepted(1.1, "<a2>", "a@example.com"),
        accepted(1.2, "<b1>", "b@example.com"),
        accepted(1.3, "<b2>", "b@example.com"),
    ]
    figures = tally(records, {"a@example.com": 2, "b@example.com": 2})
    assert (figures.expected, figures.sent, figures.lost, figures.duplicated, figures.extra) == (
        4, 4, 0, 0, 0,
    )  # fmt: skip


def test_a_message_id_received_twice_is_one_duplicate_and_still_one_sent() -> None:
    records = [
        accepted(1.0, "<a1>"),
        accepted(2.0, "<a1>"),
        accepted(3.0, "<a1>"),
        accepted(4.0, "<a2>"),
    ]
    figures = tally(records, {"a@example.com": 2})
    assert figures.sent == 2
    assert figures.duplicated == 2
    assert figures.lost == 0


def test_missing_emails_and_silent_recipients_are_lost() -> None:
    records = [accepted(1.0, "<a1>", "a@example.com")]
    figures = tally(records, {"a@example.com": 3, "b@example.com": 3})
    assert figures.lost == 5
    assert figures.sent == 1


def test_a_resend_under_a_new_message_id_is_extra_and_does_not_hide_a_loss() -> None:
    # a@ got step 1 twice under two ids and never step 2: one extra and one lost.
    records = [accepted(1.0, "<a1>"), accepted(2.0, "<a1-again>")]
    figures = tally(records, {"a@example.com": 3})
    assert figures.extra == 0
    assert figures.lost == 1
    figures = tally([*records, accepted(3.0, "<a2>"), accepted(4.0, "<a3>")], {"a@example.com": 3})
    assert figures.extra == 1
    assert figures.lost == 0


def test_peak_rate_is_the_busiest_sliding_second() -> None:
    # Five in [10.2, 11.1] straddle two whole seconds; no fixed one-second bucket holds five.
    times = [1.0, 10.2, 10.5, 10.8, 11.0, 11.1, 12.5, 20.0]
    assert peak_rate(times) == 5
    assert peak_rate(list(reversed(times))) == 5
    # A window is half-open: messages exactly one second apart are not in one window.
    assert peak_rate([0.0, 1.0, 2.0]) == 1
    assert peak_rate([]) == 0
    assert peak_rate([5.0] * 7) == 7


def test_recovery_is_the_wait_from_the_fault_end_to_the_next_message() -> None:
    times = [1.0, 2.0, 9.5, 12.0]
    assert recovery(times, 3.0) == pytest.approx(6.5)
    assert recovery(times, 9.5) == 0.0
    assert recovery(times, 12.5) is None


def test_step_delays_are_what_each_step_waited_beyond_the_interval() -> None:
    records = [
        accepted(0.0, "<a1>", "a@example.com"),
        accepted(31.0, "<a2>", "a@example.com"),
        accepted(31.5, "<a2>", "a@example.com"),  # a duplicate: its first arrival counts
        accepted(100.0, "<a3>", "a@example.com"),
        accepted(5.0, "<b1>", "b@example.com"),
        accepted(30.0, "<b2>", "b@example.com"),  # early is no delay
    ]
    assert step_delays(records, 30.0) == [0.0, pytest.approx(1.0), pytest.approx(39.0)]
    assert step_delays([accepted(1.0, "<a1>")], 30.0) == []


def test_duplicates_are_put_down_to_a_kill_only_from_that_workers_connection() -> None:
    records = [
        Accepted(10.0, "<a1>", "a@example.com", 40001),
        Accepted(50.0, "<a1>", "a@example.com", 40007),  # resent by another worker
        Accepted(20.0, "<b1>", "b@example.com", 40002),
        Accepted(60.0, "<b1>", "b@example.com", 40008),
        Accepted(30.0, "<c1>", "c@example.com", 40001),  # once: not a duplicate
    ]
    # Worker with port 40001 was killed 0.3 s after it sent <a1>; 40002 lived on.
    kills = [(10.3, frozenset({40001})), (21.0, frozenset({40005}))]
    assert sent_by_the_killed(records, kills, within=5.0) == ["<a1>"]
    # A kill long after the first acceptance is not the cause.
    assert sent_by_the_killed(records, [(16.0, frozenset({40001}))], within=5.0) == []


def test_the_servers_record_lines_read_back() -> None:
    line = json.dumps(
        {"event": "accepted", "at": 5.5, "message_id": "<x@y>", "recipient": "a@example.com"}
    )
    assert parse_record(line) == Accepted(5.5, "<x@y>", "a@example.com")
    with_port = json.dumps(
        {"event": "accepted", "at": 1, "message_id": "<z>", "recipient": "b@x.org", "port": 4242}
    )
    assert parse_record(with_port) == Accepted(1.0, "<z>", "b@x.org", 4242)
    refusal = json.dumps({"event": "refused", "at": 6.0, "answer": "421 4.7.0 Too many"})
    assert parse_record(refusal) == Refused(6.0, "421 4.7.0")
