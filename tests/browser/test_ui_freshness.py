"""Freshness in Chromium: the lots footer says how old the data is, and Refresh reads a lot
changed at the upstream (not through the gateway), with the panel's spinner.

The sandbox runs as a process of its own here, so the test can change a lot there
directly (its HTTP API, as another client of the Catalog API would) and take it down;
the gateway runs in live mode in front of it, at the browser tests' 300 ms.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from playwright.sync_api import expect

import gwtesting
from browsertesting import LATENCY_MS, get_json, spinner_delay_ms
from gwtesting import free_port, running_sandbox

EVENT = 1001
SPINNER_LIMIT_MS = 100


def call(url: str, method: str = "GET", body: Any = None, **headers: str) -> Any:
    data = None if body is None else (
        body if isinstance(body, bytes) else json.dumps(body).encode())
    if body is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=15) as resp:
        return json.loads(resp.read() or b"null")


class Upstream:
    """The sandbox, spoken to directly as a Catalog API client."""

    def __init__(self, url: str) -> None:
        self.url = url
        form = b"grant_type=password&username=gateway&password=sandbox"
        self.token = call(url + "/connect/token", "POST", form,
                          **{"Content-Type": "application/x-www-form-urlencoded"})["access_token"]

    def configure(self, **knobs: Any) -> None:
        call(self.url + "/_sandbox/config", "POST", knobs)

    def set_qty(self, lot_id: int, qty: int) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        lot = call(f"{self.url}/api/Lot/{lot_id}", **auth)
        call(f"{self.url}/api/Lot/{lot_id}", "PUT", {
            "customerItemId": lot["customerItemId"],
            "imageLinks": [i["link"] for i in lot["imageLinks"]],
            "overridenData": [{**(lot["overridenData"] or [{}])[0], "qty": qty}],
            "catalogs": lot["catalogs"],
        }, **auth)


@pytest.fixture
def stack() -> Iterator[tuple[str, Upstream]]:
    """(gateway base URL, its upstream): a sandbox process and a gateway in front of it."""
    with running_sandbox(free_port()) as sandbox:
        upstream = Upstream(sandbox)
        upstream.configure(latency_ms=LATENCY_MS, jitter_ms=0)
        with gwtesting.running_gateway(
            GW_UPSTREAM_MODE="live", GW_UPSTREAM_BASE_URL=sandbox,
            GW_UPSTREAM_IDENTITY_URL=sandbox + "/connect/token",
            ABCONNECT_USERNAME="gateway", ABCONNECT_PASSWORD="sandbox",
            # An outage of one refresh must not open the breaker for the next one.
            GW_UPSTREAM_BREAKER_MIN_CALLS="1000",
        ) as base:
            yield base, upstream


def qty_input(page: Any, lot_id: int) -> Any:
    return page.locator(f"#lot-{lot_id}-qty-input")


def fetched_at(page: Any) -> datetime:
    """When the page's oldest part was fetched, as the page says (whole seconds: it is
    derived from the part's age, so the same fetch may read one second apart)."""
    text = page.locator("#lots-age time").get_attribute("datetime")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_refresh_shows_a_lot_changed_upstream_with_the_spinner_and_resets_the_age(
    stack, page,
):
    """Mutation seen to fail it: in ui.views.wants_fresh, read `refresh` as "true" instead
    of "1" (the button then reloads the panel from the cache)."""
    base, upstream = stack
    lot_id = get_json(f"{base}/api/v1/catalogs/{EVENT}/lots")["items"][0]["id"]
    page.goto(f"{base}/?event={EVENT}")
    age = page.locator("#lots-age")
    expect(age).to_contain_text("Data from just now")
    expect(qty_input(page, lot_id)).to_have_value("1")
    loaded_at = fetched_at(page)

    # The upstream fails: Refresh keeps the last good copy, says so, and is no error page.
    upstream.configure(down=True)
    time.sleep(2.1)  # a new fetch would be at least two seconds later
    page.locator("#lots-refresh").click()
    expect(age).to_have_class("age is-stale", timeout=10_000)
    expect(age).to_contain_text("served from the last good copy: the upstream is failing")
    assert abs((fetched_at(page) - loaded_at).total_seconds()) <= 1  # the same old copy
    expect(qty_input(page, lot_id)).to_have_value("1")

    # Back up, and the lot changed there behind the gateway's back.
    upstream.configure(down=False)
    upstream.set_qty(lot_id, 777)
    page.reload()  # a plain reload is still served from the cache
    expect(qty_input(page, lot_id)).to_have_value("1")

    delay = spinner_delay_ms(page, "#panel-lots", page.locator("#lots-refresh").click)
    assert delay <= SPINNER_LIMIT_MS
    expect(qty_input(page, lot_id)).to_have_value("777")
    expect(age).to_have_class("age")
    expect(age).to_contain_text("Data from just now")
    assert (fetched_at(page) - loaded_at).total_seconds() >= 2
    assert f"event={EVENT}" in page.url and "refresh" not in page.url
