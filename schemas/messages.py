"""The messages Conveyor moves through Kafka, as frozen dataclasses that validate themselves.

Construction validates every field (``ContractError`` names the wire field), so a message
object is always encodable. ``U``/``S`` string arrays are normalised to object arrays (see
``schemas.tensors``). Equality compares tensors by datatype, shape and values (NaN equal to
NaN), so a decoded message equals the one that was encoded.

Every field is validated exactly once per message:

* the constructor (and ``dataclasses.replace``, which calls it) checks every field;
* decoding checks every field while reading the wire, then builds the message without
  a second pass;
* ``evolve`` and ``InferenceResult.of_task`` check only the fields they are given, and
  carry the others over from a message (or a decoded frame) that was already checked.
  Carried values are shared, not copied: a message's dicts and arrays are read-only once
  built. The exception is ``parameters``, which stages hand to plug-in code: it is
  re-checked whenever it is carried into a new message (cheap for the usual small dict).

Between the stages tasks travel as task frames (``schemas.frames``), not as these messages.
Derive a message from another with ``evolve``, not ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from schemas.errors import ErrorCode
from schemas.fields import Field, Kind, Priority, Validator
from schemas.tensors import TensorValue, datatype_of

__all__ = [
    "SCHEMA_VERSION",
    "ErrorResult",
    "InferenceRequest",
    "InferenceResult",
    "Message",
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


class _RandomPool:
    """`os.urandom` drawn 4 KiB at a time: one system call per 256 task ids, not one each
    (`uuid4` reads 16 bytes a call: ~2 % of a busy gateway's CPU). Thread-safe; a forked
    child draws a pool of its own, so parent and child never hand out the same bytes."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            if at + count > len(self._pool):
                self._pool, at = os.urandom(max(self._size, count)), 0
            self._at = at + count
            return self._pool[at : at + count]

    def forget(self) -> None:
        self._pool, self._at = b"", 0
        self._lock = threading.Lock()


_RANDOM = _RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.forget)


