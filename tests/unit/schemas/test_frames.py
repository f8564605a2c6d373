"""Task frames: round trips, a golden vector, views, splitting at the size limit, and fuzzing
(a corrupt frame raises ContractError and nothing else).

Regenerate the golden vector (only for an intended wire change, with a version bump) with
``.venv/bin/python -m tests.unit.schemas.test_frames``.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ContractError, DecodeLimits, ErrorCode
from schemas.frames import (
    FRAME_CONTENT_TYPE,
    Frame,
    decode_frame,
    encode_fitted,
    encode_frame,
    frame_headers,
)
from schemas.tensors import TensorRef

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "frames" / "frame-v2.0.msgpack"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def make_frame(tasks: int = 3, rows: list[int] | None = None, width: int = 4) -> Frame:
    rows = rows or [1] * tasks
    total = sum(rows)
    return Frame(
        tenant="acme",
        pipeline="text-embedding",
        lane="standard",
        task_ids=[f"task-{i}" for i in range(tasks)],
        row_counts=rows,
        submitted_at_ms=[1_700_000_000_000 + i for i in range(tasks)],
        deadline_ms=[None if i % 2 else 1_700_000_060_000 for i in range(tasks)],
        reply_to=[None if i % 2 else "conveyor.results.acme" for i in range(tasks)],
        content_types=[
            "application/msgpack" if i % 2 else "application/json" for i in range(tasks)
        ],
        traceparents=[TRACEPARENT if i % 2 else None for i in range(tasks)],
        parameters=[{"top_k": i} if i % 2 else {} for i in range(tasks)],
        attempts=[0] * tasks,
        timings_ms={"preprocess": [0.5 + i for i in range(tasks)]},
        tensors={
            "input_ids": np.arange(total * width, dtype=np.int64).reshape(total, width),
            "attention_mask": np.ones((total, width), dtype=np.bool_),
            "raw": np.array([[f"t{r}".encode()] for r in range(total)], dtype=object),
        },
        model_name="all-minilm-l6-v2",
        model_version=2,
        batch_id="batch-7",
    )


def assert_same(left: Frame, right: Frame) -> None:
    for name in Frame.__dataclass_fields__:
        a, b = getattr(left, name), getattr(right, name)
        if name == "tensors":
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].shape == b[key].shape
                assert a[key].dtype == b[key].dtype or a[key].dtype.kind in "OSU"
                assert np.array_equal(a[key], b[key])
        else:
            assert a == b, name


def test_a_frame_round_trips_and_its_tensors_are_views_of_the_record() -> None:
    frame = make_frame(rows=[1, 2, 1])
    value = encode_frame(frame)
    decoded = decode_frame(value)
    assert_same(decoded, frame)
    ids = decoded.tensors["input_ids"]
    assert isinstance(ids, np.ndarray)
    assert not ids.flags.writeable  # a read-only view over the record's bytes, no copy
    assert ids.base is not None


def test_the_encoder_writes_the_golden_bytes_and_reads_them_back() -> None:
    assert GOLDEN.read_bytes() == encode_frame(make_frame()), (
        "the frame wire changed: bump FRAME_VERSION and regenerate "
        "(python -m tests.unit.schemas.test_frames)"
    )
    assert_same(decode_frame(GOLDEN.read_bytes()), make_frame())


def test_headers_name_the_format() -> None:
    headers = frame_headers(make_frame())
    assert ("content-type", FRAME_CONTENT_TYPE.encode()) in headers
    assert ("conveyor-schema", b"frame/2.0") in headers
    assert ("conveyor-tasks", b"3") in headers


def test_slice_and_take_follow_the_row_counts() -> None:
    frame = make_frame(tasks=4, rows=[1, 3, 1, 2])
    part = frame.slice(1, 3)
    assert part.task_ids == ["task-1", "task-2"]
    assert part.rows == 4
    ids = frame.tensors["input_ids"]
    assert isinstance(ids, np.ndarray)
    sliced = part.tensors["input_ids"]
    assert isinstance(sliced, np.ndarray)
    assert np.shares_memory(sliced, ids)  # a view
    assert np.array_equal(sliced, ids[1:5])
    picked = frame.take([3, 0])
    assert picked.task_ids == ["task-3", "task-0"]
    assert picked.row_counts == [2, 1]
    taken = picked.tensors["input_ids"]
    assert isinstance(taken, np.ndarray)
    assert np.array_equal(taken, ids[[5, 6, 0]])
    assert picked.timings_ms == {"preprocess": [3.5, 0.5]}
    assert len(frame.take([])) == 0


def test_a_frame_over_the_limit_splits_into_parts_that_fit() -> None:
    frame = make_frame(tasks=64, width=256)
    whole = len(encode_frame(frame))
    limit = whole // 5
    parts = encode_fitted(frame, limit)
    assert len(parts) > 1
    assert all(len(value) <= limit for value, _ in parts)
    assert [t for value, _ in parts for t in decode_frame(value).task_ids] == frame.task_ids
    assert encode_fitted(frame, whole) == [(encode_frame(frame), frame)]


def test_a_single_task_over_the_limit_goes_alone() -> None:
    frame = make_frame(tasks=1, width=4096)
    (value, part), *rest = encode_fitted(frame, 1024)
    assert not rest
    assert part is frame
    assert len(value) > 1024


def test_claim_checked_tensors_travel_as_references() -> None:
    ref = TensorRef(key="conveyor:claim:abc", datatype="FP32", shape=(3, 4), nbytes=48)
    frame = make_frame().evolve(tensors={"big": ref})
    decoded = decode_frame(encode_frame(frame))
    assert decoded.tensors == {"big": ref}
    with pytest.raises(ContractError):
        decoded.slice(0, 1)  # must be resolved first


def _body(**changes: Any) -> bytes:
    body = msgpack.unpackb(encode_frame(make_frame()), raw=False)
    body.update(changes)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED),
        (msgpack.packb([1, 2]), ErrorCode.MALFORMED),
        (_body(v=[3, 0]), ErrorCode.UNSUPPORTED_SCHEMA_VERSION),
        (_body(v=None), ErrorCode.MISSING_FIELD),
        (_body(task_ids=["a", "b"]), ErrorCode.SHAPE_MISMATCH),
        (_body(task_ids=["a", "b", "bad id"]), ErrorCode.INVALID_VALUE),
        (_body(row_counts=[1, 0, 1]), ErrorCode.INVALID_VALUE),
        (_body(content_types=["a", "b", "c"]), ErrorCode.UNSUPPORTED_CONTENT_TYPE),
        (_body(tenant=""), ErrorCode.INVALID_VALUE),
        (_body(timings_ms={"x": [1.0]}), ErrorCode.INVALID_VALUE),
        (_body(tensors={"x": {"datatype": "FP32", "shape": [2, 1], "data": b"\0" * 8}}),
         ErrorCode.SHAPE_MISMATCH),
        (_body(tensors={"x": {"datatype": "FP32", "shape": [3, 1], "data": b"\0" * 8}}),
         ErrorCode.SHAPE_MISMATCH),
        (_body(tensors={"x": {"datatype": "NOPE", "shape": [3], "data": b""}}),
         ErrorCode.INVALID_VALUE),
    ],
)  # fmt: skip
def test_a_broken_frame_names_what_is_wrong(value: bytes, code: ErrorCode) -> None:
    with pytest.raises(ContractError) as raised:
        decode_frame(value)
    assert raised.value.code == code


def test_limits_apply_before_anything_large_is_built() -> None:
    value = encode_frame(make_frame())
    with pytest.raises(ContractError) as raised:
        decode_frame(value, DecodeLimits(max_message_bytes=len(value) - 1))
    assert raised.value.code == ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(ContractError) as raised:
        decode_frame(value, DecodeLimits(max_tensor_elements=1))
    assert raised.value.code == ErrorCode.PAYLOAD_TOO_LARGE


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_contract_errors_only(value: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode_frame(value)


@settings(max_examples=600, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=1, max_value=8))
def test_mutated_frames_raise_contract_errors_only(seed: int, flips: int) -> None:
    rng = random.Random(seed)
    value = bytearray(encode_frame(make_frame(rows=[1, 2, 1])))
    for _ in range(flips):
        value[rng.randrange(len(value))] = rng.randrange(256)
    try:
        decoded = decode_frame(bytes(value))
    except ContractError:
        return
    # What still decodes is a consistent frame: its tensors hold the rows its tasks own.
    assert all(v.shape[0] == decoded.rows for v in decoded.tensors.values())


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_bytes(encode_frame(make_frame()))
    print(f"wrote {GOLDEN}")
