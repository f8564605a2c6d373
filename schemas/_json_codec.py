"""Open Inference Protocol (KServe V2) JSON bodies.

Tensors are ``{"name", "datatype", "shape", "data"}`` with ``data`` flat (row-major) or
nested to match ``shape``. Bodies are compact UTF-8 written by orjson.

Floats: every float tensor (FP16/FP32/FP64) is widened exactly to float64 and written as
the shortest decimal that parses back to that float64, so any JSON reader that parses to
double (Python, JavaScript, orjson) and narrows gets the original value bit for bit. We do
not write FP32's own shortest digits: they are a third shorter but do not survive a
parse-to-double-then-narrow reader (``7.038531e-26`` narrows to the wrong float32).

JSON has no NaN/Inf: encoding a non-finite float raises ``NAN_FORBIDDEN``, and so does
decoding one (``NaN``, ``Infinity`` or an overflowing literal such as ``1e400``). BYTES
tensors hold JSON strings: text by default, or base64 of binary elements when
``parameters.content_type`` is ``"base64"``.

Decoding parses with orjson. A body orjson refuses is parsed again with the stdlib
(NaN literals, bad UTF-8 as lone surrogates) so that the field checks can name the bad
field; if that fails too, the body is ``MALFORMED`` with orjson's reason.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from schemas import _envelope
from schemas._checks import check_str, check_utf8, kind_name
from schemas.errors import ContractError, ErrorCode
from schemas.fields import JSON_STRING_KINDS, TensorKey
from schemas.limits import DecodeLimits
from schemas.messages import Message
from schemas.tensors import (
    BYTES,
    Array,
    TensorRef,
    TensorValue,
    datatype_of,
    element_count,
    is_text,
    wire_dtype,
)

_TEXT, _BASE64 = JSON_STRING_KINDS
_DATA_KEYS = frozenset(
    {TensorKey.NAME, TensorKey.DATATYPE, TensorKey.SHAPE, TensorKey.DATA, TensorKey.PARAMETERS}
)
_REF_KEYS = frozenset(
    {TensorKey.NAME, TensorKey.DATATYPE, TensorKey.SHAPE, TensorKey.REF, TensorKey.NBYTES}
)
_ALLOWED_TYPES: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "u": frozenset({int}),
    "i": frozenset({int}),
    "f": frozenset({int, float}),
}


_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""NON_STR_KEYS only so that ``str`` subclasses (``TensorKey``, user StrEnums) work as keys."""


def encode(message: Message) -> bytes:
    body = _envelope.to_wire(message, _encode_tensors)
    try:
        return orjson.dumps(body, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError as exc:  # construction-time checks should make this unreachable
        raise ContractError.at(ErrorCode.INTERNAL, "body", f"unencodable as JSON: {exc}") from None


def _encode_tensors(tensors: Mapping[str, TensorValue], field: str) -> list[dict[str, Any]]:
    return [
        _entry(name, value, f"{field}[{index}]")
        for index, (name, value) in enumerate(tensors.items())
    ]


def _entry(name: str, value: TensorValue, path: str) -> dict[str, Any]:
    if isinstance(value, TensorRef):
        return {
            TensorKey.NAME: name,
            TensorKey.DATATYPE: value.datatype,
            TensorKey.SHAPE: list(value.shape),
            TensorKey.REF: value.key,
            TensorKey.NBYTES: value.nbytes,
        }
    datatype = datatype_of(value, path)
    entry: dict[str, Any] = {
        TensorKey.NAME: name,
        TensorKey.DATATYPE: datatype,
        TensorKey.SHAPE: list(value.shape),
    }
    flat = value.reshape(-1)
    if datatype == BYTES and not is_text(value):
        entry[TensorKey.DATA] = [base64.b64encode(item).decode("ascii") for item in flat.tolist()]
        entry[TensorKey.PARAMETERS] = {"content_type": _BASE64}
        return entry
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        index = int(np.argmin(np.isfinite(flat)))
        raise ContractError.at(
            ErrorCode.NAN_FORBIDDEN, f"{path}.data[{index}]", f"{flat[index]} has no JSON form"
        )
    entry[TensorKey.DATA] = _json_ready(flat)
    return entry


def _json_ready(flat: Array) -> Array | list[Any]:
    """What orjson writes as the flat JSON array: a C-contiguous native-endian numeric array."""
    if flat.dtype.kind == "O":  # text; orjson does not take object arrays
        items: list[Any] = flat.tolist()
        return items
    if flat.dtype.kind == "f":
        return flat.astype(np.float64)  # exact widening; see the module docstring
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))


