"""Message <-> wire dict mapping shared by both encodings: field names, versions, unknown fields."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas._checks import check_int, check_str, kind_name
from schemas.errors import ContractError, ErrorCode
from schemas.fields import Field, Kind, TensorKey, Validator
from schemas.limits import DecodeLimits
from schemas.messages import (
    SCHEMA_VERSION,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
    Status,
)
from schemas.tensors import TensorRef, TensorValue, element_count, wire_dtype

SCHEMA_KEY = "schema_version"
SCHEMA_HEADER = "conveyor-schema"
VERSION_TEXT = f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}"
_VERSION_RE = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")

Headers = Sequence[tuple[str, bytes]]
TensorEncoder = Callable[[Mapping[str, TensorValue], str], list[dict[str, Any]]]
TensorDecoder = Callable[[Any, str, bool], dict[str, TensorValue]]
"""(raw entries, field name, ignore unknown keys) -> tensors."""
Converter = Callable[[Any], Any]


def header(headers: Headers | None, name: str) -> bytes | None:
    """The last value of a header, or None."""
    found = None
    for key, value in headers or ():
        if key == name:
            found = value
    return found


def to_wire(message: Message, encode_tensors: TensorEncoder) -> dict[str, Any]:
    """The wire dict of a message: schema version first, then fields in definition order."""
    body: dict[str, Any] = {SCHEMA_KEY: VERSION_TEXT}
    get_values, layout = _WIRE_LAYOUT[type(message)]
    for (name, form), value in zip(layout, get_values(message), strict=True):
        if value is None:
            continue
        if form == _PLAIN:
            body[name] = value
        elif form == _TENSORS:
            body[name] = encode_tensors(value, name)
        elif form == _ENUM:
            body[name] = value.value
        elif value:  # _OPTIONAL_DICT
            body[name] = value
    return body


# How to_wire writes a field: as is, through the tensor encoder, an enum member's plain-str
# ``.value``, or a dict left out when empty.
_PLAIN, _TENSORS, _ENUM, _OPTIONAL_DICT = range(4)


def _form(cls: type[Message], spec: Field) -> int:
    if spec.attr == cls.TENSORS:
        return _TENSORS
    if spec.enum is not None:
        return _ENUM
    if not spec.required and spec.kind in (Kind.PARAMS, Kind.TIMINGS):
        return _OPTIONAL_DICT
    return _PLAIN


def parse_version(raw: Any, field: str) -> int:
    """Check a ``"major.minor"`` version; returns the minor."""
    if not isinstance(raw, str):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field, f"expected 'major.minor', got {kind_name(raw)}"
        )
    if raw == VERSION_TEXT:
        return SCHEMA_VERSION[1]
    match = _VERSION_RE.fullmatch(raw)
    if match is None:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, field, f"expected 'major.minor', got {raw!r}"
        )
    major, minor = int(match[1]), int(match[2])
    if major != SCHEMA_VERSION[0]:
        raise ContractError.at(
            ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
            field,
            f"major {major} unsupported, this side speaks {VERSION_TEXT}",
        )
    return minor


def message_minor(body: dict[str, Any], headers: Headers | None, version_required: bool) -> int:
    """The sender's minor version, from the body and/or the header (each checked for major)."""
    raw_header = header(headers, SCHEMA_HEADER)
    minor = SCHEMA_VERSION[1]
    if raw_header is not None:
        text = raw_header.decode("ascii", "replace")
        minor = parse_version(text, f"header {SCHEMA_HEADER}")
    if SCHEMA_KEY in body:
        minor = parse_version(body[SCHEMA_KEY], SCHEMA_KEY)
    elif version_required:
        raise ContractError.at(ErrorCode.MISSING_FIELD, SCHEMA_KEY, "missing")
    return minor


def check_known(keys: Any, known: frozenset[str], path: str) -> None:
    """Unknown-field policy: reject keys this minor lacks (callers skip it for newer minors)."""
    if known.issuperset(keys):
        return
    unknown = [key for key in keys if key not in known]
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ContractError.at(ErrorCode.UNKNOWN_FIELD, where, f"unknown field {unknown[0]!r}")


def from_wire(
    cls: type[Message],
    body: Any,
    headers: Headers | None,
    decode_tensors: TensorDecoder,
    version_required: bool,
) -> Message:
    """Build ``cls`` from a decoded wire dict, checking every field once.

    Same order as building the message with its constructor: every field is read (missing
    fields, tensors, enum names), then each is checked in ``FIELDS`` order. The tensor
    decoders return tensors in the form the message's own check produces (valid names,
    datatypes and ranks, object arrays of UTF-8 ``str`` or of ``bytes``), so tensors are not
    checked twice, and the message is built without running its constructor's checks.
    """
    if not isinstance(body, dict):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, "body", f"expected an object, got {kind_name(body)}"
        )
    newer = message_minor(body, headers, version_required) > SCHEMA_VERSION[1]
    if not newer:
        check_known(body, _known(cls), "")
    values: dict[str, Any] = {}
    for attr, name, required, is_tensors, convert in _READ_FIELDS[cls]:
        raw = body.get(name)
        if raw is None:
            if required:
                raise ContractError.at(ErrorCode.MISSING_FIELD, name, "missing")
            continue
        if is_tensors:
            values[attr] = decode_tensors(raw, name, newer)
        else:
            values[attr] = raw if convert is None else convert(raw)
    for attr, check in _VALUE_CHECKS[cls]:
        if attr in values:
            values[attr] = check(values[attr])
    return cls._trusted(values)


