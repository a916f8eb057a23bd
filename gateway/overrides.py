"""Lot overrides: what an operator may send, and the UpdateLotRequest it becomes.

The upstream keeps an operator's corrections in `overridenData[0]` beside the untouched
`initialData`. A save is read-merge-write: start from the lot's current override, overlay
the fields given (`null` removes one), and PUT the whole lot back. Validation here is
strict on purpose (ABConnect's models would coerce "yes" to true and "3" to 3); the write
itself is built with ABConnect's models so LotDataDto goes out PascalCase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ABConnect.api.models.catalog import LotCatalogDto, LotDataDto, UpdateLotRequest

from gateway.errors import BadRequest, PayloadTooLarge, Unprocessable, UpstreamFailed

MAX_TEXT = 4000
MAX_BODY_BYTES = 64 * 1024

# camelCase name (as the upstream reads it) -> (kind, must be >= 0)
FIELDS: dict[str, tuple[str, bool]] = {
    "qty": ("int", True),
    "l": ("number", True),
    "w": ("number", True),
    "h": ("number", True),
    "wgt": ("number", True),
    "value": ("number", True),
    "cpack": ("text", False),
    "description": ("text", False),
    "notes": ("text", False),
    "itemID": ("int", False),
    "forceCrate": ("bool", False),
    "notedConditions": ("text", False),
    "doNotTip": ("bool", False),
    "commodityId": ("int", False),
}
# ABConnect's snake_case names are accepted too.
ALIASES = {"item_id": "itemID", "force_crate": "forceCrate",
           "noted_conditions": "notedConditions", "do_not_tip": "doNotTip",
           "commodity_id": "commodityId"}
# camelCase -> LotDataDto attribute name, to build the model.
_ATTR = {"itemID": "item_id", "forceCrate": "force_crate",
         "notedConditions": "noted_conditions", "doNotTip": "do_not_tip",
         "commodityId": "commodity_id"}


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any


def parse_changes(body: bytes) -> dict[str, Any]:
    """The operator's JSON body -> {camelCase field: value or None}. 400 / 413 / 422."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"an override body is at most {MAX_BODY_BYTES} bytes")
    return validate_changes(json_object(body, "a JSON object of LotDataDto fields"))


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A request body that must be a JSON object, else 400 saying it must be `what`."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise BadRequest(f"the body must be {what}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the body must be {what}")
    return value


def validate_changes(raw: dict[str, Any]) -> dict[str, Any]:
    """{field (camelCase or snake_case): JSON value} -> {camelCase field: value or None}.

    422 naming the field for an unknown field, a wrong type, a negative measure or a text
    over MAX_TEXT characters.
    """
    if not raw:
        raise Unprocessable("no fields given; send at least one LotDataDto field")
    changes: dict[str, Any] = {}
    for given, value in raw.items():
        name = ALIASES.get(given, given)
        if name not in FIELDS:
            raise Unprocessable(f"unknown field {given!r}; allowed: {', '.join(FIELDS)}")
        if name in changes:
            raise Unprocessable(f"field {name!r} given twice (as {given!r} too)")
        changes[name] = None if value is None else _check(given, value, *FIELDS[name])
    return changes


def _check(name: str, value: Any, kind: str, non_negative: bool) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise Unprocessable(f"{name} must be true, false or null, got {value!r}")
        return value
    if kind == "text":
        if not isinstance(value, str):
            raise Unprocessable(f"{name} must be a string or null")
        if len(value) > MAX_TEXT:
            raise Unprocessable(f"{name} is longer than {MAX_TEXT} characters")
        if not value.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise Unprocessable(f"{name} contains an unpaired UTF-16 surrogate")
        return value
    # Numbers: JSON numbers only; bool is an int in Python but not a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unprocessable(f"{name} must be a number or null, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise Unprocessable(f"{name} must be a finite number")
    if kind == "int":
        if value != int(value):
            raise Unprocessable(f"{name} must be a whole number, got {value!r}")
        value = int(value)
        if abs(value) > 2**31 - 1:
            raise Unprocessable(f"{name} is out of range")
    if non_negative and value < 0:
        raise Unprocessable(f"{name} must not be negative, got {value!r}")
    return value


def current_override(lot: dict[str, Any]) -> dict[str, Any]:
    """The lot's override as camelCase fields (empty when it has none)."""
    entries = lot.get("overridenData") or []
    first = entries[0] if entries and isinstance(entries[0], dict) else {}
    model = LotDataDto.model_validate(first)  # tolerant: reads camel or Pascal names
    return {
        name: getattr(model, _ATTR.get(name, name))
        for name in FIELDS
        if getattr(model, _ATTR.get(name, name)) is not None
    }


def merge(old: dict[str, Any], changes: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
    """The new override and the list of fields that really changed."""
    new = dict(old)
    for name, value in changes.items():
        if value is None:
            new.pop(name, None)
        else:
            new[name] = value
    changed = [Change(n, old.get(n), new.get(n)) for n in FIELDS
               if old.get(n) != new.get(n)]
    return new, changed


def update_request(lot: dict[str, Any], override: dict[str, Any]) -> bytes:
    """The PUT body: the lot as it is, with this override; built with ABConnect's models."""
    try:
        request = UpdateLotRequest(
            customer_item_id=lot.get("customerItemId"),
            image_links=[link["link"] for link in lot.get("imageLinks") or []],
            overriden_data=[LotDataDto(**{_ATTR.get(k, k): v for k, v in override.items()})]
            if override else [],
            catalogs=[LotCatalogDto(catalog_id=c["catalogId"], lot_number=c["lotNumber"])
                      for c in lot.get("catalogs") or []],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamFailed(f"the upstream lot cannot be written back: {exc}") from None
    return json.dumps(
        request.model_dump(by_alias=True, exclude_none=True, mode="json")
    ).encode()
