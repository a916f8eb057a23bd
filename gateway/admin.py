"""The gateway's listening sockets: the API port with its read limits, and the admin port.

- **Read limits** (`server.read_timeout_s`, T). A connection must deliver a complete
  request head within T of opening, or of the previous answer on a kept-alive connection,
  else it is closed without an answer: aiohttp's keep-alive timer, set to T, covers a head
  still arriving as well as an idle connection (so idle keep-alive connections also close
  after T). A body the JSON API reads must arrive whole within T of the handler starting
  to read it, else 408 and the connection closes (gateway/api.py `read_body`). A client
  sending its request slowly is so cut off after at most 2 T. Not bounded here: a client
  slow to *read* an answer (the kernel's send buffer and TCP keep-alive cover that), and
  the UI's form bodies (small, read by aiohttp's own form parser).
- **Admin port** (`server.admin_port` > 0). `/metrics` is served on that port, bound to
  `server.host`, by a small app of its own sharing the API app's Metrics; the API port then
  answers 404 for it (gateway/api.py `metrics`). With `server.workers` > 1 every worker
  binds the admin port with SO_REUSEPORT, as it binds the API port: a scrape reaches one
  worker and sees that worker's figures, as /metrics on the API port always has.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway import hot
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.state import METRICS

log = logging.getLogger(__name__)


def serve(app: web.Application, config: Config, *, reuse_port: bool = False) -> None:
    """Serve `app` on server.host:server.port (and /metrics on server.admin_port when set),
    with the hot path in front (gateway/hot.py), until SIGTERM or SIGINT; in-flight
    requests get up to 10 s to finish."""
    if config.server.admin_port:
        app.cleanup_ctx.append(admin_site(config, reuse_port=reuse_port))
    asyncio.run(_serve(app, config, reuse_port))


async def _serve(app: web.Application, config: Config, reuse_port: bool) -> None:
    # A signal ends the wait; the runner's cleanup then lets in-flight requests finish
    # before anything is cancelled.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, _ = await started(app, config, reuse_port=reuse_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def started(app: web.Application, config: Config, *, reuse_port: bool = False
                  ) -> tuple[web.AppRunner, hot.HotPath]:
    """`app` started and listening, the hot path in front: web.run_app's steps, with the
    hot path installed between the app's start-up and the first connection (run_app has
    no place for that). The caller cleans the runner up."""
    server = config.server
    runner = web.AppRunner(
        app, handle_signals=False,
        access_log=None,  # gateway.access logs each request (gateway/access.py)
        keepalive_timeout=server.read_timeout_s, shutdown_timeout=10.0,
    )
    await runner.setup()
    try:
        hot_path = hot.install(runner)
        await web.TCPSite(runner, server.host, server.port,
                          reuse_port=reuse_port or None).start()
    except BaseException:
        await runner.cleanup()
        raise
    if not reuse_port:  # one worker of many: quiet
        log.info("serving http://%s:%d", server.host, server.port)
    return runner, hot_path


def admin_app(metrics: Metrics) -> web.Application:
    """/metrics alone."""

    async def exposition(request: web.Request) -> web.Response:
        return metrics.exposition()

    app = web.Application()
    app.router.add_get("/metrics", exposition)
    return app


def admin_site(
    config: Config, *, reuse_port: bool = False
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A start-up context for the API app: the admin port is served while the app is."""

    async def admin(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(admin_app(app[METRICS]), access_log=None,
                               keepalive_timeout=config.server.read_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.server.host, config.server.admin_port,
                               reuse_port=reuse_port or None)
            await site.start()
            log.info("serving /metrics on http://%s:%d", config.server.host,
                     config.server.admin_port)
            yield
        finally:
            await runner.cleanup()

    return admin
