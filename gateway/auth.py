"""Client API keys (GW_API_KEYS) for the /api routes.

With keys configured, every /api request must present one, as `Authorization: Bearer
<key>` or `X-API-Key: <key>`. The matched key's *name* is put on the request for logs;
the key itself is never logged. Health, readiness and metrics stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.errors import Unauthorized
from gateway.state import CLIENT_NAME


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key") or None


def key_name(keys: Mapping[str, str], presented: str | None) -> str | None:
    """The name of the key matching `presented`, compared in constant time."""
    if not presented:
        return None
    found = None
    for name, key in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = name
    return found


def api_key_middleware(keys: Mapping[str, str]) -> Callable:
    @web.middleware
    async def require_key(request: web.Request, handler: Callable) -> web.StreamResponse:
        if keys and request.path.startswith("/api/"):
            name = key_name(keys, presented_key(request))
            if name is None:
                raise Unauthorized(
                    "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
                )
            request[CLIENT_NAME] = name
        return await handler(request)

    return require_key
