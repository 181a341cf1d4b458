"""The console's pages: overview, funnel, subscribers and their timelines, problems, emails,
imports and the export.

Every view runs behind `auth.require_session`; every change is a POST with a CSRF token
(CSRFProtect covers this blueprint) and leaves an audit entry naming the operator.
"""

from __future__ import annotations

import logging
from functools import partial

from flask import (
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from jinja2 import TemplateError
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as BaseResponse

from app import console, drip, figures, import_jobs, importing, operators, store
from app.config import ConfigError
from app.db import session_scope
from app.emails import EmailTemplateError, build_message, render
from app.models import DeliveryStatus, Subscriber, SubscriberStatus
from app.sending import dispatch
from app.web import services
from app.web.admin.auth import bp, current_operator
from app.web.admin.charts import bar_chart

log = logging.getLogger(__name__)


@bp.get("/")
def overview() -> str:
    """Subscriptions by status, emails per day, what is due, the queue and the relay."""
    svc = services()
    now = svc.clock()
    counted = figures.current(svc, now=now)
    with session_scope(svc.sessions) as session:
        # The one live count: the send rate reached, over the last minute (an index range).
        sent_last_minute = console.sent_last_minute(session, now=now)
    queue: console.QueueState | None = None
    relay: console.Relay | None = None
    try:
        queue = console.queue_state(svc.queue)
        relay = console.relay_state(svc)
    except (RedisError, ConfigError) as error:
        log.warning("console: Redis unavailable: %s", error)
    per_day = counted.per_day
    chart = bar_chart(
        "Emails sent per day",
        f"Emails the relay accepted each day (UTC), {per_day[0][0]:%d %b} to "
        f"{per_day[-1][0]:%d %b %Y}.",
        [(f"{day:%d %b}", count) for day, count in per_day],
        label_every=5,
    )
    return render_template(
        "admin/overview.html",
        statuses=counted.statuses,
        total=sum(counted.statuses.values()),
        per_day=per_day,
        chart=chart,
        due=counted.due,
        deliveries=counted.deliveries,
        queue=queue,
        queue_age=(now - queue.oldest_enqueued_at) if queue and queue.oldest_enqueued_at else None,
        relay=relay,
        sent_last_minute=sent_last_minute,
        hygiene=counted.hygiene,
        counted_at=counted.computed_at,
        kept_seconds=int(svc.settings.console_cache.total_seconds()),
        live="The queue, the relay and the last minute's send rate are live.",
        complaint_limit=drip.GMAIL_COMPLAINT_LIMIT,
        now=now,
    )


@bp.get("/funnel")
def funnel() -> str:
    """For each step: reached, paused after, unsubscribed after, bounced at; completion."""
    svc = services()
    counted = figures.current(svc, now=svc.clock())
    chart = bar_chart(
        "Subscriptions that reached each step",
        "How many subscriptions received each of the course's steps.",
        [(f"Step {step.number}", step.reached) for step in counted.funnel.steps],
    )
    return render_template(
        "admin/funnel.html",
        funnel=counted.funnel,
        chart=chart,
        counted_at=counted.computed_at,
        kept_seconds=int(svc.settings.console_cache.total_seconds()),
    )


@bp.get("/subscribers")
def subscribers() -> str:
    """Search by address, and paged lists by status."""
    query = request.args.get("q", "")[:320]
    status_arg = request.args.get("status", "")
    status = SubscriberStatus(status_arg) if status_arg in set(SubscriberStatus) else None
    page = request.args.get("page", "1")
    svc = services()
    with session_scope(svc.sessions) as session:
        found = console.find_subscribers(
            session, query=query, status=status, page=int(page) if page.isdigit() else 1
        )
    return render_template(
        "admin/subscribers.html",
        found=found,
        query=query,
        status=status,
        statuses=list(SubscriberStatus),
        progress=partial(drip.progress, total_steps=svc.course.step_count),
    )


@bp.get("/subscribers/<int:subscriber_id>")
def subscriber(subscriber_id: int) -> str:
    """One subscription's timeline: consent, then every email, then operators' actions."""
    svc = services()
    with session_scope(svc.sessions) as session:
        found = console.subscriber_with_history(session, subscriber_id)
        if found is None:
            abort(404)
        audit = console.audit_entries(session, subscriber_id)
    return render_template(
        "admin/subscriber.html",
        subscriber=found,
        audit=audit,
        progress=drip.progress(found, svc.course.step_count),
        total_steps=svc.course.step_count,
        actions=available_actions(found, svc.course.step_count),
    )


def available_actions(subscriber: Subscriber, total_steps: int) -> list[tuple[str, str]]:
    """The actions (name, button label) that make sense for the subscription as it stands."""
    status = subscriber.status
    actions = []
    if status == SubscriberStatus.ACTIVE and subscriber.next_step <= total_steps:
        actions.append(("send-now", f"Send step {subscriber.next_step} now"))
    if status in drip.TRANSITIONS["pause"]:
        actions.append(("pause", "Pause"))
    if status in drip.TRANSITIONS["resume"]:
        actions.append(("resume", "Resume"))
    if status in drip.TRANSITIONS["unsubscribe"]:
        actions.append(("unsubscribe", "Unsubscribe"))
    actions.append(("erase", "Erase all data"))
    return actions


@bp.post("/subscribers/<int:subscriber_id>/<action>")
def act(subscriber_id: int, action: str) -> BaseResponse:
    """Pause, resume, unsubscribe, erase, or send the due step now; each one audited."""
    if action not in operators.ACTIONS:
        abort(404)
    svc = services()
    now = svc.clock()
    with session_scope(svc.sessions) as session:
        found = session.get(Subscriber, subscriber_id, with_for_update=True)
        if found is None:
            abort(404)
        changed = operators.act(
            session,
            current_operator(),
            found,
            action,
            policy=svc.policy,
            keys=svc.mailbox_keys,
            now=now,
        )
    if changed:
        figures.forget(svc)  # the operator should see the effect in the figures at once
    if action == "erase":
        flash(f"Subscription {subscriber_id} and all its data were erased.")
        return redirect(url_for("admin.subscribers"))
    if action == "send-now" and changed:
        try:
            dispatch(svc, now=now, ids=[subscriber_id])
            flash("The due step was queued for sending now.")
        except (RedisError, ConfigError) as error:
            log.warning("console: could not queue subscriber %s: %s", subscriber_id, error)
            flash("The due step is due now; the next scheduler tick queues it.")
    elif changed:
        flash(f"Done: {action.replace('-', ' ')}.")
    else:
        flash(f"Nothing changed: {action.replace('-', ' ')} does not apply to this subscription.")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))


