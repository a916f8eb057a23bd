"""Two gateway processes on one Redis, in front of one sandbox process: what operators
rely on when several replicas run behind a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from typing import IO

import aiohttp
import pytest
from yarl import URL

from gwtesting import (
    ROOT,
    UNLIMITED,
    RedisServer,
    env,
    eventually,
    eventually_sync,
    free_port,
    wait_until_up,
)

CLI = [sys.executable, "-m", "gateway"]


def stop_process(proc: subprocess.Popen, timeout_s: float = 15, *, term: bool = True) -> int:
    """SIGTERM (unless sent already: term=False), then SIGKILL to its whole process group
    if it does not exit in time (a process started with start_new_session=True leads its
    own group, workers included). Returns its exit code."""
    if term and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def output_of(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-5000:]


class Replicas:
    """A sandbox process and gateway processes on one Redis. Every process start()
    spawns is stopped by stop(), even one whose start failed half way: the `replicas`
    fixture calls it whatever the test did. Each child writes to a temporary file (a pipe
    nobody reads could fill up and stall it), shown when it does not come up."""

    def __init__(self, redis: RedisServer, latency_ms: int = 60) -> None:
        self.redis = redis
        self.sandbox_url = f"http://127.0.0.1:{free_port()}"
        self.urls: list[str] = []
        self.procs: list[tuple[subprocess.Popen, IO[bytes]]] = []
        self.latency_ms = latency_ms

    def start(self, count: int = 2, **extra_env: str) -> Replicas:
        port = self.sandbox_url.rsplit(":", 1)[1]
        self._spawn_and_wait(
            [*CLI, "sandbox", "--port", port, "--latency-ms", str(self.latency_ms),
             "--jitter-ms", "0"], env(), self.sandbox_url + "/_sandbox/stats")
        for _ in range(count):
            gw_port = free_port()
            url = f"http://127.0.0.1:{gw_port}"
            self._spawn_and_wait(
                [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(gw_port)],
                env(GW_UPSTREAM_MODE="live", GW_UPSTREAM_BASE_URL=self.sandbox_url,
                    GW_UPSTREAM_IDENTITY_URL=self.sandbox_url + "/connect/token",
                    ABCONNECT_USERNAME="gateway", ABCONNECT_PASSWORD="sandbox",
                    GW_CACHE_BACKEND="redis", GW_CACHE_REDIS_URL=self.redis.url,
                    **{**UNLIMITED, **extra_env}),
                url + "/readyz")
            self.urls.append(url)
        return self

    def _spawn_and_wait(self, argv: list[str], environ: dict[str, str], ready: str) -> None:
        log = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(argv, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, start_new_session=True)
        except BaseException:
            log.close()
            raise
        self.procs.append((proc, log))
        try:
            wait_until_up(ready, proc)
        except AssertionError as exc:
            raise AssertionError(f"`{' '.join(argv[2:4])}` did not come up "
                                 f"({exc or 'it exited'}); its output:\n{output_of(log)}"
                                 ) from None

    def stats(self) -> dict:
        with urllib.request.urlopen(self.sandbox_url + "/_sandbox/stats", timeout=5) as r:
            return json.load(r)

    def reset_stats(self) -> None:
        request = urllib.request.Request(self.sandbox_url + "/_sandbox/stats/reset",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200

    def calls(self, route: str = "GET /api/Lot/{id}") -> int:
        return self.stats()["calls"].get(route, 0)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.procs:
            stop_process(proc, term=False)
            log.close()
        self.procs.clear()


@pytest.fixture
def replicas(redis):
    started = Replicas(redis)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("X-Cache", "")


async def redis_up(http: aiohttp.ClientSession, url: str) -> float | None:
    """The replica's gateway_redis_up gauge, as scraped from its /metrics."""
    async with http.get(f"{url}/metrics") as resp:
        found = re.search(r"^gateway_redis_up (\S+)$", await resp.text(), re.MULTILINE)
    return float(found.group(1)) if found else None


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_cold_lot_asked_50_times_on_each_replica_costs_one_upstream_call(replicas, http):
    a, b = replicas.start().urls
    results = await asyncio.gather(
        *(get_json(http, f"{url}/api/Lot/10042") for url in [a, b] * 50))
    assert {status for status, _, _ in results} == {200}
    assert replicas.calls() == 1


async def test_lot_fetched_via_a_is_served_by_b_without_upstream(replicas, http):
    a, b = replicas.start().urls
    assert (await get_json(http, f"{a}/api/Lot/10043"))[2] == "MISS"
    status, lot, cache = await get_json(http, f"{b}/api/Lot/10043")
    assert status == 200 and lot["id"] == 10043 and cache == "HIT"
    assert replicas.calls() == 1


