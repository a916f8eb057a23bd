"""Lots as the operator sees them: effective values, what is overridden, and form input.

The upstream keeps what the seller sent in `initialData` and the operators' corrections in
`overridenData[0]`; a field's effective value is the override when there is one. Bodies are
read tolerantly (camelCase or PascalCase names, missing fields) because they are the
upstream's, not ours.

A form posts strings; `form_changes` turns them into the JSON values
`gateway.overrides.validate_changes` expects, leaving anything unparseable as the string
typed so the validation message names the field and shows the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import params
from gateway.errors import GatewayError, Unprocessable, UpstreamFailed
from gateway.overrides import FIELDS, validate_changes
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


@dataclass(frozen=True)
class LotView:
    id: int
    customer_item_id: str
    fields: dict[str, FieldView]
    images: list[str]
    lot_numbers: dict[int, str]  # catalog id -> lot number

    @classmethod
    def from_body(cls, body: bytes) -> LotView:
        """502 (UpstreamFailed) when the body is not a readable LotDto."""
        try:
            lot = json.loads(body)
            return cls._from_json(lot)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamFailed("the upstream lot is not readable") from None

    @classmethod
    def _from_json(cls, lot: dict[str, Any]) -> LotView:
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
        return cls(lot_id, str(lot.get("customerItemId") or ""), fields, images, numbers)

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
    elapsed_ms: float
    from_cache: int
    catalog_cached: bool

    @classmethod
    def from_page(cls, page: EventPage) -> LotsView:
        catalog = json.loads(page.catalog.entry.body)
        numbers = {int(e["id"]): str(e.get("lotNumber", "")) for e in catalog.get("lots") or []}
        rows = [_row(numbers.get(o.lot_id, ""), o) for o in page.lots]
        return cls(
            event={k: v for k, v in catalog.items() if k not in ("lots", "sellers")},
            rows=rows, paging=page.paging.envelope(), elapsed_ms=page.elapsed_s * 1000,
            from_cache=page.from_cache, catalog_cached=page.catalog.result.header != "MISS",
        )

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


def form_changes(form: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """One posted field -> (its name, validated changes). 422 naming the field otherwise.

    An empty value removes the override (back to the value as received). Numbers are
    parsed from the text typed; booleans come as "true"/"false" (or a checkbox's "on").
    """
    posted = {k: v for k, v in form.items() if k != "csrf_token"}
    if len(posted) != 1:
        raise Unprocessable("send exactly one field per save")
    [(name, text)] = posted.items()
    if not isinstance(text, str):
        raise Unprocessable(f"{name} must be text")
    kind = FIELDS[name][0] if name in FIELDS else "text"
    return name, validate_changes({name: _parse(text, kind)})


def _parse(text: str, kind: str) -> Any:
    if kind == "text":
        return text if text.strip() else None
    text = text.strip()
    if not text:
        return None
    if not text.isascii():  # int() and float() would read "١٠" as 10
        return text
    if kind == "bool":
        try:
            return params.parse_bool(kind, text)
        except params.InvalidParam:
            return text
    if params.INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text
