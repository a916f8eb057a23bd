"""UI sign-in: who may sign in with a password (operators), throttling of failed tries, the
sign-in semaphore, read-only sessions of read keys, and the audit lines of sign-in, sign-out
and UI saves (ui/session.py, gateway/sessions.py, gateway/throttle.py).

The gateway runs in live mode against a sandbox of its own (tests/conftest.py); every
identity call the gateway makes is counted there as "POST /connect/token".
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config, parse_api_keys
from gateway.throttle import SignInThrottle, Throttled

IDENTITY = "POST /connect/token"
READ_KEY, WRITE_KEY = "ci-read-key-0123456789", "ops-write-key-0123456789"
KEYS = parse_api_keys(f"ci:{READ_KEY},ops:{WRITE_KEY}:write")
PROXY = {"trusted_proxies": ("127.0.0.1/32",)}  # so X-Forwarded-For can name the client
LOT_ID = 10001


async def sign_in(client: TestClient, headers: dict[str, str] | None = None, **form: str):
    """GET /sign-in for a CSRF token, then POST the form; the answer, not followed."""
    page = await client.get("/sign-in", headers=headers)
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text()).group(1)
    return await client.post("/sign-in", data={**form, "csrf_token": token},
                             headers=headers, allow_redirects=False)


def from_address(n: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"198.51.100.{n}"}


async def csrf_of_page(client: TestClient) -> str:
    resp = await client.get("/")
    assert resp.status == 200, await resp.text()
    return re.search(r'"X-CSRF-Token": "([^"]+)"', await resp.text()).group(1)


def sign_ins(gw: Any) -> list[dict[str, Any]]:
    return [line for line in gw.audit_lines() if line["action"] == "sign_in"]


# --- who may sign in with a password ------------------------------------------------------------


async def test_a_valid_account_that_is_not_an_operator_cannot_sign_in(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth={"operators": ("alice",)})
    resp = await sign_in(gw.client, username="bob", password="bob-demo")
    assert resp.status == 403
    html = await resp.text()
    assert re.search(r'id="sign-in-error"[^>]*>This ABConnect account is not an operator', html)
    assert (await gw.client.get("/", allow_redirects=False)).status == 303  # not signed in
    assert gw.calls(IDENTITY) == 1  # the password was checked: it is right
    [line] = sign_ins(gw)
    assert line["outcome"] == "not_operator" and line["caller"] == "bob"
    assert line["auth"] == "password"
    # An operator, in any case, signs in; shown as configured.
    resp = await sign_in(gw.client, username="ALICE", password="alice-demo")
    assert resp.status == 303
    assert "Signed in as <strong>alice</strong>" in await (await gw.client.get("/")).text()
    assert [x["outcome"] for x in sign_ins(gw)] == ["not_operator", "ok"]


async def test_a_holder_of_the_operator_role_may_sign_in(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth={"operator_role": "catalog-operator"})
    gw.sandbox.identity.roles.update(bob=["catalog-operator"],
                                     alice=["viewer", "catalog-operator"])
    resp = await sign_in(gw.client, username="bob", password="bob-demo")  # role: a string
    assert resp.status == 303, await resp.text()
    gw.client.session.cookie_jar.clear()
    resp = await sign_in(gw.client, username="alice", password="alice-demo")  # role: a list
    assert resp.status == 303, await resp.text()
    gw.client.session.cookie_jar.clear()
    gw.sandbox.identity.roles["alice"] = ["viewer"]
    resp = await sign_in(gw.client, username="alice", password="alice-demo")
    assert resp.status == 403 and "not an operator" in await resp.text()


async def test_with_neither_operators_nor_role_in_live_mode_password_sign_in_is_off(
    start_gateway,
):
    gw = await start_gateway(api_keys=KEYS)
    page = await (await gw.client.get("/sign-in")).text()
    assert re.search(r'id="passwords-off"[^>]*>Password sign-in is off', page)
    assert 'name="password"' not in page and 'name="api_key"' in page
    resp = await sign_in(gw.client, username="alice", password="alice-demo")
    assert resp.status == 403 and "Password sign-in is off" in await resp.text()
    assert gw.calls(IDENTITY) == 0
    assert (await sign_in(gw.client, api_key=WRITE_KEY)).status == 303  # keys still work


async def test_in_sandbox_mode_with_neither_set_the_sandbox_users_may_sign_in(
    aiohttp_client, tmp_path: Path,
):
    config = Config().replace(api_keys=KEYS, sandbox={"latency_ms": 0, "jitter_ms": 0},
                              audit={"path": str(tmp_path / "audit.log")})
    assert config.upstream.mode == "sandbox"
    client = await aiohttp_client(create_app(config), server_kwargs={"host": "127.0.0.1"})
    page = await (await client.get("/sign-in")).text()
    assert 'name="password"' in page and "passwords-off" not in page
    assert (await sign_in(client, username="alice", password="alice-demo")).status == 303


async def test_the_password_check_mints_no_refresh_token(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth={"operators": ("alice",)})
    before = gw.sandbox.identity.refresh_tokens()
    assert (await sign_in(gw.client, username="alice", password="alice-demo")).status == 303
    assert gw.calls(IDENTITY) == 1
    assert gw.sandbox.identity.refresh_tokens() == before


# --- throttling ---------------------------------------------------------------------------------


async def test_ten_wrong_passwords_for_one_operator_make_at_most_five_identity_calls(
    start_gateway,
):
    """Each try from another address: only the username's count can stop them."""
    gw = await start_gateway(api_keys=KEYS, auth={"operators": ("alice",)}, server=PROXY)
    statuses = []
    for n in range(10):
        resp = await sign_in(gw.client, from_address(n), username="Alice", password=f"no-{n}")
        statuses.append(resp.status)
    assert statuses == [401] * 5 + [429] * 5
    assert gw.calls(IDENTITY) == 5
    retry_after = int(resp.headers["Retry-After"])
    assert 0 < retry_after <= 900
    assert resp.content_type == "text/html"
    assert re.search(r'id="sign-in-error"[^>]*>Too many failed sign-ins', await resp.text())
    # Now even the right password is turned away unasked, from a fresh address too.
    resp = await sign_in(gw.client, from_address(99), username="alice", password="alice-demo")
    assert resp.status == 429 and gw.calls(IDENTITY) == 5
    assert [x["outcome"] for x in sign_ins(gw)] == ["refused"] * 5 + ["throttled"] * 6


