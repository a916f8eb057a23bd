"""Helpers shared by the tests: timing, and real processes on loopback ports."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
import os
import signal
import socket
import ssl
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


# For gateway processes whose tests are not about the per-caller rate limit: they send
# bursts from one address on purpose.
UNLIMITED = {"GW_LIMITS_REQUESTS_PER_S": "1000000000", "GW_LIMITS_BURST": "1000000000"}


def env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's own variables, plus `extra`; the audit trail
    in a fresh temporary directory unless `extra` names one."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GW_", "ABCONNECT_", "ABC_CLIENT"))}
    audit = os.path.join(tempfile.mkdtemp(prefix="gw-audit-"), "audit.log")
    return {**base, "GW_AUDIT_PATH": audit, **extra}


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
    """`catalog-gateway serve` on a free loopback port with config.toml and the given env
    (no rate limit unless it sets one);
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
            env=env(**{**UNLIMITED, **extra_env}), stdout=subprocess.DEVNULL, stderr=log,
            cwd=ROOT)
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
    on the same port to simulate an outage.

    requirepass: the server asks for this password (the default user's), and `url`
    carries it (`redis://:<password>@...`). tls: the server speaks only TLS, with a
    self-signed certificate for 127.0.0.1, and `url` is `rediss://...?ssl_ca_certs=...`
    trusting it."""

    def __init__(self, requirepass: str | None = None, *, tls: bool = False) -> None:
        self.port = free_port()
        self.requirepass = requirepass
        self.tls_dir = Path(tempfile.mkdtemp(prefix="redis-tls-")) if tls else None
        auth = f":{requirepass}@" if requirepass else ""
        self.url = f"{'rediss' if tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"
        if self.tls_dir is not None:
            _self_signed(self.tls_dir)
            self.url += f"?ssl_ca_certs={self.tls_dir / 'cert.pem'}"
        self.proc: subprocess.Popen | None = None

    def url_with(self, password: str) -> str:
        """`url` with another password in it."""
        return self.url.replace(f"://:{self.requirepass}@" if self.requirepass else "://",
                                f"://:{password}@", 1)

    def start(self) -> RedisServer:
        argv = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                # DEBUG SLEEP lets a test make this Redis slow (Redis 7 disables it by
                # default).
                "--enable-debug-command", "local"]
        if self.tls_dir is not None:
            argv += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls_dir / "cert.pem"),
                     "--tls-key-file", str(self.tls_dir / "key.pem"),
                     "--tls-ca-cert-file", str(self.tls_dir / "cert.pem"),
                     "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(self.port)]
        if self.requirepass:
            argv += ["--requirepass", self.requirepass]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # Up when it answers PING, even if only to ask for the password.
                if self._ping().startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start (is it installed? `make test` "
                             "installs it)")

    def _ping(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            if self.tls_dir is None:
                s.sendall(b"PING\r\n")
                return s.recv(16)
            context = ssl.create_default_context(cafile=str(self.tls_dir / "cert.pem"))
            with context.wrap_socket(s, server_hostname="127.0.0.1") as t:
                t.sendall(b"PING\r\n")
                return t.recv(16)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def _self_signed(directory: Path) -> None:
    """cert.pem and key.pem in `directory`: a certificate for 127.0.0.1, valid a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


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
