"""SMTP delivery over one reused connection, with failures sorted into what to do next."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import parseaddr
from types import TracebackType

from app.config import SmtpSettings
from app.dkim import DkimSigner

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """An email was not accepted by the relay."""


class TemporaryFailure(DeliveryError):
    """The relay refused this email for now (4xx): try again later."""


class PermanentFailure(DeliveryError):
    """The relay refused this recipient for good (5xx): the address bounced."""


class RelayUnavailable(TemporaryFailure):
    """The relay could not be reached or dropped the connection: nothing is wrong with the email."""


class SmtpMailer:
    """Sends messages through one SMTP connection, opened on first use and reused.

    Use it as a context manager so the connection is closed when the batch ends.
    """

    def __init__(self, settings: SmtpSettings, *, signer: DkimSigner | None = None) -> None:
        self._settings = settings
        self._signer = signer
        self._connection: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpMailer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        settings = self._settings
        connection: smtplib.SMTP | None = None
        try:
            if settings.tls:
                connection = smtplib.SMTP_SSL(
                    settings.host,
                    settings.port,
                    timeout=settings.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                connection = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
            connection.ehlo()
            if settings.starttls:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if settings.username:
                connection.login(settings.username, settings.password or "")
        except (OSError, smtplib.SMTPException) as error:
            if connection is not None:
                connection.close()
            if isinstance(error, smtplib.SMTPAuthenticationError):
                raise RelayUnavailable(f"SMTP login refused by {settings.host}: {error}") from error
            raise RelayUnavailable(
                f"cannot reach SMTP relay {settings.host}:{settings.port}: {error}"
            ) from error
        return connection

    def send(self, message: EmailMessage, *, envelope_from: str | None = None) -> None:
        """Hand one message to the relay; raise a DeliveryError subclass if it is refused.

        `envelope_from` (MAIL FROM, where bounces go) defaults to the From address.
        """
        sender = envelope_from or parseaddr(str(message["From"]))[1]
        recipient = parseaddr(str(message["To"]))[1]
        # SMTP wants CRLF line ends; smtplib does not convert a bytes payload itself.
        payload = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        if self._signer is not None:
            payload = self._signer.sign(payload)
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._connection.sendmail(sender, [recipient], payload)
                return
            except smtplib.SMTPRecipientsRefused as error:
                code, reason = error.recipients[recipient]
                raise _refusal(code, reason) from error
            except smtplib.SMTPSenderRefused as error:
                # Our own From address was refused: a setting to fix, not the recipient's fault.
                raise RelayUnavailable(
                    f"relay refused sender {sender}: {error.smtp_code} {error.smtp_error!r}"
                ) from error
            except smtplib.SMTPDataError as error:
                raise _refusal(error.smtp_code, error.smtp_error) from error
            except (smtplib.SMTPServerDisconnected, OSError) as error:
                # A reused connection may have been closed by the relay while idle:
                # reconnect once before calling the relay unavailable.
                self._drop()
                if attempt == 2:
                    raise RelayUnavailable(f"SMTP connection lost: {error}") from error
            except smtplib.SMTPException as error:
                self._drop()
                raise TemporaryFailure(f"SMTP error: {error}") from error

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                log.debug("closing a broken SMTP connection failed", exc_info=True)

    def close(self) -> None:
        """Say goodbye to the relay and close the connection, if one is open."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (OSError, smtplib.SMTPException):
            connection.close()


def _refusal(code: int, reason: bytes | str) -> DeliveryError:
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    detail = f"{code} {text}".strip()
    if 400 <= code < 500:
        return TemporaryFailure(detail)
    return PermanentFailure(detail)
