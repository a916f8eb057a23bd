"""What the Redis tier costs and saves, measured side by side in one run.

    .venv/bin/python benchmarks/shared_tier.py [--latency-ms 600]

Needs `redis-server` on PATH (started here on a free loopback port). Two gateways on
one Redis stand for two replicas, a third uses the in-memory backend; all three use one
sandbox. Reports:
- warm 25-lot page: memory backend vs Redis backend (L1 plus one generation check per
  lot), medians of 200;
- the same page on replica B after replica A fetched it (served from Redis), vs cold;
- 50 concurrent cold requests for one lot on each of A and B: upstream calls made.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import time

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.embedded import aimed_at
from sandbox import start_sandbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(config: Config) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def main(latency_ms: float) -> None:
    port = free_port()
    redis = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
        stdout=subprocess.DEVNULL)
    await asyncio.sleep(0.3)
    sb_runner, sb_url, sandbox = await start_sandbox(latency_ms=latency_ms, jitter_ms=0)
    # The default config but for the per-caller rate limit (one client, many requests).
    base = aimed_at(Config().replace(limits={"requests_per_s": 1e9, "burst": 10**9}), sb_url)
    shared = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}
    runners = []
    try:
        for cfg in (base.replace(cache=shared), base.replace(cache=shared), base):
            runners.append(await serve(cfg))
        (_, a), (_, b), (_, mem) = runners
        await asyncio.sleep(2 * latency_ms / 1000 + 0.5)  # sign-ins, Redis subscriptions
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def timed_get(url: str) -> float:
                start = time.perf_counter()
                async with http.get(url) as resp:
                    assert resp.status == 200, (url, resp.status)
                    await resp.read()
                return time.perf_counter() - start

            page = "/api/v1/catalogs/{}/lots?page_size=25"
            catalogs = sandbox.data.catalog_ids_with_lots(25)
            cold_a = await timed_get(a + page.format(catalogs[0]))
            from_l2 = await timed_get(b + page.format(catalogs[0]))
            await timed_get(mem + page.format(catalogs[0]))
            warm_redis = [await timed_get(a + page.format(catalogs[0])) for _ in range(200)]
            warm_memory = [await timed_get(mem + page.format(catalogs[0])) for _ in range(200)]
            print(f"warm 25-lot page: memory backend median "
                  f"{statistics.median(warm_memory) * 1000:.2f} ms, Redis backend median "
                  f"{statistics.median(warm_redis) * 1000:.2f} ms "
                  "(L1 + batched generation checks)")
            print(f"same page on replica B after A fetched it: {from_l2 * 1000:.1f} ms from "
                  f"Redis vs {cold_a * 1000:.0f} ms cold on A ({cold_a / from_l2:.0f}x)")

            lot = sandbox.data.lot_ids_of_catalog(catalogs[1])[0]
            sandbox.reset_stats()
            await asyncio.gather(*(timed_get(f"{url}/api/Lot/{lot}") for url in [a, b] * 50))
            print(f"50 concurrent cold requests for one lot on each of 2 replicas: "
                  f"{sandbox.calls['GET /api/Lot/{id}']} upstream call(s)")
    finally:
        for runner, _ in runners:
            await runner.cleanup()
        await sb_runner.cleanup()
        redis.terminate()
        await redis.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=600.0)
    asyncio.run(main(parser.parse_args().latency_ms))
