"""`POST /webhooks/<provider>`: bounces, complaints and deliveries that relays report.

Each provider's proof is checked before anything is read (app/relays.py); an unproven
request gets 403 and changes nothing. Every event is applied once (drip.apply_report).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import NotFound, ServiceUnavailable

from app import drip, relays
from app.db import session_scope
from app.web import services

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

#: SendGrid posts events in batches: allow bodies larger than the forms' limit.
MAX_BODY = 4 * 1024 * 1024
#: The extension key of the SNS verifier (tests replace its certificate fetcher).
SNS_VERIFIER = "onward.sns_verifier"


@bp.before_request
def allow_batches() -> None:
    request.max_content_length = MAX_BODY


def sns_verifier() -> relays.SnsVerifier:
    """This app's SNS signature checker, which keeps the certificates it fetched."""
    verifier = current_app.extensions.get(SNS_VERIFIER)
    if verifier is None:
        verifier = current_app.extensions[SNS_VERIFIER] = relays.SnsVerifier()
    assert isinstance(verifier, relays.SnsVerifier)
    return verifier


def _not_configured(provider: str) -> NotFound:
    return NotFound(f"The {provider} webhook is not configured on this server.")


def _read(provider: str) -> list[drip.Report]:
    """Check the request's proof and read its reports; raise Unverified or Malformed."""
    svc = services()
    hygiene = svc.settings.hygiene
    body, now = request.get_data(), svc.clock()
    if provider == "ses":
        if not hygiene.ses_topic_arns:
            raise _not_configured(provider)
        result = relays.read_ses(
            body, verifier=sns_verifier(), topic_arns=hygiene.ses_topic_arns, now=now
        )
        if result.subscribe_url is not None:
            # The handshake: SNS waits for a GET of this URL before it posts notifications.
            try:
                sns_verifier().fetch(result.subscribe_url)
            except OSError as error:
                # SNS sends the confirmation again; say so rather than pretend.
                raise ServiceUnavailable(f"Could not confirm the subscription: {error}") from None
            log.info("confirmed an SNS subscription")
        return result.reports
    if provider == "postmark":
        if not hygiene.postmark_webhook_auth:
            raise _not_configured(provider)
        relays.check_basic_auth(request.headers.get("Authorization"), hygiene.postmark_webhook_auth)
        return relays.read_postmark(body, now=now)
    if provider == "mailgun":
        if not hygiene.mailgun_signing_key:
            raise _not_configured(provider)
        return relays.read_mailgun(body, signing_key=hygiene.mailgun_signing_key, now=now)
    if provider == "sendgrid":
        if not hygiene.sendgrid_public_key:
            raise _not_configured(provider)
        return relays.read_sendgrid(
            body,
            signature_header=request.headers.get(relays.SENDGRID_SIGNATURE, ""),
            timestamp=request.headers.get(relays.SENDGRID_TIMESTAMP, ""),
            public_key=hygiene.sendgrid_public_key,
            now=now,
        )
    raise NotFound("There is no such webhook.")


@bp.post("/<provider>")
def receive(provider: str) -> tuple[Response, int]:
    """Verify and apply one webhook request; 200 with what was done."""
    try:
        reports = _read(provider)
    except relays.Unverified as error:
        log.warning("refused a %s webhook request: %s", provider, error)
        return jsonify(error={"code": "unverified", "message": "Not verified."}), 403
    except relays.Malformed as error:
        return jsonify(error={"code": "malformed", "message": str(error)}), 400
    svc = services()
    applied = []
    with session_scope(svc.sessions) as session:
        for report in reports:
            applied.append(
                drip.apply_report(
                    session, report, keys=svc.mailbox_keys, policy=svc.policy, now=svc.clock()
                )
            )
    for line in applied:
        log.info("webhook %s", line)
    return jsonify(status="ok", applied=applied), 200
