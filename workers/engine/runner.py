"""The loop every stage shares: intake with backpressure, batching, delivery, commits.

Order of a batch (Quix Streams' checkpoint order): process (bisecting a batch that fails,
`isolation`) -> make the outputs durable and then the input position (`delivery`: at least
once, or exactly once in a Kafka transaction). An offset is committed only after everything
it produced is durable, and a crash at any point replays work instead of losing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from functools import partial
from typing import Protocol, TypeVar

import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from schemas import ClaimCheck, ContractError, Status
from schemas.claimcheck import has_claims
from schemas.frames import Frame
from workers.component import Component
from workers.engine.delivery import AtLeastOnce, Delivery, ExactlyOnce
from workers.engine.framing import cut
from workers.engine.isolation import FailureTarget, RetryPolicy, process_isolating
from workers.engine.telemetry import StageTelemetry
from workers.engine.work import DEFAULT_MAX_RECORD_BYTES, StageOutput, Work
from workers.kafka.committed import stable_committed
from workers.kafka.offsets import OffsetTracker
from workers.lanes.admission import Admission
from workers.lanes.batcher import Batch, BatchWindow, LaneBatcher
from workers.lanes.budget import LatencyBudget
from workers.lanes.flow import FlowControl
from workers.lanes.quota import TenantQuota
from workers.lanes.slots import BatchSlots, SlotKind
from workers.ledger import Ledger, reached
from workers.names import Topics
from workers.observability import tracing
from workers.settings import LaneSettings, WorkerSettings
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_BACKOFF_S = 5.0
# A revoke waits this long at least for batches in flight to deliver or step aside; the group
# itself allows max_poll_interval_ms.
_REVOKE_WAIT_S = 30.0
_POLL_TIMEOUT_MS = 100
_AT_CAP_RETRY_BATCH = 256


class Stage(Protocol):
    """What makes preprocess, inference and postprocess different; the runner does the rest."""

    name: str
    input_topics: tuple[str, ...]
    """Highest lane first; a stage with `input_pattern` reads every topic matching it, one
    with `input_selector` (a `TopicSelector`) the topics it picks, followed as they change."""
    topics: Topics
    reaches: Status
    """The state a task is in after this stage; work already there is skipped (redelivery)."""

    def batching(self, batch_key: Hashable) -> BatchWindow:
        """The batching window of `batch_key` (see `Work.batch_key`)."""
        ...

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work: ...

    async def process(self, batch: list[Work]) -> StageOutput: ...


TopicSelector = Callable[[Iterable[str]], frozenset[str]]
"""Of the cluster's topics, those a stage reads (see `lanes.intake`)."""


