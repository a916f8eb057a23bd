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
