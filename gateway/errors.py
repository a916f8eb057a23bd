"""Errors every layer may raise and the edges render as problem+json.

Each carries the HTTP status the client should see, so no layer below the edge needs to
know about HTTP responses, and nothing unexpected ever turns into a bare 500.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(GatewayError):
    status, title = 400, "Bad Request"


class Unauthorized(GatewayError):
    status, title = 401, "Unauthorized"


class Forbidden(GatewayError):
    status, title = 403, "Forbidden"


class NotFound(GatewayError):
    status, title = 404, "Not Found"


class RequestTimeout(GatewayError):
    """The client did not send its request body within server.read_timeout_s."""

    status, title = 408, "Request Timeout"


class PreconditionFailed(GatewayError):
    status, title = 412, "Precondition Failed"


class PayloadTooLarge(GatewayError):
    status, title = 413, "Payload Too Large"


class UnsupportedMediaType(GatewayError):
    """A body of a kind the route does not take (an /api/ write that is not JSON)."""

    status, title = 415, "Unsupported Media Type"


class MisdirectedRequest(GatewayError):
    """A Host this gateway does not serve (without API keys: any but a loopback name)."""

    status, title = 421, "Misdirected Request"


class Unprocessable(GatewayError):
    status, title = 422, "Unprocessable Content"


class TooManyRequests(GatewayError):
    """The caller has used up its request allowance for now; retry_after says when to
    come back."""

    status, title = 429, "Too Many Requests"


class UpstreamFailed(GatewayError):
    """The upstream answered, but with an error we cannot pass on as data."""

    status, title = 502, "Bad Gateway"


class UpstreamUnavailable(GatewayError):
    """The upstream could not be reached (refused, reset, or answering 503)."""

    status, title = 503, "Service Unavailable"


class UpstreamTimeout(GatewayError):
    status, title = 504, "Gateway Timeout"
