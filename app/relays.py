"""What relays post to our webhooks: each provider's proof checked, its events read as Reports.

- Amazon SES, through Amazon SNS: an RSA signature (SignatureVersion 1: SHA1, 2: SHA256)
  by the certificate at SigningCertURL, which must be on an SNS host over https.
- Postmark: HTTP basic auth with the credentials set in its webhook URL.
- Mailgun: HMAC-SHA256 of timestamp + token with the webhook signing key.
- SendGrid: the signed event webhook, ECDSA P-256 over timestamp + body.

Nothing here touches the database: the web view hands the Reports to `drip.apply_report`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from app.drip import Report
from app.models import MailEventKind

#: Where SNS keeps its signing certificates and subscription-confirmation endpoints.
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
#: A signed request older (or newer) than this is refused: its signature could be replayed.
MAX_CLOCK_SKEW = timedelta(minutes=15)

#: Fetches a URL's body (SNS certificates, subscription confirmations); tests inject one.
Fetcher = Callable[[str], bytes]

K = MailEventKind


class Unverified(Exception):
    """The request does not prove it comes from the provider: answer 403, change nothing."""


class Malformed(ValueError):
    """A verified request whose body cannot be read: answer 400."""


def fetch_url(url: str) -> bytes:
    """GET `url` (https only) with a short timeout."""
    if urlsplit(url).scheme != "https":
        raise Unverified(f"refusing to fetch {url!r}: not https")
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read(256 * 1024)
        return body


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise Malformed(f"the body is not JSON: {error}") from None


def _when(value: object, default: datetime) -> datetime:
    """An ISO 8601 or Unix-seconds timestamp as an aware datetime; `default` if unreadable."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return default


def _fresh(timestamp: str, now: datetime) -> None:
    try:
        signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise Unverified("the signature timestamp is not a Unix time") from None
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise Unverified("the signature timestamp is too old or in the future")


# --- Amazon SES through SNS ---

#: The fields SNS signs, in order, per message type (absent optional fields are skipped).
_SNS_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SNS_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SNS_SIGNED_FIELDS["SubscriptionConfirmation"]


