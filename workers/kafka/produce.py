"""Producing many records at once: one record batch per partition, not one future per record.

`AIOKafkaProducer.send` costs a metadata check, a partitioner call, an accumulator lookup and
a future per record; a stage that answers a frame of 500 tasks would pay that 500 times.
Here records are grouped by (topic, partition) with the producer's own partitioner rule
(murmur2 of the key, as `send` picks), appended to `BatchBuilder`s and handed over with
`send_batch`: one future per batch. Idempotence and transactions apply as with `send`.

Delivery errors come in two classes (`produce_each`):

* **retriable**: the broker is down or restarting, a leader moved, a request timed out, the
  cluster has no metadata yet. Raised (a `KafkaError`); the caller retries the whole call
  (the idempotent producer and the ledger absorb what was written twice).
* **refused**: the error belongs to one record or one topic and would come back however
  often it is retried. Returned as `Refused`, the other records are delivered:

  - a topic that does not exist (`UNKNOWN_TOPIC_OR_PARTITION` in the metadata, with topic
    auto-creation off), a name Kafka refuses (`INVALID_TOPIC_EXCEPTION`), an internal topic
    (`__consumer_offsets`, `__transaction_state`, any `__` name, or one the metadata marks
    internal), a topic this client may not describe or write (`TOPIC_AUTHORIZATION_FAILED`,
    or no WRITE among its authorized operations);
  - a record the broker refuses for its size (`MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`)
    or its content (`INVALID_RECORD`, `CORRUPT_MESSAGE`).

A topic is checked (`TopicCheck`, one metadata request, the answer kept for `ttl_s`) before
anything is sent to it unless the producer's metadata knows it already: asking the producer
for an unknown topic's partitions would wait `request_timeout_ms` (40 s) before failing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String
from aiokafka.record.default_records import DefaultRecordBatchBuilder

Record = tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]
"""(topic, key, value, headers)."""

_partitioner = DefaultPartitioner()

DEFAULT_TOPIC_CHECK_TTL_S = 30.0
_WRITE_OPERATION = 4
"""Kafka's AclOperation code of WRITE (a bit of `topic_authorized_operations`)."""
_OPERATIONS_NOT_GIVEN = -(2**31)
_INVALID_RECORD = 87
_RECORD_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
)
_TOPIC_ERRORS: tuple[type[KafkaError], ...] = (
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


@dataclass(frozen=True)
class Refused:
    """A record the broker will not take, for a reason no retry changes."""

    index: int
    """Its position among the records given to `produce_each`."""
    topic: str
    reason: str
    """What was refused and why, for the task's error message."""
    too_large: bool = False
    """The record itself (its size); otherwise its topic (every record to it is refused)."""


class RecordsRefused(KafkaError):  # type: ignore[misc]
    """`produce_all`: some records were refused (see `Refused`); the rest were delivered."""

    retriable = False

    def __init__(self, refused: list[Refused]) -> None:
        super().__init__("; ".join(sorted({r.reason for r in refused})))
        self.refused = refused


async def produce_all(producer: AIOKafkaProducer, records: Iterable[Record]) -> None:
    """Produce every record and wait until the broker acknowledged all of them. Raises the
    first retriable delivery error (the caller retries the whole call), or, once the others
    are delivered, `UnknownTopicOrPartitionError` for a topic that does not exist and
    `RecordsRefused` for other refusals."""
    error = refusal_error(await produce_each(producer, records))
    if error is not None:
        raise error


def refusal_error(refused: list[Refused]) -> KafkaError | None:
    """What `produce_all` raises for these refusals: `UnknownTopicOrPartitionError` for a
    topic that does not exist (what callers know it as), else `RecordsRefused`; None for
    none."""
    for refusal in refused:
        if refusal.reason.endswith("does not exist"):
            return UnknownTopicOrPartitionError(refusal.reason)
    return RecordsRefused(refused) if refused else None


async def produce_each(
    producer: AIOKafkaProducer, records: Iterable[Record], check: TopicCheck | None = None
) -> list[Refused]:
    """Produce every record that can be; returns those refused for good (see the module's
    docstring). Raises a retriable error only: then the whole call is to be retried."""
    listed = list(records)
    if not listed:
        return []
    check = check or TopicCheck(producer)
    refused: list[Refused] = []
    by_partition: dict[tuple[str, int], list[int]] = {}
    partitions: dict[str, list[int] | None] = {}
    max_bytes = max_record_bytes(producer)
    for index, (topic, key, value, headers) in enumerate(listed):
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > max_bytes:
            # Refused here, as `send` does: a batch the broker refuses would leave a gap in
            # the idempotent producer's sequence numbers of its partition, and every later
            # batch there would fail (OutOfOrderSequenceNumber).
            reason = f"record of {size} bytes > {max_bytes} (kafka.max_message_bytes)"
            refused.append(Refused(index, topic, reason, too_large=True))
            continue
        if topic not in partitions:
            partitions[topic] = await _partitions(producer, check, topic)
        choices = partitions[topic]
        if choices is None:
            refused.append(Refused(index, topic, check.known_refusal(topic) or "refused"))
            continue
        partition = _partitioner(key, choices, choices)
        by_partition.setdefault((topic, partition), []).append(index)
    sends: list[tuple[str, int, list[int], Any]] = []
    for (topic, partition), indices in by_partition.items():
        for group, batch in _batches(producer, listed, indices):
            ack = await _send_built(producer, batch, topic, partition, len(group))
            sends.append((topic, partition, group, ack))
    outcomes = await asyncio.gather(*(ack for *_, ack in sends), return_exceptions=True)
    for (topic, partition, group, _), outcome in zip(sends, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            refused += await _classify(producer, check, listed, topic, partition, group, outcome)
    return sorted(refused, key=lambda r: r.index)


def max_record_bytes(producer: AIOKafkaProducer) -> int:
    """The producer's `max_request_size`: the largest record it sends."""
    return int(producer._max_request_size)


async def _partitions(
    producer: AIOKafkaProducer, check: TopicCheck, topic: str
) -> list[int] | None:
    """The topic's partitions, or None when it is refused (without the 40 s wait)."""
    known = producer.client.cluster.partitions_for_topic(topic)
    if not known and await check.refusal(topic) is not None:
        return None
    return sorted(await producer.partitions_for(topic))


def _batches(
    producer: AIOKafkaProducer, listed: list[Record], indices: list[int]
) -> list[tuple[list[int], Any]]:
    """Records of one partition in record batches, each with the records it holds."""
    groups: list[tuple[list[int], Any]] = [([], producer.create_batch())]
    for index in indices:
        _, key, value, headers = listed[index]
        if groups[-1][1].append(timestamp=None, key=key, value=value, headers=headers) is None:
            # A record alone in an empty batch always fits (the broker judges its size).
            groups.append(([], producer.create_batch()))
            groups[-1][1].append(timestamp=None, key=key, value=value, headers=headers)
        groups[-1][0].append(index)
    return groups


async def _send(
    producer: AIOKafkaProducer, listed: list[Record], group: list[int], partition: int
) -> Any:
    batch = producer.create_batch()
    for index in group:
        _, key, value, headers = listed[index]
        batch.append(timestamp=None, key=key, value=value, headers=headers)
    return await _send_built(producer, batch, listed[group[0]][0], partition, len(group))


async def _send_built(
    producer: AIOKafkaProducer, batch: Any, topic: str, partition: int, count: int
) -> Any:
    ack = await producer.send_batch(batch, topic, partition=partition)
    ack.add_done_callback(partial(_give_back_sequence, producer, topic, partition, count))
    return ack


def _give_back_sequence(
    producer: AIOKafkaProducer, topic: str, partition: int, count: int, ack: Any
) -> None:
    """A batch the broker refused for its records was not written, but the idempotent
    producer counted its sequence numbers at drain: without giving them back every later
    batch of the partition fails with OutOfOrderSequenceNumber. The partition is muted while
    its batch is in flight, and this callback runs before the sender drains the next one."""
    if ack.cancelled() or not _is_record_error(ack.exception()):
        return
    manager = producer._txn_manager
    if manager is not None:
        manager.increment_sequence_number(TopicPartition(topic, partition), -count)


async def _classify(
    producer: AIOKafkaProducer,
    check: TopicCheck,
    listed: list[Record],
    topic: str,
    partition: int,
    group: list[int],
    error: BaseException,
) -> list[Refused]:
    """Refusals of a batch the broker did not take; re-raises a retriable error."""
    if _is_record_error(error):
        if len(group) == 1:
            reason = f"record of {len(listed[group[0]][2])} bytes refused by the broker: {error}"
            return [Refused(group[0], topic, reason, too_large=True)]
        # Which record of the batch? Each alone: the others go through.
        refused: list[Refused] = []
        for index in group:
            try:
                await (await _send(producer, listed, [index], partition))
            except Exception as exc:  # classified (or re-raised) just below
                refused += await _classify(producer, check, listed, topic, partition, [index], exc)
        return refused
    if isinstance(error, (*_TOPIC_ERRORS, UnknownTopicOrPartitionError)):
        # Ask the metadata again: a topic deleted meanwhile is refused, a moved leader is not.
        check.forget(topic)
        found = await check.refusal(topic)
        if found is None and isinstance(error, _TOPIC_ERRORS):
            found = f"topic {topic!r} refused by the broker: {error}"
        if found is not None:
            return [Refused(index, topic, found) for index in group]
    raise error


def _is_record_error(error: BaseException) -> bool:
    return isinstance(error, _RECORD_ERRORS) or getattr(error, "errno", None) == _INVALID_RECORD


# ---- whether a topic may be written ----------------------------------------------------


class _MetadataResponseV8(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):  # type: ignore[misc]
    """Metadata v8: the first to tell which operations the asking principal may perform on
    a topic (aiokafka's own request stops at v5)."""

    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _TopicMetadata(Request[_MetadataRequestV8]):  # type: ignore[misc]
    API_KEY = 3

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        return request_struct_class([self._topic], False, False, True)


class TopicCheck:
    """Whether this producer may write a topic: it exists, is no internal topic, and the
    client's principal has WRITE on it. One metadata request per topic; the answer (yes or
    the reason for no) is kept for `ttl_s`, so a flood of requests naming one bad topic
    costs one request per `ttl_s`. Broker errors that say nothing about the topic (no
    broker reachable, a leader election) are raised: the caller retries."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        ttl_s: float = DEFAULT_TOPIC_CHECK_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self._producer = producer
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: dict[str, tuple[float, str | None]] = {}

    def known_refusal(self, topic: str) -> str | None:
        """The cached reason `topic` is refused, if it is (no request)."""
        answer = self._answers.get(topic)
        return answer[1] if answer is not None else None

    def forget(self, topic: str) -> None:
        self._answers.pop(topic, None)

    async def refusal(self, topic: str) -> str | None:
        """None when `topic` may be written, else why not."""
        now = self._clock()
        answer = self._answers.get(topic)
        if answer is not None and answer[0] > now:
            return answer[1]
        reason = static_refusal(topic)
        if reason is None:
            reason = await self._ask(topic)
        if len(self._answers) >= _MAX_ANSWERS:
            self._answers = {t: a for t, a in self._answers.items() if a[0] > now}
        if len(self._answers) < _MAX_ANSWERS:
            self._answers[topic] = (now + self._ttl_s, reason)
        return reason

    async def _ask(self, topic: str) -> str | None:
        client = self._producer.client
        node_id = client.get_random_node()
        if node_id is None:
            raise KafkaError(f"no broker known to check topic {topic!r}")
        response = await client.send(node_id, _TopicMetadata(topic))
        for error_code, name, is_internal, _, operations in response.topics:
            if name != topic:
                continue
            return _topic_refusal(topic, error_code, is_internal, operations)
        raise KafkaError(f"metadata response without topic {topic!r}")


_MAX_ANSWERS = 10_000
"""Most topics a `TopicCheck` remembers (expired ones are dropped first)."""


def static_refusal(topic: str) -> str | None:
    """Why `topic` is refused from its name alone: Kafka's internal topics."""
    if topic.startswith("__"):
        return f"topic {topic!r} is internal to Kafka ('__' names are reserved)"
    return None


def _topic_refusal(topic: str, error_code: int, is_internal: bool, operations: int) -> str | None:
    if error_code == 0:
        if is_internal:
            return f"topic {topic!r} is internal to Kafka"
        if operations != _OPERATIONS_NOT_GIVEN and not operations & (1 << _WRITE_OPERATION):
            return f"topic {topic!r} may not be written by this worker (no WRITE ACL)"
        return None
    error = for_code(error_code)
    if error is UnknownTopicOrPartitionError:
        return f"topic {topic!r} does not exist"
    if error is InvalidTopicError:
        return f"topic {topic!r} is not a valid topic name"
    if error is TopicAuthorizationFailedError:
        return f"topic {topic!r} may not be used by this worker (not authorized)"
    raise error(f"metadata of topic {topic!r}")
