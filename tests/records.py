"""Kafka records as a worker's consumer hands them over, for tests without a broker."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from schemas import InferenceRequest, encode, headers_for


def request_record(request: InferenceRequest, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    """`request` encoded as the record preprocess would read from the requests topic."""
    value = encode(request)
    return ConsumerRecord(
        topic="t.requests",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=headers_for(request),
    )
