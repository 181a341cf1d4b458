"""`POST /webhooks/<provider>`: each provider's proof, payload shapes from its documentation,
forgeries refused without a change, replays applied once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app import relays
from app.config import HygieneSettings, Settings
from app.db import session_scope
from app.models import Delivery, MailEvent, Subscriber, SubscriberStatus, Suppression
from app.services import Services
from app.web.webhooks import SNS_VERIFIER
from tests.support import FakeClock, SmtpSink, active_subscriber, run_worker
from worker.schedule import tick

S = SubscriberStatus
TOPIC = "arn:aws:sns:us-east-1:123456789012:onward-ses"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000.pem"
POSTMARK_AUTH = "onward-hook:correct horse battery"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
RECIPIENT = "ada@example.com"


def rsa_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A self-signed certificate standing in for SNS's (the real one needs the network)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


SNS_KEY, SNS_CERT = rsa_certificate()
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


@dataclass
class FakeFetcher:
    """Answers certificate URLs with our certificate and records every URL fetched."""

    fetched: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        return SNS_CERT if url.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_changes(
        hygiene=HygieneSettings(
            ses_topic_arns=(TOPIC,),
            postmark_webhook_auth=POSTMARK_AUTH,
            mailgun_signing_key=MAILGUN_KEY,
            sendgrid_public_key=SENDGRID_PUBLIC,
        )
    )


@pytest.fixture
def fetcher(app: Flask) -> FakeFetcher:
    fake = FakeFetcher()
    app.extensions[SNS_VERIFIER] = relays.SnsVerifier(fetch=fake)
    return fake


@pytest.fixture
def sent(services: Services, smtp: SmtpSink, clock: FakeClock) -> str:
    """Step 1 went to ada@example.com: its Message-ID."""
    active_subscriber(services, RECIPIENT, clock.now)
    tick(services)
    run_worker(services)
    (message,) = smtp.to(RECIPIENT)
    return str(message.message["Message-ID"])


@dataclass(frozen=True)
class State:
    status: str
    suppressed: int
    events: int
    delivered: bool


def state(services: Services) -> State:
    with session_scope(services.sessions) as session:
        subscriber = session.scalars(select(Subscriber).where(Subscriber.email == RECIPIENT)).one()
        delivery = session.scalars(select(Delivery)).one()
        return State(
            status=str(subscriber.status),
            suppressed=session.scalar(select(func.count()).select_from(Suppression)) or 0,
            events=session.scalar(select(func.count()).select_from(MailEvent)) or 0,
            delivered=delivery.delivered_at is not None,
        )


# --- Amazon SES through SNS ---


def sns_signed(message: dict[str, Any], *, version: str = "1", key: Any = SNS_KEY) -> bytes:
    """Sign an SNS message the way SNS does (the fields in order, each `name\\nvalue\\n`)."""
    fields = (
        ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
        if message["Type"] == "Notification"
        else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    )
    text = "".join(f"{name}\n{message[name]}\n" for name in fields if name in message)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), algorithm)
    return json.dumps(
        message
        | {
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": message.get("SigningCertURL", CERT_URL),
        }
    ).encode()


def ses_notification(kind: str, message_id: str, sns_id: str = "sns-1", **extra: Any) -> dict:
    """An SNS notification carrying an SES event, shaped like the SES documentation's examples."""
    body: dict[str, Any] = {
        "notificationType": kind,
        "mail": {
            "timestamp": "2026-03-02T09:00:00.000Z",
            "source": "course@onward.test",
            "messageId": "0100018d-ses-own-id-000000",
            "destination": [RECIPIENT],
            "headersTruncated": False,
            "commonHeaders": {
                "from": ["Onward <course@onward.test>"],
                "to": [RECIPIENT],
                "messageId": message_id,
                "subject": "Step 1",
            },
        },
    }
    if kind == "Bounce":
        bounce_type = extra.get("bounce_type", "Permanent")
        # As in SES's examples: a permanent bounce for an unknown user, a transient
        # one for a full mailbox; `answer` overrides the remote server's answer.
        status, answer = (
            ("5.1.1", "smtp; 550 5.1.1 user unknown")
            if bounce_type == "Permanent"
            else ("5.2.2", "smtp; 552 5.2.2 Mailbox full")
        )
        status, answer = extra.get("status", status), extra.get("answer", answer)
        body["bounce"] = {
            "bounceType": bounce_type,
            "bounceSubType": "General" if bounce_type == "Permanent" else "MailboxFull",
            "bouncedRecipients": [
                {
                    "emailAddress": RECIPIENT,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": answer,
                }
            ],
            "timestamp": "2026-03-02T09:00:05.000Z",
            "feedbackId": "0100018d-feedback-0001",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        }
    elif kind == "Complaint":
        body["complaint"] = {
            "complainedRecipients": [{"emailAddress": RECIPIENT}],
            "timestamp": "2026-03-02T10:00:00.000Z",
            "feedbackId": "0100018d-feedback-0002",
            "complaintFeedbackType": "abuse",
            "userAgent": "Yahoo!-Mail-Feedback/2.0",
        }
    else:
        body["delivery"] = {
            "timestamp": "2026-03-02T09:00:02.000Z",
            "processingTimeMillis": 546,
            "recipients": [RECIPIENT],
            "smtpResponse": "250 ok:  Message 64111812 accepted",
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
        }
    return {
        "Type": "Notification",
        "MessageId": sns_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(body),
        "Timestamp": "2026-03-02T09:00:06.000Z",
    }


