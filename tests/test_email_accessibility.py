"""Emails anyone can read: contrast in light and dark mode, language, no remote resources."""

from __future__ import annotations

import re

import pytest

from app.config import Settings
from app.emails import render
from app.services import Services

LIGHT = "light"
DARK = "dark"
#: Every text colour the emails use, on the background it sits on, in each scheme.
#: (foreground, background, where)
PALETTE = {
    LIGHT: [
        ("#2b2b2b", "#ffffff", "body text on the card"),
        ("#1d1d1d", "#ffffff", "heading"),
        ("#1f6f5c", "#ffffff", "links and the step label"),
        ("#2b2b2b", "#eef6f3", "the action box"),
        ("#ffffff", "#1f6f5c", "the button"),
        ("#2b2b2b", "#f4f1ec", "the header"),
        ("#5a5a5a", "#f4f1ec", "footer text"),
        ("#3d3d3d", "#f4f1ec", "footer links"),
    ],
    DARK: [
        ("#ece8e1", "#262523", "body text on the card"),
        ("#f4f1ec", "#262523", "heading"),
        ("#7fd0b6", "#262523", "links and the step label"),
        ("#ece8e1", "#1f3a33", "the action box"),
        ("#ffffff", "#1f6f5c", "the button"),
        ("#ece8e1", "#1c1b19", "the header"),
        ("#b9b3aa", "#1c1b19", "footer text"),
        ("#e0dbd3", "#1c1b19", "footer links"),
    ],
}
#: The hidden preheader's colour is never seen.
HIDDEN = {"#ffffff"}


def luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of an sRGB colour like #1f6f5c."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(foreground: str, background: str) -> float:
    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[str, str]]:
    services = Services(
        Settings(
            base_url="https://course.onward.example",
            postal_address="Onward Ltd, 42 Harbour Road, Bristol BS1 5TR, United Kingdom",
        )
    )
    recipient = services.sample_recipient()
    out = {}
    for name in services.catalog.names:
        email = render(services.catalog.get(name), services.sender, recipient)
        out[name] = (email.html, email.text)
    return out


def test_the_contrast_formula_matches_known_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize("scheme", [LIGHT, DARK])
def test_every_text_colour_meets_wcag_aa(scheme: str) -> None:
    failures = [
        f"{where}: {fg} on {bg} is {contrast(fg, bg):.2f}:1"
        for fg, bg, where in PALETTE[scheme]
        if contrast(fg, bg) < 4.5
    ]
    assert failures == []


def test_the_palette_is_the_one_the_emails_use(rendered: dict[str, tuple[str, str]]) -> None:
    known = {colour for pairs in PALETTE.values() for pair in pairs for colour in pair[:2]}
    for name, (html, _text) in rendered.items():
        used = {c.lower() for c in re.findall(r"(?<![-\w])color\s*:\s*(#[0-9a-fA-F]{6})", html)}
        assert used - known - HIDDEN == set(), f"{name} uses colours the palette does not list"
        dark_rules = html.split("prefers-color-scheme: dark", 1)
        assert len(dark_rules) == 2, f"{name} has no dark-mode styles"
        for foreground, _background, where in PALETTE[DARK]:
            if where != "the button":
                assert foreground in dark_rules[1], f"{name}: dark {where} colour is not used"


def test_structure_language_images_and_no_remote_resources(
    rendered: dict[str, tuple[str, str]],
) -> None:
    for name, (html, text) in rendered.items():
        assert re.search(r'<html[^>]* lang="en"', html), name
        assert "color-scheme: light dark" in html, name
        for image in re.findall(r"<img\b[^>]*>", html):
            assert re.search(r'\balt="[^"]+"', image), f"{name}: image without alt text"
        # Nothing to fetch: no web fonts, stylesheets, scripts or remote images.
        assert not re.search(r"<link\b|@import|<script\b", html), name
        assert not re.search(r"""(src|background)=["']https?:""", html), name
        assert not re.search(r"url\(\s*['\"]?https?:", html), name
        assert len(html.encode()) < 30_000, f"{name} is {len(html.encode())} bytes"
        # The sender's postal address (CAN-SPAM) comes from the POSTAL_ADDRESS setting.
        assert "42 Harbour Road, Bristol BS1 5TR" in html
        assert "42 Harbour Road, Bristol BS1 5TR" in text
