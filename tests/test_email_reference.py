"""The emails against the reference tools: npm `mjml` and the caniemail.com data.

- Every template is valid MJML for the reference compiler (npm mjml v5, strict validation,
  includes allowed), and that check does reject a broken template.
- What mrml makes of each template says what the reference compiler's HTML says: the same
  visible text, links and images, subject and preheader.
- The rendered emails use no feature that Gmail, Apple Mail or Outlook lack in a way that
  breaks the layout; each unsupported feature left has a documented reason below, and the
  partly supported ones are printed (`pytest -s`).

The Node.js tools are pinned in tests/node/package-lock.json and installed there by the first
test that needs them. Without Node.js and npm these tests are skipped, unless
ONWARD_REQUIRE_NODE=1 is set (as CI should), which makes a missing Node.js a failure.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.config import DEFAULT_EMAILS_DIR, Settings
from app.emails import compile_mjml, render
from app.services import Services
from tests.node_support import NODE_DIR, NodeTools, install_node_tools

MJML_CLI = NODE_DIR / "node_modules" / "mjml" / "bin" / "mjml"
TEMPLATES = sorted(p.stem for p in DEFAULT_EMAILS_DIR.glob("*.mjml") if not p.name.startswith("_"))
#: Options of the reference compiler: strict validation, includes read (MJML 5 skips them
#: by default), and its raw output rather than a re-indented copy.
MJML_OPTIONS = [
    "--config.validationLevel=strict",
    "--config.allowIncludes",
    "true",
    "--config.beautify",
    "false",
]
#: The caniemail.com clients checked (globs over @jsx-email/doiuse-email's client ids).
CLIENTS = ["gmail.*", "apple-mail.*", "outlook.*"]


# --- the Node.js tools -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_tools() -> NodeTools:
    """Node.js, with tests/node's packages (npm mjml among them) installed."""
    tools = install_node_tools()
    if not MJML_CLI.exists():
        pytest.fail(f"{MJML_CLI} is missing after the install: check tests/node/package.json")
    return tools


# --- the reference compiler --------------------------------------------------------------------


@dataclass
class ReferenceRun:
    """What npm mjml said about a folder of templates, and the HTML it wrote."""

    problems: str
    html: dict[str, str] = field(default_factory=dict)