async def test_wrong_passwords_sent_at_once_make_at_most_five_identity_calls(start_gateway):
    gw = await start_gateway(latency_ms=50, api_keys=KEYS, auth={"operators": ("alice",)},
                             server=PROXY)
    answers = await asyncio.gather(*(
        sign_in(gw.client, from_address(n), username="alice", password=f"no-{n}")
        for n in range(10)))
    assert sorted(r.status for r in answers) == [401] * 5 + [429] * 5
    assert gw.calls(IDENTITY) <= 5


async def test_one_address_trying_many_usernames_is_throttled(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth={"operator_role": "catalog-operator"})
    statuses = [(await sign_in(gw.client, username=f"user{n}", password="guess")).status
                for n in range(10)]
    assert statuses == [401] * 5 + [429] * 5
    assert gw.calls(IDENTITY) == 5
    # The address is throttled for API-key tries too, even with a good key.
    resp = await sign_in(gw.client, api_key=WRITE_KEY)
    assert resp.status == 429 and "Retry-After" in resp.headers


async def test_wrong_api_keys_count_against_the_address(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    for n in range(5):
        assert (await sign_in(gw.client, api_key=f"not-a-key-{n}")).status == 401
    resp = await sign_in(gw.client, api_key=WRITE_KEY)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert [x["outcome"] for x in sign_ins(gw)] == ["refused"] * 5 + ["throttled"]
    assert all(x["auth"] == "key" for x in sign_ins(gw))


async def test_a_success_does_not_clear_the_failures_of_others(start_gateway):
    gw = await start_gateway(api_keys=KEYS, auth={"operators": ("alice", "bob")})
    for n in range(4):
        assert (await sign_in(gw.client, username="bob", password=f"no-{n}")).status == 401
    assert (await sign_in(gw.client, username="alice", password="alice-demo")).status == 303
    assert (await sign_in(gw.client, api_key="not-a-key-at-all")).status == 401  # fifth
    assert (await sign_in(gw.client, username="alice", password="alice-demo")).status == 429


async def test_password_checks_run_under_their_own_small_semaphore(start_gateway):
    gw = await start_gateway(
        latency_ms=200, api_keys=KEYS, auth={"operators": ("alice",)},
        limits={"sign_in_concurrency": 2, "sign_in_failures": 50},
    )
    answers = await asyncio.gather(*(
        sign_in(gw.client, username="alice", password=f"no-{n}") for n in range(6)))
    assert [r.status for r in answers] == [401] * 6
    assert gw.calls(IDENTITY) == 6
    assert gw.sandbox.max_inflight == 2  # the sign-in page loads make no upstream call


def test_the_throttle_window_slides_and_its_memory_is_bounded() -> None:
    now = [1000.0]
    throttle = SignInThrottle(3, 60.0, max_entries=50, clock=lambda: now[0])
    for _ in range(3):
        throttle.charge("alice", "a")
    with pytest.raises(Throttled) as refused:
        throttle.charge("ALICE ", "b")  # the username, in any case
    assert refused.value.status == 429 and refused.value.retry_after == pytest.approx(60.0)
    now[0] += 30
    throttle.charge("bob", "c").refund()  # a success takes only its own try back
    with pytest.raises(Throttled) as refused:
        throttle.charge(None, "a")  # the address, for an API-key try
    assert refused.value.retry_after == pytest.approx(30.0)
    now[0] += 30.5
    throttle.charge("alice", "a")  # the window has slid past the three failures
    for n in range(1000):
        throttle.charge(f"user{n}", f"10.0.{n // 256}.{n % 256}")
    assert throttle.tracked() <= 100
    now[0] += 61
    throttle.charge("zed", "z")
    assert throttle.tracked() == 2  # everything else aged out


# --- read-only sessions ---------------------------------------------------------------------


async def test_a_read_key_session_is_read_only_and_cannot_save(start_gateway):
    gw = await start_gateway(api_keys=KEYS)
    assert (await sign_in(gw.client, api_key=READ_KEY, next="/?event=1001")).status == 303
    html = await (await gw.client.get("/?event=1001")).text()
    assert re.search(r'id="read-only"[^>]*>Read-only<', html)
    assert 'hx-post="/ui/lots/' not in html and re.search(r"<input [^>]*disabled", html)
    token = await csrf_of_page(gw.client)
    resp = await gw.client.post(f"/ui/lots/{LOT_ID}/override", data={"qty": "7"},
                                headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status == 403 and "read-only" in await resp.text()
    assert gw.calls("PUT /api/Lot/{id}") == 0
    [line] = [x for x in gw.audit_lines() if x["action"] == "override"]
    assert (line["caller"], line["auth"], line["outcome"]) == ("ci", "key", "forbidden")
    # A write key's session saves.
    gw.client.session.cookie_jar.clear()
    assert (await sign_in(gw.client, api_key=WRITE_KEY)).status == 303
    html = await (await gw.client.get("/?event=1001")).text()
    assert 'id="read-only"' not in html and 'hx-post="/ui/lots/' in html
    token = await csrf_of_page(gw.client)
    resp = await gw.client.post(f"/ui/lots/{LOT_ID}/override", data={"qty": "7"},
                                headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status == 200 and gw.calls("PUT /api/Lot/{id}") == 1


# --- the audit trail ------------------------------------------------------------------------


async def test_sign_in_sign_out_and_ui_saves_leave_audit_lines(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = await start_gateway(api_keys=KEYS, auth={"operators": ("alice",)})
    assert (await sign_in(gw.client, username="alice", password="wrong-pw-1")).status == 401
    assert (await sign_in(gw.client, username="alice", password="alice-demo")).status == 303
    token = await csrf_of_page(gw.client)
    old = gw.sandbox.data.lots[LOT_ID]
    before = (old["overridenData"] or [{}])[0].get("qty", old["initialData"].get("qty"))
    resp = await gw.client.post(f"/ui/lots/{LOT_ID}/override", data={"qty": "42"},
                                headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status == 200
    out = await gw.client.post("/sign-out", data={"csrf_token": token}, allow_redirects=False)
    assert out.status == 303
    assert (await sign_in(gw.client, api_key=WRITE_KEY)).status == 303

    lines = gw.audit_lines()
    summary = [(x["action"], x["outcome"], x["caller"], x["auth"]) for x in lines]
    assert summary == [
        ("sign_in", "refused", "alice", "password"),
        ("sign_in", "ok", "alice", "password"),
        ("override", "ok", "alice", "password"),
        ("sign_out", "ok", "alice", "password"),
        ("sign_in", "ok", "ops", "key"),
    ]
    save = lines[2]
    assert save["targets"] == [LOT_ID] and save["changes"]["qty"][1] == 42
    assert save["changes"]["qty"][0] in (None, before)
    assert all(x["request_id"] for x in lines)
    trail = gw.audit_path.read_text()
    for secret in ("wrong-pw-1", "alice-demo", WRITE_KEY):
        assert secret not in trail and secret not in caplog.text


async def test_a_key_typed_as_a_username_is_not_logged_verbatim(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = await start_gateway(api_keys=KEYS, auth={"operator_role": "catalog-operator"})
    pasted = "Zq81-kx0w-Pm2v-77Ha-Lq0z"
    resp = await sign_in(gw.client, username=pasted, password="whatever")
    assert resp.status == 401
    [line] = sign_ins(gw)
    assert line["outcome"] == "refused" and line["caller"].startswith("Zq81")
    assert pasted not in gw.audit_path.read_text() and pasted not in caplog.text


async def test_ui_saves_without_keys_are_audited_as_anonymous(start_gateway):
    gw = await start_gateway()
    token = await csrf_of_page(gw.client)
    resp = await gw.client.post(f"/ui/lots/{LOT_ID}/override", data={"qty": "oops"},
                                headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status == 422
    [line] = gw.audit_lines()
    assert (line["action"], line["outcome"], line["caller"], line["auth"]) == (
        "override", "rejected", "anonymous", "anonymous")
    assert line["targets"] == [LOT_ID] and line["requested"] == {}  # unparseable: none


async def test_the_session_cookie_is_secure_when_the_request_came_over_https(start_gateway):
    gw = await start_gateway(api_keys=KEYS, server=PROXY)
    page = await (await gw.client.get("/sign-in")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    # From a trusted proxy, which says the client used HTTPS.
    resp = await gw.client.post("/sign-in", data={"api_key": WRITE_KEY, "csrf_token": token},
                                headers={"X-Forwarded-Proto": "https"}, allow_redirects=False)
    assert resp.status == 303 and resp.cookies["gw_session"]["secure"]
    plain = await sign_in(gw.client, api_key=WRITE_KEY)
    assert plain.status == 303 and not plain.cookies["gw_session"]["secure"]
