"""Field definitions of the wire messages: names, kinds and constraints, in one table.

Messages validate themselves with these definitions, the codecs map attributes to wire
names with them, and ``schemas.jsonschema_gen`` turns them into JSON Schema, so the three
cannot drift apart.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
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
    "TensorKey",
    "tensor_json_schema",
]

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

    @property
    def name(self) -> str:
        return self.wire or self.attr

    def check(self, value: Any) -> Any:
        """Validate a Python attribute value; returns it, normalised where needed."""
        if value is None and self.nullable:
            return None
        checker = _CHECKS[self.kind]
        return checker(self, value)

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
                ErrorCode.INVALID_VALUE, self.name, f"{raw!r} not one of {list(self.choices)}"
            )
        return self.enum(raw)

    def json_schema(self) -> dict[str, Any]:
        schema = _SCHEMAS[self.kind](self)
        return {"anyOf": [schema, {"type": "null"}]} if self.nullable else schema


def _check_id(field: Field, value: Any) -> Any:
    return check_str(value, field.name, max_len=field.max_len, pattern=ID_RE)


def _check_name(field: Field, value: Any) -> Any:
    return check_str(value, field.name, max_len=field.max_len, pattern=NAME_RE)


def _check_text(field: Field, value: Any) -> Any:
    return check_str(value, field.name, max_len=field.max_len)


def _check_topic(field: Field, value: Any) -> Any:
    return check_str(value, field.name, max_len=249, pattern=TOPIC_RE)


def _check_traceparent(field: Field, value: Any) -> Any:
    return check_str(value, field.name, min_len=55, max_len=55, pattern=TRACEPARENT_RE)


def _check_count(field: Field, value: Any) -> Any:
    return check_int(value, field.name, minimum=0)


def _check_version(field: Field, value: Any) -> Any:
    return check_int(value, field.name, minimum=1)


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
    if field.enum is None or not isinstance(value, field.enum) or value not in field.choices:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, field.name, f"{value!r} not one of {list(field.choices)}"
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
        check_str(key, path, max_len=64, pattern=NAME_RE)
        out[key] = check_number(number, path)
    return out


def _check_tensors(field: Field, value: Any) -> Any:
    return normalize_tensors(value, field.name)


_CHECKS = {
    Kind.ID: _check_id,
    Kind.NAME: _check_name,
    Kind.TEXT: _check_text,
    Kind.TOPIC: _check_topic,
    Kind.TRACEPARENT: _check_traceparent,
    Kind.COUNT: _check_count,
    Kind.VERSION: _check_version,
    Kind.CONTENT_TYPE: _check_content_type,
    Kind.ENUM: _check_enum,
    Kind.PARAMS: _check_params,
    Kind.TIMINGS: _check_timings,
    Kind.TENSORS: _check_tensors,
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
    Kind.TOPIC: lambda f: {"type": "string", "maxLength": 249, "pattern": _pattern(TOPIC_RE)},
    Kind.TRACEPARENT: lambda f: {"type": "string", "pattern": _pattern(TRACEPARENT_RE)},
    Kind.COUNT: lambda f: {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    Kind.VERSION: lambda f: {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    Kind.CONTENT_TYPE: lambda f: {"enum": list(CONTENT_TYPES)},
    Kind.ENUM: lambda f: {"enum": list(f.choices)},
    Kind.PARAMS: lambda f: {"type": "object"},
    Kind.TIMINGS: lambda f: {
        "type": "object",
        "maxProperties": MAX_TIMINGS,
        "propertyNames": {"maxLength": 64, "pattern": _pattern(NAME_RE)},
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
