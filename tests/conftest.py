"""Fixtures: a real gateway on a loopback socket, a sandbox upstream of its own behind it.

The sandbox is started here, not by the gateway: the gateway runs in live mode against it,
so the tests exercise the same code path a deployment does.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config
from gateway.embedded import aimed_at
from gateway.hot import HotPath, install
from gateway.state import CONFIG, TOKENS
from sandbox import Sandbox, start_sandbox

from gwtesting import RedisServer


@dataclass
class Gateway:
    client: TestClient
    app: web.Application
    sandbox: Sandbox
    upstream_url: str
    hot: HotPath | None = None  # in front of the app as the CLI puts it (gateway/hot.py)

    @property
    def audit_path(self) -> Path:
        return Path(self.app[CONFIG].audit.path)

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit trail so far, one dict per line."""
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def calls(self, route: str) -> int:
        return self.sandbox.calls[route]

    async def get_json(self, path: str, status: int = 200, **kw: Any) -> Any:
        resp = await self.client.get(path, **kw)
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None)

    async def upstream_get(self, path: str) -> bytes:
        """The same request straight to the upstream, bypassing the gateway."""
        token = await self.app[TOKENS].token()
        async with aiohttp.ClientSession() as session, session.get(
            self.upstream_url + path, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
            return await resp.read()

    async def round_trip_s(self, samples: int = 3) -> float:
        """One upstream round trip as measured now, on this machine (median of a few)."""
        path = f"/api/Seller/{next(iter(self.sandbox.data.sellers))}"
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            await self.upstream_get(path)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(aiohttp_client, tmp_path: Path) -> AsyncIterator[StartGateway]:
    """start_gateway(latency_ms=0, **sections) -> a running Gateway with a warm token,
    in front of a sandbox of its own (seed, latency and jitter from the sandbox section),
    or of the same sandbox as `beside` (a second replica).

    Sections are Config sections as dicts, e.g. upstream={"max_concurrency": 8}. Each
    gateway writes its audit trail to a file of its own under the test's tmp_path. The
    per-caller rate limit and upstream share are out of the way unless `limits` sets them,
    and prefetch is off unless `prefetch` turns it on.
    """
    runners: list[web.AppRunner] = []
    started = itertools.count(1)  # gateways started by this test: one audit file each

    async def start(
        latency_ms: float = 0, jitter_ms: float = 0, *, beside: Gateway | None = None,
        with_hot_path: bool = True, **sections: Any,
    ) -> Gateway:
        sb = {"latency_ms": latency_ms, "jitter_ms": jitter_ms, **sections.pop("sandbox", {})}
        if beside is not None:  # another replica in front of the same upstream
            url, sandbox = beside.upstream_url, beside.sandbox
        else:
            runner, url, sandbox = await start_sandbox(
                latency_ms=sb["latency_ms"], jitter_ms=sb["jitter_ms"], seed=sb.get("seed", 1)
            )
            runners.append(runner)
        # Tests not about limits are not held to them (many send bursts from one address).
        sections["limits"] = {"requests_per_s": 1e6, "burst": 10**6, "upstream_share": 1.0,
                              **sections.get("limits", {})}
        sections.setdefault("audit", {"path": str(tmp_path / f"audit-{next(started)}.log")})
        # Nor do background fetches add to the upstream calls they count.
        sections.setdefault("prefetch", {"enabled": False})
        config = aimed_at(Config().replace(sandbox=sb, **sections), url)
        app = create_app(config)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        # As `serve` does; off only for a test comparing the full path with it.
        hot = install(client.server.runner) if with_hot_path else None
        gw = Gateway(client, app, sandbox, url, hot)
        await app[TOKENS].token()
        gw.sandbox.reset_stats()
        return gw

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a free loopback port."""
    server = RedisServer().start()
    yield server
    server.stop()
