"""The audit trail: one JSON line per write, on disk before the answer leaves.

Every write a caller makes through the gateway (an override save, a drop-in write, a bulk
insert, a sign-in, a sign-out) is appended to `audit.path` as one JSON object per line:
time (UTC, ISO 8601), request id, caller and how it authenticated, method, route template,
action, target ids, outcome and, for overrides, the changes. Each line is flushed and
fsynced before `record` returns: a write that was answered is a write on record.

JSON encoding escapes every control character, so no caller-supplied text (a username, a
path) can start a line of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # One writer at a time: lines never interleave, and they land in call order.
        self._lock = threading.Lock()
        # A thread of its own: fsyncs never wait for, nor hold up, the loop's default
        # executor (DNS lookups, and whatever else runs there).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    async def record(
        self, *, request_id: str | None, caller: str, auth: str, method: str, route: str,
        action: str, targets: Iterable[int | str] = (), outcome: str,
        changes: Mapping[str, Any] | None = None, **extra: Any,
    ) -> None:
        """Append one line (off the event loop: fsync can take milliseconds).

        auth: how the caller proved who it is ("key", "token", "password", "session",
        "anonymous"). outcome: "ok", or what went wrong ("forbidden", "conflict", ...).
        """
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": request_id, "caller": caller, "auth": auth, "method": method,
            "route": route, "action": action, "targets": list(targets), "outcome": outcome,
        }
        if changes is not None:
            line["changes"] = dict(changes)
        line.update(extra)
        data = (json.dumps(line, default=str, ensure_ascii=True) + "\n").encode()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._append, data)

    def check(self) -> None:
        """Raise OSError unless a line could be appended now (checked at start-up: a gateway
        that cannot keep its audit trail must not start taking writes)."""
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))

    def _append(self, data: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
