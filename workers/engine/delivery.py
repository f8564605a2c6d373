"""How a processed batch becomes durable: at-least-once or exactly-once.

at_least_once: produce every output and wait for the broker's acks, record the ledger
transitions, then mark the batch's offsets finished; a committer commits each partition up
to its lowest unfinished offset. A crash replays work; the ledger absorbs the replay.

exactly_once: one Kafka transaction per batch holds the outputs and the consumed offsets
(`send_offsets_to_transaction`); consumers downstream read committed records only, so a
batch's outputs and its input position become visible together or not at all. The
transactional id is stable per worker instance, so a restarted instance fences the zombie
and aborts its open transaction at once instead of waiting for the transaction timeout.
The ledger is written inside the transaction, before the commit: a redelivery after an
abort rewrites the same transitions (the ledger counts them as duplicates).

Delivery errors are classified where records are produced (`workers.kafka.produce`):
retriable ones (the broker down, a leader moving, a timeout) are retried without end, the
worker not ready meanwhile; a refusal that belongs to one record or topic (a `reply_to`
topic missing, not writable or internal, a record too large) fails that record's tasks only
(`workers.engine.refusals`) and the rest of the batch is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from workers.engine.refusals import Refusals
from workers.engine.work import Outgoing, Work
from workers.kafka.offsets import OffsetTracker
from workers.kafka.produce import TopicCheck, produce_each
from workers.ledger import Ledger, Transition
from workers.ledger.scripts import RedisStep
from workers.names import Topics

log = logging.getLogger(__name__)

T = TypeVar("T")


class Retry(Protocol):
    """Runs an action until it stops raising broker or Redis errors (the runner's)."""

    def __call__(self, action: Callable[[], Awaitable[T]], what: str, /) -> Awaitable[T]: ...


class FatalDelivery(RuntimeError):
    """The transaction could not be completed: the worker must restart from its last commit."""


class Delivery(Protocol):
    skips_redeliveries: bool
    """Whether the ledger may be trusted to skip work already past this stage."""
    cuts_frames: bool
    """Whether a frame larger than a batch may be cut into parts batched apart."""

    async def deliver(
        self,
        items: list[Work],
        outgoing: list[Outgoing],
        transitions: list[Transition],
        still_ours: Callable[[], bool] = lambda: True,
        also: Sequence[RedisStep] = (),
    ) -> bool:
        """Make a batch durable; False (nothing written) when its partitions were revoked
        meanwhile: their next owner does the work instead. `also`: commands that go with the
        ledger's write (`Ledger.record`)."""
        ...

    async def commit(self) -> None: ...

    async def settle(self) -> None:
        """Return once no delivery is midway: after a revoke, none may land later."""
        ...


_MAX_ROUNDS = 4
"""Refused records are answered by others (error results, dead letters), which could be
refused in turn (a dead letter too large): a few rounds at most."""


class _Sender:
    """Produces a batch's records; records refused for good are replaced by their tasks'
    failure answers (`Refusals`), the refused tasks' ledger moves by FAILED, in place."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics | None, stage: str) -> None:
        self.producer = producer
        self.check = TopicCheck(producer)
        self.refusals = Refusals(topics, stage) if topics is not None else None

    async def send(self, outgoing: list[Outgoing], transitions: list[Transition]) -> list[Outgoing]:
        """Sends `outgoing`, then what replaces the refused records; returns every record
        delivered in the end (`outgoing` less the refused, plus their replacements)."""
        delivered: list[Outgoing] = []
        pending = outgoing
        for _ in range(_MAX_ROUNDS):
            refused = await produce_each(
                self.producer, ((o.topic, o.key, o.value, o.headers) for o in pending), self.check
            )
            gone = {r.index for r in refused}
            delivered += [o for i, o in enumerate(pending) if i not in gone]
            if not refused:
                return delivered
            if self.refusals is None:
                raise KafkaError("; ".join(r.reason for r in refused))
            for refusal in refused:
                log.warning("%s record refused: %s", pending[refusal.index].kind, refusal.reason)
            pending = self.refusals.answer(refused, pending, transitions)
        log.error("records still refused after %d rounds: dropped", _MAX_ROUNDS)
        return delivered


class AtLeastOnce:
    skips_redeliveries = True
    cuts_frames = True
    """A frame may be cut into parts that are delivered apart: a crash between them
    replays the frame, and the ledger skips the parts already delivered."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        ledger: Ledger,
        offsets: OffsetTracker,
        retry: Retry,
        stage: str,
        topics: Topics | None = None,
    ) -> None:
        """`topics`: where refused records' tasks are answered (without it, a refused record
        is retried like a broker outage)."""
        self.producer, self.consumer, self.ledger = producer, consumer, ledger
        self.offsets, self.retry, self.stage = offsets, retry, stage
        self._sender = _Sender(producer, topics, stage)

    async def deliver(
        self,
        items: list[Work],
        outgoing: list[Outgoing],
        transitions: list[Transition],
        still_ours: Callable[[], bool] = lambda: True,
        also: Sequence[RedisStep] = (),
    ) -> bool:
        if not still_ours():
            return False
        if outgoing:
            # The idempotent producer makes a resend after a timeout safe within its session;
            # across sessions the ledger absorbs the repeat.
            await self.retry(lambda: self._sender.send(outgoing, transitions), "kafka")
        if transitions:
            await self.retry(lambda: self.ledger.record(transitions, also), "ledger")
        for work in items:
            if work.finish_part():
                self.offsets.finished(work.partition, work.record.offset)
        return True

    async def commit(self) -> None:
        offsets = self.offsets.to_commit()
        if not offsets:
            return
        try:
            # Explicit offsets: a bare commit() after a rebalance can fail (aiokafka #929).
            await self.consumer.commit(offsets)
            self.offsets.committed(offsets)
        except KafkaError as exc:
            # Not fatal: the offsets stay pending and the next commit carries them.
            log.warning("%s: commit failed (%s); will retry", self.stage, exc)

    async def settle(self) -> None:
        """At-least-once outputs may land twice; the ledger and identical answers absorb it."""