def compile_with_reference(tools: NodeTools, folder: Path, out_dir: Path) -> ReferenceRun:
    """Compile every template in `folder` with one npm mjml process, as strictly as it can."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in folder.glob("*.mjml") if not p.name.startswith("_"))
    done = tools.run(str(MJML_CLI), "-r", *map(str, sources), "-o", str(out_dir), *MJML_OPTIONS)
    # A failed template sets the exit code; a skipped or unreadable include only says so on
    # stderr. Either way it is a problem.
    problems = done.stderr.strip()
    if done.returncode != 0:
        problems = f"{problems}\n(npm mjml exited with {done.returncode})".strip()
    html = {p.stem: p.read_text(encoding="utf-8") for p in out_dir.glob("*.html")}
    return ReferenceRun(problems, html)


@pytest.fixture(scope="module")
def reference(node_tools: NodeTools, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    return compile_with_reference(
        node_tools, DEFAULT_EMAILS_DIR, tmp_path_factory.mktemp("reference")
    )


def test_every_template_is_valid_mjml_for_the_reference_compiler(reference: ReferenceRun) -> None:
    assert reference.problems == "", (
        "npm mjml (strict validation, includes allowed) rejects the templates:\n"
        + reference.problems
    )
    assert sorted(reference.html) == TEMPLATES


def test_the_reference_check_rejects_a_broken_template(
    node_tools: NodeTools, tmp_path: Path
) -> None:
    folder = tmp_path / "emails"
    shutil.copytree(DEFAULT_EMAILS_DIR, folder)
    confirmation = folder / "confirmation.mjml"
    source = confirmation.read_text(encoding="utf-8")
    assert "<mj-button " in source
    confirmation.write_text(
        source.replace("<mj-button ", "<mj-buton ").replace("</mj-button>", "</mj-buton>"),
        encoding="utf-8",
    )
    step = folder / "step-01.mjml"
    step.write_text(
        step.read_text(encoding="utf-8").replace("./_footer.mjml", "./_missing.mjml"),
        encoding="utf-8",
    )

    run = compile_with_reference(node_tools, folder, tmp_path / "out")

    assert "mj-buton" in run.problems, run.problems
    assert "step-01.mjml" in run.problems, run.problems  # the include it cannot read
    assert "confirmation" not in run.html
    assert "step-02" in run.html  # the others still compile: one run checks them all


# --- mrml against the reference ----------------------------------------------------------------

#: Tags that start a new line of text where a reader sees it.
_BLOCKS = {
    "blockquote", "br", "center", "div", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
    "p", "table", "td", "th", "tr", "ul",
}  # fmt: skip
_VOID = {"area", "base", "br", "col", "hr", "img", "input", "link", "meta", "source", "wbr"}
_HIDDEN = {"head", "script", "style", "title"}


class VisibleContent(HTMLParser):
    """The text a reader sees, line by line, with the links and images, in order.

    The head, styles and the hidden preheader are left out of the lines (the title and the
    preheader are kept apart), and so is what MSO conditional comments hold (Outlook-only
    markup): the parser sees those as comments.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.preheader = ""
        self.links: list[str | None] = []
        self.images: list[tuple[str | None, str | None]] = []
        self._text: list[str] = []  # "\n" marks a line break, data has its spaces collapsed
        self._hidden_depth = 0
        self._capture: tuple[str, int] | None = None  # ("title" or "preheader", depth)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append((attributes.get("src"), attributes.get("alt")))
        if tag in _VOID:
            if tag == "br" and not self._hidden_depth:
                self._text.append("\n")
            return
        hides = "display:none" in (attributes.get("style") or "").replace(" ", "").lower()
        if self._hidden_depth or tag in _HIDDEN or hides:
            self._hidden_depth += 1
            if self._capture is None and (tag == "title" or hides):
                self._capture = ("title" if tag == "title" else "preheader", self._hidden_depth)
            return
        if tag in _BLOCKS:
            self._text.append("\n")
        if tag == "a":
            self.links.append(attributes.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self._hidden_depth:
            if self._capture is not None and self._capture[1] == self._hidden_depth:
                self._capture = None
            self._hidden_depth -= 1
        elif tag in _BLOCKS:
            self._text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            if self._capture[0] == "title":
                self.title += data
            else:
                self.preheader += data
        elif not self._hidden_depth:
            self._text.append(re.sub(r"\s+", " ", data))

    @property
    def lines(self) -> list[str]:
        lines = (" ".join(line.split()) for line in "".join(self._text).split("\n"))
        return [line for line in lines if line]


def visible(markup: str) -> VisibleContent:
    content = VisibleContent()
    content.feed(markup)
    content.close()
    return content


def test_visible_content_is_what_a_reader_sees() -> None:
    content = visible(
        "<html><head><title>The  subject</title><style>p { color: red }</style></head><body>"
        '<div style="display: none; max-height: 0">The <b>preheader</b></div>'
        "<!--[if mso | IE]><table><tr><td>Outlook only</td></tr></table><![endif]-->"
        '<div><p>Hello <b>Ada</b>,<br />read\n   <a href="https://x.test/1">this</a>.</p>'
        '<p><img src="https://x.test/i.png" alt="A picture"><a href="https://x.test/2">2</a></p>'
        "</div></body></html>"
    )
    assert content.lines == ["Hello Ada,", "read this.", "2"]
    assert content.links == ["https://x.test/1", "https://x.test/2"]
    assert content.images == [("https://x.test/i.png", "A picture")]
    assert content.title == "The  subject"
    assert content.preheader == "The preheader"


@pytest.mark.parametrize("name", TEMPLATES)
def test_mrml_and_the_reference_compiler_say_the_same(reference: ReferenceRun, name: str) -> None:
    ours = visible(compile_mjml(DEFAULT_EMAILS_DIR / f"{name}.mjml").content)
    assert name in reference.html, f"npm mjml wrote no {name}.html:\n{reference.problems}"
    theirs = visible(reference.html[name])

    assert ours.lines, "no visible text found"
    assert ours.lines == theirs.lines, "the visible text differs (mrml first, npm mjml second)"
    assert ours.links == theirs.links
    assert ours.images == theirs.images
    assert " ".join(ours.title.split()) == " ".join(theirs.title.split())
    assert ours.preheader.strip() and ours.preheader.strip() == theirs.preheader.strip()


_CONDITIONAL = re.compile(r"<!--\[if mso \| IE\]>(.*?)<!\[endif\]-->", re.S)


def layout_widths(markup: str) -> dict[str, list[str | None]]:
    """The widths that hold each section to the body's 600px, in browsers and in Outlook."""
    sections = re.findall(r'<div\b[^>]*\bstyle="([^"]*margin:0px auto;[^"]*)"', markup)
    section_tables: list[str | None] = []
    columns: list[str | None] = []
    for outlook_only in _CONDITIONAL.findall(markup):
        for table in re.findall(r'<table\b([^>]*\balign="center"[^>]*)>', outlook_only):
            width = re.search(r'\bwidth="(\d+)"', table)
            section_tables.append(width.group(1) if width else None)
        columns += re.findall(r'<td\b[^>]*style="vertical-align:top;width:([^;"]+);', outlook_only)
    return {
        "section max-width": [
            m.group(1) if (m := re.search(r"max-width:([^;]+);", s)) else None for s in sections
        ],
        "Outlook section table width": section_tables,
        "Outlook column width": columns,
    }


def test_mrml_keeps_every_section_to_the_body_width(reference: ReferenceRun) -> None:
    differences: dict[str, str] = {}
    for name in TEMPLATES:
        ours = layout_widths(compile_mjml(DEFAULT_EMAILS_DIR / f"{name}.mjml").content)
        theirs = layout_widths(reference.html[name])
        if ours != theirs:
            differences[name] = f"mrml {ours}\n  npm mjml {theirs}"
    assert not differences, "\n".join(f"{name}:\n  {diff}" for name, diff in differences.items())


# --- email client support (caniemail.com) -----------------------------------------------------

_NO_STYLE = (
    "Gmail's mobile web client ignores <style>: the layout is inline (MJML is mobile-first), "
    "so the email stays one readable column and only the mj-style touches are lost (eyebrow "
    "case, the action box, the footer's smaller text, the h1 size)"
)
_PREHEADER = (
    "on the hidden preheader, which the rest of its style (display:none, max-height:0, "
    "overflow:hidden, 1px text) still hides"
)

#: Unsupported features (caniemail "not supported") that are fine in these emails, with the
#: clients they may be unsupported in and why it does not matter. Anything else fails.
ALLOWED_ERRORS: dict[str, tuple[tuple[str, ...], str]] = {
    "Class selector": (("gmail.mobile-webmail",), _NO_STYLE),
    "Type selector": (("gmail.mobile-webmail",), _NO_STYLE),
    "ID selector": (("gmail.mobile-webmail",), _NO_STYLE),
    "Descendant combinator": (("gmail.mobile-webmail",), _NO_STYLE),
    "Chaining selectors": (
        ("gmail.mobile-webmail", "outlook.windows*"),
        "MJML's Thunderbird rule `.moz-text-html .mj-column-per-100` (doiuse-email counts "
        "two classes as chained even across a descendant combinator)",
    ),
    "@media": (
        ("gmail.mobile-webmail", "outlook.windows*"),
        "MJML is mobile-first: the media query only widens columns on wide screens; Outlook "
        "on Windows gets its fixed 600px layout from MSO conditional tables",
    ),
    "display:none": (("gmail.mobile-webmail",), _PREHEADER),
    "opacity": (("gmail.mobile-webmail", "outlook.windows*"), _PREHEADER),
    "overflow": (("outlook.windows*", "outlook.android"), _PREHEADER),
    "<body> element": (
        ("outlook.macos", "outlook.ios", "outlook.android"),
        "MJML repeats the body's background colour on its wrapper div",
    ),
    "outline": (("outlook.windows*",), "MJML's reset for images; these emails have none"),
    "word-spacing": (("outlook.windows*",), "MJML's `word-spacing:normal` reset on the body"),
    "word-break": (
        ("outlook.windows-mail",),
        "MJML's break-word on text cells; without it only an unbroken long string (the "
        "confirmation's fallback link) could widen its column, in the retired Windows Mail",
    ),
    "role attribute": (("outlook.windows-mail",), "accessibility hints, ignored there"),
    "aria-label attribute": (("outlook.windows-mail",), "accessibility hints, ignored there"),
    "border-radius": (("outlook.windows*",), "the button's corners are square in Outlook"),
    "target attribute": (("gmail.*",), "Gmail opens links in a new tab anyway"),
}

_NOT_SUPPORTED = re.compile(r"`(?P<feature>.+)` is not supported by `(?P<client>[^`]+)`")
_PARTLY = re.compile(r"`(?P<feature>.+)` is only partially supported by `(?P<client>[^`]+)`")


@dataclass(frozen=True)
class ClientReport:
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]


