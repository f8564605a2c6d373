"""Closed sets are closed: an unknown value of an enum-like field is INVALID_VALUE naming the
values allowed, in the constructor and in both encodings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas import ContractError, ErrorCode, InferenceRequest, decode_request, encode
from schemas.fields import Priority
from schemas.tensors import DATATYPES
from workers.names import LANES


def _request(**options: object) -> InferenceRequest:
    return InferenceRequest.new(
        tenant="acme", pipeline="p", inputs={"x": np.zeros(2, np.float32)}, **options
    )


def _v2(**extra: object) -> bytes:
    body = {
        "id": "t-1",
        "tenant": "acme",
        "pipeline": "p",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}],
        **extra,
    }
    return json.dumps(body).encode()


def test_priorities_are_the_lanes() -> None:
    assert tuple(p.value for p in Priority) == LANES


@pytest.mark.parametrize("lane", LANES)
def test_every_lane_is_a_priority(lane: str) -> None:
    request = _request(priority=lane)
    assert request.priority == lane
    assert decode_request(encode(request)).priority == lane
    assert decode_request(_v2(priority=lane)).priority == lane


@pytest.mark.parametrize(
    "make",
    [
        lambda: _request(priority="ultra"),
        lambda: decode_request(_v2(priority="ultra")),
        lambda: decode_request(_v2(priority="REALTIME")),
    ],
)
def test_an_unknown_priority_names_the_lanes(make: object) -> None:
    with pytest.raises(ContractError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.code is ErrorCode.INVALID_VALUE
    assert caught.value.field == "priority"
    assert "['realtime', 'standard', 'bulk']" in caught.value.message


def test_an_unknown_datatype_names_the_datatypes() -> None:
    body = _v2(inputs=[{"name": "x", "datatype": "FP128", "shape": [1], "data": [0.5]}])
    with pytest.raises(ContractError) as caught:
        decode_request(body)
    assert caught.value.code is ErrorCode.INVALID_VALUE
    assert caught.value.field == "inputs[0].datatype"
    assert str(list(DATATYPES)) in caught.value.message


def test_an_unknown_response_content_type_names_the_allowed_ones() -> None:
    # Content types keep their own, more telling code (UNSUPPORTED_CONTENT_TYPE).
    with pytest.raises(ContractError) as caught:
        decode_request(_v2(response_content_type="text/csv"))
    assert caught.value.code is ErrorCode.UNSUPPORTED_CONTENT_TYPE
    assert "['application/msgpack', 'application/json']" in caught.value.message
