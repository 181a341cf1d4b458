"""`make previews`: real screenshots with headless Chromium."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.dev import previews


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(
    previews.find_chromium() is None,
    reason="Chromium is not installed: apt-get install chromium (or set CHROMIUM) to run it",
)
def test_previews_are_screenshots_at_desktop_and_phone_width(tmp_path: Path) -> None:
    assert previews.main(["--out", str(tmp_path), "--only", "confirmation", "step-10"]) == 0
    for name in ("confirmation", "step-10"):
        assert png_size(tmp_path / f"{name}-desktop.png") == previews.WIDTHS["desktop"]
        assert png_size(tmp_path / f"{name}-phone.png") == previews.WIDTHS["phone"]
        # A blank page compresses to almost nothing; a rendered email does not.
        assert (tmp_path / f"{name}-phone.png").stat().st_size > 20_000
    assert not list(tmp_path.glob("*.html")), "the HTML used for the shots is cleaned up"


def test_previews_say_how_to_get_chromium_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(previews, "find_chromium", lambda: None)
    assert previews.main(["--out", str(tmp_path)]) == 2
    assert "apt-get install chromium" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    previews.find_chromium() is None,
    reason="Chromium is not installed: apt-get install chromium (or set CHROMIUM) to run it",
)
def test_previews_keep_screenshots_of_the_subscribers_pages(tmp_path: Path) -> None:
    assert previews.main(["--out", str(tmp_path), "--only", previews.PAGES]) == 0
    for name in ("sign-up", "check-inbox", "confirm", "manage", "delete", "not-found"):
        for label, size in previews.PAGE_SIZES.items():
            shot = tmp_path / f"page-{name}-{label}.png"
            assert png_size(shot) == size
            assert shot.stat().st_size > 10_000, f"{shot.name} looks blank"
    assert not list(tmp_path.glob("*.html")), "only the screenshots are kept"
    assert not list(tmp_path.glob("*-desktop.png")) or all(
        p.name.startswith("page-") for p in tmp_path.glob("*.png")
    ), "--only pages takes no email shots"
