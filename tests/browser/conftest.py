"""Real-browser fixtures: Debian's Chromium driven by Playwright's sync API.

The gateway under test runs as a subprocess on its sandbox (browsertesting.py), which
answers after a fixed 300 ms so that loading states last long enough to see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from browsertesting import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
