"""Task frames: many tasks in one Kafka record between the internal stages, column by column.

Clients speak one record per task (``InferenceRequest`` in, ``InferenceResult`` /
``ErrorResult`` out); between preprocess, inference and postprocess a record is a **frame**:
the tasks of one lane, tenant, pipeline and model (version pin) as columns, and their
tensors stacked along the batch dimension (``[rows, ...]``, ``row_counts[i]`` rows for task
``i``, usually 1). A stage works on a frame as a whole: one decode, one ledger call, one
model feed, one postprocess call per frame, not per task.

Wire (msgpack, content type ``application/vnd.conveyor.frame+msgpack``, header
``conveyor-schema: frame/<major>.<minor>``)::

    {"v": [2, 0], "tenant", "pipeline", "model_name", "model_version", "lane", "batch_id",
     "task_ids": [...], "row_counts": [...], "submitted_at_ms": [...], "deadline_ms": [...],
     "reply_to": [...], "content_types": [...], "traceparents": [...], "parameters": [...],
     "attempts": [...], "timings_ms": {name: [...]},
     "tensors": {name: {"datatype", "shape", "data"} | {"datatype", "shape", "ref", "nbytes"}}}

Numeric tensor data is raw little-endian bytes, decoded without copying (read-only numpy
views over the record's bytes); ``BYTES`` tensors are lists of str/bytes. A claim-checked
tensor carries ``ref``/``nbytes`` instead of ``data`` (``schemas.claimcheck``).

Guarantees: decoding raises ``ContractError`` and nothing else, naming the field; every
column has one entry per task; each tensor's first dimension is the sum of ``row_counts``;
limits (``DecodeLimits``) are checked before anything proportional to a claimed size is
built, per task for the element count (a frame of 512 tasks is 512 tasks' worth). A newer
major version is ``UNSUPPORTED_SCHEMA_VERSION``; a newer minor's extra keys are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from schemas.errors import ContractError, ErrorCode
from schemas.fields import CONTENT_TYPES, ID_RE, NAME_RE, TOPIC_RE, TRACEPARENT_RE
from schemas.limits import DEFAULT_LIMITS, DecodeLimits
from schemas.tensors import (
    BYTES,
    MAX_RANK,
    NUMERIC_DATATYPES,
    TensorRef,
    TensorValue,
    datatype_of,
    wire_dtype,
)

__all__ = [
    "FRAME_CONTENT_TYPE",
    "FRAME_VERSION",
    "Frame",
    "decode_frame",
    "encode_fitted",
    "encode_frame",
    "frame_headers",
]

FRAME_VERSION: tuple[int, int] = (2, 0)
"""(major, minor) of the frame format; the per-task messages keep their own version."""
FRAME_CONTENT_TYPE = "application/vnd.conveyor.frame+msgpack"
FRAME_SCHEMA_HEADER = "conveyor-schema"
_VERSION_TEXT = f"frame/{FRAME_VERSION[0]}.{FRAME_VERSION[1]}"


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """Tasks of one lane, tenant, pipeline and model, as columns plus stacked tensors.

    Columns are lists with one entry per task. Tensors hold ``rows`` rows; task ``i`` owns
    rows ``bounds[i]:bounds[i + 1]``. Frames are read-only once built: ``take`` and
    ``slice`` share columns' values and (for contiguous rows) tensor memory.
    """

    tenant: str
    pipeline: str
    lane: str
    task_ids: list[str]
    row_counts: list[int]
    submitted_at_ms: list[int]
    deadline_ms: list[int | None]
    reply_to: list[str | None]
    content_types: list[str]
    traceparents: list[str | None]
    parameters: list[dict[str, Any]]
    attempts: list[int]
    timings_ms: dict[str, list[float]]
    tensors: Mapping[str, TensorValue]
    model_name: str | None = None
    model_version: int | None = None
    """The version pin before inference; the version that ran after it."""
    batch_id: str | None = None

    TENSORS = "tensors"
    """Attribute the claim check offloads and resolves (as for the per-task messages)."""

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def rows(self) -> int:
        return sum(self.row_counts)

    def bounds(self) -> list[int]:
        """Row offsets: task ``i`` owns rows ``bounds[i]:bounds[i + 1]``."""
        return [0, *itertools.accumulate(self.row_counts)]

    def slice(self, start: int, stop: int) -> Frame:
        """Tasks ``start:stop``; tensors are views."""
        bounds = self.bounds()
        low, high = bounds[start], bounds[stop]
        return self._with_rows(
            lambda column: column[start:stop],
            {name: _rows(value, slice(low, high)) for name, value in self.tensors.items()},
        )

    def take(self, indices: Sequence[int]) -> Frame:
        """The tasks at ``indices``, in that order (a slice when they are contiguous)."""
        if not indices:
            return self.slice(0, 0)
        first = indices[0]
        if list(indices) == list(range(first, first + len(indices))):
            return self.slice(first, first + len(indices))
        if all(count == 1 for count in self.row_counts):
            rows: Any = np.asarray(indices, dtype=np.intp)
        else:
            bounds = self.bounds()
            rows = np.concatenate(
                [np.arange(bounds[i], bounds[i + 1], dtype=np.intp) for i in indices]
            )
        return self._with_rows(
            lambda column: [column[i] for i in indices],
            {name: _rows(value, rows) for name, value in self.tensors.items()},
        )

    def evolve(self, **changes: Any) -> Frame:
        """A copy with ``changes`` (field names) applied; unchanged columns are shared."""
        return dataclasses.replace(self, **changes)

    def _with_rows(
        self, pick: Callable[[list[Any]], list[Any]], tensors: dict[str, TensorValue]
    ) -> Frame:
        return dataclasses.replace(
            self,
            task_ids=pick(self.task_ids),
            row_counts=pick(self.row_counts),
            submitted_at_ms=pick(self.submitted_at_ms),
            deadline_ms=pick(self.deadline_ms),
            reply_to=pick(self.reply_to),
            content_types=pick(self.content_types),
            traceparents=pick(self.traceparents),
            parameters=pick(self.parameters),
            attempts=pick(self.attempts),
            timings_ms={name: pick(values) for name, values in self.timings_ms.items()},
            tensors=tensors,
        )


def _rows(value: TensorValue, rows: Any) -> TensorValue:
    if isinstance(value, TensorRef):
        raise ContractError(
            ErrorCode.INTERNAL, "a claim-checked frame must be resolved before it is split"
        )
    picked: TensorValue = value[rows]
    return picked


# ---- encoding -----------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """The frame as one Kafka value (see the module docstring for the layout)."""
    body = {
        "v": list(FRAME_VERSION),
        "tenant": frame.tenant,
        "pipeline": frame.pipeline,
        "lane": frame.lane,
        "model_name": frame.model_name,
        "model_version": frame.model_version,
        "batch_id": frame.batch_id,
        "task_ids": frame.task_ids,
        "row_counts": frame.row_counts,
        "submitted_at_ms": frame.submitted_at_ms,
        "deadline_ms": frame.deadline_ms,
        "reply_to": frame.reply_to,
        "content_types": frame.content_types,
        "traceparents": frame.traceparents,
        "parameters": frame.parameters,
        "attempts": frame.attempts,
        "timings_ms": frame.timings_ms,
        "tensors": {name: _tensor_entry(name, value) for name, value in frame.tensors.items()},
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _tensor_entry(name: str, value: TensorValue) -> dict[str, Any]:
    if isinstance(value, TensorRef):
        return {
            "datatype": value.datatype,
            "shape": list(value.shape),
            "ref": value.key,
            "nbytes": value.nbytes,
        }
    datatype = datatype_of(value, f"tensors[{name!r}]")
    entry: dict[str, Any] = {"datatype": datatype, "shape": list(value.shape)}
    if datatype == BYTES:
        entry["data"] = value.reshape(-1).tolist()
    else:
        little = np.ascontiguousarray(value, dtype=NUMERIC_DATATYPES[datatype])
        entry["data"] = little.data if little.size else b""
    return entry


def frame_headers(frame: Frame) -> list[tuple[str, bytes]]:
    """Kafka headers of an encoded frame (aiokafka's format)."""
    return [
        ("content-type", FRAME_CONTENT_TYPE.encode("ascii")),
        (FRAME_SCHEMA_HEADER, _VERSION_TEXT.encode("ascii")),
        ("conveyor-tenant", frame.tenant.encode("utf-8")),
        ("conveyor-tasks", str(len(frame)).encode("ascii")),
    ]


# ---- decoding -----------------------------------------------------------------------------

_HEADER_FIELDS = ("tenant", "pipeline", "lane", "model_name", "model_version", "batch_id")
_COLUMNS = (
    "task_ids",
    "row_counts",
    "submitted_at_ms",
    "deadline_ms",
    "reply_to",
    "content_types",
    "traceparents",
    "parameters",
    "attempts",
)


def decode_frame(value: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Frame:
    """The frame in a Kafka value; ``ContractError`` for anything that is not a valid one."""
    if len(value) > limits.max_message_bytes:
        raise ContractError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"frame of {len(value)} bytes exceeds {limits.max_message_bytes}",
        )
    try:
        body = msgpack.unpackb(value, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for broken input
        raise ContractError(ErrorCode.MALFORMED, f"frame is not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise ContractError(ErrorCode.MALFORMED, f"frame must be a map, got {type(body).__name__}")
    _check_version(body.get("v"))
    header: dict[str, Any] = _header(body)
    columns: dict[str, Any] = {name: _column(body, name) for name in _COLUMNS}
    count = len(columns["task_ids"])
    for name, column in columns.items():
        if len(column) != count:
            raise ContractError.at(
                ErrorCode.SHAPE_MISMATCH, name, f"{len(column)} entries for {count} tasks"
            )
    _check_columns(columns)
    rows = sum(columns["row_counts"])
    timings = _timings(body.get("timings_ms", {}), count)
    tensors = _tensors(body.get("tensors"), rows, max(1, count), limits)
    return Frame(**header, **columns, timings_ms=timings, tensors=tensors)


def _check_version(version: Any) -> None:
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(part, int) for part in version)
    ):
        raise ContractError.at(ErrorCode.MISSING_FIELD, "v", f"bad frame version {version!r}")
    if version[0] != FRAME_VERSION[0]:
        raise ContractError.at(
            ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
            "v",
            f"frame major {version[0]} != {FRAME_VERSION[0]}",
        )


def _header(body: dict[str, Any]) -> dict[str, Any]:
    header = {name: body.get(name) for name in _HEADER_FIELDS}
    for name in ("tenant", "pipeline", "lane"):
        _text(header[name], NAME_RE, name)
    if header["model_name"] is not None:
        _text(header["model_name"], NAME_RE, "model_name")
    if header["batch_id"] is not None:
        _text(header["batch_id"], ID_RE, "batch_id")
    version = header["model_version"]
    if version is not None and (type(version) is not int or version < 1):
        raise ContractError.at(ErrorCode.INVALID_VALUE, "model_version", f"got {version!r}")
    return header


def _text(value: Any, pattern: Any, field: str) -> None:
    if not isinstance(value, str) or len(value) > 256 or not pattern.fullmatch(value):
        raise ContractError.at(ErrorCode.INVALID_VALUE, field, f"got {value!r}")


@functools.cache
def _lines_of(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """`pattern` once per line: a whole column checked in one match (no pattern here
    matches a newline, so a value cannot hide one)."""
    return re.compile(f"(?:{pattern.pattern})(?:\n(?:{pattern.pattern}))*")


def _texts(values: list[Any], pattern: re.Pattern[str], field: str) -> None:
    """Every value a str of at most 256 characters matching `pattern`: one regex match for
    the column; the value at fault is looked for only once the column is known bad."""
    if (
        all(type(value) is str for value in values)
        and max(map(len, values), default=0) <= 256
        and _lines_of(pattern).fullmatch("\n".join(values))
    ):
        return
    for i, value in enumerate(values):
        _text(value, pattern, f"{field}[{i}]")


def _integers(values: list[Any], least: int, field: str, nullable: bool = False) -> None:
    present = [value for value in values if value is not None] if nullable else values
    if all(type(value) is int for value in present) and min(present, default=least) >= least:
        return
    for i, value in enumerate(values):
        if value is None and nullable:
            continue
        if type(value) is not int or value < least:
            raise ContractError.at(ErrorCode.INVALID_VALUE, f"{field}[{i}]", f"got {value!r}")


def _column(body: dict[str, Any], name: str) -> list[Any]:
    column = body.get(name)
    if not isinstance(column, list):
        raise ContractError.at(ErrorCode.MISSING_FIELD, name, "a list per task is required")
    return column


def _check_columns(columns: dict[str, list[Any]]) -> None:
    _texts(columns["task_ids"], ID_RE, "task_ids")
    _integers(columns["row_counts"], 1, "row_counts")
    _integers(columns["submitted_at_ms"], 0, "submitted_at_ms")
    _integers(columns["attempts"], 0, "attempts")
    _integers(columns["deadline_ms"], 0, "deadline_ms", nullable=True)
    for name, pattern in (("reply_to", TOPIC_RE), ("traceparents", TRACEPARENT_RE)):
        present = [text for text in columns[name] if text is not None]
        if present:
            _texts(present, pattern, name)
    for i, content_type in enumerate(columns["content_types"]):
        if content_type not in CONTENT_TYPES:
            raise ContractError.at(
                ErrorCode.UNSUPPORTED_CONTENT_TYPE, f"content_types[{i}]", f"{content_type!r}"
            )
    for i, parameters in enumerate(columns["parameters"]):
        if type(parameters) is not dict:
            raise ContractError.at(ErrorCode.WRONG_TYPE, f"parameters[{i}]", "must be a map")


def _timings(raw: Any, count: int) -> dict[str, list[float]]:
    if not isinstance(raw, dict) or len(raw) > 64:
        raise ContractError.at(ErrorCode.WRONG_TYPE, "timings_ms", "a map of <= 64 columns")
    for name, values in raw.items():
        if (
            not isinstance(values, list)
            or len(values) != count
            or not all(type(v) is float or type(v) is int for v in values)
            or not math.isfinite(sum(values))  # NaN and infinities carry into the sum
        ):
            raise ContractError.at(
                ErrorCode.INVALID_VALUE, f"timings_ms[{name!r}]", f"{count} finite numbers"
            )
    return raw


def _tensors(raw: Any, rows: int, tasks: int, limits: DecodeLimits) -> dict[str, TensorValue]:
    if not isinstance(raw, dict):
        raise ContractError.at(ErrorCode.MISSING_FIELD, "tensors", "a map of tensors")
    if len(raw) > limits.max_tensors:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE, "tensors", f"{len(raw)} > {limits.max_tensors}"
        )
    return {name: _tensor(name, entry, rows, tasks, limits) for name, entry in raw.items()}


def _tensor(name: str, entry: Any, rows: int, tasks: int, limits: DecodeLimits) -> TensorValue:
    path = f"tensors[{name!r}]"
    if not isinstance(entry, dict):
        raise ContractError.at(ErrorCode.WRONG_TYPE, path, "must be a map")
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ContractError.at(ErrorCode.SHAPE_MISMATCH, f"{path}.shape", f"got {shape!r}")
    if shape[0] != rows:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH, f"{path}.shape", f"{shape[0]} rows, the tasks own {rows}"
        )
    elements = math.prod(shape)
    if elements > limits.max_tensor_elements * tasks:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE, path, f"{elements} elements for {tasks} tasks"
        )
    datatype: Any = entry.get("datatype")
    if "ref" in entry:
        try:
            nbytes: Any = entry.get("nbytes")
            return TensorRef(entry["ref"], datatype, tuple(shape), nbytes)
        except (TypeError, ValueError) as exc:
            raise ContractError.at(ErrorCode.INVALID_VALUE, path, str(exc)) from None
    data = entry.get("data")
    if datatype == BYTES:
        if not isinstance(data, list) or len(data) != elements:
            raise ContractError.at(ErrorCode.SHAPE_MISMATCH, f"{path}.data", "one item each")
        if not all(isinstance(item, str | bytes) for item in data):
            raise ContractError.at(ErrorCode.WRONG_TYPE, f"{path}.data", "str or bytes items")
        array = np.empty(elements, dtype=object)
        array[:] = data
        return array.reshape(shape)
    dtype = wire_dtype(datatype, f"{path}.datatype")
    if not isinstance(data, bytes) or len(data) != elements * dtype.itemsize:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH,
            f"{path}.data",
            f"{size} bytes for shape {shape} of {datatype}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_fitted(frame: Frame, max_bytes: int) -> list[tuple[bytes, Frame]]:
    """The frame encoded, split in halves until every part fits `max_bytes` (a single task
    over it goes alone: the claim check keeps big tensors out of the record)."""
    value = encode_frame(frame)
    if len(value) <= max_bytes or len(frame) <= 1:
        return [(value, frame)]
    middle = len(frame) // 2
    return encode_fitted(frame.slice(0, middle), max_bytes) + encode_fitted(
        frame.slice(middle, len(frame)), max_bytes
    )
