"""The operator screen in Chromium, against the gateway on a 300 ms sandbox (open access)."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from sandbox import HTML_LOT_ID, HTML_SNIPPET

from browsertesting import ARTIFACTS, get, get_json, running_gateway, spinner_delay_ms

BIG_EVENT, SELLER = 1001, 101
SPINNER_LIMIT_MS = 100
DELAYS: dict[str, float] = {}  # measured spinner delays, written to test-artifacts


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_gateway() as url:
        yield url
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "spinner-delays.json").write_text(json.dumps(DELAYS, indent=2))


@pytest.fixture
def fresh_base() -> Iterator[str]:
    """A gateway of this test's own: nothing is cached in it that the test did not load."""
    with running_gateway() as url:
        yield url


def lot_rows(page: Any) -> Any:
    return page.locator("#panel-lots tr[data-lot-id]")


def row_ids(page: Any) -> list[int]:
    return [int(i) for i in lot_rows(page).evaluate_all(
        "rows => rows.map(r => r.dataset.lotId)")]


def lot_ids(base: str, event: int, page: int = 1, page_size: int = 25) -> list[int]:
    body = get_json(f"{base}/api/v1/catalogs/{event}/lots?page={page}&page_size={page_size}")
    return [lot["id"] for lot in body["items"]]


