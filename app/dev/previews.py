"""`make previews`: PNG screenshots of every email, and of the subscriber's pages, at
desktop and phone width.

Uses headless Chromium (Debian package `chromium`); writes into previews/ (ignored).
The pages are rendered by the app itself over a throwaway SQLite database, with their
stylesheet beside them, so a shot shows exactly what a subscriber's browser would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from app.config import PROJECT_ROOT, Settings, parse_reply_to
from app.emails import render
from app.services import Services

#: Window sizes (width, height): Gmail's 600 px column and a common phone.
WIDTHS = {"desktop": (600, 1700), "phone": (375, 2300)}
#: The pages' window sizes: the browser tests' desktop and phone.
PAGE_SIZES = {"desktop": (1280, 1000), "phone": (390, 844)}
#: `--only pages` takes the page shots alone.
PAGES = "pages"
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


def subscriber_pages(folder: Path) -> Iterator[tuple[str, str]]:
    """Each public page as (name, HTML), rendered by the app for a made-up subscriber, Ada."""
    from sqlalchemy import select

    from app import create_app, drip
    from app.db import migrate, session_scope
    from app.models import SignupRequest
    from app.store import subscriber_by_email

    services = Services(
        Settings(
            base_url="https://course.onward.example",
            database_url=f"sqlite:///{folder / 'previews.db'}",
            instance_dir=folder,
        )
    )
    migrate(services.engine)
    app = create_app(services=services)
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    try:
        yield "sign-up", client.get("/").get_data(as_text=True)
        error = client.post("/subscribe", data={"email": "ada @example.com"})
        yield "sign-up-error", error.get_data(as_text=True)
        inbox = client.post("/subscribe", data={"email": "ada@gmial.com", "first_name": "Ada"})
        yield "check-inbox", inbox.get_data(as_text=True)
        client.post("/subscribe", data={"email": "ada@example.com", "first_name": "Ada"})
        with session_scope(services.sessions) as session:
            # Decide the recorded sign-up as its job would (nothing is sent from here).
            request_id = session.scalar(
                select(SignupRequest.id).where(SignupRequest.email == "ada@example.com")
            )
            assert request_id is not None
            drip.take_signup(session, request_id, policy=services.policy, now=services.clock())
        with session_scope(services.sessions) as session:
            subscriber = subscriber_by_email(session, "ada@example.com")
            assert subscriber is not None
            links = services.links(subscriber.key)
        confirm = urlsplit(links.confirm_url).path
        yield "confirm", client.get(confirm).get_data(as_text=True)
        yield "confirmed", client.post(confirm).get_data(as_text=True)
        manage = urlsplit(links.manage_url).path
        paused = client.post(f"{manage}/pause", follow_redirects=True)
        yield "manage-paused", paused.get_data(as_text=True)
        client.post(f"{manage}/resume")
        yield "manage", client.get(manage).get_data(as_text=True)
        yield "delete", client.post(f"{manage}/delete").get_data(as_text=True)
        unsubscribe = urlsplit(links.unsubscribe_url).path
        yield "unsubscribe", client.get(unsubscribe).get_data(as_text=True)
        yield "not-found", client.get("/no-such-page").get_data(as_text=True)
    finally:
        services.close()


def page_shots(chromium: str, out: Path) -> None:
    """Write previews/page-<name>-<desktop|phone>.png for each public page."""
    static = Path(__file__).resolve().parent.parent / "static"
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        shutil.copytree(static, folder / "static")
        for name, page in subscriber_pages(folder):
            html_file = folder / f"page-{name}.html"
            html_file.write_text(page.replace('"/static/', '"static/'), encoding="utf-8")
            for label, size in PAGE_SIZES.items():
                png = out / f"page-{name}-{label}.png"
                screenshot(chromium, html_file, png, size)
                print(f"{png.relative_to(out.parent)}  {size[0]} px")


def main(argv: list[str] | None = None) -> int:
    """Write previews/<email>-<desktop|phone>.png for every email, and the pages' shots."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "previews")
    parser.add_argument(
        "--only",
        nargs="*",
        help=f"email names, or {PAGES!r} for the pages (default: every email and the pages)",
    )
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
    names = services.catalog.names if args.only is None else args.only
    for name in (name for name in names if name != PAGES):
        rendered = render(services.catalog.get(name), services.sender, recipient)
        html_file = args.out / f"{name}.html"
        html_file.write_text(rendered.html, encoding="utf-8")
        for label, size in WIDTHS.items():
            png = args.out / f"{name}-{label}.png"
            screenshot(chromium, html_file, png, size)
            print(f"{png.relative_to(args.out.parent)}  {size[0]} px")
        html_file.unlink()
    if args.only is None or PAGES in args.only:
        page_shots(chromium, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
