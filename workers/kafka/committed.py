"""The committed offsets a new owner of partitions starts from, read only once they are stable.

An exactly-once worker commits its input offsets inside its transaction; the broker makes them
visible a moment after the commit returns, when the transaction's markers are written. A new
owner that reads the group's offsets before that finds the older position and does the
transaction's records again: their outputs land twice. Kafka's answer is KIP-447's
`require_stable` OffsetFetch (v7), which the broker refuses with UNSTABLE_OFFSET_COMMIT while a
transaction still holds offsets of those partitions. aiokafka sends OffsetFetch v3 at most, so
the v7 request is declared here with aiokafka's own protocol types and sent to the group
coordinator through the consumer's client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    GroupLoadInProgressError,
    IncompatibleBrokerVersion,
    KafkaError,
    NotCoordinatorForGroupError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response, Schema
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

_UNSTABLE_OFFSET_COMMIT = 88
_UNKNOWN_TOPIC_OR_PARTITION = 3
_NO_OFFSET = -1
_COORDINATOR_MOVED = (
    GroupLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
)
_RETRY_S = 0.1
_WARN_EVERY_S = 5.0


class _OffsetFetchResponseV7(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _StableOffsetFetch(Request[_OffsetFetchRequestV7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in partitions:
            by_topic[tp.topic].append(tp.partition)
        self._group_id = group_id
        self._topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, sorted(ids), {}) for topic, ids in sorted(by_topic.items())
        ]

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(self._group_id, self._topics, True, {})


class _Unstable(Exception):
    """A transaction still holds offsets of these partitions: asked again shortly."""


async def stable_committed(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offset (and metadata) of each partition that has one, once no
    open transaction holds offsets of them. Waits as long as that takes: the broker resolves an
    open transaction within its timeout (it aborts it), so the wait is bounded by
    `worker.transaction_timeout_ms`. A broker without OffsetFetch v7 (before Kafka 2.5) gets
    aiokafka's plain fetch, after the time a commit's markers usually take."""
    partitions = list(partitions)
    if not partitions:
        return {}
    coordinator = consumer._coordinator  # aiokafka has no public OffsetFetch with metadata
    started = warned = time.monotonic()
    while True:
        await coordinator.ensure_coordinator_known()
        try:
            return await _fetch(consumer, coordinator, partitions)
        except (IncompatibleBrokerVersion, NotImplementedError):
            log.warning("the broker has no OffsetFetch v7 (Kafka < 2.5): offsets may be unstable")
            await asyncio.sleep(2.0)
            return dict(await coordinator.fetch_committed_offsets(partitions))
        except _Unstable:
            pass
        except _COORDINATOR_MOVED:
            coordinator.coordinator_dead()
        except KafkaError as exc:
            if not exc.retriable:
                raise
        if time.monotonic() - warned > _WARN_EVERY_S:
            warned = time.monotonic()
            log.warning(
                "committed offsets of %d partitions not readable yet after %.0f s (an open "
                "transaction holds them, or the group coordinator moved)",
                len(partitions),
                warned - started,
            )
        await asyncio.sleep(_RETRY_S)


async def _fetch(
    consumer: AIOKafkaConsumer, coordinator: Any, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    node_id = coordinator.coordinator_id
    if node_id is None:
        raise CoordinatorNotAvailableError()
    response = await consumer._client.send(
        node_id,
        _StableOffsetFetch(coordinator.group_id, partitions),
        group=ConnectionGroup.COORDINATION,
    )
    _raise_for(response.error_code)
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, topic_partitions, _ in response.topics:
        for partition, offset, _epoch, metadata, error_code, _ in topic_partitions:
            if error_code == _UNKNOWN_TOPIC_OR_PARTITION:
                continue  # deleted meanwhile: nothing to start from (aiokafka skips it too)
            _raise_for(error_code)
            if offset != _NO_OFFSET:
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(
                    offset, metadata or ""
                )
    return offsets


def _raise_for(error_code: int) -> None:
    if error_code == 0:
        return
    if error_code == _UNSTABLE_OFFSET_COMMIT:
        raise _Unstable()
    raise for_code(error_code)()
