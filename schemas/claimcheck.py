"""Claim check: big numeric tensors ride in Redis, messages carry a ``TensorRef``.

``offload`` writes every numeric tensor larger than ``threshold_bytes`` (raw little-endian
bytes, one pipelined round trip, TTL ``ttl_s``) and swaps it for a ``TensorRef``, which
the codec encodes as a ``{name, datatype, shape, ref, nbytes}`` entry. ``resolve`` fetches
all refs of a message with one MGET and rebuilds read-only arrays over the fetched bytes.
String tensors always stay inline. Keys are never deleted by ``resolve`` (a redelivered
message must still resolve); the TTL reclaims them.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from redis.asyncio import Redis

from schemas.errors import ContractError, ErrorCode
from schemas.frames import Frame
from schemas.messages import Message
from schemas.tensors import TensorRef, TensorValue, datatype_of, wire_dtype

__all__ = ["ClaimCheck", "claim_key", "has_claims"]

M = TypeVar("M", bound=Message | Frame)


def claim_key(key_prefix: str, claim_id: str) -> str:
    """The Redis key of one claim-checked tensor (the only place it is built)."""
    return f"{key_prefix}claim:{claim_id}"


class ClaimCheck:
    """Moves big tensors of a message to Redis and back.

    ``redis`` must return bytes (``decode_responses=False``).
    """

    def __init__(self, redis: Redis, key_prefix: str, threshold_bytes: int, ttl_s: int) -> None:
        if threshold_bytes < 0:
            raise ValueError(f"threshold_bytes must be >= 0, got {threshold_bytes}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, got {ttl_s}")
        self._redis = redis
        self._key_prefix = key_prefix
        self._threshold_bytes = threshold_bytes
        self._ttl_s = ttl_s

    async def offload(self, message: M) -> M:
        """A copy of ``message`` whose numeric tensors above the threshold are ``TensorRef``s."""
        tensors = _tensors(message)
        big = {
            name: value
            for name, value in tensors.items()
            if isinstance(value, np.ndarray)
            and value.dtype.kind not in "OUS"
            and value.nbytes > self._threshold_bytes
        }
        if not big:
            return message
        replaced: dict[str, TensorValue] = dict(tensors)
        pipe = self._redis.pipeline(transaction=False)
        for name, array in big.items():
            key = claim_key(self._key_prefix, uuid.uuid4().hex)
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            pipe.set(key, little.reshape(-1).view(np.uint8).data, ex=self._ttl_s)
            replaced[name] = TensorRef(
                key=key,
                datatype=datatype_of(array, name),
                shape=array.shape,
                nbytes=array.nbytes,
            )
        await pipe.execute()
        return _with_tensors(message, replaced)

    async def resolve(self, message: M) -> M:
        """A copy of ``message`` with every ``TensorRef`` replaced by its array.

        A missing or expired key raises ``ContractError(CLAIM_CHECK_MISSING)`` naming the
        tensor and the key.
        """
        tensors = _tensors(message)
        refs = {name: value for name, value in tensors.items() if isinstance(value, TensorRef)}
        if not refs:
            return message
        field = message.TENSORS
        for name, ref in refs.items():
            if not ref.key.startswith(claim_key(self._key_prefix, "")):
                raise ContractError.at(
                    ErrorCode.INVALID_VALUE,
                    f"{field}[{name!r}].ref",
                    f"key {ref.key!r} is outside {claim_key(self._key_prefix, '')!r}",
                )
        values: list[Any] = await self._redis.mget([ref.key for ref in refs.values()])
        replaced: dict[str, TensorValue] = dict(tensors)
        for (name, ref), raw in zip(refs.items(), values, strict=True):
            replaced[name] = _rebuild(ref, raw, f"{field}[{name!r}]")
        return _with_tensors(message, replaced)


def _rebuild(ref: TensorRef, raw: Any, path: str) -> TensorValue:
    if raw is None:
        raise ContractError.at(
            ErrorCode.CLAIM_CHECK_MISSING, path, f"claim check {ref.key!r} is missing or expired"
        )
    if not isinstance(raw, bytes):
        raise ContractError.at(
            ErrorCode.INTERNAL,
            path,
            "Redis returned text; use a client with decode_responses=False",
        )
    if len(raw) != ref.nbytes:
        raise ContractError.at(
            ErrorCode.SHAPE_MISMATCH,
            path,
            f"claim check {ref.key!r} holds {len(raw)} bytes, expected {ref.nbytes}",
        )
    dtype = wire_dtype(ref.datatype, path)
    if ref.nbytes == 0:
        return np.empty(ref.shape, dtype)
    return np.frombuffer(raw, dtype=dtype).reshape(ref.shape)


def has_claims(message: Message | Frame) -> bool:
    """Whether any tensor of `message` is claim-checked (resolving it would fetch)."""
    return any(isinstance(value, TensorRef) for value in _tensors(message).values())


def _tensors(message: Message | Frame) -> Mapping[str, TensorValue]:
    if not message.TENSORS:
        return {}
    tensors: Mapping[str, TensorValue] = getattr(message, message.TENSORS)
    return tensors


def _with_tensors(message: M, tensors: dict[str, TensorValue]) -> M:
    changes: dict[str, Any] = {message.TENSORS: tensors}
    return dataclasses.replace(message, **changes)