def loads(value: bytes) -> Any:
    """Parse a JSON body (see the module docstring for the stdlib second chance)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    # Bad UTF-8 becomes lone surrogates, NaN/Infinity/1e400 become floats: the field checks
    # then reject them as BAD_UTF8 / NAN_FORBIDDEN naming the field.
    text = value.decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ContractError.at(ErrorCode.MALFORMED, "body", f"undecodable JSON: {reason}") from None


class TensorReader:
    """Decodes V2 JSON tensor entries."""

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits

    def __call__(self, raw: Any, field: str, newer: bool) -> dict[str, TensorValue]:
        return _envelope.read_tensors(raw, field, self._limits, self._tensor, newer)

    def _tensor(self, entry: dict[str, Any], path: str, newer: bool) -> tuple[str, TensorValue]:
        name = check_str(entry.get(TensorKey.NAME), f"{path}.name", max_len=256)
        datatype = entry.get(TensorKey.DATATYPE)
        value: TensorValue
        if TensorKey.REF in entry:
            known, value = _REF_KEYS, _envelope.tensor_ref(entry, datatype, path)
        else:
            known, value = _DATA_KEYS, self._array(entry, datatype, path)
        if not newer:
            _envelope.check_known(entry, known, path)
        return name, value

    def _array(self, entry: dict[str, Any], datatype: Any, path: str) -> Array:
        shape: Any = entry.get(TensorKey.SHAPE)
        count = element_count(shape, f"{path}.shape", self._limits.max_tensor_elements)
        flat, types = _flatten(entry.get(TensorKey.DATA), shape, count, path)
        if datatype == BYTES:
            kind = _envelope.content_kind(entry.get(TensorKey.PARAMETERS), path, JSON_STRING_KINDS)
            array = self._strings(flat, types, kind, path)
        else:
            array = _numbers(flat, types, datatype, path)
        array = array.reshape(shape)
        array.flags.writeable = False
        return array

    def _strings(self, flat: list[Any], types: set[type], kind: str, path: str) -> Array:
        if not types <= {str}:
            found = sorted(t.__name__ for t in types - {str})
            raise ContractError.at(
                ErrorCode.DTYPE_MISMATCH, f"{path}.data", f"{found} elements in a BYTES tensor"
            )
        limit = self._limits.max_string_bytes
        items: list[Any] = []
        for index, item in enumerate(flat):
            where = f"{path}.data[{index}]"
            check_utf8(item, where)
            decoded = item if kind == _TEXT else _unbase64(item, where)
            if len(decoded) > limit:
                raise ContractError.at(
                    ErrorCode.PAYLOAD_TOO_LARGE, where, f"{len(decoded)} > limit {limit}"
                )
            items.append(decoded)
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array


def _unbase64(item: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(item, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ContractError.at(ErrorCode.INVALID_VALUE, where, f"invalid base64: {exc}") from None


def _flatten(data: Any, shape: list[int], count: int, path: str) -> tuple[list[Any], set[type]]:
    """Row-major elements of flat or nested ``data``, checked against ``shape``, and their types."""
    if not isinstance(data, list):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, f"{path}.data", f"expected a list, got {kind_name(data)}"
        )
    types = set(map(type, data))  # one C-speed pass; also tells flat data from nested
    if list not in types:
        if len(data) != count:
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH,
                f"{path}.shape",
                f"product {count} != {len(data)} elements",
            )
        return data, types
    if not shape:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH, f"{path}.data", "nested data for a 0-d tensor"
        )
    flat: list[Any] = []
    _collect(data, shape, path, flat)
    return flat, set(map(type, flat))


def _collect(level: list[Any], dims: list[int], path: str, out: list[Any]) -> None:
    if len(level) != dims[0]:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH,
            f"{path}.shape",
            f"nested data has {len(level)} items where shape says {dims[0]}",
        )
    if len(dims) == 1:
        out.extend(level)
        return
    for item in level:
        if not isinstance(item, list):
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH,
                f"{path}.shape",
                f"nested data is shallower than rank {len(dims)}",
            )
        _collect(item, dims[1:], path, out)


def _numbers(flat: list[Any], types: set[type], datatype: Any, path: str) -> Array:
    dtype = wire_dtype(datatype, f"{path}.datatype")
    if not types <= _ALLOWED_TYPES[dtype.kind]:
        found = sorted(t.__name__ for t in types - _ALLOWED_TYPES[dtype.kind])
        raise ContractError.at(
            ErrorCode.DTYPE_MISMATCH, f"{path}.data", f"{found} elements in a {datatype} tensor"
        )
    try:
        if dtype.kind != "f":
            return np.array(flat, dtype=dtype)
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, f"{path}.data", f"value out of range for {datatype}"
        ) from None
    finite = np.isfinite(wide)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ContractError.at(
            ErrorCode.NAN_FORBIDDEN,
            f"{path}.data[{index}]",
            f"{wide[index]} is not allowed in JSON",
        )
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype)
    if not np.isfinite(narrow).all():
        index = int(np.argmin(np.isfinite(narrow)))
        raise ContractError.at(
            ErrorCode.INVALID_VALUE,
            f"{path}.data[{index}]",
            f"{wide[index]} out of range for {datatype}",
        )
    return narrow
