"""Getting subscribers in and out: CSV import (checked, idempotent, in chunks) and export.

The import reads a CSV whose header names its columns (COLUMNS, in any order; only
`email` is required) and streams it: a csv reader, then chunks of CHUNK_SIZE rows,
each looked up and inserted in one transaction with bulk statements. Rows that cannot
be used are reported with their line numbers and skipped; the rest go in.

Without a consent note everyone imported is pending and gets the confirmation email
(the scheduler's tick sends due confirmations). With one (`--consent "..."`) the
file's status and step apply and the note goes into every consent record created.
An address already subscribed is left as it is, so a second import changes nothing;
a suppressed address is never imported.
"""

from __future__ import annotations

import csv
import functools
import gc
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, TextIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import drip, outbound, store, timing
from app.db import session_scope
from app.models import ENDED_STATUSES, Consent, Subscriber, SubscriberStatus, new_keys

if TYPE_CHECKING:
    from app.services import Services

S = SubscriberStatus
#: The ended statuses as stored (what store.subscriptions_among gives).
_ENDED = frozenset(map(str, ENDED_STATUSES))

#: The columns an import reads and an export writes, in the export's order.
COLUMNS = (
    "email",
    "first_name",
    "time_zone",
    "status",
    "step",
    "created_at",
    "source",
    "wording",
    "ip",
    "user_agent",
    "requested_at",
    "confirmed_at",
    "confirmed_ip",
    "confirmed_user_agent",
)
#: Rows looked up and inserted together, in one transaction. Each transaction has a
#: fixed cost (its statements, their planning, the commit's flush to disk): at 5,000
#: rows an import ran 6-16% faster than at 1,000, while a chunk's rows stay a few MB
#: and SQLite's write lock is held a fraction of a second.
CHUNK_SIZE = 5000
#: Problems kept in a report for showing (all are counted, and all go to `on_problem`).
KEPT_PROBLEMS = 500
#: The consent record's source for imported subscriptions, unless the file gives one.
IMPORT_SOURCE = "import"
#: The wording recorded for a pending import whose file gives none.
PENDING_WORDING = "Imported from a list; asked to confirm by email."


class ImportFileError(ValueError):
    """The file cannot be imported at all (no header, unknown columns); nothing was imported."""


class ProblemKind(StrEnum):
    """Why a row was not imported."""

    INVALID_ADDRESS = "invalid address"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"
    UNKNOWN_TIME_ZONE = "unknown time zone"
    INVALID_VALUE = "invalid value"
    ENDED = "ended without --consent"


@dataclass(frozen=True)
class Problem:
    """One row that was not imported: its line in the file, why, and the detail."""

    line: int
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.detail}"