class StageRunner(ConsumerRebalanceListener, Component):  # type: ignore[misc]
    """Runs one stage against Kafka and the ledger until stopped."""

    def __init__(
        self,
        stage: Stage,
        settings: WorkerSettings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        ledger: Ledger,
        telemetry: StageTelemetry,
        claims: ClaimCheck | None = None,
        group_id: str = "",
        admission: Admission | None = None,
        quota: TenantQuota | None = None,
        lanes: LaneSettings | None = None,
        weight_of: Callable[[str], float] | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        every_state: bool = True,
    ) -> None:
        """`max_record_bytes`: frames are split to stay below it (the producer's and the
        topics' limit). `every_state` False: the ledger gets a task's final state only, not
        the one this stage reaches (`redis.ledger_states`)."""
        self.stage = stage
        self._max_record_bytes = max_record_bytes
        self._every_state = every_state
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.ledger = ledger
        self.telemetry = telemetry
        self.claims = claims
        self.admission = admission
        """Preprocess admits requests here (tenant policy, lane, rate quota, in-flight cap)."""
        self.quota = quota
        """Every stage gives a finished task's place in its tenant's in-flight cap back."""
        self.offsets = OffsetTracker()
        self.delivery: Delivery
        if settings.delivery == "exactly_once":
            self.delivery = ExactlyOnce(
                producer,
                ledger,
                self.offsets,
                self._retry,
                group_id,
                topics=stage.topics,
                stage=stage.name,
            )
        else:
            self.delivery = AtLeastOnce(
                producer, consumer, ledger, self.offsets, self._retry, stage.name, stage.topics
            )
        self._policy = RetryPolicy(settings.max_attempts, settings.retry_backoff_ms / 1000)
        self._blame_to = FailureTarget(stage.name, stage.topics.results, stage.topics.dlq)
        lanes = lanes or LaneSettings()
        self._refresh_s = lanes.refresh_interval_s
        self._subscribed: frozenset[str] = frozenset()
        self._budget = LatencyBudget(lanes.latency_budget_ms, lanes.realtime_active_s)
        self._batcher: LaneBatcher[Work] = LaneBatcher(
            key=_key_of,
            lane_of=_lane_of,
            tenant_of=_tenant_of,
            size_of=_rows_of,
            cost_of=_cost_of,
            weight_of=weight_of or _equal_weight,
            window_of=stage.batching,
            min_share=lanes.min_shares(),
            row_cap_of=self._budget.row_cap,
        )
        self._flow = FlowControl(
            stage.topics.lane_of, settings.max_in_flight, lanes.low_lane_reserve
        )
        self.paused: set[TopicPartition] = set()
        self._settling: set[TopicPartition] = set()
        """Newly assigned partitions whose start is not known yet: paused meanwhile."""
        self._delayed: set[asyncio.TimerHandle] = set()
        self._at_cap: deque[Work] = deque()
        """Records held at their tenant's cap on tasks in flight (`lanes.over_quota` delay);
        unfinished, so their partitions pause once they hold their share."""
        self._cap_retry_s = lanes.cap_retry_ms / 1000
        self._slots = BatchSlots(settings.batches_in_flight, lanes.express_batches)
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._crashed: BaseException | None = None
        self._loops = TaskSet(self._crash)
        self._batches = TaskSet(self._crash)
        self._started = False
        self.processed = 0
        self.skipped = 0
        self._generation = 0

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{self.stage.name} runner already started")
        self._started = True
        pattern = getattr(self.stage, "input_pattern", None)
        select: TopicSelector | None = getattr(self.stage, "input_selector", None)
        if select is not None:  # a lane pool of tenants' topics: they change with the registry
            await self._follow(select)
            self._loops.start(self._follow_forever(select), f"{self.stage.name}-topics")
        elif pattern:  # per-tenant topics: every topic matching it, new ones as they appear
            self.consumer.subscribe(pattern=pattern, listener=self)
        else:
            self.consumer.subscribe(list(self.stage.input_topics), listener=self)
        self._loops.start(self._intake(), f"{self.stage.name}-intake")
        self._loops.start(self._dispatch(), f"{self.stage.name}-dispatch")
        self._loops.start(self._commit_loop(), f"{self.stage.name}-commit")
        if self.admission is not None and self.admission.holds_at_cap:
            self._loops.start(self._retry_at_cap(), f"{self.stage.name}-at-cap")
        self.telemetry.serving = True

    def request_stop(self) -> None:
        self.telemetry.serving = False
        self._stopping.set()
        self._room.set()

    async def wait(self) -> None:
        """Until a stop is requested or a loop crashed (then raises its error)."""
        await self._stopping.wait()
        if self._crashed is not None:
            raise self._crashed

    async def stop(self) -> None:
        """Stop intake, finish in-flight batches within the grace period, commit."""
        if not self._started:
            return
        self.request_stop()
        for timer in self._delayed:  # delayed records stay unfinished: the next owner reads them
            timer.cancel()
        self._delayed.clear()
        self._at_cap.clear()  # so do the ones held at their tenant's cap
        self._batcher.close()
        finished = await self._loops.wait(self.settings.shutdown_grace_s)
        finished = await self._batches.wait(self.settings.shutdown_grace_s) and finished
        if not finished:
            log.warning(
                "%s: grace period over with work in flight; it will be redelivered", self.stage.name
            )
            await self._batches.cancel()
            await self._loops.cancel()
        try:  # a broker that stopped answering must not hold a stopping worker
            async with asyncio.timeout(self.settings.shutdown_grace_s):
                await self._commit()
        except TimeoutError:
            log.warning(
                "%s: the last commit did not finish in %.0f s; its records will be read again",
                self.stage.name,
                self.settings.shutdown_grace_s,
            )
        self._started = False

    async def _still_running_after(self, seconds: float) -> bool:
        """Waits `seconds`; False as soon as a stop is requested."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
            return False
        except TimeoutError:
            return True

    def _crash(self, error: BaseException) -> None:
        if self._crashed is None:
            self._crashed = error
        self.request_stop()

    # ---- rebalance --------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The group waits for this callback before handing the partitions on. Queued work of
        # theirs is dropped (the next owner reads it again); batches in flight finish and
        # commit their offsets now, so the next owner starts after them instead of doing
        # them twice (in exactly-once mode: a duplicate the transactions could not stop).
        lost = set(revoked)
        # Batches formed but not started yet belong to the old generation: they are dropped
        # when they start.
        self._generation += 1
        self.paused -= lost  # a partition assigned again starts unpaused
        dropped = self._batcher.remove_if(lambda work: work.partition in lost)
        kept = [w for w in self._at_cap if w.partition not in lost]
        dropped += len(self._at_cap) - len(kept)
        self._at_cap = deque(kept)
        finished = await self._batches.wait(max(self.settings.shutdown_grace_s, _REVOKE_WAIT_S))
        # A batch still running past that wait must not deliver once the next owner starts.
        await self.delivery.settle()
        await self._commit()
        self.offsets.forget(revoked)
        log.info(
            "%s: revoked %d partitions (%d queued dropped, in-flight %s)",
            self.stage.name,
            len(lost),
            dropped,
            "finished" if finished else "still running",
        )

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka starts fetching a new partition from the committed offset it reads at once,
        # before this callback returns, and that read may miss offsets a transaction is still
        # committing (exactly-once: its records would be done twice). The partitions stay
        # paused until their stable committed offsets are known, and start from those.
        if assigned:
            self._settling |= set(assigned)
            self.consumer.pause(*assigned)
            try:
                await self._start_from_committed(assigned)
            finally:
                self._settling -= set(assigned)
                if ready := (set(assigned) - self.paused) & self.consumer.assignment():
                    self.consumer.resume(*ready)
        log.info(
            "%s: assigned %s",
            self.stage.name,
            sorted((tp.topic, tp.partition) for tp in assigned),
        )

    async def _start_from_committed(self, assigned: list[TopicPartition]) -> None:
        # What the last owner finished above its commit point rides in the commit's metadata;
        # those records are skipped, not done twice.
        commits = await stable_committed(self.consumer, assigned)
        for tp in assigned:
            commit = commits.get(tp)
            self.offsets.resume(tp, commit)
            if commit is not None:
                self.consumer.seek(tp, commit.offset)
        # Records written from now on cannot have been done by an earlier owner: the
        # ledger is asked about the older ones only (see `_skip_finished`).
        try:
            ends = await self.consumer.end_offsets(assigned)
        except KafkaError as exc:
            log.warning(
                "%s: end offsets unknown (%s): every record is checked", self.stage.name, exc
            )
        else:
            for tp, end in ends.items():
                self.offsets.assigned_at_end(tp, end)

    # ---- subscription (lane pools of tenants' topics) -------------------------------------

    async def _follow_forever(self, select: TopicSelector) -> None:
        while await self._still_running_after(self._refresh_s):
            await self._follow(select)

    async def _follow(self, select: TopicSelector) -> None:
        """Subscribe to the topics `select` picks of the cluster's now (the registry may have
        moved a tenant to another class, or a tenant's topic may be new)."""
        try:
            wanted = select(await self.consumer.topics())
        except KafkaError as exc:
            log.warning("%s: cannot list topics, subscription kept: %s", self.stage.name, exc)
            return
        if wanted == self._subscribed:
            return
        if wanted:
            self.consumer.subscribe(sorted(wanted), listener=self)
        else:
            # No tenant of these lanes now: hand back what is assigned, as a rebalance would.
            await self.on_partitions_revoked(list(self.consumer.assignment()))
            self.consumer.unsubscribe()
        log.info("%s: reading %s", self.stage.name, sorted(wanted) or "no topic")
        self._subscribed = wanted

    # ---- intake -----------------------------------------------------------------------

    async def _intake(self) -> None:
        while not self._stopping.is_set():
            if not self.consumer.subscription():  # a lane pool whose lanes have no tenant
                await asyncio.sleep(_POLL_TIMEOUT_MS / 1000)
                continue
            self._pause_and_resume()
            assignment = self.consumer.assignment()
            # Poll even while all is paused: the group evicts a consumer that stops polling.
            # At most `kafka.max_poll_records` a poll: every record is decoded before the loop
            # runs anything else, and lanes pause on their own bounds (`flow`), which one poll
            # may overshoot by that much.
            batches = await self.consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            for records in batches.values():
                for record in records:
                    self._take(record)
            if assignment and self.paused >= assignment:
                self._room.clear()
                try:
                    async with asyncio.timeout(_POLL_TIMEOUT_MS / 1000):
                        await self._room.wait()
                except TimeoutError:
                    pass

    def _pause_and_resume(self) -> None:
        """Apply the flow control: partitions at their share of `max_in_flight`, and lower
        lanes while a higher one has work queued, stop reading (see `flow`)."""
        assignment = self.consumer.assignment()
        wanted = self._flow.to_pause(
            assignment, self.offsets.unfinished_by_partition(), self._batcher.queued_by_lane()
        )
        if pause := wanted - self.paused:
            self.consumer.pause(*pause)
        # A partition still settling its start (`on_partitions_assigned`) stays paused.
        if resume := (self.paused - wanted) & assignment - self._settling:
            self.consumer.resume(*resume)
        self.paused = wanted

    def _take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if self._stopping.is_set():
            return  # not tracked, so never committed: the next owner reads it again
        tp = TopicPartition(record.topic, record.partition)
        self.offsets.taken(tp, record.offset)
        if self.offsets.already_done(tp, record.offset):
            self.offsets.finished(tp, record.offset)
            self.skipped += 1
            return
        work = self.stage.decode(record)
        work.generation = self._generation
        work.may_be_redelivered = self.offsets.may_be_redelivered(tp, record.offset)
        self._budget.saw(work.lane)
        self.telemetry.taken(work)
        for part in self._parts(work):
            self._batcher.put(part)

    def _parts(self, work: Work) -> list[Work]:
        """A frame larger than its key's batch, cut into parts that fit (see `framing.cut`);
        not in exactly-once mode, where a frame goes whole into one transaction."""
        if not isinstance(work.message, Frame) or not self.delivery.cuts_frames:
            return [work]
        return cut(work, self.stage.batching(work.batch_key).max_batch_size)

    # ---- batches ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Hands ready batches to processing tasks, at most `batches_in_flight` at once
        plus the express slots (top-lane batches only)."""
        while True:
            # A batch forms only once a slot would take it: as late as possible, so it holds
            # what arrived while the last batches ran, and the highest lane's newest work.
            batch = await self._batcher.next_batch(admit=self._slots.admit)
            if batch is None:
                return
            slot = self._slots.take(batch.lane)
            self._batches.start(self._run_batch(batch, slot), f"{self.stage.name}-{batch.batch_id}")

    async def _run_batch(self, batch: Batch[Work], slot: SlotKind) -> None:
        try:
            # Records of partitions revoked since they were taken are the next owner's now.
            items = [w for w in batch.items if w.generation == self._generation]
            if self.admission is not None:  # bad reply_to, duplicate ids: before any work
                await self._retry(partial(self.admission.screen, items), "ledger")
            fresh = await self._skip_finished(items)
            await self._resolve_claims(fresh)
            if self.admission is not None:
                holds = await self._retry(partial(self.admission.admit, fresh), "ledger")
                for work, delay_s in holds.delayed:
                    self._delay(work, delay_s)
                self._at_cap.extend(holds.at_cap)
                held = {id(work) for work in holds.works()}
                items = [w for w in items if id(w) not in held]
                fresh = [w for w in fresh if id(w) not in held]
            started = time.perf_counter()
            with tracing.active().batch(
                self.stage.name, batch.batch_id, [tp for w in fresh for tp in _traceparents(w)]
            ):
                output = (
                    await process_isolating(self.stage.process, fresh, self._policy, self._blame_to)
                    if fresh
                    else StageOutput()
                )
            # The model's own time where the stage has one: waiting for the model is not
            # what a bigger batch costs.
            run_s = output.model_s or time.perf_counter() - started
            self._budget.ran(batch.key, sum(w.rows for w in fresh), run_s)
            outgoing = await output.records(self.claims, self._max_record_bytes)
            transitions = output.transitions
            if not self._every_state:  # DONE and the error states only (`redis.ledger_states`)
                transitions = [t for t in transitions if t.is_final]
            # Tasks that ended leave their tenant's in-flight count in the ledger's round trip.
            release = self.quota.release_step(transitions) if self.quota is not None else None
            delivered = await self.delivery.deliver(
                items,
                outgoing,
                transitions,
                partial(self._still_ours, items),
                also=[release] if release is not None else [],
            )
            if not delivered:
                log.info(
                    "%s: batch of revoked partitions left to their next owner", self.stage.name
                )
                return
            self.processed += len(fresh)
            self.skipped += len(items) - len(fresh)
            self.telemetry.batch_done(batch, len(fresh), output)
        finally:
            self._slots.give_back(slot)
            self._batcher.tick()
            self._room.set()

    def _still_ours(self, items: list[Work]) -> bool:
        """No rebalance took these records' partitions since they were taken."""
        return all(w.generation == self._generation for w in items)

    async def _skip_finished(self, items: list[Work]) -> list[Work]:
        """Drop redelivered work whose task already got past this stage (for a frame: the
        tasks of it that did; the rest of the frame goes on)."""
        if not self.delivery.skips_redeliveries:
            return items
        ids = [
            task_id
            for w in items
            if w.error is None and w.may_be_redelivered
            for task_id in _task_ids(w)
        ]
        if not ids:
            return items
        states: dict[str, Status | None] = await self._retry(
            lambda: self.ledger.states(ids), "ledger"
        )
        fresh: list[Work] = []
        for work in items:
            if work.error is not None or not work.may_be_redelivered:
                fresh.append(work)
                continue
            left = [
                i
                for i, task_id in enumerate(_task_ids(work))
                if not reached(states.get(task_id), self.stage.reaches)
            ]
            if isinstance(work.message, Frame) and 0 < len(left) < len(work.message):
                part = work.message.take(left)
                fresh.append(dataclasses.replace(work, message=part, rows=part.rows))
            elif left:
                fresh.append(work)
        return fresh

    async def _resolve_claims(self, items: list[Work]) -> None:
        """Fetch claim-checked tensors; a task whose claim is gone fails with the reason."""
        claims = self.claims
        if claims is None:
            return
        for work in items:
            message = work.message
            if work.error is not None or message is None or not has_claims(message):
                continue
            try:
                work.message = await self._retry(partial(claims.resolve, message), "ledger")
            except ContractError as error:
                work.error = error

    async def _retry_at_cap(self) -> None:
        """Every `lanes.cap_retry_ms`, the oldest records held at their tenant's cap on tasks
        in flight go back to the batcher, a batch's worth at a time, to be admitted again."""
        while await self._still_running_after(self._cap_retry_s):
            self._release_at_cap()

    def _release_at_cap(self) -> None:
        admission = self.admission
        if admission is None:
            return
        still: deque[Work] = deque()
        released = 0
        while self._at_cap and released < _AT_CAP_RETRY_BATCH:
            work = self._at_cap.popleft()
            if work.generation != self._generation:
                continue
            if admission.is_full(work.tenant):  # found at its cap a moment ago: not yet
                still.append(work)
                continue
            self._batcher.put(work)
            released += 1
        still.extend(self._at_cap)
        self._at_cap = still

    def _delay(self, work: Work, delay_s: float) -> None:
        """Queue a record again after `delay_s` (its tenant's rate quota); its offset stays
        unfinished meanwhile, so a crash or rebalance hands it on instead of losing it."""

        def put_back() -> None:
            self._delayed.discard(timer)
            if not self._stopping.is_set() and work.generation == self._generation:
                self._batcher.put(work)

        timer = asyncio.get_running_loop().call_later(delay_s, put_back)
        self._delayed.add(timer)

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry a delivery step on broker or Redis errors, with capped exponential backoff."""
        delay_s = self.settings.retry_backoff_ms / 1000
        while True:
            try:
                result = await action()
                self.telemetry.unavailable.discard(what)
                return result
            except (
                KafkaError,
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
            ) as exc:
                log.warning(
                    "%s: %s unavailable (%s); retrying in %.1fs",
                    self.stage.name,
                    what,
                    exc,
                    delay_s,
                )
                self.telemetry.unavailable.add(what)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _MAX_BACKOFF_S)

    # ---- commits ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval_s = self.settings.commit_interval_ms / 1000
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(interval_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            await self._commit()
            await self.telemetry.sample(
                self.consumer,
                self.offsets.unfinished(),
                self._queued_by_tenant(),
                {self._flow.lane_of(tp) for tp in self.paused},
            )

    async def _commit(self) -> None:
        await self.delivery.commit()

    def _queued_by_tenant(self) -> dict[tuple[str, str], int]:
        """Work waiting in this worker, batcher and holds at a cap alike."""
        queued = dict(self._batcher.queued_by_tenant())
        for work in self._at_cap:
            key = (work.lane, work.tenant)
            queued[key] = queued.get(key, 0) + 1
        return queued


def _traceparents(work: Work) -> list[str | None]:
    message = work.message
    if isinstance(message, Frame):
        return message.traceparents
    traceparent = getattr(message, "traceparent", None)
    return [traceparent if isinstance(traceparent, str) else work.header("traceparent")]


def _task_ids(work: Work) -> list[str]:
    message = work.message
    return message.task_ids if isinstance(message, Frame) else [message.task_id]


def _key_of(work: Work) -> Hashable:
    return work.batch_key


def _rows_of(work: Work) -> int:
    return work.rows


def _lane_of(work: Work) -> str:
    return work.lane


def _tenant_of(work: Work) -> str:
    return work.tenant


def _cost_of(work: Work) -> float:
    return work.cost


def _equal_weight(tenant: str) -> float:
    return 1.0
