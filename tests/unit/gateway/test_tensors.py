"""The gateway's V2 edge codec: JSON data, the binary tensor extension, raw contents, and
the errors (status and code) a malformed or oversized request gets."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from schemas import DEFAULT_LIMITS, ContractError, DecodeLimits, ErrorCode
from workers.gateway.errors import GatewayError, status_of
from workers.gateway.tensors import Array, InferBody, http_response, parse_http, raw_of

LIMITS = DecodeLimits(
    max_message_bytes=1 << 20, max_tensors=4, max_tensor_elements=1024, max_string_bytes=64
)


def _binary_body(head: dict[str, object], *chunks: bytes) -> tuple[bytes, int]:
    json_part = orjson.dumps(head)
    return json_part + b"".join(chunks), len(json_part)


def test_json_inputs_flat_or_nested_and_parameters_split() -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "parameters": {"top_k": 2, "binary_data_output": True, "timeout": 2_000_000},
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
                {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["hé"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    parsed = parse_http(body, None, LIMITS, text=True)
    assert parsed.id == "r1"
    assert parsed.inputs["x"].dtype == np.float32
    assert parsed.inputs["x"].tolist() == [[1, 2], [3, 4.5]]
    assert parsed.inputs["t"].tolist() == ["hé"]
    assert parsed.parameters == {"top_k": 2}
    assert parsed.all_binary
    assert parsed.timeout_s == 2.0
    assert parsed.outputs == ("y",)
    assert parsed.binary_outputs == frozenset({"y"})


def test_binary_extension_reads_raw_tensors_without_copying() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    texts = raw_of(np.array(["ab", "ünï"], dtype=object))
    body, length = _binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(texts)},
                },
            ]
        },
        x.tobytes(),
        texts,
    )
    parsed = parse_http(body, length, LIMITS, text=True)
    assert np.array_equal(parsed.inputs["x"], x)
    assert not parsed.inputs["x"].flags.owndata  # a view over the request body
    assert parsed.inputs["t"].tolist() == ["ab", "ünï"]
    binary = parse_http(body, length, LIMITS, text=False)
    assert binary.inputs["t"].tolist() == [b"ab", "ünï".encode()]


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, ErrorCode.SHAPE_MISMATCH),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}, ErrorCode.DTYPE_MISMATCH),
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, ErrorCode.INVALID_VALUE),
        ({"name": "x", "datatype": "INT8", "shape": [1], "data": [999]}, ErrorCode.INVALID_VALUE),
        (
            {"name": "x", "datatype": "FP32", "shape": [4096], "data": []},
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
        (
            {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["x" * 65]},
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
    ],
)
def test_bad_tensors_are_400_and_oversized_ones_413(
    entry: dict[str, object], code: ErrorCode
) -> None:
    body = orjson.dumps({"inputs": [entry]})
    with pytest.raises(ContractError) as caught:
        parse_http(body, None, LIMITS, text=True)
    assert caught.value.code == code
    assert GatewayError.of_contract(caught.value).status == (
        413 if code == ErrorCode.PAYLOAD_TOO_LARGE else 400
    )


def test_malformed_bodies_are_400() -> None:
    for body, length in ((b"{", None), (b"[]", None), (b'{"inputs": []}', None), (b"{}", 99)):
        with pytest.raises(GatewayError) as caught:
            parse_http(body, length, DEFAULT_LIMITS, text=True)
        assert caught.value.status == 400
    x = np.zeros(2, np.float32)
    body, length = _binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        },
        x.tobytes(),
        b"extra",
    )
    with pytest.raises(GatewayError, match="belong to no input"):
        parse_http(body, length, DEFAULT_LIMITS, text=True)


def test_bad_utf8_in_a_text_input_is_400() -> None:
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    body, length = _binary_body(
        {
            "inputs": [
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        },
        raw,
    )
    with pytest.raises(ContractError) as caught:
        parse_http(body, length, DEFAULT_LIMITS, text=True)
    assert caught.value.code == ErrorCode.BAD_UTF8


def test_response_json_and_binary_outputs_round_trip() -> None:
    probabilities = np.array([[0.1, 0.9]], dtype=np.float32)
    indices = np.array([[1]], dtype=np.int64)
    outputs: dict[str, Array] = {"probabilities": probabilities, "top_k_indices": indices}
    head = {"model_name": "m", "model_version": "1", "id": "r"}
    payload, length = http_response(head, outputs, InferBody(None, {}))
    assert length is None
    answer = orjson.loads(payload)
    got = np.array(answer["outputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(got, probabilities.reshape(-1))  # exact through JSON
    payload, length = http_response(
        head, outputs, InferBody(None, {}, outputs=("top_k_indices",), all_binary=True)
    )
    assert length is not None
    answer = orjson.loads(payload[:length])
    (entry,) = answer["outputs"]
    assert entry["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(payload[length:], np.int64).tolist() == [1]
    with pytest.raises(GatewayError):
        http_response(head, outputs, InferBody(None, {}, outputs=("nope",)))


def test_contract_codes_map_to_statuses() -> None:
    assert status_of(ErrorCode.QUOTA_EXCEEDED) == 429
    assert status_of(ErrorCode.UNKNOWN_PIPELINE) == 404
    assert status_of(ErrorCode.PAYLOAD_TOO_LARGE) == 413
    assert status_of(ErrorCode.DEADLINE_EXCEEDED) == 504
    assert status_of(ErrorCode.SHAPE_MISMATCH) == 400