@bp.get("/problems")
def problems() -> str:
    """Deferred and failed emails grouped by error and failure class; broken templates."""
    svc = services()
    with session_scope(svc.sessions) as session:
        groups = console.problem_groups(session)
        failed = [
            (d.subscriber_id, d.template, d.failure_class or "unclassified", d.error, d.started_at)
            for d in store.failed_deliveries(session)
        ]
    relay: console.Relay | None = None
    try:
        relay = console.relay_state(svc)
    except (RedisError, ConfigError) as error:
        log.warning("console: Redis unavailable: %s", error)
    return render_template(
        "admin/problems.html",
        relay=relay,
        groups=groups,
        failed=failed,
        broken=broken_templates(),
    )


def broken_templates() -> list[tuple[str, str]]:
    """Each email template that cannot be compiled or rendered, with the error."""
    svc = services()
    try:
        catalog = svc.catalog
    except EmailTemplateError as error:
        return [("(all emails)", str(error))]
    broken = []
    course = svc.course
    expected = [course.confirmation_template, *(step.template for step in course.steps)]
    for name in expected:
        if name not in catalog.names:
            broken.append((name, "no template with this name in the emails folder"))
    recipient = svc.sample_recipient()
    for name in catalog.names:
        try:
            rendered = render(catalog.get(name), svc.sender, recipient)
            build_message(rendered, svc.sender, recipient, now=svc.clock())
        except (TemplateError, ValueError, EmailTemplateError) as error:
            broken.append((name, f"{error.__class__.__name__}: {error}"))
    return broken