@dataclass
class SnsVerifier:
    """Checks SNS message signatures; certificates are fetched once per URL and kept."""

    fetch: Fetcher = fetch_url
    _certificates: dict[str, x509.Certificate] = field(default_factory=dict)

    def certificate(self, url: str) -> x509.Certificate:
        """The signing certificate at `url`, which must be an https URL on an SNS host."""
        parts = urlsplit(url)
        if (
            parts.scheme != "https"
            or not SNS_HOST.match(parts.hostname or "")
            or parts.port not in (None, 443)
            or not parts.path.endswith(".pem")
        ):
            raise Unverified(f"SigningCertURL {url!r} is not an SNS certificate URL")
        if url not in self._certificates:
            try:
                self._certificates[url] = x509.load_pem_x509_certificate(self.fetch(url))
            except ValueError:
                raise Unverified("SigningCertURL does not hold a PEM certificate") from None
        return self._certificates[url]

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raise Unverified unless `message` is signed by SNS as it says."""
        kind = message.get("Type")
        fields = _SNS_SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None:
            raise Unverified(f"unknown SNS message type {kind!r}")
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(
            str(message.get("SignatureVersion"))
        )
        if algorithm is None:
            raise Unverified("unknown SNS SignatureVersion")
        if not all(isinstance(message.get(name), str) for name in fields if name != "Subject"):
            raise Unverified("the SNS message lacks a signed field")
        signed = "".join(
            f"{name}\n{message[name]}\n"
            for name in fields
            if name != "Subject" or isinstance(message.get("Subject"), str)
        )
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except binascii.Error:
            raise Unverified("the SNS signature is not base64") from None
        key = self.certificate(str(message.get("SigningCertURL", ""))).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Unverified("the SNS certificate does not hold an RSA key")
        try:
            key.verify(signature, signed.encode(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise Unverified("the SNS signature does not match") from None


@dataclass(frozen=True)
class SnsResult:
    """A verified SNS request: reports to apply, or a subscription to confirm."""

    reports: list[Report]
    subscribe_url: str | None = None


def read_ses(
    body: bytes, *, verifier: SnsVerifier, topic_arns: tuple[str, ...], now: datetime
) -> SnsResult:
    """Verify an SNS request and read the SES bounce, complaint or delivery it carries."""
    message = _json(body)
    if not isinstance(message, dict):
        raise Malformed("the SNS message is not a JSON object")
    verifier.verify(message)
    # Anyone can create an SNS topic: the signature proves SNS sent it, the topic that it is ours.
    if message.get("TopicArn") not in topic_arns:
        raise Unverified("the SNS topic is not one in SES_TOPIC_ARN")
    if message["Type"] == "SubscriptionConfirmation":
        url = str(message["SubscribeURL"])
        if urlsplit(url).scheme != "https" or not SNS_HOST.match(urlsplit(url).hostname or ""):
            raise Unverified("SubscribeURL is not an SNS URL")
        return SnsResult([], subscribe_url=url)
    if message["Type"] != "Notification":
        return SnsResult([])
    notification = _json(str(message["Message"]).encode())
    if not isinstance(notification, dict):
        raise Malformed("the SES notification is not a JSON object")
    return SnsResult(ses_reports(notification, sns_id=str(message["MessageId"]), now=now))


def ses_reports(notification: Mapping[str, Any], *, sns_id: str, now: datetime) -> list[Report]:
    """The Reports in one SES notification (notificationType, or eventType for event publishing)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    message_id = (mail.get("commonHeaders") or {}).get("messageId")
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        report_kind = K.HARD_BOUNCE if bounce.get("bounceType") == "Permanent" else K.SOFT_BOUNCE
        people, when = bounce.get("bouncedRecipients") or [], bounce.get("timestamp")
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        report_kind = K.COMPLAINT
        people, when = complaint.get("complainedRecipients") or [], complaint.get("timestamp")
    elif kind == "Delivery":
        delivery = notification.get("delivery") or {}
        report_kind = K.DELIVERED
        people = [{"emailAddress": r} for r in delivery.get("recipients") or []]
        when = delivery.get("timestamp")
    else:
        return []
    return [
        Report(
            source="ses",
            event_id=f"{sns_id}:{person.get('emailAddress', '')}",
            kind=report_kind,
            occurred_at=_when(when, now),
            message_id=message_id,
            recipient=person.get("emailAddress"),
            detail=str(person.get("diagnosticCode") or ""),
            status=person.get("status") if isinstance(person.get("status"), str) else None,
        )
        for person in people
        if isinstance(person, dict)
    ]


# --- Postmark ---

_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError"}
#: An ISP's block or a DMARC refusal is about our sending, not the address.
_POSTMARK_BLOCKED = {"Blocked", "DMARCPolicy"}


