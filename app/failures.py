"""Failure classes: what a refused or failed email means, decided by one table.

Every SMTP answer that is not a success is classified once, by the stage of the
SMTP conversation it came at and by its basic and enhanced status codes
(RFC 3463, RFC 5248). The class says who is affected: one recipient, the whole
sender, or nobody but us. Nothing here talks to a relay or a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Where in the SMTP conversation an answer came."""

    CONNECT = "connect"  # connecting, greeting, EHLO, STARTTLS, AUTH
    MAIL = "mail"  # MAIL FROM
    RCPT = "rcpt"  # RCPT TO
    DATA = "data"  # DATA and the answer after the message


class FailureClass(StrEnum):
    """Who a failure is about, and so what sending does about it."""

    #: The address does not exist or refuses mail for good: bounce that subscription.
    RECIPIENT_PERMANENT = "recipient_permanent"
    #: The mailbox cannot take the email now: retry that email with backoff.
    RECIPIENT_TEMPORARY = "recipient_temporary"
    #: Our sender, message or a policy was refused: nobody bounced, the breaker opens.
    SENDER = "sender"
    #: The relay cannot be reached, or refused our login or TLS: the breaker opens.
    RELAY = "relay"
    #: The relay asks us to send more slowly: the whole sender slows down.
    THROTTLED = "throttled"
    #: We could not build or encode the email: never counted against anyone.
    OURS = "ours"

    @property
    def bounces(self) -> bool:
        """Whether this class ends the subscription when the email gives up."""
        return self in (FailureClass.RECIPIENT_PERMANENT, FailureClass.RECIPIENT_TEMPORARY)

    @property
    def stops_sender(self) -> bool:
        """Whether this class opens the relay breaker (the whole sender waits)."""
        return self in (FailureClass.SENDER, FailureClass.RELAY)


@dataclass(frozen=True)
class Rule:
    """One row of the table: answers it matches, and their class.

    `stages` empty means any stage; `codes` empty means any basic code;
    `enhanced` is a prefix of the enhanced code ("5.1." or "4.2.2"), "" for any.
    """

    cls: FailureClass
    stages: frozenset[Stage] = frozenset()
    codes: frozenset[int] | range = frozenset()
    enhanced: str = ""
    why: str = ""

    def matches(self, stage: Stage, code: int, enhanced: str | None) -> bool:
        """Whether this row covers the answer."""
        if self.stages and stage not in self.stages:
            return False
        if self.codes and code not in self.codes:
            return False
        return self.enhanced == "" or (enhanced or "").startswith(self.enhanced)


_ADDRESSED = frozenset({Stage.RCPT, Stage.DATA})
#: At RCPT a 4.3.x or 4.4.x is about reaching that recipient's host, not our relay.
_UNADDRESSED = frozenset({Stage.MAIL, Stage.DATA})
_4XX = range(400, 500)
_5XX = range(500, 600)
F = FailureClass

