"""Browser-facing rules, and who is really calling when a proxy stands in front.

`policy_step` runs on every request, first of admission (gateway/admission.py), inside
problem+json rendering (a refusal here is problem+json, on the UI's paths too) and before
the caller is identified:

- **Host** (DNS rebinding). Without API keys the gateway answers anyone who reaches its
  loopback socket. A page whose name an attacker re-points at 127.0.0.1 would then be
  same-origin with it in the operator's browser and could read and write everything. So
  when open, only loopback Host names are served: `localhost`, `127.0.0.0/8`, `[::1]`, any
  port; any other Host is 421 Misdirected Request. With keys the Host is not checked.
- **Origin** (cross-site writes). A browser names the page's origin on every cross-origin
  fetch and form post. A request of any method but GET, HEAD and OPTIONS whose `Origin` is
  neither the gateway's own (the scheme of `is_https`, and the request's Host) nor one of
  `server.allowed_origins` is 403. `Origin: null` (sandboxed frames, file: pages, some
  redirects) is foreign. Without `Origin` (scripts, servers, same-origin navigation) the
  request passes: the rule is the browser's, API keys and CSRF tokens do the rest.
- **JSON writes**. A request under /api/ of any method but GET and HEAD that carries a body
  must say it is JSON (`application/json` with any parameters, `application/*+json`, or
  `text/json`, which the upstream's document also lists), else 415. A page may send
  `text/plain` anywhere without asking the browser's permission (no CORS preflight); JSON
  it may not. The UI's form posts are not under /api/ and carry their CSRF token instead.

Behind a proxy, the socket's peer is the proxy. `server.trusted_proxies` (addresses or
CIDR blocks, parsed once here) names the proxies whose word is taken: from those, and only
those, `X-Forwarded-For` gives the client's address (`client_address`) and
`X-Forwarded-Proto: https` says the client used HTTPS (`is_https`; session cookies are then
`Secure`). Nothing else in the gateway reads either header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from gateway.config import Config, is_loopback
from gateway.errors import Forbidden, MisdirectedRequest, UnsupportedMediaType
from gateway.state import POLICY

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # no Origin check
READ_METHODS = frozenset({"GET", "HEAD"})  # no body rule
JSON_TYPES = frozenset({"application/json", "text/json"})
MAX_HOPS = 16  # X-Forwarded-For entries looked at, from the right
MAX_SHOWN = 80  # characters of an untrusted value quoted back in a problem's detail
_DEFAULT_PORTS = (("http://", ":80"), ("https://", ":443"))

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Policy:
    """The browser-facing rules of one configuration, parsed once."""

    def __init__(self, config: Config) -> None:
        self.open = not config.api_keys  # no keys: loopback Host names only
        self.allowed_origins = frozenset(_origin(o) for o in config.server.allowed_origins)
        self.proxies: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in config.server.trusted_proxies)
        # A handful of peers ask again and again (the proxies themselves): remembered.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def _trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.proxies)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The right-most address of X-Forwarded-For that is not a trusted proxy, when the
        peer is one. A malformed entry ends the walk: what lies left of it was written by
        nobody we trust, so the last address vouched for stands."""
        if not self.proxies or not self.trusts(peer):
            return peer
        client = peer
        for hop in _hops_from_the_right(forwarded_for):
            address = _address(hop)
            if address is None:
                break
            client = address
            if not self.trusts(address):
                break
        return client

    def https(self, request: web.Request) -> bool:
        if request.secure:
            return True
        if not self.proxies or not self.trusts(request.remote or ""):
            return False
        # The last value is the one the trusted peer set (a proxy that appends keeps
        # whatever its own client claimed to the left of it).
        values = request.headers.getall("X-Forwarded-Proto", ())
        return bool(values) and values[-1].rpartition(",")[2].strip().lower() == "https"

    def check(self, request: web.Request) -> None:
        """Raise the refusal this request earns, if any."""
        host = request.headers.get("Host")
        if self.open and not _loopback_host(host or ""):
            raise MisdirectedRequest(
                f"this gateway runs without API keys and serves only loopback host names "
                f"(localhost, 127.0.0.1, [::1]), not {_shown(host or '')}"
            )
        method = request.method
        if method in SAFE_METHODS:
            return
        for origin in request.headers.getall("Origin", ()):
            if not self._origin_ok(origin, host, request):
                raise Forbidden(
                    f"a page of the origin {_shown(origin)} may not send this request: only "
                    "the gateway's own origin and those of server.allowed_origins may"
                )
        if (method not in READ_METHODS and request.body_exists
                and request.path.startswith("/api/") and not _is_json(request.content_type)):
            raise UnsupportedMediaType(
                f"a request body under /api/ must be JSON (Content-Type: application/json), "
                f"not {_shown(request.content_type)}"
            )

    def _origin_ok(self, origin: str, host: str | None, request: web.Request) -> bool:
        origin = _origin(origin)
        if origin in self.allowed_origins:
            return True
        if not host:
            return False
        own = _origin(("https://" if self.https(request) else "http://") + host)
        return origin == own


