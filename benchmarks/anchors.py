"""The gateway's warm path beside three anchors, measured side by side in one run.

    make bench-anchors    # installs nginx, Varnish and wrk first if they are missing
    .venv/bin/python benchmarks/anchors.py [--duration 5] [--rounds 3] [--quick]

What a warm hit costs means little as a bare number: it depends on the machine, and this
one is shared and noisy. So the gateway is measured next to servers whose cost is known,
all in front of one sandbox process, serving the same bytes, in the same run, and the
ratios are what is reported:

- nginx `proxy_cache` and Varnish: what a plain HTTP cache costs per request (each holds
  the upstream token itself, so the load generator sends no credentials);
- a bare aiohttp app answering the same bytes from a dict: the floor for any aiohttp server.

Every server is a single process pinned to one CPU (Varnish is one process whose threads
share that CPU); `wrk -t1 -c32` runs pinned to the other. Workloads, all warm (every server
primed and checked to answer from its cache first; the upstream calls made during each
measurement are counted and reported, 0 when warm):

a. one lot, `GET /api/Lot/{id}`: req/s, p50 and p99 latency;
b. a 25-lot event page: the gateway's one `GET /api/v1/catalogs/{id}/lots?page_size=25`
   against the 26 requests a client of nginx or Varnish needs (the catalog and its 25
   lots; pages/s = req/s / 26), and bare aiohttp returning the gateway's page body;
c. the same page with `Accept-Encoding: br` and `gzip`: the gateway and bare aiohttp (which
   serves the gateway's compressed bytes as they are, or the plain body when the gateway did
   not compress).

Rounds are interleaved (every server in every round, in a rotating order) and the median
of the rounds is reported, so that a noisy moment does not favour one server. The Markdown
table and the target checks come from `report()`, ready to paste into the README.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SANDBOX_SEED = 1
PAGE_SIZE = 25
SERVERS = ("gateway", "nginx", "Varnish", "bare aiohttp")
ENCODINGS = ("br", "gzip")
WRK_CONNECTIONS = 32

# ---------------------------------------------------------------------------------------
# Processes


class Processes:
    """Every process started here, each in a session (process group) of its own, so that
    a Ctrl-C reaches only this script, which then stops them all, children included."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], *, cpu: int | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """`argv` in the background, pinned to `cpu` if given; its output in a log file."""
        log = self.tmp / f"{name}.log"
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
        self.started.append((name, proc))
        return proc, log

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            _signal_group(proc, signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            # Whatever it left behind in its group (nginx workers, Varnish's child).
            _signal_group(proc, signal.SIGKILL)
        self.started.clear()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """The path of a system tool; nginx and varnishd live in /usr/sbin, often off PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        sys.exit(f"anchors: `{name}` not found; `make bench-deps` installs nginx, varnish "
                 "and wrk")
    return found


# ---------------------------------------------------------------------------------------
# HTTP from this script (priming and checks, never measured)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes  # as it came on the wire: never decompressed


def fetch(url: str, headers: dict[str, str] | None = None, *, method: str = "GET",
          data: bytes | None = None, timeout_s: float = 30) -> Answer:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return Answer(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read())


