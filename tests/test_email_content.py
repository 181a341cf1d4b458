"""The course read as a subscriber who was just rejected would read it, and as an editor."""

from __future__ import annotations

import re

import pytest

from app.config import Settings
from app.emails import render
from app.services import Services

SERVICES = Services(Settings(base_url="https://course.onward.example", reply_to="sam@example.com"))
COURSE = SERVICES.course
STEPS = [step.template for step in COURSE.steps]
EMAILS = [COURSE.confirmation_template, *STEPS]
SIGN_OFF = f"Warmly,\n{COURSE.sender_name}"
#: Words that push or sell; none belongs in a course for people who are hurting.
PRESSURE = re.compile(
    r"\b(act now|hurry|limited time|don't miss|last chance|guarantee\w*|buy|discount|"
    r"offer ends|click here|exclusive|urgent|upgrade|premium)\b",
    re.IGNORECASE,
)
#: A promise about when the next email comes: the schedule (STEP_INTERVAL) decides that.
TIMING = re.compile(r"\b(couple of days|in (a few|two|three|\d+) days|tomorrow|arrives in)\b", re.I)
#: Quoted but not quotations: book titles, and words the reader might write, as examples.
NOT_QUOTATIONS = {
    "Tame Your Terrible Office Tyrant",
    "They chose someone else for this role.",
    "Is there anything that would have made my application stronger?",
}
#: Claims the first edition made in the source's name that the source does not make.
UNSOURCED = [
    "would rather hear from someone who is honest",
    "don't enjoy turning candidates down",
    "People remember candidates who were gracious",
    "It quietly tells us we are on the outside",
    "Most people are glad to be asked",
    "Jobvite",
]


@pytest.fixture(scope="module")
def texts() -> dict[str, tuple[str, str, str]]:
    """Each email's subject, the body of its text part (greeting to sign-off) and the whole text."""
    recipient = SERVICES.sample_recipient()
    emails = {}
    for name in EMAILS:
        rendered = render(SERVICES.catalog.get(name), SERVICES.sender, recipient)
        body = rendered.text.split("Hi Ada,", 1)[1].split(SIGN_OFF, 1)[0]
        emails[name] = (rendered.subject, body, rendered.text)
    return emails


def words(text: str) -> int:
    """How many words a reader reads (links written out after their labels not counted)."""
    text = re.sub(r"\s*\(https?://[^)]+\)", "", text)
    return len(re.findall(r"[A-Za-z0-9][A-Za-z0-9'\u2019-]*", text))


def sentences(text: str) -> set[str]:
    """The sentences of a text, without the links written out after link labels."""
    text = re.sub(r"\s*\(https?://[^)]+\)", "", text)
    parts = re.split(r"(?<=[.?])\s+|\n+", text)
    return {part.strip(" -") for part in parts if len(part.split()) >= 4}


@pytest.mark.parametrize("name", STEPS)
def test_each_step_is_150_to_350_words_with_one_action(
    texts: dict[str, tuple[str, str, str]], name: str
) -> None:
    subject, body, _ = texts[name]
    assert 150 <= words(body) <= 350, f"{name}: {words(body)} words"
    assert body.count("Your step for today:") == 1, f"{name}: one concrete action per step"
    assert len(subject) < 50


@pytest.mark.parametrize("name", EMAILS)
def test_nothing_reads_as_marketing_pressure(
    texts: dict[str, tuple[str, str, str]], name: str
) -> None:
    subject, body, _ = texts[name]
    assert not PRESSURE.search(subject + body), PRESSURE.search(subject + body)
    assert "!" not in subject + body
    shouting = [w for w in re.findall(r"\b[A-Z]{4,}\b", subject + body) if w not in {"JSON"}]
    assert shouting == [], f"{name}: {shouting}"


def test_subjects_are_unique_and_short() -> None:
    subjects = [COURSE.confirmation_subject, *(step.subject for step in COURSE.steps)]
    assert len(set(subjects)) == len(subjects)
    assert all(len(subject) < 50 for subject in subjects)


