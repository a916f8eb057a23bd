"""Configuration: config.toml, then GW_<SECTION>_<KEY> env overrides, then env secrets.

The result is a tree of frozen dataclasses validated once at start-up. A bad file never
gets as far as binding a socket: `ConfigError` names the offending key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1


@dataclass(frozen=True)
class UpstreamConfig:
    mode: Literal["sandbox", "live"] = "sandbox"
    base_url: str = "https://catalog-api.abconnect.co"
    identity_url: str = "https://login.abconnect.co/connect/token"
    timeout_s: float = 10.0
    max_concurrency: int = 32
    retries: int = 2
    queue_timeout_s: float = 5.0
    breaker_window_s: float = 10.0
    breaker_min_calls: int = 50
    breaker_failure_ratio: float = 0.5
    breaker_open_s: float = 5.0


@dataclass(frozen=True)
class CacheConfig:
    ttl_s: float = 600.0
    max_bytes: int = 256 * 1024 * 1024
    stale_while_revalidate_s: float = 60.0
    stale_if_error_s: float = 86400.0
    negative_ttl_s: float = 30.0
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "gw:"


@dataclass(frozen=True)
class SandboxConfig:
    latency_ms: float = 600.0
    jitter_ms: float = 100.0
    seed: int = 1


@dataclass(frozen=True)
class Credentials:
    """ABConnect identity credentials, only ever read from the environment."""

    username: str = ""
    password: str = ""
    client_id: str = ""
    client_secret: str = ""

    @property
    def complete(self) -> bool:
        return bool(self.username and self.password)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    credentials: Credentials = field(default_factory=Credentials, repr=False)
    # name -> key. Keys are secrets: repr=False keeps them out of logs.
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)

    def replace(self, **sections: Any) -> Config:
        """A copy with some keys of some sections changed: replace(sandbox={"seed": 2})."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **values)
            if name in _SECTIONS
            else values
            for name, values in sections.items()
        }
        new = dataclasses.replace(self, **changed)
        _validate(new)
        return new


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "cache": CacheConfig,
    "sandbox": SandboxConfig,
}

# Env names that look like overrides but are secrets with their own meaning.
_NOT_OVERRIDES = {"GW_API_KEYS", "GW_SESSION_SECRET"}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or only defaults when None), apply env overrides and secrets, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    sections: dict[str, Any] = {}
    for name, section in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build(name, section, source="config")

    for var, text in env.items():
        if not var.startswith("GW_") or var in _NOT_OVERRIDES:
            continue
        section_name, key = _split_env_name(var)
        current = dataclasses.asdict(sections.get(section_name, _SECTIONS[section_name]()))
        current[key] = _parse_env(var, text, _field_type(section_name, key))
        sections[section_name] = _build(section_name, current, source=var)

    config = Config(
        **sections,
        credentials=Credentials(
            username=env.get("ABCONNECT_USERNAME", ""),
            password=env.get("ABCONNECT_PASSWORD", ""),
            client_id=env.get("ABC_CLIENT_ID", ""),
            client_secret=env.get("ABC_CLIENT_SECRET", ""),
        ),
        api_keys=parse_api_keys(env.get("GW_API_KEYS", "")),
    )
    _validate(config)
    return config


def parse_api_keys(text: str) -> dict[str, str]:
    """`name:key,other:key2` -> {name: key}; a bare `key` is named `key1`, `key2`, ...

    Names appear in logs (who saved an override); keys never do.
    """
    keys: dict[str, str] = {}
    for position, item in enumerate((p.strip() for p in text.split(",")), start=1):
        if not item:
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = f"key{position}", item
        name, key = name.strip(), key.strip()
        if not name or not key:
            raise ConfigError("GW_API_KEYS: each entry is 'name:key' or 'key'")
        if name in keys:
            raise ConfigError(f"GW_API_KEYS: duplicate name {name!r}")
        keys[name] = key
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_env_name(var: str) -> tuple[str, str]:
    rest = var[len("GW_") :].lower()
    for section in _SECTIONS:
        if rest.startswith(section + "_"):
            key = rest[len(section) + 1 :]
            names = {f.name for f in dataclasses.fields(_SECTIONS[section])}
            if key in names:
                return section, key
            raise ConfigError(f"{var}: unknown key '{key}' in [{section}]")
    raise ConfigError(f"{var}: unknown section (expected GW_<SECTION>_<KEY>)")


