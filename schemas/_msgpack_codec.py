"""msgpack framing with a zero-copy data section.

Layout of one Kafka value (all integers little-endian)::

    b"CNVY" | u32 envelope_len | envelope (msgpack map) | zero pad to 64 | data section

The envelope holds every field; numeric tensors are entries ``{name, datatype, shape,
offset, nbytes}`` pointing into the data section (offsets relative to its start, each
64-byte aligned). Decoding numeric tensors is ``numpy.frombuffer`` over the received bytes:
no copy, read-only, explicit ``<`` dtypes. BYTES tensors travel inline in the envelope as
msgpack str (text) or bin (binary) elements, with ``parameters.content_type`` "str"/"bytes".
Claim-checked tensors are entries ``{name, datatype, shape, ref, nbytes}``.
NaN/Inf in float tensors pass through untouched (raw IEEE bytes; no O(n) scan).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from schemas import _envelope
from schemas._checks import check_int, check_str, check_utf8, kind_name
from schemas.errors import ContractError, ErrorCode
from schemas.fields import INT63_MAX, MAX_TENSOR_NAME_CHARS, MSGPACK_STRING_KINDS, TensorKey
from schemas.limits import DecodeLimits
from schemas.messages import Message
from schemas.tensors import (
    BYTES,
    NUMERIC_DATATYPES,
    Array,
    TensorRef,
    TensorValue,
    datatype_of,
    element_count,
    is_text,
    wire_dtype,
)

MAGIC = b"CNVY"
ALIGN = 64
_PREFIX = struct.Struct("<4sI")
# Plain-str copies of the TensorKey members: dict lookups with exact str keys take
# CPython's fast path (a StrEnum key costs a slow comparison on every lookup).
_NAME, _DATATYPE, _SHAPE, _DATA, _PARAMETERS, _OFFSET, _NBYTES, _REF = (
    key.value
    for key in (
        TensorKey.NAME,
        TensorKey.DATATYPE,
        TensorKey.SHAPE,
        TensorKey.DATA,
        TensorKey.PARAMETERS,
        TensorKey.OFFSET,
        TensorKey.NBYTES,
        TensorKey.REF,
    )
)
_NUMERIC_KEYS = frozenset({_NAME, _DATATYPE, _SHAPE, _OFFSET, _NBYTES})
_BYTES_KEYS = frozenset({_NAME, _DATATYPE, _SHAPE, _DATA, _PARAMETERS})
_REF_KEYS = frozenset({_NAME, _DATATYPE, _SHAPE, _REF, _NBYTES})
_TEXT, _BINARY = MSGPACK_STRING_KINDS
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def encode(message: Message) -> bytes:
    """Frame a message: envelope, then each numeric tensor's little-endian bytes."""
    chunks: list[tuple[int, Array]] = []

    def encode_tensors(tensors: Mapping[str, TensorValue], field: str) -> list[dict[str, Any]]:
        entries, offset = [], 0
        for index, (name, value) in enumerate(tensors.items()):
            entry, chunk = _entry(name, value, offset, f"{field}[{index}]")
            entries.append(entry)
            if chunk is not None:
                chunks.append((offset, chunk))
                offset = _aligned(offset + chunk.nbytes)
        return entries

    envelope = msgpack.packb(_envelope.to_wire(message, encode_tensors))
    head = _PREFIX.pack(MAGIC, len(envelope))
    parts: list[Any] = [head, envelope]
    position = len(head) + len(envelope)
    data_start = _aligned(position)
    for offset, chunk in chunks:
        parts.append(bytes(data_start + offset - position))
        parts.append(chunk)
        position = data_start + offset + chunk.nbytes
    if not chunks:
        parts.append(bytes(data_start - position))
    return b"".join(parts)


def _entry(
    name: str, value: TensorValue, offset: int, path: str
) -> tuple[dict[str, Any], Array | None]:
    if isinstance(value, TensorRef):
        return {
            _NAME: name,
            _DATATYPE: value.datatype,
            _SHAPE: list(value.shape),
            _REF: value.key,
            _NBYTES: value.nbytes,
        }, None
    datatype = datatype_of(value, path)
    if datatype == BYTES:
        kind = _TEXT if is_text(value) else _BINARY
        return {
            _NAME: name,
            _DATATYPE: datatype,
            _SHAPE: list(value.shape),
            _DATA: value.reshape(-1).tolist(),
            _PARAMETERS: {"content_type": kind},
        }, None
    raw = _little_endian(value).reshape(-1).view(np.uint8)
    return {
        _NAME: name,
        _DATATYPE: datatype,
        _SHAPE: list(value.shape),
        _OFFSET: offset,
        _NBYTES: raw.nbytes,
    }, raw


def _little_endian(value: Array) -> Array:
    """The array as contiguous little-endian data (itself when it already is)."""
    order = value.dtype.byteorder
    if order == ">" or (order == "=" and _BIG_ENDIAN_HOST):
        return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    return np.ascontiguousarray(value)


