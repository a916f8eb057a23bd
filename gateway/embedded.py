"""`upstream.mode = "sandbox"`: start the stand-in upstream and aim the gateway at it.

The only gateway module that imports the `sandbox` package, and only inside its functions,
which run only in sandbox mode: a live-mode process never loads the sandbox (a test checks
it). Past this point the gateway sees an ordinary live upstream at a loopback URL.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import Config
from gateway.upstream.identity import Credentials

log = logging.getLogger(__name__)


def aimed_at(config: Config, url: str) -> Config:
    """`config` in live mode against the sandbox at `url`, signing in with the configured
    credentials if complete, else with the sandbox's own service account."""
    from sandbox import SERVICE_ACCOUNT

    credentials = config.credentials
    if not credentials.complete:
        credentials = Credentials(*SERVICE_ACCOUNT)
    return config.replace(
        upstream={"mode": "live", "base_url": url, "identity_url": url + "/connect/token"},
        credentials=credentials,
    )


@asynccontextmanager
async def in_process(config: Config) -> AsyncIterator[Config]:
    """A sandbox on a free loopback port of this event loop, for as long as the block
    runs; yields the config aimed at it."""
    from sandbox import start_sandbox

    sb = config.sandbox
    runner, url, _ = await start_sandbox(latency_ms=sb.latency_ms, jitter_ms=sb.jitter_ms,
                                         seed=sb.seed)
    log.info("sandbox upstream on %s (latency %g±%g ms)", url, sb.latency_ms, sb.jitter_ms)
    try:
        yield aimed_at(config, url)
    finally:
        await runner.cleanup()


def in_child_process(
    config: Config, ctx: multiprocessing.context.BaseContext
) -> tuple[Config, multiprocessing.process.BaseProcess]:
    """One sandbox process that several gateway workers share (so they all see the same
    data); returns the config aimed at it and the process, already accepting."""
    from sandbox import main_sandbox

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sb = config.sandbox
    process = ctx.Process(target=main_sandbox, name="sandbox", kwargs={  # type: ignore[attr-defined]
        "port": port, "latency_ms": sb.latency_ms, "jitter_ms": sb.jitter_ms, "seed": sb.seed,
    })
    process.start()
    _wait_for_port(port)
    return aimed_at(config, f"http://127.0.0.1:{port}"), process


def standalone(**kwargs: object) -> None:
    """`catalog-gateway sandbox`: the sandbox alone, in the foreground."""
    from sandbox import main_sandbox

    main_sandbox(**kwargs)  # type: ignore[arg-type]


def _wait_for_port(port: int, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the sandbox did not start on port {port}")
