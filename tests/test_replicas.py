"""Two gateway processes on one Redis, in front of one sandbox process: what operators
rely on when several replicas run behind a load balancer."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request

import aiohttp
import pytest
from yarl import URL

from gwtesting import RedisServer, env, free_port, wait_until_up
from test_cli import ROOT

CLI = [sys.executable, "-m", "gateway"]


class Replicas:
    def __init__(self, redis: RedisServer, latency_ms: int = 60) -> None:
        self.redis = redis
        self.sandbox_url = f"http://127.0.0.1:{free_port()}"
        self.urls: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.latency_ms = latency_ms

    def start(self, count: int = 2, **extra_env: str) -> Replicas:
        port = self.sandbox_url.rsplit(":", 1)[1]
        sandbox = self._spawn([*CLI, "sandbox", "--port", port, "--latency-ms",
                               str(self.latency_ms), "--jitter-ms", "0"], env())
        wait_until_up(self.sandbox_url + "/_sandbox/stats", sandbox)
        for _ in range(count):
            gw_port = free_port()
            proc = self._spawn(
                [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(gw_port)],
                env(GW_UPSTREAM_MODE="live", GW_UPSTREAM_BASE_URL=self.sandbox_url,
                    GW_UPSTREAM_IDENTITY_URL=self.sandbox_url + "/connect/token",
                    ABCONNECT_USERNAME="gateway", ABCONNECT_PASSWORD="sandbox",
                    GW_CACHE_BACKEND="redis", GW_CACHE_REDIS_URL=self.redis.url,
                    **extra_env))
            url = f"http://127.0.0.1:{gw_port}"
            wait_until_up(url + "/readyz", proc)
            self.urls.append(url)
        return self

    def _spawn(self, argv: list[str], environ: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=environ, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def calls(self, route: str = "GET /api/Lot/{id}") -> int:
        with urllib.request.urlopen(self.sandbox_url + "/_sandbox/stats", timeout=5) as r:
            return json.load(r)["calls"].get(route, 0)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def replicas(redis):
    started = Replicas(redis)
    yield started
    started.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("X-Cache", "")


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
    for n in range(50):
        writer, other = (a, b) if n % 2 == 0 else (b, a)
        async with http.post(f"{writer}/api/v1/lots/{lot}/override", json={"qty": n}) as resp:
            assert resp.status == 200, await resp.text()
        saved = n
        for url in (other, writer):  # the very next read, on the other replica first
            assert qty((await get_json(http, f"{url}/api/Lot/{lot}"))[1]) == n
            assert qty((await get_json(http, url + page))[1]) == n
    stop.set()
    await asyncio.gather(*readers)
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
    async with http.get(f"{a}/metrics") as resp:
        assert "gateway_redis_up 0.0" in await resp.text()
    redis.start()
    for _ in range(100):
        async with http.get(f"{b}/metrics") as resp:
            if "gateway_redis_up 1.0" in await resp.text():
                break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("replica b did not reconnect to Redis")
    await asyncio.sleep(1.2)  # a reconnects on the same schedule
    before = replicas.calls()
    await get_json(http, f"{a}/api/Lot/10062")
    status, _, cache = await get_json(http, f"{b}/api/Lot/10062")
    assert status == 200 and cache == "HIT"
    assert replicas.calls() == before + 1  # sharing resumed


def test_two_workers_share_one_port(redis):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(port)],
        env=env(GW_SERVER_WORKERS="2", GW_CACHE_BACKEND="redis", GW_CACHE_REDIS_URL=redis.url,
                GW_SANDBOX_LATENCY_MS="5", GW_SANDBOX_JITTER_MS="0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", proc)
        pids = set()
        for _ in range(60):
            # A new connection each time: the kernel spreads them over the workers.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                pids.add(json.load(r)["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/catalogs/1001/lots",
                                    timeout=10) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_workers_with_the_memory_cache_refuse_to_start():
    result = subprocess.run(
        [*CLI, "serve", "--config", str(ROOT / "config.toml")],
        env=env(GW_SERVER_WORKERS="2"), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "redis" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sign_out_on_one_replica_ends_the_session_on_the_other(redis):
    started = Replicas(redis).start(GW_API_KEYS="ops:k-ops-123",
                                    GW_SESSION_SECRET="s" * 40)
    a, b = started.urls
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    try:
        # One cookie jar per replica: the browser of an operator behind a load balancer.
        jar = {"cookie_jar": aiohttp.CookieJar(unsafe=True)}  # unsafe: cookies for 127.0.0.1
        async with aiohttp.ClientSession(**jar) as on_a, aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as on_b:
            async with on_a.get(f"{a}/sign-in") as resp:
                csrf = token.search(await resp.text()).group(1)
            async with on_a.post(f"{a}/sign-in", data={"api_key": "k-ops-123",
                                                      "csrf_token": csrf},
                                 allow_redirects=False) as resp:
                assert resp.status == 303
                cookie = resp.cookies["gw_session"].value
            on_b.cookie_jar.update_cookies({"gw_session": cookie}, response_url=yarl_url(b))
            async with on_b.get(f"{b}/", allow_redirects=False) as resp:
                assert resp.status == 200  # the session is good on b
            async with on_a.get(f"{a}/") as resp:
                csrf = token.search(await resp.text()).group(1)
            async with on_a.post(f"{a}/sign-out", data={"csrf_token": csrf},
                                 allow_redirects=False) as resp:
                assert resp.status == 303
            async with on_b.get(f"{b}/", allow_redirects=False) as resp:
                assert resp.status == 303 and "/sign-in" in resp.headers["Location"]
    finally:
        started.stop()


def yarl_url(url: str) -> URL:
    return URL(url)
