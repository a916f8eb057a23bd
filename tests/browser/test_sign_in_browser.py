"""Sign-in in Chromium, against a gateway with API keys set (GW_API_KEYS)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from browsertesting import running_gateway

API_KEY = "browser-test-key-6f1d"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_gateway(GW_API_KEYS=f"ops:{API_KEY}") as url:
        yield url


def sign_in(page: Any, username: str = "", password: str = "", api_key: str = "") -> None:
    form = page.locator("form#sign-in")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=password]").fill(password)
    form.locator("input[name=api_key]").fill(api_key)
    form.locator("button[type=submit]").click()


def test_password_sign_in_csrf_and_sign_out(base, page):
    page.goto(f"{base}/?seller=101&event=1001")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))

    sign_in(page, "alice", "not-her-password")
    expect(page.locator("#sign-in-error")).to_have_text("Wrong username or password.")
    sign_in(page, "alice", "alice-demo")
    expect(page).to_have_url(f"{base}/?seller=101&event=1001")
    expect(page.locator(".topbar")).to_contain_text("Signed in as alice")
    expect(page.locator("#panel-lots tr[data-lot-id]")).to_have_count(25)

    # A write without the CSRF token is refused, with the same session cookie.
    url = f"{base}/ui/lots/10001/override"
    refused = page.request.post(url, form={"qty": "3"}, headers={"HX-Request": "true"})
    assert refused.status == 403
    token = json.loads(page.locator("body").get_attribute("hx-headers"))["X-CSRF-Token"]
    saved = page.request.post(url, form={"qty": "3"},
                              headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert saved.status == 200 and "is-overridden" in saved.text()
    # The session cookie is out of reach of scripts and of other sites.
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    page.locator(".topbar button", has_text="Sign out").click()
    expect(page).to_have_url(f"{base}/sign-in")
    page.goto(f"{base}/")
    expect(page).to_have_url(re.compile(r"/sign-in"))


def test_api_key_sign_in(base, page):
    page.goto(f"{base}/")
    sign_in(page, api_key="wrong-key")
    expect(page.locator("#sign-in-error")).to_have_text("That API key is not valid.")
    sign_in(page, api_key=API_KEY)
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".topbar")).to_contain_text("Signed in as ops")
    expect(page.locator("#panel-sellers [data-seller-id]").first).to_be_visible()
