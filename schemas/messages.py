"""The messages Conveyor moves through Kafka, as frozen dataclasses that validate themselves.

Construction validates every field (``ContractError`` names the wire field), so a message
object is always encodable. ``U``/``S`` string arrays are normalised to object arrays (see
``schemas.tensors``). Equality compares tensors by datatype, shape and values (NaN equal to
NaN), so a decoded message equals the one that was encoded.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, Self

import numpy as np

from schemas.errors import ErrorCode
from schemas.fields import Field, Kind
from schemas.tensors import TensorValue, datatype_of

__all__ = [
    "SCHEMA_VERSION",
    "ErrorResult",
    "InferenceRequest",
    "InferenceResult",
    "Message",
    "StageMessage",
    "Status",
    "now_ms",
]

SCHEMA_VERSION: tuple[int, int] = (1, 0)
"""(major, minor) of the wire contract this code writes."""


class Status(enum.StrEnum):
    """Lifecycle of a task, as stored in the ledger and reported in results."""

    ACCEPTED = "ACCEPTED"
    PREPROCESSED = "PREPROCESSED"
    INFERRED = "INFERRED"
    DONE = "DONE"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"


ERROR_STATUSES = (Status.FAILED, Status.EXPIRED, Status.REJECTED)
MAX_ERROR_MESSAGE_CHARS = 4096


def now_ms() -> int:
    """Wall-clock Unix epoch milliseconds (for timestamps on the wire, not for timeouts)."""
    return time.time_ns() // 1_000_000


def new_task_id() -> str:
    return uuid.uuid4().hex


class _Message:
    """Validation and tensor-aware equality shared by the message dataclasses."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]]
    TENSORS: ClassVar[str]
    """Attribute that holds the message's tensors."""

    def __post_init__(self) -> None:
        for spec in self.FIELDS:
            value = getattr(self, spec.attr)
            checked = spec.check(value)
            if checked is not value:
                object.__setattr__(self, spec.attr, checked)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclass_fields(self):  # type: ignore[arg-type]
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == self.TENSORS:
                if not _tensors_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def _tensors_equal(left: Mapping[str, TensorValue], right: Mapping[str, TensorValue]) -> bool:
    if left.keys() != right.keys():
        return False
    return all(_tensor_equal(left[name], right[name]) for name in left)


def _tensor_equal(left: TensorValue, right: TensorValue) -> bool:
    if not isinstance(left, np.ndarray) or not isinstance(right, np.ndarray):
        return left == right
    if left.shape != right.shape or datatype_of(left, "") != datatype_of(right, ""):
        return False
    if left.dtype.kind == "O":
        return [type(x) for x in left.flat] == [type(x) for x in right.flat] and bool(
            np.array_equal(left, right)
        )
    return bool(np.array_equal(left, right, equal_nan=left.dtype.kind == "f"))


def _common(tenant_required: bool = True) -> tuple[Field, ...]:
    return (
        Field("task_id", Kind.ID, wire="id", required=True),
        Field("tenant", Kind.NAME, required=tenant_required, max_len=64),
    )


_PIPELINE = Field("pipeline", Kind.NAME, required=True)
_PARAMETERS = Field("parameters", Kind.PARAMS)
_MODEL_VERSION = Field("model_version", Kind.VERSION, nullable=True)
_PRIORITY = Field("priority", Kind.NAME, nullable=True, max_len=32)
_DEADLINE = Field("deadline_ms", Kind.COUNT, nullable=True)
_REPLY_TO = Field("reply_to", Kind.TOPIC, nullable=True)
_TRACEPARENT = Field("traceparent", Kind.TRACEPARENT, nullable=True)
_SUBMITTED = Field("submitted_at_ms", Kind.COUNT)
_TIMINGS = Field("timings_ms", Kind.TIMINGS)


@dataclass(frozen=True, slots=True, eq=False)
class InferenceRequest(_Message):
    """A client's request: run ``pipeline`` for ``tenant`` on ``inputs``."""

    task_id: str
    tenant: str
    pipeline: str
    inputs: Mapping[str, TensorValue]
    """Any mapping of name to array or ``TensorRef``; stored as a validated dict copy."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """JSON-like values only (null, bool, int, finite float, str, list, str-keyed dict)."""
    model_version: int | None = None
    """Pin a model version; ``None`` runs the pipeline's current one."""
    priority: str | None = None
    deadline_ms: int | None = None
    """Absolute Unix epoch milliseconds after which the result is worthless."""
    reply_to: str | None = None
    """Kafka topic for the result; ``None`` uses the pipeline's results topic."""
    traceparent: str | None = None
    """W3C trace context."""
    submitted_at_ms: int = field(default_factory=now_ms)
    response_content_type: str | None = None
    """Encoding of the result; ``None`` answers in the encoding the request came in."""

    FIELDS: ClassVar[tuple[Field, ...]] = (
        *_common(),
        _PIPELINE,
        Field("inputs", Kind.TENSORS, required=True),
        _PARAMETERS,
        _MODEL_VERSION,
        _PRIORITY,
        _DEADLINE,
        _REPLY_TO,
        _TRACEPARENT,
        _SUBMITTED,
        Field("response_content_type", Kind.CONTENT_TYPE, nullable=True),
    )
    TENSORS: ClassVar[str] = "inputs"

    @classmethod
    def new(
        cls, *, tenant: str, pipeline: str, inputs: Mapping[str, TensorValue], **options: Any
    ) -> Self:
        """A request with a fresh uuid4-hex ``task_id`` and ``submitted_at_ms`` = now."""
        options.setdefault("task_id", new_task_id())
        return cls(tenant=tenant, pipeline=pipeline, inputs=inputs, **options)


