"""Event-page and coalescing figures, measured side by side in one run.

    .venv/bin/python benchmarks/event_page.py [--latency-ms 600] [--events 5]

Starts a sandbox (fixed latency, no jitter) and the gateway in front of it on loopback ports,
and reports:
- one upstream round trip (direct GET to the sandbox, median), the unit of everything below;
- cold 25-lot event page time, as a ratio of 2 round trips (the floor without batch reads);
- page 2 of the same event (catalog cached), as a ratio of 1 round trip;
- warm page latency (median and p95 of many);
- 100 concurrent cold requests for one lot: upstream calls made, slowest waiter / round trip;
- for scale: what the same 25-lot page costs fetched one call after another (26 round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from serving import freeze, log_like_the_cli, serve

from gateway.config import Config
from gateway.embedded import aimed_at
from gateway.state import TOKENS
from sandbox import start_sandbox


async def timed(coro) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


async def main(latency_ms: float, events: int) -> None:
    sb_runner, upstream, sandbox = await start_sandbox(latency_ms=latency_ms, jitter_ms=0)
    # The default config but for the per-caller rate limit: this one client sends thousands
    # of requests a second on purpose (the upstream share keeps its default). Prefetch off:
    # these are the floor figures without it (benchmarks/prefetch.py measures it on).
    config = Config().replace(limits={"requests_per_s": 1e9, "burst": 10**9},
                              prefetch={"enabled": False})
    log_like_the_cli()
    runner, base, app = await serve(aimed_at(config, upstream))
    token = await app[TOKENS].token()
    freeze()
    auth = {"Authorization": f"Bearer {token}"}
    data = sandbox.data

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        async def get(url: str, **kw) -> bytes:
            async with http.get(url, **kw) as resp:
                assert resp.status == 200, (url, resp.status)
                return await resp.read()

        seller = next(iter(data.sellers))
        rtt = statistics.median(
            [await timed(get(f"{upstream}/api/Seller/{seller}", headers=auth)) for _ in range(5)]
        )
        print(f"upstream round trip (median of 5): {rtt * 1000:.1f} ms "
              f"(sandbox latency {latency_ms:g} ms)")

        catalog_ids = data.catalog_ids_with_lots(50)[:events]
        cold, second = [], []
        for catalog_id in catalog_ids:
            cold.append(await timed(get(f"{base}/api/v1/catalogs/{catalog_id}/lots?page_size=25")))
            second.append(await timed(get(f"{base}/api/v1/catalogs/{catalog_id}/lots?page=2")))
        print(f"cold 25-lot page over {len(cold)} events: median {statistics.median(cold)*1000:.0f}"
              f" ms = {statistics.median(cold) / (2 * rtt):.3f} x 2 round trips "
              f"(worst {max(cold) / (2 * rtt):.3f})")
        print(f"page 2, catalog cached: median {statistics.median(second)*1000:.0f} ms = "
              f"{statistics.median(second) / rtt:.3f} x 1 round trip")

        warm = [await timed(get(f"{base}/api/v1/catalogs/{catalog_ids[0]}/lots?page_size=25"))
                for _ in range(200)]
        warm.sort()
        print(f"warm 25-lot page (200 requests): median {statistics.median(warm)*1000:.2f} ms, "
              f"p95 {warm[int(len(warm) * 0.95)]*1000:.2f} ms")

        lot_id = data.lot_ids_of_catalog(catalog_ids[-1])[-1]
        await asyncio.gather(*(get(f"{base}/healthz") for _ in range(100)))  # open conns
        sandbox.reset_stats()
        burst_start = time.perf_counter()
        finish: list[float] = []

        async def waiter() -> None:
            await get(f"{base}/api/Lot/{lot_id}")
            finish.append(time.perf_counter() - burst_start)

        await asyncio.gather(*(waiter() for _ in range(100)))
        print(f"100 concurrent cold requests for one lot: "
              f"{sandbox.calls['GET /api/Lot/{id}']} upstream call(s), slowest waiter "
              f"{max(finish) * 1000:.0f} ms = {max(finish) / rtt:.3f} x 1 round trip")

        sequential = await timed(_sequential_page(get, upstream, auth, catalog_ids[0]))
        print(f"for scale, the same page fetched call after call from the upstream: "
              f"{sequential:.2f} s = {sequential / rtt:.1f} round trips; gateway cold page is "
              f"{sequential / statistics.median(cold):.1f}x faster, warm "
              f"{sequential / statistics.median(warm):.0f}x")
    await runner.cleanup()
    await sb_runner.cleanup()


async def _sequential_page(get, upstream: str, auth: dict, catalog_id: int) -> None:
    import json

    catalog = json.loads(await get(f"{upstream}/api/Catalog/{catalog_id}", headers=auth))
    for lot in catalog["lots"][:25]:
        await get(f"{upstream}/api/Lot/{lot['id']}", headers=auth)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=600.0)
    parser.add_argument("--events", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.latency_ms, args.events))