def post_ses(client: FlaskClient, body: bytes) -> Any:
    return client.post(
        "/webhooks/ses",
        data=body,
        headers={"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "x"},
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_hard_bounce_bounces_and_suppresses_once(
    client: FlaskClient, services: Services, fetcher: FakeFetcher, sent: str, version: str
) -> None:
    body = sns_signed(ses_notification("Bounce", sent), version=version)
    response = post_ses(client, body)
    assert response.status_code == 200, response.get_json()
    after = state(services)
    assert (after.status, after.suppressed, after.events) == (S.BOUNCED, 1, 1)
    # SNS delivers at least once: the same notification again changes nothing.
    again = post_ses(client, body)
    assert again.status_code == 200
    assert "already applied" in again.get_json()["applied"][0]
    assert state(services) == after
    assert fetcher.fetched == [CERT_URL]  # the certificate is fetched once and kept


def test_ses_subscription_confirmation_is_answered(
    client: FlaskClient, fetcher: FakeFetcher
) -> None:
    subscribe_url = (
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC}&Token=2336412f37"
    )
    body = sns_signed(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic ...",
            "SubscribeURL": subscribe_url,
            "Timestamp": "2026-03-02T09:00:00.000Z",
        }
    )
    assert post_ses(client, body).status_code == 200
    assert fetcher.fetched == [CERT_URL, subscribe_url]


