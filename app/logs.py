"""Logging for every Onward process: text or one JSON object a line, never a secret."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

#: Signed links in paths or messages: only their first characters are kept.
_TOKEN_IN_PATH = re.compile(
    r"/(confirm|pause|unsubscribe|manage|read)/([A-Za-z0-9_\-]{6})[A-Za-z0-9_.\-]+"
)
#: Any other signed token (itsdangerous: payload.timestamp.signature), in a query
#: value or anywhere else: its first characters are kept.
_SIGNED_TOKEN = re.compile(
    r"\b([A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{20,}"
)
#: Values of query parameters that carry secrets by name.
_SECRET_QUERY = re.compile(r"([?&](?:token|key|signature|sig|password)=)[^&\s\"]+", re.IGNORECASE)
#: Passwords inside URLs (smtp://user:secret@host, postgresql://user:secret@host).
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")
_STANDARD = set(vars(logging.makeLogRecord({})))


def redact(text: str) -> str:
    """The text with signed link tokens shortened and URL passwords masked."""
    text = _TOKEN_IN_PATH.sub(r"/\1/\2…", text)
    text = _SIGNED_TOKEN.sub(r"\1…", text)
    text = _SECRET_QUERY.sub(r"\1…", text)
    return _URL_PASSWORD.sub(r"\1***@", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message so no full token or password reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName
            if record.processName != "MainProcess"
            else record.process,
            "message": record.getMessage(),
        }
        entry |= {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_") and _jsonable(value)
        }
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False)


def _jsonable(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def configure_logging(log_format: str, *, process: str, level: int = logging.INFO) -> None:
    """Send every log record, redacted, to stderr as text or JSON (LOG_FORMAT)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
