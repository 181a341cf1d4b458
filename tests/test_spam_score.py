"""Spam score: every email, built and serialised as the worker sends it, scored by SpamAssassin.

SpamAssassin runs offline (`-L`: no DNS blocklists, no network), once for all the
messages, with no Bayes database and no user preferences, so the score depends on
the messages alone. Run `pytest -s tests/test_spam_score.py` to see every score and
the rules that fired. Without SpamAssassin on PATH the tests are skipped:
`apt-get install spamassassin` (Debian, Ubuntu) installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from app import drip
from app.config import Settings
from app.course import load_course
from app.emails import Recipient, build_message, render, wire_message
from app.models import EmailKind
from app.services import Services

SPAMASSASSIN = shutil.which("spamassassin")
pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None,
    reason="spamassassin is not on PATH: install it with `apt-get install spamassassin`",
)

#: The most an email may score; SpamAssassin calls 5.0 spam, we want to be far from it.
MAX_SCORE = 1.0
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SETTINGS = Settings(
    base_url="https://course.onward.example",
    secret_key="a-long-random-secret-key-used-only-by-the-spam-score-test",
    mail_from="Onward <course@onward.example>",
    postal_address="Onward, 1 Example Street, Springfield, IL 62701, USA",
    reply_to="Sam <sam@onward.example>",
)
SUBSCRIBER_KEY = "xO2bW3Zy0aQ8vO-bKe_gFw"  # the shape of models.new_key()
COURSE = load_course(SETTINGS.emails_dir)
STEPS = [step.template for step in COURSE.steps]
EMAILS = [COURSE.confirmation_template, *STEPS, COURSE.notice_template]
#: The variant that must score worse than the real email (see the last test).
SPAMMY = "step-01, spammy"
SPAMMY_SUBJECT = "FREE!!! ACT NOW!!! 100% FREE COURSE, CLICK HERE!!!"


@dataclass(frozen=True)
class Verdict:
    """What SpamAssassin said about one message."""

    score: float
    #: Each rule that fired, with its points (from the report; 0.0 if only named in the header).
    rules: dict[str, float]
    size: int

    def describe(self) -> str:
        rules = ", ".join(
            f"{name} {points:+.1f}"
            for name, points in sorted(self.rules.items(), key=lambda rule: -abs(rule[1]))
        )
        return f"score {self.score:.1f}, {self.size / 1024:.1f} KB; rules: {rules or 'none'}"


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as app/mailer.py hands it to the relay."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def outgoing_message(services: Services, name: str) -> EmailMessage:
    """One email built the way app/sending.py builds it, for Ada."""
    kind, number = (
        (EmailKind.CONFIRMATION, 1)
        if name == COURSE.confirmation_template
        else (EmailKind.NOTICE, 1)
        if name == COURSE.notice_template
        else (EmailKind.STEP, STEPS.index(name) + 1)
    )
    recipient = Recipient(
        email="ada@example.com",
        first_name="Ada",
        links=services.links(SUBSCRIBER_KEY),
        message_id=drip.message_id_for(SUBSCRIBER_KEY, kind, number, services.sender.domain),
    )
    rendered = render(services.catalog.get(name), services.sender, recipient)
    return build_message(rendered, services.sender, recipient, now=NOW)


def as_sent(name: str) -> str:
    return f"{name} as sent"


def sent_bytes(services: Services, name: str) -> bytes:
    """The same email as a batch hands it to the relay (app/emails.py `wire_message`)."""
    message = outgoing_message(services, name)
    recipient = Recipient(
        email="ada@example.com",
        first_name="Ada",
        links=services.links(SUBSCRIBER_KEY),
        message_id=str(message["Message-ID"]),
    )
    rendered = render(services.catalog.get(name), services.sender, recipient)
    return wire_message(rendered, services.sender, recipient, now=NOW)


def spammy_variant(message: EmailMessage) -> EmailMessage:
    """The same email as a careless sender would send it: no Date, no Message-ID, shouting."""
    del message["Date"]
    del message["Message-ID"]
    message.replace_header("Subject", SPAMMY_SUBJECT)
    return message


_STATUS = re.compile(rb"^X-Spam-Status:(.*(?:\r?\n[ \t].*)*)", re.M)
_SCORE = re.compile(r"\bscore=(-?\d+(?:\.\d+)?)")
_TESTS = re.compile(r"\btests=([A-Za-z0-9_,\s]*?)(?:\s+\w+=|$)")
#: A line of the report's table: " 0.7 HTML_FONT_LOW_CONTRAST BODY: ..."
_REPORT_LINE = re.compile(r"^ {0,3}(-?\d+\.\d)\s+([A-Z][A-Z0-9_]+)\b", re.M)
_REPORT_TOTAL = re.compile(r"Content analysis details:\s*\((-?\d+(?:\.\d+)?) points")


def parse_verdict(output: bytes, size: int) -> Verdict:
    """The score and rules of one message in `spamassassin -t` output."""
    text = output.decode("utf-8", errors="replace").replace("\r\n", "\n")
    status = _STATUS.search(output)
    score = tests = None
    if status:
        unfolded = " ".join(status.group(1).decode("ascii", errors="replace").split())
        if match := _SCORE.search(unfolded):
            score = float(match.group(1))
        if match := _TESTS.search(unfolded):
            tests = [name for name in re.split(r"[\s,]+", match.group(1)) if name]
    report = text.rpartition("Content analysis details:")
    rules: dict[str, float] = {}
    if report[1]:
        table = report[2].partition("\n\n")[2].partition("\n\n")[0]  # after the totals line
        rules = {name: float(points) for points, name in _REPORT_LINE.findall(table)}
        if score is None and (total := _REPORT_TOTAL.search(report[1] + report[2])):
            score = float(total.group(1))
    for name in tests or []:
        rules.setdefault(name, 0.0)
    if score is None:
        raise AssertionError(f"no score in SpamAssassin's output:\n{text[:3000]}")
    return Verdict(score=score, rules=rules, size=size)


def spamassassin(messages: dict[str, bytes], workdir: Path) -> dict[str, Verdict]:
    """Score every message with one offline SpamAssassin run (its start-up is the slow part)."""
    assert SPAMASSASSIN is not None
    paths = []
    for index, (label, raw) in enumerate(messages.items()):
        path = workdir / f"{index:02d}-{re.sub(r'[^a-z0-9-]+', '-', label)}.eml"
        path.write_bytes(raw)
        paths.append(str(path))
    prefs = workdir / "user_prefs"
    prefs.write_text("")
    result = subprocess.run(
        [
            SPAMASSASSIN,
            "--local",  # offline: no network tests
            "--test-mode",  # the message, with the report added
            "--nocreate-prefs",
            f"--prefspath={prefs}",  # not the preferences of whoever runs the tests
            "--cf=use_bayes 0",  # nor their Bayes database
            "--cf=report_safe 0",  # a message that scores as spam is not wrapped
            *paths,
        ],
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "HOME": str(workdir)},
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    # One output message per input, in order, each starting at its X-Spam-Status header
    # and ending with its report.
    starts = [match.start() for match in _STATUS.finditer(result.stdout)]
    assert len(starts) == len(messages), (
        f"{len(starts)} X-Spam-Status headers for {len(messages)} messages:\n"
        + result.stdout.decode(errors="replace")[:3000]
    )
    verdicts = {}
    for (label, raw), start, end in zip(
        messages.items(), starts, [*starts[1:], len(result.stdout)], strict=True
    ):
        output = result.stdout[start:end]
        message_id = re.search(rb"^Message-ID: (\S+)", raw, re.M)
        assert message_id is None or message_id.group(1) in output, f"output out of order: {label}"
        verdicts[label] = parse_verdict(output, len(raw))
    return verdicts


@pytest.fixture(scope="module")
def services() -> Services:
    return Services(SETTINGS)


@pytest.fixture(scope="module")
def verdicts(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Verdict]:
    messages = {
        name: wire_bytes(outgoing_message(services, name)) for name in services.catalog.names
    }
    messages[SPAMMY] = wire_bytes(spammy_variant(outgoing_message(services, "step-01")))
    for name in services.catalog.names:
        messages[as_sent(name)] = sent_bytes(services, name)
    verdicts = spamassassin(messages, tmp_path_factory.mktemp("spamassassin"))
    print()
    for label, verdict in verdicts.items():
        print(f"SpamAssassin {label}: {verdict.describe()}")
    return verdicts


def test_every_email_is_scored(services: Services, verdicts: dict[str, Verdict]) -> None:
    assert services.catalog.names == EMAILS, "a new email must be added to EMAILS"
    assert list(verdicts) == [*EMAILS, SPAMMY, *map(as_sent, EMAILS)]


@pytest.mark.parametrize("name", EMAILS)
def test_the_bytes_a_batch_sends_score_as_the_stdlib_message(
    name: str, verdicts: dict[str, Verdict]
) -> None:
    built, sent = verdicts[name], verdicts[as_sent(name)]
    assert (sent.score, sent.rules) == (built.score, built.rules), f"{sent.describe()}"


@pytest.mark.parametrize("name", EMAILS)
def test_the_email_scores_well_below_spam(name: str, verdicts: dict[str, Verdict]) -> None:
    verdict = verdicts[name]
    assert verdict.score <= MAX_SCORE, f"{name}: {verdict.describe()}"


def test_a_spammy_variant_scores_higher_so_the_check_can_fail(
    verdicts: dict[str, Verdict],
) -> None:
    real, spammy = verdicts["step-01"], verdicts[SPAMMY]
    detail = f"real: {real.describe()}\nspammy: {spammy.describe()}"
    # The rules for what was taken away fire, and the score goes past the limit.
    assert {"MISSING_DATE", "MISSING_MID"} <= set(spammy.rules), detail
    assert spammy.score > max(real.score, MAX_SCORE), detail