def policy_step(config: Config) -> Any:
    """`step(request)`: the browser rules for this request (raises its refusal), and the
    policy kept on the request for client_address and is_https."""
    policy = Policy(config)

    def browser_rules(request: web.Request) -> None:
        request[POLICY] = policy
        policy.check(request)

    return browser_rules


def policy_middleware(config: Config) -> Any:
    """policy_step as a middleware of its own (the app runs it in gateway/admission.py)."""
    browser_rules = policy_step(config)

    @web.middleware
    async def checked(request: web.Request, handler: Any) -> web.StreamResponse:
        browser_rules(request)
        return await handler(request)

    return checked


def client_address(request: web.Request) -> str:
    """The client's address: the socket's peer, or, when the peer is a trusted proxy, the
    address X-Forwarded-For names for the client (see Policy.client)."""
    peer = request.remote or "unknown"
    policy = request.get(POLICY)
    if policy is None or not policy.proxies:
        return peer
    return policy.client(peer, request.headers.getall("X-Forwarded-For", ()))


def is_https(request: web.Request) -> bool:
    """Whether the client reached us over HTTPS: directly, or through a trusted proxy whose
    X-Forwarded-Proto says https."""
    policy = request.get(POLICY)
    return request.secure if policy is None else policy.https(request)


# --- parsing untrusted text ------------------------------------------------------------------


def _ip(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 from a dual-stack socket is 10.0.0.1
    return ip


def _address(hop: str) -> str | None:
    """An X-Forwarded-For entry as a normalised address: `1.2.3.4`, `2001:db8::1`, and
    the `1.2.3.4:port`, `[2001:db8::1]` and `[2001:db8::1]:port` some proxies write."""
    ip = _ip(hop)
    if ip is None and hop.startswith("["):
        inside, bracket, port = hop[1:].partition("]")
        if bracket and (not port or (port[0] == ":" and _is_port(port[1:]))):
            ip = _ip(inside)
            ip = ip if isinstance(ip, ipaddress.IPv6Address) else None
    elif ip is None and hop.count(":") == 1:
        host, _, port = hop.partition(":")
        ip = _ip(host) if _is_port(port) else None
        ip = ip if isinstance(ip, ipaddress.IPv4Address) else None
    return None if ip is None else str(ip)


def _hops_from_the_right(values: list[str]) -> Iterable[str]:
    """X-Forwarded-For's entries, right-most first (over repeated header lines too), empty
    list elements skipped, at most MAX_HOPS."""
    seen = 0
    for value in reversed(values):
        for hop in reversed(value.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            yield hop
            seen += 1
            if seen == MAX_HOPS:
                return


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


@functools.lru_cache(maxsize=256)
def _loopback_host(value: str) -> bool:
    """Whether a Host header names this machine's loopback: `localhost`, `127.x.y.z` or
    `[::1]`, each with or without a port."""
    value = value.lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return False
        return ":" in host and is_loopback(host)
    host, colon, port = value.partition(":")
    if colon and not _is_port(port):
        return False
    return is_loopback("localhost" if host == "localhost." else host)


def _origin(text: str) -> str:
    """An origin compared as browsers serialise it: lower case, no default port."""
    text = text.strip().lower().rstrip("/")
    for scheme, port in _DEFAULT_PORTS:
        if text.startswith(scheme) and text.endswith(port):
            return text.removesuffix(port)
    return text


def _is_json(content_type: str) -> bool:
    return content_type in JSON_TYPES or (
        content_type.startswith("application/") and content_type.endswith("+json"))


def _shown(value: str) -> str:
    """Untrusted text quoted for a message: at most MAX_SHOWN characters, non-ASCII and
    control characters escaped."""
    shown = ascii(value[:MAX_SHOWN])
    return shown + " (cut short)" if len(value) > MAX_SHOWN else shown
