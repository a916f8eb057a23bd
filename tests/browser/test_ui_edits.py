"""Edits in Chromium: Escape, changes not saved, conflicts between operators, number input
and overrides in view, checked against what the upstream (a sandbox of its own, 300 ms)
was actually sent."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from browsertesting import LATENCY_MS, get_json, running_gateway
from gwtesting import free_port, running_sandbox

EVENT, SELLER = 1001, 101
PUT_LOT = "PUT /api/Lot/{id}"


class Upstream:
    """The sandbox the gateway writes to, read directly (its own counters and data)."""

    def __init__(self, url: str) -> None:
        self.url = url
        form = urllib.parse.urlencode({"grant_type": "password", "username": "gateway",
                                       "password": "sandbox"}).encode()
        with urllib.request.urlopen(f"{url}/connect/token", form, timeout=10) as resp:
            self.token = json.loads(resp.read())["access_token"]

    def puts(self) -> int:
        return get_json(f"{self.url}/_sandbox/stats")["calls"].get(PUT_LOT, 0)

    def lot(self, lot_id: int) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/api/Lot/{lot_id}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def override(self, lot_id: int) -> dict[str, Any]:
        entries = self.lot(lot_id)["overridenData"]
        return {k[0].lower() + k[1:]: v for k, v in (entries[0] if entries else {}).items()
                if v is not None}

    def configure(self, **knobs: Any) -> None:
        request = urllib.request.Request(f"{self.url}/_sandbox/config",
                                         json.dumps(knobs).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, Upstream]]:
    """The gateway (live mode) on a sandbox process of its own, whose stats and data the
    tests read directly."""
    with running_sandbox(free_port()) as sandbox_url:
        upstream = Upstream(sandbox_url)
        upstream.configure(latency_ms=LATENCY_MS, jitter_ms=0)
        with running_gateway(GW_UPSTREAM_MODE="live", GW_UPSTREAM_BASE_URL=sandbox_url,
                             GW_UPSTREAM_IDENTITY_URL=sandbox_url + "/connect/token",
                             ABCONNECT_USERNAME="gateway", ABCONNECT_PASSWORD="sandbox") as base:
            yield base, upstream


@pytest.fixture(scope="module")
def lots(stack: tuple[str, Upstream]) -> list[int]:
    base, _ = stack
    return [lot["id"] for lot in
            get_json(f"{base}/api/v1/catalogs/{EVENT}/lots?page=1&page_size=25")["items"]]


def open_event(page: Any, base: str) -> None:
    page.goto(f"{base}/?seller={SELLER}&event={EVENT}")
    expect(page.locator("#panel-lots tr[data-lot-id]")).to_have_count(25)


def cell(page: Any, lot: int, field: str) -> Any:
    return page.locator(f'tr[data-lot-id="{lot}"] td[data-save-field="{field}"]')


def test_escape_restores_the_saved_value_and_saves_nothing(stack, lots, page):
    base, upstream = stack
    open_event(page, base)
    qty = cell(page, lots[0], "qty")
    saved = qty.locator("input").input_value()
    puts = upstream.puts()
    qty.locator("input").fill("77")
    expect(page.locator("#edits-pending")).to_contain_text("1 change not saved")
    qty.locator("input").press("Escape")
    expect(qty.locator("input")).to_have_value(saved)
    qty.locator("input").press("Tab")  # leaving the cell: nothing to save
    page.wait_for_timeout(3 * LATENCY_MS)
    expect(qty).not_to_have_class(re.compile("is-saving|is-saved|is-error"))
    expect(page.locator("#edits-pending")).to_be_hidden()
    assert upstream.puts() == puts
    assert "qty" not in upstream.override(lots[0])


def test_a_refused_edit_stays_listed_after_paging_and_leaving_asks_first(stack, lots, page):
    base, upstream = stack
    open_event(page, base)
    puts = upstream.puts()
    qty, wgt = cell(page, lots[1], "qty"), cell(page, lots[1], "wgt")
    qty.locator("input").fill("-1")
    qty.locator("input").press("Tab")
    expect(qty).to_have_class(re.compile("is-error"))
    expect(qty.locator(".save-msg")).to_contain_text("Qty must not be negative")
    wgt.locator("input").fill("abc")
    wgt.locator("input").press("Tab")
    expect(wgt.locator(".save-msg")).to_contain_text("Weight (lb) must be a number, e.g. 12.5")
    banner = page.locator("#edits-pending")
    expect(banner).to_contain_text("2 changes not saved")
    expect(banner).to_contain_text("Qty: -1")
    expect(banner).to_contain_text("Weight (lb): abc")
    assert "wgt" not in banner.inner_text()  # the column's label, never the field's name

    page.locator('#panel-lots a[rel="next"]').click()
    expect(page).to_have_url(re.compile(r"page=2"))
    expect(page.locator(f'tr[data-lot-id="{lots[1]}"]')).to_have_count(0)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("2 changes not saved")
    page.locator('#panel-lots a[rel="prev"]').click()
    expect(qty.locator("input")).to_have_value("-1")
    expect(qty).to_have_class(re.compile("is-error"))
    expect(qty.locator(".save-msg")).to_contain_text("Qty must not be negative")
    expect(banner).to_contain_text("2 changes not saved")
    assert upstream.puts() == puts

    # Leaving the page with changes not saved asks first.
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.type), d.accept()))
    page.reload()
    assert asked == ["beforeunload"]
    # Still listed after the reload; discarding empties the list.
    expect(banner).to_contain_text("2 changes not saved")
    banner.get_by_role("button", name="Discard all").click()
    expect(banner).to_be_hidden()


@pytest.fixture
def two_operators(stack, browser) -> Iterator[tuple[Any, Any]]:
    """Two operators (browser contexts of their own), each with the event open."""
    base, _ = stack
    contexts = [browser.new_context(viewport={"width": 1600, "height": 1000})
                for _ in range(2)]
    try:
        pages = tuple(c.new_page() for c in contexts)
        for p in pages:
            p.set_default_timeout(5000)
            open_event(p, base)
        yield pages
    finally:
        for c in contexts:
            c.close()


def type_in(field: Any, value: str) -> None:
    """Type `value` into a cell and leave it (which saves it)."""
    field.locator("input").fill(value)
    field.locator("input").press("Tab")


def test_two_operators_a_stale_save_is_a_conflict_until_one_chooses(stack, lots, two_operators):
    _, upstream = stack
    a, b = two_operators
    lot = lots[2]
    initial = int(cell(a, lot, "qty").locator("input").input_value())
    first, second = str(initial + 4), str(initial + 5)

    type_in(cell(a, lot, "qty"), first)
    expect(cell(a, lot, "qty")).to_have_class(re.compile("is-saved"))
    assert upstream.override(lot)["qty"] == int(first)
    puts = upstream.puts()

    mine = cell(b, lot, "qty")  # B's page still shows the value before A's save
    type_in(mine, second)
    expect(mine).to_have_class(re.compile("is-conflict"))
    conflict = mine.locator(".conflict")
    expect(conflict).to_contain_text("Changed by someone else")
    expect(conflict.locator(".theirs")).to_have_text(first)
    expect(conflict.locator(".mine")).to_have_text(second)
    expect(mine.locator("input")).to_have_value(second)
    expect(b.locator("#edits-pending")).to_contain_text("1 change not saved")
    b.wait_for_timeout(2 * LATENCY_MS)
    assert upstream.override(lot)["qty"] == int(first)  # the first save stands
    assert upstream.puts() == puts

    conflict.get_by_role("button", name="Keep mine").click()
    expect(mine).to_have_class(re.compile("is-saved"))
    expect(mine).not_to_have_class(re.compile("is-conflict"))
    expect(b.locator("#edits-pending")).to_be_hidden()
    assert upstream.override(lot)["qty"] == int(second)
    assert upstream.puts() == puts + 1


def test_take_theirs_drops_mine(stack, lots, two_operators):
    _, upstream = stack
    a, b = two_operators
    lot = lots[5]
    initial = int(cell(a, lot, "qty").locator("input").input_value())
    type_in(cell(a, lot, "qty"), str(initial + 1))
    expect(cell(a, lot, "qty")).to_have_class(re.compile("is-saved"))
    puts = upstream.puts()
    mine = cell(b, lot, "qty")
    type_in(mine, str(initial + 2))
    expect(mine).to_have_class(re.compile("is-conflict"))
    mine.get_by_role("button", name="Take theirs").click()
    expect(mine.locator("input")).to_have_value(str(initial + 1))
    expect(mine).not_to_have_class(re.compile("is-conflict"))
    expect(b.locator("#edits-pending")).to_be_hidden()
    mine.locator("input").press("Tab")
    b.wait_for_timeout(2 * LATENCY_MS)
    assert upstream.puts() == puts
    assert upstream.override(lot)["qty"] == initial + 1


def test_decimal_comma_exponent_and_confirming_an_unusual_value(stack, lots, page):
    base, upstream = stack
    lot = lots[3]
    open_event(page, base)
    wgt, qty = cell(page, lot, "wgt"), cell(page, lot, "qty")
    wgt.locator("input").fill("12,5")
    wgt.locator("input").press("Tab")
    expect(wgt).to_have_class(re.compile("is-saved"))
    expect(wgt.locator("input")).to_have_value("12.5")
    assert upstream.override(lot)["wgt"] == 12.5

    puts = upstream.puts()
    wgt.locator("input").fill("1e3")
    wgt.locator("input").press("Tab")
    expect(wgt).to_have_class(re.compile("is-error"))
    expect(wgt.locator(".save-msg")).to_contain_text("Weight (lb) must be a number, e.g. 12.5")
    assert upstream.puts() == puts and upstream.override(lot)["wgt"] == 12.5
    wgt.locator("input").press("Escape")

    qty.locator("input").fill("0")
    qty.locator("input").press("Tab")
    expect(qty.locator(".save-msg")).to_contain_text("Qty 0 means the lot has no items")
    save_anyway = qty.get_by_role("button", name="Save anyway")
    expect(save_anyway).to_be_visible()
    page.wait_for_timeout(2 * LATENCY_MS)
    assert upstream.puts() == puts and "qty" not in upstream.override(lot)
    save_anyway.click()
    expect(qty).to_have_class(re.compile("is-saved"))
    assert upstream.override(lot)["qty"] == 0
    assert upstream.puts() == puts + 1


def test_an_override_shows_the_received_value_and_resets_and_a_text_can_be_emptied(
    stack, lots, page
):
    base, upstream = stack
    lot = lots[4]
    open_event(page, base)
    qty = cell(page, lot, "qty")
    initial = qty.locator("input").input_value()
    qty.locator("input").fill(str(int(initial) + 3))
    qty.locator("input").press("Tab")
    expect(qty).to_have_class(re.compile("is-saved"))
    was = qty.locator(".was")
    expect(was).to_be_visible()
    expect(was).to_have_text(re.compile(rf"was {initial}$"))
    described = qty.locator("input").evaluate(
        "i => i.getAttribute('aria-describedby').split(' ')"
        ".map(id => document.getElementById(id).textContent).join(' ')")
    assert f"Overridden; as received: was {initial}" in described
    expect(page.locator("#lots-legend")).to_contain_text("value as received")

    qty.get_by_role("button", name=re.compile("^Reset Qty")).click()
    expect(qty).not_to_have_class(re.compile("is-overridden"))
    expect(qty.locator("input")).to_have_value(initial)
    expect(qty.locator(".was")).to_have_count(0)
    assert "qty" not in upstream.override(lot)

    # Texts: "Set empty" saves an empty override; "Reset" brings the received text back.
    page.locator(f'tr[data-lot-id="{lot}"] .cell-description button').click()
    notes = page.locator(f"#dlg-{lot}-notes")
    received = notes.locator("textarea").input_value()
    assert received
    notes.get_by_role("button", name="Set empty").click()
    expect(notes).to_have_class(re.compile("is-saved"))
    expect(notes.locator("textarea")).to_have_value("")
    expect(notes.locator(".initial")).to_contain_text(received)
    assert upstream.override(lot)["notes"] == ""
    notes.get_by_role("button", name=re.compile("^Reset")).click()
    expect(notes).not_to_have_class(re.compile("is-overridden"))
    expect(notes.locator("textarea")).to_have_value(received)
    assert "notes" not in upstream.override(lot)
