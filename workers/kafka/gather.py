"""The records of concurrent callers, produced together.

The idempotent producer keeps one produce request in flight per partition. When many
coroutines each hand their records over on their own (`produce_all`), their record batches
queue behind each other in aiokafka's accumulator: every caller pays a broker round trip of
its own, and under load a batch can wait there past the producer's timeout and fail with
`KafkaTimeoutError` (seen with 128 callers of `Client.submit` on 2 cores). Here a call's
records join a queue instead; while `in_flight` publications wait for the broker, new calls
gather, and the next free slot produces all of them at once (one record batch per
partition). A lone call goes out at once.

Each caller gets `produce_all`'s answer for its own records: a refusal (a record too large, a
topic that does not exist) fails only the callers whose records it names; a retriable error
fails every caller of that publication, and each retries its own call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer

from workers.component import Component
from workers.kafka.produce import Record, TopicCheck, produce_each, refusal_error
from workers.tasks import TaskSet

_Call = tuple[Sequence[Record], asyncio.Future[None]]


class GatheringProducer(Component):
    """Produces the records of concurrent `produce` calls together (see the module's
    docstring). Does not own `producer`: `stop()` leaves it open."""

    def __init__(
        self, producer: AIOKafkaProducer, *, in_flight: int = 1, max_records: int = 5_000
    ) -> None:
        if in_flight < 1 or max_records < 1:
            raise ValueError(f"in_flight and max_records must be >= 1: {in_flight}, {max_records}")
        self._producer = producer
        self._max_records = max_records
        self._slots = asyncio.Semaphore(in_flight)
        self._queue: asyncio.Queue[_Call] = asyncio.Queue()
        self._check = TopicCheck(producer)
        self._tasks = TaskSet(self._crashed)
        self._stopped: BaseException | None = None
        self._started = False
        self.publications = 0
        """Publications made so far (each one `produce_each` over the calls it gathered)."""

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("GatheringProducer can be started only once")
        self._started = True
        self._tasks.start(self._gather(), "gather-produce")

    async def stop(self) -> None:
        """Cancels publications in flight and fails every call still waiting. Idempotent."""
        self._stopped = self._stopped or RuntimeError("the producer stopped")
        await self._tasks.cancel()
        self._fail_queued()

    async def produce(self, records: Sequence[Record]) -> None:
        """Until the broker acknowledged every record of `records`; raises as `produce_all`
        for them. A caller cancelled while its records wait drops them; once they are handed
        to the producer they go out anyway."""
        if self._stopped is not None or not self._started:
            raise RuntimeError("the producer is not running") from self._stopped
        if not records:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((records, done))
        await done

    async def _gather(self) -> None:
        while True:
            first = await self._queue.get()
            await self._slots.acquire()
            calls, count = [first], len(first[0])
            while not self._queue.empty() and count < self._max_records:
                call = self._queue.get_nowait()
                calls.append(call)
                count += len(call[0])
            waiting = [call for call in calls if not call[1].done()]  # callers gone: skip
            if not waiting:
                self._slots.release()
                continue
            self.publications += 1
            self._tasks.start(self._publish(waiting), "gather-publish")

    async def _publish(self, calls: list[_Call]) -> None:
        try:
            everything = [record for records, _ in calls for record in records]
            refused = await produce_each(self._producer, everything, self._check)
        except Exception as exc:  # retriable: every caller of this publication retries
            error = exc
            self._settle(calls, lambda _: error)
            return
        except BaseException:
            self._settle(calls, lambda _: RuntimeError("the producer stopped"))
            raise
        finally:
            self._slots.release()
        starts = [0]
        for records, _ in calls:
            starts.append(starts[-1] + len(records))

        def own_error(i: int) -> Exception | None:
            return refusal_error(
                [
                    dataclasses.replace(r, index=r.index - starts[i])
                    for r in refused
                    if starts[i] <= r.index < starts[i + 1]
                ]
            )

        self._settle(calls, own_error)

    @staticmethod
    def _settle(calls: list[_Call], error_of: Callable[[int], Exception | None]) -> None:
        for i, (_, done) in enumerate(calls):
            if done.done():  # its caller was cancelled
                continue
            error = error_of(i)
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _crashed(self, error: BaseException) -> None:
        # Only the gathering loop can crash (a publication settles its own callers): nobody
        # may wait forever behind it.
        self._stopped = error
        self._fail_queued()

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            _, done = self._queue.get_nowait()
            if not done.done():
                done.set_exception(RuntimeError("the producer stopped"))
