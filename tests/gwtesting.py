"""Helpers shared by the tests: timing, and real processes on loopback ports."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - start


async def gather_timed(*awaitables: Awaitable[Any]) -> tuple[list[Any], float]:
    start = time.perf_counter()
    results = await asyncio.gather(*awaitables)
    return results, time.perf_counter() - start


async def eventually(
    condition: Callable[[], Any], what: str, timeout_s: float = 10.0, every_s: float = 0.01
) -> Any:
    """Poll `condition()` (a plain or async callable) until it is truthy; return its value.
    Fails naming `what` after `timeout_s`: a wait for a condition, never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(every_s)


def eventually_sync(
    condition: Callable[[], Any], what: str, timeout_s: float = 10.0, every_s: float = 0.02
) -> Any:
    """`eventually` for code outside an event loop."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(every_s)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GW_", "ABCONNECT_", "ABC_CLIENT"))}
    return {**base, **extra}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited 15 s later; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {limit_s}s")


@contextmanager
def running_gateway(**extra_env: str) -> Iterator[str]:
    """`catalog-gateway serve` on a free loopback port with config.toml and the given env;
    yields its base URL once /readyz answers (the upstream token is in hand), stops it
    with SIGTERM afterwards.

    Its log goes to a file (a pipe nobody reads could fill up and stall the server) and is
    shown if the process does not come up.
    """
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config.toml"),
             "--port", str(port)],
            env=env(**extra_env), stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_up(base + "/readyz", proc)
            except AssertionError:
                log.seek(0)
                raise AssertionError(log.read().decode(errors="replace")) from None
            yield base
        finally:
            stop(proc)


class RedisServer:
    """A real redis-server on a loopback port, no persistence; stop() and start() again
    on the same port to simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no",
             # DEBUG SLEEP lets a test make this Redis slow (Redis 7 disables it by default).
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start (is it installed? `make test` "
                             "installs it)")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@contextmanager
def running_sandbox(port: int) -> Iterator[str]:
    """`catalog-gateway sandbox` (no latency) on `port`; yields its base URL."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sandbox", "--port", str(port),
             "--latency-ms", "0", "--jitter-ms", "0"],
            env=env(), stdout=log, stderr=log, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, "the sandbox exited"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the sandbox did not come up"
                    time.sleep(0.05)
            yield base
        finally:
            stop(proc)
