"""The upstream's contract: the Catalog API's own OpenAPI document, as ABConnect ships it.

ABConnect 0.2.1 carries the document the Catalog API publishes
(`ABConnect/base/Catalog_709_swagger.json`, 17 operations). It is read once, here, and
every view of the upstream the gateway needs is derived from it: the mirror's routes
(`OPERATIONS`), the query parameters of each as `gateway.params` declarations (which parse
and document themselves), and the schemas the gateway's own OpenAPI document reuses
(`components()`). Nothing here restates the document; pure data, no HTTP.

How a parameter's schema becomes a declaration:
- `integer` / `int32`: `params.Int` over the whole int32 range (the range the upstream's
  model binding accepts), except `PageNumber`: 1 to `params.MAX_PAGE`, and `PageSize`: 1 to
  `limits.max_page_size` (documented with its default; the edge checks the configured one);
- `boolean`: `params.Bool`; `string`: `params.Text` of at most 200 characters;
  `date-time` strings: `params.DateTime` (ISO 8601);
- `array` of `int32`: `IntList` below, the parameter repeated and/or comma-separated;
- a path `{id}`: `params.PathId` (1 to 2**31 - 1: no upstream record has another id).

An operation's query parameters are exactly the document's plus the few ABConnect 0.2.1
itself sends without the document naming them (`SDK_QUERY`); the mirror refuses any other.
Names are matched in any case, as the upstream's ASP.NET model binding matches them
(`Operation.query_parameter`), and always sent on in the document's spelling.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from gateway import params
from gateway.config import LimitsConfig
from gateway.params import Param

SOURCE = "ABConnect/base/Catalog_709_swagger.json"
JSON = "application/json"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
PAGING = frozenset({"PageNumber", "PageSize"})
PAGE_SIZE = "PageSize"
# The largest PageSize the published document states: `limits.max_page_size` as shipped.
# A deployment may configure another; the edge checks against the configured value.
DOCUMENTED_MAX_PAGE_SIZE = LimitsConfig().max_page_size
MAX_TEXT_PARAM = 200  # characters of a string query parameter

# Query parameters ABConnect 0.2.1 sends that the document does not declare, by operation,
# as parameter objects in the document's own form. Read from the SDK's list calls
# (ABConnect/api/catalog/endpoints/): `LotEndpoint.list(customer_catalog_id=...)` adds
# `CustomerCatalogId` to GET /api/Lot. `SellerEndpoint.list`, `CatalogEndpoint.list` and
# `LotEndpoint.list` otherwise send only `PageNumber` and `PageSize`, which the document
# declares (their `**kwargs` pass on whatever the caller names, so those must be the
# document's own names too).
SDK_QUERY: dict[tuple[str, str], tuple[dict[str, Any], ...]] = {
    ("GET", "/api/Lot"): (
        {"name": "CustomerCatalogId", "in": "query", "schema": {"type": "string"},
         "description": "Filter; the customer's id of a catalog the lots belong to (sent by "
                        "ABConnect's `lots.list(customer_catalog_id=...)`)."},
    ),
}

# Read once: 70 KB of JSON that never changes while the process runs.
_DOCUMENT: dict[str, Any] = json.loads(
    (files("ABConnect") / "base" / "Catalog_709_swagger.json").read_text(encoding="utf-8"))
_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class IntList(Param[list[int]]):
    """int32s, as ASP.NET binds an array from a query: the parameter repeated
    (`SellerIds=1&SellerIds=2`) and/or comma-separated (`SellerIds=1,2`), in the order given.

    Absent or empty means no filter (None).
    """

    def parse(self, text: str) -> list[int]:
        return [params.parse_int(self.name, part.strip(), INT32_MIN, INT32_MAX)
                for part in text.split(",") if part.strip()]

    def read(self, values: Mapping[str, str]) -> list[int]:
        """Every value given under this name (a MultiDict's `getall`), commas split."""
        getall = getattr(values, "getall", None)
        texts = getall(self.name, []) if getall is not None else [values.get(self.name, "")]
        ids = [i for text in texts for i in self.parse(text)]
        if not ids and self.required:
            raise params.BadRequest(f"{self.name} is required")
        return ids or self.default  # type: ignore[return-value]

    def schema(self) -> dict[str, Any]:
        return {"type": "array",
                "items": {"type": "integer", "format": "int32",
                          "minimum": INT32_MIN, "maximum": INT32_MAX}}


@dataclass(frozen=True)
class Operation:
    """One operation of the upstream's document."""

    method: str  # upper case: "GET"
    path: str  # the document's template: "/api/Lot/{id}"
    resource: str  # the path's first segment after /api: "Lot", "Bulk"
    summary: str
    operation_id: str | None  # the document's operationId (it gives none today)
    query: tuple[Param[Any], ...]  # its query parameters, in the document's order, then
    # those of SDK_QUERY (which `parameter()` does not know: they are not the document's)
    path_params: tuple[Param[Any], ...]  # `{id}`, when the path has it
    has_body: bool
    request_ref: str | None  # component schema of the JSON request body
    response_ref: str | None  # component schema of the success answer (or of its items)
    response_is_array: bool  # the answer is a JSON array of `response_ref`
    status: int  # the success status: 200, or 204 for a delete
    # `query` by lower-cased name, built once (see `query_parameter`).
    _query_by_name: Mapping[str, Param[Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_query_by_name", {p.name.lower(): p for p in self.query})

    @property
    def params(self) -> tuple[Param[Any], ...]:
        return (*self.path_params, *self.query)

    def query_parameter(self, name: str) -> Param[Any] | None:
        """The query parameter called `name` in any case (`pagesize` is `PageSize`, as
        the upstream's model binding reads it); None when the operation has none."""
        return self._query_by_name.get(name.lower())

    def response_schema(self) -> dict[str, Any] | None:
        """The success answer's JSON Schema as the document gives it; None: no body."""
        if self.response_ref is None:
            return None
        ref = {"$ref": f"#/components/schemas/{self.response_ref}"}
        return {"type": "array", "items": ref} if self.response_is_array else ref

    def upstream(self) -> dict[str, Any]:
        """This operation's object in the upstream's document (a deep copy)."""
        return copy.deepcopy(_DOCUMENT["paths"][self.path][self.method.lower()])

    def parameter(self, name: str) -> dict[str, Any]:
        """The document's parameter object named `name` (a deep copy); KeyError if none."""
        for param in self.upstream().get("parameters", []):
            if param["name"] == name:
                return param
        raise KeyError(f"{self.method} {self.path} has no parameter {name!r}")


def _ref_name(schema: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """(component name, is an array of it) of a `$ref` schema or an array of one."""
    if not schema:
        return None, False
    if schema.get("type") == "array":
        return _ref_name(schema.get("items"))[0], True
    ref = schema.get("$ref")
    return (ref.rsplit("/", 1)[1], False) if isinstance(ref, str) else (None, False)


def _json_schema(content: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return (content or {}).get(JSON, {}).get("schema")


def _declaration(spec: Mapping[str, Any]) -> Param[Any]:
    """The `gateway.params` declaration of one of the document's parameters."""
    name, schema = spec["name"], spec.get("schema", {})
    description = spec.get("description", "")
    kind = schema.get("type")
    if spec["in"] == "path":
        return params.PathId(name, description=description)
    if name in PAGING:
        return params.Int(name, description=description or _PAGING_TEXT[name], lo=1,
                          hi=DOCUMENTED_MAX_PAGE_SIZE if name == PAGE_SIZE else params.MAX_PAGE)
    if kind == "integer":
        return params.Int(name, description=description or "Filter; a whole number.",
                          lo=INT32_MIN, hi=INT32_MAX)
    if kind == "boolean":
        return params.Bool(name, description=description or "Filter; true or false.")
    if kind == "array" and schema.get("items", {}).get("type") == "integer":
        return IntList(name, description=description or (
            "Filter; ids, the parameter repeated or the ids comma-separated."))
    if kind == "string" and schema.get("format") == "date-time":
        return params.DateTime(name, description=description or "Filter; an ISO 8601 time.")
    if kind == "string":
        return params.Text(name, max_length=MAX_TEXT_PARAM,
                           description=description or "Filter; text.")
    raise ValueError(f"{SOURCE}: no declaration for parameter {name!r} of schema {schema}")


_PAGING_TEXT = {"PageNumber": "Page number, from 1.",
                "PageSize": "Items per page, at most `limits.max_page_size` (500 unless "
                            "configured otherwise)."}


def _operation(method: str, path: str, spec: Mapping[str, Any]) -> Operation:
    documented = spec.get("parameters", [])
    names = {p["name"].lower() for p in documented}
    extra = [p for p in SDK_QUERY.get((method.upper(), path), ())
             if p["name"].lower() not in names]  # once the document declares one, its own
    declared = [_declaration(p) for p in (*documented, *extra)]
    body = spec.get("requestBody")
    request_ref, _ = _ref_name(_json_schema(body.get("content") if body else None))
    status = min(int(code) for code in spec["responses"] if code.startswith("2"))
    response_ref, is_array = _ref_name(_json_schema(spec["responses"][str(status)].get("content")))
    return Operation(
        method=method.upper(),
        path=path,
        resource=path.split("/")[2],
        summary=" ".join(spec.get("summary", "").split()),
        operation_id=spec.get("operationId"),
        query=tuple(p for p in declared if p.location == "query"),
        path_params=tuple(p for p in declared if p.location == "path"),
        has_body=body is not None,
        request_ref=request_ref,
        response_ref=response_ref,
        response_is_array=is_array,
        status=status,
    )


OPERATIONS: tuple[Operation, ...] = tuple(
    _operation(method, path, item[method])
    for path, item in _DOCUMENT["paths"].items()
    for method in _METHODS if method in item
)
_BY_ROUTE = {(op.method, op.path): op for op in OPERATIONS}

# The document's tags (Seller, Catalog, Lot, Bulk) and what it says of each.
TAGS: dict[str, str] = {tag["name"]: tag.get("description", "")
                        for tag in _DOCUMENT.get("tags", [])}


def operation(method: str, path: str) -> Operation:
    """The upstream's operation for `method` and path template; KeyError if it has none."""
    try:
        return _BY_ROUTE[(method.upper(), path)]
    except KeyError:
        raise KeyError(f"{SOURCE} has no operation {method.upper()} {path}") from None


def components() -> dict[str, Any]:
    """The document's `components.schemas`, deep-copied (the caller may change them)."""
    return copy.deepcopy(_DOCUMENT["components"]["schemas"])


def operation_id(method: str, path: str) -> str:
    """A stable operationId from method and path: GET /api/Lot/{id} -> getLotById."""
    words = [w for w in re.split(r"[/\-_.]", path) if w and w != "api"]
    return method.lower() + "".join(
        "By" + w[1:-1].capitalize() if w.startswith("{") else w[:1].upper() + w[1:]
        for w in words)
