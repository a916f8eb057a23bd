"""Fair limits per caller (to be filled in)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.config import LimitsConfig


def rate_middleware(limits: LimitsConfig) -> Any:
    @web.middleware
    async def rate(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    return rate