def wait_until(url: str, proc: subprocess.Popen, log: Path, what: str,
               ready: Callable[[Answer], bool] = lambda a: a.status < 500,
               limit_s: float = 60) -> None:
    """Poll `url` until `ready(answer)`; fail with the process's log if it exits or is
    not ready within `limit_s`."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if ready(fetch(url, timeout_s=2)):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {limit_s:g} s:\n{_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------
# The servers


def start_sandbox(procs: Processes, latency_ms: float) -> str:
    port = free_port()
    proc, log = procs.start("sandbox", [
        PYTHON, "-m", "gateway", "sandbox", "--port", str(port), "--latency-ms",
        f"{latency_ms:g}", "--jitter-ms", "0", "--seed", str(SANDBOX_SEED)])
    url = f"http://127.0.0.1:{port}"
    wait_until(url + "/_sandbox/stats", proc, log, "the sandbox")
    return url


def sign_in(sandbox_url: str, account: tuple[str, str]) -> str:
    """An access token from the sandbox's identity endpoint (password grant), for nginx
    and Varnish to send upstream."""
    username, password = account
    form = urllib.parse.urlencode(
        {"grant_type": "password", "username": username, "password": password}).encode()
    answer = fetch(sandbox_url + "/connect/token", method="POST", data=form,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    if answer.status != 200:
        raise RuntimeError(f"sign-in at the sandbox failed: {answer.status} {answer.body!r}")
    return json.loads(answer.body)["access_token"]


def upstream_calls(sandbox_url: str) -> int:
    """API calls the sandbox has answered so far (sign-ins not counted)."""
    calls = json.loads(fetch(sandbox_url + "/_sandbox/stats").body)["calls"]
    return sum(n for route, n in calls.items() if " /api/" in route)


def gateway_env(sandbox_url: str, account: tuple[str, str], audit_dir: Path) -> dict[str, str]:
    """This environment without the gateway's own variables, plus live mode against the
    sandbox, the per-caller limits lifted (one wrk sends everything) and the audit trail in
    a temporary directory."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GW_", "ABCONNECT_", "ABC_CLIENT"))}
    username, password = account
    return {
        **base,
        "GW_UPSTREAM_MODE": "live",
        "GW_UPSTREAM_BASE_URL": sandbox_url,
        "GW_UPSTREAM_IDENTITY_URL": sandbox_url + "/connect/token",
        "ABCONNECT_USERNAME": username,
        "ABCONNECT_PASSWORD": password,
        "GW_LIMITS_REQUESTS_PER_S": "1000000",
        "GW_LIMITS_BURST": "1000000",
        "GW_LIMITS_UPSTREAM_SHARE": "1.0",
        "GW_AUDIT_PATH": str(audit_dir / "audit.log"),
    }


def start_gateway(procs: Processes, cpu: int, env: dict[str, str]) -> str:
    """`catalog-gateway serve` as the CLI runs it (its JSON access log goes to a file)."""
    port = free_port()
    proc, log = procs.start("gateway", [
        PYTHON, "-m", "gateway", "serve", "--config", str(ROOT / "config.toml"),
        "--port", str(port)], cpu=cpu, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(url + "/readyz", proc, log, "the gateway", ready=lambda a: a.status == 200)
    return url


NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=anchors:10m max_size=256m
                     inactive=60m use_temp_path=off;
    upstream sandbox {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {upstream};
            proxy_set_header Authorization "Bearer {token}";
            proxy_cache anchors;
            proxy_cache_valid 200 10m;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, cpu: int, sandbox_url: str, token: str) -> str:
    """nginx 1.22 with one worker and a proxy cache in a temporary directory. The upstream
    Host is the sandbox's own, so the image links in the bodies match the gateway's."""
    tmp = procs.tmp / "nginx"
    tmp.mkdir(mode=0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, token=token,
                                      upstream=sandbox_url.removeprefix("http://")))
    proc, log = procs.start("nginx", [
        tool("nginx"), "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
        "-g", "daemon off;"], cpu=cpu)
    url = f"http://127.0.0.1:{port}"
    wait_until(url + "/", proc, log, "nginx", ready=lambda a: True)
    return url


VCL = """\
vcl 4.1;

backend sandbox {{
    .host = "{host}";
    .port = "{upstream_port}";
}}

sub vcl_recv {{
    if (req.method != "GET" && req.method != "HEAD") {{
        return (pass);
    }}
    # The builtin vcl_recv passes every request carrying Authorization or Cookie: look
    # them all up instead (the upstream credential is added on the backend side).
    unset req.http.Authorization;
    unset req.http.Cookie;
    return (hash);
}}

sub vcl_backend_fetch {{
    set bereq.http.Host = "{host}:{upstream_port}";
    set bereq.http.Authorization = "Bearer {token}";
}}

sub vcl_backend_response {{
    if (beresp.status == 200) {{
        set beresp.ttl = 10m;
        return (deliver);
    }}
}}
"""


