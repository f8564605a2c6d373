"""Kafka records as a worker's consumer hands them over, for tests without a broker."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import ConsumerRecord

from schemas import InferenceRequest, encode, headers_for


def consumer_record(
    topic: str,
    value: bytes,
    *,
    partition: int = 0,
    offset: int = 0,
    headers: Sequence[tuple[str, bytes]] = (),
) -> ConsumerRecord[bytes, bytes]:
    """A keyless record of `value` at `topic`/`partition`/`offset`."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=headers,
    )


def request_record(request: InferenceRequest, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    """`request` encoded as the record preprocess would read from the requests topic."""
    return consumer_record(
        "t.requests", encode(request), offset=offset, headers=headers_for(request)
    )