def split(value: bytes) -> tuple[Any, int]:
    """Parse the envelope; returns it and the absolute start of the data section."""
    if len(value) < _PREFIX.size:
        raise ContractError.at(
            ErrorCode.MALFORMED, "body", f"{len(value)} bytes is too short for a frame"
        )
    magic, length = _PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise ContractError.at(
            ErrorCode.MALFORMED, "body", f"bad magic {magic!r}, expected {MAGIC!r}"
        )
    end = _PREFIX.size + length
    if end > len(value):
        raise ContractError.at(
            ErrorCode.MALFORMED,
            "body",
            f"envelope length {length} runs past the {len(value)}-byte message",
        )
    try:
        body = msgpack.unpackb(
            memoryview(value)[_PREFIX.size : end], unicode_errors="surrogateescape"
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise ContractError.at(
            ErrorCode.MALFORMED, "body", f"undecodable msgpack envelope: {exc}"
        ) from None
    return body, _aligned(end)


class TensorReader:
    """Decodes the tensor entries of one framed message against its data section."""

    def __init__(self, value: bytes, data_start: int, limits: DecodeLimits) -> None:
        self._value = value
        self._data_start = data_start
        self._limits = limits

    def __call__(self, raw: Any, field: str, newer: bool) -> dict[str, TensorValue]:
        return _envelope.read_tensors(raw, field, self._limits, self._tensor, newer)

    def _tensor(self, entry: Any, path: str, newer: bool) -> tuple[str, TensorValue]:
        if not isinstance(entry, dict):
            raise ContractError.at(
                ErrorCode.WRONG_TYPE, path, f"expected an object, got {kind_name(entry)}"
            )
        name = entry.get(_NAME)
        if not (type(name) is str and 0 < len(name) <= MAX_TENSOR_NAME_CHARS and name.isascii()):
            name = check_str(name, f"{path}.name", max_len=MAX_TENSOR_NAME_CHARS)
        datatype = entry.get(_DATATYPE)
        value: TensorValue
        if _REF in entry:
            known, value = _REF_KEYS, _envelope.tensor_ref(entry, datatype, path)
        elif datatype == BYTES:
            known, value = _BYTES_KEYS, self._strings(entry, path)
        else:
            known, value = _NUMERIC_KEYS, self._numeric(entry, datatype, path)
        if not newer:
            _envelope.check_known(entry, known, path)
        return name, value

    def _numeric(self, entry: dict[str, Any], datatype: Any, path: str) -> Array:
        # Fast paths for valid values; the full checks build the error (paths made lazily).
        dtype = NUMERIC_DATATYPES.get(datatype) if type(datatype) is str else None
        if dtype is None:
            dtype = wire_dtype(datatype, f"{path}.datatype")
        shape: Any = entry.get(_SHAPE)
        count = element_count(shape, f"{path}.shape", self._limits.max_tensor_elements)
        offset: Any = entry.get(_OFFSET)
        nbytes: Any = entry.get(_NBYTES)
        if type(offset) is not int or not 0 <= offset <= INT63_MAX:
            check_int(offset, f"{path}.offset", minimum=0)
        if type(nbytes) is not int or not 0 <= nbytes <= INT63_MAX:
            check_int(nbytes, f"{path}.nbytes", minimum=0)
        if count * dtype.itemsize != nbytes:
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH,
                f"{path}.shape",
                f"product {count} x {dtype.itemsize} bytes != nbytes {nbytes}",
            )
        start = self._data_start + offset
        if start + nbytes > len(self._value):
            section = len(self._value) - self._data_start
            raise ContractError.at(
                ErrorCode.INVALID_VALUE,
                f"{path}.offset",
                f"bytes {offset}..{offset + nbytes} run past the {section}-byte data section",
            )
        if count == 0:
            array = np.empty(shape, dtype)
            array.flags.writeable = False
            return array
        array = np.frombuffer(self._value, dtype=dtype, count=count, offset=start)
        if datatype == "BOOL" and bool((array.view(np.uint8) > 1).any()):
            raise ContractError.at(
                ErrorCode.INVALID_VALUE, f"{path}.data", "BOOL bytes must be 0 or 1"
            )
        return array.reshape(shape)

    def _strings(self, entry: dict[str, Any], path: str) -> Array:
        count = element_count(entry.get(_SHAPE), f"{path}.shape", self._limits.max_tensor_elements)
        kind = _envelope.content_kind(entry.get(_PARAMETERS), path, MSGPACK_STRING_KINDS)
        data = entry.get(_DATA)
        if not isinstance(data, list):
            raise ContractError.at(
                ErrorCode.WRONG_TYPE, f"{path}.data", f"expected a list, got {kind_name(data)}"
            )
        if len(data) != count:
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH,
                f"{path}.shape",
                f"product {count} != {len(data)} elements",
            )
        expected = str if kind == _TEXT else bytes
        limit = self._limits.max_string_bytes
        for index, item in enumerate(data):
            if type(item) is not expected:
                raise ContractError.at(
                    ErrorCode.DTYPE_MISMATCH,
                    f"{path}.data[{index}]",
                    f"{kind_name(item)} in a {kind!r} BYTES tensor",
                )
            if len(item) > limit:
                raise ContractError.at(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"{path}.data[{index}]",
                    f"{len(item)} > limit {limit}",
                )
            if isinstance(item, str):
                check_utf8(item, f"{path}.data[{index}]")
        array = np.empty(count, dtype=object)
        array[:] = data
        array = array.reshape(entry[_SHAPE])
        array.flags.writeable = False
        return array
