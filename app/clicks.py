"""Optional click tracking: counted per email and per link, per person only when asked.

CLICK_TRACKING=off (the default) leaves every link as it is. With `per-link`, the
content links of each email (read it in the browser, the last step's recap, any link
a course's author adds) lead through `/c/<token>`, and each click is counted for its
email and link, for everyone together. `per-person` also keeps who followed which link
(erased with the subscription, shown in their export and on the console's timeline).
The links that act on a subscription (confirm, pause, unsubscribe, manage) are never
tracked, and opens are never tracked.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import store
from app.config import ClickTracking
from app.models import Subscriber
from app.tokens import TrackedLink

if TYPE_CHECKING:
    from app.emails import RenderedEmail


#: Turns (link text, URL) into the URL that counts a click and leads there.
Tracker = Callable[[str, str], str]

_ANCHOR = re.compile(
    r'<a\b(?P<before>[^>]*?)\bhref="(?P<url>https?://[^"]+)"(?P<after>[^>]*)>(?P<text>.*?)</a>',
    re.IGNORECASE | re.DOTALL,
)
_TAG = re.compile(r"<[^>]+>")
#: The longest link name kept: a link's text, or its URL when it has none.
LINK_NAME_LENGTH = 200


def link_name(inner_html: str, url: str) -> str:
    """What a link is called for counting: its text, or its URL when it has no text."""
    text = " ".join(html.unescape(_TAG.sub(" ", inner_html)).split())
    return (text or url)[:LINK_NAME_LENGTH]


def track_links(
    rendered: RenderedEmail, *, track: Tracker, never: Collection[str]
) -> RenderedEmail:
    """`rendered` with each content link, in the HTML and the text, led through `track`.

    A link is named by its text in the HTML; the same URL in the text part gets the
    same tracked URL. URLs in `never` are left alone.
    """
    tracked: dict[str, str] = {}

    def anchor(match: re.Match[str]) -> str:
        url = html.unescape(match["url"])
        if url in never:
            return match[0]
        if url not in tracked:
            tracked[url] = track(link_name(match["text"], url), url)
        href = html.escape(tracked[url], quote=True)
        return f'<a{match["before"]}href="{href}"{match["after"]}>{match["text"]}</a>'

    marked_up = _ANCHOR.sub(anchor, rendered.html)
    text = rendered.text
    for url, new in tracked.items():
        # Only the whole URL: a step's link must not match the start of step 10's
        # (a full stop after it ends a sentence, one before a letter goes on).
        whole = re.escape(url) + r"(?![\w\-/%?=&~+#]|\.\w)"
        text = re.sub(whole, new.replace("\\", r"\\"), text)
    return replace(rendered, html=marked_up, text=text)


def record(session: Session, click: TrackedLink, *, mode: ClickTracking, now: datetime) -> None:
    """Count one click on a tracked link; with `per-person`, also note whose it was."""
    if mode == ClickTracking.OFF:
        return
    store.count_click(session, click.template, click.link, now=now)
    if mode == ClickTracking.PER_PERSON and click.subscriber_key is not None:
        subscriber_id = session.scalar(
            select(Subscriber.id).where(Subscriber.key == click.subscriber_key)
        )
        if subscriber_id is not None:  # erased since: nothing of theirs is kept
            store.add_click(session, subscriber_id, click.template, click.link, now=now)
