"""What flows through a stage: consumed records in, records to produce and ledger moves out."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from schemas import (
    ClaimCheck,
    ContractError,
    ErrorCode,
    ErrorResult,
    Message,
    Status,
    encode,
    headers_for,
    key_for,
)
from schemas.fields import MSGPACK
from schemas.frames import Frame, encode_fitted, frame_headers
from workers.ledger import Transition

Headers = list[tuple[str, bytes]]


@dataclass
class Work:
    """One consumed record on its way through a stage."""

    record: ConsumerRecord[bytes, bytes]
    message: Any = None
    """The decoded message (stage-specific); None when decoding failed."""
    error: ContractError | None = None
    rows: int = 1
    batch_key: Hashable = None
    received_at: float = field(default_factory=time.monotonic)
    generation: int = 0
    """The runner's assignment generation when the record was taken."""
    lane: str = "standard"
    """The priority lane the record came in on (its topic's), or the tenant's after admission."""
    tenant: str = ""
    """Whose share of the stage the record is served from (deficit round robin)."""
    cost: float = 1.0
    """What fair sharing counts for the record: rows, or tokens for models that count them."""
    admitted: bool = False
    """Admission took the record's rate-quota token already (a delayed record comes back)."""
    slot: bool | None = None
    """The tenant's in-flight slot as asked with the task id's claim, in the same round trip:
    True taken (or the task's already), False refused at the cap; None: not asked yet."""
    may_be_redelivered: bool = True
    """An earlier owner of the partition may have done this record (see
    `OffsetTracker.may_be_redelivered`): only then is the ledger asked before the work."""
    parts: list[int] | None = None
    """A frame cut into parts at intake: how many parts of the record are unfinished (one
    list shared by the parts); None for a record taken whole."""

    def finish_part(self) -> bool:
        """Count this part finished; True when the whole record is (its offset may move)."""
        if self.parts is None:
            return True
        self.parts[0] -= 1
        return self.parts[0] == 0

    @property
    def tasks(self) -> int:
        """Tasks the record carries: a frame's count, else one."""
        return len(self.message) if isinstance(self.message, Frame) else 1

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)

    def header(self, name: str) -> str | None:
        for key, value in self.record.headers or ():
            if key == name:
                return bytes(value).decode("utf-8", "replace")
        return None


DEFAULT_LANE = "standard"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    kind: str = "forward"
    """"forward" (to the next stage), "result", "error" or "dead_letter"."""
    tasks: int = 1
    """Tasks the record carries (a frame's count)."""


@dataclass(frozen=True)
class Finished:
    """A task a batch answered (DONE or an error state): what the metrics count."""

    pipeline: str | None
    tenant: str
    lane: str
    status: Status
    code: str | None = None
    latency_s: float | None = None
    """From the request's submitted_at to now, for answered tasks."""


DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
"""Frames are split below this many bytes unless the runner says otherwise."""


@dataclass(frozen=True)
class _Pending:
    topic: str
    message: Message | Frame
    content_type: str
    kind: str
    key: bytes | None = None


@dataclass
class StageOutput:
    outgoing: list[Outgoing] = field(default_factory=list)
    """Records ready to produce (dead letters carry the original bytes)."""
    transitions: list[Transition] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    """Messages to encode; `records()` turns them into `outgoing`."""
    model_s: float = 0.0
    """Seconds the model ran for this output, waiting for it left out (0: no model)."""

    def merge(self, other: StageOutput) -> StageOutput:
        self.outgoing.extend(other.outgoing)
        self.transitions.extend(other.transitions)
        self.finished.extend(other.finished)
        self.pending.extend(other.pending)
        self.model_s += other.model_s
        return self

    def forward(
        self,
        topic: str,
        message: Message | Frame,
        content_type: str = MSGPACK,
        kind: str = "forward",
        key: bytes | None = None,
    ) -> None:
        """`key`: the record's Kafka key, when not the task id (see `lanes.affinity`)."""
        self.pending.append(_Pending(topic, message, content_type, kind, key))

    async def records(
        self, claims: ClaimCheck | None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    ) -> list[Outgoing]:
        """Every record to produce. Tensors between stages above the claim-check threshold
        go to Redis first; results and errors stay whole for clients without Redis. A frame
        is split until each part fits `max_record_bytes`."""
        encoded = []
        for item in self.pending:
            message = item.message
            if isinstance(message, Frame):
                frame = await claims.offload(message) if claims is not None else message
                for value, part in encode_fitted(frame, max_record_bytes):
                    key = item.key or part.task_ids[0].encode("utf-8")
                    encoded.append(Outgoing(item.topic, key, value, frame_headers(part), item.kind))
                continue
            if claims is not None and item.kind == "forward":
                message = await claims.offload(message)
            encoded.append(
                Outgoing(
                    item.topic,
                    item.key or key_for(message),
                    encode(message, item.content_type),
                    headers_for(message, item.content_type),
                    item.kind,
                )
            )
        self.pending.clear()
        self.outgoing.extend(encoded)
        return self.outgoing