async def test_save_on_a_is_seen_by_the_next_read_on_b(replicas, http):
    a, b = replicas.start().urls
    lot = 10001
    page = "/api/v1/catalogs/1001/lots?page_size=25"
    saved = -1
    stale: list[tuple[str, int, int]] = []
    stop = asyncio.Event()
    reads = 0

    def qty(body: dict) -> int:
        item = body if "items" not in body else next(x for x in body["items"] if x["id"] == lot)
        return (item["overridenData"] or [{}])[0].get("qty", -1)

    async def reader(url: str, path: str) -> None:
        nonlocal reads
        while not stop.is_set():
            floor = saved
            status, body, _ = await get_json(http, url + path)
            assert status == 200
            reads += 1
            if qty(body) < floor:
                stale.append((url + path, floor, qty(body)))

    readers = [asyncio.create_task(reader(url, path))
               for url in (a, b) for path in (f"/api/Lot/{lot}", page)]
    try:
        for n in range(50):
            writer, other = (a, b) if n % 2 == 0 else (b, a)
            async with http.post(f"{writer}/api/v1/lots/{lot}/override",
                                 json={"qty": n}) as resp:
                assert resp.status == 200, await resp.text()
            saved = n
            for url in (other, writer):  # the very next read, on the other replica first
                assert qty((await get_json(http, f"{url}/api/Lot/{lot}"))[1]) == n
                assert qty((await get_json(http, url + page))[1]) == n
        stop.set()
        await asyncio.gather(*readers)  # a reader's failed assert is raised here
    finally:
        await cancel_all(readers)  # whatever failed above, no reader outlives the test
    assert stale == [] and reads > 100


async def test_concurrent_saves_through_both_replicas_keep_every_field(replicas, http):
    a, b = replicas.start().urls
    fields = {"qty": 2, "l": 10.5, "w": 11.5, "h": 12.5, "wgt": 13.5, "value": 140.0,
              "cpack": "3", "description": "both replicas", "notes": "n", "itemID": 77,
              "forceCrate": True, "notedConditions": "ok", "doNotTip": True, "commodityId": 9}

    async def save(url: str, name: str) -> int:
        async with http.post(f"{url}/api/v1/lots/10050/override",
                             json={name: fields[name]}) as resp:
            return resp.status

    statuses = await asyncio.gather(
        *(save(a if i % 2 else b, name) for i, name in enumerate(fields)))
    assert set(statuses) == {200}
    _, lot, _ = await get_json(http, f"{a}/api/Lot/10050")
    assert lot["overridenData"][0] == fields


async def test_redis_outage_and_return_without_restarting_gateways(replicas, redis, http):
    a, b = replicas.start().urls
    await get_json(http, f"{a}/api/Lot/10060")
    redis.stop()
    for url in (a, b):
        for lot in (10060, 10061):
            status, body, _ = await get_json(http, f"{url}/api/Lot/{lot}")
            assert status == 200 and body["id"] == lot
    for url in (a, b):  # each noticed while serving those reads
        assert await redis_up(http, url) == 0.0
    redis.start()

    async def both_up() -> bool:
        return [await redis_up(http, url) for url in (a, b)] == [1.0, 1.0]

    await eventually(both_up, "both replicas reconnect to Redis by themselves", timeout_s=15,
                     every_s=0.05)
    before = replicas.calls()
    await get_json(http, f"{a}/api/Lot/10062")
    status, _, cache = await get_json(http, f"{b}/api/Lot/10062")
    assert status == 200 and cache == "HIT"
    assert replicas.calls() == before + 1  # sharing resumed


async def test_concurrent_drop_in_puts_on_one_lot_through_both_replicas_are_serialised(
    replicas, http
):
    """The drop-in PUT /api/Lot/{id} takes the lot's lock across replicas, like a save:
    writes of one lot reach the upstream one at a time, and what both replicas serve
    afterwards is what the upstream holds.

    Mutations seen to fail it: Writes._lock taking no lock (`nullcontext()`); taking no
    Redis lease in RedisTier.exclusive (in-process lock only).
    """
    a, b = replicas.start().urls
    lot_id = 10070
    status, lot, _ = await get_json(http, f"{a}/api/Lot/{lot_id}")
    assert status == 200
    assert (await get_json(http, f"{b}/api/Lot/{lot_id}"))[2] == "HIT"  # cached on both
    base = {"customerItemId": lot["customerItemId"],
            "imageLinks": [i["link"] for i in lot["imageLinks"]], "catalogs": lot["catalogs"]}
    replicas.reset_stats()

    async def put(url: str, qty: int) -> int:
        async with http.put(f"{url}/api/Lot/{lot_id}",
                            json={**base, "overridenData": [{"Qty": qty}]}) as resp:
            assert resp.status == 200, await resp.text()
            return qty_of(await resp.json())

    # Each replica gets several at once: both the in-process and the Redis side of the
    # lock are needed to keep them apart.
    answers = await asyncio.gather(*(put(a if n % 2 else b, n) for n in range(1, 11)))
    assert answers == list(range(1, 11))  # each answer is its own write's
    stats = replicas.stats()
    assert stats["calls"]["PUT /api/Lot/{id}"] == 10
    # Only this lot's calls reached the upstream (its writes, and any fresh read of it a
    # write makes under the lock), and never two at once.
    assert set(stats["calls"]) <= {"PUT /api/Lot/{id}", "GET /api/Lot/{id}"}, stats
    assert stats["maxInflight"] == 1, "two writes of one lot reached the upstream at once"
    final = qty_of(await upstream_lot(replicas.sandbox_url, lot_id))
    assert final in answers
    for url in (a, b):  # neither serves what an earlier write left in its cache
        assert qty_of((await get_json(http, f"{url}/api/Lot/{lot_id}"))[1]) == final


