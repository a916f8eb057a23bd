"""Callers' own ABConnect access tokens beside the gateway's API keys (gateway/auth.py and
gateway/upstream/signing_keys.py).

The identity server is a stub made here: an aiohttp app on a loopback port that serves
OpenID Connect discovery and a JWKS of RSA keys made by the test, and counts its requests.
The gateway's upstream is the sandbox of `start_gateway`; the tokens' issuer is the stub,
so the sandbox would refuse every token minted here: a read that succeeds went upstream
with the gateway's own service token.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import api
from gateway import auth as auth_module
from gateway.auth import Caller, caller_middleware, require_write
from gateway.config import (
    ApiKey,
    AuthConfig,
    Config,
    ConfigError,
    load_config,
    parse_api_keys,
    token_issuer,
)
from gateway.state import CALLER, CLIENT_NAME, SIGNING_KEYS
from gateway.upstream.signing_keys import SigningKeys

from gwtesting import free_port

PROBLEM = "application/problem+json"
OPS_KEY = "key-ops-0123456789"


# --- the identity server stub ------------------------------------------------------------------


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One 2048-bit RSA key per name, made once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(kid).public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@dataclass
class Identity:
    """The stub identity server: publishes the JWKS of `published`, counts requests."""

    server: TestServer
    published: list[str] = field(default_factory=lambda: ["k1"])
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    failing: bool = False

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def token(self, kid: str = "k1", *, signer: str | None = None, headers: dict | None = None,
              **claims: Any) -> str:
        """An RS256 token under `kid`, signed with the key of that name (or of `signer`);
        claims default to a valid token of this issuer for user alice."""
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": "u-1", "preferred_username": "alice",
                   "iat": now, "nbf": now, "exp": now + 300, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, rsa_key(signer or kid), algorithm="RS256",
                          headers={"kid": kid, **(headers or {})})


@pytest.fixture
async def identity() -> AsyncIterator[Identity]:
    app = web.Application()
    stub: Identity

    async def discovery(request: web.Request) -> web.Response:
        stub.hits["discovery"] += 1
        return web.json_response({"issuer": stub.issuer, "jwks_uri": stub.issuer + "/keys"})

    async def keys(request: web.Request) -> web.Response:
        stub.hits["jwks"] += 1
        if stub.failing:
            return web.json_response({"error": "down"}, status=500)
        return web.json_response({"keys": [public_jwk(kid) for kid in stub.published]})

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/keys", keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stub = Identity(server)
    yield stub
    await server.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upstream_calls(gw: Any) -> int:
    return sum(gw.sandbox.calls.values())


async def assert_401(resp: aiohttp.ClientResponse, *, token: str, says: str) -> None:
    text = await resp.text()
    assert resp.status == 401, text
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    body = json.loads(text)
    assert body["title"] == "Unauthorized" and says in body["detail"], body
    assert token not in text  # a refused token is never echoed back


def lot_path(gw: Any) -> str:
    return f"/api/Lot/{next(iter(gw.sandbox.data.lots))}"


# --- through the whole gateway -----------------------------------------------------------------


async def test_a_verified_token_reads_from_the_shared_cache_with_the_service_token(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": identity.issuer})
    path = lot_path(gw)
    resp = await gw.client.get(path, headers=bearer(identity.token()))
    assert resp.status == 200, await resp.text()
    # The sandbox refuses the stub's tokens: only the gateway's own token could get a 200.
    assert gw.calls("GET /api/Lot/{id}") == 1
    other = identity.token(preferred_username="bob", sub="u-2")
    resp = await gw.client.get(path, headers=bearer(other))
    assert resp.status == 200 and resp.headers["X-Cache"] == "HIT"
    assert gw.calls("GET /api/Lot/{id}") == 1  # one cache for every caller
    assert identity.hits == {"discovery": 1, "jwks": 1}  # fetched once, kept
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'endpoint="jwks"' in metrics and 'endpoint="discovery"' in metrics


def _hs256_with_public_key(identity: Identity) -> str:
    """The classic confusion attack: HS256, keyed with the RSA public key's PEM."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    secret = rsa_key("k1").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps({"iss": identity.issuer, "sub": "x", "exp": now + 300}).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


