"""The command line as an operator runs it: real processes, real ports."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gwtesting import env, free_port, get, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway"]


def test_serve_on_the_sandbox_with_no_credentials_then_stop_cleanly() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--port", str(port)],
        env=env(GW_SANDBOX_LATENCY_MS="5", GW_SANDBOX_JITTER_MS="0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/healthz", proc)
        status, body = get(base + "/api/v1/catalogs/1001/lots")
        assert status == 200 and b'"items":[' in body
        assert get(base + "/readyz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_refuses_a_public_address_without_api_keys() -> None:
    result = subprocess.run(
        [*CLI, "serve", "--config", str(ROOT / "config.toml"), "--host", "0.0.0.0"],
        env=env(), capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "GW_API_KEYS" in result.stderr and "0.0.0.0" in result.stderr


def test_config_error_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nttl_s = -1\n")
    result = subprocess.run([*CLI, "serve", "--config", str(bad)], env=env(),
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "cache.ttl_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_command_serves_the_stand_in_alone() -> None:
    port = free_port()
    proc = subprocess.Popen([*CLI, "sandbox", "--port", str(port), "--latency-ms", "0"],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/_sandbox/stats", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
