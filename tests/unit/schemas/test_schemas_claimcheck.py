"""Claim check against a real Redis: requests (both encodings) and task frames."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import redis.asyncio

from schemas import (
    JSON,
    MSGPACK,
    ClaimCheck,
    ContractError,
    ErrorCode,
    InferenceRequest,
    TensorRef,
    arrays_of,
    decode_request,
    encode,
)
from schemas.frames import Frame, decode_frame, encode_frame


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


def request(**inputs: np.ndarray | TensorRef) -> InferenceRequest:
    return InferenceRequest(
        task_id="t-1", tenant="acme", pipeline="p", inputs=inputs, submitted_at_ms=1
    )


def frame(row_counts: list[int], **tensors: Any) -> Frame:
    """A frame of ``len(row_counts)`` tasks holding ``tensors`` (``sum(row_counts)`` rows)."""
    tasks = len(row_counts)
    return Frame(
        tenant="acme",
        pipeline="p",
        lane="standard",
        task_ids=[f"t-{i}" for i in range(tasks)],
        row_counts=row_counts,
        submitted_at_ms=[1] * tasks,
        deadline_ms=[None] * tasks,
        reply_to=[None] * tasks,
        content_types=[MSGPACK] * tasks,
        traceparents=[None] * tasks,
        parameters=[{} for _ in range(tasks)],
        attempts=[0] * tasks,
        timings_ms={"preprocess": [0.5] * tasks},
        tensors=tensors,
    )


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
async def test_request_offload_encode_decode_resolve_round_trip(
    redis_client: redis.asyncio.Redis, prefix: str, content_type: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=1024, ttl_s=60)
    big = np.arange(4096, dtype=">f4").reshape(64, 64)
    message = request(big=big, small=np.ones(4), text=np.array(["x" * 5000]))
    offloaded = await claims.offload(message)
    ref = offloaded.inputs["big"]
    assert isinstance(ref, TensorRef)
    assert ref.key.startswith(f"{prefix}claim:")
    assert (ref.datatype, ref.shape, ref.nbytes) == ("FP32", (64, 64), big.nbytes)
    assert 0 < await redis_client.ttl(ref.key) <= 60
    assert isinstance(offloaded.inputs["small"], np.ndarray)
    assert isinstance(offloaded.inputs["text"], np.ndarray)  # strings stay inline
    value = encode(offloaded, content_type)
    assert len(value) < big.nbytes
    resolved = await claims.resolve(decode_request(value))
    assert resolved == message
    assert not arrays_of(resolved.inputs)["big"].flags.writeable


async def test_frame_offload_encode_decode_resolve_round_trip(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=1024, ttl_s=60)
    big = np.arange(4096, dtype=">f4").reshape(64, 64)
    text = np.array([["x" * 100]] * 64, dtype=object)
    original = frame([32, 32], big=big, small=np.ones((64, 2)), text=text)
    offloaded = await claims.offload(original)
    ref = offloaded.tensors["big"]
    assert isinstance(ref, TensorRef)
    assert ref.key.startswith(f"{prefix}claim:")
    assert (ref.datatype, ref.shape, ref.nbytes) == ("FP32", (64, 64), big.nbytes)
    assert 0 < await redis_client.ttl(ref.key) <= 60
    assert isinstance(offloaded.tensors["small"], np.ndarray)  # under the threshold
    assert isinstance(offloaded.tensors["text"], np.ndarray)  # strings stay inline
    assert offloaded.task_ids == original.task_ids  # the columns are carried unchanged
    value = encode_frame(offloaded)
    assert len(value) < big.nbytes
    resolved = await claims.resolve(decode_frame(value))
    assert resolved.task_ids == original.task_ids
    assert resolved.row_counts == original.row_counts
    assert resolved.tensors.keys() == original.tensors.keys()
    arrays = arrays_of(resolved.tensors)
    assert arrays["big"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(arrays["big"], big)
    np.testing.assert_array_equal(arrays["small"], original.tensors["small"])
    assert arrays["text"].tolist() == text.tolist()
    assert not arrays["big"].flags.writeable
    halves = [arrays_of(resolved.slice(i, i + 1).tensors)["big"] for i in range(2)]
    assert [half.shape for half in halves] == [(32, 64), (32, 64)]


async def test_resolve_uses_one_mget(redis_client: redis.asyncio.Redis, prefix: str) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=0, ttl_s=60)
    offloaded = await claims.offload(
        frame([1, 1], a=np.ones((2, 4)), b=np.zeros((2, 3), np.int8), c=np.ones(2))
    )
    await redis_client.config_resetstat()
    await claims.resolve(offloaded)
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert "cmdstat_get" not in stats


async def test_missing_key_names_tensor_and_key(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=16, ttl_s=60)
    offloaded = await claims.offload(frame([1], big=np.ones((1, 100))))
    ref = offloaded.tensors["big"]
    assert isinstance(ref, TensorRef)
    await redis_client.delete(ref.key)
    with pytest.raises(ContractError) as info:
        await claims.resolve(decode_frame(encode_frame(offloaded)))
    assert info.value.code == ErrorCode.CLAIM_CHECK_MISSING
    assert info.value.field == "tensors['big']"
    assert ref.key in info.value.message


async def test_a_request_names_its_missing_input(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=16, ttl_s=60)
    offloaded = await claims.offload(request(big=np.ones(100)))
    ref = offloaded.inputs["big"]
    assert isinstance(ref, TensorRef)
    await redis_client.delete(ref.key)
    with pytest.raises(ContractError) as info:
        await claims.resolve(decode_request(encode(offloaded)))
    assert info.value.code == ErrorCode.CLAIM_CHECK_MISSING
    assert info.value.field == "inputs['big']"


@pytest.mark.parametrize("carrier", ["request", "frame"])
async def test_resolve_refuses_keys_outside_the_prefix(
    redis_client: redis.asyncio.Redis, prefix: str, carrier: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=16, ttl_s=60)
    forged_ref = TensorRef(key="other:secret", datatype="FP64", shape=(1,), nbytes=8)
    forged: InferenceRequest | Frame = (
        request(x=forged_ref) if carrier == "request" else frame([1], x=forged_ref)
    )
    with pytest.raises(ContractError) as info:
        await claims.resolve(forged)
    assert info.value.code == ErrorCode.INVALID_VALUE


async def test_small_messages_are_untouched(redis_client: redis.asyncio.Redis, prefix: str) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=1 << 20, ttl_s=60)
    small = InferenceRequest.new(tenant="a", pipeline="p", inputs={"x": np.ones(3)})
    assert await claims.offload(small) is small
    assert await claims.resolve(small) is small
    tasks = frame([1, 1], x=np.ones((2, 3)))
    assert await claims.offload(tasks) is tasks
    assert await claims.resolve(tasks) is tasks


def test_arrays_of_refuses_unresolved_refs() -> None:
    ref = TensorRef(key="k", datatype="FP32", shape=(2,), nbytes=8)
    with pytest.raises(ContractError) as info:
        arrays_of({"x": ref})
    assert info.value.code == ErrorCode.CLAIM_CHECK_MISSING