@dataclass
class ImportReport:
    """What an import did, or (dry run) would do."""

    dry_run: bool
    rows: int = 0
    #: Subscriptions created (or that a dry run would create), by status.
    imported: Counter[str] = field(default_factory=Counter)
    #: Rows whose address already had a subscription: left as it was.
    unchanged: int = 0
    problem_counts: Counter[str] = field(default_factory=Counter)
    #: The first KEPT_PROBLEMS problems, in file order.
    problems: list[Problem] = field(default_factory=list)

    @property
    def total_imported(self) -> int:
        return sum(self.imported.values())

    def add_problem(self, problem: Problem) -> None:
        self.problem_counts[problem.kind] += 1
        if len(self.problems) < KEPT_PROBLEMS:
            self.problems.append(problem)

    def summary(self) -> list[str]:
        """The report's figures as lines for a person."""
        verb = "would be imported" if self.dry_run else "imported"
        by_status = ", ".join(f"{n} {status}" for status, n in sorted(self.imported.items()))
        lines = [
            f"{self.rows} rows read",
            f"{self.total_imported} {verb}" + (f" ({by_status})" if by_status else ""),
            f"{self.unchanged} already subscribed, left as they were",
        ]
        skipped = sum(self.problem_counts.values())
        lines.append(f"{skipped} not imported" + (":" if skipped else ""))
        lines += [f"  {n} {kind}" for kind, n in sorted(self.problem_counts.items())]
        return lines

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (the console's job keeps it in Redis)."""
        return {
            "dry_run": self.dry_run,
            "rows": self.rows,
            "imported": dict(self.imported),
            "unchanged": self.unchanged,
            "problem_counts": dict(self.problem_counts),
            "problems": [[p.line, str(p.kind), p.detail] for p in self.problems],
        }


class _Row(NamedTuple):
    """One usable row: the subscription and consent fields it gives."""

    line: int
    email: str
    mailbox_hash: str
    status: SubscriberStatus
    subscriber: dict[str, object]
    consent: dict[str, object]


def read_header(reader: Iterator[list[str]]) -> dict[str, int]:
    """Column name -> position, from the header row; ImportFileError if it cannot be used."""
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError(
            "The file is empty: it needs a header row naming its columns."
        ) from None
    names = [name.strip().lower().lstrip("\ufeff") for name in header]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise ImportFileError(
            f"Unknown column {unknown[0]!r} in the header row. "
            f"The columns are: {', '.join(COLUMNS)} (only email is required)."
        )
    if len(set(names)) != len(names):
        raise ImportFileError("A column is named twice in the header row.")
    if "email" not in names:
        raise ImportFileError("The header row has no email column.")
    return {name: index for index, name in enumerate(names)}


def _when(text: str, column: str) -> datetime | None:
    """An ISO 8601 time (naive means UTC), None when empty; ValueError naming the column."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{column} {text[:40]!r} is not a date and time like 2026-03-02T09:00"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ip(text: str, column: str) -> str | None:
    if not text:
        return None
    try:
        return _canonical_ip(text)
    except ValueError:
        raise ValueError(f"{column} {text[:45]!r} is not an IP address") from None


@functools.lru_cache(maxsize=4096)
def _canonical_ip(text: str) -> str:
    """An IP address in its canonical form; a list's rows often share a few (a form's server)."""
    return str(ipaddress.ip_address(text))


class _Reader:
    """Turns CSV records into usable rows or problems (no database)."""

    def __init__(self, services: Services, columns: dict[str, int], consent: str | None) -> None:
        self.services = services
        self.columns = columns
        self.consent = consent
        self.now = services.clock()
        self.width = len(columns)
        #: The hashes (64 bits, as short as a digest would be: memory stays small) of the
        #: live addresses seen so far: duplicates within the file.
        self.seen: set[int] = set()
        self.keys = new_keys()

    def row(self, line: int, record: list[str]) -> _Row | Problem:
        if len(record) != self.width:
            return Problem(
                line,
                ProblemKind.INVALID_VALUE,
                f"{len(record)} fields where the header names {self.width}",
            )
        value = {name: record[index].strip() for name, index in self.columns.items()}
        settings = self.services.settings
        try:
            email = drip.normalize_email(
                value["email"],
                check_deliverability=settings.check_deliverability,
                smtputf8=settings.smtp_utf8,
            )
        except drip.InvalidEmail as error:
            return Problem(line, ProblemKind.INVALID_ADDRESS, f"{value['email'][:80]!r}: {error}")
        time_zone = value.get("time_zone") or None
        if time_zone is not None and not timing.is_time_zone(time_zone):
            return Problem(line, ProblemKind.UNKNOWN_TIME_ZONE, f"{email}: {time_zone[:64]!r}")
        try:
            return self._usable(line, email, time_zone, value)
        except ValueError as error:
            return Problem(line, ProblemKind.INVALID_VALUE, f"{email}: {error}")

    def _usable(
        self, line: int, email: str, time_zone: str | None, value: dict[str, str]
    ) -> _Row | Problem:
        status = self._status(value.get("status", ""))
        if status in ENDED_STATUSES and self.consent is None:
            return Problem(line, ProblemKind.ENDED, f"{email} is {status} in the file")
        step = self._step(value.get("step", ""))
        created_at = _when(value.get("created_at", ""), "created_at") or self.now
        requested_at = _when(value.get("requested_at", ""), "requested_at") or created_at
        confirmed_at = _when(value.get("confirmed_at", ""), "confirmed_at")
        ip = _ip(value.get("ip", ""), "ip")
        confirmed_ip = _ip(value.get("confirmed_ip", ""), "confirmed_ip")
        if status not in ENDED_STATUSES:
            digest = hash(email)
            if digest in self.seen:
                return Problem(line, ProblemKind.DUPLICATE, f"{email} is on an earlier line")
            self.seen.add(digest)
        if status == S.PENDING:
            confirmed_at = confirmed_ip = None
        elif confirmed_at is None and status not in ENDED_STATUSES:
            confirmed_at = self.now
        wording = value.get("wording", "")
        if self.consent is not None:
            wording = f"{wording}\n{self.consent}" if wording else self.consent
        key = next(self.keys)
        policy = self.services.policy
        subscriber = {
            "key": key,
            "email": email,
            "first_name": drip.clean_name(value.get("first_name", "")),
            "time_zone": time_zone,
            "created_at": created_at,
            "claimed_until": None,
            "send_failures": 0,
            "last_error": None,
            "resume_at": None,
            "course_round": 1,
            **drip.imported_state(
                status, step, key=key, time_zone=time_zone, policy=policy, now=self.now
            ),
        }
        consent: dict[str, object] = {
            "source": (value.get("source") or IMPORT_SOURCE)[:16],
            "wording": wording or PENDING_WORDING,
            "ip": ip,
            "user_agent": value.get("user_agent", "")[:512] or None,
            "requested_at": requested_at,
            "confirmed_at": confirmed_at,
            "confirmed_ip": confirmed_ip,
            "confirmed_user_agent": value.get("confirmed_user_agent", "")[:512] or None,
        }
        mailbox_hash = self.services.mailbox_keys.hash(email)
        return _Row(line, email, mailbox_hash, status, subscriber, consent)

    def _status(self, text: str) -> SubscriberStatus:
        if self.consent is None:
            # Without a consent note everyone is asked to confirm, whatever the file says;
            # only an ended status is kept, to be refused.
            return S(text.lower()) if text.lower() in ENDED_STATUSES else S.PENDING
        if not text:
            return S.ACTIVE
        try:
            return S(text.lower())
        except ValueError:
            raise ValueError(f"status {text[:20]!r} is not one of {', '.join(S)}") from None

    def _step(self, text: str) -> int:
        last = self.services.policy.total_steps + 1
        if not text:
            return 1
        if not text.isdigit() or not 1 <= int(text) <= last:
            raise ValueError(f"step {text[:10]!r} is not a number from 1 to {last}")
        return int(text)


def import_csv(
    services: Services,
    stream: TextIO,
    *,
    consent: str | None = None,
    dry_run: bool = False,
    on_problem: Callable[[Problem], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ImportReport:
    """Import the subscribers in a CSV stream; with `dry_run`, only check and count.

    `on_problem` hears of each row not imported as it is found; `on_rows` of how many
    rows each finished chunk held. ImportFileError if the header cannot be used.
    """
    consent = (consent or "").strip() or None
    reader = csv.reader(stream)
    rows = _Reader(services, read_header(reader), consent)
    report = ImportReport(dry_run=dry_run)

    def problem(found: Problem) -> None:
        report.add_problem(found)
        if on_problem is not None:
            on_problem(found)

    with _collector_spared():
        chunk: list[_Row] = []
        read = 0
        for record in reader:
            if not "".join(record).strip():
                continue  # a blank line (a spreadsheet's trailing ones)
            report.rows += 1
            read += 1
            found = rows.row(reader.line_num, record)
            if isinstance(found, Problem):
                problem(found)
            else:
                chunk.append(found)
            if read >= chunk_size:
                _apply(services, chunk, report, problem, dry_run=dry_run)
                if on_rows is not None:
                    on_rows(read)
                chunk, read = [], 0
        _apply(services, chunk, report, problem, dry_run=dry_run)
        if on_rows is not None and read:
            on_rows(read)
    return report


@contextmanager
def _collector_spared() -> Iterator[None]:
    """Leave the objects that exist before an import out of the garbage collector's
    full passes until it ends (gc.freeze).

    An import allocates enough per row that the collector makes a full pass every chunk
    or two, and each pass went through every object of the process (the app, SQLAlchemy,
    the validators): 11% of the import's own CPU. Its own rows are still collected.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _apply(
    services: Services,
    chunk: list[_Row],
    report: ImportReport,
    problem: Callable[[Problem], None],
    *,
    dry_run: bool,
) -> None:
    """Look one chunk up and (unless a dry run) insert what is new, in one transaction."""
    if not chunk:
        return
    for attempt in (1, 2):
        try:
            with session_scope(services.sessions) as session:
                new, unchanged, refused = _sort(session, chunk)
                if not dry_run:
                    ids = store.insert_subscriptions(
                        session, [r.subscriber for r in new], [r.consent for r in new]
                    )
                    for row, subscriber_id in zip(new, ids, strict=True):
                        # Bulk rows bypass the session's change tracking: say so ourselves.
                        outbound.note(
                            session,
                            "subscribed",
                            subscriber_id=subscriber_id,
                            email=row.email,
                            status=str(row.status),
                        )
        except IntegrityError:
            # Someone signed up with an address of this chunk meanwhile: look again.
            if attempt == 2:
                raise
            continue
        break
    report.unchanged += unchanged
    for row in refused:
        problem(
            Problem(row.line, ProblemKind.SUPPRESSED, f"{row.email} is on the suppression list")
        )
    for row in new:
        report.imported[str(row.status)] += 1


