"""Configuration: defaults, file, env overrides, secrets; bad values stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_with_documented_defaults() -> None:
    config = load_config(ROOT / "config.toml", env={})
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.upstream.mode == "sandbox"
    assert config.cache.ttl_s == 600 and config.cache.max_bytes == 268435456
    assert config.sandbox.latency_ms == 600


def test_env_overrides_any_key_with_its_type() -> None:
    config = load_config(ROOT / "config.toml", env={
        "GW_UPSTREAM_MAX_CONCURRENCY": "8", "GW_CACHE_TTL_S": "1.5",
        "GW_UPSTREAM_BASE_URL": "http://127.0.0.1:9", "GW_SANDBOX_SEED": "7",
    })
    assert config.upstream.max_concurrency == 8
    assert config.cache.ttl_s == 1.5
    assert config.upstream.base_url == "http://127.0.0.1:9"
    assert config.sandbox.seed == 7


@pytest.mark.parametrize(("text", "env", "names"), [
    ("[server]\nprot = 1\n", {}, "prot"),
    ("[nope]\n", {}, "nope"),
    ("[server]\nport = 'x'\n", {}, "port"),
    ("[upstream]\nmax_concurrency = 0\n", {}, "upstream.max_concurrency"),
    ("[upstream]\nmode = 'other'\n", {}, "upstream.mode"),
    ("", {"GW_CACHE_TTL": "1"}, "ttl"),
    ("", {"GW_CACHE_TTL_S": "soon"}, "GW_CACHE_TTL_S"),
    ("[upstream]\nmode = 'live'\n", {}, "ABCONNECT_USERNAME"),
    ("[cache]\nredis_prefix = ''\n", {}, "cache.redis_prefix"),
    ("[server]\nworkers = 2\n", {}, "server.workers"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict, names: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names):
        load_config(path, env=env)


def test_secrets_come_from_env_and_stay_out_of_repr() -> None:
    config = load_config(None, env={
        "ABCONNECT_USERNAME": "u", "ABCONNECT_PASSWORD": "p",
        "GW_API_KEYS": "ops:s3cret, k2", "GW_UPSTREAM_MODE": "live",
    })
    assert config.credentials.username == "u"
    assert dict(config.api_keys) == {"ops": "s3cret", "key2": "k2"}
    assert "s3cret" not in repr(config) and "'p'" not in repr(config)