def start_varnish(procs: Processes, cpu: int, sandbox_url: str, token: str) -> str:
    """varnishd in the foreground with one thread pool, its working directory (-n) and
    VCL in a temporary directory. As root it drops to the `varnish`/`vcache` users, so the
    directory must be readable by them."""
    tmp = procs.tmp / "varnish"
    tmp.mkdir(mode=0o755)
    host, _, upstream_port = sandbox_url.removeprefix("http://").partition(":")
    vcl = tmp / "anchors.vcl"
    vcl.write_text(VCL.format(host=host, upstream_port=upstream_port, token=token))
    vcl.chmod(0o644)
    port = free_port()
    proc, log = procs.start("varnish", [
        tool("varnishd"), "-F", "-a", f"127.0.0.1:{port}", "-f", str(vcl),
        "-s", "malloc,256m", "-n", str(tmp / "work"), "-p", "thread_pools=1"], cpu=cpu)
    url = f"http://127.0.0.1:{port}"
    wait_until(url + "/", proc, log, "varnishd", ready=lambda a: True)
    return url


def start_bare(procs: Processes, cpu: int, bodies: dict[tuple[str, str], Answer]) -> str:
    """This file as a bare aiohttp app (see `serve_bare`) in a process of its own."""
    answers = {key: (a.body, a.headers.get("Content-Encoding")) for key, a in bodies.items()}
    # A client sending no Accept-Encoding and one asking for `identity` get the plain body.
    answers.update({(path, "identity"): answer for (path, encoding), answer in answers.items()
                    if encoding == ""})
    table = procs.tmp / "bare-bodies.pickle"
    table.write_bytes(pickle.dumps(answers))
    port = free_port()
    proc, log = procs.start("bare", [PYTHON, __file__, "--serve-bare", str(port), str(table)],
                            cpu=cpu)
    url = f"http://127.0.0.1:{port}"
    wait_until(url + "/", proc, log, "the bare aiohttp app", ready=lambda a: True)
    return url


def serve_bare(port: int, table: Path) -> None:
    """Answer (path and query, Accept-Encoding) from a dict of bytes; nothing else."""
    from aiohttp import web

    answers = pickle.loads(table.read_bytes())

    async def answer(request: web.Request) -> web.Response:
        found = answers.get((request.path_qs, request.headers.get("Accept-Encoding", "")))
        if found is None:
            return web.Response(status=404)
        body, encoding = found
        response = web.Response(body=body, content_type="application/json")
        if encoding:
            response.headers["Content-Encoding"] = encoding
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---------------------------------------------------------------------------------------
# What is fetched


@dataclass
class Event:
    catalog_id: int
    lot_ids: list[int]

    @property
    def page_path(self) -> str:
        return f"/api/v1/catalogs/{self.catalog_id}/lots?page_size={PAGE_SIZE}"

    @property
    def lot_path(self) -> str:
        return f"/api/Lot/{self.lot_ids[0]}"

    @property
    def client_paths(self) -> list[str]:
        """The 26 requests a client of the plain API makes for the same page."""
        return [f"/api/Catalog/{self.catalog_id}", *(f"/api/Lot/{i}" for i in self.lot_ids)]


def pick_event() -> int:
    """The first event of exactly 25 lots in the sandbox's data (same seed, same data)."""
    from sandbox import SandboxData

    return SandboxData(seed=SANDBOX_SEED).catalog_ids_with_lots(PAGE_SIZE, PAGE_SIZE)[0]


