"""Configuration: defaults, file, env overrides, secrets; bad values stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ApiKey, Config, ConfigError, Credentials, _parse_env, load_config

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
        "GW_API_KEYS": "ops:s3cret-0123456789, k2-0123456789abcdef",
        "GW_UPSTREAM_MODE": "live",
    })
    assert config.credentials.username == "u"
    assert dict(config.api_keys) == {"ops": ApiKey("s3cret-0123456789"),
                                     "key2": ApiKey("k2-0123456789abcdef")}
    assert "s3cret" not in repr(config) and "'p'" not in repr(config)


def test_defaults_are_the_documented_ones() -> None:
    assert Config() == load_config(ROOT / "config.toml", env={})
    assert Config().session_secret == "" and not Config().api_keys


def test_file_values_need_the_keys_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[cache]\nttl_s = 5\n")  # a float key takes a TOML int
    assert load_config(path, env={}).cache.ttl_s == 5.0
    for text in ("[server]\nport = true\n", "[server]\nport = '8080'\n",
                 "[cache]\nredis_prefix = 1\n", "[sandbox]\nlatency_ms = '5'\n"):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, env={})
        message = str(caught.value)
        assert "\n" not in message and "pydantic" not in message, message


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[sandbox]\nseed = 3\nlatency_ms = 5\n")
    config = load_config(path, env={"GW_SANDBOX_SEED": "7"})
    assert config.sandbox.seed == 7 and config.sandbox.latency_ms == 5


def test_session_secret_comes_from_env_and_stays_out_of_repr() -> None:
    config = load_config(None, env={"GW_SESSION_SECRET": "shared-by-every-replica-0123"})
    assert config.session_secret == "shared-by-every-replica-0123"
    assert "shared-by-every-replica" not in repr(config)


@pytest.mark.parametrize(("text", "value"), [
    ("yes", True), ("On", True), ("1", True), ("TRUE", True),
    ("no", False), ("off", False), ("0", False), ("False", False),
])
def test_env_bool_words(text: str, value: bool) -> None:
    # No key is a bool today; this is the parser a GW_* override of one would go through.
    assert _parse_env("GW_SERVER_FLAG", text, bool) is value


def test_env_bad_bool_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GW_SERVER_FLAG"):
        _parse_env("GW_SERVER_FLAG", "maybe", bool)


@pytest.mark.parametrize(("env", "names"), [
    ({"GW_CACHE_BACKEND": "disk"}, "GW_CACHE_BACKEND"),
    ({"GW_UPSTREAM_MODE": "prod"}, "GW_UPSTREAM_MODE"),
    ({"GW_SERVER_PORT": "70000"}, "GW_SERVER_PORT"),
    ({"GW_NOPE_X": "1"}, "GW_NOPE_X"),
])
def test_bad_env_override_names_the_variable(env: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(None, env=env)


def test_replace_returns_a_validated_copy() -> None:
    config = Config().replace(sandbox={"latency_ms": 0}, upstream={"max_concurrency": 8})
    assert config.sandbox.latency_ms == 0 and config.sandbox.seed == 1
    assert config.upstream.max_concurrency == 8 and Config().upstream.max_concurrency == 64
    live = config.replace(upstream={"mode": "live"}, credentials=Credentials("u", "p"),
                          api_keys={"ops": ApiKey("k" * 16)})
    assert live.credentials.complete and dict(live.api_keys) == {"ops": ApiKey("k" * 16)}
    with pytest.raises(ConfigError, match=r"upstream\.max_concurrency"):
        config.replace(upstream={"max_concurrency": 0})
    with pytest.raises(ConfigError, match="unknown key 'prot'"):
        config.replace(server={"prot": 1})
    with pytest.raises(ConfigError, match="ABCONNECT_USERNAME"):
        config.replace(upstream={"mode": "live"})


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, env={"GW_CACHE_REDIS_URL": "http://:sekrit-pass@redis:6379/0"})
    assert "GW_CACHE_REDIS_URL" in str(refused.value)
    assert "sekrit-pass" not in str(refused.value)
