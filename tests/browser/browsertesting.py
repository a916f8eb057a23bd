"""Helpers for the real-browser tests: the gateway as a subprocess, spinner timing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LATENCY_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def get_json(url: str) -> Any:
    return json.loads(get(url)[1])


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
def running_gateway(**env: str) -> Iterator[str]:
    """`catalog-gateway serve` on a free port; yields its base URL once it is ready."""
    port = free_port()
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("GW_", "ABCONNECT_", "ABC_CLIENT"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config.toml"),
         "--port", str(port)],
        env={**base_env, "GW_SANDBOX_LATENCY_MS": str(LATENCY_MS), "GW_SANDBOX_JITTER_MS": "0",
             **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/readyz", proc)  # ready: the upstream token is in hand
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Installed in the page before a click (or a key press): sets window.__spin to the time
# from the pointer (or key) going down to the first moment the panel has .htmx-request,
# its spinner is displayed and its content dimmed (computed style, read in the
# MutationObserver callback, i.e. before the next frame is painted).
WATCH_SPINNER = """(panelSelector) => {
  window.__spin = null;
  const panel = document.querySelector(panelSelector);
  const spinner = panel.querySelector(':scope > .htmx-indicator');
  const body = panel.querySelector(':scope > .panel-body');
  let t0 = null;
  const start = () => { if (t0 === null) t0 = performance.now(); };
  document.addEventListener('pointerdown', start, {capture: true, once: true});
  document.addEventListener('keydown', start, {capture: true, once: true});
  const observer = new MutationObserver(() => {
    if (t0 === null || !panel.classList.contains('htmx-request')) return;
    const s = getComputedStyle(spinner), b = getComputedStyle(body);
    const box = spinner.getBoundingClientRect();
    if (s.display !== 'none' && s.visibility === 'visible' && Number(s.opacity) === 1
        && box.width > 0 && box.height > 0 && Number(b.opacity) < 1) {
      window.__spin = {delayMs: performance.now() - t0, dimmedTo: Number(b.opacity)};
      observer.disconnect();
    }
  });
  observer.observe(panel, {attributes: true, attributeFilter: ['class']});
}"""


def spinner_delay_ms(page: Any, panel: str, click: Any) -> float:
    """Run `click` (a click or key press) and return how long until `panel`'s spinner
    was visible."""
    page.evaluate(WATCH_SPINNER, panel)
    click()
    page.wait_for_function("window.__spin !== null", timeout=3000)
    spin = page.evaluate("window.__spin")
    assert spin["dimmedTo"] < 1
    return spin["delayMs"]