def _field_type(section: str, key: str) -> type:
    return _TYPES[(section, key)]


def _parse_env(var: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var}: expected true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{var}: expected a number, got {text!r}") from None
    return text


def _build(section: str, values: dict[str, Any], source: str) -> Any:
    cls = _SECTIONS[section]
    out = {}
    for key, value in values.items():
        if (section, key) not in _TYPES:
            raise ConfigError(f"{source}: unknown key '{key}' in [{section}]")
        kind = _TYPES[(section, key)]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(
                f"{source}: [{section}] {key} must be {kind.__name__}, got {value!r}"
            )
        out[key] = value
    return cls(**out)


def _validate(c: Config) -> None:
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {why}")

    need(1 <= c.server.port <= 65535, "server.port", "must be 1-65535")
    need(bool(c.server.host), "server.host", "must not be empty")
    need(1 <= c.server.workers <= 64, "server.workers", "must be 1-64")
    need(c.cache.backend in ("memory", "redis"), "cache.backend", "must be 'memory' or 'redis'")
    need(
        c.server.workers == 1 or c.cache.backend == "redis", "server.workers",
        f"{c.server.workers} workers need cache.backend = \"redis\": with the in-memory "
        "cache each worker would keep its own copy, and after an override saved through one "
        "worker the others would go on serving the old lot",
    )
    need(c.cache.redis_url.startswith(("redis://", "rediss://", "unix://")), "cache.redis_url",
         "must be a redis://, rediss:// or unix:// URL")
    need(bool(c.cache.redis_prefix) and " " not in c.cache.redis_prefix, "cache.redis_prefix",
         "must be non-empty, without spaces")
    need(c.upstream.mode in ("sandbox", "live"), "upstream.mode", "must be 'sandbox' or 'live'")
    for key in ("base_url", "identity_url"):
        url = getattr(c.upstream, key)
        need(url.startswith(("http://", "https://")), f"upstream.{key}", "must be an http(s) URL")
    need(
        c.upstream.mode != "live" or c.credentials.complete, "upstream.mode",
        "live mode needs ABCONNECT_USERNAME and ABCONNECT_PASSWORD in the environment",
    )
    need(c.upstream.timeout_s > 0, "upstream.timeout_s", "must be > 0")
    need(c.upstream.max_concurrency >= 1, "upstream.max_concurrency", "must be >= 1")
    need(0 <= c.upstream.retries <= 10, "upstream.retries", "must be 0-10")
    need(c.upstream.queue_timeout_s > 0, "upstream.queue_timeout_s", "must be > 0")
    need(c.upstream.breaker_window_s > 0, "upstream.breaker_window_s", "must be > 0")
    need(c.upstream.breaker_min_calls >= 1, "upstream.breaker_min_calls", "must be >= 1")
    need(0 < c.upstream.breaker_failure_ratio <= 1, "upstream.breaker_failure_ratio",
         "must be in (0, 1]")
    need(c.upstream.breaker_open_s > 0, "upstream.breaker_open_s", "must be > 0")
    need(c.cache.ttl_s >= 0, "cache.ttl_s", "must be >= 0")
    for key in ("stale_while_revalidate_s", "stale_if_error_s", "negative_ttl_s"):
        need(getattr(c.cache, key) >= 0, f"cache.{key}", "must be >= 0")
    need(c.cache.max_bytes >= 0, "cache.max_bytes", "must be >= 0")
    need(c.sandbox.latency_ms >= 0, "sandbox.latency_ms", "must be >= 0")
    need(c.sandbox.jitter_ms >= 0, "sandbox.jitter_ms", "must be >= 0")


_TYPES: dict[tuple[str, str], type] = {
    (section, f.name): {"str": str, "int": int, "float": float, "bool": bool}.get(
        str(f.type).split("[")[0].removeprefix("typing."), str
    )
    for section, cls in _SECTIONS.items()
    for f in dataclasses.fields(cls)
}
