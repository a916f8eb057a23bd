"""Configuration, validated once at start-up: a bad value never gets as far as binding a socket.

Sources, lowest precedence first:

1. the defaults below (the same as the shipped config.toml, which documents every key);
2. the TOML file given to `load_config` (None: defaults only);
3. `GW_<SECTION>_<KEY>` environment overrides, for any key of [server], [upstream], [cache],
   [sandbox], [auth], [limits], [audit], [ui], [prefetch], parsed to the key's type (bools:
   1/true/yes/on, 0/false/no/off; lists: comma-separated, e.g. GW_AUTH_OPERATORS="alice,bob");
4. secrets, only ever from the environment: ABCONNECT_USERNAME, ABCONNECT_PASSWORD,
   ABC_CLIENT_ID, ABC_CLIENT_SECRET (`credentials`), GW_API_KEYS (`api_keys`: name, key and
   scope of each; see parse_api_keys) and
   GW_SESSION_SECRET (`session_secret`; empty: a random one is drawn at start). Secrets stay
   out of repr() and out of error messages.

Anything wrong (unknown section or key, wrong type, bad value) raises `ConfigError`: one line
naming the key as `section.key`, and the environment variable when the value came from one.
`python -m gateway serve` prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.params import InvalidParam, parse_bool
from gateway.upstream.identity import Credentials

__all__ = [
    "MIN_KEY_LENGTH", "ApiKey", "AuditConfig", "AuthConfig", "CacheConfig", "Config",
    "ConfigError", "Credentials", "LimitsConfig", "SandboxConfig", "ServerConfig",
    "UiConfig", "UpstreamConfig", "is_loopback", "load_config", "parse_api_keys", "token_issuer",
]

MIN_KEY_LENGTH = 16  # an API key shorter than this is guessable: refused at start-up


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


def _prefixed(*prefixes: str, why: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.startswith(prefixes):
            raise ValueError(why)
        return value

    return AfterValidator(check)


def _no_spaces(value: str) -> str:
    if not value or " " in value:
        raise ValueError("must be non-empty, without spaces")
    return value


# A value from the file must have the key's type exactly: an int key refuses "8" and true, a
# str key refuses 8, a bool key (Annotated[bool, Strict()]) would refuse 1. A strict float
# still takes an int: `ttl_s = 600`. (Strict per field: a strict section would refuse a dict.)
_Int = Annotated[int, Strict()]
_Float = Annotated[float, Strict()]
_Str = Annotated[str, Strict()]
_NonNegative = Annotated[_Float, Field(ge=0)]
_Positive = Annotated[_Float, Field(gt=0)]
_HttpUrl = Annotated[_Str, _prefixed("http://", "https://", why="must be an http(s) URL")]


def _cidrs(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR block") from None
    return values


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
    return tuple(v.rstrip("/").lower() for v in values)


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    if any(not v.strip() for v in values):
        raise ValueError("names must be non-empty")
    return tuple(v.strip() for v in values)


_List = tuple[_Str, ...]  # a TOML array of strings; from the environment: comma-separated

# Sections are pydantic dataclasses: validated like models, and still plain dataclasses to
# code that lists their fields (tests/test_deploy.py checks deployment files against them).
_section = dataclass(frozen=True, config=ConfigDict(extra="forbid"))


@_section
class ServerConfig:
    host: Annotated[_Str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[_Int, Field(ge=1, le=65535)] = 8080
    workers: Annotated[_Int, Field(ge=1, le=64)] = 1
    # Origins (scheme://host[:port]) besides the gateway's own whose pages may send
    # non-GET requests (a browser's Origin header); any other origin gets 403.
    allowed_origins: Annotated[_List, AfterValidator(_origins)] = ()
    # Proxies (IP addresses or CIDR blocks) whose X-Forwarded-For and X-Forwarded-Proto are
    # believed; from anyone else those headers are ignored.
    trusted_proxies: Annotated[_List, AfterValidator(_cidrs)] = ()
    # A client that takes longer than this to send its request (headers and body) is cut off.
    read_timeout_s: _Positive = 30.0
    # A second port serving /metrics alone (then not served on the API port); 0 = off.
    admin_port: Annotated[_Int, Field(ge=0, le=65535)] = 0


@_section
class UpstreamConfig:
    mode: Literal["sandbox", "live"] = "sandbox"
    base_url: _HttpUrl = "https://catalog-api.abconnect.co"
    identity_url: _HttpUrl = "https://login.abconnect.co/connect/token"
    # The scope the gateway's own sign-in asks for (space-separated, as OAuth 2 sends it).
    scope: Annotated[_Str, Field(min_length=1)] = "offline_access"
    timeout_s: _Positive = 10.0
    # 64: a caller's default share (limits.upstream_share 0.5) is then 32 slots, enough for
    # a 25-lot page and its catalog in two round trips while another caller floods.
    max_concurrency: Annotated[_Int, Field(ge=1)] = 64
    retries: Annotated[_Int, Field(ge=0, le=10)] = 2
    queue_timeout_s: _Positive = 5.0
    breaker_window_s: _Positive = 10.0
    breaker_min_calls: Annotated[_Int, Field(ge=1)] = 50
    breaker_failure_ratio: Annotated[_Float, Field(gt=0, le=1)] = 0.5
    breaker_open_s: _Positive = 5.0


@_section
class CacheConfig:
    ttl_s: _NonNegative = 600.0
    max_bytes: Annotated[_Int, Field(ge=0)] = 256 * 1024 * 1024
    stale_while_revalidate_s: _NonNegative = 60.0
    stale_if_error_s: _NonNegative = 86400.0
    negative_ttl_s: _NonNegative = 30.0
    backend: Literal["memory", "redis"] = "memory"
    redis_url: Annotated[_Str, _prefixed(
        "redis://", "rediss://", "unix://", why="must be a redis://, rediss:// or unix:// URL"
    )] = "redis://127.0.0.1:6379/0"
    redis_prefix: Annotated[_Str, AfterValidator(_no_spaces)] = "gw:"
    # An entry read after this fraction of ttl_s is refreshed once in the background, so a
    # key read steadily never expires into a miss. 1.0 = off.
    refresh_ahead: Annotated[_Float, Field(gt=0, le=1)] = 0.8


@_section
class SandboxConfig:
    latency_ms: _NonNegative = 600.0
    jitter_ms: _NonNegative = 100.0
    seed: _Int = 1


def _empty_or_http_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be empty or an http(s) URL")
    return value


@_section
class AuthConfig:
    """Callers' own ABConnect access tokens (JWTs), beside the gateway's API keys."""

    # "off": only API keys; "read": verified tokens may read; "write": read and write.
    upstream_tokens: Literal["off", "read", "write"] = "off"
    # The tokens' `iss`; "" = the scheme, host and port of upstream.identity_url.
    issuer: Annotated[_Str, AfterValidator(_empty_or_http_url)] = ""
    # The `aud` a token must carry; "" = not checked.
    audience: _Str = ""
    # UI password sign-in: only these ABConnect usernames (any case), or holders of
    # operator_role in their token's `role` claim. Neither set: password sign-in is off in
    # live mode (API-key sign-in still works); the sandbox's own users may sign in.
    operators: Annotated[_List, AfterValidator(_names)] = ()
    operator_role: _Str = ""


@_section
class LimitsConfig:
    """What one caller (API key, token subject, or client address when open) may make the
    gateway do."""

    requests_per_s: _Positive = 100.0  # token bucket: sustained requests per second...
    burst: Annotated[_Int, Field(ge=1)] = 200  # ...and how many may come at once
    # Share of upstream.max_concurrency one caller's cold fetches may hold at once.
    upstream_share: Annotated[_Float, Field(gt=0, le=1)] = 0.5
    sign_in_failures: Annotated[_Int, Field(ge=1)] = 5  # failed sign-ins per user or address...
    sign_in_window_s: _Positive = 900.0  # ...within this window, then 429 until it passes
    sign_in_concurrency: Annotated[_Int, Field(ge=1)] = 4  # identity calls for sign-in at once
    max_page_size: Annotated[_Int, Field(ge=1)] = 500  # PageSize on mirror list routes
    lock_wait_s: _Positive = 15.0  # longest wait for a lot's write lock before 503


@_section
class PrefetchConfig:
    """Background fetches of what an operator is likely to open next: the events a seller's
    list shows, the next page of an event. Never ahead of a client's call for a slot."""

    enabled: Annotated[bool, Strict()] = True
    # Prefetch calls in flight at most. Whatever this says, a prefetch never takes the last
    # free upstream slot (so at most upstream.max_concurrency - 1 are ever prefetches).
    max_inflight: Annotated[_Int, Field(ge=1)] = 16


