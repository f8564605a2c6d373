"""The ledger's records without Redis: validation, the fields written, parsing back."""

from __future__ import annotations

import pytest

from schemas.messages import Status
from workers.ledger import MAX_ERROR_MESSAGE_BYTES, TaskRecord, Transition
from workers.ledger.records import timestamp_field, truncate_utf8


def test_truncation_never_splits_a_character() -> None:
    assert truncate_utf8("short", 10) == "short"
    assert truncate_utf8("aé", 2) == "a"
    assert truncate_utf8("€" * 400, MAX_ERROR_MESSAGE_BYTES) == "€" * 341


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_id": ""}, "task_id must not be empty"),
        ({"at_ms": -1}, "at_ms must be an int >= 0, got -1"),
        ({"at_ms": 1.5}, "at_ms must be an int >= 0, got 1.5"),
    ],
)
def test_transition_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"task_id": "t", "state": Status.DONE, "at_ms": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        Transition(**values)  # type: ignore[arg-type]


def test_transition_rejects_a_state_that_is_not_a_status() -> None:
    with pytest.raises(TypeError, match="state must be a Status, got 'DONE'"):
        Transition("t", "DONE", 1)  # type: ignore[arg-type]


def test_fields_are_only_what_is_known_and_stage_only_for_errors() -> None:
    assert Transition("t", Status.PREPROCESSED, 1, tenant="a", stage="preprocess").fields() == {
        "tenant": "a"
    }
    assert Transition("t", Status.FAILED, 1, stage="inference", model_version=2).fields() == {
        "error_stage": "inference",
        "model_version": "2",
    }
    long = Transition("t", Status.REJECTED, 1, error_code="X", error_message="x" * 5000)
    assert len(long.fields()["error_message"]) == MAX_ERROR_MESSAGE_BYTES


def test_record_parses_bytes_and_serialises() -> None:
    raw: dict[bytes | str, bytes | str] = {
        b"state": b"FAILED",
        b"attempts": b"2",
        b"accepted_at_ms": b"10",
        b"failed_at_ms": b"20",
        b"updated_at_ms": b"20",
        b"error_code": b"MODEL_ERROR",
        b"model_version": b"4",
    }
    record = TaskRecord.from_hash("t", raw)
    assert record is not None
    assert record.state is Status.FAILED
    assert record.timestamps_ms == {Status.ACCEPTED: 10, Status.FAILED: 20}
    assert (record.attempts, record.model_version, record.tenant) == (2, 4, None)
    assert record.to_dict()["timestamps_ms"] == {"ACCEPTED": 10, "FAILED": 20}
    assert TaskRecord.from_hash("t", {}) is None


def test_timestamp_field_names() -> None:
    assert timestamp_field(Status.PREPROCESSED) == "preprocessed_at_ms"
