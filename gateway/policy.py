"""Browser-facing rules (to be filled in)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.config import Config


def policy_middleware(config: Config) -> Any:
    @web.middleware
    async def policy(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    return policy


def client_address(request: web.Request) -> str:
    """The client's address (placeholder: the socket peer)."""
    return request.remote or "unknown"


def is_https(request: web.Request) -> bool:
    """Whether the client reached us over HTTPS (placeholder: directly only)."""
    return request.secure