@_section
class AuditConfig:
    # One JSON line per write (override, drop-in write, bulk insert, sign-in, sign-out),
    # flushed and fsynced before the answer leaves. Relative: to the working directory.
    path: Annotated[_Str, Field(min_length=1)] = "audit.log"


@_section
class UiConfig:
    """The operator screen. A value above a bound (or a quantity of 0) is saved only after
    the operator confirms it."""

    max_quantity: Annotated[_Int, Field(ge=1)] = 10000
    max_weight_lb: _Positive = 10000.0


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "cache": CacheConfig,
    "sandbox": SandboxConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "audit": AuditConfig,
    "ui": UiConfig,
    "prefetch": PrefetchConfig,
}


@dataclass(frozen=True)
class ApiKey:
    """One client key of GW_API_KEYS. The key itself never appears in logs or messages."""

    key: str = Field(repr=False)
    scope: Literal["read", "write"] = "read"

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_KEY_LENGTH} characters long")


class Config(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    prefetch: PrefetchConfig = Field(default_factory=PrefetchConfig)
    credentials: Credentials = Field(default_factory=lambda: Credentials("", ""), repr=False)
    # name -> key and scope. Names appear in logs; keys, like every secret here, never do.
    api_keys: Mapping[str, ApiKey] = Field(default_factory=dict, repr=False)
    session_secret: str = Field(default="", repr=False)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values passed in. pydantic-settings would read os.environ itself, but
        # load_config() takes an explicit env mapping (tests pass dicts), GW_* names have
        # underscores on both sides of the section (GW_CACHE_TTL_S) and unknown GW_* names
        # must be refused, not ignored. So load_config() reads the file and the mapping into
        # init values, and Config() alone is the defaults whatever the environment holds.
        return (init_settings,)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.server.workers > 1 and self.cache.backend != "redis":
            raise ValueError(
                f"server.workers: {self.server.workers} workers need cache.backend = "
                "\"redis\": with the in-memory cache each worker would keep its own copy, and "
                "after an override saved through one worker the others would go on serving "
                "the old lot"
            )
        if self.upstream.mode == "live" and not self.credentials.complete:
            raise ValueError(
                "upstream.mode: live mode needs ABCONNECT_USERNAME and ABCONNECT_PASSWORD in "
                "the environment"
            )
        seen: dict[str, str] = {}
        for name, api_key in self.api_keys.items():
            if api_key.key in seen:
                raise ValueError(f"GW_API_KEYS: keys {seen[api_key.key]!r} and {name!r} are "
                                 "the same key; each caller needs its own")
            seen[api_key.key] = name
        return self

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some keys of some sections changed, e.g.
        replace(sandbox={"latency_ms": 0}); `credentials=` and `api_keys=` replace whole."""
        values = dict(self)
        for name, change in changes.items():
            if name in _SECTIONS and isinstance(change, Mapping):
                change = {**dataclasses.asdict(values[name]), **change}
            values[name] = change
        return _checked(lambda: type(self)(**values))


# GW_* names that are secrets with their own meaning, not GW_<SECTION>_<KEY> overrides.
_NOT_OVERRIDES = {"GW_API_KEYS", "GW_SESSION_SECRET"}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at `path`, then env overrides and secrets from `env`
    (None: os.environ); validated. Raises ConfigError."""
    env = os.environ if env is None else env
    values = _read_file(path)
    overrides, origins = _read_overrides(env)
    for name, keys in overrides.items():
        values[name] = {**values.get(name, {}), **keys}
    values |= {
        "credentials": Credentials(
            username=env.get("ABCONNECT_USERNAME", ""),
            password=env.get("ABCONNECT_PASSWORD", ""),
            client_id=env.get("ABC_CLIENT_ID", ""),
            client_secret=env.get("ABC_CLIENT_SECRET", ""),
        ),
        "api_keys": parse_api_keys(env.get("GW_API_KEYS", "")),
        "session_secret": env.get("GW_SESSION_SECRET", ""),
    }
    return _checked(lambda: Config(**values), origins)


def parse_api_keys(text: str) -> dict[str, ApiKey]:
    """`ops:<key>:write,ci:<key>` -> {"ops": ApiKey(<key>, "write"), "ci": ApiKey(<key>)}.

    A key reads only, unless its entry ends in `:write`. A bare `key` is named `key1`, `key2`,
    ... by its position. Names appear in logs (the caller of
    a request, the actor of a save); keys never do, not even in an error about them.
    """
    keys: dict[str, ApiKey] = {}
    for position, item in enumerate((p.strip() for p in text.split(",")), start=1):
        if not item:
            continue
        name, sep, rest = item.partition(":")
        if not sep:
            name, sep, rest = f"key{position}", ":", item
        key, _, scope = rest.rpartition(":") if rest.endswith((":read", ":write")) else (
            rest, "", "read")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ConfigError("GW_API_KEYS: each entry is 'name:key' or 'name:key:write'")
        if name in keys:
            raise ConfigError(f"GW_API_KEYS: duplicate name {name!r}")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"GW_API_KEYS: the key of {name!r} is shorter than "
                              f"{MIN_KEY_LENGTH} characters")
        if any(k.key == key for k in keys.values()):
            other = next(n for n, k in keys.items() if k.key == key)
            raise ConfigError(f"GW_API_KEYS: keys {other!r} and {name!r} are the same key; "
                              "each caller needs its own")
        keys[name] = ApiKey(key, scope)  # type: ignore[arg-type]
    return keys


