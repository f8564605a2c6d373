"""Round-trip properties: decode(encode(m)) == m for every message type, dtype and encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    JSON,
    MSGPACK,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
    arrays_of,
    decode_request,
    decode_result,
    encode,
    headers_for,
)
from tests.unit.schemas.schema_strategies import (
    NUMERIC_DTYPES,
    errors,
    messages,
    results,
)

ENCODINGS = [MSGPACK, JSON]


def decode_as(message: Message, value: bytes, headers: Any = None) -> Message:
    if isinstance(message, InferenceRequest):
        return decode_request(value, headers)
    return decode_result(value, headers)


def assert_round_trip(message: Message, content_type: str) -> None:
    value = encode(message, content_type)
    assert decode_as(message, value, headers_for(message, content_type)) == message
    assert decode_as(message, value) == message  # content type sniffed


@settings(max_examples=150, deadline=None)
@given(message=messages(finite=False))
def test_msgpack_round_trip_keeps_nan_and_inf(message: Message) -> None:
    assert_round_trip(message, MSGPACK)


@settings(max_examples=150, deadline=None)
@given(message=messages())
def test_json_round_trip_is_exact(message: Message) -> None:
    assert_round_trip(message, JSON)


@pytest.mark.parametrize("content_type", ENCODINGS)
@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 3), (1, 1, 1, 5)], ids=str)
def test_every_dtype_and_shape(
    dtype: np.dtype[Any], shape: tuple[int, ...], content_type: str
) -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 2, size=shape) if dtype.kind == "b" else rng.random(shape) * 100
    array = np.asarray(values).astype(dtype)
    request = InferenceRequest.new(tenant="acme", pipeline="p", inputs={"x": array})
    decoded = decode_request(encode(request, content_type))
    assert decoded == request
    x = arrays_of(decoded.inputs)["x"]
    assert x.dtype == dtype.newbyteorder("<")
    assert x.shape == shape


@pytest.mark.parametrize("content_type", ENCODINGS)
def test_large_float32_tensor(content_type: str) -> None:
    array = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)
    result = InferenceResult(
        task_id="t-1",
        tenant="acme",
        pipeline="p",
        outputs={"y": array},
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )
    decoded = decode_result(encode(result, content_type))
    assert isinstance(decoded, InferenceResult)
    np.testing.assert_array_equal(decoded.outputs["y"], array)


@pytest.mark.parametrize("content_type", ENCODINGS)
def test_string_tensors_follow_the_rule(content_type: str) -> None:
    request = InferenceRequest.new(
        tenant="acme",
        pipeline="p",
        inputs={
            "u": np.array(["a", "ü"]),
            "s": np.array([b"\x00", b"\xff\xfe"]),
            "o": np.array([["x"], ["y"]], dtype=object),
            "empty": np.empty((0, 2), dtype=object),
        },
    )
    decoded = decode_request(encode(request, content_type))
    arrays = arrays_of(decoded.inputs)
    assert [type(x) for x in arrays["u"].flat] == [str, str]
    assert [type(x) for x in arrays["s"].flat] == [bytes, bytes]
    assert arrays["o"].shape == (2, 1)
    assert arrays["empty"].shape == (0, 2)
    assert decoded == request


@pytest.mark.parametrize("content_type", ENCODINGS)
def test_decoded_arrays_are_read_only(content_type: str) -> None:
    request = InferenceRequest.new(
        tenant="acme", pipeline="p", inputs={"x": np.ones(3), "s": np.array(["a"])}
    )
    arrays = arrays_of(decode_request(encode(request, content_type)).inputs)
    assert not arrays["x"].flags.writeable
    assert not arrays["s"].flags.writeable


def test_json_float32_survives_readers_that_parse_to_double() -> None:
    # 7.038531e-26 is float32 0x15ae43fd's shortest float32 digits, but parsed to double and
    # narrowed it becomes the next float32: JSON must carry the widened float64 digits.
    tricky = np.array([0x15AE43FD, 0x3EAAAAAB], dtype=np.uint32).view(np.float32)
    request = InferenceRequest.new(tenant="acme", pipeline="p", inputs={"x": tricky})
    value = encode(request, JSON)
    assert b"7.038531e-26" not in value
    decoded = arrays_of(decode_request(value).inputs)["x"]
    assert decoded.view(np.uint32).tolist() == tricky.view(np.uint32).tolist()


def test_json_accepts_nested_data_and_the_v2_example() -> None:
    body = (
        b'{"id": "t-1", "tenant": "acme", "pipeline": "text-embedding", "inputs": ['
        b'{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello world"]},'
        b'{"name": "m", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]}]}'
    )
    request = decode_request(body)
    assert request.task_id == "t-1"
    inputs = arrays_of(request.inputs)
    assert inputs["text"].tolist() == ["hello world"]
    np.testing.assert_array_equal(inputs["m"], [[1, 2.5], [3, 4]])


@given(st.sampled_from([errors(), results()]).flatmap(lambda s: s), st.sampled_from(ENCODINGS))
@settings(max_examples=50, deadline=None)
def test_decode_result_tells_results_from_errors(
    message: InferenceResult | ErrorResult, content_type: str
) -> None:
    assert type(decode_result(encode(message, content_type))) is type(message)
