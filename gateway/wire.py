"""A cached answer written as bytes made once per version of its body.

aiohttp builds every response anew: a header multidict, its checks, its serialization, a
second pass through the payload writer. For a warm hit that is most of the work the
gateway itself does not need: the status line and nearly every header are the same for
every answer of one version of a body. So the hot path (gateway/hot.py) writes a warm hit
as three parts:

- `Fixed.head`: the status line and the headers that stay the same while the body does
  (ETag, X-Cache, Content-Type, Content-Length, ...), serialized the first time they are
  needed and kept with the body's form (gateway/representations.py `Forms.derive`), so
  they live and die with that version;
- what changes per answer, written around it: Cache-Status (its seconds), Age, Date and
  the request's id;
- the body, as kept.

The full path renders the same `Cached` answer as a web.Response (`Cached.response`): one
decision of what the headers are, two ways of writing them (tests/test_hot.py compares the
two, header for header).

aiohttp's server asks three things of what a handler returns (web_protocol's
`finish_response`): `prepare(request)`, `write_eof()` and `keep_alive`. `Wire` has them
and writes through the request's own payload writer (`request.writer`), which checks the
transport and waits for it to drain as for any response. It is used for HTTP/1.1
keep-alive requests only; anything else (HTTP/1.0, `Connection: close`) is answered with
the web.Response, whose connection handling aiohttp owns.

Every header value written here is the gateway's own (ETags it made, fixed words, numbers)
or a request id of `[A-Za-z0-9._-]` (gateway/access.py); `Fixed` refuses a CR or LF all
the same, once, when it is made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

_REASONS = {200: "OK", 304: "Not Modified"}


class Fixed:
    """What every answer of one form of a body says, whatever its time: status, headers
    (Content-Length and Server included on the wire, as aiohttp adds them) and body."""

    __slots__ = ("_head", "body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status not in _REASONS:
            raise ValueError(f"no fixed answer for status {status}")
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n"):
                raise ValueError(f"a header with CR or LF: {name!r}")
        self.status = status
        self.headers = dict(headers)
        self.body = body
        self._head: bytes | None = None

    @property
    def head(self) -> bytes:
        """The status line and these headers, each line ending in CRLF (the header block's
        end not yet written)."""
        if self._head is None:
            lines = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}"]
            lines += [f"{name}: {value}" for name, value in self.headers.items()]
            if self.status != 304:  # RFC 9110 8.6: a 304 sends no Content-Length of its own
                lines.append(f"Content-Length: {len(self.body)}")
            lines.append(f"Server: {SERVER_SOFTWARE}")
            self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return self._head


# What an answer was made of, for the hot path to keep it (gateway/cache/views.py): each
# cache entry with its key's kind. Empty for an answer that must not be kept.
Parts = tuple[tuple[str, Any], ...]


class Cached(NamedTuple):
    """One answer from the cache: its fixed part and the facts its time adds."""

    fixed: Fixed
    age_s: float | None  # of the entry (of the oldest part) when looked up
    ttl_s: float
    parts: Parts = ()

    @property
    def status(self) -> int:
        return self.fixed.status

    @property
    def cache(self) -> str:
        return self.fixed.headers["X-Cache"]

    def response(self) -> web.Response:
        """The answer as aiohttp writes it (the full path)."""
        headers = {**self.fixed.headers, "Cache-Status": self.cache_status()}
        age = self.age()
        if age is not None:
            headers["Age"] = age
        return web.Response(status=self.fixed.status, body=self.fixed.body or None,
                            headers=headers)

    def wire(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse | Wire:
        """The answer to `request`, written as bytes when it is HTTP/1.1 keep-alive, else
        as a web.Response; either way with its id."""
        if request.version != HttpVersion11 or not request.keep_alive:
            response = self.response()
            response.headers["X-Request-ID"] = request_id
            return response
        age = self.age()
        age_line = f"Age: {age}\r\n" if age is not None else ""
        tail = (f"Cache-Status: {self.cache_status()}\r\n{age_line}Date: {http_date()}\r\n"
                f"X-Request-ID: {request_id}\r\n\r\n").encode("latin-1")
        fixed = self.fixed  # a 304's body is empty
        return Wire(fixed.head + tail + fixed.body, fixed.status)

    def cache_status(self) -> str:
        """X-Cache as an RFC 9211 Cache-Status, the header HTTP caches share: a hit with the
        seconds it stays fresh (of its oldest part), a miss fetched and stored, or a stale
        answer served while the upstream failed or was being asked again."""
        cache = self.fixed.headers["X-Cache"]
        if cache == "HIT":
            return f"catalog-gateway; hit; ttl={max(0, int(self.ttl_s - (self.age_s or 0.0)))}"
        if cache == "STALE":
            return "catalog-gateway; fwd=stale"
        return "catalog-gateway; fwd=miss; stored"

    def age(self) -> str | None:
        """The Age header: a stale answer's seconds since it was fetched."""
        if self.age_s is None or self.fixed.headers["X-Cache"] != "STALE":
            return None
        return str(int(self.age_s))


class Wire:
    """A whole HTTP/1.1 answer in bytes, as aiohttp's server takes a handler's answer (and
    as its access logger reads one, should a server log with it)."""

    __slots__ = ("_data", "status")
    keep_alive = True  # only made for keep-alive requests (Cached.wire)

    def __init__(self, data: bytes, status: int) -> None:
        self._data = data
        self.status = status

    @property
    def body_length(self) -> int:
        return len(self._data)  # what aiohttp counts: all bytes written

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        head = self._data.partition(b"\r\n\r\n")[0].decode("latin-1")
        pairs = (line.partition(": ") for line in head.split("\r\n")[1:])
        return CIMultiDictProxy(CIMultiDict((name, value) for name, _, value in pairs))

    async def prepare(self, request: web.BaseRequest) -> None:
        # The payload writer raises ConnectionResetError on a closed transport (aiohttp
        # then drops the connection quietly) and waits while the transport is full.
        await request.writer.write_eof(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


_date = (0, "")


def http_date() -> str:
    """Now as an HTTP date (RFC 9110 5.6.7), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]