@dataclass(frozen=True)
class TaskIdentity:
    """Who a failed record belongs to, as far as it can be told."""

    task_id: str
    tenant: str
    pipeline: str | None
    reply_to: str | None
    content_type: str
    traceparent: str | None
    lane: str = DEFAULT_LANE


def fail(
    output: StageOutput,
    work: Work,
    identity: TaskIdentity,
    error: ContractError,
    *,
    stage: str,
    results_topic: str,
    dlq_topic: str,
    status: Status = Status.FAILED,
    attempts: int = 1,
) -> None:
    """Answer a task that cannot be served: an error result, a dead letter, a ledger entry."""
    # The message may quote undecodable input: keep it encodable whatever it holds.
    message = error.message.encode("utf-8", "replace").decode("utf-8")
    try:
        result = ErrorResult.new(
            task_id=identity.task_id,
            tenant=identity.tenant,
            code=error.code,
            message=message,
            stage=stage,
            status=status,
            pipeline=identity.pipeline,
            traceparent=identity.traceparent,
        )
    except ContractError:  # an identity the contract refuses: answer with what is certain
        result = ErrorResult.new(
            task_id=identity.task_id,
            tenant=identity.tenant,
            code=error.code,
            message=message.encode("ascii", "replace").decode("ascii"),
            stage=stage,
            status=status,
        )
    output.forward(identity.reply_to or results_topic, result, identity.content_type, "error")
    record = work.record
    headers = [
        *(record.headers or ()),
        *dead_letter_headers(work, identity.task_id, error, message, stage, attempts),
    ]
    output.outgoing.append(
        Outgoing(dlq_topic, record.key, record.value or b"", headers, "dead_letter")
    )
    output.finished.append(
        Finished(identity.pipeline, identity.tenant, identity.lane, status, error.code.value)
    )
    if error.code is ErrorCode.DUPLICATE_ID:
        return  # the ledger record (and quota slot) are the first request's, not this one's
    output.transitions.append(
        Transition(
            task_id=identity.task_id,
            state=status,
            at_ms=int(time.time() * 1000),
            tenant=identity.tenant,
            pipeline=identity.pipeline,
            stage=stage,
            error_code=error.code.value,
            error_message=message,
        )
    )


def dead_letter_headers(
    work: Work, task_id: str, error: ContractError, message: str, stage: str, attempts: int
) -> list[tuple[str, bytes]]:
    """Why a dead letter is there and where it came from (after its own headers)."""
    record = work.record
    return [
        ("conveyor-error-code", error.code.value.encode()),
        ("conveyor-error-message", message[:1024].encode("utf-8", "replace")),
        ("conveyor-error-stage", stage.encode()),
        ("conveyor-attempts", str(attempts).encode()),
        ("conveyor-task-id", task_id.encode("utf-8")),
        ("conveyor-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
    ]


def internal_error(exc: BaseException) -> ContractError:
    return ContractError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


class BatchFailed(Exception):
    """A stage could not process a batch as a whole (the model raised, a GPU ran out of
    memory). The runner splits the batch to find the records that fail and retries the rest;
    `transient` failures (out of memory, timeouts) are retried before any record is blamed."""

    def __init__(self, cause: BaseException, *, transient: bool = False) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.transient = transient