def _pairs(messages: list[str], pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    pairs = []
    for message in messages:
        match = pattern.fullmatch(message)
        assert match, f"unexpected message from doiuse-email: {message!r}"
        pairs.append((match["feature"], match["client"]))
    return pairs


def _allowed(feature: str, client: str) -> bool:
    clients, _reason = ALLOWED_ERRORS.get(feature, ((), ""))
    return any(fnmatch.fnmatchcase(client, pattern) for pattern in clients)


@pytest.fixture(scope="module")
def client_reports(node_tools: NodeTools) -> dict[str, ClientReport]:
    """Each email, rendered for a subscriber as it is sent, checked against caniemail.com."""
    services = Services(Settings(base_url="https://onward.example"))
    recipient = services.sample_recipient()
    reports = {}
    for name in TEMPLATES:
        markup = render(services.catalog.get(name), services.sender, recipient).html
        done = node_tools.run("caniemail.mjs", *CLIENTS, stdin=markup)
        assert done.returncode == 0, f"caniemail.mjs failed on {name}:\n{done.stderr}"
        result = json.loads(done.stdout)
        reports[name] = ClientReport(
            errors=_pairs(result["errors"], _NOT_SUPPORTED),
            warnings=_pairs(result["warnings"], _PARTLY),
        )
    return reports


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_email_client_lacks_a_feature_the_layout_needs(
    client_reports: dict[str, ClientReport], name: str
) -> None:
    unexplained = sorted({(f, c) for f, c in client_reports[name].errors if not _allowed(f, c)})
    assert not unexplained, (
        f"{name}: features these clients do not support (caniemail.com):\n"
        + "\n".join(f"  {feature} in {client}" for feature, client in unexplained)
        + "\nAvoid them, or add them to ALLOWED_ERRORS with the reason they cannot break "
        "the layout."
    )


def test_every_allowance_is_still_needed_and_the_warnings_are_shown(
    client_reports: dict[str, ClientReport],
) -> None:
    used = {feature for report in client_reports.values() for feature, _ in report.errors}
    assert set(ALLOWED_ERRORS) <= used, (
        f"no email uses these any more, remove them from ALLOWED_ERRORS: "
        f"{sorted(set(ALLOWED_ERRORS) - used)}"
    )
    assert {c for report in client_reports.values() for _, c in report.warnings} >= {
        "gmail.desktop-webmail",
        "apple-mail.macos",
        "outlook.windows",
    }, "the client globs no longer reach Gmail, Apple Mail and Outlook"

    unsupported: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    partial: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, report in client_reports.items():
        for feature, client in report.errors:
            unsupported[feature][client].add(name)
        for feature, client in report.warnings:
            partial[feature][client].add(name)

    def where(found: dict[str, set[str]]) -> str:
        names = set().union(*found.values())
        emails = "every email" if len(names) == len(TEMPLATES) else ", ".join(sorted(names))
        return f"{', '.join(sorted(found))} ({emails})"

    print(f"\ncaniemail.com, {', '.join(CLIENTS)}: not supported, and why that is fine")
    for feature in sorted(unsupported, key=str.lower):
        print(f"  {feature}: {where(unsupported[feature])}\n    {ALLOWED_ERRORS[feature][1]}")
    print("caniemail.com: only partly supported (warnings)")
    for feature in sorted(partial, key=str.lower):
        print(f"  {feature}: {where(partial[feature])}")