@pytest.mark.parametrize(
    "forge",
    [
        "tampered message",
        "other key",
        "certificate on another host",
        "certificate over http",
        "another topic",
        "unknown signature version",
    ],
)
def test_ses_forgeries_get_403_and_change_nothing(
    client: FlaskClient, services: Services, fetcher: FakeFetcher, sent: str, forge: str
) -> None:
    before = state(services)
    message = ses_notification("Complaint", sent)
    if forge == "tampered message":
        signed = json.loads(sns_signed(message))
        signed["Message"] = signed["Message"].replace("abuse", "not-spam")
        body = json.dumps(signed).encode()
    elif forge == "other key":
        body = sns_signed(
            message, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
    elif forge == "certificate on another host":
        message["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
        body = sns_signed(message)
    elif forge == "certificate over http":
        message["SigningCertURL"] = CERT_URL.replace("https", "http")
        body = sns_signed(message)
    elif forge == "another topic":
        message["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:someone-elses"
        body = sns_signed(message)
    else:
        signed = json.loads(sns_signed(message))
        signed["SignatureVersion"] = "3"
        body = json.dumps(signed).encode()
    response = post_ses(client, body)
    assert response.status_code == 403
    assert state(services) == before
    assert all(url == CERT_URL for url in fetcher.fetched)


def test_ses_complaint_unsubscribes_and_delivery_marks_the_ledger(
    client: FlaskClient, services: Services, fetcher: FakeFetcher, sent: str
) -> None:
    assert (
        post_ses(client, sns_signed(ses_notification("Delivery", sent, "sns-d"))).status_code == 200
    )
    assert state(services).delivered
    assert state(services).status == S.ACTIVE
    assert (
        post_ses(client, sns_signed(ses_notification("Complaint", sent, "sns-c"))).status_code
        == 200
    )
    after = state(services)
    assert (after.status, after.suppressed) == (S.UNSUBSCRIBED, 1)


def test_ses_soft_bounces_suppress_after_several(
    client: FlaskClient, services: Services, fetcher: FakeFetcher, sent: str
) -> None:
    limit = services.policy.soft_bounce_limit
    for n in range(limit):
        assert state(services).status == S.ACTIVE
        body = sns_signed(ses_notification("Bounce", sent, f"sns-{n}", bounce_type="Transient"))
        assert post_ses(client, body).status_code == 200
    after = state(services)
    assert (after.status, after.suppressed, after.events) == (S.BOUNCED, 1, limit)


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        ("5.7.1", "smtp; 550 5.7.1 Message rejected as spam by content filtering"),
        ("5.7.26", "smtp; 550 5.7.26 Unauthenticated email is not accepted (DMARC)"),
        ("4.7.0", "smtp; 421 4.7.0 Try again later, closing connection"),
    ],
)
def test_ses_bounce_about_our_sending_bounces_nobody(
    app: Flask,
    client: FlaskClient,
    services: Services,
    fetcher: FakeFetcher,
    sent: str,
    status: str,
    answer: str,
) -> None:
    # SES calls these Permanent too; the status code says they are about us (issue 7's table).
    notification = ses_notification("Bounce", sent, status=status, answer=answer)
    response = post_ses(client, sns_signed(notification))
    assert response.status_code == 200
    assert "blocked" in response.get_json()["applied"][0]
    after = state(services)
    assert (after.status, after.suppressed, after.events) == (S.ACTIVE, 0, 1)
    stats = app.test_cli_runner().invoke(args=["stats"]).output
    assert re.search(r"step-01\s+0\s+0\s+0\s+1", stats), stats


# --- Postmark ---


def postmark_auth(credentials: str = POSTMARK_AUTH) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def postmark_bounce(type_: str = "HardBounce", id_: int = 4323372036854775807) -> dict:
    """A bounce webhook, shaped like Postmark's documentation."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": id_,
        "Type": type_,
        "TypeCode": 1 if type_ == "HardBounce" else 4096,
        "Name": "Hard bounce",
        "Tag": "",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message "
        "(ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist."
        if type_ != "SoftBounce"
        else "smtp;452 4.2.2 The email account that you tried to reach is over quota.",
        "Email": RECIPIENT,
        "From": "course@onward.test",
        "BouncedAt": "2026-03-02T09:00:05Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Step 1",
    }


def test_postmark_hard_bounce_with_basic_auth_applies_once(
    client: FlaskClient, services: Services, sent: str
) -> None:
    payload = postmark_bounce()
    response = client.post("/webhooks/postmark", json=payload, headers=postmark_auth())
    assert response.status_code == 200
    after = state(services)
    assert (after.status, after.suppressed, after.events) == (S.BOUNCED, 1, 1)
    assert (
        client.post("/webhooks/postmark", json=payload, headers=postmark_auth()).status_code == 200
    )
    assert state(services) == after


@pytest.mark.parametrize(
    "headers",
    [
        {},
        postmark_auth("onward-hook:wrong"),
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic %%%"},
    ],
)
def test_postmark_without_the_right_credentials_gets_403(
    client: FlaskClient, services: Services, sent: str, headers: dict[str, str]
) -> None:
    before = state(services)
    response = client.post("/webhooks/postmark", json=postmark_bounce(), headers=headers)
    assert response.status_code == 403
    assert state(services) == before


def test_postmark_complaint_soft_bounce_and_delivery(
    client: FlaskClient, services: Services, sent: str
) -> None:
    delivery = {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Recipient": RECIPIENT,
        "Tag": "",
        "DeliveredAt": "2026-03-02T09:00:03Z",
        "Details": "Test delivery webhook details",
        "Metadata": {},
    }
    assert (
        client.post("/webhooks/postmark", json=delivery, headers=postmark_auth()).status_code == 200
    )
    assert state(services).delivered
    soft = postmark_bounce("SoftBounce", id_=7)
    assert client.post("/webhooks/postmark", json=soft, headers=postmark_auth()).status_code == 200
    assert state(services).status == S.ACTIVE
    complaint = postmark_bounce("SpamComplaint", id_=8) | {
        "RecordType": "SpamComplaint",
        "TypeCode": 100001,
    }
    assert (
        client.post("/webhooks/postmark", json=complaint, headers=postmark_auth()).status_code
        == 200
    )
    assert (state(services).status, state(services).suppressed) == (S.UNSUBSCRIBED, 1)


# --- Mailgun ---


def mailgun_payload(
    event: dict[str, Any],
    now: datetime,
    *,
    key: str = MAILGUN_KEY,
    token: str = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
) -> dict[str, Any]:
    """A webhook body as Mailgun documents it: a signature block and event-data."""
    timestamp = str(int(now.timestamp()))
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": digest},
        "event-data": event,
    }


def mailgun_event(event: str, message_id: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": event,
        "id": event_id,
        "timestamp": 1772442005.0,
        "recipient": RECIPIENT,
        "recipient-domain": "example.com",
        "log-level": "error" if event == "failed" else "info",
        "message": {
            "headers": {
                "message-id": message_id.strip("<>"),
                "from": "course@onward.test",
                "to": RECIPIENT,
                "subject": "Step 1",
            }
        },
        "delivery-status": {
            "code": 550,
            "message": "5.1.1 user unknown",
            "description": "",
            "attempt-no": 1,
        }
        if extra.get("severity") != "temporary"
        else {
            "code": 452,
            "message": "4.2.2 The email account that you tried to reach is over quota.",
            "description": "",
            "attempt-no": 1,
        },
        **extra,
    }


def test_mailgun_permanent_failure_bounces_once(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str
) -> None:
    payload = mailgun_payload(
        mailgun_event("failed", sent, "G9Bn5sl1TC6nu79C8C0bwg", severity="permanent"), clock.now
    )
    assert client.post("/webhooks/mailgun", json=payload).status_code == 200
    after = state(services)
    assert (after.status, after.suppressed, after.events) == (S.BOUNCED, 1, 1)
    assert client.post("/webhooks/mailgun", json=payload).status_code == 200
    assert state(services) == after


@pytest.mark.parametrize("forge", ["wrong key", "another token", "stale timestamp", "no signature"])
def test_mailgun_forgeries_get_403(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str, forge: str
) -> None:
    before = state(services)
    event = mailgun_event("complained", sent, "ev-1")
    if forge == "wrong key":
        payload = mailgun_payload(event, clock.now, key="key-someone-else")
    elif forge == "another token":
        payload = mailgun_payload(event, clock.now)
        payload["signature"]["token"] = "f" * 50
    elif forge == "stale timestamp":
        payload = mailgun_payload(event, clock.now - timedelta(hours=1))
    else:
        payload = {"event-data": event}
    response = client.post("/webhooks/mailgun", json=payload)
    assert response.status_code == 403
    assert state(services) == before


def test_mailgun_a_captured_signature_cannot_carry_another_event(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str
) -> None:
    delivered = mailgun_payload(mailgun_event("delivered", sent, "ev-d"), clock.now)
    assert client.post("/webhooks/mailgun", json=delivered).status_code == 200
    before = state(services)
    # Mailgun signs timestamp + token only: the same signature with a complaint inside.
    forged = delivered | {"event-data": mailgun_event("complained", sent, "ev-other")}
    response = client.post("/webhooks/mailgun", json=forged)
    assert "already applied" in response.get_json()["applied"][0]
    assert state(services) == before


def test_mailgun_complaint_and_delivery(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str
) -> None:
    delivered = mailgun_payload(mailgun_event("delivered", sent, "ev-d"), clock.now, token="t" * 50)
    assert client.post("/webhooks/mailgun", json=delivered).status_code == 200
    assert state(services).delivered
    complained = mailgun_payload(
        mailgun_event("complained", sent, "ev-c"), clock.now, token="u" * 50
    )
    assert client.post("/webhooks/mailgun", json=complained).status_code == 200
    assert (state(services).status, state(services).suppressed) == (S.UNSUBSCRIBED, 1)


# --- SendGrid ---


def sendgrid_post(
    client: FlaskClient,
    events: list[dict[str, Any]],
    now: datetime,
    *,
    key: ec.EllipticCurvePrivateKey = SENDGRID_KEY,
    tamper: Callable[[bytes], bytes] = lambda body: body,
) -> Any:
    body = json.dumps(events).encode()
    timestamp = str(int(now.timestamp()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return client.post(
        "/webhooks/sendgrid",
        data=tamper(body),
        content_type="application/json",
        headers={
            relays.SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
            relays.SENDGRID_TIMESTAMP: timestamp,
        },
    )


def sendgrid_event(event: str, message_id: str, event_id: str, **extra: Any) -> dict[str, Any]:
    """One event as SendGrid's event webhook reference shows it."""
    return {
        "email": RECIPIENT,
        "timestamp": 1772442005,
        "smtp-id": message_id,
        "event": event,
        "category": [],
        "sg_event_id": event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **extra,
    }


def test_sendgrid_signed_events_apply_once(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str
) -> None:
    events = [
        sendgrid_event("delivered", sent, "sg-1", response="250 OK"),
        sendgrid_event(
            "bounce",
            sent,
            "sg-2",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account does not exist.",
        ),
    ]
    assert sendgrid_post(client, events, clock.now).status_code == 200
    after = state(services)
    assert (after.status, after.suppressed, after.events, after.delivered) == (
        S.BOUNCED,
        1,
        2,
        True,
    )
    assert sendgrid_post(client, events, clock.now).status_code == 200
    assert state(services) == after


@pytest.mark.parametrize("forge", ["other key", "tampered body", "stale timestamp"])
def test_sendgrid_forgeries_get_403(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str, forge: str
) -> None:
    before = state(services)
    events = [sendgrid_event("spamreport", sent, "sg-3")]
    if forge == "other key":
        response = sendgrid_post(
            client, events, clock.now, key=ec.generate_private_key(ec.SECP256R1())
        )
    elif forge == "tampered body":
        response = sendgrid_post(
            client,
            events,
            clock.now,
            tamper=lambda body: body.replace(b"spamreport", b"delivered "),
        )
    else:
        response = sendgrid_post(client, events, clock.now - timedelta(hours=2))
    assert response.status_code == 403
    assert state(services) == before


def test_sendgrid_spam_report_and_blocked_bounce(
    client: FlaskClient, services: Services, clock: FakeClock, sent: str
) -> None:
    blocked = [sendgrid_event("bounce", sent, "sg-b", type="blocked", reason="blocked by policy")]
    response = sendgrid_post(client, blocked, clock.now)
    assert response.status_code == 200
    # A block is about our sending, not the address: recorded, nobody bounced.
    assert "blocked" in response.get_json()["applied"][0]
    assert (state(services).status, state(services).suppressed) == (S.ACTIVE, 0)
    assert (
        sendgrid_post(client, [sendgrid_event("spamreport", sent, "sg-s")], clock.now).status_code
        == 200
    )
    assert (state(services).status, state(services).suppressed) == (S.UNSUBSCRIBED, 1)


def test_an_unconfigured_or_unknown_provider_is_404(
    client: FlaskClient, services: Services
) -> None:
    assert client.post("/webhooks/sparkpost", json={}).status_code == 404
