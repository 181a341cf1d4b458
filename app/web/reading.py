""" "Read in your browser": the signed page of each course step a subscriber has received.

The link in every step's footer (and on the manage page) is `/read/<token>/<step>`,
with a token signed for the `read` purpose. It shows only steps already received,
never changes anything, and is neither cached nor sent on in a Referer.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, render_template
from markupsafe import Markup
from werkzeug.exceptions import NotFound

from app import drip
from app.emails import Recipient, render
from app.tokens import Purpose
from app.web import services
from app.web.links import subscriber_from

bp = Blueprint("reading", __name__)
_BODY = re.compile(r"(<body[^>]*>)")


@bp.get("/read/<token>/<int:number>")
def read_step(token: str, number: int) -> str:
    """Step `number` as the subscriber received it, with links to the others received."""
    svc = services()
    course = svc.course
    with subscriber_from(Purpose.READ, token) as (_session, subscriber):
        received = drip.progress(subscriber, course.step_count)
        if not 1 <= number <= received:
            raise NotFound(
                "This step hasn't reached you yet. Each step can be read here once its "
                "email has been sent to you."
            )
        step = course.step(number)
        recipient = Recipient(
            email=subscriber.email,
            first_name=subscriber.first_name,
            links=svc.links(subscriber.key),
            message_id="",
        )
    rendered = render(svc.catalog.get(step.template), svc.sender, recipient, in_browser=True)
    # The page is the email itself (its own styles and phone layout), with a list of
    # the other steps received placed at the top of its body.
    head, body_tag, body = _BODY.split(rendered.html, maxsplit=1)
    return render_template(
        "read.html",
        head=Markup(head + body_tag),
        body=Markup(body),
        number=number,
        steps=course.steps[:received],
        token=token,
    )


@bp.after_request
def no_store(response: Response) -> Response:
    # The page shows a subscriber's own emails, behind a link that is the only proof.
    response.headers["Cache-Control"] = "no-store"
    return response