def prime_gateway(gateway: str, catalog_id: int) -> tuple[Event, dict[tuple[str, str], Answer]]:
    """Warm the gateway; return the event and its answers (path, Accept-Encoding) -> bytes,
    each checked to be a cache hit."""
    path = f"/api/v1/catalogs/{catalog_id}/lots?page_size={PAGE_SIZE}"
    page = fetch(gateway + path)
    if page.status != 200:
        raise RuntimeError(f"gateway page: {page.status} {page.body[:300]!r}")
    event = Event(catalog_id, [lot["id"] for lot in json.loads(page.body)["items"]])
    wanted = [(event.page_path, ""), (event.lot_path, "")]
    wanted += [(event.page_path, encoding) for encoding in ENCODINGS]
    bodies = {}
    for key in wanted:
        for _ in range(2):  # the second is a hit
            answer = fetch(gateway + key[0], {"Accept-Encoding": key[1]} if key[1] else {})
        # A compressed variant may be encoded on the way out, without a cache header.
        cache = answer.headers.get("X-Cache", "HIT" if key[1] else None)
        if answer.status != 200 or cache != "HIT":
            raise RuntimeError(f"gateway {key}: {answer.status}, "
                               f"X-Cache {answer.headers.get('X-Cache')}")
        bodies[key] = answer
    return event, bodies


def prime_cache(name: str, url: str, paths: list[str], is_hit: Callable[[Answer], bool]
                ) -> dict[str, bytes]:
    """Fill nginx's or Varnish's cache (the cold fetches at once), then check each path is
    a hit; return path -> body."""
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        list(pool.map(lambda p: fetch(url + p), paths))
    bodies = {}
    for path in paths:
        answer = fetch(url + path)
        if answer.status != 200 or not is_hit(answer):
            raise RuntimeError(f"{name} {path}: {answer.status}, not a cache hit: "
                               f"{answer.headers}")
        bodies[path] = answer.body
    return bodies


def nginx_hit(answer: Answer) -> bool:
    return answer.headers.get("X-Cache-Status") == "HIT"


def varnish_hit(answer: Answer) -> bool:
    """X-Varnish of a hit holds two ids: this request's and the one that stored it."""
    return len(answer.headers.get("X-Varnish", "").split()) == 2


# ---------------------------------------------------------------------------------------
# wrk


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    upstream_calls: int = 0


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> Result:
    """Requests/sec, the 50% and 99% latencies and the error counts of `wrk --latency`."""
    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if match is None:
            raise RuntimeError(f"no {percent}% latency in wrk's output:\n{text}")
        return float(match.group(1)) * _UNITS_MS[match.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{text}")
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        errors += int(non_2xx.group(1))
    if socket_errors := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                                  r"timeout (\d+)", text):
        errors += sum(int(n) for n in socket_errors.groups())
    return Result(float(rps.group(1)), latency("50"), latency("99"), errors)


def lua_cycle(tmp: Path, paths: list[str]) -> Path:
    """A wrk script sending `paths` in turn, one per request."""
    script = tmp / "cycle.lua"
    quoted = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{{quoted}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n % #paths + 1\n"
        "  return wrk.format(nil, paths[n])\n"
        "end\n")
    return script


@dataclass
class Target:
    """What wrk sends to one server for one workload."""
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None
    per_page: int = 1  # requests per page: req/s / per_page = pages/s


