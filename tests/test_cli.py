"""The command line as an operator runs it: real processes, real ports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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
