"""SMTP delivery over one reused connection, with failures sorted into what to do next."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from email import policy
from email.message import EmailMessage
from email.utils import parseaddr
from types import TracebackType

from app.config import SmtpSettings
from app.dkim import DkimSigner
from app.failures import FailureClass, Rule, Stage, classify

log = logging.getLogger(__name__)


class DeliveryFailure(Exception):
    """An email was not delivered; `rule` says which failure class and why."""

    def __init__(self, detail: str, rule: Rule) -> None:
        super().__init__(detail)
        self.rule = rule

    @property
    def cls(self) -> FailureClass:
        """The failure class (who is affected)."""
        return self.rule.cls


def _failure(stage: Stage, code: int, reason: bytes | str, what: str) -> DeliveryFailure:
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    detail = f"{what}: {code} {text}".strip()
    return DeliveryFailure(detail, classify(stage, code, text))


def _ours(detail: str) -> DeliveryFailure:
    return DeliveryFailure(detail, Rule(FailureClass.OURS, why="we could not encode the email"))


def signing_failure(error: Exception) -> DeliveryFailure:
    """What a message that cannot be signed (or encoded to sign) fails with: our problem."""
    return _ours(f"cannot encode the message: {error!r}")


def _relay(detail: str) -> DeliveryFailure:
    return DeliveryFailure(detail, Rule(FailureClass.RELAY, why="the relay cannot be reached"))


class SmtpMailer:
    """Sends messages through one SMTP connection, opened on first use and reused.

    Use it as a context manager so the connection is closed when the batch ends.
    """

    def __init__(self, settings: SmtpSettings, *, signer: DkimSigner | None = None) -> None:
        self._settings = settings
        self._signer = signer
        self._connection: smtplib.SMTP | None = None
        #: A message is started and not yet ended: the relay waits for the rest of its data.
        self._mid_message = False

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
            # The message's final "." goes out in a write of its own, after its
            # `handed_at` mark: without this, Nagle's algorithm would hold it back
            # until the relay's delayed ACK of the body (tens of milliseconds).
            if connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.ehlo()
            if settings.starttls:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if settings.username:
                connection.login(settings.username, settings.password or "")
        except (OSError, smtplib.SMTPException) as error:
            if connection is not None:
                connection.close()
            where = f"SMTP relay {settings.host}:{settings.port}"
            if isinstance(error, smtplib.SMTPResponseException):
                raise _failure(Stage.CONNECT, error.smtp_code, error.smtp_error, where) from error
            raise _relay(f"cannot reach {where}: {error}") from error
        return connection

    def send(
        self,
        message: EmailMessage | bytes,
        *,
        to: str,
        envelope_from: str | None = None,
    ) -> None:
        """Hand one message for the envelope address `to` to the relay.

        Raises DeliveryFailure, classified by SMTP stage and status code, if it
        is not accepted. A non-ASCII address goes out with SMTPUTF8, which the
        relay must offer. `envelope_from` (MAIL FROM, where bounces go: the VERP
        return path) defaults to the From address. A message given as bytes is
        already in wire form (CRLF line ends) and needs `envelope_from`. The course's
        emails go through `start` and `end` instead (app/sending.py).
        """
        if isinstance(message, bytes):
            if not envelope_from:
                raise _ours("a message given as bytes needs an envelope sender")
            sender = envelope_from
        else:
            sender = envelope_from or parseaddr(str(message["From"]))[1]
        utf8 = not to.isascii() or not sender.isascii()
        options = ["SMTPUTF8"] if utf8 else []
        if isinstance(message, bytes):
            payload = message
        else:
            # SMTP wants CRLF line ends; smtplib does not convert a bytes payload itself.
            wire = message.policy.clone(linesep="\r\n")
            if utf8:
                wire = policy.SMTPUTF8.clone(linesep="\r\n", refold_source="none")
            try:
                payload = message.as_bytes(policy=wire)
            except (UnicodeError, ValueError) as error:
                raise _ours(f"cannot encode the message: {error!r}") from error
        transaction = self.start(self.sign(payload), to=to, envelope_from=sender, options=options)
        self.end(transaction)

    def start(
        self, payload: bytes, *, to: str, envelope_from: str, options: list[str] | None = None
    ) -> Transaction:
        """Begin one wire-form, signed message: the relay gets all of it but its final ".".

        Raises DeliveryFailure as `send` does. End it with `end`, or `abandon` it.
        """
        return self.proceed(
            self.begin(payload, to=to, envelope_from=envelope_from, options=options)
        )

    def begin(
        self,
        payload: bytes,
        *,
        to: str,
        envelope_from: str,
        options: list[str] | None = None,
        attempt: int = 1,
    ) -> Transaction:
        """The first half of `start`: send the envelope, without waiting for the relay's
        answers where it offers PIPELINING. Go on with `proceed`.

        Several connections' envelopes can be sent before any answer is read, so their
        round trips overlap. Raises DeliveryFailure as `send` does.
        """
        if options is None:
            utf8 = not to.isascii() or not envelope_from.isascii()
            options = ["SMTPUTF8"] if utf8 else []
        for tries in range(attempt, 3):
            if self._connection is None:
                self._connection = self._connect()
            transaction = Transaction(self._connection, envelope_from, to, payload, options)
            transaction.attempt = tries
            try:
                transaction.send_envelope()
                return transaction
            except (smtplib.SMTPException, OSError, UnicodeError) as error:
                failure = self._failure_of(error, transaction, last_try=tries == 2)
                if failure is not None:
                    raise failure from error
        raise AssertionError("unreachable: the second try raises")

    def proceed(self, transaction: Transaction) -> Transaction:
        """The second half of `start`: read the envelope's answers and send the message
        but its final "."; return the transaction that holds it (a new one, on a new
        connection, if the relay had closed the reused one while it was idle)."""
        try:
            transaction.send_message()
            self._mid_message = True
            return transaction
        except (smtplib.SMTPException, OSError, UnicodeError) as error:
            failure = self._failure_of(error, transaction, last_try=transaction.attempt == 2)
            if failure is not None:
                raise failure from error
        retry = self.begin(
            transaction.payload,
            to=transaction.to,
            envelope_from=transaction.sender,
            options=transaction.options,
            attempt=2,
        )
        return self.proceed(retry)

    def end(self, transaction: Transaction) -> None:
        """Send a started message's final "." and read the answer; raise DeliveryFailure
        if it is not accepted."""
        self.send_end(transaction)
        self.read_end(transaction)

    def send_end(self, transaction: Transaction) -> None:
        """The first half of `end`: send the final "." (several connections' can go out
        before any answer is read). Raises DeliveryFailure if the connection is lost."""
        self._mid_message = False
        try:
            transaction.send_end()
        except OSError as error:
            failure = self._failure_of(error, transaction, last_try=True)
            assert failure is not None
            raise failure from error

    def read_end(self, transaction: Transaction) -> None:
        """The second half of `end`: read the answer to the final "."; raise
        DeliveryFailure if the message is not accepted."""
        try:
            transaction.read_end()
        except (smtplib.SMTPException, OSError) as error:
            failure = self._failure_of(error, transaction, last_try=True)
            assert failure is not None
            raise failure from error

    def abandon(self) -> None:
        """Give up the started message: the connection closes without its final ".", so
        the relay discards it."""
        self._drop()

    def _failure_of(
        self, error: BaseException, transaction: Transaction, *, last_try: bool
    ) -> DeliveryFailure | None:
        """The classified failure of an SMTP exception; None to try once more on a fresh
        connection (a reused one the relay closed while idle)."""
        sender, to = transaction.sender, transaction.to
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            code, reason = next(iter(error.recipients.values()))
            self._drop_after(code)
            # The address stays out of the error: the ledger row names the subscriber,
            # and refusals of many addresses then read (and group) as one.
            return _failure(Stage.RCPT, code, reason, "recipient refused")
        if isinstance(error, smtplib.SMTPSenderRefused):
            self._drop_after(error.smtp_code)
            return _failure(
                Stage.MAIL, error.smtp_code, error.smtp_error, f"sender {sender} refused"
            )
        if isinstance(error, smtplib.SMTPDataError):
            self._drop_after(error.smtp_code)
            return _failure(Stage.DATA, error.smtp_code, error.smtp_error, "message refused")
        if isinstance(error, smtplib.SMTPNotSupportedError):
            return _ours(f"the relay does not offer SMTPUTF8, needed for {to!r}")
        if isinstance(error, UnicodeError):
            return _ours(f"cannot encode the envelope for {to!r}: {error!r}")
        if isinstance(error, (smtplib.SMTPServerDisconnected, OSError)) and not isinstance(
            error, smtplib.SMTPResponseException
        ):
            self._drop()
            if transaction.ended:
                # The relay had the whole message and its final "."; the answer never
                # came. It may have the email: trying again at once on a new connection
                # would send it twice in the common case. It waits, as any relay
                # failure does, and goes again later (at least once).
                return _relay(f"SMTP connection lost after the end of the message: {error}")
            # A reused connection may have been closed by the relay while idle:
            # reconnect once before calling the relay unavailable.
            return _relay(f"SMTP connection lost: {error}") if last_try else None
        self._drop()
        if isinstance(error, smtplib.SMTPResponseException):
            return _failure(Stage.CONNECT, error.smtp_code, error.smtp_error, "SMTP error")
        return _relay(f"SMTP error: {error}")

    def sign(self, payload: bytes) -> bytes:
        """The wire-form message with its DKIM signature, if DKIM is set up."""
        try:
            return payload if self._signer is None else self._signer.sign(payload)
        except (UnicodeError, ValueError) as error:
            raise signing_failure(error) from error

    def _drop_after(self, code: int) -> None:
        # 421 means the relay is closing the connection (smtplib has closed it).
        if code == 421:
            self._drop()

    def _drop(self) -> None:
        self._mid_message = False
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                log.debug("closing a broken SMTP connection failed", exc_info=True)

    def close(self) -> None:
        """Say goodbye to the relay and close the connection, if one is open."""
        if self._mid_message:
            # A QUIT now would be read as part of the message: abandon it instead.
            self.abandon()
            return
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (OSError, smtplib.SMTPException):
            connection.close()


class Transaction:
    """One SMTP mail transaction on an open connection, as smtplib's `sendmail` runs it,
    in four steps that the caller may interleave with other connections' (see
    `SmtpMailer`): `send_envelope` (MAIL, RCPT and DATA, in one write when the relay
    offers PIPELINING, RFC 2920), `send_message` (their answers, then the message but
    its final "."), `send_end` (the ".") and `read_end` (its answer). Each raises
    smtplib's exceptions as `sendmail` does."""

    def __init__(
        self, connection: smtplib.SMTP, sender: str, to: str, payload: bytes, options: list[str]
    ) -> None:
        self.connection = connection
        self.sender = sender
        self.to = to
        self.payload = payload
        self.options = options
        #: The final "." went out: from here on the relay may have the email.
        self.ended = False
        #: Which try of `SmtpMailer.begin` this is (the second is on a new connection).
        self.attempt = 1
        #: The answer to DATA, once read (see `send_envelope`).
        self._data: tuple[int, bytes] | None = None

    def send_envelope(self) -> None:
        """Send MAIL, RCPT and DATA: in one write, without reading the answers, when the
        relay offers PIPELINING; otherwise one by one, reading each answer (and then
        `send_message` only sends the message)."""
        connection = self.connection
        options = list(self.options)
        if connection.has_extn("size"):
            options.append(f"SIZE={len(self.payload)}")
        if self.options or not connection.has_extn("pipelining"):
            # SMTPUTF8 (the only option we pass) changes how commands are encoded:
            # smtplib's own commands take care of it.
            self._expect(connection.mail(self.sender, options), mail=True)
            self._expect(connection.rcpt(self.to), rcpt=True)
            connection.putcmd("data")
            self._data = connection.getreply()
            return
        extra = "".join(f" {option}" for option in options)
        connection.send(
            f"MAIL FROM:{smtplib.quoteaddr(self.sender)}{extra}\r\n"
            f"RCPT TO:{smtplib.quoteaddr(self.to)}\r\n"
            "DATA\r\n"
        )

    def send_message(self) -> None:
        """Read the envelope's answers (if `send_envelope` left them) and send the message
        but its final "."."""
        connection = self.connection
        data = self._data
        if data is None:
            mail = connection.getreply()
            rcpt = self._reply_or_closed()
            data = self._reply_or_closed()
            if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
                # A relay that took DATA after refusing the sender or the recipient:
                # end the empty message at once, to be refused for lack of a recipient.
                connection.send(b".\r\n")
                self._reply_or_closed()
            self._expect(mail, mail=True)
            self._expect(rcpt, rcpt=True)
        if data[0] != 354:
            self._refused(data, smtplib.SMTPDataError(*data))
        body = self.payload
        # Dot-stuffing (RFC 5321, 4.5.2): a line that starts with "." gets another.
        # Quoted-printable's soft breaks make such lines in most emails; bytes.replace
        # does it several times faster than a regular expression.
        if b"\n." in body:
            body = body.replace(b"\n.", b"\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        connection.send(body)

    def send_end(self) -> None:
        """Send the final ".": from here on the relay may have the email."""
        self.ended = True
        self.connection.send(b".\r\n")

    def read_end(self) -> None:
        """Read the answer to the final "."."""
        answer = self.connection.getreply()
        if answer[0] != 250:
            self._refused(answer, smtplib.SMTPDataError(*answer))

    def _reply_or_closed(self) -> tuple[int, bytes]:
        # After a 421 the relay closes the connection: the answers that follow never come.
        try:
            return self.connection.getreply()
        except smtplib.SMTPServerDisconnected:
            return (421, b"connection closed")

    def _expect(self, reply: tuple[int, bytes], *, mail: bool = False, rcpt: bool = False) -> None:
        code, text = reply
        if mail and code != 250:
            self._refused(reply, smtplib.SMTPSenderRefused(code, text, self.sender))
        if rcpt and code not in (250, 251):
            self._refused(reply, smtplib.SMTPRecipientsRefused({self.to: (code, text)}))

    def _refused(self, reply: tuple[int, bytes], error: smtplib.SMTPException) -> None:
        if reply[0] == 421:
            self.connection.close()
        else:
            try:
                self.connection.rset()
            except OSError:  # smtplib's errors are OSErrors; the refusal is what matters
                log.debug("RSET after a refusal failed", exc_info=True)
        raise error
