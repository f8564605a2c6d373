"""V2 tensors at the edge: JSON data, the binary tensor extension and raw contents.

A V2 inference request (`{"id", "parameters", "inputs", "outputs"}`) becomes arrays that an
`InferenceRequest` carries; a result's arrays become a V2 response. Numeric tensors in raw
form (HTTP binary extension, gRPC `raw_input_contents`) are read with `numpy.frombuffer`
over the received bytes, without a copy. BYTES elements in raw form are a 4-byte
little-endian length and the bytes (tritonclient's layout).

Sizes are checked against the decode limits from the shape, before anything is allocated:
too many tensors or elements, or too long a string, is PAYLOAD_TOO_LARGE (413); any other
inconsistency is a 400 naming the field.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from schemas import ContractError, DecodeLimits, ErrorCode
from schemas.tensors import BYTES, datatype_of, element_count, wire_dtype
from workers.gateway.errors import bad_request

Array = npt.NDArray[Any]

RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "binary_data", "binary_data_size", "timeout", "priority", "headers"}
    | {"sequence_id", "sequence_start", "sequence_end"}
)
"""Protocol parameters the gateway reads itself; the rest go to the pipeline."""

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InferBody:
    """A decoded V2 inference request."""

    id: str | None
    inputs: dict[str, Array]
    parameters: dict[str, Any] = field(default_factory=dict)
    """Parameters for the pipeline (protocol parameters removed)."""
    outputs: tuple[str, ...] = ()
    """Requested outputs; empty: all."""
    binary_outputs: frozenset[str] = frozenset()
    """Outputs to answer in binary form (HTTP)."""
    all_binary: bool = False
    """`binary_data_output`: every output in binary form."""
    timeout_s: float | None = None
    """The caller's own timeout (V2 `timeout` parameter, microseconds)."""


# ---- arrays from the wire ------------------------------------------------------------


def array_from_raw(
    raw: bytes | memoryview,
    datatype: str,
    shape: Sequence[int],
    path: str,
    limits: DecodeLimits,
    text: bool,
) -> Array:
    """A tensor from its raw contents (numeric: a view over `raw`, no copy)."""
    count = element_count(list(shape), f"{path}.shape", limits.max_tensor_elements)
    if datatype == BYTES:
        return _bytes_from_raw(memoryview(raw), count, path, limits, text).reshape(shape)
    dtype = wire_dtype(datatype, f"{path}.datatype")
    if len(raw) != count * dtype.itemsize:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH,
            f"{path}.shape",
            f"{count} {datatype} elements need {count * dtype.itemsize} bytes, got {len(raw)}",
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _bytes_from_raw(
    raw: memoryview, count: int, path: str, limits: DecodeLimits, text: bool
) -> Array:
    items: list[Any] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH, f"{path}.shape", f"{count} elements, raw holds {index}"
            )
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if size > limits.max_string_bytes:
            raise ContractError.at(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"{path}[{index}]",
                f"{size} bytes > limit {limits.max_string_bytes}",
            )
        if offset + size > len(raw):
            raise ContractError.at(
                ErrorCode.MALFORMED, f"{path}[{index}]", "element runs past the raw contents"
            )
        items.append(_element(bytes(raw[offset : offset + size]), f"{path}[{index}]", text))
        offset += size
    if offset != len(raw):
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH, f"{path}.shape", f"{len(raw) - offset} bytes left over"
        )
    return _objects(items)


def _element(value: bytes, where: str, text: bool) -> str | bytes:
    if not text:
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError.at(ErrorCode.BAD_UTF8, where, f"not UTF-8: {exc.reason}") from None


def _objects(items: list[Any]) -> Array:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def array_from_values(
    values: Sequence[Any], datatype: str, shape: Sequence[int], path: str, limits: DecodeLimits
) -> Array:
    """A tensor from a flat list of elements (V2 JSON `data`, gRPC typed contents)."""
    count = element_count(list(shape), f"{path}.shape", limits.max_tensor_elements)
    if len(values) != count:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH, f"{path}.shape", f"product {count} != {len(values)} elements"
        )
    if datatype == BYTES:
        for index, item in enumerate(values):
            if not isinstance(item, str | bytes):
                raise ContractError.at(
                    ErrorCode.DTYPE_MISMATCH, f"{path}.data[{index}]", "BYTES elements are strings"
                )
            if len(item) > limits.max_string_bytes:
                raise ContractError.at(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"{path}.data[{index}]",
                    f"{len(item)} > limit {limits.max_string_bytes}",
                )
        return _objects(list(values)).reshape(shape)
    dtype = wire_dtype(datatype, f"{path}.datatype")
    if any(isinstance(v, str | bytes | list | dict) or v is None for v in values):
        raise ContractError.at(
            ErrorCode.DTYPE_MISMATCH, f"{path}.data", f"non-numeric elements in a {datatype} tensor"
        )
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError, TypeError, FloatingPointError) as exc:
        raise ContractError.at(ErrorCode.INVALID_VALUE, f"{path}.data", str(exc)) from None


def _flatten(data: Any, path: str) -> list[Any]:
    if not isinstance(data, list):
        raise ContractError.at(ErrorCode.WRONG_TYPE, f"{path}.data", "expected a list")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


