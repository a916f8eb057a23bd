"""Prefetch figures, measured in one run, prefetch on and off side by side.

    .venv/bin/python benchmarks/prefetch.py [--latency-ms 600] [--samples 3] 2>/dev/null

Starts a sandbox (fixed latency, no jitter) and, one after the other, two gateways in front
of it on loopback ports, as `catalog-gateway serve` would run (the default config; prefetch
on, then `[prefetch] enabled = false`), each with a cold cache. Reports, for each:
- (a) opening an event just listed: GET /api/v1/sellers/{id}/events, a pause of 1.5 round
  trips (the operator reads the list), then the event's first 25-lot page; in round trips
  (target <= 1.15 with prefetch; 2 without);
- (b) page 2 opened 1.5 round trips after page 1 (cold) was answered; in ms (target <= 50);
- (c) a cold 25-lot page asked while prefetch runs at its limit (max_inflight prefetches in
  flight, more queued), as a ratio to the same page with prefetch off (target <= 1.15).
One round trip is a direct GET to the sandbox (median of 5), the unit of (a).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from serving import freeze, log_like_the_cli, serve

from gateway.config import Config
from gateway.embedded import aimed_at
from gateway.prefetch import Prefetcher
from gateway.state import READS
from sandbox import Sandbox, start_sandbox

Get = Callable[[str], Awaitable[bytes]]


async def timed(awaitable: Awaitable[object]) -> float:
    start = time.perf_counter()
    await awaitable
    return time.perf_counter() - start


async def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Wait for `condition()`, checking every 5 ms (a benchmark's own clock, not a test)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not reached")
        await asyncio.sleep(0.005)


@dataclass
class Events:
    """What each measurement opens; every id is used by one phase only (cold caches)."""

    listed: list[tuple[int, int]]  # (seller, its soonest upcoming event with >= 25 lots)
    paged: list[int]  # events with >= 50 lots, for page 1 then page 2
    busy: list[list[int]]  # per sample, events whose next pages keep prefetch at its limit
    cold: list[int]  # events with >= 25 lots, opened while prefetch is busy


def pick(sandbox: Sandbox, samples: int) -> Events:
    data = sandbox.data
    listed = []
    for seller in data.sellers:
        upcoming = sorted((c for c in data.catalog_ids_for_seller(seller)
                           if not data.catalogs[c]["isCompleted"]),
                          key=lambda c: data.catalogs[c]["startDate"])
        if upcoming and len(data.catalogs[upcoming[0]]["lots"]) >= 25:
            listed.append((seller, upcoming[0]))
    used = {c for _, c in listed[:samples]}
    largest = sorted((c for c in data.catalogs if c not in used),
                     key=lambda c: -len(data.catalogs[c]["lots"]))
    busy = [largest[2 * n : 2 * n + 2] for n in range(samples)]
    used.update(largest[: 2 * samples])
    paged = [c for c in data.catalog_ids_with_lots(50) if c not in used][:samples]
    used.update(paged)
    cold = [c for c in data.catalog_ids_with_lots(25) if c not in used][:samples]
    if len(listed) < samples or len(paged) < samples or len(cold) < samples:
        raise SystemExit("the sandbox's data has too few events for this many samples")
    return Events(listed[:samples], paged, busy, cold)


async def phase(
    http: aiohttp.ClientSession, config: Config, upstream: str, sandbox: Sandbox,
    events: Events, rtt: float,
) -> dict[str, list[float]]:
    runner, base, app = await serve(aimed_at(config, upstream))
    prefetcher = app[READS].prefetch
    on = isinstance(prefetcher, Prefetcher)

    async def get(path: str) -> bytes:
        async with http.get(base + path) as resp:
            assert resp.status == 200, (path, resp.status)
            return await resp.read()

    async def settle() -> None:
        """Nothing of the previous measurement still in flight."""
        await until(lambda: (not on or prefetcher.pending == 0) and sandbox.inflight == 0)

    figures: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for seller, event in events.listed:
        await settle()
        await get(f"/api/v1/sellers/{seller}/events")
        await asyncio.sleep(1.5 * rtt)
        figures["a"].append(await timed(get(f"/api/v1/catalogs/{event}/lots?page_size=25"))
                            / rtt)
    for event in events.paged:
        await settle()
        await get(f"/api/v1/catalogs/{event}/lots?page_size=25")
        await asyncio.sleep(1.5 * rtt)
        figures["b"].append(await timed(get(f"/api/v1/catalogs/{event}/lots?page=2"
                                            "&page_size=25")) * 1000)
    for busy, event in zip(events.busy, events.cold, strict=True):
        await settle()
        # Prefetch at its limit: page 1 (50 lots) of two of the largest events queues
        # their next pages (about 90 lots), max_inflight of them in flight for several
        # round trips; the cold page is asked in the middle of it.
        await asyncio.gather(*(get(f"/api/v1/catalogs/{b}/lots?page_size=50") for b in busy))
        if on:
            await until(lambda: prefetcher.inflight == config.prefetch.max_inflight)
            assert prefetcher.pending > 2 * config.prefetch.max_inflight, "prefetch ran dry"
        figures["c"].append(await timed(get(f"/api/v1/catalogs/{event}/lots?page_size=25")))
    await runner.cleanup()
    return figures


async def main(latency_ms: float, samples: int) -> None:
    sb_runner, upstream, sandbox = await start_sandbox(latency_ms=latency_ms, jitter_ms=0)
    base_config = Config().replace(limits={"requests_per_s": 1e9, "burst": 10**9})
    log_like_the_cli()
    freeze()
    events = pick(sandbox, samples)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        token = sandbox.issue_tokens("gateway")["access_token"]
        seller = next(iter(sandbox.data.sellers))
        await direct(http, upstream, token, seller)  # a connection open, as the gateway's
        rtt = statistics.median([await timed(direct(http, upstream, token, seller))
                                 for _ in range(5)])
        print(f"upstream round trip (median of 5): {rtt * 1000:.1f} ms "
              f"(sandbox latency {latency_ms:g} ms); prefetch.max_inflight "
              f"{base_config.prefetch.max_inflight}, upstream.max_concurrency "
              f"{base_config.upstream.max_concurrency}; {samples} sample(s) each, median")
        on = await phase(http, base_config, upstream, sandbox, events, rtt)
        off = await phase(http, base_config.replace(prefetch={"enabled": False}), upstream,
                          sandbox, events, rtt)
    med = {k: (statistics.median(on[k]), statistics.median(off[k])) for k in on}
    print(f"(a) opening an event just listed (1.5 RT after the list): "
          f"{med['a'][0]:.3f} round trips with prefetch, {med['a'][1]:.3f} without "
          f"(target <= 1.15)")
    print(f"(b) page 2 opened 1.5 RT after page 1: {med['b'][0]:.1f} ms with prefetch, "
          f"{med['b'][1]:.1f} ms without (target <= 50 ms)")
    print(f"(c) cold 25-lot page while prefetch runs at its limit: {med['c'][0] * 1000:.0f} ms"
          f", prefetch off {med['c'][1] * 1000:.0f} ms: ratio "
          f"{med['c'][0] / med['c'][1]:.3f} (target <= 1.15)")
    await sb_runner.cleanup()


async def direct(http: aiohttp.ClientSession, upstream: str, token: str, seller: int) -> None:
    async with http.get(f"{upstream}/api/Seller/{seller}",
                        headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=600.0)
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.latency_ms, args.samples))
