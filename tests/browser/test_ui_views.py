"""The UI's views without a browser: fragments, deep links, errors, saves, CSRF, sign-in.

The gateway runs on its sandbox with no latency (tests/conftest.py's start_gateway).
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from gateway.config import parse_api_keys
from gateway.sessions import Cookies
from sandbox import HTML_LOT_ID, HTML_SNIPPET
from ui.session import COOKIE

HTML = "text/html"
BIG_EVENT, SELLER = 1001, 101  # seller 101's first upcoming event has 150 lots
KEY = "ops-key-0123456789"
KEYS = parse_api_keys(f"ops:{KEY}:write")
OPERATORS = {"operators": ("alice", "bob")}


def rows(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="lot-\d+" data-lot-id="(\d+)"', html)]


def csrf_of(html: str) -> str:
    match = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def open_page(client, path: str = "/") -> tuple[str, str]:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    return html, csrf_of(html)


def hx(token: str | None = None, current: str | None = None) -> dict[str, str]:
    headers = {"HX-Request": "true"}
    if token:
        headers["X-CSRF-Token"] = token
    if current:
        headers["HX-Current-URL"] = "http://127.0.0.1" + current
    return headers


# --- pages and fragments ---------------------------------------------------------------------


async def test_deep_link_renders_all_three_panels_server_side(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.get(f"/?seller={SELLER}&event={BIG_EVENT}&page=2&page_size=10")
    assert resp.status == 200 and resp.content_type == HTML
    html = await resp.text()
    for hook in ('id="panel-sellers"', 'id="panel-events"', 'id="panel-lots"',
                 'id="lots-status"', "data-event-title"):
        assert hook in html
    assert rows(html) == gw.sandbox.data.lot_ids_of_catalog(BIG_EVENT)[10:20]
    assert re.search(rf'class="item is-current" data-seller-id="{SELLER}"', html)
    assert re.search(rf'class="item is-current" data-event-id="{BIG_EVENT}"', html)
    assert html.count("htmx-indicator") == 3
    assert resp.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_sellers_fragment_filters_by_name_or_display_id(start_gateway):
    gw = await start_gateway()
    seller = gw.sandbox.data.sellers[SELLER]
    for q in ("harrington", "HARR", str(seller["customerDisplayId"])[:3]):
        html = await (await gw.client.get(f"/ui/panels/sellers?q={q}", headers=hx())).text()
        assert f'data-seller-id="{SELLER}"' in html
    html = await (await gw.client.get("/ui/panels/sellers?q=zzz-none", headers=hx())).text()
    assert "No seller matches" in html and "data-seller-id" not in html
    page2 = await gw.client.get("/ui/panels/sellers?spage=2", headers=hx())
    assert page2.status == 200 and "Page 2 of 2" in await page2.text()


async def test_events_are_upcoming_unless_past_is_asked(start_gateway):
    gw = await start_gateway()
    data = gw.sandbox.data
    ids = data.catalog_ids_for_seller(SELLER)
    upcoming = [c for c in ids if not data.catalogs[c]["isCompleted"]]
    resp = await gw.client.get(f"/ui/panels/events?seller={SELLER}", headers=hx())
    shown = [int(i) for i in re.findall(r'data-event-id="(\d+)"', await resp.text())]
    assert sorted(shown) == sorted(upcoming)
    resp = await gw.client.get(f"/ui/panels/events?seller={SELLER}&past=1", headers=hx())
    shown = [int(i) for i in re.findall(r'data-event-id="(\d+)"', await resp.text())]
    assert sorted(shown) == sorted(ids)


async def test_fragments_push_the_page_url_merged_with_the_current_page(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.get(f"/ui/panels/lots?event={BIG_EVENT}&page=3",
                               headers=hx(current=f"/?seller={SELLER}&past=1&page_size=10"))
    pushed = f"/?seller={SELLER}&past=1&event={BIG_EVENT}&page=3&page_size=10"
    assert resp.headers["HX-Push-Url"] == pushed
    assert len(rows(await resp.text())) == 10
    # Another seller: its events, and the lots panel emptied out of band.
    resp = await gw.client.get("/ui/panels/events?seller=102",
                               headers=hx(current=f"/?seller={SELLER}&event={BIG_EVENT}"))
    assert resp.headers["HX-Push-Url"] == "/?seller=102"
    assert 'id="lots-body" hx-swap-oob="innerHTML"' in await resp.text()
    # The same seller (show past): the chosen event stays.
    resp = await gw.client.get(f"/ui/panels/events?seller={SELLER}&past=1",
                               headers=hx(current=f"/?seller={SELLER}&event={BIG_EVENT}"))
    assert resp.headers["HX-Push-Url"] == f"/?seller={SELLER}&past=1&event={BIG_EVENT}"
    assert "hx-swap-oob" not in await resp.text()


@pytest.mark.parametrize(("path", "says"), [
    ("/ui/panels/lots?event=1001&page=0", "page must be"),
    ("/ui/panels/lots?event=1001&page_size=101", "page_size must be"),
    ("/ui/panels/lots?event=abc", "event must be a positive integer"),
    ("/ui/panels/lots", "event is required"),
    ("/ui/panels/events?seller=1&past=maybe", "past must be true or false"),
    ("/ui/panels/events", "seller is required"),
    ("/ui/panels/sellers?spage=-1", "spage must be"),
    ("/ui/panels/sellers?q=" + "x" * 201, "q must be at most"),
    ("/ui/lots/0", "id must be a positive integer"),
    ("/?page=two", "page must be"),
])
async def test_bad_parameters_are_a_readable_400_fragment(start_gateway, path, says):
    gw = await start_gateway()
    resp = await gw.client.get(path, headers=hx())
    assert resp.status == 400 and resp.content_type == HTML
    html = await resp.text()
    assert 'class="panel-error"' in html and says in html and "Traceback" not in html
    assert sum(gw.sandbox.calls.values()) == 0


async def test_without_htmx_an_error_is_a_whole_page(start_gateway):
    gw = await start_gateway()
    resp = await gw.client.get("/?event=x")
    assert resp.status == 400 and resp.content_type == HTML
    assert "<!doctype html>" in (html := await resp.text()) and "event must be" in html
    resp = await gw.client.get("/ui/no-such-thing")
    assert resp.status == 404 and resp.content_type == HTML


async def test_upstream_markup_is_shown_as_text(start_gateway):
    gw = await start_gateway()
    html = await (await gw.client.get(f"/ui/panels/lots?event={BIG_EVENT}", headers=hx())).text()
    assert HTML_LOT_ID in rows(html)
    escaped = "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in html and HTML_SNIPPET not in html and "<script" not in html
    dialog = await (await gw.client.get(f"/ui/lots/{HTML_LOT_ID}", headers=hx())).text()
    assert escaped in dialog and "<script" not in dialog


async def test_a_lot_that_fails_is_an_unavailable_row_and_the_rest_render(start_gateway):
    gw = await start_gateway(upstream={"retries": 0})
    missing = gw.sandbox.data.lot_ids_of_catalog(BIG_EVENT)[1]
    del gw.sandbox.data.lots[missing]
    html = await (await gw.client.get(f"/ui/panels/lots?event={BIG_EVENT}", headers=hx())).text()
    assert len(rows(html)) == 25 and html.count('class="is-unavailable"') == 1
    assert re.search(rf'data-lot-id="{missing}" class="is-unavailable"', html)
    assert f"Lot {missing} is unavailable" in html and "1 unavailable" in html


async def test_an_event_that_cannot_load_says_so_with_a_retry(start_gateway):
    gw = await start_gateway(upstream={"retries": 0})
    gw.sandbox.configure(down=True)
    resp = await gw.client.get(f"/ui/panels/lots?event={BIG_EVENT}", headers=hx())
    assert resp.status == 503 and resp.content_type == HTML
    html = await resp.text()
    assert "Could not load lots" in html
    assert re.search(rf'<button[^>]*hx-get="/ui/panels/lots\?event={BIG_EVENT}"[^>]*>Retry', html)
    gw.sandbox.configure(down=False)
    resp = await gw.client.get(f"/ui/panels/lots?event={BIG_EVENT}", headers=hx())
    assert resp.status == 200 and len(rows(await resp.text())) == 25


async def test_status_line_counts_lots_and_says_how_old_the_data_is(start_gateway):
    """The operator sees the data's age, not the gateway's timings (see tests/test_refresh.py
    for ages above a minute and the stale mark)."""
    gw = await start_gateway()
    url = f"/ui/panels/lots?event={BIG_EVENT}"
    first = await (await gw.client.get(url, headers=hx())).text()
    status = re.compile(r'id="lots-status".*?</p>', re.S).search(first).group(0)
    assert "150 lots, showing 1–25" in status
    assert re.search(r'id="lots-age" class="age">Data from just now '
                     r'\(<time datetime="[\d-]+T[\d:]+Z"[^>]*>\d\d:\d\d UTC</time>\)', status)
    assert "page took" not in status and "from cache" not in status


# --- saving overrides ------------------------------------------------------------------------


async def test_a_ui_write_without_the_csrf_token_is_refused(start_gateway):
    gw = await start_gateway()
    _, token = await open_page(gw.client)
    url = "/ui/lots/10001/override"
    assert (await gw.client.post(url, data={"qty": "2"})).status == 403
    assert (await gw.client.post(url, data={"qty": "2"}, headers=hx("forged"))).status == 403
    refused = await gw.client.post(url, data={"qty": "2"}, headers=hx())
    assert refused.status == 403 and refused.headers["HX-Reswap"] == "none"
    assert "CSRF" in await refused.text()
    assert gw.calls("PUT /api/Lot/{id}") == 0
    ok = await gw.client.post(url, data={"qty": "2", "csrf_token": token})
    assert ok.status == 200


async def test_saving_a_cell_overrides_it_and_the_page_shows_it(start_gateway):
    gw = await start_gateway()
    _, token = await open_page(gw.client)
    lot_id = gw.sandbox.data.lot_ids_of_catalog(BIG_EVENT)[4]
    initial = gw.sandbox.data.lots[lot_id]["initialData"]["qty"]
    resp = await gw.client.post(f"/ui/lots/{lot_id}/override", data={"qty": "7"},
                                headers=hx(token))
    assert resp.status == 200, await resp.text()
    cell = await resp.text()
    assert re.search(rf'<td id="lot-{lot_id}-qty" class="[^"]*is-overridden is-saved"', cell)
    assert 'value="7"' in cell and f"As received: {initial}" in cell
    html, _ = await open_page(gw.client, f"/?event={BIG_EVENT}")
    assert re.search(rf'<td id="lot-{lot_id}-qty" class="cell cell-int is-overridden"', html)
    # Emptying the cell removes the override: back to the value as received.
    resp = await gw.client.post(f"/ui/lots/{lot_id}/override", data={"qty": ""},
                                headers=hx(token))
    assert "is-overridden" not in (cell := await resp.text()) and f'value="{initial}"' in cell


async def test_flags_are_saved_from_a_select(start_gateway):
    gw = await start_gateway()
    _, token = await open_page(gw.client)
    lot_id = gw.sandbox.data.lot_ids_of_catalog(BIG_EVENT)[5]
    current = gw.sandbox.data.lots[lot_id]["initialData"]["doNotTip"]
    resp = await gw.client.post(f"/ui/lots/{lot_id}/override",
                                data={"doNotTip": "false" if current else "true"},
                                headers=hx(token))
    cell = await resp.text()
    assert resp.status == 200 and "is-overridden" in cell and "Reset to" in cell
    assert gw.sandbox.data.lots[lot_id]["overridenData"][0]["doNotTip"] is (not current)


@pytest.mark.parametrize(("form", "says"), [
    ({"qty": "-1"}, "Qty must not be negative"),
    ({"qty": "2.5"}, "Qty must be a whole number, e.g. 3"),
    ({"wgt": "heavy"}, "Weight (lb) must be a number, e.g. 12.5"),
    ({"wgt": "1e3"}, "Weight (lb) must be a number, e.g. 12.5"),
    ({"l": "1,000"}, "Length (in) must be a number, e.g. 12.5, without thousands separators"),
    ({"forceCrate": "maybe"}, "Force crate must be Yes or No"),
    ({"colour": "red"}, "unknown field"),
    ({"qty": "1", "l": "2"}, "one field"),
])
async def test_a_refused_save_says_why_in_text_and_swaps_nothing(start_gateway, form, says):
    gw = await start_gateway()
    _, token = await open_page(gw.client)
    resp = await gw.client.post("/ui/lots/10001/override", data=form, headers=hx(token))
    assert resp.status == 422 and resp.headers["HX-Reswap"] == "none"
    assert resp.content_type == "text/plain" and says in await resp.text()
    assert gw.calls("PUT /api/Lot/{id}") == 0


async def test_a_failed_upstream_write_is_refused_readably(start_gateway):
    gw = await start_gateway(upstream={"retries": 0})
    _, token = await open_page(gw.client)
    before = gw.sandbox.data.lots[10001]["overridenData"]
    gw.sandbox.configure(fail_writes="before")
    resp = await gw.client.post("/ui/lots/10001/override", data={"qty": "3"}, headers=hx(token))
    assert resp.status == 502 and resp.headers["HX-Reswap"] == "none"
    assert resp.content_type == "text/plain" and "upstream" in await resp.text()
    assert gw.sandbox.data.lots[10001]["overridenData"] == before  # nothing was written


async def test_dialog_text_save_updates_the_rows_description_out_of_band(start_gateway):
    gw = await start_gateway()
    _, token = await open_page(gw.client)
    resp = await gw.client.post("/ui/lots/10001/override",
                                data={"description": "Walnut <i>sideboard</i>, remeasured"},
                                headers=hx(token))
    html = await resp.text()
    assert resp.status == 200
    assert re.search(r'<div id="dlg-10001-description" class="field is-overridden is-saved"', html)
    assert '<template><td id="lot-10001-description"' in html and 'hx-swap-oob="true"' in html
    assert "Walnut &lt;i&gt;sideboard&lt;/i&gt;, remeasured" in html


# --- sign-in --------------------------------------------------------------------------------------


async def test_with_api_keys_the_ui_needs_sign_in(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    resp = await gw.client.get(f"/?event={BIG_EVENT}", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/sign-in?next=%2F%3Fevent%3D1001"
    resp = await gw.client.get("/ui/panels/sellers", headers=hx(), allow_redirects=False)
    assert resp.status == 401 and resp.headers["HX-Redirect"].startswith("/sign-in")
    resp = await gw.client.get("/static/ui.css")
    assert resp.status == 200  # static files stay open


async def sign_in(client, **form: str):
    page = await client.get("/sign-in?next=/%3Fevent%3D1001")
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text()).group(1)
    return await client.post("/sign-in", data={**form, "csrf_token": token},
                             allow_redirects=False)


async def test_sign_in_with_a_password_checked_upstream(start_gateway, caplog):
    gw = await start_gateway(api_keys=KEYS, auth=OPERATORS)
    refused = await sign_in(gw.client, username="alice", password="wrong", next="/")
    assert refused.status == 401
    assert re.search(r'id="sign-in-error"[^>]*>Wrong username or password', await refused.text())
    resp = await sign_in(gw.client, username="alice", password="alice-demo",
                         next="/?event=1001")
    assert resp.status == 303 and resp.headers["Location"] == "/?event=1001"
    html, token = await open_page(gw.client, "/?event=1001")
    assert "Signed in as <strong>alice</strong>" in html
    caplog.set_level(logging.INFO, logger="gateway.overrides")
    resp = await gw.client.post("/ui/lots/10001/override", data={"qty": "4"}, headers=hx(token))
    assert resp.status == 200
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.overrides"]
    assert line["actor"] == "alice" and line["outcome"] == "saved"


async def test_sign_in_without_the_csrf_token_is_refused(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    await gw.client.get("/sign-in")
    resp = await gw.client.post("/sign-in", data={"username": "alice", "password": "alice-demo"},
                                allow_redirects=False)
    assert resp.status == 403


async def test_sign_in_with_an_api_key_and_sign_out_ends_the_session(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    assert (await sign_in(gw.client, api_key="not-a-key")).status == 401
    resp = await sign_in(gw.client, api_key=KEY, next="/")
    assert resp.status == 303
    cookie = resp.cookies[COOKIE].value
    html, token = await open_page(gw.client)
    assert "Signed in as <strong>ops</strong>" in html
    out = await gw.client.post("/sign-out", data={"csrf_token": token}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/sign-in"
    gw.client.session.cookie_jar.clear()
    again = await gw.client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"},
                                allow_redirects=False)
    assert again.status == 303 and again.headers["Location"].startswith("/sign-in")


async def test_next_after_sign_in_stays_on_this_site(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth=OPERATORS)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        resp = await sign_in(gw.client, username="bob", password="bob-demo", next=target)
        assert resp.status == 303 and resp.headers["Location"] == "/"


def test_session_cookies_are_signed_expire_and_can_be_shared_by_secret():
    clock = [1000.0]
    sessions = Cookies(b"s" * 32, clock=lambda: clock[0])
    session, cookie = sessions.issue("alice")
    assert sessions.read(cookie) == session
    payload, signature = cookie.split(".")
    assert sessions.read(payload + "." + signature[:-2] + "AA") is None
    assert Cookies(b"t" * 32, clock=lambda: clock[0]).read(cookie) is None
    assert Cookies(b"s" * 32, clock=lambda: clock[0]).read(cookie) == session
    assert sessions.csrf_ok(session, sessions.csrf_token(session))
    assert not sessions.csrf_ok(session, "x") and not sessions.csrf_ok(None, "x")
    clock[0] += 13 * 3600
    assert sessions.read(cookie) is None


async def test_with_a_session_secret_another_gateway_accepts_the_session(start_gateway):
    shared = "a-long-shared-secret-for-two-replicas-0123"
    one = await start_gateway(api_keys=KEYS, session_secret=shared)
    two = await start_gateway(api_keys=KEYS, session_secret=shared)
    other = await start_gateway(api_keys=KEYS, session_secret="another-secret-" + "x" * 32)
    cookie = (await sign_in(one.client, api_key=KEY, next="/")).cookies[COOKIE].value
    resp = await two.client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"},
                                allow_redirects=False)
    assert resp.status == 200 and "Signed in as <strong>ops</strong>" in await resp.text()
    resp = await other.client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"},
                                  allow_redirects=False)
    assert resp.status == 303, "a gateway with another secret must not accept the cookie"


async def test_forged_or_garbled_cookies_and_tokens_are_refused_not_errors(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    for cookie in ("x", "a.b", "é.é", "a.b.c", ""):
        resp = await gw.client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"},
                                   allow_redirects=False)
        assert resp.status == 303
    await gw.client.get("/sign-in")
    resp = await gw.client.post("/sign-in", data={"api_key": KEY},
                                headers={"X-CSRF-Token": "é"}, allow_redirects=False)
    assert resp.status == 403


def test_numbers_shown_read_only_are_grouped() -> None:
    from ui import grouped

    assert grouped(1234567) == "1,234,567"
    assert grouped(12345.0) == "12,345"
    assert grouped(1234.5) == "1,234.5"
    assert grouped(True) == "True" and grouped("n/a") == "n/a"
