"""The course read as a subscriber who was just rejected would read it."""

from __future__ import annotations

import re

import pytest

from app.config import Settings
from app.emails import render
from app.services import Services

STEPS = [f"step-{n:02d}" for n in range(1, 11)]
#: Words that push or sell; none belongs in a course for people who are hurting.
PRESSURE = re.compile(
    r"\b(act now|hurry|limited time|don't miss|last chance|guarantee\w*|buy|discount|"
    r"offer ends|click here|exclusive|urgent|upgrade|premium)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def texts() -> dict[str, tuple[str, str]]:
    """Each email's subject and the body of its text part (greeting to sign-off)."""
    services = Services(Settings(base_url="https://course.onward.example"))
    recipient = services.sample_recipient()
    bodies = {}
    for name in services.catalog.names:
        rendered = render(services.catalog.get(name), services.sender, recipient)
        body = rendered.text.split("Hi Ada,", 1)[1].split("You get this because", 1)[0]
        bodies[name] = (rendered.subject, body)
    return bodies


def words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9][A-Za-z0-9'\u2019-]*", text))


@pytest.mark.parametrize("name", STEPS)
def test_each_step_is_150_to_350_words_with_one_action(
    texts: dict[str, tuple[str, str]], name: str
) -> None:
    subject, body = texts[name]
    assert 150 <= words(body) <= 350, f"{name}: {words(body)} words"
    assert body.count("Your step for today:") == 1, f"{name}: one concrete action per step"
    assert len(subject) < 50


@pytest.mark.parametrize("name", ["confirmation", *STEPS])
def test_nothing_reads_as_marketing_pressure(texts: dict[str, tuple[str, str]], name: str) -> None:
    subject, body = texts[name]
    assert not PRESSURE.search(subject + body), PRESSURE.search(subject + body)
    assert "!" not in subject + body
    shouting = [w for w in re.findall(r"\b[A-Z]{4,}\b", subject + body) if w not in {"JSON"}]
    assert shouting == [], f"{name}: {shouting}"


def test_steps_one_to_nine_announce_the_next_and_step_ten_closes_kindly(
    texts: dict[str, tuple[str, str]],
) -> None:
    for name in STEPS[:-1]:
        assert re.search(r"next step|step \d+ arrives|last step arrives", texts[name][1], re.I), (
            name
        )
    closing = texts["step-10"][1]
    assert re.search(r"last email|final email|last one", closing, re.I)
    assert not re.search(r"next step arrives", closing, re.I)


def test_facts_and_quotes_keep_their_attribution(texts: dict[str, tuple[str, str]]) -> None:
    assert "Guy Winch" in texts["step-02"][1]
    assert "JobVite" in texts["step-03"][1]
    assert "250" in texts["step-03"][1]
    step_nine = texts["step-09"][1]
    assert "Lynn Taylor" in step_nine
    assert "Business Insider" in step_nine
    assert "human on the other side of the desk" in step_nine
