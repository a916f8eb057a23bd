"""The gateway served in a benchmark's own process as `catalog-gateway serve` serves it: one
JSON access-log line per request (here written to /dev/null), aiohttp's access log off,
the upstream token in hand before the first request, start-up objects frozen."""

from __future__ import annotations

import gc
import os
from typing import NamedTuple

from aiohttp import web

from gateway import hot, logs
from gateway.app import create_app
from gateway.config import Config
from gateway.state import TOKENS

NOWHERE = open(os.devnull, "w")  # the log stream: as the CLI logs, to nowhere


class Served(NamedTuple):
    runner: web.AppRunner  # cleanup() stops it
    url: str  # http://127.0.0.1:<port>
    app: web.Application


def log_like_the_cli() -> None:
    logs.configure(stream=NOWHERE)


def freeze() -> None:
    """As the CLI does once started: the long-lived objects are frozen, so a full garbage
    collection (~100 ms over what ABConnect imports) never lands in a measurement."""
    gc.collect()
    gc.freeze()


async def serve(config: Config) -> Served:
    """The gateway of `config` on a free loopback port, signed in upstream."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hot.install(runner)  # as `catalog-gateway serve` puts it in front
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    await app[TOKENS].token()
    return Served(runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", app)
