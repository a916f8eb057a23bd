"""The operator screen's layout, links and keyboard in Chromium, at the sizes operators use
(1400×900, 1024×768, a 390×844 phone), against the gateway on a 300 ms sandbox."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from browsertesting import ARTIFACTS, get_json, running_gateway

BIG_EVENT, SELLER = 1001, 101
DEEP_LINK = f"/?seller={SELLER}&event={BIG_EVENT}"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_gateway() as url:
        yield url


@pytest.fixture
def sized(browser: Any) -> Iterator[Any]:
    """A page factory: sized(width, height) -> a page in a fresh context of that viewport."""
    contexts: list[Any] = []

    def make(width: int, height: int, **options: Any) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(5000)
        return page

    yield make
    for context in contexts:
        context.close()


def lot_rows(page: Any) -> Any:
    return page.locator("#panel-lots tr[data-lot-id]")


def in_viewport(page: Any, selector: str) -> bool:
    """The element's whole box is inside the window."""
    return page.locator(selector).first.evaluate(
        """el => { const r = el.getBoundingClientRect();
                   return r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0
                     && r.right <= window.innerWidth && r.bottom <= window.innerHeight; }""")


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#panel-lots img").first.evaluate("img => img.decode()")
    page.screenshot(path=str(ARTIFACTS / name))


def test_at_1400_every_lots_column_is_in_view_without_sideways_scrolling(base, sized):
    page = sized(1400, 900)
    page.goto(f"{base}/?seller={SELLER}")
    page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]').click()
    expect(lot_rows(page)).to_have_count(25)
    headers = page.locator("#panel-lots table.lots thead th")
    assert headers.count() == 12
    for i in range(headers.count()):
        box = headers.nth(i).bounding_box()
        assert box is not None and box["width"] > 0
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1400, (
            f"{headers.nth(i).inner_text()!r} is outside the window: {box}")
        assert box["y"] >= 0 and box["y"] + box["height"] <= 900
    wrap = page.locator("#panel-lots .table-wrap").evaluate(
        "w => ({scroll: w.scrollWidth, client: w.clientWidth})")
    assert wrap["scroll"] <= wrap["client"], f"the lots table scrolls sideways: {wrap}"
    # The sellers panel folded to make room, and says how to get it back.
    expect(page.locator("#sellers-expand")).to_be_visible()
    screenshot(page, "ui-1400.png")
    page.locator("#sellers-expand").click()
    expect(page.locator(f'#panel-sellers [data-seller-id="{SELLER}"]')).to_be_visible()


def test_at_1024_the_lots_heading_is_in_view_and_focused_within_a_second_of_an_event_click(
        base, sized):
    page = sized(1024, 768)
    page.goto(f"{base}/?seller={SELLER}")
    page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]').click()
    start = time.monotonic()
    page.wait_for_function(
        """() => { const h = document.getElementById('lots-heading');
                   if (!h || document.activeElement !== h) return false;
                   const r = h.getBoundingClientRect();
                   return r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0
                     && r.right <= window.innerWidth; }""", timeout=1000)
    assert time.monotonic() - start <= 1.0
    assert in_viewport(page, "#lots-heading")
    expect(page.locator("#lots-heading")).to_be_focused()
    # One panel at a time, with a way back to the events.
    expect(page.locator("#panel-events")).to_be_hidden()
    expect(lot_rows(page)).to_have_count(25)
    screenshot(page, "ui-1024.png")
    page.locator("#lots-back").click()
    expect(page.locator("#panel-events")).to_be_visible()
    expect(page.locator("#events-heading")).to_be_focused()


def test_after_next_page_focus_is_on_the_lots_heading(base, sized):
    page = sized(1400, 900)
    page.goto(f"{base}{DEEP_LINK}")
    expect(lot_rows(page)).to_have_count(25)
    first = lot_rows(page).first.get_attribute("data-lot-id")
    page.locator('#panel-lots a[rel="next"]').focus()
    page.keyboard.press("Enter")
    expect(lot_rows(page).first).not_to_have_attribute("data-lot-id", first)
    expect(page.locator("#lots-heading")).to_be_focused()