# ---- HTTP: JSON and the binary tensor extension --------------------------------------


def parse_http(
    body: bytes, header_length: int | None, limits: DecodeLimits, text: bool
) -> InferBody:
    """A V2 HTTP inference body: JSON, or a JSON header of `header_length` bytes followed by
    the binary data of the inputs whose `parameters.binary_data_size` says so."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise bad_request(
            f"Inference-Header-Content-Length {header_length} is outside the body "
            f"({len(body)} bytes)",
            ErrorCode.MALFORMED,
        )
    view = memoryview(body)
    head = view[:header_length] if header_length is not None else view
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body: undecodable JSON: {exc}", ErrorCode.MALFORMED) from None
    if not isinstance(request, dict):
        raise bad_request("body: expected a JSON object", ErrorCode.MALFORMED)
    binary = view[header_length:] if header_length is not None else view[:0]
    inputs = _http_inputs(request.get("inputs"), binary, limits, text)
    return _body(request, inputs)


def _http_inputs(
    entries: Any, binary: memoryview, limits: DecodeLimits, text: bool
) -> dict[str, Array]:
    if not isinstance(entries, list) or not entries:
        raise bad_request("inputs: expected a non-empty list of tensors", ErrorCode.MISSING_FIELD)
    if len(entries) > limits.max_tensors:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE, "inputs", f"{len(entries)} > limit {limits.max_tensors}"
        )
    inputs: dict[str, Array] = {}
    offset = 0
    for index, entry in enumerate(entries):
        path = f"inputs[{index}]"
        if not isinstance(entry, dict):
            raise bad_request(f"{path}: expected an object", ErrorCode.WRONG_TYPE)
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise bad_request(f"{path}: name and datatype must be strings", ErrorCode.WRONG_TYPE)
        if not isinstance(shape, list):
            raise bad_request(f"{path}.shape: expected a list of ints", ErrorCode.WRONG_TYPE)
        parameters = entry.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise bad_request(
                    f"{path}.parameters.binary_data_size {size!r} runs past the binary data "
                    f"({len(binary) - offset} bytes left)",
                    ErrorCode.MALFORMED,
                )
            raw = binary[offset : offset + size]
            offset += size
            inputs[name] = array_from_raw(raw, datatype, shape, path, limits, text)
        else:
            values = _flatten(entry.get("data"), path)
            inputs[name] = array_from_values(values, datatype, shape, path, limits)
    if offset != len(binary):
        raise bad_request(
            f"{len(binary) - offset} bytes of binary data belong to no input", ErrorCode.MALFORMED
        )
    return inputs


def _body(request: dict[str, Any], inputs: dict[str, Array]) -> InferBody:
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request("parameters: expected an object", ErrorCode.WRONG_TYPE)
    outputs: list[str] = []
    binary: set[str] = set()
    for index, entry in enumerate(request.get("outputs") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise bad_request(f"outputs[{index}]: expected {{name: str}}", ErrorCode.WRONG_TYPE)
        outputs.append(entry["name"])
        wanted = entry.get("parameters") or {}
        if isinstance(wanted, dict) and wanted.get("binary_data") is True:
            binary.add(entry["name"])
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("id: expected a string", ErrorCode.WRONG_TYPE)
    return InferBody(
        id=request_id,
        inputs=inputs,
        parameters={k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
        outputs=tuple(outputs),
        binary_outputs=frozenset(binary),
        all_binary=parameters.get("binary_data_output") is True,
        timeout_s=timeout_of(parameters.get("timeout")),
    )


def timeout_of(value: Any) -> float | None:
    """The V2 `timeout` parameter (microseconds) in seconds; None when absent or invalid."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value / 1_000_000
    return None


# ---- responses -------------------------------------------------------------------------


def raw_of(array: Array) -> bytes:
    """An array's raw contents: row-major little-endian elements, or length-prefixed BYTES."""
    if array.dtype.kind in "OUS":
        parts: list[bytes] = []
        for item in array.reshape(-1).tolist():
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def _json_data(array: Array) -> Any:
    flat = array.reshape(-1)
    if flat.dtype.kind in "OUS":
        return [
            item if isinstance(item, str) else bytes(item).decode("utf-8", "replace")
            for item in flat.tolist()
        ]
    if flat.dtype.kind == "f":
        return flat.astype(np.float64)  # exact: a reader that parses doubles narrows back
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))


def selected(outputs: Mapping[str, Array], requested: Sequence[str]) -> dict[str, Array]:
    if not requested:
        return dict(outputs)
    missing = [name for name in requested if name not in outputs]
    if missing:
        raise bad_request(f"outputs {missing} are not produced; produced: {sorted(outputs)}")
    return {name: outputs[name] for name in requested}


def http_response(
    head: dict[str, Any], outputs: Mapping[str, Array], body: InferBody
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in selected(outputs, body.outputs).items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array, name),
            "shape": list(array.shape),
        }
        if body.all_binary or name in body.binary_outputs:
            raw = raw_of(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    json_part = orjson.dumps({**head, "outputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return json_part, None
    return b"".join([json_part, *chunks]), len(json_part)
