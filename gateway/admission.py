"""Admission: whether this request may be served, in one middleware of three steps.

1. the browser rules (gateway/policy.py `policy_step`): Host, Origin, JSON bodies;
2. the caller (gateway/auth.py `CallerStep`): an API key, a caller's own token, nobody;
3. the caller's allowance (gateway/limits.py `RateStep`): a token bucket per caller, and
   whom the request's upstream calls are charged to (CHARGED_TO, reset when it is over).

A refusal is raised as the GatewayError it is, for problem+json rendering around this
(gateway/api.py `problem_middleware`). One middleware rather than three: every request
passes all three, warm hits included, and each layer of middleware costs a call and a
coroutine per request.

The hot path (gateway/hot.py) admits its requests with `at_once`, the same steps without
an await, before any routing. A request it admits but then hands to the full path (its
answer was not warm after all) carries whom it was charged to (`ADMITTED`): admission
happens once per request, so a request never takes two tokens of its caller's bucket.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.auth import CallerStep
from gateway.config import Config
from gateway.context import CHARGED_TO
from gateway.limits import RateStep
from gateway.metrics import Metrics
from gateway.policy import policy_step
from gateway.state import ADMITTED


class Admission:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.browser_rules = policy_step(config)
        self.identify = CallerStep(config.api_keys, config.auth)
        self.take = RateStep(config.limits, metrics)

    def at_once(self, request: web.Request) -> bool:
        """Admit `request` (an /api/* one) without awaiting: True when admitted, its token
        taken; False when only the full steps can tell (a caller's token to verify), with
        nothing taken. Raises the refusal, as the middleware would."""
        self.browser_rules(request)
        if not self.identify.at_once(request):
            return False
        charged = self.take.take(request)
        if charged is not None:
            request[ADMITTED] = charged
        return True

    def middleware(self) -> Any:
        browser_rules, identify, take = self.browser_rules, self.identify, self.take

        @web.middleware
        async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
            admitted = request.get(ADMITTED)
            if admitted is not None:  # by the hot path, which then handed the request on
                charged = CHARGED_TO.set(admitted)
            else:
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