def new_task_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as `uuid.uuid4().hex`."""
    raw = bytearray(_RANDOM.take(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


_Getter = Callable[[Any], Any]
_Setter = Callable[[Any, Any], None]


class _Message:
    """Validation, trusted construction and tensor-aware equality shared by the messages.

    The class tables below are filled in by ``_compiled`` once the dataclass exists.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]]
    TENSORS: ClassVar[str]
    """Attribute that holds the message's tensors."""
    CHECKS: ClassVar[Mapping[str, Validator]]
    """Attribute name -> its compiled check, in ``FIELDS`` order."""
    _SLOTS: ClassVar[tuple[tuple[str, _Getter, _Setter], ...]]
    _SETTERS: ClassVar[tuple[_Setter, ...]]
    _GET_ALL: ClassVar[Callable[[Any], tuple[Any, ...]]]
    """Every attribute's value at once, in ``_SETTERS`` order."""
    _DEFAULTS: ClassVar[tuple[tuple[str, _Setter, Any, Callable[[], Any] | None], ...]]
    _RECHECK: ClassVar[tuple[str, ...]]
    """Carried-over attributes that are checked again on derivation (``parameters``)."""

    def __post_init__(self) -> None:
        for attr, check in self.CHECKS.items():
            value = getattr(self, attr)
            checked = check(value)
            if checked is not value:
                object.__setattr__(self, attr, checked)

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied; checks only the changed fields (and parameters).

        The cheap equivalent of ``dataclasses.replace`` (which re-checks every field):
        unchanged values were checked when this message was built and are shared with it.
        Raises ``ContractError`` for an invalid value, ``TypeError`` for an unknown field.
        """
        cls = type(self)
        new = object.__new__(cls)
        for set_, value in zip(cls._SETTERS, cls._GET_ALL(self), strict=True):
            set_(new, value)
        cls._apply(new, changes)
        return new

    @classmethod
    def _derive(cls, carried: Mapping[str, Any], changes: Mapping[str, Any]) -> Self:
        """Build from ``carried`` values (already checked by another message) plus ``changes``.

        Fields in neither take their dataclass default.
        """
        new = object.__new__(cls)
        for attr, set_, default, factory in cls._DEFAULTS:
            if attr in carried:
                set_(new, carried[attr])
            elif attr not in changes:
                if factory is None and default is dataclasses.MISSING:
                    raise TypeError(f"{cls.__name__}: missing field {attr!r}")
                set_(new, default if factory is None else factory())
        cls._apply(new, changes)
        return new

    @classmethod
    def _trusted(cls, values: Mapping[str, Any]) -> Self:
        """Build from ``values`` that were all checked already (the decoder's path)."""
        new = object.__new__(cls)
        for attr, set_, default, factory in cls._DEFAULTS:
            if attr in values:
                set_(new, values[attr])
            else:
                set_(new, default if factory is None else factory())
        return new

    @classmethod
    def _apply(cls, new: Self, changes: Mapping[str, Any]) -> None:
        checks = cls.CHECKS
        for attr in cls._RECHECK:
            if attr not in changes:
                object.__setattr__(new, attr, checks[attr](getattr(new, attr)))
        for attr, value in changes.items():
            check = checks.get(attr)
            if check is None:
                raise TypeError(f"{cls.__name__} has no field {attr!r}")
            object.__setattr__(new, attr, check(value))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for attr, get, _set in self._SLOTS:
            mine, theirs = get(self), get(other)
            if attr == self.TENSORS:
                if not _tensors_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


_M = TypeVar("_M", bound=_Message)


def _compiled(cls: type[_M]) -> type[_M]:
    """Fill in a message dataclass's tables: checks, slot accessors and defaults."""
    attrs = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    by_attr = {spec.attr: spec for spec in cls.FIELDS}
    if set(attrs) != set(by_attr):
        raise TypeError(f"{cls.__name__}.FIELDS must cover exactly its fields {attrs}")
    cls.CHECKS = {spec.attr: spec.check for spec in cls.FIELDS}
    slots = {attr: cls.__dict__[attr] for attr in attrs}  # member descriptors (slots=True)
    cls._SLOTS = tuple((attr, slots[attr].__get__, slots[attr].__set__) for attr in attrs)
    cls._SETTERS = tuple(slots[attr].__set__ for attr in attrs)
    cls._GET_ALL = operator.attrgetter(*attrs)
    cls._DEFAULTS = tuple(
        (
            f.name,
            slots[f.name].__set__,
            f.default,
            None if f.default_factory is dataclasses.MISSING else f.default_factory,
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )
    cls._RECHECK = tuple(spec.attr for spec in cls.FIELDS if spec.kind is Kind.PARAMS)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        no_default = f.default is f.default_factory is dataclasses.MISSING
        if no_default and not by_attr[f.name].required:
            raise TypeError(f"{cls.__name__}.{f.name} has no default, so it must be required")
    return cls


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
_PRIORITY = Field("priority", Kind.ENUM, nullable=True, enum=Priority, choices=tuple(Priority))
_DEADLINE = Field("deadline_ms", Kind.COUNT, nullable=True)
_REPLY_TO = Field("reply_to", Kind.TOPIC, nullable=True)
_TRACEPARENT = Field("traceparent", Kind.TRACEPARENT, nullable=True)
_SUBMITTED = Field("submitted_at_ms", Kind.COUNT)
_TIMINGS = Field("timings_ms", Kind.TIMINGS)


@_compiled
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


@_compiled
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

    @classmethod
    def of_task(
        cls, carried: Mapping[str, Any], outputs: Mapping[str, TensorValue], **options: Any
    ) -> Self:
        """The result of one task of a decoded frame: ``carried`` holds fields the frame's
        decoder checked already (identity, submission time, model), so only ``outputs`` and
        ``options`` are checked here."""
        return cls._derive(carried, {"outputs": outputs, **options})


@_compiled
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


Message = InferenceRequest | InferenceResult | ErrorResult
"""Any message the codec encodes."""