@bp.get("/emails")
def emails() -> str:
    """Every email of the course, with how many were sent, deferred and failed."""
    svc = services()
    with session_scope(svc.sessions) as session:
        figures = console.step_figures(session)
        clicks = console.link_clicks(session)
    try:
        names = svc.catalog.names
    except EmailTemplateError as error:
        return render_template(
            "admin/emails.html", names=[], figures={}, clicks={}, error=str(error)
        )
    return render_template(
        "admin/emails.html",
        names=names,
        figures=figures,
        clicks=clicks,
        tracking=svc.settings.click_tracking,
        statuses=list(DeliveryStatus),
        error=None,
    )


def _rendered(name: str) -> tuple[str, str, str]:
    """Subject, HTML and text of one email, as sent to the sample recipient."""
    svc = services()
    try:
        email = svc.catalog.get(name)
    except EmailTemplateError:
        abort(404)
    rendered = render(email, svc.sender, svc.sample_recipient())
    return rendered.subject, rendered.html, rendered.text


@bp.get("/emails/<name>")
def email(name: str) -> str:
    """One email as it is sent (HTML and text), next to its figures."""
    subject, html, text = _rendered(name)
    svc = services()
    with session_scope(svc.sessions) as session:
        figures = console.step_figures(session).get(name, dict.fromkeys(DeliveryStatus, 0))
        clicks = console.link_clicks(session).get(name, [])
    return render_template(
        "admin/email.html",
        clicks=clicks,
        tracking=svc.settings.click_tracking,
        name=name,
        subject=subject,
        text=text,
        size=len(html.encode()),
        figures=figures,
    )


@bp.get("/emails/<name>/html")
def email_html(name: str) -> BaseResponse:
    """The HTML part alone, framed by the email's page in a sandbox."""
    _, html, _ = _rendered(name)
    response = BaseResponse(html, mimetype="text/html")
    # The email's own inline styles are allowed; its scripts, forms and plugins are not.
    response.headers["Content-Security-Policy"] = (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: https:"
        "; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.before_app_request
def allow_uploads() -> None:
    """The import form takes files larger than the other forms' limit."""
    if request.endpoint == "admin.import_upload":
        request.max_content_length = import_jobs.MAX_UPLOAD


@bp.get("/imports")
def imports() -> str:
    """The import form (a CSV upload) and the export's download."""
    return render_template(
        "admin/imports.html", columns=importing.COLUMNS, statuses=list(SubscriberStatus)
    )


@bp.post("/imports")
def import_upload() -> BaseResponse:
    """Queue the uploaded CSV's import (or check) and show its progress page."""
    upload = request.files.get("file")
    data = upload.read() if upload is not None else b""
    if not data:
        flash("Please choose a CSV file to import.")
        return redirect(url_for("admin.imports"))
    consent = request.form.get("consent", "").strip()[:1000] or None
    dry_run = request.form.get("dry_run") == "1"
    svc = services()
    try:
        import_id = import_jobs.start(svc, data, consent=consent, dry_run=dry_run)
    except (RedisError, ConfigError) as error:
        log.warning("console: could not queue an import: %s", error)
        flash("The import could not be queued just now (the job queue is down). Please try again.")
        return redirect(url_for("admin.imports"))
    with session_scope(svc.sessions) as session:
        operators.record(
            session,
            current_operator(),
            "import-check" if dry_run else "import",
            subscriber_id=None,
            detail=f"import {import_id}: {upload.filename if upload else ''}"[:200],
            now=svc.clock(),
        )
    return redirect(url_for("admin.import_progress", import_id=import_id), code=303)


@bp.get("/imports/<import_id>")
def import_progress(import_id: str) -> str:
    """How far an import got; the page reloads itself until it is done."""
    try:
        found = import_jobs.status(services(), import_id)
    except (RedisError, ConfigError) as error:
        log.warning("console: import progress unavailable: %s", error)
        found = {"state": "unknown", "rows": 0, "total": 0, "report": None, "error": None}
    if found is None:
        abort(404)
    return render_template("admin/import.html", found=found)


@bp.get("/export")
def export() -> BaseResponse:
    """Every subscription (or one status, one step) as a CSV download, streamed."""
    status_arg = request.args.get("status", "")
    status = SubscriberStatus(status_arg) if status_arg in set(SubscriberStatus) else None
    step_arg = request.args.get("step", "")
    step = int(step_arg) if step_arg.isdigit() else None
    lines = importing.export_csv(services(), status=status, step=step)
    response = BaseResponse(stream_with_context(lines), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="subscribers.csv"'
    return response
