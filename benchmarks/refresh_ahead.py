"""Refresh ahead, measured: one key read steadily across several lifetimes of its entry.

    .venv/bin/python benchmarks/refresh_ahead.py [--latency-ms 600] [--seconds 10]

Two gateways in one run, side by side, each in front of a sandbox of its own (fixed
latency, so each counts its gateway's calls): one with
`cache.refresh_ahead` at its default (0.8), one with it off (1.0); both with `ttl_s = 2` and
the default stale-while-revalidate window. One lot is read every 50 ms for `--seconds` from
each, and for each it prints: the slowest answer after the first, the X-Cache values seen,
and the upstream calls made for the lot.

Target (refresh ahead on): every answer after the first <= 20 ms, no MISS after the first,
at most 6 upstream calls in 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import aiohttp
from serving import freeze, log_like_the_cli, serve

from gateway.config import Config
from gateway.embedded import aimed_at
from sandbox import start_sandbox

LOT = "GET /api/Lot/{id}"

async def read_steadily(http: aiohttp.ClientSession, url: str, seconds: float):
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        async with http.get(url) as resp:
            assert resp.status == 200, resp.status
            await resp.read()
            answers.append((resp.headers["X-Cache"], time.perf_counter() - start))
        await asyncio.sleep(0.05)
    return answers


async def main(latency_ms: float, seconds: float) -> None:
    log_like_the_cli()
    base = Config().replace(limits={"requests_per_s": 1e9, "burst": 10**9},
                            prefetch={"enabled": False})
    runners, gateways = [], {}
    for name, fraction in (("on (0.8)", 0.8), ("off (1.0)", 1.0)):
        sb_runner, upstream, sandbox = await start_sandbox(latency_ms=latency_ms, jitter_ms=0)
        config = base.replace(cache={"ttl_s": 2.0, "refresh_ahead": fraction})
        runner, url, _ = await serve(aimed_at(config, upstream))
        runners += [runner, sb_runner]
        lot = sandbox.data.lot_ids_of_catalog(sandbox.data.catalog_ids_with_lots(25, 25)[0])[0]
        gateways[name] = (f"{url}/api/Lot/{lot}", sandbox)
    freeze()
    print(f"sandbox latency {latency_ms:g} ms; ttl_s 2; one lot read every 50 ms for "
          f"{seconds:g} s from each gateway at once")
    async with aiohttp.ClientSession() as http:
        for _, sandbox in gateways.values():
            sandbox.reset_stats()
        results = await asyncio.gather(*(
            read_steadily(http, url, seconds) for url, _ in gateways.values()))
        for (name, (_, sandbox)), answers in zip(gateways.items(), results, strict=True):
            later = answers[1:]
            print(f"refresh ahead {name}: {len(answers)} reads; after the first: slowest "
                  f"{max(s for _, s in later) * 1000:.1f} ms, X-Cache "
                  f"{dict(collections.Counter(c for c, _ in later))}; upstream calls: "
                  f"{sandbox.calls[LOT]}")
        on, (_, on_sandbox) = results[0][1:], gateways["on (0.8)"]
        print(f"target (on): every answer after the first <= 20 ms: "
              f"{max(s for _, s in on) * 1000:.1f} ms; no MISS after the first: "
              f"{sum(1 for c, _ in on if c == 'MISS')} MISS; at most 6 upstream calls in "
              f"{seconds:g} s: {on_sandbox.calls[LOT]}")
    for runner in runners:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.latency_ms, args.seconds))
