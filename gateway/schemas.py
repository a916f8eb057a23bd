"""The shapes the gateway adds to the upstream's: pydantic models, their JSON Schemas generated.

The /api/v1 envelopes, the error body and the override body are declared here once; the
OpenAPI document (gateway/openapi.py) shows their generated JSON Schemas and the tests
validate answers with them. The edges keep relaying the upstream's bytes: a member that is
an upstream shape (a lot, a catalog, a seller) is not re-modelled but points at the
upstream's own component schema (`#/components/schemas/LotDto`, ...), from
gateway/contract.py, and is validated here only as a JSON object.

Names in JSON are camelCase, exactly as the routes answer (`staleLotIds`, `pageNumber`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema

from gateway.overrides import ALIASES, FIELDS, MAX_BODY_BYTES, MAX_TEXT

INT32_MAX = 2**31 - 1  # integer fields: -INT32_MAX to INT32_MAX, as overrides.py checks


UPSTREAM = "x-upstream-schema"  # marks a member that is the upstream's component schema


def upstream(name: str) -> Any:
    """An upstream shape: validated as a JSON object; its JSON Schema is the upstream's
    component schema `name` (see `WithUpstreamRefs`)."""
    return Annotated[dict[str, Any], WithJsonSchema({"type": "object", UPSTREAM: name})]


class WithUpstreamRefs(GenerateJsonSchema):
    """JSON Schema generation in which each upstream member is a `$ref` to the upstream's
    component schema, `#/components/schemas/<name>` (pass `ref_template` to place the
    gateway's own models there too). Plain generation leaves such a member a JSON object
    with an annotation naming the component."""

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        return _upstream_refs(super().generate(schema, mode))


def _upstream_refs(node: Any) -> Any:
    if isinstance(node, list):
        return [_upstream_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    if UPSTREAM in node:
        ref = {"$ref": f"#/components/schemas/{node[UPSTREAM]}"}
        rest = {k: v for k, v in node.items() if k not in (UPSTREAM, "type")}
        return {"allOf": [ref], **rest} if rest else ref  # a $ref takes no siblings
    return {key: _upstream_refs(value) for key, value in node.items()}


def json_schema(model: type[BaseModel], ref_template: str = "#/components/schemas/{model}"
                ) -> dict[str, Any]:
    """`model`'s JSON Schema (draft 2020-12, as pydantic writes it), upstream members and
    nested models as `$ref`s built with `ref_template`; nested models under `$defs`."""
    return model.model_json_schema(ref_template=ref_template, schema_generator=WithUpstreamRefs)


LotDto = upstream("LotDto")
CatalogDto = upstream("CatalogDto")
CatalogExpandedDto = upstream("CatalogExpandedDto")
SellerDto = upstream("SellerDto")
SellerExpandedDto = upstream("SellerExpandedDto")


class Envelope(BaseModel):
    """camelCase in JSON, snake_case in Python; unknown members refused."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True,
                              validate_by_alias=True, extra="forbid")


# --- errors ----------------------------------------------------------------------------------


class Problem(BaseModel):
    """RFC 9457 problem details: every error the gateway answers has this shape, as
    `application/problem+json`. A client error is never a 500, and no upstream internals or
    exception text appear in `detail`."""

    type: str = Field(description="A URI naming the problem type; `about:blank` when the "
                                  "status says it all.", examples=["about:blank"])
    title: str = Field(description="The status's reason phrase.", examples=["Bad Request"])
    status: int = Field(ge=400, le=599, description="The HTTP status of the answer.")
    detail: str = Field(description="What was wrong with this request, for a person.")


class LotError(Envelope):
    """A lot that could not be read, reported beside the lots that could."""

    lot_id: int = Field(description="The lot's id.")
    status: int = Field(ge=400, le=599, description="What a read of the lot alone would have "
                                                    "answered (404, 502...).")
    detail: str = Field(description="Why, for a person.")


# --- the override body -----------------------------------------------------------------------


def _whole(value: Any) -> Any:
    """1.0 is taken as 1 for the integer fields (JSON does not tell them apart)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _no_lone_surrogate(value: str) -> str:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("contains an unpaired UTF-16 surrogate")
    return value


_PLAIN: dict[str, type] = {"int": int, "number": float, "text": str, "bool": bool}
_SNAKE = {camel: snake for snake, camel in ALIASES.items()}


def _checked(kind: str, non_negative: bool) -> Any:
    """A LotDataDto field's type as an override accepts it (gateway/overrides.py `_check`):
    strict JSON types (no "3" for 3, no true for 1), finite numbers, int32 integers."""
    if kind == "int":
        lo = 0 if non_negative else -INT32_MAX
        # "A number with no fraction" rather than "integer": to OpenAPI 3.0's JSON Schema
        # (draft 4) 1.0 is not an integer, yet the API takes it as 1.
        return Annotated[int, Field(strict=True, ge=lo, le=INT32_MAX), BeforeValidator(_whole),
                         WithJsonSchema({"type": "number", "multipleOf": 1, "minimum": lo,
                                         "maximum": INT32_MAX})]
    if kind == "number":
        return Annotated[float, Field(strict=True, allow_inf_nan=False,
                                      ge=0 if non_negative else None)]
    if kind == "text":
        return Annotated[str, AfterValidator(_no_lone_surrogate),
                         Field(strict=True, max_length=MAX_TEXT)]
    return Annotated[bool, Field(strict=True)]


def _no_defaults(schema: dict[str, Any]) -> None:
    """Leaving a field out is not the same as giving it `null`: show no default (nor the
    generated titles)."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
        prop.pop("title", None)


