"""Every contract violation maps to its ErrorCode, and the message names the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from schemas import (
    JSON,
    MSGPACK,
    ContractError,
    DecodeLimits,
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Status,
    content_type_of,
    decode_request,
    decode_result,
    encode,
)
from tests.unit.schemas.wire_helpers import frame, json_bytes, unframe, v2_request, with_tensor

JSON_HEADERS = [("content-type", b"application/json")]


def raises(code: ErrorCode, field: str | None, call: Callable[[], Any]) -> ContractError:
    with pytest.raises(ContractError) as info:
        call()
    error = info.value
    assert error.code == code, error
    assert error.field == field, error
    if field is not None:
        assert error.message.startswith(f"{field}: "), error.message
    return error


def request_frame(**changes: Any) -> bytes:
    """A valid msgpack request frame with envelope ``changes`` (None deletes)."""
    request = InferenceRequest(
        task_id="t-1", tenant="acme", pipeline="p", inputs={"x": np.arange(6, dtype=np.float32)}
    )
    envelope, data = unframe(encode(request))
    for key, value in changes.items():
        if value is None:
            envelope.pop(key)
        else:
            envelope[key] = value
    return frame(envelope, data)


def tensor_frame(section: bytes = bytes(24), **changes: Any) -> bytes:
    """A msgpack request frame whose single tensor entry has ``changes`` (None deletes)."""
    entry = {"name": "x", "datatype": "FP32", "shape": [6], "offset": 0, "nbytes": 24} | changes
    entry = {key: value for key, value in entry.items() if value is not None}
    envelope = {"schema_version": "1.0", "id": "t-1", "tenant": "acme", "pipeline": "p"}
    return frame(envelope | {"inputs": [entry]}, section)


JSON_CASES: list[tuple[str, bytes, ErrorCode, str | None]] = [
    ("malformed", b'{"id": ', ErrorCode.MALFORMED, "body"),
    ("deep nesting", b'{"a":' + b"[" * 100_000, ErrorCode.MALFORMED, "body"),
    ("id wrong type", json_bytes(v2_request(id=5)), ErrorCode.WRONG_TYPE, "id"),
    ("id empty", json_bytes(v2_request(id="")), ErrorCode.INVALID_VALUE, "id"),
    ("id too long", json_bytes(v2_request(id="a" * 129)), ErrorCode.INVALID_VALUE, "id"),
    ("missing tenant", json_bytes(v2_request(tenant=None)), ErrorCode.MISSING_FIELD, "tenant"),
    ("missing inputs", json_bytes(v2_request(inputs=None)), ErrorCode.MISSING_FIELD, "inputs"),
    ("unknown field", json_bytes(v2_request(deadline=5)), ErrorCode.UNKNOWN_FIELD, "deadline"),
    (
        "unknown tensor key",
        json_bytes(with_tensor(1, foo=1)),
        ErrorCode.UNKNOWN_FIELD,
        "inputs[1].foo",
    ),
    ("inputs not a list", json_bytes(v2_request(inputs={})), ErrorCode.WRONG_TYPE, "inputs"),
    (
        "unknown datatype",
        json_bytes(with_tensor(1, datatype="FP128")),
        ErrorCode.INVALID_VALUE,
        "inputs[1].datatype",
    ),
    (
        "string in FP32",
        json_bytes(with_tensor(1, data=[1, 2, 3, 4, 5, "6"])),
        ErrorCode.DTYPE_MISMATCH,
        "inputs[1].data",
    ),
    (
        "bool in FP32",
        json_bytes(with_tensor(1, data=[1, 2, 3, 4, 5, True])),
        ErrorCode.DTYPE_MISMATCH,
        "inputs[1].data",
    ),
    (
        "float in INT32",
        json_bytes(with_tensor(1, datatype="INT32", data=[1, 2, 3, 4, 5, 6.5])),
        ErrorCode.DTYPE_MISMATCH,
        "inputs[1].data",
    ),
    (
        "number in BYTES",
        json_bytes(with_tensor(0, data=[1])),
        ErrorCode.DTYPE_MISMATCH,
        "inputs[0].data",
    ),
    (
        "element count",
        json_bytes(with_tensor(1, data=[1, 2, 3, 4, 5])),
        ErrorCode.SHAPE_MISMATCH,
        "inputs[1].shape",
    ),
    (
        "nested rows",
        json_bytes(with_tensor(1, data=[[1, 2, 3], [4, 5]])),
        ErrorCode.SHAPE_MISMATCH,
        "inputs[1].shape",
    ),
    (
        "negative dim",
        json_bytes(with_tensor(1, shape=[-2, -3])),
        ErrorCode.SHAPE_MISMATCH,
        "inputs[1].shape",
    ),
    (
        "shape wrong type",
        json_bytes(with_tensor(1, shape="2x3")),
        ErrorCode.WRONG_TYPE,
        "inputs[1].shape",
    ),
    (
        "out of range INT8",
        json_bytes(with_tensor(1, datatype="INT8", data=[1, 2, 3, 4, 5, 300])),
        ErrorCode.INVALID_VALUE,
        "inputs[1].data",
    ),
    (
        "negative UINT64",
        json_bytes(with_tensor(1, datatype="UINT64", data=[1, 2, 3, 4, 5, -1])),
        ErrorCode.INVALID_VALUE,
        "inputs[1].data",
    ),
    (
        "FP16 overflow",
        json_bytes(with_tensor(1, datatype="FP16", data=[1, 2, 3, 4, 5, 1e6])),
        ErrorCode.INVALID_VALUE,
        "inputs[1].data[5]",
    ),
    (
        "NaN",
        b'{"id":"t","tenant":"a","pipeline":"p","inputs":'
        b'[{"name":"x","datatype":"FP32","shape":[2],"data":[1.0,NaN]}]}',
        ErrorCode.NAN_FORBIDDEN,
        "inputs[0].data[1]",
    ),
    (
        "Infinity literal",
        b'{"id":"t","tenant":"a","pipeline":"p","inputs":'
        b'[{"name":"x","datatype":"FP64","shape":[1],"data":[1e400]}]}',
        ErrorCode.NAN_FORBIDDEN,
        "inputs[0].data[0]",
    ),
    (
        "NaN in parameters",
        b'{"id":"t","tenant":"a","pipeline":"p","inputs":[],"parameters":{"t":NaN}}',
        ErrorCode.NAN_FORBIDDEN,
        "parameters.t",
    ),
    (
        "bad UTF-8 in tenant",
        b'{"id":"t","tenant":"ac\xffme","pipeline":"p","inputs":[]}',
        ErrorCode.BAD_UTF8,
        "tenant",
    ),
    (
        "bad UTF-8 in text tensor",
        b'{"id":"t","tenant":"a","pipeline":"p","inputs":'
        b'[{"name":"s","datatype":"BYTES","shape":[1],"data":["\xc3("]}]}',
        ErrorCode.BAD_UTF8,
        "inputs[0].data[0]",
    ),
    (
        "lone surrogate escape",
        b'{"id":"t","tenant":"a","pipeline":"p","inputs":[],"parameters":{"k":"\\ud800"}}',
        ErrorCode.BAD_UTF8,
        "parameters.k",
    ),
    (
        "bad base64",
        json_bytes(with_tensor(0, data=["***"], parameters={"content_type": "base64"})),
        ErrorCode.INVALID_VALUE,
        "inputs[0].data[0]",
    ),
    (
        "unknown string kind",
        json_bytes(with_tensor(0, parameters={"content_type": "utf16"})),
        ErrorCode.INVALID_VALUE,
        "inputs[0].parameters.content_type",
    ),
    (
        "duplicate tensor",
        json_bytes(v2_request(inputs=[v2_request()["inputs"][0]] * 2)),
        ErrorCode.INVALID_VALUE,
        "inputs[1].name",
    ),
    (
        "bad traceparent",
        json_bytes(v2_request(traceparent="00-zz")),
        ErrorCode.INVALID_VALUE,
        "traceparent",
    ),
    (
        "model_version 0",
        json_bytes(v2_request(model_version=0)),
        ErrorCode.INVALID_VALUE,
        "model_version",
    ),
    (
        "model_version bool",
        json_bytes(v2_request(model_version=True)),
        ErrorCode.WRONG_TYPE,
        "model_version",
    ),
    (
        "bad reply_to",
        json_bytes(v2_request(reply_to="no spaces")),
        ErrorCode.INVALID_VALUE,
        "reply_to",
    ),
    (
        "unsupported response type",
        json_bytes(v2_request(response_content_type="text/csv")),
        ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        "response_content_type",
    ),
    (
        "parameters not an object",
        json_bytes(v2_request(parameters=[1])),
        ErrorCode.WRONG_TYPE,
        "parameters",
    ),
    (
        "schema major 2",
        json_bytes(v2_request(schema_version="2.0")),
        ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
        "schema_version",
    ),
    (
        "schema version garbage",
        json_bytes(v2_request(schema_version="one")),
        ErrorCode.INVALID_VALUE,
        "schema_version",
    ),
    ("top-level list", b"[1, 2]", ErrorCode.WRONG_TYPE, "body"),
]


@pytest.mark.parametrize(
    ("value", "code", "field"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_json_request_errors(value: bytes, code: ErrorCode, field: str) -> None:
    raises(code, field, lambda: decode_request(value, JSON_HEADERS))


ENVELOPE = {"schema_version": "1.0", "id": "t-1", "tenant": "acme", "pipeline": "p", "inputs": []}
MSGPACK_CASES: list[tuple[str, bytes, ErrorCode, str | None]] = [
    ("empty", b"", ErrorCode.MALFORMED, "body"),
    ("bad magic", b"\x85" + bytes(100), ErrorCode.MALFORMED, "body"),
    ("envelope runs past end", b"CNVY\xff\x00\x00\x00abc", ErrorCode.MALFORMED, "body"),
    ("undecodable envelope", frame(None, raw_envelope=b"\xc1\xc1"), ErrorCode.MALFORMED, "body"),
    ("truncated envelope", frame(None, raw_envelope=b"\x85\xa2id"), ErrorCode.MALFORMED, "body"),
    ("envelope not a map", frame([1, 2]), ErrorCode.WRONG_TYPE, "body"),
    (
        "missing version",
        request_frame(schema_version=None),
        ErrorCode.MISSING_FIELD,
        "schema_version",
    ),
    (
        "schema major 0",
        request_frame(schema_version="0.9"),
        ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
        "schema_version",
    ),
    ("unknown field", request_frame(colour="red"), ErrorCode.UNKNOWN_FIELD, "colour"),
    ("tenant wrong type", request_frame(tenant=b"acme"), ErrorCode.WRONG_TYPE, "tenant"),
    (
        "bad UTF-8 in msgpack str",
        frame(
            None,
            raw_envelope=msgpack.packb(ENVELOPE | {"tenant": "XX"}).replace(b"XX", b"\xff\xfe"),
        ),
        ErrorCode.BAD_UTF8,
        "tenant",
    ),
    ("offset past end", tensor_frame(offset=64), ErrorCode.INVALID_VALUE, "inputs[0].offset"),
    ("negative offset", tensor_frame(offset=-1), ErrorCode.INVALID_VALUE, "inputs[0].offset"),
    (
        "data section short",
        tensor_frame(section=bytes(8)),
        ErrorCode.INVALID_VALUE,
        "inputs[0].offset",
    ),
    ("nbytes vs shape", tensor_frame(nbytes=20), ErrorCode.SHAPE_MISMATCH, "inputs[0].shape"),
    ("missing nbytes", tensor_frame(nbytes=None), ErrorCode.WRONG_TYPE, "inputs[0].nbytes"),
    (
        "ref with bad nbytes",
        tensor_frame(offset=None, ref="conveyor:claim:abc", nbytes=4),
        ErrorCode.SHAPE_MISMATCH,
        "inputs[0].shape",
    ),
    (
        "bad dtype",
        tensor_frame(datatype="COMPLEX64"),
        ErrorCode.INVALID_VALUE,
        "inputs[0].datatype",
    ),
    (
        "BOOL byte 2",
        tensor_frame(section=b"\x00\x02", datatype="BOOL", shape=[2], nbytes=2),
        ErrorCode.INVALID_VALUE,
        "inputs[0].data",
    ),
    (
        "bin in text tensor",
        tensor_frame(datatype="BYTES", shape=[1], data=[b"x"], offset=None, nbytes=None),
        ErrorCode.DTYPE_MISMATCH,
        "inputs[0].data[0]",
    ),
    (
        "unknown tensor key",
        tensor_frame(colour=1),
        ErrorCode.UNKNOWN_FIELD,
        "inputs[0].colour",
    ),
    (
        "string count",
        tensor_frame(datatype="BYTES", shape=[2], data=["x"], offset=None, nbytes=None),
        ErrorCode.SHAPE_MISMATCH,
        "inputs[0].shape",
    ),
]


@pytest.mark.parametrize(
    ("value", "code", "field"), [c[1:] for c in MSGPACK_CASES], ids=[c[0] for c in MSGPACK_CASES]
)
def test_msgpack_request_errors(value: bytes, code: ErrorCode, field: str) -> None:
    raises(code, field, lambda: decode_request(value))


def test_limits_are_enforced_before_parsing() -> None:
    body = json_bytes(v2_request())
    raises(
        ErrorCode.PAYLOAD_TOO_LARGE,
        "value",
        lambda: decode_request(body, limits=DecodeLimits(max_message_bytes=10)),
    )
    small = DecodeLimits(max_tensors=1)
    raises(ErrorCode.PAYLOAD_TOO_LARGE, "inputs", lambda: decode_request(body, limits=small))
    few = DecodeLimits(max_tensor_elements=5)
    raises(ErrorCode.PAYLOAD_TOO_LARGE, "inputs[1].shape", lambda: decode_request(body, limits=few))
    short = DecodeLimits(max_string_bytes=4)
    raises(
        ErrorCode.PAYLOAD_TOO_LARGE, "inputs[0].data[0]", lambda: decode_request(body, limits=short)
    )
    huge = tensor_frame(shape=[1 << 40], nbytes=4 << 40)
    raises(ErrorCode.PAYLOAD_TOO_LARGE, "inputs[0].shape", lambda: decode_request(huge))


def test_newer_minor_ignores_unknown_fields_in_both_encodings() -> None:
    body = v2_request(schema_version="1.9", future_field={"x": 1})
    body["inputs"][1]["future_key"] = 3
    assert decode_request(json_bytes(body)).task_id == "t-1"
    assert decode_request(request_frame(schema_version="1.9", future_field=[1])).task_id == "t-1"


def test_header_schema_version_is_checked() -> None:
    headers = [*JSON_HEADERS, ("conveyor-schema", b"2.1")]
    raises(
        ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
        "header conveyor-schema",
        lambda: decode_request(json_bytes(v2_request()), headers),
    )


def test_unsupported_content_type_header() -> None:
    headers = [("content-type", b"text/csv")]
    raises(
        ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        "header content-type",
        lambda: decode_request(b"{}", headers),
    )
    assert content_type_of([("content-type", b"application/json; charset=utf-8")], b"") == JSON
    assert content_type_of(None, b"  \n{") == JSON
    assert content_type_of(None, b"CNVY") == MSGPACK


def test_value_must_be_bytes() -> None:
    raises(ErrorCode.WRONG_TYPE, "value", lambda: decode_request("{}"))  # type: ignore[arg-type]


def test_result_and_error_field_errors() -> None:
    ok = {
        "id": "t",
        "tenant": "a",
        "status": "FAILED",
        "code": "INTERNAL",
        "error": "boom",
        "stage": "inference",
        "completed_at_ms": 1,
    }
    assert isinstance(decode_result(json_bytes(ok)), ErrorResult)
    raises(
        ErrorCode.INVALID_VALUE, "code", lambda: decode_result(json_bytes(ok | {"code": "NOPE"}))
    )
    raises(
        ErrorCode.INVALID_VALUE,
        "status",
        lambda: decode_result(json_bytes(ok | {"status": "ACCEPTED"})),
    )
    raises(
        ErrorCode.MISSING_FIELD, "error", lambda: decode_result(json_bytes({**ok, "error": None}))
    )
    done = {"id": "t", "tenant": "a", "pipeline": "p", "status": "DONE", "model_name": "m"}
    raises(ErrorCode.MISSING_FIELD, "outputs", lambda: decode_result(json_bytes(done)))
    packed = {
        "schema_version": "1.0",
        **done,
        "outputs": [],
        "model_version": 1,
        "completed_at_ms": 2,
    }
    raises(ErrorCode.MISSING_FIELD, "submitted_at_ms", lambda: decode_result(frame(packed)))


def test_construction_validates() -> None:
    x = {"x": np.zeros(2)}
    raises(
        ErrorCode.INVALID_VALUE,
        "id",
        lambda: InferenceRequest(task_id="", tenant="a", pipeline="p", inputs=x),
    )
    raises(
        ErrorCode.INVALID_VALUE,
        "tenant",
        lambda: InferenceRequest.new(tenant="a" * 65, pipeline="p", inputs=x),
    )
    raises(
        ErrorCode.INVALID_VALUE,
        "inputs['']",
        lambda: InferenceRequest.new(tenant="a", pipeline="p", inputs={"": np.zeros(1)}),
    )
    not_an_array: dict[str, Any] = {"x": [1.0]}
    raises(
        ErrorCode.WRONG_TYPE,
        "inputs['x']",
        lambda: InferenceRequest.new(tenant="a", pipeline="p", inputs=not_an_array),
    )
    raises(
        ErrorCode.DTYPE_MISMATCH,
        "inputs['x']",
        lambda: InferenceRequest.new(
            tenant="a", pipeline="p", inputs={"x": np.zeros(2, np.complex64)}
        ),
    )
    mixed = np.array(["a", b"b"], dtype=object)
    raises(
        ErrorCode.DTYPE_MISMATCH,
        "inputs['x']",
        lambda: InferenceRequest.new(tenant="a", pipeline="p", inputs={"x": mixed}),
    )
    raises(
        ErrorCode.WRONG_TYPE,
        "parameters.k",
        lambda: InferenceRequest.new(tenant="a", pipeline="p", inputs=x, parameters={"k": (1, 2)}),
    )
    raises(
        ErrorCode.INVALID_VALUE,
        "status",
        lambda: ErrorResult.new(
            task_id="t",
            tenant="a",
            code=ErrorCode.INTERNAL,
            message="m",
            stage="s",
            status=Status.DONE,
        ),
    )
    raises(
        ErrorCode.INVALID_VALUE,
        "timings_ms.bad key",
        lambda: InferenceResult(
            task_id="t",
            tenant="a",
            pipeline="p",
            outputs={},
            model_name="m",
            model_version=1,
            submitted_at_ms=1,
            timings_ms={"bad key": 1.0},
        ),
    )


def test_error_message_is_truncated_by_the_factory() -> None:
    error = ErrorResult.new(
        task_id="t", tenant="a", code=ErrorCode.INTERNAL, message="x" * 10_000, stage="s"
    )
    assert len(error.message) == 4096
    assert decode_result(encode(error, JSON)) == error


def test_json_encode_refuses_non_finite_floats() -> None:
    result = InferenceResult(
        task_id="t",
        tenant="a",
        pipeline="p",
        outputs={"y": np.array([0.0, np.inf], dtype=np.float32)},
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )
    raises(ErrorCode.NAN_FORBIDDEN, "outputs[0].data[1]", lambda: encode(result, JSON))
    assert decode_result(encode(result, MSGPACK)) == result


def test_encode_rejects_unknown_content_type() -> None:
    request = InferenceRequest.new(tenant="a", pipeline="p", inputs={})
    raises(ErrorCode.UNSUPPORTED_CONTENT_TYPE, "content_type", lambda: encode(request, "text/csv"))