def token_issuer(config: Config) -> str:
    """The `iss` callers' tokens must carry: auth.issuer, or else the origin (scheme, host
    and port) of upstream.identity_url, where the identity server publishes its keys."""
    if config.auth.issuer:
        return config.auth.issuer
    parts = urlsplit(config.upstream.identity_url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for name, table in raw.items():
        # Checked here, not left to Config: its other fields are secrets, never read from a file.
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
    return raw


def _read_overrides(
    env: Mapping[str, str],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """GW_<SECTION>_<KEY> values parsed to their key's type, and (section, key) -> env name."""
    values: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    for var, text in env.items():
        if not var.startswith("GW_") or var in _NOT_OVERRIDES:
            continue
        section, key = _split_env_name(var)
        kind = _SECTIONS[section].__pydantic_fields__[key].annotation
        values.setdefault(section, {})[key] = _parse_env(var, text, kind)
        origins[(section, key)] = var
    return values, origins


def _split_env_name(var: str) -> tuple[str, str]:
    rest = var[len("GW_") :].lower()
    for section, cls in _SECTIONS.items():
        if rest.startswith(section + "_"):
            key = rest[len(section) + 1 :]
            if key in cls.__pydantic_fields__:
                return section, key
            raise ConfigError(f"{var}: unknown key '{key}' in [{section}]")
    raise ConfigError(f"{var}: unknown section (expected GW_<SECTION>_<KEY>)")


def _parse_env(var: str, text: str, kind: Any) -> Any:
    """`text` as a value of type `kind` (str for Literal choices, which Config checks)."""
    if kind is bool:
        try:
            return parse_bool(var, text)  # the same words a query parameter accepts
        except InvalidParam:
            raise ConfigError(f"{var}: expected true or false, got {text!r}") from None
    if kind == tuple[str, ...] or getattr(kind, "__origin__", None) is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{var}: expected a number, got {text!r}") from None
    return text


def _checked(
    build: Callable[[], Config], origins: Mapping[tuple[str, str], str] | None = None
) -> Config:
    """build(), with a pydantic ValidationError turned into a one-line ConfigError."""
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], origins or {})) from None


def _describe(error: ErrorDetails, origins: Mapping[tuple[str, str], str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    reason = error.get("ctx", {}).get("error")  # the ValueError raised by our own checks
    why = str(reason) if isinstance(reason, Exception) else error["msg"]
    if not loc:  # from _consistent(): the message starts with the key
        return why
    name, *rest = loc
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        if not rest:
            return f"unknown config section [{name}]"
        return f"unknown key '{rest[-1]}' in [{name}]"
    why = why[:1].lower() + why[1:]
    if name not in _SECTIONS:  # a secret: never show the value
        return f"{name}: {why}"
    where = ".".join(loc)
    if loc[:2] in origins:
        where = f"{origins[loc[:2]]} ({where})"
    if loc[:2] in _SECRET_BEARING:  # may hold a password: never echoed
        return f"{where}: {why}"
    return f"{where}: {why}, got {error['input']!r}"


_SECRET_BEARING = {("cache", "redis_url")}
