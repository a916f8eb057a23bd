"""Admission: whether this request may be served, in one middleware of three steps.

1. the browser rules (gateway/policy.py `policy_step`): Host, Origin, JSON bodies;
2. the caller (gateway/auth.py `caller_step`): an API key, a caller's own token, nobody;
3. the caller's allowance (gateway/limits.py `rate_step`): a token bucket per caller, and
   whom the request's upstream calls are charged to (CHARGED_TO, reset when it is over).

A refusal is raised as the GatewayError it is, for problem+json rendering around this
(gateway/api.py `problem_middleware`). One middleware rather than three: every request
passes all three, warm hits included, and each layer of middleware costs a call and a
coroutine per request.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.auth import caller_step
from gateway.config import Config
from gateway.context import CHARGED_TO
from gateway.limits import rate_step
from gateway.policy import policy_step


def admission_middleware(config: Config) -> Any:
    browser_rules = policy_step(config)
    identify = caller_step(config.api_keys, config.auth)
    take = rate_step(config.limits)

    @web.middleware
    async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
        browser_rules(request)
        await identify(request)
        charged = take(request)
        if charged is None:
            return await handler(request)
        try:
            return await handler(request)
        finally:
            CHARGED_TO.reset(charged)

    return admission
