"""Typed request parameters: one rule, one place, one message.

Every edge that reads a parameter from a path or a query string (the JSON API, the operator
UI, the sandbox) declares it here as a `Param` and calls `parse` / `read`. A declaration is
also its documentation: `schema()` gives the JSON Schema the OpenAPI document shows, so the
rule a client reads is the rule the code applies.

The rules:
- integers are ASCII digits (and a leading minus where the range allows it), at most 18 of
  them: `int()` alone would also take " 7", "1_0", "١٠" and "²";
- ids are integers from 1 to 2**31 - 1 (the upstream's int32);
- booleans are one of true/false, 1/0, yes/no, on/off, any case;
- text is bounded in characters; a date-time is ISO 8601.

A value that breaks its rule raises `InvalidParam` (a 400), whose message names the
parameter and shows at most 40 characters of what was sent, repr()'d so that no control
character reaches a log line or a page unescaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from gateway.errors import BadRequest

MAX_ID = 2**31 - 1
MAX_PAGE = 10**6
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
INTEGER = re.compile(r"-?[0-9]{1,18}")  # with text.isascii(): [0-9] alone is ASCII

T = TypeVar("T")


class InvalidParam(BadRequest):
    """A parameter value that breaks its declared rule."""

    def __init__(self, name: str, text: str, rule: str) -> None:
        super().__init__(f"{name} must be {rule}, got {shown(text)}")
        self.name = name
        self.text = text
        self.rule = rule


def shown(text: str) -> str:
    """At most 40 characters of untrusted text, repr()'d: safe in a log line or a page."""
    return repr(text[:40])


@dataclass(frozen=True)
class Param(Generic[T]):
    """One named parameter: how it is parsed and how it is documented.

    `default` is what a missing or empty value means; None (with `required`) makes it
    mandatory.
    """

    name: str
    description: str = ""
    required: bool = False
    location: ClassVar[str] = "query"

    def parse(self, text: str) -> T:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def default(self) -> T | None:
        return None

    def read(self, values: Mapping[str, str]) -> T:
        """The parsed value of this parameter in `values` (a query or a path match)."""
        text = values.get(self.name, "")
        if text == "":
            if self.required:
                raise BadRequest(f"{self.name} is required")
            return self.default  # type: ignore[return-value]
        return self.parse(text)


def parse_int(name: str, text: str, lo: int, hi: int) -> int:
    """`text` as an integer in [lo, hi], or InvalidParam naming `name`."""
    # Plain digits (an id, a page) are told without the expression: a warm hit reads one.
    if text.isascii() and ((len(text) <= 18 and text.isdigit()) or INTEGER.fullmatch(text)):
        value = int(text)
        if lo <= value <= hi:
            return value
    rule = ("a positive integer" if lo == 1 and hi == MAX_ID
            else f"a whole number from {lo} to {hi}")
    raise InvalidParam(name, text, rule)


def parse_bool(name: str, text: str) -> bool:
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InvalidParam(name, text, "true or false")


@dataclass(frozen=True)
class Id(Param[int]):
    """A resource id: 1 to 2**31 - 1."""

    def parse(self, text: str) -> int:
        return parse_int(self.name, text, 1, MAX_ID)

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_ID}


@dataclass(frozen=True)
class PathId(Id):
    required: bool = True
    location: ClassVar[str] = "path"


@dataclass(frozen=True)
class Int(Param[int]):
    lo: int = 1
    hi: int = MAX_PAGE
    fallback: int | None = None

    @property
    def default(self) -> int | None:
        return self.fallback

    def parse(self, text: str) -> int:
        return parse_int(self.name, text, self.lo, self.hi)

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.fallback is not None:
            schema["default"] = self.fallback
        return schema


@dataclass(frozen=True)
class Bool(Param[bool]):
    fallback: bool = False

    @property
    def default(self) -> bool:
        return self.fallback

    def parse(self, text: str) -> bool:
        return parse_bool(self.name, text)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean", "default": self.fallback}


@dataclass(frozen=True)
class Text(Param[str]):
    max_length: int = 200

    @property
    def default(self) -> str:
        return ""

    def parse(self, text: str) -> str:
        if len(text) > self.max_length:
            raise BadRequest(f"{self.name} must be at most {self.max_length} characters")
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_length}


@dataclass(frozen=True)
class DateTime(Param[str]):
    """An ISO 8601 date or time (`2026-12-03`, `2026-12-03T15:00:00Z`), passed on as given."""

    def parse(self, text: str) -> str:
        if not (len(text) <= 40 and _ISO_8601.fullmatch(text)):
            raise InvalidParam(self.name, text, "an ISO 8601 date-time")
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise InvalidParam(self.name, text, "an ISO 8601 date-time") from None
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time", "pattern": f"^{_ISO_8601.pattern}$"}


_ISO_8601 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


@dataclass(frozen=True)
class IdList(Param[list[int]]):
    """Comma-separated ids, at most `max_items`, in the order given."""

    max_items: int = 100
    required: bool = True

    def parse(self, text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise BadRequest(f"{self.name} is required: a comma-separated list of ids")
        if len(parts) > self.max_items:
            raise BadRequest(f"at most {self.max_items} {self.name} per request, got {len(parts)}")
        return [parse_int(self.name, p, 1, MAX_ID) for p in parts]

    def read(self, values: Mapping[str, str]) -> list[int]:
        if not values.get(self.name, "").strip(","):
            raise BadRequest(f"{self.name} is required: a comma-separated list of ids")
        return super().read(values)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^[0-9]+(,[0-9]+)*$",
                "description": f"comma-separated ids (1 to {MAX_ID}), at most {self.max_items}"}