def test_each_closer_previews_the_next_step_without_promising_a_time(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    closers = [step.closer for step in COURSE.steps[:-1]]
    assert len(set(closers)) == len(closers)
    for step in COURSE.steps[:-1]:
        # The closer ends the step, followed only by the schedule's line ("The next
        # step arrives on Tuesday morning.", "soon" where no schedule applies).
        body, schedule = texts[step.template][1].rstrip().rsplit(". The ", 1)
        assert f"{body}.".endswith(step.closer), step.template
        assert SCHEDULE_LINE.match(f"The {schedule}"), step.template
        assert len(step.closer.splitlines()) == 1
    for name in EMAILS:
        assert not TIMING.search(texts[name][1]), (name, TIMING.search(texts[name][1]))
    closing = texts[STEPS[-1]][1]
    assert re.search(r"last email", closing, re.I)
    assert not re.search(r"\bnext step\b|coming next|next up", closing, re.I)


#: The line the schedule writes in every step ("The next step arrives on Tuesday
#: morning."): computed, like the footer, so not a repeated sentence of the content.
SCHEDULE_LINE = re.compile(r"^The (next|last) step arrives ")


def repeated_sentences(bodies: dict[str, str]) -> dict[str, list[str]]:
    """Sentences found in more than two of the bodies, with the names of those bodies."""
    seen: dict[str, list[str]] = {}
    for name, body in bodies.items():
        for sentence in sentences(body):
            if not SCHEDULE_LINE.match(sentence):
                seen.setdefault(sentence, []).append(name)
    return {sentence: sorted(names) for sentence, names in seen.items() if len(names) > 2}


def test_no_sentence_appears_in_more_than_two_emails(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    assert repeated_sentences({name: texts[name][1] for name in EMAILS}) == {}


def test_the_check_for_repeated_sentences_can_fail() -> None:
    shared = "Be gentle with yourself today, and rest."
    twice = {"a": f"Step text one. {shared}", "b": f"Other words here. {shared}"}
    assert repeated_sentences(twice) == {}
    thrice = {**twice, "c": f"{shared} And more words here."}
    assert repeated_sentences(thrice) == {shared: ["a", "b", "c"]}


@pytest.mark.parametrize("name", EMAILS)
def test_every_email_credits_the_article_and_is_signed_by_a_person(
    texts: dict[str, tuple[str, str, str]], name: str
) -> None:
    whole = texts[name][2]
    assert COURSE.credit in whole
    assert "10 Steps To Recover From Job Rejection Quickly" in COURSE.credit
    assert "Career Rebels" in COURSE.credit
    assert SIGN_OFF in whole
    assert "just reply: a person reads these" in whole


def test_every_quotation_and_figure_is_listed_with_its_source_and_found_as_written(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    assert COURSE.sources, "the course file lists its quotations and figures"
    for source in COURSE.sources:
        assert source.source.strip()
        for name in source.steps:
            assert source.text in texts[name][1], (source.text, name)
    listed = [source.text for source in COURSE.sources]
    for name in EMAILS:
        body = re.sub(r"\(https?://[^)]+\)", "", texts[name][1]).replace(COURSE.title, "")
        # Every figure written in digits sits inside a listed, sourced text.
        for figure in re.findall(r"\d[\d,.%]*", body if name != "confirmation" else ""):
            assert any(figure in text for text in listed if text in body), (name, figure)
        # Every quoted passage of four words or more is listed, a title, or an example of ours.
        for quoted in re.findall(r"[\"\u201c]([^\"\u201d]+)[\"\u201d]", body):
            if len(quoted.split()) < 4 or quoted.strip() in NOT_QUOTATIONS:
                continue
            assert any(text in quoted or quoted.rstrip(",.") in text for text in listed), (
                name,
                quoted,
            )


def test_the_claims_the_source_does_not_make_are_gone_and_the_figure_is_hedged(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    everything = "\n".join(texts[name][2] for name in EMAILS)
    for claim in UNSOURCED:
        assert claim not in everything, claim
    step_three = texts["step-03"][1]
    assert "JobVite" in step_three
    assert re.search(r"estimate[^.]*250|250[^.]*estimate", step_three)
    step_six = texts["step-06"][1]
    assert "may be casting the net too wide" in step_six
    assert "doesn't say how to tailor" in step_six, "our own tips are marked as ours"


def test_facts_and_quotes_keep_their_attribution(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    assert "Guy Winch" in texts["step-02"][1]
    step_nine = texts["step-09"][1]
    assert "Lynn Taylor" in step_nine
    assert "Business Insider" in step_nine


def test_step_nine_is_for_the_next_time_an_interview_goes_badly(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    subject, body, _ = texts["step-09"]
    assert "interview goes badly" in subject
    assert "the next time an interview goes badly" in body


def test_step_one_points_to_support_without_medical_claims(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    body = texts["step-01"][1]
    assert re.search(r"reach out for support", body)
    assert not re.search(r"depress|diagnos|treat|therap|cure|disorder|symptom", body, re.I)


def test_the_last_step_recaps_whichever_steps_were_tried(
    texts: dict[str, tuple[str, str, str]],
) -> None:
    body = texts[STEPS[-1]][1]
    assert "whichever of them you tried" in body
    assert all(step.action in body for step in COURSE.steps)
    assert "Pause the course" not in texts[STEPS[-1]][2]