def run_wrk(target: Target, duration_s: float, cpu: int) -> Result:
    argv = ["taskset", "-c", str(cpu), tool("wrk"), "-t1", f"-c{WRK_CONNECTIONS}",
            f"-d{duration_s:g}s", "--latency"]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    if target.script is not None:
        argv += ["-s", str(target.script)]
    done = subprocess.run([*argv, target.url], capture_output=True, text=True, check=False,
                          timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------------------------------
# Workloads and rounds

LOT, PAGE = "lot", "page"


def workloads(urls: dict[str, str], event: Event, cycle: Path) -> dict[str, dict[str, Target]]:
    """workload -> server -> what wrk sends it."""
    plan = {
        LOT: {name: Target(url + event.lot_path) for name, url in urls.items()},
        PAGE: {
            "gateway": Target(urls["gateway"] + event.page_path),
            "nginx": Target(urls["nginx"] + "/", script=cycle, per_page=len(event.client_paths)),
            "Varnish": Target(urls["Varnish"] + "/", script=cycle,
                              per_page=len(event.client_paths)),
            "bare aiohttp": Target(urls["bare aiohttp"] + event.page_path),
        },
    }
    for encoding in ENCODINGS:
        plan[f"page {encoding}"] = {
            name: Target(urls[name] + event.page_path, {"Accept-Encoding": encoding})
            for name in ("gateway", "bare aiohttp")}
    return plan


def measure(plan: dict[str, dict[str, Target]], sandbox: str, duration_s: float, rounds: int,
            wrk_cpu: int) -> dict[str, dict[str, list[Result]]]:
    """Every (workload, server) once per round, the servers' order rotating each round;
    each result carries the upstream calls made while it ran (0 when warm)."""
    results: dict[str, dict[str, list[Result]]] = {w: {s: [] for s in t} for w, t in
                                                   plan.items()}
    for number in range(rounds):
        print(f"round {number + 1}/{rounds}", file=sys.stderr, flush=True)
        for workload, targets in plan.items():
            names = list(targets)
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                before = upstream_calls(sandbox)
                result = run_wrk(targets[name], duration_s, wrk_cpu)
                result.upstream_calls = upstream_calls(sandbox) - before
                per_page = targets[name].per_page
                result.rps /= per_page
                results[workload][name].append(result)
                print(f"  {workload:<9} {name:<13} {result.rps:9.0f}/s  p50 "
                      f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                      + (f"  ERRORS {result.errors}" if result.errors else "")
                      + (f"  upstream calls {result.upstream_calls}"
                         if result.upstream_calls else ""),
                      file=sys.stderr, flush=True)
    return results


def warm_up(plan: dict[str, dict[str, Target]], wrk_cpu: int) -> None:
    """One short unmeasured wrk run per (workload, server): connection pools, Varnish's
    threads and every code path are up before the first measurement."""
    for targets in plan.values():
        for target in targets.values():
            run_wrk(target, 1, wrk_cpu)


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
        sum(r.upstream_calls for r in results),
    )


# ---------------------------------------------------------------------------------------
# Report


