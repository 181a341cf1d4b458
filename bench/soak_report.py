"""The fault soak's arithmetic: what the SMTP server received, against what was due.

Pure functions over the records the soak's SMTP server writes (one JSON object a
line), so the figures the soak prints can be checked without running it.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Accepted:
    """One message the SMTP server accepted: when (Unix time), its Message-ID, for whom.

    `port` is the sending client's port, which names the connection it came over.
    """

    at: float
    message_id: str
    recipient: str
    port: int = 0


@dataclass(frozen=True)
class Refused:
    """One refusal the SMTP server answered while a fault was on: when, and its codes."""

    at: float
    codes: str


@dataclass(frozen=True)
class Tally:
    """Emails expected against emails received, counted by Message-ID."""

    expected: int
    #: Distinct Message-IDs received.
    sent: int
    #: Emails due that never arrived.
    lost: int
    #: Receptions of a Message-ID beyond its first.
    duplicated: int
    #: Distinct Message-IDs beyond what a recipient was due (a resend under a new id).
    extra: int


def parse_record(line: str) -> Accepted | Refused:
    """One line of the server's record: an accepted message or a refusal."""
    data = json.loads(line)
    if data.get("event") == "accepted":
        return Accepted(
            float(data["at"]),
            str(data["message_id"]),
            str(data["recipient"]),
            int(data.get("port", 0)),
        )
    return Refused(float(data["at"]), " ".join(str(data.get("answer", "?")).split()[:2]))


def tally(records: Sequence[Accepted], due: dict[str, int]) -> Tally:
    """Count what arrived against `due` (recipient -> how many distinct emails it is owed)."""
    receptions = Counter(record.message_id for record in records)
    recipient_of: dict[str, str] = {}
    for record in records:
        recipient_of.setdefault(record.message_id, record.recipient)
    distinct = Counter(recipient_of.values())
    lost = sum(max(0, owed - distinct[recipient]) for recipient, owed in due.items())
    extra = sum(max(0, count - due.get(recipient, 0)) for recipient, count in distinct.items())
    return Tally(
        expected=sum(due.values()),
        sent=len(receptions),
        lost=lost,
        duplicated=sum(count - 1 for count in receptions.values()),
        extra=extra,
    )


def peak_rate(times: Sequence[float], window: float = 1.0) -> int:
    """The most messages accepted within any `window` seconds (a sliding window)."""
    ordered = sorted(times)
    peak = 0
    start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def recovery(times: Sequence[float], fault_end: float) -> float | None:
    """Seconds from `fault_end` to the next accepted message (`times` sorted); None if none."""
    index = bisect_left(times, fault_end)
    return None if index == len(times) else times[index] - fault_end


def step_delays(records: Sequence[Accepted], step_interval: float) -> list[float]:
    """How late each step came after the one before, beyond `step_interval`, sorted.

    A subscriber's steps are due one interval apart; what a fault or a killed
    worker holds up shows here as delay, even when nothing is lost.
    """
    first: dict[str, float] = {}
    recipient_of: dict[str, str] = {}
    for record in records:
        if record.message_id not in first or record.at < first[record.message_id]:
            first[record.message_id] = record.at
        recipient_of.setdefault(record.message_id, record.recipient)
    arrivals: dict[str, list[float]] = {}
    for message_id, at in first.items():
        arrivals.setdefault(recipient_of[message_id], []).append(at)
    delays: list[float] = []
    for times in arrivals.values():
        times.sort()
        delays.extend(max(0.0, b - a - step_interval) for a, b in pairwise(times))
    return sorted(delays)


def sent_by_the_killed(
    records: Sequence[Accepted], kills: Sequence[tuple[float, frozenset[int]]], within: float
) -> list[str]:
    """Duplicated Message-IDs first accepted from a worker killed within `within` s after.

    `kills` holds (when, the SMTP client ports the worker had open). Such an email
    reached the relay and its worker died before the ledger recorded it: the
    email is sent again, with the same Message-ID, once its lease lapses.
    """
    receptions = Counter(record.message_id for record in records)
    first: dict[str, Accepted] = {}
    for record in sorted(records, key=lambda r: r.at):
        first.setdefault(record.message_id, record)
    return sorted(
        message_id
        for message_id, count in receptions.items()
        if count > 1
        and any(
            first[message_id].port in ports and 0 <= at - first[message_id].at <= within
            for at, ports in kills
        )
    )