BAD_TOKENS: dict[str, tuple[Callable[[Identity], str], str]] = {
    "wrong signature": (lambda i: i.token("k1", signer="mallory"), "signature"),
    "expired": (lambda i: i.token(exp=int(time.time()) - 120), "expired"),
    "not yet valid": (lambda i: i.token(nbf=int(time.time()) + 120), "not valid yet"),
    "wrong issuer": (lambda i: i.token(iss="https://login.example.com"), "not issued by"),
    "no exp": (lambda i: i.token(exp=None), "'exp'"),
    "alg none": (lambda i: jwt.encode({"iss": i.issuer, "sub": "x"}, None, algorithm="none"),
                 "algorithm"),
    "hs256 with the public key": (_hs256_with_public_key, "algorithm"),
    "no kid": (lambda i: jwt.encode({"iss": i.issuer, "exp": int(time.time()) + 60},
                                    rsa_key("k1"), algorithm="RS256"), "kid"),
    "garbage": (lambda i: "bm90IGpzb24.bm90IGpzb24.c2ln", "well-formed"),
}


async def test_bad_tokens_are_401_and_reach_no_upstream(
    start_gateway, identity: Identity, caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": identity.issuer})
    path = lot_path(gw)
    assert (await gw.client.get(path, headers=bearer(identity.token()))).status == 200
    gw.sandbox.reset_stats()
    caplog.set_level(logging.DEBUG)
    for case, (make, says) in BAD_TOKENS.items():
        token = make(identity)
        resp = await gw.client.get(path, headers=bearer(token))
        try:
            await assert_401(resp, token=token, says=says)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert token not in caplog.text, case
    assert upstream_calls(gw) == 0
    # None of these needed a key the gateway lacked: no refetch either.
    assert identity.hits["jwks"] == 1
    # Within the 30 s leeway, a just-expired token still reads.
    late = identity.token(exp=int(time.time()) - 10)
    assert (await gw.client.get(path, headers=bearer(late))).status == 200


async def test_the_audience_is_checked_when_configured(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={
        "upstream_tokens": "read", "issuer": identity.issuer, "audience": "catalog-api",
    })
    path = lot_path(gw)
    for token in (identity.token(aud="other-api"), identity.token()):
        await assert_401(await gw.client.get(path, headers=bearer(token)), token=token,
                         says="aud")
    assert upstream_calls(gw) == 0
    good = identity.token(aud=["catalog-api", "offline_access"])
    assert (await gw.client.get(path, headers=bearer(good))).status == 200


async def test_audience_is_not_checked_unless_configured(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "read", "issuer": identity.issuer})
    token = identity.token(aud="whatever-api")
    assert (await gw.client.get(lot_path(gw), headers=bearer(token))).status == 200


async def test_a_rotated_key_is_fetched_once(start_gateway, identity: Identity) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": identity.issuer})
    path = lot_path(gw)
    assert (await gw.client.get(path, headers=bearer(identity.token("k1")))).status == 200
    before = dict(identity.hits)
    identity.published = ["k2", "k1"]  # rollover: the new key signs, the old one stays
    for _ in range(3):
        resp = await gw.client.get(path, headers=bearer(identity.token("k2")))
        assert resp.status == 200, await resp.text()
    assert identity.hits["jwks"] == before["jwks"] + 1  # exactly one refetch
    assert identity.hits["discovery"] == before["discovery"]  # jwks_uri was kept
    assert (await gw.client.get(path, headers=bearer(identity.token("k1")))).status == 200


