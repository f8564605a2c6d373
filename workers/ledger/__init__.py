"""The task ledger in Redis: where every task stands, moved only forward."""

from workers.ledger.ledger import Ledger, read_task
from workers.ledger.records import (
    MAX_ERROR_MESSAGE_BYTES,
    STATE_RANK,
    Outcome,
    TaskRecord,
    Transition,
    TransitionResult,
    reached,
)

__all__ = [
    "MAX_ERROR_MESSAGE_BYTES",
    "STATE_RANK",
    "Ledger",
    "Outcome",
    "TaskRecord",
    "Transition",
    "TransitionResult",
    "reached",
    "read_task",
]
