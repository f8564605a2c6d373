"""Field definitions of the wire messages: names, kinds and constraints, in one table.

Messages validate themselves with these definitions, the codecs map attributes to wire
names with them, and ``schemas.jsonschema_gen`` turns them into JSON Schema, so the three
cannot drift apart.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from schemas._checks import (
    check_int,
    check_json_like,
    check_number,
    check_str,
    kind_name,
)
from schemas.errors import ContractError, ErrorCode
from schemas.tensors import DATATYPES, normalize_tensors

__all__ = [
    "CONTENT_TYPES",
    "JSON",
    "MSGPACK",
    "Field",
    "Kind",
    "Priority",
    "TensorKey",
    "tensor_json_schema",
]


class Priority(enum.StrEnum):
    """A request's priority lane (a closed set, highest first); a tenant may ask for a lane
    lower than its class, never a higher one."""

    REALTIME = "realtime"
    STANDARD = "standard"
    BULK = "bulk"


MSGPACK = "application/msgpack"
JSON = "application/json"
CONTENT_TYPES: tuple[str, ...] = (MSGPACK, JSON)

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TOPIC_RE = re.compile(r"[A-Za-z0-9._-]+")
TRACEPARENT_RE = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
JSON_STRING_KINDS = ("str", "base64")
"""``parameters.content_type`` of a JSON BYTES tensor: text (default) or base64 of binary."""
MSGPACK_STRING_KINDS = ("str", "bytes")
"""``parameters.content_type`` of a msgpack BYTES tensor: msgpack str or bin elements."""
MAX_TIMINGS = 64
MAX_TENSOR_NAME_CHARS = 256
MAX_TOPIC_CHARS = 249
TRACEPARENT_CHARS = 55
MAX_TIMING_NAME_CHARS = 64
INT63_MAX = 2**63 - 1

Validator = Callable[[Any], Any]
"""Checks one attribute value; returns it (normalised where needed) or raises ContractError."""


class TensorKey(enum.StrEnum):
    """Keys of one tensor entry on the wire (``inputs``/``tensors``/``outputs`` items)."""

    NAME = "name"
    DATATYPE = "datatype"
    SHAPE = "shape"
    DATA = "data"
    """JSON: the elements (flat row-major or nested); msgpack: the elements of BYTES tensors."""
    PARAMETERS = "parameters"
    """``{"content_type": "str" | "bytes" | "base64"}`` for BYTES tensors (V2 style)."""
    OFFSET = "offset"
    """msgpack only: byte offset of a numeric tensor in the data section."""
    NBYTES = "nbytes"
    """Byte length of a numeric tensor (data section or claim check)."""
    REF = "ref"
    """Redis key of a claim-checked tensor."""


class Kind(enum.Enum):
    """What a field holds; decides its check and its JSON Schema."""

    ID = "id"
    NAME = "name"
    TEXT = "text"
    TOPIC = "topic"
    TRACEPARENT = "traceparent"
    COUNT = "count"
    """int >= 0 (attempts, timestamps in ms)."""
    VERSION = "version"
    """int >= 1 (model versions)."""
    CONTENT_TYPE = "content_type"
    ENUM = "enum"
    PARAMS = "params"
    TIMINGS = "timings"
    TENSORS = "tensors"


@dataclass(frozen=True, slots=True)
class Field:
    """One message field: attribute name, wire name and constraints."""

    attr: str
    kind: Kind
    wire: str = ""
    """Name on the wire (JSON and msgpack); defaults to ``attr``."""
    required: bool = False
    """Must be present on the wire (optional fields fall back to the dataclass default)."""
    nullable: bool = False
    max_len: int = 128
    enum: type[enum.StrEnum] | None = None
    choices: tuple[str, ...] = ()
    check: Validator = dataclass_field(init=False, repr=False, compare=False)
    """Validate a Python attribute value; returns it, normalised where needed.

    Compiled once per field: valid values take a fast path (exact types, ASCII strings),
    anything else goes through the full check, which raises the detailed ``ContractError``.
    """

    def __post_init__(self) -> None:
        check = _COMPILERS[self.kind](self)
        object.__setattr__(self, "check", _nullable(check) if self.nullable else check)

    @property
    def name(self) -> str:
        return self.wire or self.attr

    def from_wire(self, raw: Any) -> Any:
        """Convert a decoded wire value (a plain str for enums) to the attribute value."""
        if self.enum is None or raw is None:
            return raw
        if not isinstance(raw, str):
            raise ContractError.at(
                ErrorCode.WRONG_TYPE, self.name, f"expected a string, got {kind_name(raw)}"
            )
        if raw not in self.choices:
            raise ContractError.at(
                ErrorCode.INVALID_VALUE,
                self.name,
                f"{raw!r} not one of {[str(c) for c in self.choices]}",
            )
        return self.enum(raw)

    def json_schema(self) -> dict[str, Any]:
        schema = _SCHEMAS[self.kind](self)
        return {"anyOf": [schema, {"type": "null"}]} if self.nullable else schema


def _nullable(check: Validator) -> Validator:
    def check_nullable(value: Any) -> Any:
        return None if value is None else check(value)

    return check_nullable


SEEN_NAMES_LIMIT = 1024
"""Most remembered names per field (see ``_remember``)."""


def _remember(seen: set[str], value: str) -> None:
    """Note a low-cardinality string (tenant, pipeline, timing key) that passed its check.

    A repeated value then skips its regex. Bounded: once full the set stops learning, so
    odd input can only cost speed, never memory.
    """
    if len(seen) < SEEN_NAMES_LIMIT:
        seen.add(value)


def _string(
    field: Field,
    pattern: re.Pattern[str] | None,
    *,
    min_len: int = 1,
    max_len: int | None = None,
    remember: bool = False,
) -> Validator:
    path, top = field.name, field.max_len if max_len is None else max_len
    fullmatch = pattern.fullmatch if pattern is not None else None
    seen: set[str] = set()

    def check_string(value: Any) -> Any:
        if type(value) is str:
            if value in seen:
                return value
            if (
                min_len <= len(value) <= top
                and value.isascii()  # ASCII is valid UTF-8: no encode attempt needed
                and (fullmatch is None or fullmatch(value) is not None)
            ):
                if remember:
                    _remember(seen, value)
                return value
        return check_str(value, path, max_len=top, min_len=min_len, pattern=pattern)

    return check_string


def _integer(field: Field, minimum: int) -> Validator:
    path = field.name

    def check_integer(value: Any) -> Any:
        if type(value) is int and minimum <= value <= INT63_MAX:
            return value
        return check_int(value, path, minimum=minimum)

    return check_integer


def _timings(field: Field) -> Validator:
    fullmatch = NAME_RE.fullmatch
    full_check = functools.partial(_check_timings, field)
    seen: set[str] = set()

    def check_timings(value: Any) -> Any:
        if type(value) is not dict or len(value) > MAX_TIMINGS:
            return full_check(value)
        for key, number in value.items():
            if type(number) is not float or not math.isfinite(number):
                return full_check(value)  # ints to convert to float, or an error to report
            if type(key) is not str:
                return full_check(value)
            if key in seen:
                continue
            if not (
                1 <= len(key) <= MAX_TIMING_NAME_CHARS
                and key.isascii()
                and fullmatch(key) is not None
            ):
                return full_check(value)
            _remember(seen, key)
        return dict(value)  # a copy, as the full check makes

    return check_timings


def _params(field: Field) -> Validator:
    full_check = functools.partial(_check_params, field)

    def check_params(value: Any) -> Any:
        if type(value) is dict and not value:
            return value
        return full_check(value)

    return check_params


def _content_type(field: Field) -> Validator:
    full_check = functools.partial(_check_content_type, field)

    def check_content_type(value: Any) -> Any:
        if type(value) is str and value in CONTENT_TYPES:
            return value
        return full_check(value)

    return check_content_type


def _check_content_type(field: Field, value: Any) -> Any:
    check_str(value, field.name, max_len=64)
    if value not in CONTENT_TYPES:
        raise ContractError.at(
            ErrorCode.UNSUPPORTED_CONTENT_TYPE,
            field.name,
            f"{value!r} not one of {list(CONTENT_TYPES)}",
        )
    return value


def _check_enum(field: Field, value: Any) -> Any:
    if field.enum is not None and type(value) is str and value in field.choices:
        return field.enum(value)  # a plain string of the set (a caller's "bulk")
    if field.enum is None or not isinstance(value, field.enum) or value not in field.choices:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE,
            field.name,
            f"{value!r} not one of {[str(c) for c in field.choices]}",
        )
    return value


def _check_params(field: Field, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field.name, f"expected an object, got {kind_name(value)}"
        )
    check_json_like(value, field.name)
    return value


def _check_timings(field: Field, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field.name, f"expected an object, got {kind_name(value)}"
        )
    if len(value) > MAX_TIMINGS:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, field.name, f"{len(value)} entries > {MAX_TIMINGS}"
        )
    out: dict[str, float] = {}
    for key, number in value.items():
        path = f"{field.name}.{key}"
        check_str(key, path, max_len=MAX_TIMING_NAME_CHARS, pattern=NAME_RE)
        out[key] = check_number(number, path)
    return out


def _check_tensors(field: Field, value: Any) -> Any:
    return normalize_tensors(value, field.name)


_COMPILERS: dict[Kind, Callable[[Field], Validator]] = {
    Kind.ID: lambda f: _string(f, ID_RE),
    Kind.NAME: lambda f: _string(f, NAME_RE, remember=True),
    Kind.TEXT: lambda f: _string(f, None),
    Kind.TOPIC: lambda f: _string(f, TOPIC_RE, max_len=MAX_TOPIC_CHARS),
    Kind.TRACEPARENT: lambda f: _string(
        f, TRACEPARENT_RE, min_len=TRACEPARENT_CHARS, max_len=TRACEPARENT_CHARS
    ),
    Kind.COUNT: lambda f: _integer(f, 0),
    Kind.VERSION: lambda f: _integer(f, 1),
    Kind.CONTENT_TYPE: _content_type,
    Kind.ENUM: lambda f: functools.partial(_check_enum, f),
    Kind.PARAMS: _params,
    Kind.TIMINGS: _timings,
    Kind.TENSORS: lambda f: functools.partial(_check_tensors, f),
}


def _pattern(regex: re.Pattern[str]) -> str:
    return f"^(?:{regex.pattern})$"


def _string_schema(field: Field, regex: re.Pattern[str] | None, min_len: int = 1) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": min_len, "maxLength": field.max_len}
    if regex is not None:
        schema["pattern"] = _pattern(regex)
    return schema


def _tensor_ref() -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": "#/$defs/tensor"}}


_SCHEMAS: dict[Kind, Any] = {
    Kind.ID: lambda f: _string_schema(f, ID_RE),
    Kind.NAME: lambda f: _string_schema(f, NAME_RE),
    Kind.TEXT: lambda f: _string_schema(f, None),
    Kind.TOPIC: lambda f: {
        "type": "string",
        "maxLength": MAX_TOPIC_CHARS,
        "pattern": _pattern(TOPIC_RE),
    },
    Kind.TRACEPARENT: lambda f: {"type": "string", "pattern": _pattern(TRACEPARENT_RE)},
    Kind.COUNT: lambda f: {"type": "integer", "minimum": 0, "maximum": INT63_MAX},
    Kind.VERSION: lambda f: {"type": "integer", "minimum": 1, "maximum": INT63_MAX},
    Kind.CONTENT_TYPE: lambda f: {"enum": list(CONTENT_TYPES)},
    Kind.ENUM: lambda f: {"enum": list(f.choices)},
    Kind.PARAMS: lambda f: {"type": "object"},
    Kind.TIMINGS: lambda f: {
        "type": "object",
        "maxProperties": MAX_TIMINGS,
        "propertyNames": {"maxLength": MAX_TIMING_NAME_CHARS, "pattern": _pattern(NAME_RE)},
        "additionalProperties": {"type": "number"},
    },
    Kind.TENSORS: lambda f: _tensor_ref(),
}


def tensor_json_schema() -> dict[str, Any]:
    """JSON Schema of one JSON tensor entry (V2 shape, plus claim-check references)."""
    data_item: dict[str, Any] = {
        "anyOf": [
            {"type": ["number", "boolean", "string"]},
            {"type": "array", "items": {"$ref": "#/$defs/data_item"}},
        ]
    }
    tensor: dict[str, Any] = {
        "type": "object",
        "required": [TensorKey.NAME, TensorKey.DATATYPE, TensorKey.SHAPE],
        "properties": {
            TensorKey.NAME: {"type": "string", "minLength": 1, "maxLength": MAX_TENSOR_NAME_CHARS},
            TensorKey.DATATYPE: {"enum": list(DATATYPES)},
            TensorKey.SHAPE: {"type": "array", "items": {"type": "integer", "minimum": 0}},
            TensorKey.DATA: {"type": "array", "items": {"$ref": "#/$defs/data_item"}},
            TensorKey.PARAMETERS: {
                "type": "object",
                "properties": {"content_type": {"enum": list(JSON_STRING_KINDS)}},
            },
            TensorKey.REF: {"type": "string", "minLength": 1},
            TensorKey.NBYTES: {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
        "oneOf": [
            {"required": [TensorKey.DATA]},
            {"required": [TensorKey.REF, TensorKey.NBYTES]},
        ],
    }
    return {"tensor": tensor, "data_item": data_item}
