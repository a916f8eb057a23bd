"""What every replica must agree on in Redis: key names and channel messages.

Replicas of different versions share one Redis during a rolling deploy, so nothing here
may change without a migration. Under the prefix (one per environment):

    gen:<key text>    INT   the key's generation, bumped by invalidate(key)
    kgen:<kind>       INT   the kind's generation, bumped by invalidate_kind(kind)
    val:<key text>    HASH  g: "<gen>:<kgen>" it was fetched under, t: unix time fetched,
                            b: the body; expires ttl_s + the stale windows after storing
    lease:<key text>  STR   a fetch lease: its holder's token (SET NX PX)
    lock:<name>       STR   an exclusive() lock: its holder's token (SET NX PX)
    events            the pub/sub channel, carrying one of:
        "inv <sender> <key text>"   the key was invalidated by replica <sender>
        "invkind <sender> <kind>"   every key of the kind was invalidated
        "done <lease name>"         a lease was released: its waiters look again

Anyone who can reach the Redis can publish on the channel or write these keys, so what is
read back is checked: parse() turns any message it cannot read into MalformedMessage
(never another exception), and a lease or lock's expiry is never trusted beyond the
lease length a replica sets itself (lease.py).

(`revoked:<name>` under the same prefix belongs to gateway.revocations.)

A key's text is its kind, "|", then its ident as compact JSON (tuples as arrays).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.cache.store import Key


def key_text(key: Key) -> str:
    """A cache key as a Redis-safe string: kind, then the ident as compact JSON."""
    return f"{key[0]}|{json.dumps(key[1], separators=(',', ':'))}"


def key_from_text(text: str) -> Key:
    """The inverse of key_text(); ValueError if `text` is not one."""
    kind, bar, ident = text.partition("|")
    if not bar:
        raise ValueError("no '|' between kind and ident")
    try:
        key = (kind, _tuples(json.loads(ident)))
    except RecursionError:  # "[[[[..." nested deeper than Python recurses
        raise ValueError("the ident is nested too deeply") from None
    try:
        hash(key)
    except TypeError as exc:  # a JSON object: no key_text() makes one
        raise ValueError("the ident is not hashable") from exc
    return key


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class Lease:
    key: str  # its Redis key, prefix included
    name: str  # what "done <name>" announces when its holder lets go


class Layout:
    """The Redis names for one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channel = prefix + "events"

    def generation(self, text: str) -> str:
        return f"{self.prefix}gen:{text}"

    def kind_generation(self, kind: str) -> str:
        return f"{self.prefix}kgen:{kind}"

    def value(self, text: str) -> str:
        return f"{self.prefix}val:{text}"

    def fetch_lease(self, text: str) -> Lease:
        return Lease(f"{self.prefix}lease:{text}", text)

    def lock(self, name: str) -> Lease:
        return Lease(f"{self.prefix}lock:{name}", f"lock:{name}")


# --- channel messages -------------------------------------------------------------------


class Invalidated(NamedTuple):
    sender: str
    key: Key


class InvalidatedKind(NamedTuple):
    sender: str
    kind: str


class Released(NamedTuple):
    name: str


Message = Invalidated | InvalidatedKind | Released


class MalformedMessage(ValueError):
    """A message with a known verb that cannot be read."""


def invalidated(sender: str, key: Key) -> str:
    return f"inv {sender} {key_text(key)}"


def invalidated_kind(sender: str, kind: str) -> str:
    return f"invkind {sender} {kind}"


def released(name: str) -> str:
    return f"done {name}"


# Longer than any key text a request can make (a URL is at most a few KiB): not read.
MAX_MESSAGE_BYTES = 64 * 1024


def parse(data: object) -> Message | None:
    """The message in `data`; None for a verb this version does not know (a newer
    replica's: ignored, not an error). Raises MalformedMessage for anything else: not
    bytes, too long, not UTF-8, a known verb without its parts, a key that is no key."""
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes | bytearray):
        raise MalformedMessage(f"not bytes but {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"{len(data)} bytes long")
    try:
        text = bytes(data).decode()
    except UnicodeDecodeError as exc:
        raise MalformedMessage("not UTF-8") from exc
    verb, _, rest = text.partition(" ")
    if not verb:
        raise MalformedMessage("no verb")
    if verb == "done":
        if not rest:
            raise MalformedMessage("no lease name")
        return Released(rest)
    if verb not in ("inv", "invkind"):
        return None
    sender, _, what = rest.partition(" ")
    if not sender or not what:
        raise MalformedMessage("no sender or no key")
    if verb == "invkind":
        return InvalidatedKind(sender, what)
    try:
        return Invalidated(sender, key_from_text(what))
    except ValueError as exc:  # json.JSONDecodeError included
        raise MalformedMessage(f"bad key: {exc}") from exc
