"""The task ledger in Redis: where every task stands, moved only forward."""

from workers.ledger.ledger import Ledger, read_task
from workers.ledger.records import (
    MAX_ERROR_MESSAGE_BYTES,
    Outcome,
    TaskRecord,
    Transition,
    TransitionResult,
)

__all__ = [
    "MAX_ERROR_MESSAGE_BYTES",
    "Ledger",
    "Outcome",
    "TaskRecord",
    "Transition",
    "TransitionResult",
    "read_task",
]
