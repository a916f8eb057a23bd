"""Lots as the operator sees them: effective values, what is overridden, and form input.

The upstream keeps what the seller sent in `initialData` and the operators' corrections in
`overridenData[0]`; a field's effective value is the override when there is one. Bodies are
read tolerantly (camelCase or PascalCase names, missing fields) because they are the
upstream's, not ours.

A form posts strings; `form_changes` turns them into the JSON values
`gateway.overrides.validate_changes` expects, refusing what it cannot read with a message
that names the column as the operator sees it ("Weight (lb) must be a number, e.g. 12.5").
Every rendered lot carries the ETag of the body it was rendered from, which the page sends
back as `If-Match` with each save (a lot changed meanwhile is a conflict, not an overwrite).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import params
from gateway.cache import etag_of
from gateway.config import UiConfig
from gateway.errors import GatewayError, Unprocessable, UpstreamFailed
from gateway.overrides import FIELDS, MAX_TEXT, validate_changes
from gateway.reads import EventPage, LotOutcome

# Editable in the table, in column order, with their column headings.
TABLE_FIELDS: dict[str, str] = {
    "qty": "Qty", "l": "L", "w": "W", "h": "H", "wgt": "Weight", "value": "Value",
    "cpack": "Packing", "forceCrate": "Force crate", "doNotTip": "Do not tip",
}
# Edited in the lot dialog.
TEXT_FIELDS: dict[str, str] = {
    "description": "Description", "notes": "Notes", "notedConditions": "Noted conditions",
}
UNITS = {"l": "in", "w": "in", "h": "in", "wgt": "lb", "value": "$"}
# Names in messages, where a one-letter heading would not read.
MESSAGE_LABELS = {"l": "Length", "w": "Width", "h": "Height"}
# Form fields that are not lot fields: how the save is to be made.
CONTROLS = ("csrf_token", "confirmed", "reset")


@dataclass(frozen=True)
class FieldView:
    lot_id: int
    name: str
    value: Any  # effective
    initial: Any
    overridden: bool

    @property
    def kind(self) -> str:
        return FIELDS[self.name][0]

    @property
    def label(self) -> str:
        return TABLE_FIELDS.get(self.name) or TEXT_FIELDS[self.name]

    @property
    def text(self) -> str:
        """The effective value as an input shows it."""
        return show(self.value, self.kind)

    @property
    def initial_text(self) -> str:
        return show(self.initial, self.kind)

    @property
    def form_value(self) -> str:
        """The effective value as the form posts it ("true"/"false" for a flag)."""
        if self.kind == "bool":
            return "" if self.value is None else ("true" if self.value else "false")
        return self.text

    @property
    def described(self) -> str:
        """The column as messages name it, with its unit: "Weight (lb)"."""
        return described(self.name)


@dataclass(frozen=True)
class LotView:
    id: int
    customer_item_id: str
    fields: dict[str, FieldView]
    images: list[str]
    lot_numbers: dict[int, str]  # catalog id -> lot number
    etag: str = ""  # of the body this view was read from: the page's If-Match on saves

    @classmethod
    def from_body(cls, body: bytes) -> LotView:
        """502 (UpstreamFailed) when the body is not a readable LotDto."""
        try:
            lot = json.loads(body)
            return cls._from_json(lot, etag_of(body))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamFailed("the upstream lot is not readable") from None

    @classmethod
    def _from_json(cls, lot: dict[str, Any], etag: str = "") -> LotView:
        initial = _lower_keys(lot.get("initialData"))
        overrides = lot.get("overridenData") or []
        override = _lower_keys(overrides[0] if overrides else None)
        lot_id = int(lot["id"])
        fields = {}
        for name in FIELDS:
            key = name.lower()
            overridden = override.get(key) is not None
            fields[name] = FieldView(
                lot_id, name, override[key] if overridden else initial.get(key),
                initial.get(key), overridden,
            )
        images = [str(i["link"]) for i in lot.get("imageLinks") or []
                  if isinstance(i, dict) and i.get("link")]
        numbers = {int(c["catalogId"]): str(c.get("lotNumber", ""))
                   for c in lot.get("catalogs") or [] if isinstance(c, dict) and "catalogId" in c}
        return cls(lot_id, str(lot.get("customerItemId") or ""), fields, images, numbers, etag)

    @property
    def description(self) -> FieldView:
        return self.fields["description"]

    @property
    def thumbnail(self) -> str | None:
        return self.images[0] if self.images else None


@dataclass(frozen=True)
class MissingLot:
    """A lot of the page that could not be read; the rest of the page still renders."""

    id: int
    status: int
    detail: str


@dataclass(frozen=True)
class LotRow:
    number: str
    lot: LotView | None = None
    missing: MissingLot | None = None


@dataclass(frozen=True)
class LotsView:
    """One page of an event, ready for the lots panel."""

    event: dict[str, Any]
    rows: list[LotRow]
    paging: dict[str, Any]
    # Freshness of the page's data: its oldest part (the catalog or a lot), and whether
    # some part is the last good copy because the upstream failed.
    age_s: float
    fetched_at: datetime
    stale: bool

    @classmethod
    def from_page(cls, page: EventPage) -> LotsView:
        catalog = json.loads(page.catalog.entry.body)
        numbers = {int(e["id"]): str(e.get("lotNumber", "")) for e in catalog.get("lots") or []}
        rows = [_row(numbers.get(o.lot_id, ""), o) for o in page.lots]
        age_s = max(page.age_s or 0.0, 0.0)
        return cls(
            event={k: v for k, v in catalog.items() if k not in ("lots", "sellers")},
            rows=rows, paging=page.paging.envelope(), age_s=age_s,
            fetched_at=datetime.now(UTC) - timedelta(seconds=age_s), stale=page.fallback,
        )

    @property
    def age_text(self) -> str:
        """How old the data is, in words: "just now", "4 min ago", "3 h ago"."""
        minutes = int(self.age_s // 60)
        if minutes < 1:
            return "just now"
        if minutes < 120:
            return f"{minutes} min ago"
        return f"{minutes // 60} h ago"

    @property
    def available(self) -> int:
        return sum(1 for r in self.rows if r.lot is not None)

    @property
    def first_item(self) -> int:
        return (self.paging["pageNumber"] - 1) * self.paging["pageSize"] + 1


def _row(number: str, outcome: LotOutcome) -> LotRow:
    error = outcome.error
    if outcome.lookup is not None:
        try:
            return LotRow(number, lot=LotView.from_body(outcome.lookup.entry.body))
        except GatewayError as exc:
            error = exc
    assert error is not None
    return LotRow(number, missing=MissingLot(outcome.lot_id, error.status, error.detail))


def _lower_keys(data: Any) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in data.items()} if isinstance(data, dict) else {}


def show(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "Yes" if value else "No"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def described(name: str) -> str:
    """A field as messages name it: its column label and unit, "Weight (lb)"."""
    label = MESSAGE_LABELS.get(name) or TABLE_FIELDS.get(name) or TEXT_FIELDS.get(name) or name
    return f"{label} ({UNITS[name]})" if name in UNITS else label


def form_changes(form: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """One posted field -> (its name, validated changes). 422 naming the column otherwise.

    An empty number removes the override (back to the value as received); an empty text is
    saved as an empty override, and `reset=1` removes a field's override whatever its kind.
    Numbers are plain decimals ("12.5", or "12,5" with a decimal comma); exponents ("1e3")
    and thousands separators are refused. Flags come as "true"/"false" (or "on").
    """
    posted = {k: v for k, v in form.items() if k not in CONTROLS}
    if len(posted) != 1:
        raise Unprocessable("send exactly one field per save")
    [(name, text)] = posted.items()
    if not isinstance(text, str):
        raise Unprocessable(f"{described(name)} must be text")
    if form.get("reset") == "1" and name in FIELDS:
        return name, validate_changes({name: None})
    kind = FIELDS[name][0] if name in FIELDS else "text"
    return name, validate_changes({name: _parse(text, kind, name)})


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_WHOLE = re.compile(r"[+-]?[0-9]+")
_COMMA_DECIMAL = re.compile(r"([+-]?[0-9]*),([0-9]+)")


def _parse(text: str, kind: str, name: str) -> Any:
    label = described(name)
    if kind == "text":
        if len(text) > MAX_TEXT:
            raise Unprocessable(f"{label} is longer than {MAX_TEXT:,} characters")
        return text  # "" is an empty override; removing one is reset=1
    text = text.strip()
    if not text:
        return None
    if kind == "bool":
        try:
            if not text.isascii():
                raise params.InvalidParam(name, text, "true or false")
            return params.parse_bool(name, text)
        except params.InvalidParam:
            raise Unprocessable(f"{label} must be Yes or No") from None
    example = "a whole number, e.g. 3" if kind == "int" else "a number, e.g. 12.5"
    comma = _COMMA_DECIMAL.fullmatch(text)
    if comma and len(comma.group(2)) == 3:  # "1,000": a thousands separator, or 1.0?
        raise Unprocessable(f"{label} must be {example}, without thousands separators")
    if comma:
        text = f"{comma.group(1) or '0'}.{comma.group(2)}"
    if not _DECIMAL.fullmatch(text) or (kind == "int" and not _WHOLE.fullmatch(text)):
        raise Unprocessable(f"{label} must be {example}")
    value: int | float = int(text) if _WHOLE.fullmatch(text) else float(text)
    if value < 0 and FIELDS[name][1]:
        raise Unprocessable(f"{label} must not be negative")
    if abs(value) > 2**31 - 1:
        raise Unprocessable(f"{label} is too large")
    return value


def implausible(name: str, value: Any, limits: UiConfig) -> str | None:
    """Why a valid value is unusual enough to ask the operator first (None: it is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if name == "qty" and value == 0:
        return "Qty 0 means the lot has no items."
    bound = {"qty": limits.max_quantity, "wgt": limits.max_weight_lb}.get(name)
    if bound is not None and value > bound:
        return f"{described(name)} {show(value, 'number')} is more than {bound:,g}."
    return None


@dataclass(frozen=True)
class Conflict:
    """A save refused because the lot changed since the page read it."""

    mine: str  # what this operator typed (as posted)
    by: str | None = None  # who saved the current value, when this process saw it
    at: str | None = None  # "14:02 UTC"


class RecentSaves:
    """Who last saved each field of a lot through this process's UI, and when: enough to
    tell an operator whose save a conflict is with (unknown when it came another way)."""

    def __init__(self, keep: int = 5000) -> None:
        self._keep = keep
        self._saves: dict[tuple[int, str], tuple[str, float]] = {}

    def saved(self, lot_id: int, names: list[str], actor: str) -> None:
        now = time.time()
        for name in names:
            self._saves.pop((lot_id, name), None)
            self._saves[(lot_id, name)] = (actor, now)
        while len(self._saves) > self._keep:
            del self._saves[next(iter(self._saves))]

    def conflict(self, lot_id: int, name: str, mine: str, actor: str) -> Conflict:
        seen = self._saves.get((lot_id, name))
        if seen is None:
            return Conflict(mine)
        by, at = seen
        when = datetime.fromtimestamp(at, UTC).strftime("%H:%M UTC")
        # Open access names everyone "anonymous": that would not say who it was.
        return Conflict(mine, None if by in (actor, "anonymous") else by, when)


RECENT_SAVES = RecentSaves()
