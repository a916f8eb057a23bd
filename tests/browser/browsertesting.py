"""Helpers for the real-browser tests: the gateway as a subprocess, spinner timing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gwtesting
from gwtesting import ROOT, get

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LATENCY_MS = 300


def get_json(url: str) -> Any:
    return json.loads(get(url)[1])


@contextmanager
def running_gateway(**env: str) -> Iterator[str]:
    """The gateway as an operator runs it, its sandbox answering after LATENCY_MS."""
    with gwtesting.running_gateway(GW_SANDBOX_LATENCY_MS=str(LATENCY_MS),
                                   GW_SANDBOX_JITTER_MS="0", **env) as base:
        yield base


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
    # The watcher only records once the content is dimmed at all (opacity < 1); a user must
    # see it: dimmed to well under full strength.
    assert spin["dimmedTo"] <= 0.6, f"{panel}'s content barely dims: opacity {spin['dimmedTo']}"
    return spin["delayMs"]