def check_basic_auth(authorization: str | None, expected: str) -> None:
    """Raise Unverified unless the Authorization header carries `expected` (user:password)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        given = b""
    if scheme.lower() != "basic" or not hmac.compare_digest(given, expected.encode()):
        raise Unverified("wrong or missing basic auth")


def read_postmark(body: bytes, *, now: datetime) -> list[Report]:
    """Read a Postmark bounce, spam-complaint or delivery webhook (auth already checked)."""
    record = _json(body)
    if not isinstance(record, dict):
        raise Malformed("the Postmark record is not a JSON object")
    record_type = record.get("RecordType")
    if record_type == "Delivery":
        recipient, when = record.get("Recipient"), record.get("DeliveredAt")
        report_kind = K.DELIVERED
    elif record_type == "SpamComplaint" or record.get("Type") == "SpamComplaint":
        recipient, when, report_kind = record.get("Email"), record.get("BouncedAt"), K.COMPLAINT
    elif record_type == "Bounce" and record.get("Type") in _POSTMARK_HARD:
        recipient, when, report_kind = record.get("Email"), record.get("BouncedAt"), K.HARD_BOUNCE
    elif record_type == "Bounce" and record.get("Type") in _POSTMARK_SOFT:
        recipient, when, report_kind = record.get("Email"), record.get("BouncedAt"), K.SOFT_BOUNCE
    elif record_type == "Bounce" and record.get("Type") in _POSTMARK_BLOCKED:
        recipient, when, report_kind = record.get("Email"), record.get("BouncedAt"), K.BLOCKED
    else:
        return []  # auto-replies, opens, clicks: nothing for the list
    # Postmark's MessageID is its own; bounces carry an ID of their own too.
    event = record.get("ID") or record.get("MessageID")
    return [
        Report(
            source="postmark",
            event_id=f"{record_type}:{event}:{recipient}",
            kind=report_kind,
            occurred_at=_when(when, now),
            recipient=recipient if isinstance(recipient, str) else None,
            detail=str(record.get("Details") or record.get("Description") or ""),
        )
    ]


# --- Mailgun ---


def read_mailgun(body: bytes, *, signing_key: str, now: datetime) -> list[Report]:
    """Verify a Mailgun webhook's signature and read its event (one per signed token)."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Unverified("the Mailgun payload is not a JSON object")
    signature = payload.get("signature") or {}
    timestamp, token = str(signature.get("timestamp", "")), str(signature.get("token", ""))
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), str(signature.get("signature", ""))):
        raise Unverified("the Mailgun signature does not match")
    _fresh(timestamp, now)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Malformed("the Mailgun payload has no event-data")
    event = data.get("event")
    if event == "failed":
        report_kind = K.HARD_BOUNCE if data.get("severity") == "permanent" else K.SOFT_BOUNCE
    elif event == "complained":
        report_kind = K.COMPLAINT
    elif event == "delivered":
        report_kind = K.DELIVERED
    else:
        return []
    headers = (data.get("message") or {}).get("headers") or {}
    status = data.get("delivery-status") or {}
    return [
        Report(
            source="mailgun",
            # The signature covers the token, not the event: keying on the token means a
            # captured signature cannot carry a second, altered event.
            event_id=f"token:{token}",
            kind=report_kind,
            occurred_at=_when(data.get("timestamp"), now),
            message_id=headers.get("message-id"),
            recipient=data.get("recipient"),
            # Mailgun's own codes (605: not delivering to a previously bounced address)
            # are no SMTP answer: only a 4xx or 5xx code is quoted as one.
            detail=_mailgun_answer(status),
        )
    ]


def _mailgun_answer(status: Mapping[str, Any]) -> str:
    code, text = status.get("code"), str(status.get("message") or status.get("description") or "")
    if isinstance(code, int) and 400 <= code < 600:
        return f"{code} {text}".strip()
    return text


# --- SendGrid ---

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def sendgrid_key(setting: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or as PEM."""
    text = setting.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text))
    except (ValueError, binascii.Error):
        raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA key")
    return key


def read_sendgrid(
    body: bytes, *, signature_header: str, timestamp: str, public_key: str, now: datetime
) -> list[Report]:
    """Verify a SendGrid signed event webhook (its two X-Twilio headers) and read its events."""
    try:
        signature = base64.b64decode(signature_header, validate=True)
        sendgrid_key(public_key).verify(
            signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (binascii.Error, InvalidSignature):
        raise Unverified("the SendGrid signature does not match") from None
    _fresh(timestamp, now)
    events = _json(body)
    if not isinstance(events, list):
        raise Malformed("the SendGrid body is not a JSON array")
    reports = []
    for event in events:
        if not isinstance(event, dict):
            continue
        name = event.get("event")
        if name == "bounce":
            # SendGrid calls a refusal for the sender's reputation "blocked": not the address.
            report_kind = K.BLOCKED if event.get("type") == "blocked" else K.HARD_BOUNCE
        elif name == "spamreport":
            report_kind = K.COMPLAINT
        elif name == "delivered":
            report_kind = K.DELIVERED
        else:
            continue
        reports.append(
            Report(
                source="sendgrid",
                event_id=str(event.get("sg_event_id") or ""),
                kind=report_kind,
                occurred_at=_when(event.get("timestamp"), now),
                message_id=event.get("smtp-id"),
                recipient=event.get("email"),
                detail=str(event.get("reason") or event.get("response") or ""),
                status=event.get("status") if isinstance(event.get("status"), str) else None,
            )
        )
    return [report for report in reports if report.event_id]
