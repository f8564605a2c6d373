"""Claim check against a real Redis."""

from __future__ import annotations

import uuid

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
    StageMessage,
    TensorRef,
    arrays_of,
    decode_stage,
    encode,
)


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


def stage(**tensors: np.ndarray | TensorRef) -> StageMessage:
    return StageMessage(
        task_id="t-1", tenant="acme", pipeline="p", content_type=MSGPACK, tensors=tensors
    )


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
async def test_offload_encode_decode_resolve_round_trip(
    redis_client: redis.asyncio.Redis, prefix: str, content_type: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=1024, ttl_s=60)
    big = np.arange(4096, dtype=">f4").reshape(64, 64)
    message = stage(big=big, small=np.ones(4), text=np.array(["x" * 5000]))
    offloaded = await claims.offload(message)
    ref = offloaded.tensors["big"]
    assert isinstance(ref, TensorRef)
    assert ref.key.startswith(f"{prefix}claim:")
    assert (ref.datatype, ref.shape, ref.nbytes) == ("FP32", (64, 64), big.nbytes)
    assert 0 < await redis_client.ttl(ref.key) <= 60
    assert isinstance(offloaded.tensors["small"], np.ndarray)
    assert isinstance(offloaded.tensors["text"], np.ndarray)  # strings stay inline
    value = encode(offloaded, content_type)
    assert len(value) < big.nbytes
    resolved = await claims.resolve(decode_stage(value))
    assert resolved == message
    assert not arrays_of(resolved.tensors)["big"].flags.writeable


async def test_resolve_uses_one_mget(redis_client: redis.asyncio.Redis, prefix: str) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=0, ttl_s=60)
    offloaded = await claims.offload(stage(a=np.ones(8), b=np.zeros(3, np.int8), c=np.ones(2)))
    await redis_client.config_resetstat()
    await claims.resolve(offloaded)
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert "cmdstat_get" not in stats


async def test_missing_key_names_tensor_and_key(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=16, ttl_s=60)
    offloaded = await claims.offload(stage(big=np.ones(100)))
    ref = offloaded.tensors["big"]
    assert isinstance(ref, TensorRef)
    await redis_client.delete(ref.key)
    with pytest.raises(ContractError) as info:
        await claims.resolve(decode_stage(encode(offloaded)))
    assert info.value.code == ErrorCode.CLAIM_CHECK_MISSING
    assert info.value.field == "tensors['big']"
    assert ref.key in info.value.message


async def test_resolve_refuses_keys_outside_the_prefix(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=16, ttl_s=60)
    forged = stage(x=TensorRef(key="other:secret", datatype="FP64", shape=(1,), nbytes=8))
    with pytest.raises(ContractError) as info:
        await claims.resolve(forged)
    assert info.value.code == ErrorCode.INVALID_VALUE


async def test_small_messages_are_untouched(redis_client: redis.asyncio.Redis, prefix: str) -> None:
    claims = ClaimCheck(redis_client, prefix, threshold_bytes=1 << 20, ttl_s=60)
    request = InferenceRequest.new(tenant="a", pipeline="p", inputs={"x": np.ones(3)})
    assert await claims.offload(request) is request
    assert await claims.resolve(request) is request


def test_arrays_of_refuses_unresolved_refs() -> None:
    ref = TensorRef(key="k", datatype="FP32", shape=(2,), nbytes=8)
    with pytest.raises(ContractError) as info:
        arrays_of({"x": ref})
    assert info.value.code == ErrorCode.CLAIM_CHECK_MISSING