#: The table, first match wins. Basic codes alone are ambiguous; the stage and the
#: enhanced code say whom an answer is about.
RULES: tuple[Rule, ...] = (
    Rule(F.THROTTLED, codes=frozenset({421}), why="421: service closing, often a rate limit"),
    Rule(F.THROTTLED, codes=frozenset({454}), why="454: temporarily unable, slow down"),
    Rule(
        F.THROTTLED,
        codes=frozenset({450, 451, 452}),
        enhanced="4.7.",
        why="4.7.x at 450/451/452: too many, rate or policy limit for now",
    ),
    Rule(F.RELAY, stages=frozenset({Stage.CONNECT}), why="greeting, TLS or login refused"),
    Rule(F.SENDER, enhanced="5.1.7", why="5.1.7: our sender's address is bad"),
    Rule(F.SENDER, enhanced="5.1.8", why="5.1.8: our sender's domain is bad"),
    Rule(F.SENDER, stages=frozenset({Stage.MAIL}), why="MAIL FROM refused: about our sender"),
    Rule(F.RECIPIENT_TEMPORARY, stages=_ADDRESSED, enhanced="4.2.2", why="4.2.2: mailbox full"),
    Rule(F.RECIPIENT_TEMPORARY, stages=_ADDRESSED, enhanced="5.2.2", why="5.2.2: mailbox full"),
    Rule(F.RECIPIENT_PERMANENT, stages=_ADDRESSED, codes=_5XX, enhanced="5.1.", why="5.1.x: bad"),
    Rule(F.RECIPIENT_PERMANENT, stages=_ADDRESSED, enhanced="5.2.1", why="5.2.1: mailbox disabled"),
    Rule(F.SENDER, enhanced="5.7.", why="5.7.x: security or policy, about our message"),
    Rule(F.SENDER, enhanced="5.3.", why="5.3.x: mail system, message too big"),
    Rule(F.SENDER, enhanced="5.5.", why="5.5.x: protocol, our client"),
    Rule(F.SENDER, enhanced="5.6.", why="5.6.x: message content or encoding"),
    Rule(F.RELAY, stages=_UNADDRESSED, enhanced="4.3.", why="4.3.x: the relay's own system"),
    Rule(F.RELAY, stages=_UNADDRESSED, enhanced="4.4.", why="4.4.x: the relay's network"),
    Rule(F.RECIPIENT_TEMPORARY, stages=frozenset({Stage.RCPT}), codes=_4XX, why="4xx at RCPT"),
    Rule(F.RECIPIENT_PERMANENT, stages=frozenset({Stage.RCPT}), codes=_5XX, why="5xx at RCPT"),
    Rule(F.RECIPIENT_TEMPORARY, stages=frozenset({Stage.DATA}), enhanced="4.2.", why="4.2.x"),
    Rule(F.SENDER, stages=frozenset({Stage.DATA}), codes=_5XX, why="5xx after DATA: about us"),
    Rule(F.RELAY, stages=frozenset({Stage.DATA}), codes=_4XX, why="4xx after DATA: the relay"),
)

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_code(text: str) -> str | None:
    """The enhanced status code at the start of an answer's text ("5.1.1"), if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify(stage: Stage, code: int, text: str = "") -> Rule:
    """The table row for an SMTP answer: its class and why."""
    enhanced = enhanced_code(text)
    for rule in RULES:
        if rule.matches(stage, code, enhanced):
            return rule
    # Unlisted answers are never blamed on a subscriber.
    return Rule(F.RELAY, why="unlisted answer")


#: A remote server's answer as relays and DSNs quote it: "smtp; 550-5.1.1 text", "550 text".
_REPORTED = re.compile(r"^\s*(?:[\w-]+\s*;\s*)?(?:([45]\d\d)(?:[\s-]+|$))?(.*)$", re.DOTALL)


def classify_reported(answer: str | None, *, status: str | None = None, permanent: bool) -> Rule:
    """The table row for a bounce reported after the relay accepted the email.

    A DSN or a provider's event quotes the remote server's `answer` (Diagnostic-Code,
    diagnosticCode, delivery-status) and/or an enhanced `status` ("5.1.1"). Such an
    answer was about delivering to one recipient, so it is read as at RCPT: a 5.1.x
    is that address's, a 5.7.x (spam, DMARC, reputation) ours. With no code at all,
    the report's own verdict (`permanent` or not) decides.
    """
    match = _REPORTED.match(answer or "")
    basic, text = (match.group(1), match.group(2)) if match else (None, "")
    enhanced = enhanced_code(text) or enhanced_code(status or "")
    if basic is None and enhanced is None:
        cls = F.RECIPIENT_PERMANENT if permanent else F.RECIPIENT_TEMPORARY
        return Rule(cls, why="reported without a status code: the report's own verdict")
    if enhanced is not None and enhanced_code(text) is None:
        text = f"{enhanced} {text}"
    if basic is None:
        basic = "550" if enhanced is not None and enhanced.startswith("5") else "450"
    return classify(Stage.RCPT, int(basic), text)
