"""axe-core on the operator screen: no violation of impact serious or critical, on the
three-panel page with an event open and with the lot dialog open."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from browsertesting import get_json, running_gateway

BIG_EVENT, SELLER = 1001, 101
DEEP_LINK = f"/?seller={SELLER}&event={BIG_EVENT}"
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_gateway() as url:
        yield url


def blocking_violations(page: Any) -> list[str]:
    """Each serious or critical violation as 'rule (impact): where' lines."""
    results = Axe().run(page)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in BLOCKING:
            targets = [", ".join(n["target"]) for n in violation["nodes"]][:5]
            found.append(f"{violation['id']} ({violation['impact']}): {targets}")
    return found


def test_the_three_panel_page_has_no_serious_or_critical_violation(base, page):
    page.goto(f"{base}{DEEP_LINK}")
    expect(page.locator("#panel-lots tr[data-lot-id]")).to_have_count(25)
    # An overridden value (amber) is on the page: its contrast is checked too.
    lots = get_json(f"{base}/api/v1/catalogs/{BIG_EVENT}/lots?page=1&page_size=25")["items"]
    lot = lots[2]["id"]
    cell = page.locator(f'tr[data-lot-id="{lot}"] td[data-save-field="qty"]')
    cell.locator("input").fill("3")
    cell.locator("input").press("Tab")
    expect(page.locator(f'tr[data-lot-id="{lot}"] td.is-overridden').first).to_be_visible()
    page.locator("#panel-lots .codes summary").click()  # the packing legend, open
    assert page.locator("h1").count() == 1
    assert blocking_violations(page) == []


def test_the_lot_dialog_has_no_serious_or_critical_violation(base, page):
    # A lot that arrives with overrides: its dialog shows amber (overridden) texts.
    lots = get_json(f"{base}/api/v1/catalogs/{BIG_EVENT}/lots?page=1&page_size=100")["items"]
    lot = next(lot["id"] for lot in lots
               if any(o.get("notes") for o in lot.get("overridenData") or []))
    page.goto(f"{base}{DEEP_LINK}&page_size=100&lot={lot}")
    expect(page.locator("#lot-dialog")).to_be_visible()
    expect(page.locator("#lot-dialog .field.is-overridden textarea").first).to_be_visible()
    assert blocking_violations(page) == []
