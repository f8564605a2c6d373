"""Message construction helpers, headers, keys and equality."""

from __future__ import annotations

import pickle
import time
from types import MappingProxyType

import numpy as np

from schemas import (
    JSON,
    MSGPACK,
    ContractError,
    ErrorCode,
    InferenceRequest,
    InferenceResult,
    headers_for,
    key_for,
    reply_content_type,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_new_fills_task_id_and_submission_time() -> None:
    before = time.time_ns() // 1_000_000
    request = InferenceRequest.new(tenant="acme", pipeline="p", inputs={})
    assert len(request.task_id) == 32
    int(request.task_id, 16)
    assert before <= request.submitted_at_ms <= time.time_ns() // 1_000_000


def test_headers_and_key() -> None:
    request = InferenceRequest.new(tenant="acme", pipeline="p", inputs={}, traceparent=TRACEPARENT)
    assert headers_for(request, JSON) == [
        ("content-type", b"application/json"),
        ("conveyor-schema", b"1.0"),
        ("conveyor-tenant", b"acme"),
        ("conveyor-task-id", request.task_id.encode()),
        ("traceparent", TRACEPARENT.encode()),
    ]
    assert "traceparent" not in dict(
        headers_for(InferenceRequest.new(tenant="a", pipeline="p", inputs={}))
    )
    assert key_for(request) == request.task_id.encode()


def test_result_encoding_follows_request_unless_overridden() -> None:
    plain = InferenceRequest.new(tenant="a", pipeline="p", inputs={})
    override = InferenceRequest.new(
        tenant="a", pipeline="p", inputs={}, response_content_type=MSGPACK
    )
    assert reply_content_type(plain, JSON) == JSON
    assert reply_content_type(override, JSON) == MSGPACK


def test_any_mapping_of_tensors_is_stored_as_a_private_dict() -> None:
    floats = {"x": np.zeros(3, np.float32)}  # dict[str, NDArray[float32]]: accepted by mypy
    request = InferenceRequest.new(tenant="a", pipeline="p", inputs=MappingProxyType(floats))
    assert type(request.inputs) is dict
    floats["y"] = np.ones(1, np.float32)
    assert list(request.inputs) == ["x"]
    result = InferenceResult(
        task_id="t",
        tenant="a",
        pipeline="p",
        outputs=MappingProxyType(floats),
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )
    assert type(result.outputs) is dict
    assert result.outputs is not floats


def test_equality_is_tensor_aware() -> None:
    def make(values: np.ndarray) -> InferenceRequest:
        return InferenceRequest(
            task_id="t", tenant="a", pipeline="p", inputs={"x": values}, submitted_at_ms=1
        )

    assert make(np.array([1.0, np.nan])) == make(np.array([1.0, np.nan]))
    assert make(np.array([1.0, 2.0])) != make(np.array([1.0, 3.0]))
    assert make(np.array([1, 2], np.int32)) != make(np.array([1, 2], np.int64))
    assert make(np.array(["a"])) != make(np.array([b"a"]))
    assert make(np.array([1.0], ">f8")) == make(np.array([1.0], "<f8"))


def test_contract_error_pickles() -> None:
    error = ContractError.at(ErrorCode.SHAPE_MISMATCH, "inputs[0].shape", "product 6 != 5 elements")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.field, copy.message) == (error.code, error.field, error.message)
    assert copy.message == "inputs[0].shape: product 6 != 5 elements"