async def test_forged_kids_in_a_burst_cost_at_most_one_refetch(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": identity.issuer})
    path = lot_path(gw)
    assert (await gw.client.get(path, headers=bearer(identity.token()))).status == 200
    before = identity.hits["jwks"]
    gw.sandbox.reset_stats()
    forged = [identity.token(f"forged-{n}", signer="mallory") for n in range(40)]
    answers = await asyncio.gather(*(gw.client.get(path, headers=bearer(t)) for t in forged))
    answers += [await gw.client.get(path, headers=bearer(t)) for t in forged[:10]]
    for resp, token in zip(answers, forged + forged[:10], strict=True):
        await assert_401(resp, token=token, says="key")
    assert identity.hits["jwks"] - before <= 1
    assert upstream_calls(gw) == 0


async def test_tokens_off_a_jwt_is_just_a_wrong_api_key(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(api_keys=parse_api_keys(f"ops:{OPS_KEY}"),
                             auth={"issuer": identity.issuer})  # upstream_tokens "off"
    path, token = lot_path(gw), identity.token()
    await assert_401(await gw.client.get(path, headers=bearer(token)), token=token,
                     says="API key is required")
    assert identity.hits == {}  # not even a key fetch
    assert SIGNING_KEYS not in gw.app
    assert (await gw.client.get(path, headers=bearer(OPS_KEY))).status == 200
    assert (await gw.client.get(path, headers={"X-API-Key": OPS_KEY})).status == 200


async def test_api_keys_work_beside_tokens(start_gateway, identity: Identity) -> None:
    gw = await start_gateway(api_keys=parse_api_keys(f"ops:{OPS_KEY}"),
                             auth={"upstream_tokens": "write", "issuer": identity.issuer})
    path = lot_path(gw)
    assert (await gw.client.get(path, headers=bearer(OPS_KEY))).status == 200
    assert (await gw.client.get(path, headers={"X-API-Key": OPS_KEY})).status == 200
    assert (await gw.client.get(path, headers=bearer(identity.token()))).status == 200
    resp = await gw.client.get(path)
    assert resp.status == 401
    assert "access token" in (await resp.json(content_type=None))["detail"]
    await assert_401(await gw.client.get(path, headers=bearer("key-wrong")), token="key-wrong",
                     says="API key")
    assert (await gw.client.get("/healthz")).status == 200  # not /api/*: open


async def test_without_api_keys_a_request_without_credentials_stays_open(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": identity.issuer})
    assert (await gw.client.get(lot_path(gw))).status == 200
    # A bearer that is not a JWT is no credential the gateway knows: anonymous, as before.
    assert (await gw.client.get(lot_path(gw), headers=bearer("opaque"))).status == 200


async def test_unreachable_identity_server_is_503_not_401(start_gateway) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = await start_gateway(auth={"upstream_tokens": "write", "issuer": issuer})
    now = int(time.time())
    token = jwt.encode({"iss": issuer, "sub": "x", "exp": now + 60}, rsa_key("k1"),
                       algorithm="RS256", headers={"kid": "k1"})
    resp = await gw.client.get(lot_path(gw), headers=bearer(token))
    assert resp.status == 503 and resp.headers["Content-Type"].startswith(PROBLEM)
    assert upstream_calls(gw) == 0


# --- the middleware alone: names, scopes, require_write ----------------------------------------


WhoAmI = Callable[..., Awaitable[web.Application]]


@pytest.fixture
async def whoami(aiohttp_client, identity: Identity) -> AsyncIterator[WhoAmI]:
    """An app with only the caller middleware: GET /api/me answers the Caller, POST /api/me
    calls require_write first."""
    clients = []

    async def make(api_keys: dict[str, ApiKey] | None = None, **auth: Any) -> Any:
        auth_config = AuthConfig(**{"issuer": identity.issuer, **auth})

        async def keys(app: web.Application) -> AsyncIterator[None]:
            async with aiohttp.ClientSession() as session:
                app[SIGNING_KEYS] = SigningKeys(session, auth_config.issuer)
                yield

        async def me(request: web.Request) -> web.Response:
            if request.method == "POST":
                require_write(request)
            caller = request[CALLER]
            return web.json_response({
                "kind": caller.kind, "name": caller.name, "scope": caller.scope,
                "token": caller.token, "client_name": request.get(CLIENT_NAME),
            })

        app = web.Application(middlewares=[
            api.problem_middleware, caller_middleware(api_keys or {}, auth_config),
        ])
        app.cleanup_ctx.append(keys)
        app.router.add_route("*", "/api/me", me)
        client = await aiohttp_client(app)
        clients.append(client)
        return client

    yield make


async def test_a_token_caller_is_named_scoped_and_keeps_its_token(
    whoami: WhoAmI, identity: Identity,
) -> None:
    client = await whoami(upstream_tokens="write")
    token = identity.token()
    me = await (await client.get("/api/me", headers=bearer(token))).json()
    assert me == {"kind": "token", "name": "alice", "scope": "write", "token": token,
                  "client_name": "alice"}
    for claims, name in (({"preferred_username": None, "name": "Alice A."}, "Alice A."),
                         ({"preferred_username": None}, "u-1")):
        me = await (await client.get("/api/me", headers=bearer(identity.token(**claims)))).json()
        assert me["name"] == name and me["client_name"] == name
    assert (await client.post("/api/me", headers=bearer(token))).status == 200


async def test_read_only_tokens_may_not_write(whoami: WhoAmI, identity: Identity) -> None:
    client = await whoami(parse_api_keys(f"ops:{OPS_KEY}:write"), upstream_tokens="read")
    token = identity.token()
    me = await (await client.get("/api/me", headers=bearer(token))).json()
    assert me["scope"] == "read"
    resp = await client.post("/api/me", headers=bearer(token))
    assert resp.status == 403 and resp.headers["Content-Type"].startswith(PROBLEM)
    assert (await resp.json(content_type=None))["title"] == "Forbidden"
    # An API key writes as the service account: its caller keeps no token.
    resp = await client.post("/api/me", headers={"X-API-Key": OPS_KEY})
    assert resp.status == 200
    assert await resp.json() == {"kind": "key", "name": "ops", "scope": "write",
                                 "token": None, "client_name": "ops"}


async def test_anonymous_callers_are_as_before(whoami: WhoAmI) -> None:
    client = await whoami()  # no keys, tokens off
    me = await (await client.post("/api/me")).json()
    assert me["kind"] == "anonymous" and me["client_name"] is None


def test_the_token_stays_out_of_a_callers_repr() -> None:
    assert "s3cret" not in repr(Caller("token", "alice", "write", "s3cret"))


# --- the signing keys on their own -------------------------------------------------------------


async def test_signing_keys_refetch_limit_and_failures(identity: Identity) -> None:
    now = [1000.0]
    seen: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as session:
        keys = SigningKeys(session, identity.issuer, refetch_every_s=30,
                           on_fetch=lambda *labels: seen.append(labels), clock=lambda: now[0])
        assert not keys.loaded and await keys.key("k1") is not None  # first use loads
        assert seen == [("discovery", "200"), ("jwks", "200")]
        assert await keys.key("k2") is None  # unknown, within the window: no fetch
        assert identity.hits["jwks"] == 1
        identity.published = ["k2"]
        now[0] += 31
        assert await keys.key("k2") is not None  # past the window: one refetch
        assert await keys.key("k1") is None  # withdrawn keys stop verifying
        assert identity.hits["jwks"] == 2
        identity.failing = True
        now[0] += 31
        assert await keys.key("k3") is None
        assert seen[-1] == ("jwks", "500")
        assert await keys.key("k2") is not None  # a failed fetch keeps the keys in hand
        identity.failing = False
        now[0] += 31
        identity.published = ["k3"]
        found = await asyncio.gather(*(keys.key("k3") for _ in range(20)))
        assert all(k is not None for k in found)
        assert identity.hits["jwks"] == 4  # twenty callers, one fetch
        assert identity.hits["discovery"] == 2  # rediscovered after the failed fetch


# --- configuration -----------------------------------------------------------------------------


def test_auth_config_keys_defaults_and_env(tmp_path) -> None:
    config = Config()
    assert config.auth.upstream_tokens == "off" and config.auth.audience == ""
    assert config.upstream.scope == "offline_access"
    assert token_issuer(config) == "https://login.abconnect.co"
    config = load_config(None, env={
        "GW_AUTH_UPSTREAM_TOKENS": "read", "GW_AUTH_AUDIENCE": "catalog-api",
        "GW_UPSTREAM_IDENTITY_URL": "http://127.0.0.1:8081/connect/token",
        "GW_UPSTREAM_SCOPE": "catalog-api offline_access",
    })
    assert config.auth.upstream_tokens == "read" and config.auth.audience == "catalog-api"
    assert config.upstream.scope == "catalog-api offline_access"
    assert token_issuer(config) == "http://127.0.0.1:8081"
    assert token_issuer(config.replace(auth={"issuer": "https://id.example"})) == (
        "https://id.example"
    )
    with pytest.raises(ConfigError, match="GW_AUTH_UPSTREAM_TOKENS"):
        load_config(None, env={"GW_AUTH_UPSTREAM_TOKENS": "maybe"})
    path = tmp_path / "c.toml"
    for text, names in (("[auth]\nissuer = 'login.example'\n", "auth.issuer"),
                        ("[auth]\nupstream_tokens = true\n", "auth.upstream_tokens"),
                        ("[auth]\nleeway = 5\n", "leeway"),
                        ("[upstream]\nscope = ''\n", "upstream.scope")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=names):
            load_config(path, env={})


# --- verified once, not on every request ---------------------------------------------------


async def test_a_verified_tokens_next_reads_are_not_verified_again_and_take_the_hot_path(
    start_gateway, identity: Identity, monkeypatch,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "read", "issuer": identity.issuer})
    path, token = lot_path(gw), identity.token()
    assert (await gw.client.get(path, headers=bearer(token))).status == 200
    verified = []
    real = auth_module._verified_claims
    monkeypatch.setattr(auth_module, "_verified_claims",
                        lambda *a: verified.append(1) or real(*a))
    before = gw.hot.answered
    for _ in range(3):
        resp = await gw.client.get(path, headers=bearer(token))
        assert resp.status == 200 and resp.headers["X-Cache"] == "HIT"
    assert verified == [] and gw.hot.answered - before == 3
    other = identity.token(preferred_username="bob", sub="u-2")  # a new token: verified
    assert (await gw.client.get(path, headers=bearer(other))).status == 200
    assert verified == [1]


async def test_a_kept_token_is_refused_once_it_expires(start_gateway, identity: Identity):
    gw = await start_gateway(auth={"upstream_tokens": "read", "issuer": identity.issuer})
    path = lot_path(gw)
    # Expired 29 s ago: valid for one more second under the 30 s leeway.
    token = identity.token(exp=int(time.time()) - int(auth_module.LEEWAY_S) + 1)
    for _ in range(2):
        assert (await gw.client.get(path, headers=bearer(token))).status == 200
    await asyncio.sleep(1.2)
    resp = await gw.client.get(path, headers=bearer(token))
    assert resp.status == 401 and "expired" in (await resp.json())["detail"]


async def test_a_kept_token_is_refused_once_its_key_is_withdrawn(
    start_gateway, identity: Identity,
) -> None:
    gw = await start_gateway(auth={"upstream_tokens": "read", "issuer": identity.issuer})
    path, token = lot_path(gw), identity.token("k1")
    for _ in range(2):
        assert (await gw.client.get(path, headers=bearer(token))).status == 200
    identity.published = ["k2"]  # rotated: k1 withdrawn
    # A token under the new key makes the gateway fetch the key set again.
    assert (await gw.client.get(path, headers=bearer(identity.token("k2")))).status == 200
    resp = await gw.client.get(path, headers=bearer(token))
    assert resp.status == 401, await resp.text()