def qty_of(lot: dict) -> int | None:
    return (lot.get("overridenData") or [{}])[0].get("qty")


async def upstream_lot(sandbox_url: str, lot_id: int) -> dict:
    """The lot as the sandbox holds it, asked directly with a token of its own."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sandbox_url}/connect/token", data={
            "grant_type": "password", "username": "gateway", "password": "sandbox",
        }) as resp:
            assert resp.status == 200
            token = (await resp.json())["access_token"]
        async with session.get(f"{sandbox_url}/api/Lot/{lot_id}",
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return await resp.json()


def test_two_workers_share_one_port(redis):
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(port)],
            env=env(GW_SERVER_WORKERS="2", GW_CACHE_BACKEND="redis",
                    GW_CACHE_REDIS_URL=redis.url, GW_SANDBOX_LATENCY_MS="5",
                    GW_SANDBOX_JITTER_MS="0"),
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            try:
                wait_until_up(f"http://127.0.0.1:{port}/healthz", proc)
            except AssertionError as exc:
                raise AssertionError(f"the gateway did not come up ({exc or 'it exited'}); "
                                     f"its output:\n{output_of(log)}") from None
            for i in range(60):
                # A new connection each time: the kernel spreads them over the workers,
                # and each worker's access-log line carries its pid.
                probe = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                               headers={"X-Request-ID": f"probe-{i}"})
                with urllib.request.urlopen(probe, timeout=5) as r:
                    assert r.status == 200

            def probe_pids() -> set[int]:
                log.seek(0)
                lines = (json.loads(line) for line in log.read().decode().splitlines()
                         if line.startswith("{"))
                return {line["pid"] for line in lines
                        if str(line.get("request_id", "")).startswith("probe-")}

            eventually_sync(lambda: len(probe_pids()) == 2,
                            "both workers served a probe (two pids in the access log)")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/catalogs/1001/lots",
                                        timeout=10) as r:
                assert r.status == 200
        finally:
            # The whole group goes, workers included, even if the parent hangs.
            code = stop_process(proc, timeout_s=20)
        assert code == 0, output_of(log)


def test_workers_with_the_memory_cache_refuse_to_start():
    result = subprocess.run(
        [*CLI, "serve", "--config", str(ROOT / "config.toml")],
        env=env(GW_SERVER_WORKERS="2"), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "redis" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sign_out_on_one_replica_ends_the_session_on_the_other(replicas):
    a, b = replicas.start(GW_API_KEYS="ops:k-ops-0123456789", GW_SESSION_SECRET="s" * 40).urls
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    # One cookie jar per replica: the browser of an operator behind a load balancer.
    # unsafe=True: keep cookies for a bare IP address (127.0.0.1).
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as on_a,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as on_b,
    ):
        async with on_a.get(f"{a}/sign-in") as resp:
            csrf = token.search(await resp.text()).group(1)
        async with on_a.post(f"{a}/sign-in", data={"api_key": "k-ops-0123456789",
                                                  "csrf_token": csrf},
                             allow_redirects=False) as resp:
            assert resp.status == 303
            cookie = resp.cookies["gw_session"].value
        on_b.cookie_jar.update_cookies({"gw_session": cookie}, response_url=URL(b))
        async with on_b.get(f"{b}/", allow_redirects=False) as resp:
            assert resp.status == 200  # the session is good on b
        async with on_a.get(f"{a}/") as resp:
            csrf = token.search(await resp.text()).group(1)
        async with on_a.post(f"{a}/sign-out", data={"csrf_token": csrf},
                             allow_redirects=False) as resp:
            assert resp.status == 303
        async with on_b.get(f"{b}/", allow_redirects=False) as resp:
            assert resp.status == 303 and "/sign-in" in resp.headers["Location"]