def test_choosing_an_event_shows_the_lots_spinner_at_once_then_25_rows(base, page):
    page.goto(f"{base}/?seller={SELLER}")
    event = page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')
    delay = spinner_delay_ms(page, "#panel-lots", event.click)
    DELAYS["event -> lots"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(lot_rows(page)).to_have_count(25)
    expect(page.locator("#panel-lots")).not_to_have_class(re.compile("htmx-request"))
    expect(page.locator("#panel-lots > .htmx-indicator")).to_be_hidden()
    assert row_ids(page) == lot_ids(base, BIG_EVENT)
    expect(page).to_have_url(re.compile(rf"/\?seller={SELLER}&event={BIG_EVENT}$"))
    expect(page.locator("#lots-status")).to_contain_text("150 lots, showing 1–25")


def test_seller_to_events_and_paging_show_their_panels_spinner(base, page):
    page.goto(f"{base}/")
    seller = page.locator('#panel-sellers [data-seller-id="102"]')
    delay = spinner_delay_ms(page, "#panel-events", seller.click)
    DELAYS["seller -> events"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(page.locator("#panel-events [data-event-id]").first).to_be_visible()
    expect(page).to_have_url(re.compile(r"/\?seller=102$"))
    past = page.locator("#panel-events input[type=checkbox]")
    delay = spinner_delay_ms(page, "#panel-events", past.click)
    DELAYS["show past events"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(page).to_have_url(re.compile(r"/\?seller=102&past=1$"))
    expect(page.locator("#panel-events .badge", has_text="past").first).to_be_visible()

    delay = spinner_delay_ms(page, "#panel-sellers",
                             page.locator('#panel-sellers a[rel="next"]').click)
    DELAYS["sellers next page"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(page.locator("#panel-sellers .pager-pos")).to_have_text("Page 2 of 2")

    search = page.locator("#panel-sellers input[name=q]")
    search.fill("bell")
    delay = spinner_delay_ms(page, "#panel-sellers", lambda: search.press("Enter"))
    DELAYS["sellers filter (Enter)"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(page.locator("#panel-sellers [data-seller-id]")).to_have_count(1)
    expect(page.locator("#panel-sellers [data-seller-id]")).to_contain_text("Bellweather")

    page.goto(f"{base}/?seller={SELLER}&event={BIG_EVENT}")
    expect(lot_rows(page)).to_have_count(25)
    delay = spinner_delay_ms(page, "#panel-lots", page.locator('#panel-lots a[rel="next"]').click)
    DELAYS["lots next page"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(page).to_have_url(re.compile(r"&page=2$"))
    expect(lot_rows(page).first).to_have_attribute(
        "data-lot-id", str(lot_ids(base, BIG_EVENT, 2)[0]))

    delay = spinner_delay_ms(page, "#panel-lots",
                             page.locator('#panel-lots .sizes a:text-is("50")').click)
    DELAYS["lots page size"] = round(delay, 1)
    assert delay <= SPINNER_LIMIT_MS
    expect(lot_rows(page)).to_have_count(50)
    expect(page).to_have_url(re.compile(r"&page_size=50$"))

    # Back and forward restore the view from the URL.
    page.go_back()
    expect(page).to_have_url(re.compile(r"&page=2$"))
    expect(lot_rows(page)).to_have_count(25)
    expect(lot_rows(page).first).to_have_attribute(
        "data-lot-id", str(lot_ids(base, BIG_EVENT, 2)[0]))
    page.go_forward()
    expect(lot_rows(page)).to_have_count(50)


class RequestEnds:
    """How each request of the page ended: "finished" (answered) or "failed" (aborted)."""

    def __init__(self, page: Any) -> None:
        self.page, self.ends = page, {}
        page.on("requestfinished", lambda r: self.ends.setdefault(r.url, "finished"))
        page.on("requestfailed", lambda r: self.ends.setdefault(r.url, "failed"))

    def wait_for(self, url: str, limit_s: float = 5) -> str | None:
        deadline = time.monotonic() + limit_s
        while url not in self.ends and time.monotonic() < deadline:
            self.page.wait_for_timeout(25)
        return self.ends.get(url)


def two_events(base: str) -> tuple[int, int, int]:
    """A seller with two events, and those two."""
    for seller in range(103, 113):
        events = get_json(f"{base}/api/v1/sellers/{seller}/events?include_past=true")
        ids = [e["id"] for e in events["items"]]
        if len(ids) >= 2:
            return seller, ids[0], ids[1]
    raise AssertionError("no seller with two events")


def test_two_quick_event_clicks_end_with_the_second_event(fresh_base, page):
    base = fresh_base
    seller, first, second = two_events(base)
    # Warm the second: in this fresh gateway the first, still cold, answers long after it.
    get(f"{base}/api/v1/catalogs/{second}/lots")
    page.goto(f"{base}/?seller={seller}&past=1")
    titles = {int(e.get_attribute("data-event-id")): e.locator(".item-title").inner_text()
              for e in page.locator("#panel-events [data-event-id]").all()}
    requests = RequestEnds(page)
    page.locator(f'#panel-events [data-event-id="{first}"]').click()
    page.locator(f'#panel-events [data-event-id="{second}"]').click()
    expect(page.locator("#panel-lots [data-event-title]")).to_have_attribute(
        "data-event-id", str(second))
    # Wait for the first request to end either way (aborted at once, or answered after
    # ~600 ms); the panel must still show the second event.
    # hx-sync replaced it: aborted, never swapped in.
    assert requests.wait_for(f"{base}/ui/panels/lots?event={first}") == "failed"
    expect(page.locator("#panel-lots [data-event-title]")).to_have_text(titles[second])
    expect(page.locator("#panel-lots [data-event-title]")).to_have_attribute(
        "data-event-id", str(second))
    assert set(row_ids(page)) <= set(lot_ids(base, second, page_size=100))
    assert f"event={second}" in page.url
    expect(page.locator(f'#panel-events [data-event-id="{second}"]')).to_have_class(
        re.compile("is-current"))


def test_choosing_another_seller_drops_a_lots_answer_still_on_its_way(fresh_base, page):
    base = fresh_base
    events = get_json(f"{base}/api/v1/sellers/112/events?include_past=true")["items"]
    event = events[-1]["id"]  # cold in this fresh gateway: its answer takes two round trips
    page.goto(f"{base}/?seller=112&past=1")
    requests = RequestEnds(page)
    page.locator(f'#panel-events [data-event-id="{event}"]').click()
    page.locator(f'#panel-sellers [data-seller-id="{SELLER}"]').click()
    expect(page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')).to_be_visible()
    assert requests.wait_for(f"{base}/ui/panels/lots?event={event}") == "failed"
    expect(page.locator("#panel-lots .placeholder")).to_have_text(
        "Choose an event to see its lots.")
    assert page.locator("#panel-lots [data-event-title]").count() == 0
    expect(page).to_have_url(f"{base}/?seller={SELLER}")


def test_editing_a_quantity_saves_an_override_that_survives_a_reload(base, page):
    lot = lot_ids(base, BIG_EVENT)[4]
    page.goto(f"{base}/?seller={SELLER}&event={BIG_EVENT}")
    cell = page.locator(f'tr[data-lot-id="{lot}"] td[data-save-field="qty"]')
    initial = cell.locator("input").input_value()
    expect(cell).not_to_have_class(re.compile("is-overridden"))
    cell.locator("input").fill("7")
    cell.locator("input").press("Tab")
    expect(cell).to_have_class(re.compile("is-saving"))
    expect(cell).to_have_class(re.compile("is-saved"))
    expect(cell).to_have_class(re.compile("is-overridden"))
    # Focus moved on to the next cell and stays there after the save replaced this one.
    expect(page.locator(f'tr[data-lot-id="{lot}"] td[data-save-field="l"] input')).to_be_focused()

    page.reload()
    cell = page.locator(f'tr[data-lot-id="{lot}"] td[data-save-field="qty"]')
    expect(cell.locator("input")).to_have_value("7")
    expect(cell).to_have_class(re.compile("is-overridden"))
    expect(cell).to_have_attribute("title", f"Overridden. As received: {initial}")

    # A refused value stays as typed, and the cell says why.
    cell.locator("input").fill("-2")
    cell.locator("input").press("Enter")
    expect(cell).to_have_class(re.compile("is-error"))
    expect(cell.locator(".save-msg")).to_be_visible()
    expect(cell.locator(".save-msg")).to_contain_text("Qty must not be negative")
    expect(cell.locator("input")).to_have_value("-2")


def test_markup_in_a_description_is_text_and_no_script_runs(base, page):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/?seller={SELLER}&event={BIG_EVENT}")
    row = page.locator(f'tr[data-lot-id="{HTML_LOT_ID}"]')
    expect(row.locator(".cell-description")).to_contain_text(HTML_SNIPPET)
    assert row.locator("b, script").count() == 0
    assert page.locator("#panel-lots script").count() == 0
    # The lot dialog shows the same text in its editor, and the lot's images.
    row.locator(".cell-description button").click()
    dialog = page.locator("#lot-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('textarea[name="description"]')).to_have_value(
        re.compile(re.escape(HTML_SNIPPET)))
    expect(dialog.locator(".gallery img").first).to_be_visible()
    assert dialog.locator("b, script").count() == 0
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert dialogs == []


def test_the_lot_dialog_edits_texts_and_the_row_follows(base, page):
    lot = lot_ids(base, BIG_EVENT)[7]
    page.goto(f"{base}/?seller={SELLER}&event={BIG_EVENT}")
    page.locator(f'tr[data-lot-id="{lot}"] .cell-description button').click()
    dialog = page.locator("#lot-dialog")
    expect(dialog).to_be_visible()
    description = dialog.locator('textarea[name="description"]')
    description.fill("Relabelled at intake")
    dialog.locator('textarea[name="notes"]').focus()  # leaving the field saves it
    expect(dialog.locator(f"#dlg-{lot}-description")).to_have_class(re.compile("is-saved"))
    expect(dialog.locator(f"#dlg-{lot}-description")).to_contain_text("As received:")
    dialog.locator("form.dialog-close button").click()
    expect(dialog).to_be_hidden()
    cell = page.locator(f'tr[data-lot-id="{lot}"] .cell-description')
    expect(cell).to_have_text("Relabelled at intake")
    expect(cell).to_have_class(re.compile("is-overridden"))


def test_keyboard_enter_on_a_list_item_loads_its_panel(base, page):
    page.goto(f"{base}/")
    page.locator('#panel-sellers [data-seller-id="101"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')).to_be_visible()
    expect(page.locator("#events-heading")).to_be_focused()  # the loaded panel's heading
    page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]').focus()
    page.keyboard.press("Enter")
    expect(lot_rows(page)).to_have_count(25)


def colours_in(shot: Image.Image, box: dict[str, float]) -> int:
    """How many distinct colours the screenshot has inside `box` (clipped to it)."""
    left, top = max(0, int(box["x"])), max(0, int(box["y"]))
    right = min(shot.width, int(box["x"] + box["width"]))
    bottom = min(shot.height, int(box["y"] + box["height"]))
    assert right - left > 10 and bottom - top > 10, f"{box} is (nearly) off the screenshot"
    return len(shot.crop((left, top, right, bottom)).getcolors(maxcolors=1 << 24) or [])


def test_screenshot_of_the_three_panels(base, page):
    page.goto(f"{base}/?seller={SELLER}&event={BIG_EVENT}")
    # What the screenshot is to show: the seller and its event chosen, the event's first 25
    # lots with their images, and nothing still loading.
    expect(page.locator(f'#panel-sellers [data-seller-id="{SELLER}"]')).to_have_class(
        re.compile("is-current"))
    expect(page.locator(f'#panel-events [data-event-id="{BIG_EVENT}"]')).to_have_class(
        re.compile("is-current"))
    expect(lot_rows(page)).to_have_count(25)
    assert row_ids(page) == lot_ids(base, BIG_EVENT)
    expect(page.locator("#lots-status")).to_contain_text("150 lots, showing 1–25")
    for panel in ("#panel-sellers", "#panel-events", "#panel-lots"):
        expect(page.locator(panel)).to_be_visible()
        expect(page.locator(f"{panel} > .htmx-indicator")).to_be_hidden()
    image = page.locator("#panel-lots img").first
    image.evaluate("img => img.decode()")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "image not loaded"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = Image.open(io.BytesIO(page.screenshot(path=str(ARTIFACTS / "ui.png")))).convert("RGB")
    # And it is drawn: each panel, and the first lot's image, is more than a blank area.
    for selector in ("#panel-sellers", "#panel-events", "#panel-lots", "#panel-lots img"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None, f"{selector} is not rendered"
        assert colours_in(shot, box) >= 16, f"{selector} is blank in the screenshot"
