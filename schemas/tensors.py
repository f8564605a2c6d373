"""Tensor datatypes on the wire, and the rules for string tensors.

Datatype names are KServe V2 / Open Inference Protocol names. Numeric tensors travel as
little-endian raw bytes (msgpack) or as numbers (JSON); byte order is always explicit.

String rule: every string-like tensor has datatype ``BYTES`` on the wire, plus an element
kind, *text* or *binary*:

* text: numpy ``U`` arrays and object arrays of ``str`` (and empty object arrays).
  Decoded as an object array of ``str``. Text must be valid UTF-8 (no lone surrogates).
* binary: numpy ``S`` arrays and object arrays of ``bytes``. Decoded as an object array of
  ``bytes``.

Messages normalise ``U``/``S`` arrays to object arrays when they are built, so a decoded
message compares equal to the one that was encoded. Object arrays mixing ``str`` and
``bytes``, or holding anything else, are rejected with ``DTYPE_MISMATCH``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from schemas._checks import check_utf8, kind_name
from schemas.errors import ContractError, ErrorCode

__all__ = [
    "BYTES",
    "DATATYPES",
    "MAX_RANK",
    "NUMERIC_DATATYPES",
    "Array",
    "TensorRef",
    "TensorValue",
    "arrays_of",
    "check_shape",
    "datatype_of",
    "element_count",
    "is_text",
    "normalize_tensors",
    "wire_dtype",
]

Array: TypeAlias = npt.NDArray[Any]

BYTES = "BYTES"
NUMERIC_DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype("|b1"),
    "UINT8": np.dtype("|u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("|i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: tuple[str, ...] = (*NUMERIC_DATATYPES, BYTES)
"""Every datatype name the contract accepts, in a stable order."""
MAX_RANK = 32
"""Highest tensor rank accepted on the wire (numpy itself allows 64)."""
_BY_KIND_SIZE = {(dt.kind, dt.itemsize): name for name, dt in NUMERIC_DATATYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A claim-checked numeric tensor: its raw little-endian bytes live in Redis under ``key``.

    Allowed anywhere a message holds tensors; ``ClaimCheck.resolve`` swaps it back for an array.
    """

    key: str
    datatype: str
    shape: tuple[int, ...]
    nbytes: int

    def __post_init__(self) -> None:
        if self.datatype not in NUMERIC_DATATYPES:
            raise ContractError.at(
                ErrorCode.DTYPE_MISMATCH,
                "datatype",
                f"claim checks hold numeric tensors only, got {self.datatype!r}",
            )
        count = element_count(self.shape, "shape")
        expected = count * NUMERIC_DATATYPES[self.datatype].itemsize
        if self.nbytes != expected:
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH,
                "nbytes",
                f"{self.nbytes} != {expected} for shape {list(self.shape)}",
            )


TensorValue: TypeAlias = Array | TensorRef


def wire_dtype(datatype: str, field: str) -> np.dtype[Any]:
    """The explicit little-endian numpy dtype of a numeric wire datatype."""
    try:
        return NUMERIC_DATATYPES[datatype]
    except (KeyError, TypeError):
        if not isinstance(datatype, str):
            raise ContractError.at(
                ErrorCode.WRONG_TYPE, field, f"expected a string, got {type(datatype).__name__}"
            ) from None
        if datatype not in DATATYPES:  # a closed set: name what it holds
            raise ContractError.at(
                ErrorCode.INVALID_VALUE, field, f"{datatype!r} not one of {list(DATATYPES)}"
            ) from None
        raise ContractError.at(
            ErrorCode.DTYPE_MISMATCH, field, f"unsupported datatype {datatype!r} here"
        ) from None


def datatype_of(array: Array, field: str) -> str:
    """The wire datatype of an array (``BYTES`` for strings and bytes)."""
    kind = array.dtype.kind
    if kind in "OUS":
        return BYTES
    name = _BY_KIND_SIZE.get((kind, array.dtype.itemsize))
    if name is None:
        raise ContractError.at(ErrorCode.DTYPE_MISMATCH, field, f"unsupported dtype {array.dtype}")
    return name


def is_text(array: Array) -> bool:
    """Whether a normalised ``BYTES`` tensor holds text (``str``) rather than ``bytes``."""
    return array.size == 0 or isinstance(array.flat[0], str)


def element_count(shape: Any, field: str, max_elements: int | None = None) -> int:
    """Validate a shape (a list/tuple of ints >= 0) and return its number of elements."""
    if not isinstance(shape, list | tuple):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field, f"expected a list of ints, got {kind_name(shape)}"
        )
    if len(shape) > MAX_RANK:
        raise ContractError.at(ErrorCode.SHAPE_MISMATCH, field, f"rank {len(shape)} > {MAX_RANK}")
    for dim in shape:
        if type(dim) is not int:
            raise ContractError.at(ErrorCode.WRONG_TYPE, field, f"dimension {dim!r} is not an int")
        if dim < 0:
            raise ContractError.at(ErrorCode.SHAPE_MISMATCH, field, f"negative dimension {dim}")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE, field, f"{count} elements > limit {max_elements}"
        )
    return count


def check_shape(shape: Any, field: str, max_elements: int | None = None) -> tuple[int, ...]:
    """Validate a shape and return it as a tuple."""
    element_count(shape, field, max_elements)
    return tuple(shape)


def normalize_tensors(tensors: Any, field: str) -> dict[str, TensorValue]:
    """Validate a tensor mapping; returns a new dict with ``U``/``S`` arrays made object arrays."""
    if not isinstance(tensors, Mapping):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, field, f"expected a mapping, got {kind_name(tensors)}"
        )
    out: dict[str, TensorValue] = {}
    for name, value in tensors.items():
        path = f"{field}[{name!r}]"
        _check_name(name, path)
        out[name] = value if isinstance(value, TensorRef) else _normalize(value, path)
    return out


def arrays_of(tensors: Mapping[str, TensorValue], field: str = "tensors") -> dict[str, Array]:
    """The tensors as plain arrays; an unresolved claim check is ``CLAIM_CHECK_MISSING``."""
    out: dict[str, Array] = {}
    for name, value in tensors.items():
        if isinstance(value, TensorRef):
            raise ContractError.at(
                ErrorCode.CLAIM_CHECK_MISSING,
                f"{field}[{name!r}]",
                f"claim check {value.key!r} was not resolved",
            )
        out[name] = value
    return out


def _check_name(name: Any, path: str) -> None:
    if not isinstance(name, str):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, path, f"tensor name must be a str, got {kind_name(name)}"
        )
    if not 1 <= len(name) <= 256:
        raise ContractError.at(ErrorCode.INVALID_VALUE, path, "tensor name must be 1..256 chars")
    check_utf8(name, path)


def _normalize(array: Any, path: str) -> Array:
    if not isinstance(array, np.ndarray):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, path, f"expected a numpy array, got {kind_name(array)}"
        )
    if array.ndim > MAX_RANK:
        raise ContractError.at(ErrorCode.SHAPE_MISMATCH, path, f"rank {array.ndim} > {MAX_RANK}")
    kind = array.dtype.kind
    if kind in "US":
        return array.astype(object)
    if kind != "O":
        datatype_of(array, path)
        return array
    types = set(map(type, array.reshape(-1).tolist()))
    if types <= {str}:
        for item in array.reshape(-1).tolist():
            check_utf8(item, path)
    elif not types <= {bytes}:
        found = sorted(t.__name__ for t in types)
        raise ContractError.at(
            ErrorCode.DTYPE_MISMATCH,
            path,
            f"object tensor must hold only str or only bytes, got {found}",
        )
    return array