@dataclass(frozen=True, slots=True, eq=False)
class StageMessage(_Message):
    """A task between stages (preprocess -> inference -> postprocess)."""

    task_id: str
    tenant: str
    pipeline: str
    content_type: str
    """Encoding the final result must use."""
    tensors: Mapping[str, TensorValue]
    model_version: int | None = None
    """Requested version; after inference, the version that ran."""
    model_name: str | None = None
    priority: str | None = None
    deadline_ms: int | None = None
    reply_to: str | None = None
    traceparent: str | None = None
    submitted_at_ms: int = field(default_factory=now_ms)
    parameters: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Per-stage durations so far."""
    batch_id: str | None = None
    attempt: int = 0

    FIELDS: ClassVar[tuple[Field, ...]] = (
        *_common(),
        _PIPELINE,
        _MODEL_VERSION,
        Field("model_name", Kind.NAME, nullable=True),
        _PRIORITY,
        _DEADLINE,
        _REPLY_TO,
        _TRACEPARENT,
        Field("submitted_at_ms", Kind.COUNT, required=True),
        Field("content_type", Kind.CONTENT_TYPE, required=True),
        Field("tensors", Kind.TENSORS, required=True),
        _PARAMETERS,
        _TIMINGS,
        Field("batch_id", Kind.ID, nullable=True),
        Field("attempt", Kind.COUNT),
    )
    TENSORS: ClassVar[str] = "tensors"

    @classmethod
    def from_request(
        cls,
        request: InferenceRequest,
        request_content_type: str,
        tensors: Mapping[str, TensorValue],
        **options: Any,
    ) -> Self:
        """Carry a request's routing fields forward; the result keeps the client's encoding."""
        return cls(
            task_id=request.task_id,
            tenant=request.tenant,
            pipeline=request.pipeline,
            content_type=request.response_content_type or request_content_type,
            tensors=tensors,
            model_version=request.model_version,
            priority=request.priority,
            deadline_ms=request.deadline_ms,
            reply_to=request.reply_to,
            traceparent=request.traceparent,
            submitted_at_ms=request.submitted_at_ms,
            parameters=request.parameters,
            **options,
        )


@dataclass(frozen=True, slots=True, eq=False)
class InferenceResult(_Message):
    """A successful answer to a request."""

    task_id: str
    tenant: str
    pipeline: str
    outputs: Mapping[str, TensorValue]
    model_name: str
    model_version: int
    submitted_at_ms: int
    completed_at_ms: int = field(default_factory=now_ms)
    timings_ms: dict[str, float] = field(default_factory=dict)
    traceparent: str | None = None
    status: Status = Status.DONE

    FIELDS: ClassVar[tuple[Field, ...]] = (
        *_common(),
        _PIPELINE,
        Field("status", Kind.ENUM, required=True, enum=Status, choices=(Status.DONE,)),
        Field("outputs", Kind.TENSORS, required=True),
        Field("model_name", Kind.NAME, required=True),
        Field("model_version", Kind.VERSION, required=True),
        _TIMINGS,
        Field("submitted_at_ms", Kind.COUNT, required=True),
        Field("completed_at_ms", Kind.COUNT, required=True),
        _TRACEPARENT,
    )
    TENSORS: ClassVar[str] = "outputs"


@dataclass(frozen=True, slots=True, eq=False)
class ErrorResult(_Message):
    """A failed, expired or rejected task. ``message`` travels as V2's ``"error"`` string."""

    task_id: str
    tenant: str
    status: Status
    code: ErrorCode
    message: str
    stage: str
    pipeline: str | None = None
    traceparent: str | None = None
    completed_at_ms: int = field(default_factory=now_ms)

    FIELDS: ClassVar[tuple[Field, ...]] = (
        *_common(),
        Field("status", Kind.ENUM, required=True, enum=Status, choices=tuple(ERROR_STATUSES)),
        Field("code", Kind.ENUM, required=True, enum=ErrorCode, choices=tuple(ErrorCode)),
        Field("message", Kind.TEXT, wire="error", required=True, max_len=MAX_ERROR_MESSAGE_CHARS),
        Field("stage", Kind.NAME, required=True, max_len=64),
        Field("pipeline", Kind.NAME, nullable=True),
        _TRACEPARENT,
        Field("completed_at_ms", Kind.COUNT, required=True),
    )
    TENSORS: ClassVar[str] = ""

    @classmethod
    def new(
        cls,
        *,
        task_id: str,
        tenant: str,
        code: ErrorCode,
        message: str,
        stage: str,
        status: Status = Status.FAILED,
        **options: Any,
    ) -> Self:
        """An error with ``message`` cut to the wire's length cap and completed_at_ms = now."""
        return cls(
            task_id=task_id,
            tenant=tenant,
            status=status,
            code=code,
            message=message[:MAX_ERROR_MESSAGE_CHARS] or code.value,
            stage=stage,
            **options,
        )


Message = InferenceRequest | StageMessage | InferenceResult | ErrorResult
"""Any message the codec encodes."""
