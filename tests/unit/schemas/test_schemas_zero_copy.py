"""msgpack numeric tensors decode as read-only views over the received bytes."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from schemas import (
    DecodeLimits,
    InferenceRequest,
    InferenceResult,
    arrays_of,
    decode_request,
    decode_result,
    encode,
)


def base_chain_end(array: np.ndarray[Any, Any]) -> object:
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<i8", "u1", "?", "<f2"])
def test_decoded_tensor_is_a_view_of_the_value(dtype: str) -> None:
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    request = InferenceRequest.new(
        tenant="acme", pipeline="p", inputs={"a": np.ones(3), "x": array}
    )
    value = encode(request)
    decoded = arrays_of(decode_request(value).inputs)["x"]
    assert base_chain_end(decoded) is value
    assert np.shares_memory(decoded, np.frombuffer(value, dtype=np.uint8))
    assert not decoded.flags.writeable
    assert decoded.flags.aligned
    assert decoded.dtype.str == np.dtype(dtype).newbyteorder("<").str
    np.testing.assert_array_equal(decoded, array)
    with pytest.raises(ValueError, match="read-only"):
        decoded[0, 0, 0] = 1


def test_tensors_are_64_byte_aligned_within_the_value() -> None:
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "a": np.ones(3, np.float32),
        "b": np.ones(5, np.int8),
        "c": np.ones(2),
    }
    result = InferenceResult(
        task_id="t",
        tenant="a",
        pipeline="p",
        outputs=tensors,
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )
    value = encode(result)
    start = np.frombuffer(value, np.uint8).ctypes.data
    decoded = decode_result(value)
    assert isinstance(decoded, InferenceResult)
    for array in arrays_of(decoded.outputs).values():
        assert (array.ctypes.data - start) % 64 == 0


def test_decoding_64_mib_allocates_nothing_proportional() -> None:
    size = 64 * 1024 * 1024
    array = np.arange(size // 4, dtype=np.float32)
    value = encode(InferenceRequest.new(tenant="acme", pipeline="p", inputs={"x": array}))
    del array
    limits = DecodeLimits(max_message_bytes=2 * size, max_tensor_elements=size)
    tracemalloc.start()
    try:
        decoded = arrays_of(decode_request(value, limits=limits).inputs)["x"]
        _, peak = tracemalloc.get_traced_memory()
        copied = np.array(decoded[:1024])  # proves numpy allocations are traced
        _, peak_after_copy = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak
    assert peak_after_copy >= copied.nbytes
    assert base_chain_end(decoded) is value
    assert decoded[-1] == size // 4 - 1