@dataclass
class Sizes:
    lot: int
    page: int
    client_page: int  # the 26 bodies a client of the plain API reads for the same page
    compressed: dict[str, int | None]  # encoding -> bytes on the wire, None: not compressed


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)

    def version(argv: list[str], pattern: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        found = re.search(pattern, done.stdout + done.stderr)
        return found.group(0) if found else "unknown"

    return [
        f"machine: {model.group(1) if model else platform.processor()}, "
        f"{os.cpu_count()} cores; kernel {platform.release()}; "
        f"Python {platform.python_version()}",
        "anchors: " + ", ".join([version([tool("nginx"), "-v"], r"nginx/\S+"),
                                 version([tool("varnishd"), "-V"], r"varnish-[\d.]+"),
                                 version([tool("wrk"), "-v"], r"wrk \S+")]),
    ]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _row(label: str, values: dict[str, float | None], digits: int = 0) -> str:
    cells = [_fmt(values.get(s), digits) for s in SERVERS]
    gw = values.get("gateway")
    return (f"| {label} | " + " | ".join(cells)
            + f" | {_ratio(gw, values.get('nginx'))} | {_ratio(gw, values.get('bare aiohttp'))} |")


def table(summary: dict[str, dict[str, Result]], sizes: Sizes) -> list[str]:
    def column(workload: str, metric: str) -> dict[str, float | None]:
        return {s: getattr(r, metric) for s, r in summary[workload].items()}

    lines = [
        "| workload | " + " | ".join(SERVERS) + " | gateway ÷ nginx | gateway ÷ bare |",
        "| --- |" + " ---: |" * (len(SERVERS) + 2),
        _row(f"one lot ({sizes.lot} B), req/s", column(LOT, "rps")),
        _row("one lot, p50 ms", column(LOT, "p50_ms"), 2),
        _row("one lot, p99 ms", column(LOT, "p99_ms"), 2),
        _row(f"25-lot page ({sizes.page} B; nginx/Varnish: 26 requests, "
             f"{sizes.client_page} B), pages/s", column(PAGE, "rps")),
        _row("25-lot page, p99 ms per request", column(PAGE, "p99_ms"), 2),
    ]
    for encoding in ENCODINGS:
        size = sizes.compressed[encoding]
        what = f"{size} B" if size is not None else "not compressed"
        lines.append(_row(f"page, Accept-Encoding: {encoding} ({what}), pages/s",
                          column(f"page {encoding}", "rps")))
        lines.append(_row(f"page, {encoding}, p99 ms", column(f"page {encoding}", "p99_ms"), 2))
    return lines


def _check(label: str, value: float | None, met: bool, shown: str | None = None) -> str:
    if value is None:
        return f"target: {label}: {shown or 'not measured'} (not met)"
    return f"target: {label}: {shown or f'{value:.2f}'} ({'met' if met else 'not met'})"


def targets(summary: dict[str, dict[str, Result]], sizes: Sizes) -> list[str]:
    lot, page = summary[LOT], summary[PAGE]
    gw, bare = "gateway", "bare aiohttp"
    lot_share = lot[gw].rps / lot[bare].rps
    page_vs_nginx = page[gw].rps / page["nginx"].rps
    page_share = page[gw].rps / page[bare].rps
    lot_p99 = lot[gw].p99_ms / lot[bare].p99_ms
    page_p99 = page[gw].p99_ms / page[bare].p99_ms
    lines = [
        _check("warm single-lot hit >= 0.85 x bare aiohttp", lot_share, lot_share >= 0.85),
        _check("warm 25-lot page >= 4 x nginx pages/s", page_vs_nginx, page_vs_nginx >= 4),
        _check("warm 25-lot page >= 0.6 x bare aiohttp same body", page_share,
               page_share >= 0.6),
        _check("single-lot p99 <= 2 x bare aiohttp's", lot_p99, lot_p99 <= 2),
        _check("25-lot page p99 <= 2 x bare aiohttp's", page_p99, page_p99 <= 2),
    ]
    for encoding in ENCODINGS:
        label = (f"compressed page ({encoding}) >= 4 x smaller and >= 0.8 x uncompressed "
                 "req/s")
        size = sizes.compressed[encoding]
        if size is None:
            lines.append(_check(label, None, False, "not compressed"))
            continue
        smaller = sizes.page / size
        speed = summary[f"page {encoding}"][gw].rps / page[gw].rps
        lines.append(_check(label, speed, smaller >= 4 and speed >= 0.8,
                            f"{smaller:.1f} x smaller, {speed:.2f} x req/s"))
    return lines


def report(summary: dict[str, dict[str, Result]], sizes: Sizes, info: list[str],
           settings: str) -> str:
    """The whole result as Markdown: machine, settings, table, targets."""
    warm = {s: sum(r.upstream_calls for r in per.values())
            for s, per in _by_server(summary).items()}
    errors = sum(r.errors for per in summary.values() for r in per.values())
    notes = [
        "upstream calls during the measurements: "
        + ", ".join(f"{s} {n}" for s, n in warm.items()),
        f"wrk errors (non-2xx, socket): {errors}",
    ]

    def bullets(lines: list[str]) -> list[str]:
        return [f"- {line}" for line in lines]

    return "\n".join([
        *bullets([*info, settings]), "",
        *table(summary, sizes), "",
        *bullets(targets(summary, sizes)), "",
        *bullets(notes),
    ])


def _by_server(summary: dict[str, dict[str, Result]]) -> dict[str, dict[str, Result]]:
    by: dict[str, dict[str, Result]] = {s: {} for s in SERVERS}
    for workload, per in summary.items():
        for server, result in per.items():
            by[server][workload] = result
    return by


# ---------------------------------------------------------------------------------------


def cpus() -> tuple[int, int]:
    """(the CPU for the server under test, the CPU for wrk)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        print("anchors: one CPU only: server and wrk share it", file=sys.stderr)
    return available[-1], available[0]


def run(duration_s: float, rounds: int, latency_ms: float) -> str:
    from sandbox import SERVICE_ACCOUNT

    server_cpu, wrk_cpu = cpus()
    tmp = Path(tempfile.mkdtemp(prefix="gw-anchors-"))
    tmp.chmod(0o755)  # nginx workers and Varnish run as other users when started as root
    procs = Processes(tmp)
    try:
        info = machine()
        catalog_id = pick_event()
        sandbox = start_sandbox(procs, latency_ms)
        token = sign_in(sandbox, SERVICE_ACCOUNT)
        (tmp / "audit").mkdir()
        gateway = start_gateway(procs, server_cpu,
                                gateway_env(sandbox, SERVICE_ACCOUNT, tmp / "audit"))
        nginx = start_nginx(procs, server_cpu, sandbox, token)
        varnish = start_varnish(procs, server_cpu, sandbox, token)
        print("priming (cold fetches through every cache)", file=sys.stderr, flush=True)
        event, gateway_bodies = prime_gateway(gateway, catalog_id)
        bare = start_bare(procs, server_cpu, gateway_bodies)
        urls = {"gateway": gateway, "nginx": nginx, "Varnish": varnish, "bare aiohttp": bare}
        cached = {
            "nginx": prime_cache("nginx", nginx, event.client_paths, nginx_hit),
            "Varnish": prime_cache("Varnish", varnish, event.client_paths, varnish_hit),
        }
        sizes = check_same_bytes(bare, event, gateway_bodies, cached)
        plan = workloads(urls, event, lua_cycle(tmp, event.client_paths))
        warm_up(plan, wrk_cpu)
        raw = measure(plan, sandbox, duration_s, rounds, wrk_cpu)
        summary = {w: {s: median(rs) for s, rs in per.items()} for w, per in raw.items()}
        settings = (f"load: wrk -t1 -c{WRK_CONNECTIONS} -d{duration_s:g}s per measurement, "
                    f"median of {rounds} interleaved round(s); servers pinned to CPU "
                    f"{server_cpu}, wrk to CPU {wrk_cpu}; event {event.catalog_id}, "
                    f"lot {event.lot_ids[0]}")
        return report(summary, sizes, info, settings)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def check_same_bytes(bare: str, event: Event, gateway_bodies: dict[tuple[str, str], Answer],
                     cached: dict[str, dict[str, bytes]]) -> Sizes:
    """Check that nginx, Varnish (`cached`: path -> body) and the bare app answer the single
    lot with the gateway's bytes; return the sizes served."""
    lot = gateway_bodies[(event.lot_path, "")].body
    served = {**cached, "bare aiohttp": {event.lot_path: fetch(bare + event.lot_path).body}}
    for name, bodies in served.items():
        if bodies[event.lot_path] != lot:
            raise RuntimeError(f"{name} does not serve the gateway's bytes for "
                               f"{event.lot_path}")
    page = gateway_bodies[(event.page_path, "")].body
    compressed: dict[str, int | None] = {}
    for encoding in ENCODINGS:
        answer = gateway_bodies[(event.page_path, encoding)]
        is_compressed = answer.headers.get("Content-Encoding") == encoding
        compressed[encoding] = len(answer.body) if is_compressed else None
    return Sizes(len(lot), len(page), sum(len(b) for b in served["nginx"].values()), compressed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all servers (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="2 s, one round")
    parser.add_argument("--latency-ms", type=float, default=600.0,
                        help="sandbox latency (default: %(default)s)")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "TABLE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
        return
    duration, rounds = (2.0, 1) if args.quick else (args.duration, args.rounds)
    # Ctrl-C (even when started with SIGINT ignored, as in the background) and SIGTERM
    # unwind, so every process started is stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(run(duration, rounds, args.latency_ms))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
