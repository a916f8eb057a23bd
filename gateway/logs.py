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

import asyncio
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

    def fields(
        self, created: float, level: str, logger: str, message: str, pid: int | None,
        fields: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The line's fields but for an exception (see the module docstring)."""
        line: dict[str, Any] = {
            "time": self.timestamp(created), "level": level, "logger": logger,
            "message": message, "pid": pid,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        if fields:
            line.update(fields)
        return line

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format
            message = f"unformattable log message: {record.msg!r} % {record.args!r}"
        line = self.fields(record.created, record.levelname, record.name, message,
                           record.process, getattr(record, "fields", None))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODE(line)


class LineHandler(logging.StreamHandler):
    """Writes each record as one line. On the event loop thread, the lines of one turn of
    the loop are written together (one write and flush) at its end, so a busy gateway
    does not pay a system call per line; from any other thread, or with no loop running,
    a line is written at once. Lines are never reordered: a direct write first writes
    whatever is waiting. Whatever is waiting when the handler is flushed or closed is
    written then."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []  # guarded by self.lock (logging's handler RLock)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop.is_closed():
            self._write([line])
            return
        self._waiting.append(line)  # emit() holds self.lock (Handler.handle takes it)
        if len(self._waiting) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:
            self._write([])

    def write_lines(self, lines: list[str]) -> None:
        """Lines made elsewhere (see direct()), each ending in a newline, written now."""
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        with self.lock:  # re-entrant: emit() and flush() may already hold it
            waiting, self._waiting = self._waiting, []
            try:
                self.stream.write("".join(waiting + lines))
                self.stream.flush()
            except Exception:  # a closed or broken stream: the lines are lost,
                pass  # the gateway goes on (as logging.StreamHandler does)


_configured: LineHandler | None = None  # the handler configure() installed, if it did


def direct(logger: logging.Logger) -> LineHandler | None:
    """The handler that would write `logger`'s INFO lines, when a caller may format them
    itself and hand it the text (LineHandler.write_lines): logging is as configure() left
    it, nothing else listens, INFO is on. None otherwise (tests capturing logs, another
    set-up): then log records as usual."""
    handler = _configured
    if (handler is None or logging.getLogger().handlers != [handler] or logger.handlers
            or not logger.propagate or not logger.isEnabledFor(logging.INFO)):
        return None
    return handler


def encode(value: Any) -> str:
    """`value` as JSON text, as the formatter encodes it (ASCII only, control characters
    escaped): for a caller that writes a line itself (see direct)."""
    return _ENCODE(value)


def configure(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Every logger of the process writes JSON lines to `stream` (stderr by default).

    Replaces whatever handlers the root logger has (a library imported earlier may have
    called logging.basicConfig), so nothing logs in another format; Python warnings are
    logged too (logger "py.warnings") instead of being printed as they are.
    """
    global _configured
    handler = _configured = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
