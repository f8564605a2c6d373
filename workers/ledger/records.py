"""What the ledger stores per task, and how it travels to and from the task hash.

Hash fields: ``state``, ``tenant``, ``pipeline``, ``attempts``, ``<state>_at_ms`` per reached
state (``accepted_at_ms``, ``done_at_ms``, ...), ``updated_at_ms``, ``error_code``,
``error_message``, ``error_stage``, ``model_name``, ``model_version``, ``batch_id``.
``transition.lua`` writes ``state``, ``attempts`` and the ``*_at_ms`` fields itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.messages import ERROR_STATUSES, Status

MAX_ERROR_MESSAGE_BYTES = 1024
"""Error messages are cut to this many UTF-8 bytes before they are stored."""


def timestamp_field(state: Status) -> str:
    """The hash field holding when a task reached `state` (same rule as transition.lua)."""
    return f"{state.value.lower()}_at_ms"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes, never splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


STATE_RANK: Mapping[Status, int] = {
    Status.ACCEPTED: 1,
    Status.PREPROCESSED: 2,
    Status.INFERRED: 3,
    **{status: 4 for status in (Status.DONE, *ERROR_STATUSES)},
}
"""Order of states (the same as transition.lua's): a task only ever moves to a higher rank."""


def reached(current: Status | None, target: Status) -> bool:
    """True when a task in `current` already is at `target` or beyond it."""
    return current is not None and STATE_RANK[current] >= STATE_RANK[target]


class Outcome(enum.StrEnum):
    """What a transition did to the stored record."""

    APPLIED = "APPLIED"
    """The state moved forward (higher rank) and the record was updated."""
    DUPLICATE = "DUPLICATE"
    """The task already was in this state: a redelivery; only `attempts` grew."""
    STALE = "STALE"
    """A lower rank, or a different terminal state: nothing changed."""


@dataclass(frozen=True)
class Transition:
    """One task reaching `state` at `at_ms` (epoch ms), with what is known about it then.

    `stage` names the stage reporting the transition; it is stored as `error_stage` when the
    transition carries an error (an `error_code`, or an error state such as FAILED).
    """

    task_id: str
    state: Status
    at_ms: int
    tenant: str | None = None
    pipeline: str | None = None
    stage: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    batch_id: str | None = None

    def __post_init__(self) -> None:
        if not self.task_id:
            raise ValueError(f"task_id must not be empty, got {self.task_id!r}")
        if not isinstance(self.state, Status):
            raise TypeError(f"state must be a Status, got {self.state!r}")
        if isinstance(self.at_ms, bool) or not isinstance(self.at_ms, int) or self.at_ms < 0:
            raise ValueError(f"at_ms must be an int >= 0, got {self.at_ms!r}")

    @property
    def is_final(self) -> bool:
        return self.state is Status.DONE or self.state in ERROR_STATUSES

    def shared(self) -> tuple[object, ...]:
        """Everything but the task: equal for transitions the ledger sends as one group."""
        return (
            self.state,
            self.at_ms,
            self.tenant,
            self.pipeline,
            self.stage,
            self.error_code,
            self.error_message,
            self.model_name,
            self.model_version,
            self.batch_id,
        )

    def fields(self) -> dict[str, str]:
        """The descriptive hash fields this transition writes when it applies."""
        is_error = self.error_code is not None or self.state in ERROR_STATUSES
        values: dict[str, str | int | None] = {
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "error_code": self.error_code,
            "error_message": (
                None
                if self.error_message is None
                else truncate_utf8(self.error_message, MAX_ERROR_MESSAGE_BYTES)
            ),
            "error_stage": self.stage if is_error else None,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "batch_id": self.batch_id,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class TransitionResult:
    """The outcome of one transition and the state stored after it."""

    task_id: str
    outcome: Outcome
    state: Status


def text(value: bytes | str) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class TaskRecord:
    """A task's ledger record as read back from Redis."""

    task_id: str
    state: Status
    tenant: str | None
    pipeline: str | None
    attempts: int
    timestamps_ms: dict[Status, int]
    """When the task reached each state it reached (jumped-over states are absent)."""
    error_code: str | None
    error_message: str | None
    error_stage: str | None
    model_name: str | None
    model_version: int | None
    batch_id: str | None
    updated_at_ms: int

    @classmethod
    def from_hash(cls, task_id: str, raw: Mapping[bytes | str, bytes | str]) -> TaskRecord | None:
        """The record in a task hash (bytes or decoded strings); None when there is none."""
        fields = {text(k): text(v) for k, v in raw.items()}
        if "state" not in fields:
            return None
        timestamps = {
            state: int(fields[timestamp_field(state)])
            for state in Status
            if timestamp_field(state) in fields
        }
        version = fields.get("model_version")
        return cls(
            task_id=task_id,
            state=Status(fields["state"]),
            tenant=fields.get("tenant"),
            pipeline=fields.get("pipeline"),
            attempts=int(fields.get("attempts", "0")),
            timestamps_ms=timestamps,
            error_code=fields.get("error_code"),
            error_message=fields.get("error_message"),
            error_stage=fields.get("error_stage"),
            model_name=fields.get("model_name"),
            model_version=None if version is None else int(version),
            batch_id=fields.get("batch_id"),
            updated_at_ms=int(fields["updated_at_ms"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (states as strings), for `conveyor status`."""
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "attempts": self.attempts,
            "timestamps_ms": {state.value: ms for state, ms in self.timestamps_ms.items()},
            "error_code": self.error_code,
            "error_message": self.error_message,
            "error_stage": self.error_stage,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "batch_id": self.batch_id,
            "updated_at_ms": self.updated_at_ms,
        }
