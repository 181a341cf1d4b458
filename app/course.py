"""The course as data: its title, sender, wording, steps and sources, read from course.toml.

One course lives in one folder: its `course.toml` beside the MJML templates it names.
Everything that depends on the course (the step count, subjects, List-Id, consent
wording, the credit line) comes from here, so a second course would be a second folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import ConfigError, parse_reply_to

COURSE_FILE = "course.toml"
#: What a List-Id's id part may hold (RFC 2919: a dot-atom, here kept to DNS-ish labels).
_LIST_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
#: Subjects stay short enough to show in full in a phone's inbox list.
MAX_SUBJECT = 50


class CourseError(ValueError):
    """The course file is missing, malformed or inconsistent; the message says where."""


@dataclass(frozen=True)
class Step:
    """One step of the course: its email template, subject and the action it asks for."""

    number: int
    template: str
    subject: str
    #: The step's action in a few words, for the recap and the browser page.
    action: str
    #: The step's last line: a one-line preview of the next step ("" in the last step).
    closer: str


@dataclass(frozen=True)
class Source:
    """A quotation or figure the emails carry, and where it comes from."""

    text: str
    source: str
    #: The step templates it appears in, as written.
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Course:
    """One course: what the emails, the pages and the course rules need to know about it."""

    folder: Path
    title: str
    list_id: str
    sender_name: str
    #: Where replies go, from the course file; the REPLY_TO setting overrides it. None: nowhere.
    reply_to: str | None
    consent_wording: str
    credit: str
    confirmation_template: str
    confirmation_subject: str
    #: "You're already signed up": to an address that signs up while its course runs or ran.
    notice_template: str
    notice_subject: str
    steps: tuple[Step, ...]
    sources: tuple[Source, ...]

    @property
    def step_count(self) -> int:
        """How many steps the course has."""
        return len(self.steps)

    def step(self, number: int) -> Step:
        """Step `number` (1-based); CourseError if there is no such step."""
        if not 1 <= number <= self.step_count:
            raise CourseError(f"the course has no step {number}")
        return self.steps[number - 1]


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CourseError(f"{where}: `{key}` must be a non-empty string")
    if "\r" in value or "\n" in value:
        raise CourseError(f"{where}: `{key}` must be on one line")
    return value.strip()


def load_course(folder: Path) -> Course:
    """Read and check `folder/course.toml` (templates are checked by `EmailCatalog`)."""
    path = folder / COURSE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CourseError(f"cannot read the course file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise CourseError(f"{path.name}: {error}") from None
    where = path.name
    list_id = _text(data, "list_id", where)
    if not _LIST_ID.match(list_id):
        raise CourseError(f"{where}: `list_id` may hold only a-z, 0-9 and '-', got {list_id!r}")
    confirmation = data.get("confirmation")
    if not isinstance(confirmation, dict):
        raise CourseError(f"{where}: a [confirmation] table is required")
    notice = data.get("notice")
    if not isinstance(notice, dict):
        raise CourseError(f"{where}: a [notice] table is required")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise CourseError(f"{where}: at least one [[steps]] table is required")
    steps = []
    for number, raw in enumerate(raw_steps, start=1):
        at = f"{where}, step {number}"
        if not isinstance(raw, dict):
            raise CourseError(f"{at}: must be a table")
        if number == len(raw_steps) and "closer" in raw:
            raise CourseError(f"{at}: the last step has no next step to preview: drop `closer`")
        steps.append(
            Step(
                number=number,
                template=_text(raw, "template", at),
                subject=_text(raw, "subject", at),
                action=_text(raw, "action", at),
                closer=_text(raw, "closer", at) if number < len(raw_steps) else "",
            )
        )
    course = Course(
        folder=folder,
        title=_text(data, "title", where),
        list_id=list_id,
        sender_name=_text(data, "sender_name", where),
        reply_to=_reply_to(data, where),
        consent_wording=_text(data, "consent_wording", where),
        credit=_text(data, "credit", where),
        confirmation_template=_text(confirmation, "template", f"{where}, [confirmation]"),
        confirmation_subject=_text(confirmation, "subject", f"{where}, [confirmation]"),
        notice_template=_text(notice, "template", f"{where}, [notice]"),
        notice_subject=_text(notice, "subject", f"{where}, [notice]"),
        steps=tuple(steps),
        sources=tuple(_sources(data.get("sources", []), where)),
    )
    _check(course, where)
    return course


def _reply_to(data: dict[str, Any], where: str) -> str | None:
    if "reply_to" not in data:
        return None
    value = data["reply_to"]
    if not isinstance(value, str):
        raise CourseError(f'{where}: `reply_to` must be a string, like "Sam <sam@example.com>"')
    try:
        return parse_reply_to(value, setting="`reply_to`")
    except ConfigError as error:
        raise CourseError(f"{where}: {error}") from None


def _sources(raw_sources: object, where: str) -> list[Source]:
    if not isinstance(raw_sources, list):
        raise CourseError(f"{where}: `sources` must be a list of [[sources]] tables")
    sources = []
    for index, raw in enumerate(raw_sources, start=1):
        at = f"{where}, source {index}"
        if not isinstance(raw, dict):
            raise CourseError(f"{at}: must be a table")
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise CourseError(f"{at}: `steps` must list the templates it appears in")
        sources.append(
            Source(text=_text(raw, "text", at), source=_text(raw, "source", at), steps=tuple(steps))
        )
    return sources


def _check(course: Course, where: str) -> None:
    templates = [
        course.confirmation_template,
        *(step.template for step in course.steps),
        course.notice_template,
    ]
    repeated = {name for name in templates if templates.count(name) > 1}
    if repeated:
        raise CourseError(f"{where}: each email needs its own template; repeated: {repeated}")
    subjects = [
        course.confirmation_subject,
        *(step.subject for step in course.steps),
        course.notice_subject,
    ]
    for subject in subjects:
        if subjects.count(subject) > 1:
            raise CourseError(f"{where}: the subject {subject!r} is used twice")
        if len(subject) >= MAX_SUBJECT:
            raise CourseError(
                f"{where}: the subject {subject!r} is {len(subject)} characters; "
                f"keep it under {MAX_SUBJECT}"
            )
    for source in course.sources:
        unknown = set(source.steps) - set(templates)
        if unknown:
            raise CourseError(f"{where}: source {source.text!r} names unknown emails {unknown}")