def _override_schema(schema: dict[str, Any]) -> None:
    _no_defaults(schema)
    schema["minProperties"] = 1


class _LotOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_override_schema)

    @model_validator(mode="before")
    @classmethod
    def _at_least_one(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data:
            raise ValueError("no fields given; send at least one LotDataDto field")
        return data


LotOverride: type[BaseModel] = create_model(
    "LotOverride",
    __base__=_LotOverride,
    __doc__=(
        "LotDataDto fields to lay over the lot's current override (`overridenData[0]`), "
        "camelCase as the upstream reads them. ABConnect's snake_case names are accepted "
        "too: " + ", ".join(f"`{snake}` for `{camel}`" for snake, camel in ALIASES.items())
        + "; a field given under both names is refused (422). A field given `null` is "
        "removed from the override; a field left out is kept. At least one field; texts at "
        f"most {MAX_TEXT} characters; "
        + ", ".join(f"`{n}`" for n, (_, non_negative) in FIELDS.items() if non_negative)
        + " not negative; whole numbers for the integer fields (`1.0` is taken as 1). The "
        f"body is at most {MAX_BODY_BYTES} bytes ({MAX_BODY_BYTES // 1024} KiB; more is a "
        "413)."
    ),
    __module__=__name__,
    **{name: (_checked(kind, non_negative) | None,
              Field(None, validation_alias=AliasChoices(name, _SNAKE[name])
                    if name in _SNAKE else None))
       for name, (kind, non_negative) in FIELDS.items()},
)


class _LotData(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_no_defaults)


LotData: type[BaseModel] = create_model(
    "LotData",
    __base__=_LotData,
    __doc__=(
        "LotDataDto as the upstream answers it on reads: camelCase, with integer `itemID` "
        "and `commodityId` (as ABConnect's own LotDataDto reads it). The upstream's document "
        "gives the PascalCase names and the types of its writes instead; the gateway relays "
        "what is read, so its document describes that. Other members may appear."
    ),
    __module__=__name__,
    **{name: (_PLAIN[kind] | None, None) for name, (kind, _) in FIELDS.items()},
)


# --- /api/v1 envelopes -----------------------------------------------------------------------

StaleLotIds = Annotated[list[int], Field(
    description="Ids of the lots in `items` served from an expired cache entry (the upstream "
                "failed, or one background call is refreshing them); X-Cache is then STALE.")]
Errors = Annotated[list[LotError], Field(description="The lots that could not be read.")]


class Paging(Envelope):
    """One page of a list the gateway pages itself."""

    page_number: int = Field(ge=1, description="This page, from 1.")
    page_size: int = Field(ge=1, description="Items per page, as asked.")
    total_pages: int = Field(ge=0, description="Pages in the whole list.")
    total_items: int = Field(ge=0, description="Items in the whole list.")
    has_previous_page: bool
    has_next_page: bool


class LotBatch(Envelope):
    """Lots in the order asked, each read at once; a lot that failed (unknown, upstream
    error) is listed in `errors` with the status a read of it alone would have had."""

    items: list[LotDto]
    errors: Errors
    stale_lot_ids: StaleLotIds


class EventPage(Paging):
    """One page of an event's lots, in the catalog's lot order: the catalog first (for its
    lot ids), then every lot of the page at once; two upstream round trips when cold, none
    when warm. A lot that failed is listed in `errors` while the others are returned. The
    ETag is derived from those of the catalog and of every lot on the page. A page past the
    end has no items."""

    catalog: CatalogExpandedDto = Field(description="The event, with its sellers and the ids "
                                                    "and numbers of all its lots.")
    items: list[LotDto]
    errors: Errors
    stale_lot_ids: StaleLotIds


class SellerPage(Paging):
    """Sellers whose name contains `q` (any case) or whose display id starts with it. The
    whole seller list is read (cached) and filtered by the gateway, since the upstream
    cannot search by name."""

    items: list[SellerExpandedDto]


class SellerEvents(Paging):
    """A seller and a page of its events: upcoming soonest first, then (with `include_past`)
    past ones, latest first. An event is past when `isCompleted` or its end date has
    passed."""

    seller: SellerDto = Field(description="The seller, without its catalogs.")
    items: list[CatalogDto]


class Lot(RootModel[LotDto]):
    """A lot as the upstream answers it (relayed as the upstream sent it)."""


# --- operations ------------------------------------------------------------------------------


class Health(BaseModel):
    """The process is alive."""

    status: Literal["ok"]


class Ready(BaseModel):
    """The gateway can serve: an upstream token can be had."""

    status: Literal["ready"]
