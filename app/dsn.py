"""Bounce mail read as Reports: delivery status notifications (RFC 3464), other bounce
formats flufl.bounce knows, and abuse reports from feedback loops (ARF, RFC 5965).

Which email a bounce is about comes from the VERP return path it was sent to
(RETURN_PATH with each email's token), else the original's Message-ID quoted in it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from email.utils import getaddresses, parseaddr

from app.drip import Report
from app.models import MailEventKind

#: Headers where a receiving server records which of our addresses a message came to.
_ARRIVAL_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
#: ARF feedback types that mean "this person does not want this mail".
_COMPLAINT_TYPES = {"abuse", "fraud", "other"}


def verp_token(message_id: str) -> str:
    """The token a Message-ID puts in the return path: its left-hand side."""
    return message_id.strip().strip("<>").rpartition("@")[0]


def verp_address(template: str, message_id: str) -> str:
    """RETURN_PATH with this email's token, e.g. bounces+step-3.ab12@example.com."""
    return template.replace("{token}", verp_token(message_id))


def _verp_pattern(template: str) -> re.Pattern[str]:
    before, _, after = template.partition("{token}")
    return re.compile(
        re.escape(before) + r"(?P<token>[A-Za-z0-9._=-]+)" + re.escape(after), re.IGNORECASE
    )


def _message_id_from_verp(message: Message, template: str | None, domain: str) -> str | None:
    if template is None:
        return None
    pattern = _verp_pattern(template)
    values = [str(value) for name in _ARRIVAL_HEADERS for value in message.get_all(name) or []]
    for _name, address in getaddresses(values):
        found = pattern.fullmatch(address)
        if found:
            return f"<{found.group('token')}@{domain}>"
    return None


def _attached_headers(report: Message) -> Message | None:
    """The original message's headers, from a message/rfc822 or text/rfc822-headers part."""
    for part in report.walk():
        if part is report:
            continue
        content_type = part.get_content_type()
        if content_type in {"message/rfc822", "message/rfc822-headers"}:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if content_type == "text/rfc822-headers":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return message_from_bytes(data)
    return None


def _recipient_answers(report: Message) -> dict[str, tuple[str, str | None]]:
    """Per failed recipient of a DSN (RFC 3464): the remote answer and the Status field.

    Keys are lowercased addresses from Final-Recipient (and Original-Recipient).
    """
    answers: dict[str, tuple[str, str | None]] = {}
    for part in report.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, Message):
                continue
            diagnostic = str(block.get("Diagnostic-Code") or "").strip()
            status = str(block.get("Status") or "").strip() or None
            for name in ("Final-Recipient", "Original-Recipient"):
                address = str(block.get(name) or "").partition(";")[2].strip().strip("<>")
                if address:
                    answers[address.lower()] = (diagnostic, status)
    return answers


def _event_id(message: Message, raw: bytes) -> str:
    """The report's own Message-ID, or a digest of its bytes when it has none."""
    own = str(message.get("Message-ID") or "").strip()
    return own or "sha256:" + hashlib.sha256(raw).hexdigest()


def reports_in(raw: bytes, *, return_path: str | None, domain: str, now: datetime) -> list[Report]:
    """The bounces and complaints one piece of mail reports; [] when it reports none."""
    message = message_from_bytes(raw)
    original = _attached_headers(message)
    message_id = _message_id_from_verp(message, return_path, domain) or (
        str(original.get("Message-ID") or "").strip() or None if original is not None else None
    )
    event_id = _event_id(message, raw)
    if message.get_content_type() == "multipart/report" and (
        message.get_param("report-type") == "feedback-report"
    ):
        return _arf(message, original, message_id, event_id, now)
    # Imported here: the sending worker needs this module only for `verp_address`.
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(message)
    answers = _recipient_answers(message)
    reports = []
    for kind, addresses in (
        (MailEventKind.HARD_BOUNCE, permanent),
        (MailEventKind.SOFT_BOUNCE, temporary - permanent),
    ):
        for raw_address in sorted(addresses):
            address = raw_address.decode(errors="replace")
            # The status code, when the DSN gives one, lets the failure table say
            # whether the bounce is about the address or about our sending.
            diagnostic, status = answers.get(address.lower(), ("", None))
            reports.append(
                Report(
                    source="dsn",
                    event_id=f"{event_id}:{address}",
                    kind=kind,
                    occurred_at=now,
                    message_id=message_id,
                    recipient=address,
                    detail=diagnostic,
                    status=status,
                )
            )
    return reports


def _arf(
    message: Message,
    original: Message | None,
    message_id: str | None,
    event_id: str,
    now: datetime,
) -> list[Report]:
    """An abuse report (RFC 5965): the recipient marked our email as spam."""
    fields: Message | None = None
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                fields = payload[0]
            elif isinstance(payload, str):
                fields = message_from_bytes(payload.encode())
    if fields is None:
        return []
    feedback_type = str(fields.get("Feedback-Type") or "").strip().lower()
    if feedback_type not in _COMPLAINT_TYPES:
        return []
    recipient = parseaddr(str(fields.get("Original-Rcpt-To") or ""))[1] or (
        parseaddr(str(original.get("To") or ""))[1] if original is not None else ""
    )
    return [
        Report(
            source="arf",
            event_id=event_id,
            kind=MailEventKind.COMPLAINT,
            occurred_at=now,
            message_id=message_id,
            recipient=recipient or None,
            detail=f"{feedback_type} report from {fields.get('User-Agent') or 'unknown'}",
        )
    ]
