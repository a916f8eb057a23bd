"""Structured logs: every line the process logs is one JSON object.

    {"time": "2026-01-05T14:03:12.417+00:00", "level": "INFO", "logger": "gateway.access",
     "message": "GET /api/Lot/{id} 200", "pid": 4711, "request_id": "9f1c2b7a0d4e8c31", ...}

Fields: time (UTC, ISO 8601, milliseconds), level, logger, message, pid, request_id (the
X-Request-ID of the request being served, when there is one), exception (the traceback as
text, when one was logged), and whatever structured fields the caller passed as
`extra={"fields": {...}}` (the access log's method, route, status, ms, ...).

JSON encoding escapes every control character (and, with ensure_ascii, everything beyond
ASCII), so no text from a client (a path, a header, a username) can start a line of its own
or pass for another entry: a reader splits on newlines and parses each line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from gateway.context import REQUEST_ID

# Built once: json.dumps with any option builds an encoder per call. ensure_ascii: the
# line is plain ASCII whatever the text; default=str: any other value as its text.
_ENCODE = json.JSONEncoder(ensure_ascii=True, default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. Cheap enough for a line per request: the
    time's text is made once a second, the encoder once."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def timestamp(self, created: float) -> str:
        """`created` in UTC as ISO 8601 with milliseconds, as gateway/audit.py writes it."""
        second = int(created)
        micros = round((created - second) * 1e6)  # as datetime rounds a timestamp
        if micros >= 1_000_000:
            second, micros = second + 1, 0
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format
            message = f"unformattable log message: {record.msg!r} % {record.args!r}"
        line: dict[str, Any] = {
            "time": self.timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODE(line)


def configure(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Every logger of the process writes JSON lines to `stream` (stderr by default).

    Replaces whatever handlers the root logger has (a library imported earlier may have
    called logging.basicConfig), so nothing logs in another format; Python warnings are
    logged too (logger "py.warnings") instead of being printed as they are.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
