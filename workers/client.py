"""The Python client: submit requests, await results, follow the results stream, read state.

    async with Client("127.0.0.1:9092") as client:  # or Client(settings.kafka) when secured
        task_id = await client.submit(InferenceRequest.new(tenant="acme", pipeline=..., inputs=...))
        result = await client.result(task_id, timeout_s=30)
        ids = await client.submit_many(requests)
        results = await client.result_many(ids, timeout_s=60)  # one wait for all of them

Results are read from the results topic (or the reply topic the client was given) by a
group-less consumer that starts at the topic's end when the client starts, so `result()`
finds every answer to requests submitted after `start()`. A client made with
`reads_results=False` only submits: it opens no consumer, for a producer whose results
another process reads (a load generator, a feed whose answers go to their own consumers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import (
    MSGPACK,
    ContractError,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    decode_result,
    encode,
    headers_for,
    key_for,
)
from workers.component import Component
from workers.kafka.admin import partitions_of
from workers.kafka.clients import (
    Connection,
    batch_bytes,
    bootstrap_of,
    connection_options,
    start_client,
    stop_client,
)
from workers.kafka.gather import GatheringProducer
from workers.kafka.produce import Record
from workers.names import Topics
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

Result = InferenceResult | ErrorResult


class Client(Component):
    """Submits requests and receives their results; one instance per event loop."""

    def __init__(
        self,
        connection: Connection,
        topics: Topics | None = None,
        *,
        reply_to: str | None = None,
        tenant: str | None = None,
        content_type: str = MSGPACK,
        received_limit: int = 100_000,
        reads_results: bool = True,
    ) -> None:
        self.topics = topics or Topics()
        self.connection = connection
        """The broker: `KafkaSettings` (with its security settings) or a bootstrap string."""
        self.bootstrap = bootstrap_of(connection)
        self.tenant = tenant
        """Per-tenant topics (`kafka.tenant_topics`): submit on `<prefix>.requests.<tenant>`,
        read `<prefix>.results.<tenant>`; the workers serve every request as this tenant."""
        if tenant is not None and reply_to is not None:
            raise ValueError("with per-tenant topics results go to the tenant's topic: no reply_to")
        self.requests_topic = self.topics.requests_of(tenant) if tenant else self.topics.requests
        self.reply_to = reply_to
        self.results_topic = reply_to or (
            self.topics.results_of(tenant) if tenant else self.topics.results
        )
        self.content_type = content_type
        self.reads_results = reads_results
        self._producer: AIOKafkaProducer | None = None
        self._publisher: GatheringProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._awaited: dict[str, list[_Awaited]] = {}
        """`result_many` callers by the task ids they still wait for."""
        # Results seen lately, so `result()` answers before or after arrival, more than once;
        # bounded, oldest dropped first.
        self._received: OrderedDict[str, Result] = OrderedDict()
        self._received_limit = received_limit
        self._subscribers: list[tuple[str | None, asyncio.Queue[Result]]] = []
        self._tasks = TaskSet(self._reader_crashed)
        self._reader_error: BaseException | None = None

    async def start(self) -> None:
        if self._producer is not None:
            raise RuntimeError("client already started")
        try:
            await self._start()
        except BaseException:
            await self.stop()  # a broker that cannot be reached leaves nothing open behind
            raise

    async def _start(self) -> None:
        self._producer = AIOKafkaProducer(
            **connection_options(self.connection),
            acks="all",
            enable_idempotence=True,
            # `submit_many` hands over whole record batches: waiting adds only latency.
            linger_ms=0,
            max_batch_size=batch_bytes(self.connection),
        )
        await start_client(self._producer, self.connection)
        # Concurrent `submit`s share publications (one record batch per partition).
        self._publisher = GatheringProducer(self._producer)
        await self._publisher.start()
        if not self.reads_results:
            return
        # read_committed: in exactly-once mode a result of an aborted transaction never counts.
        self._consumer = AIOKafkaConsumer(
            **connection_options(self.connection),
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await start_client(self._consumer, self.connection)
        partitions = await partitions_of(self.connection, self.results_topic)
        assigned = [TopicPartition(self.results_topic, p) for p in partitions]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve "end" now, before any request can be answered
            await self._consumer.position(tp)
        self._tasks.start(self._read(), "client-results")

    async def stop(self) -> None:
        """Close the results reader and both Kafka clients (each within `CLOSE_TIMEOUT_S`: a
        close stuck on an unresponsive broker must not keep a finished program, a CLI command
        or a gateway shutting down, alive)."""
        await self._tasks.cancel()
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for kafka_client in (consumer, producer):
            if kafka_client is not None:
                await stop_client(kafka_client)

    # ---- submit -----------------------------------------------------------------------

    @property
    def publications(self) -> int:
        """Publications to the broker so far (concurrent submits share them)."""
        return self._publisher.publications if self._publisher is not None else 0

    async def submit(self, request: InferenceRequest) -> str:
        """Publish one request (acknowledged by the broker); returns its task id."""
        await self.submit_many([request])
        return request.task_id

    async def submit_many(self, requests: Iterable[InferenceRequest]) -> list[str]:
        """Publish many requests at once (one record batch per partition, shared with
        concurrent callers); returns their task ids once the broker acknowledged all of them.
        Raises as `produce_all` for these requests' records."""
        publisher = self._require_publisher()
        records: list[Record] = []
        ids = []
        for request in requests:
            if self.reply_to and request.reply_to is None:
                request = _with_reply_to(request, self.reply_to)
            records.append(
                (
                    self.requests_topic,
                    key_for(request),
                    encode(request, self.content_type),
                    headers_for(request, self.content_type),
                )
            )
            ids.append(request.task_id)
        await publisher.produce(records)
        return ids

    async def submit_raw(
        self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Publish bytes as they are (tests of malformed input; non-Python clients do this)."""
        await self.submit_raw_many([(value, key, headers or [])])

    async def submit_raw_many(
        self, records: Iterable[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]
    ) -> None:
        await self._require_publisher().produce(
            [(self.requests_topic, key, value, headers) for value, key, headers in records]
        )

    # ---- results ----------------------------------------------------------------------

    async def result(self, task_id: str, timeout_s: float | None = None) -> Result:
        """The result (or error) of `task_id`."""
        if task_id in self._received:
            return self._received[task_id]
        self._raise_if_broken()
        self._require_reader()
        future = self._waiting.get(task_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[task_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        finally:
            if future.done():
                self._waiting.pop(task_id, None)

    async def result_many(
        self, task_ids: Sequence[str], timeout_s: float | None = None
    ) -> list[Result]:
        """The results (or errors) of `task_ids`, in their order, once all are in: what a
        `submit_many` caller waits for, at the cost of one wait, not one per task."""
        self._raise_if_broken()
        self._require_reader()
        awaited = _Awaited(asyncio.get_running_loop().create_future())
        for task_id in dict.fromkeys(task_ids):
            if task_id in self._received:
                awaited.found[task_id] = self._received[task_id]
            else:
                awaited.missing += 1
                self._awaited.setdefault(task_id, []).append(awaited)
        try:
            if awaited.missing:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(awaited.future)
        finally:
            if awaited.missing:  # timed out or cancelled: nothing is left waiting for us
                for task_id in task_ids:
                    others = self._awaited.get(task_id)
                    if others is not None and awaited in others:
                        others.remove(awaited)
                        if not others:
                            del self._awaited[task_id]
        return [awaited.found[task_id] for task_id in task_ids]

    async def results(self, tenant: str | None = None) -> AsyncIterator[Result]:
        """Every result from now on (of one tenant, or all), as an async iterator."""
        self._require_reader()
        queue: asyncio.Queue[Result] = asyncio.Queue(maxsize=10_000)
        entry = (tenant, queue)
        self._subscribers.append(entry)
        try:
            while True:
                self._raise_if_broken()
                yield await queue.get()
        finally:
            self._subscribers.remove(entry)

    async def _read(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        result = decode_result(record.value or b"", record.headers)
                    except ContractError as exc:
                        log.warning(
                            "undecodable result at %s/%s: %s", record.partition, record.offset, exc
                        )
                        continue
                    self._dispatch(result)

    def _dispatch(self, result: Result) -> None:
        future = self._waiting.pop(result.task_id, None)
        if future is not None and not future.done():
            future.set_result(result)
        for awaited in self._awaited.pop(result.task_id, ()):
            awaited.arrived(result)
        self._received[result.task_id] = result
        if len(self._received) > self._received_limit:
            self._received.popitem(last=False)
        for tenant, queue in self._subscribers:
            if tenant is None or tenant == result.tenant:
                if queue.full():
                    queue.get_nowait()  # a slow subscriber loses its oldest, never blocks others
                queue.put_nowait(result)

    def _reader_crashed(self, error: BaseException) -> None:
        self._reader_error = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        for waiters in self._awaited.values():
            for awaited in waiters:
                if not awaited.future.done():
                    awaited.future.set_exception(error)

    def _raise_if_broken(self) -> None:
        if self._reader_error is not None:
            raise RuntimeError("the results reader stopped") from self._reader_error

    def _require_reader(self) -> None:
        if not self.reads_results:
            raise RuntimeError("this client only submits (reads_results=False): no results")

    def _require_publisher(self) -> GatheringProducer:
        if self._publisher is None:
            raise RuntimeError("client is not started")
        return self._publisher


class _Awaited:
    """One `result_many` call: the results found so far, how many are missing, and the
    future that is done when none is."""

    __slots__ = ("found", "future", "missing")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.found: dict[str, Result] = {}
        self.missing = 0
        self.future = future

    def arrived(self, result: Result) -> None:
        self.found[result.task_id] = result
        self.missing -= 1
        if not self.missing and not self.future.done():
            self.future.set_result(None)


def _with_reply_to(request: InferenceRequest, reply_to: str) -> InferenceRequest:
    fields: dict[str, Any] = {"reply_to": reply_to}
    return dataclasses.replace(request, **fields)
