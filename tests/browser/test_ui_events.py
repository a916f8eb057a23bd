"""The events panel in Chromium: each event's lot count, loaded after the list."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from browsertesting import get_json, running_gateway

SELLER = 101


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_gateway() as url:
        yield url


def test_each_event_shows_its_lot_count_without_taking_focus(base: str, page: Any) -> None:
    events = get_json(f"{base}/api/v1/sellers/{SELLER}/events?include_past=true")["items"]
    page.goto(f"{base}/?seller={SELLER}&past=1")
    items = page.locator("#panel-events [data-event-id]")
    expect(items.first).to_be_visible()
    shown = items.count()
    assert shown > 0
    items.last.focus()
    focused = "document.activeElement && document.activeElement.dataset.eventId"
    expected = page.evaluate(focused)
    assert expected is not None
    for i in range(shown):
        item = items.nth(i)
        event_id = int(item.get_attribute("data-event-id"))
        assert event_id in {e["id"] for e in events}
        lots = len(get_json(f"{base}/api/Catalog/{event_id}")["lots"])
        word = "lot" if lots == 1 else "lots"
        expect(item.locator(".lot-count")).to_have_text(
            re.compile(rf"·\s*{lots:,} {word}$"), timeout=10_000)
    # The counts arrive in place: the address and the focus stay where they were.
    assert page.url.endswith(f"/?seller={SELLER}&past=1")
    assert page.evaluate(focused) == expected
    expect(page.locator("#panel-events .item.is-current")).to_have_count(0)  # none chosen