def _sort(session: Session, chunk: list[_Row]) -> tuple[list[_Row], int, list[_Row]]:
    """Split a chunk into rows to insert, how many are already there, and suppressed rows.

    A live row is already there when its address has a live subscription; an ended one
    (history, imported with --consent) when its address has any subscription in that status.
    """
    existing = store.subscriptions_among(session, sorted({r.email for r in chunk}))
    suppressed = store.suppressed_among(session, sorted({r.mailbox_hash for r in chunk}))
    new: list[_Row] = []
    refused: list[_Row] = []
    unchanged = 0
    for row in chunk:
        statuses = existing.get(row.email)
        ended = row.status in ENDED_STATUSES
        if statuses is None:
            there = False
        elif ended:
            there = str(row.status) in statuses
        else:
            there = not statuses <= _ENDED
        if there:
            unchanged += 1
        elif not ended and row.mailbox_hash in suppressed:
            refused.append(row)
        else:
            new.append(row)
    return new, unchanged, refused


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def export_rows(
    session: Session, *, status: SubscriberStatus | None = None, step: int | None = None
) -> Iterator[list[str]]:
    """The header, then one CSV row per subscription (oldest first), read in pages."""
    yield list(COLUMNS)
    query = (
        select(Subscriber, Consent)
        .join(Consent, Consent.subscriber_id == Subscriber.id, isouter=True)
        .order_by(Subscriber.id)
        .execution_options(yield_per=CHUNK_SIZE)
    )
    if status is not None:
        query = query.where(Subscriber.status == status)
    if step is not None:
        query = query.where(Subscriber.next_step == step)
    for subscriber, consent in session.execute(query):
        fields: dict[str, object] = {
            "email": subscriber.email,
            "first_name": subscriber.first_name,
            "time_zone": subscriber.time_zone,
            "status": subscriber.status,
            "step": subscriber.next_step,
            "created_at": subscriber.created_at,
        }
        if consent is not None:
            for name in COLUMNS[6:]:
                fields[name] = getattr(consent, name)
        yield [_text(fields.get(name)) for name in COLUMNS]


class _Line:
    """A file-like target that hands back what csv.writer wrote for one row."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text = text
        return len(text)


def export_csv(
    services: Services, *, status: SubscriberStatus | None = None, step: int | None = None
) -> Iterator[str]:
    """The export as CSV text, one line (row) at a time, in one read-only session."""
    line = _Line()
    writer = csv.writer(line, lineterminator="\r\n")
    with session_scope(services.sessions) as session:
        for row in export_rows(session, status=status, step=step):
            writer.writerow(row)
            yield line.text
