"""The forms a cached answer's body is sent in, and assembled pages kept for reuse.

- **Content coding.** A body of at least MIN_BYTES is sent compressed when the client's
  `Accept-Encoding` takes `br` or `gzip` (q-values honoured; `br` first on a tie: smaller);
  a smaller one, or one no client coding fits, is sent as it is. Every cached answer says
  `Vary: Accept-Encoding`, so a shared cache in front keeps the forms apart.
- **Once per version.** A body's compressed forms are made the first time a client asks for
  them and kept with the body (`Forms`, held by the cache entry or by the page below), so a
  warm hit never compresses: it picks bytes made before.
- **Strong ETags per form.** The body's ETag for the plain form; `"<tag>-br"` and
  `"<tag>-gz"` for the compressed ones. Each names exactly the bytes sent, so a cache or
  a client holding one form never takes another's 304 for it (RFC 9110 8.8.3).
- **Pages.** An event page or a batch of lots is assembled from cached entries. `Pages`
  keeps the assembled bytes (and their forms) keyed by the identity of the entries they
  were made of: the same entries again give the same bytes, and a part that changed (a
  save replaces the lot's entry) gives a new key, never an old page. It is an LRU bounded
  by bytes; it holds its parts alive until it lets them go.

brotli is Google's own binding (the `brotli` package); gzip is the standard library's.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import brotli

MIN_BYTES = 1024  # smaller bodies gain too little to be worth a client's decoding
BROTLI_QUALITY = 5  # ~0.3 ms for a 25-lot page; 11 would take ~100 times longer for ~10 %
GZIP_LEVEL = 6
_SUFFIX = {"br": "-br", "gzip": "-gz"}
_CODERS: dict[str, Callable[[bytes], bytes]] = {
    "br": lambda body: brotli.compress(body, quality=BROTLI_QUALITY),
    "gzip": lambda body: gzip.compress(body, GZIP_LEVEL, mtime=0),
}
_PREFERENCE = ("br", "gzip")
PAGE_OVERHEAD = 512  # a kept page's bookkeeping (its key and slot), roughly


@dataclass(slots=True, eq=False)
class Forms:
    """One version of a body: as is, and compressed (each made at most once)."""

    body: bytes
    etag: str
    _coded: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def form(self, coding: str | None) -> tuple[bytes, str]:
        """(bytes, ETag) of the body in `coding` (None: as is)."""
        if coding is None:
            return self.body, self.etag
        try:
            return self._coded[coding]
        except KeyError:
            coded = self._coded[coding] = (_CODERS[coding](self.body),
                                           self.etag[:-1] + _SUFFIX[coding] + '"')
            return coded

    def derive(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What `make()` makes of this version (its answer's headers, written once:
        gateway/wire.py), made once and kept with it."""
        try:
            return self._derived[key]
        except KeyError:
            made = self._derived[key] = make()
            return made


def negotiate(accept_encoding: str, size: int) -> str | None:
    """The coding to send a body of `size` bytes in for this Accept-Encoding, or None."""
    if size < MIN_BYTES or not accept_encoding:
        return None
    weights = _weights(accept_encoding)
    best, best_q = None, 0.0
    for coding in _PREFERENCE:
        q = weights.get(coding, weights.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


def _weights(header: str) -> dict[str, float]:
    """Accept-Encoding as coding -> q (a malformed q counts as 0: not acceptable)."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        name, _, value = params.partition("=")
        if name.strip().lower() == "q":
            try:
                q = min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                q = 0.0
        weights[coding] = q
    return weights


class Pages:
    """Assembled pages by the identity of their parts, least recently used dropped first
    beyond `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # key -> (the parts, pinned so their ids stay theirs; the forms; bytes charged)
        self._pages: OrderedDict[Hashable, tuple[tuple[object, ...], Forms, int]] = (
            OrderedDict())
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._pages)

    def get(
        self, parts: tuple[object, ...], extra: Hashable, build: Callable[[], Forms]
    ) -> Forms:
        """The forms of the page made of `parts` (and `extra`: what else its bytes depend
        on), built by `build()` the first time."""
        key = (tuple(map(id, parts)), extra)
        slot = self._pages.get(key)
        if slot is not None:
            self._pages.move_to_end(key)
            return slot[1]
        forms = build()
        self._put(key, parts, forms)
        return forms

    def _put(self, key: Hashable, parts: tuple[object, ...], forms: Forms) -> None:
        # Charged for the body twice: once as is, once for the compressed forms it may get
        # (each a fraction of it: JSON compresses 5 to 10 times).
        charge = 2 * len(forms.body) + PAGE_OVERHEAD
        if charge > self.max_bytes:
            return
        self._pages[key] = (parts, forms, charge)
        self.bytes += charge
        while self.bytes > self.max_bytes:
            _, (_, _, dropped) = self._pages.popitem(last=False)
            self.bytes -= dropped
