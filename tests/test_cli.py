"""The command line as an operator runs it: real processes, real ports."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gateway import logs

from gwtesting import env, eventually_sync, free_port, get

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway"]


class Process:
    """A CLI process whose output goes to a file (a pipe nobody reads could fill up and
    stall it), shown when something goes wrong."""

    def __init__(self, proc: subprocess.Popen, log: IO[bytes]) -> None:
        self.proc, self.log = proc, log

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def answers(self, url: str) -> bool:
        """True once `url` answers; fails at once, with the output, if the process ended."""
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.output()}"
        try:
            get(url)
            return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextmanager
def started(*args: str, **extra_env: str) -> Iterator[Process]:
    """`python -m gateway *args`, stopped (killed if it must be) whatever happens."""
    with tempfile.TemporaryFile() as log:
        process = Process(subprocess.Popen([*CLI, *args], env=env(**extra_env), cwd=ROOT,
                                           stdout=log, stderr=subprocess.STDOUT), log)
        try:
            yield process
        finally:
            process.stop()


def test_serve_on_the_sandbox_with_no_credentials_then_stop_cleanly() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started("serve", "--config", str(ROOT / "config.toml"), "--port", str(port),
                 GW_SANDBOX_LATENCY_MS="5", GW_SANDBOX_JITTER_MS="0") as gateway:
        eventually_sync(lambda: gateway.answers(base + "/healthz"), "/healthz answers",
                        timeout_s=30, every_s=0.1)
        status, body = get(base + "/api/v1/catalogs/1001/lots")
        assert status == 200 and len(json.loads(body)["items"]) == 25
        assert get(base + "/readyz")[0] == 200
        assert gateway.stop() == 0, gateway.output()


def test_refuses_a_public_address_without_api_keys() -> None:
    result = subprocess.run(
        [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--host", "0.0.0.0"],
        env=env(), capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "GW_API_KEYS" in result.stderr and "0.0.0.0" in result.stderr


def test_refuses_to_start_when_it_cannot_keep_its_audit_trail(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-such-dir" / "audit.log"
    result = subprocess.run(
        [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(free_port())],
        env=env(GW_AUDIT_PATH=str(nowhere)), capture_output=True, text=True, timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "audit.path" in result.stderr and str(nowhere) in result.stderr


def test_config_error_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nttl_s = -1\n")
    result = subprocess.run([*CLI, "serve", "--config", str(bad)], env=env(),
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "cache.ttl_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_command_serves_the_stand_in_alone() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started("sandbox", "--port", str(port), "--latency-ms", "0") as sandbox:
        eventually_sync(lambda: sandbox.answers(base + "/_sandbox/stats"),
                        "/_sandbox/stats answers", timeout_s=30, every_s=0.1)
        stats = json.loads(get(base + "/_sandbox/stats")[1])
        assert stats["inflight"] == 0 and "calls" in stats
        assert sandbox.stop() == 0, sandbox.output()


def served(tmp_path: Path, **extra_env: str) -> tuple[str, dict[str, str]]:
    """A base URL on a free port and the environment for `serve` there: the sandbox with
    little latency, the audit trail under tmp_path."""
    port = free_port()
    return f"http://127.0.0.1:{port}", {
        "GW_SERVER_PORT": str(port), "GW_SANDBOX_LATENCY_MS": "5", "GW_SANDBOX_JITTER_MS": "0",
        "GW_AUDIT_PATH": str(tmp_path / "audit.log"), **extra_env}


def status_of(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> int:
    request = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_log_line_is_json_whatever_the_request(tmp_path: Path) -> None:
    base, environment = served(tmp_path)
    with started("serve", "--config", str(ROOT / "config.toml"), **environment) as gateway:
        eventually_sync(lambda: gateway.answers(base + "/readyz"), "/readyz answers",
                        timeout_s=30, every_s=0.1)
        forged = "%0a2026-01-01%2000:00:00,000%20INFO%20gateway.overrides%20%7B%22actor%22"
        for path in (f"/api/x{forged}", f"/x{forged}", f"/api/v1/lots/1{forged}/override",
                     "/api/x%0d%0a%7B%22level%22:%22INFO%22%7D", "/api/Lot/%ff%00"):
            status_of(base + path)
            status_of(base + path, method="POST")
        status_of(base + "/api/Lot/1", **{"X-API-Key": "\xff"})
        status_of(base + "/api/v1/lots/1001/override", method="POST", data=b'{"qty": "x"}',
                  **{"X-Request-ID": "cli-req-1", "Content-Type": "application/json"})
        assert gateway.stop() == 0
        output = gateway.output()

    lines = [json.loads(line) for line in output.splitlines()]  # every line, or it fails
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    assert not any(x["message"].startswith("2026") for x in lines)
    access = [x for x in lines if x["logger"] == "gateway.access"]
    assert len(access) >= 12 and all("\n" not in x["route"] for x in access)
    mine = [x for x in lines if x.get("request_id") == "cli-req-1"]
    assert {x["logger"] for x in mine} == {"gateway.access"}
    assert mine[0]["status"] == 422 and mine[0]["route"] == "/api/v1/lots/{id}/override"
    audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert any(x["request_id"] == "cli-req-1" and x["outcome"] == "rejected" for x in audit)


def test_a_client_slow_to_send_its_headers_is_cut_off(tmp_path: Path) -> None:
    base, environment = served(tmp_path, GW_SERVER_READ_TIMEOUT_S="1")
    with started("serve", "--config", str(ROOT / "config.toml"), **environment) as gateway:
        eventually_sync(lambda: gateway.answers(base + "/healthz"), "/healthz answers",
                        timeout_s=30, every_s=0.1)
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            start = time.monotonic()
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
            assert conn.recv(1024) == b""  # closed, with no answer
            took = time.monotonic() - start
        assert 0.5 < took < 8, took
        assert status_of(base + "/healthz") == 200  # others are served meanwhile


def test_the_admin_port_serves_metrics_apart_from_the_api(tmp_path: Path) -> None:
    admin = free_port()
    base, environment = served(tmp_path, GW_SERVER_ADMIN_PORT=str(admin))
    with started("serve", "--config", str(ROOT / "config.toml"), **environment) as gateway:
        eventually_sync(lambda: gateway.answers(base + "/readyz"), "/readyz answers",
                        timeout_s=30, every_s=0.1)
        assert status_of(base + "/metrics") == 404
        status, body = get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        # The same figures as the API's: its requests are counted there.
        assert b'gateway_http_requests_total{method="GET",route="/readyz",status="200"}' in body
        assert status_of(f"http://127.0.0.1:{admin}/healthz") == 404
        assert gateway.stop() == 0, gateway.output()


def test_workers_share_the_admin_port_and_log_their_pids(tmp_path: Path, redis) -> None:
    admin = free_port()
    base, environment = served(
        tmp_path, GW_SERVER_ADMIN_PORT=str(admin), GW_SERVER_WORKERS="2",
        GW_CACHE_BACKEND="redis", GW_CACHE_REDIS_URL=redis.url)
    with started("serve", "--config", str(ROOT / "config.toml"), **environment) as gateway:
        eventually_sync(lambda: gateway.answers(base + "/readyz"), "/readyz answers",
                        timeout_s=30, every_s=0.1)

        def both_workers_answered() -> bool:
            # A new connection each time: the kernel spreads them over the workers.
            assert status_of(base + "/healthz") == 200
            # Complete lines of the gateway's own log (the sandbox process beside the
            # workers prints a banner of its own).
            written = gateway.output().rpartition("\n")[0].splitlines()
            lines = [json.loads(line) for line in written if line.startswith("{")]
            return len({x["pid"] for x in lines if x["logger"] == "gateway.access"}) == 2

        eventually_sync(both_workers_answered, "both workers answer", timeout_s=30)
        for _ in range(10):
            assert get(f"http://127.0.0.1:{admin}/metrics")[0] == 200
        assert status_of(base + "/metrics") == 404
        assert gateway.stop(timeout_s=20) == 0, gateway.output()


def test_log_set_up_replaces_any_earlier_format() -> None:
    """A library imported before the set-up may have called logging.basicConfig: its
    plain-text handler goes, and warnings are logged as JSON too."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    earlier, ours = io.StringIO(), io.StringIO()
    try:
        root.addHandler(logging.StreamHandler(earlier))
        logs.configure(stream=ours)
        logging.getLogger("gateway.test").info("line one\nline two")
        warnings.warn("a warning\nin two lines", UserWarning, stacklevel=1)
        try:
            raise ValueError("boom\nboom")
        except ValueError:
            logging.getLogger("gateway.test").exception("failed")
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert earlier.getvalue() == ""
    lines = [json.loads(line) for line in ours.getvalue().splitlines()]
    assert [x["logger"] for x in lines] == ["gateway.test", "py.warnings", "gateway.test"]
    assert lines[0]["message"] == "line one\nline two" and lines[0]["level"] == "INFO"
    assert "ValueError: boom\nboom" in lines[2]["exception"]
