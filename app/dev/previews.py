"""`make previews`: PNG screenshots of every email at desktop and phone width.

Uses headless Chromium (Debian package `chromium`); writes into previews/ (ignored).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from app.config import PROJECT_ROOT, Settings, parse_reply_to
from app.emails import render
from app.services import Services

#: Window sizes (width, height): Gmail's 600 px column and a common phone.
WIDTHS = {"desktop": (600, 1700), "phone": (375, 2300)}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, or chromium / chromium-browser on the PATH."""
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def screenshot(chromium: str, html_file: Path, png: Path, size: tuple[int, int]) -> None:
    """Take one screenshot of a local HTML file."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--screenshot={png}",
                html_file.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


def main(argv: list[str] | None = None) -> int:
    """Write previews/<email>-<desktop|phone>.png for every email."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "previews")
    parser.add_argument("--only", nargs="*", help="email names (default: every email)")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(
            "previews: Chromium not found. Install it (Debian: apt-get install chromium) "
            "or set CHROMIUM to its path.",
            file=sys.stderr,
        )
        return 2
    # REPLY_TO from the environment shows the invitation to reply as subscribers would see it.
    reply_to = parse_reply_to(os.environ.get("REPLY_TO", ""))
    services = Services(Settings(base_url="https://course.onward.example", reply_to=reply_to))
    recipient = services.sample_recipient()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or services.catalog.names:
        rendered = render(services.catalog.get(name), services.sender, recipient)
        html_file = args.out / f"{name}.html"
        html_file.write_text(rendered.html, encoding="utf-8")
        for label, size in WIDTHS.items():
            png = args.out / f"{name}-{label}.png"
            screenshot(chromium, html_file, png, size)
            print(f"{png.relative_to(args.out.parent)}  {size[0]} px")
        html_file.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