class ExactlyOnce:
    skips_redeliveries = False
    cuts_frames = False
    """A frame goes whole into one transaction: parts committed apart would be done twice
    after a crash between them, and nothing here skips them."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        ledger: Ledger,
        offsets: OffsetTracker,
        retry: Retry,
        group_id: str,
        topics: Topics | None = None,
        stage: str = "",
    ) -> None:
        self.producer, self.ledger, self.offsets = producer, ledger, offsets
        self.retry, self.group_id = retry, group_id
        self._sender = _Sender(producer, topics, stage or group_id)
        # One producer runs one transaction at a time; batches queue for it in turn.
        self._turn = asyncio.Lock()

    async def deliver(
        self,
        items: list[Work],
        outgoing: list[Outgoing],
        transitions: list[Transition],
        still_ours: Callable[[], bool] = lambda: True,
        also: Sequence[RedisStep] = (),
    ) -> bool:
        async with self._turn:
            # Checked with the turn held: a revoke that came while this batch waited for it
            # must not see these outputs committed after the partitions moved on.
            if not still_ours():
                return False
            for work in items:
                if work.finish_part():
                    self.offsets.finished(work.partition, work.record.offset)

            async def attempt() -> bool:
                # Checked before every attempt too: a transaction retried through a broker
                # restart must not commit after a revoke handed the partitions to another
                # worker, which reads from the last committed position (no KIP-447 generation
                # fencing in aiokafka's send_offsets_to_transaction to stop it broker-side).
                if not still_ours():
                    return False
                await self._transaction(outgoing, transitions, also)
                return True

            # An aborted transaction leaves nothing visible, so the whole of it is simply
            # tried again: a broker restart is ridden through, not a reason to exit.
            return await self.retry(attempt, "kafka")

    async def settle(self) -> None:
        """Wait out the transaction in progress, if any (the revoke calls this after it moved
        the generation on, so the next attempt of a retried one gives up)."""
        async with self._turn:
            pass

    async def _transaction(
        self,
        outgoing: list[Outgoing],
        transitions: list[Transition],
        also: Sequence[RedisStep],
    ) -> None:
        offsets = self.offsets.to_commit()
        try:
            await self.producer.begin_transaction()
            # Refused records never reach the broker (checked before sending), except one the
            # broker judges too large: that fails its batch, and so the transaction, which is
            # tried again with the replacement (`outgoing` now holds what was delivered).
            outgoing[:] = await self._sender.send(outgoing, transitions)
            if transitions:
                await self.retry(lambda: self.ledger.record(transitions, also), "ledger")
            if offsets:
                await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        except ProducerFenced as exc:
            raise FatalDelivery(f"a newer instance took this transactional id: {exc}") from exc
        except KafkaError:
            with contextlib.suppress(KafkaError, IllegalOperation):
                await self.producer.abort_transaction()
            raise
        try:
            await self.producer.commit_transaction()
        except ProducerFenced as exc:
            raise FatalDelivery(f"a newer instance took this transactional id: {exc}") from exc
        except KafkaError as exc:
            # The outcome is unknown: the broker may have committed before the error reached
            # us (a restart mid-commit), and trying the whole transaction again would then
            # commit its outputs twice. The next instance of this transactional id settles
            # it (InitProducerId completes or aborts it) and reads on from what committed.
            raise FatalDelivery(f"transaction outcome unknown after {exc!r}") from exc
        self.offsets.committed(offsets)

    async def commit(self) -> None:
        """Offsets are committed inside each batch's transaction."""