def test_ctrl_click_on_an_event_opens_its_deep_link_in_a_new_tab(base, sized):
    page = sized(1400, 900)
    page.goto(f"{base}/?seller={SELLER}")
    event = page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')
    with page.context.expect_page() as opened:
        event.click(modifiers=["Control"])
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == f"{base}{DEEP_LINK}"
    expect(tab.locator("#panel-lots tr[data-lot-id]")).to_have_count(25)
    # The first tab stayed where it was: no lots loaded, no URL pushed.
    page.wait_for_timeout(400)
    assert page.url == f"{base}/?seller={SELLER}"
    assert page.locator("#lots-heading").count() == 0


def test_lot_in_the_url_opens_its_dialog_and_the_dialog_has_an_address(base, sized):
    page = sized(1400, 900)
    lots = get_json(f"{base}/api/v1/catalogs/{BIG_EVENT}/lots?page=1&page_size=25")["items"]
    lot = lots[3]["id"]
    page.goto(f"{base}{DEEP_LINK}&lot={lot}")
    dialog = page.locator("#lot-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#lot-dialog-title")).to_contain_text(f"id {lot}")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(f"{base}{DEEP_LINK}")
    # Opening a lot from the table puts it in the address.
    other = lots[5]["id"]
    page.locator(f'tr[data-lot-id="{other}"] .cell-description button').click()
    expect(dialog).to_be_visible()
    expect(page).to_have_url(f"{base}{DEEP_LINK}&lot={other}")


def test_arrow_keys_move_between_the_cells_of_the_lots_table(base, sized):
    page = sized(1400, 900)
    page.goto(f"{base}{DEEP_LINK}")
    expect(lot_rows(page)).to_have_count(25)
    first, second = lot_rows(page).nth(0), lot_rows(page).nth(1)
    qty = first.locator('td[data-save-field="qty"] input')
    qty.focus()
    page.keyboard.press("ArrowDown")
    expect(second.locator('td[data-save-field="qty"] input')).to_be_focused()
    page.keyboard.press("ArrowUp")
    expect(qty).to_be_focused()
    page.keyboard.press("ArrowRight")  # all of it selected: at the edge
    expect(first.locator('td[data-save-field="l"] input')).to_be_focused()
    # Inside a value the arrows move the caret, not the focus.
    length = first.locator('td[data-save-field="l"] input')
    length.evaluate("i => i.setSelectionRange(1, 1)")
    page.keyboard.press("ArrowLeft")
    expect(length).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(qty).to_be_focused()
    # A Yes/No cell: Down moves on, it does not change the value.
    crate = first.locator('td[data-save-field="forceCrate"] select')
    before = crate.input_value()
    crate.focus()
    page.keyboard.press("ArrowDown")
    expect(second.locator('td[data-save-field="forceCrate"] select')).to_be_focused()
    assert crate.input_value() == before


def test_times_are_shown_in_the_operators_zone_and_named(base, sized):
    page = sized(1400, 900, timezone_id="Europe/Berlin")
    page.goto(f"{base}{DEEP_LINK}")
    start = page.locator("#panel-lots .lots-head time").first
    expect(start).to_have_text(
        re.compile(r"^\d{1,2} \w{3,4} \d{4}, \d\d:\d\d (CET|CEST|GMT\+[12])$"))
    utc = start.get_attribute("title")
    assert utc and utc.endswith(" UTC")
    assert start.inner_text() != utc  # Berlin is never UTC


def test_a_deep_link_to_another_sellers_event_shows_that_sellers_events(base, sized):
    page = sized(1400, 900)
    other = 102
    page.goto(f"{base}/?seller={other}&event={BIG_EVENT}")
    expect(page.locator("#seller-moved")).to_contain_text(f"Event #{BIG_EVENT} belongs to")
    expect(page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')).to_be_visible()
    expect(page).to_have_url(f"{base}{DEEP_LINK}")


def test_screenshot_on_a_phone(base, sized):
    page = sized(390, 844)
    page.goto(f"{base}{DEEP_LINK}")
    expect(lot_rows(page)).to_have_count(25)
    expect(page.locator("#lots-heading")).to_be_visible()
    assert in_viewport(page, "#lots-heading")
    # Lot # stays on the left while the table scrolls sideways.
    wrap = page.locator("#panel-lots .table-wrap")
    wrap.evaluate("w => { w.scrollLeft = 400; }")
    box = page.locator("#panel-lots thead th.num").bounding_box()
    panel = page.locator("#panel-lots").bounding_box()
    assert box is not None and panel is not None and abs(box["x"] - panel["x"]) <= 2
    wrap.evaluate("w => { w.scrollLeft = 0; }")
    screenshot(page, "ui-390.png")