def result_class(body: Any) -> type[InferenceResult] | type[ErrorResult]:
    """Results and errors share a topic; ``status`` tells them apart."""
    status = body.get("status") if isinstance(body, dict) else None
    return InferenceResult if status == Status.DONE else ErrorResult


def _known(cls: type[Message]) -> frozenset[str]:
    return _KNOWN[cls]


_MESSAGE_CLASSES = (InferenceRequest, InferenceResult, ErrorResult)
_KNOWN: dict[type[Message], frozenset[str]] = {
    cls: frozenset({SCHEMA_KEY, *(spec.name for spec in cls.FIELDS)}) for cls in _MESSAGE_CLASSES
}
_WIRE_LAYOUT: dict[
    type[Message], tuple[Callable[[Any], tuple[Any, ...]], tuple[tuple[str, int], ...]]
] = {
    cls: (
        operator.attrgetter(*(spec.attr for spec in cls.FIELDS)),
        tuple((spec.name, _form(cls, spec)) for spec in cls.FIELDS),
    )
    for cls in _MESSAGE_CLASSES
}
"""Per class: a getter of every attribute in ``FIELDS`` order, and (wire name, form) of each."""
_READ_FIELDS: dict[type[Message], tuple[tuple[str, str, bool, bool, Converter | None], ...]] = {
    cls: tuple(
        (
            spec.attr,
            spec.name,
            spec.required,
            spec.attr == cls.TENSORS,
            None if spec.enum is None else spec.from_wire,
        )
        for spec in cls.FIELDS
    )
    for cls in _MESSAGE_CLASSES
}
"""Per class: (attribute, wire name, required, holds the tensors, enum name -> member)."""
_VALUE_CHECKS: dict[type[Message], tuple[tuple[str, Validator], ...]] = {
    cls: tuple((attr, check) for attr, check in cls.CHECKS.items() if attr != cls.TENSORS)
    for cls in _MESSAGE_CLASSES
}
"""Per class: the checks decoding runs after reading, in ``FIELDS`` order (tensors excluded:
the tensor decoders check them as they read)."""


def read_tensors(
    raw: Any,
    field: str,
    limits: DecodeLimits,
    read_one: Callable[[Any, str, bool], tuple[str, TensorValue]],
    newer: bool,
) -> dict[str, TensorValue]:
    """Decode a list of tensor entries with ``read_one(entry, path, newer)``.

    Enforces the tensor count and unique names.
    """
    if not isinstance(raw, list):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field, f"expected a list, got {kind_name(raw)}"
        )
    if len(raw) > limits.max_tensors:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE, field, f"{len(raw)} tensors > limit {limits.max_tensors}"
        )
    tensors: dict[str, TensorValue] = {}
    for index, entry in enumerate(raw):
        path = f"{field}[{index}]"
        if not isinstance(entry, dict):
            raise ContractError.at(
                ErrorCode.WRONG_TYPE, path, f"expected an object, got {kind_name(entry)}"
            )
        name, value = read_one(entry, path, newer)
        if name in tensors:
            raise ContractError.at(
                ErrorCode.INVALID_VALUE, f"{path}.name", f"duplicate tensor {name!r}"
            )
        tensors[name] = value
    return tensors


def tensor_ref(entry: dict[str, Any], datatype: Any, path: str) -> TensorRef:
    """A claim-check entry ``{name, datatype, shape, ref, nbytes}``."""
    key = check_str(entry.get(TensorKey.REF), f"{path}.ref", max_len=512)
    itemsize = wire_dtype(datatype, f"{path}.datatype").itemsize
    shape: Any = entry.get(TensorKey.SHAPE)
    count = element_count(shape, f"{path}.shape")
    nbytes = check_int(entry.get(TensorKey.NBYTES), f"{path}.nbytes", minimum=0)
    if count * itemsize != nbytes:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH,
            f"{path}.shape",
            f"product {count} x {itemsize} bytes != nbytes {nbytes}",
        )
    return TensorRef(key=key, datatype=datatype, shape=tuple(shape), nbytes=nbytes)


def content_kind(parameters: Any, path: str, choices: tuple[str, str]) -> str:
    """A BYTES tensor's ``parameters.content_type``: text (``"str"``, the default) or binary."""
    if parameters is None:
        return choices[0]
    if not isinstance(parameters, dict):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE,
            f"{path}.parameters",
            f"expected an object, got {kind_name(parameters)}",
        )
    kind = parameters.get("content_type", choices[0])
    if kind not in choices:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE,
            f"{path}.parameters.content_type",
            f"{kind!r} not one of {list(choices)}",
        )
    return str(kind)
