"""Lanes, fairness and dynamic batching through the whole pipeline, with MiniLM, in one run.

Run with ``.venv/bin/python -m bench.bench_lanes [--quick]``. Like ``bench.bench_pipeline``
it starts a private native stack and whole worker processes (one per stage), prints Markdown
tables, writes them into BENCHMARKS.md between the ``bench:lanes`` markers and draws
``bench/plots/lanes_*.png`` (with the ``bench`` extra installed).

(1) Batching gain: the inference worker at ``max_batch_size`` 1, 8, 32 and 128, driven by a
closed loop of ``CONCURRENCY`` outstanding requests (one 32-token sentence each):
throughput, and the server-side latency (submitted to completed) of every task.
(2) Isolation: capacity C is the batch-32 throughput of (1). A ``realtime`` tenant sends
0.1 C requests/s (paced) alone, then again while a ``bulk`` tenant, publishing from a
process of its own, offers 3 C requests/s; the realtime tenant's P99 under load against its
P99 idle, over rounds that each start on a fresh namespace and fleet (samples pooled).
``--isolation-only`` measures this part alone (``--capacity``, ``--topologies``,
``--rounds``, ``--window-s``: see ``--help``).
(3) Fairness: two ``standard`` tenants with weights 2 and 1 each keep a backlog larger than
what the worker serves in the window; tasks served per tenant while both are backlogged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis

from bench import bench_model
from bench.bench_pipeline import Deployment, percentiles, private_deployment
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest, InferenceResult
from workers.client import Client, Result
from workers.cores import available_cores
from workers.fleet import FUSED, STAGES
from workers.lanes.registry import TenantRegistry
from workers.names import RedisKeys, Topics
from workers.serve import plan_host
from workers.settings import load_settings
from workers.tenants import add_tenant

START, END = "<!-- bench:lanes:start -->", "<!-- bench:lanes:end -->"
BATCH_SIZES = (1, 8, 32, 128)
CAPACITY_BATCH_SIZE = 32
"""C, the capacity isolation and fairness are offered load against, is the throughput here."""
CONCURRENCY = 256
ISOLATION_TARGET = 1.5
FAIRNESS_TOLERANCE = 0.10
SEQUENCE_TOKENS = 32
TIMING_KEYS = (
    "preprocess_queue",
    "preprocess",
    "inference_queue",
    "inference",
    "postprocess_queue",
    "postprocess",
)


@dataclass(frozen=True)
class Options:
    quick: bool
    window_s: float | None = None
    """Each isolation window's length, if not the default."""
    rounds: int | None = None
    """Isolation rounds of each topology, if not the default."""
    fused_pools: tuple[int, int] = (1, 1)
    """Fused workers of the realtime pool and of the other lanes' pool (FUSED_POOLS)."""
    flood_processes: int = 1
    """Processes publishing the bulk tenant's flood, sharing its rate."""

    @property
    def batching_tasks(self) -> int:
        return 600 if self.quick else 2000

    @property
    def isolation_s(self) -> float:
        if self.window_s is not None:
            return self.window_s
        # 30 s at 0.1 C is a few hundred samples a window: a P99 of 120 (12 s) was the second
        # largest of them, which one scheduling hiccup decides.
        return 6.0 if self.quick else 30.0

    @property
    def isolation_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        return 1 if self.quick else 4

    @property
    def settle_s(self) -> float:
        """Paced realtime traffic before the idle window, not measured: the first seconds
        after a fleet starts (groups settling, first batches of every shape) are no idle
        system's steady state."""
        return 2.0 if self.quick else 4.0

    @property
    def fairness_s(self) -> float:
        return 8.0 if self.quick else 25.0


class EventLike(Protocol):
    def set(self) -> None: ...


# ---- driving -----------------------------------------------------------------------------


def sentence_requests(texts: Sequence[str], tenant: str) -> Iterator[InferenceRequest]:
    index = 0
    while True:
        text = np.array([texts[index % len(texts)]], dtype=object)
        index += 1
        yield InferenceRequest.new(tenant=tenant, pipeline="text-embedding", inputs={"text": text})


def _succeeded(result: Result) -> InferenceResult:
    if not isinstance(result, InferenceResult):
        raise RuntimeError(f"task failed: {result!r}")
    return result


def _latency_ms(result: Result) -> float:
    done = _succeeded(result)
    return float(done.completed_at_ms - done.submitted_at_ms)


async def closed_loop(
    client: Client, requests: Iterator[InferenceRequest], count: int, concurrency: int
) -> tuple[float, list[float]]:
    """`concurrency` requests outstanding until `count` are answered: (tasks/s, latencies)."""
    latencies: list[float] = []
    remaining = count

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            task_id = await client.submit(next(requests))
            latencies.append(_latency_ms(await client.result(task_id, timeout_s=300)))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(lane())
    return count / (time.perf_counter() - started), latencies


async def paced(
    client: Client, requests: Iterator[InferenceRequest], rate_per_s: float, duration_s: float
) -> list[InferenceResult]:
    results: list[InferenceResult] = []

    async def one(request: InferenceRequest) -> None:
        task_id = await client.submit(request)
        results.append(_succeeded(await client.result(task_id, timeout_s=300)))

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(int(rate_per_s * duration_s)):
            await asyncio.sleep(max(0.0, start + index / rate_per_s - time.perf_counter()))
            group.create_task(one(next(requests)))
    return results


def latencies_ms(results: Sequence[InferenceResult]) -> list[float]:
    return [float(r.completed_at_ms - r.submitted_at_ms) for r in results]


async def offer(
    client: Client, requests: Iterator[InferenceRequest], rate_per_s: float, duration_s: float
) -> int:
    """Publish at `rate_per_s` in 50 ms slices without waiting for results; returns the count."""
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration_s:
        due = int(rate_per_s * elapsed) - sent
        if due > 0:
            await client.submit_many(next(requests) for _ in range(due))
            sent += due
        await asyncio.sleep(0.05)
    return sent


async def set_tenants(deployment: Deployment, policies: dict[str, dict[str, object]]) -> None:
    redis = aioredis.Redis.from_url(deployment.stack.config.redis_url)
    try:
        registry = TenantRegistry(redis, RedisKeys(f"{deployment.prefix}:"))
        for tenant, policy in policies.items():
            await registry.set(tenant, **policy)
    finally:
        await redis.aclose()


# ---- (1) batching gain -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingRow:
    max_batch_size: int
    tasks_per_s: float
    latencies_ms: list[float]


def measure_batching(
    deployment: Deployment, texts: Sequence[str], options: Options, sizes: Sequence[int]
) -> list[BatchingRow]:
    rows = []
    for size in sizes:
        deployment = deployment.fresh()
        env = {"CONVEYOR_WORKER__MAX_BATCH_SIZE": str(size)}
        with deployment.fleet({}, {"inference": env}):
            tasks_per_s, latencies = asyncio.run(_batching_run(deployment, texts, options))
        rows.append(BatchingRow(size, tasks_per_s, latencies))
        print(f"  max_batch_size {size}: {tasks_per_s:,.0f} tasks/s", flush=True)
    return rows


async def _batching_run(
    deployment: Deployment, texts: Sequence[str], options: Options
) -> tuple[float, list[float]]:
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        requests = sentence_requests(texts, "bench")
        await closed_loop(client, requests, 256, 64)  # warm-up: sessions, batches, groups
        return await closed_loop(client, requests, options.batching_tasks, CONCURRENCY)


# ---- (2) isolation -----------------------------------------------------------------------


REALTIME_POOL = {"CONVEYOR_WORKER__LANES": '["realtime"]'}
LOWER_POOL = {
    "CONVEYOR_WORKER__LANES": '["standard", "bulk"]',
    "CONVEYOR_WORKER__SCHED_IDLE": "true",
    # Fewer, larger produce requests: less of the broker's time (shared with the top lane)
    # per bulk record, at a cost in latency only bulk pays.
    "CONVEYOR_KAFKA__LINGER_MS": "20",
}
PER_STAGE = "one worker per stage"
"""The topology of the latency-budget-off round."""
FUSED_POOLS = "fused lane pools"
"""Fused workers (every stage in one process) in a realtime pool and a pool of the other lanes,
each reading its tenants' request topics: the one-host layout of `conveyor serve --fused`
with its lanes apart. Pool sizes: `--fused-pools`."""
REALTIME_TENANT, BULK_TENANT = "interactive", "backfill"


@dataclass(frozen=True)
class Topology:
    workers: tuple[tuple[str, dict[str, str]], ...]
    """(stage, environment) of each worker."""
    tenant_topics: bool = False
    """Per-tenant request and result topics (`kafka.tenant_topics`), clients included."""


EVERY_STAGE_POOLS = tuple((stage, pool) for stage in STAGES for pool in (REALTIME_POOL, LOWER_POOL))
TOPOLOGIES: dict[str, Topology] = {
    PER_STAGE: Topology(tuple((stage, {}) for stage in STAGES)),
    "lane pools after preprocess": Topology(
        (
            ("preprocess", {}),
            ("inference", REALTIME_POOL),
            ("inference", LOWER_POOL),
            ("postprocess", REALTIME_POOL),
            ("postprocess", LOWER_POOL),
        )
    ),
    "lane pools at every stage": Topology(EVERY_STAGE_POOLS, tenant_topics=True),
    FUSED_POOLS: Topology(((FUSED, REALTIME_POOL), (FUSED, LOWER_POOL)), tenant_topics=True),
}
"""How the isolation rounds deploy the workers: every lane in one worker per stage; a realtime
inference and postprocess pool beside a pool for the other lanes under SCHED_IDLE
(`worker.lanes`, `worker.sched_idle`) after one preprocess worker for every request; or pools
at every stage, the preprocess pools reading their tenants' request topics
(`kafka.tenant_topics`)."""


@dataclass(frozen=True)
class IsolationRound:
    idle: list[InferenceResult]
    loaded: list[InferenceResult]
    bulk_offered: int

    @property
    def ratio(self) -> float:
        return _p99(self.loaded) / _p99(self.idle)


@dataclass(frozen=True)
class Isolation:
    """The pooled rounds of one topology."""

    topology: str
    rounds: list[IsolationRound]

    @property
    def idle(self) -> list[InferenceResult]:
        return [r for round_ in self.rounds for r in round_.idle]

    @property
    def loaded(self) -> list[InferenceResult]:
        return [r for round_ in self.rounds for r in round_.loaded]

    @property
    def idle_ms(self) -> list[float]:
        return latencies_ms(self.idle)

    @property
    def loaded_ms(self) -> list[float]:
        return latencies_ms(self.loaded)

    @property
    def ratio(self) -> float:
        return _p99(self.loaded) / _p99(self.idle)

    @property
    def median_round_ratio(self) -> float:
        return statistics.median(r.ratio for r in self.rounds)

    @property
    def met(self) -> bool:
        """Pooled and round by round (the median): a lone stall in one window moves the
        pooled P99 of that side, and a target must not be met by noise."""
        return max(self.ratio, self.median_round_ratio) <= ISOLATION_TARGET


@dataclass(frozen=True)
class IsolationResult:
    capacity_per_s: float
    window_s: float
    topologies: list[Isolation]
    without_budget: IsolationRound | None
    """One more round, one worker per stage, with `lanes.latency_budget_ms` 0: what the
    budget buys (when that topology is measured)."""


def _p99(results: Sequence[InferenceResult]) -> float:
    return percentiles(latencies_ms(results))[2]


def measure_isolation(
    deployment: Deployment,
    texts: Sequence[str],
    capacity_per_s: float,
    options: Options,
    topologies: Sequence[str],
) -> IsolationResult:
    """`options.isolation_rounds` rounds of each of `topologies`, taken in turn, each on a
    fresh namespace and fleet (no backlog left from the last), an idle window then a loaded
    one: the machine's drift over the run reaches every side alike. The order turns by one
    each round, so no topology always follows the same one (a loaded round leaves the broker
    busy for a while: its collector, the logs). Samples are pooled."""
    rounds: dict[str, list[IsolationRound]] = {name: [] for name in topologies}
    plan = [
        (topologies[(index + turn) % len(topologies)], False)
        for turn in range(options.isolation_rounds)
        for index in range(len(topologies))
    ]
    if PER_STAGE in topologies:
        plan.append((PER_STAGE, True))
    without_budget = None
    for index, (name, budget_off) in enumerate(plan):
        deployment = deployment.fresh()
        topology = TOPOLOGIES[name]
        tenants: dict[str, dict[str, object]] = {
            REALTIME_TENANT: {"lane": "realtime"},
            BULK_TENANT: {"lane": "bulk"},
        }
        asyncio.run(set_tenants(deployment, tenants))
        env = {"CONVEYOR_LANES__LATENCY_BUDGET_MS": "0"} if budget_off else {}
        if topology.tenant_topics:
            asyncio.run(_add_tenant_topics(deployment, list(tenants)))
            env["CONVEYOR_KAFKA__TENANT_TOPICS"] = "true"
        workers = [(stage, {**pool, **env}) for stage, pool in topology.workers]
        if name == FUSED_POOLS:
            workers = _fused_pools(options.fused_pools, env, deployment)
        with deployment.fleet({}, workers=workers):
            round_ = asyncio.run(
                _isolation_round(deployment, texts, capacity_per_s, options, topology.tenant_topics)
            )
        print(
            f"  round {index + 1}, {name}{', budget off' if budget_off else ''}: realtime P99 "
            f"idle {_p99(round_.idle):.1f} ms, under 3x bulk {_p99(round_.loaded):.1f} ms",
            flush=True,
        )
        if budget_off:
            without_budget = round_
        else:
            rounds[name].append(round_)
    return IsolationResult(
        capacity_per_s,
        options.isolation_s,
        [Isolation(name, found) for name, found in rounds.items()],
        without_budget,
    )


async def _add_tenant_topics(deployment: Deployment, tenants: Sequence[str]) -> None:
    settings = load_settings(
        kafka={
            "bootstrap": deployment.stack.config.kafka_bootstrap,
            "topic_prefix": deployment.prefix,
        }
    )
    for tenant in tenants:  # the private stack has no ACLs: the topics only
        await add_tenant(settings, tenant, f"User:{tenant}", None, grant=False)


def _fused_pools(
    sizes: tuple[int, int], env: dict[str, str], deployment: Deployment
) -> list[tuple[str, dict[str, str]]]:
    """The two pools of fused workers, each process told its share of the host's cores and its
    GPU as `conveyor serve` tells it."""
    gpu = deployment.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    plan = plan_host(available_cores(), (0,) if gpu else (), fused=sum(sizes))
    pools = [REALTIME_POOL] * sizes[0] + [LOWER_POOL] * sizes[1]
    return [
        (FUSED, {**plan.environment(FUSED, index), **pool, **env})
        for index, pool in enumerate(pools)
    ]


async def _isolation_round(
    deployment: Deployment,
    texts: Sequence[str],
    capacity_per_s: float,
    options: Options,
    tenant_topics: bool,
) -> IsolationRound:
    bootstrap = deployment.stack.config.kafka_bootstrap
    tenant = REALTIME_TENANT if tenant_topics else None
    async with Client(bootstrap, deployment.topics, tenant=tenant) as client:
        realtime = sentence_requests(texts, REALTIME_TENANT)
        await closed_loop(client, realtime, 256, 64)  # warm-up
        rate = 0.1 * capacity_per_s
        await paced(client, realtime, rate, options.settle_s)
        idle = await paced(client, realtime, rate, options.isolation_s)
        with BulkTenant(
            deployment,
            texts,
            3 * capacity_per_s,
            options.isolation_s,
            tenant_topics,
            options.flood_processes,
        ) as bulk:
            await asyncio.to_thread(bulk.wait_started)
            loaded = await paced(client, realtime, rate, options.isolation_s)
            offered = await asyncio.to_thread(bulk.offered)
        return IsolationRound(idle, loaded, offered)


class BulkTenant:
    """The bulk tenant's clients, each in a process of its own, as another tenant's clients
    are: their publishing never shares an event loop with the realtime client's. One process
    publishes ~35,000 requests/s at most: a flood of 3 C on a large host needs several."""

    def __init__(
        self,
        deployment: Deployment,
        texts: Sequence[str],
        rate_per_s: float,
        duration_s: float,
        tenant_topics: bool,
        processes: int = 1,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._started = [context.Event() for _ in range(processes)]
        self._sent: multiprocessing.SimpleQueue[int] = context.SimpleQueue()
        self._processes = [
            context.Process(
                target=_flood,
                args=(
                    deployment.stack.config.kafka_bootstrap,
                    deployment.prefix,
                    list(texts),
                    rate_per_s / processes,
                    duration_s,
                    tenant_topics,
                    started,
                    self._sent,
                ),
                name=f"bulk-tenant-{index}",
            )
            for index, started in enumerate(self._started)
        ]

    def __enter__(self) -> BulkTenant:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join()

    def wait_started(self) -> None:
        if not all(started.wait(60) for started in self._started):
            raise RuntimeError("the bulk tenant's clients did not start")

    def offered(self) -> int:
        """Requests the bulk tenant published, once it is done."""
        sent = sum(self._sent.get() for _ in self._processes)
        for process in self._processes:
            process.join()
        return sent


def _flood(
    bootstrap: str,
    prefix: str,
    texts: list[str],
    rate_per_s: float,
    duration_s: float,
    tenant_topics: bool,
    started: EventLike,
    sent: multiprocessing.SimpleQueue[int],
) -> None:
    async def run() -> int:
        tenant = BULK_TENANT if tenant_topics else None
        # Submit-only: nobody reads the bulk answers, and this host's cores are the workers'.
        async with Client(bootstrap, Topics(prefix), tenant=tenant, reads_results=False) as client:
            started.set()
            requests = sentence_requests(texts, BULK_TENANT)
            return await offer(client, requests, rate_per_s, duration_s)

    sent.put(asyncio.run(run()))


# ---- (3) fairness ------------------------------------------------------------------------


@dataclass(frozen=True)
class FairnessResult:
    weights: dict[str, float]
    served: dict[str, int]
    window_s: float

    @property
    def ratio(self) -> float:
        return self.served["heavy"] / max(1, self.served["light"])


def measure_fairness(
    deployment: Deployment, texts: Sequence[str], capacity_per_s: float, options: Options
) -> FairnessResult:
    deployment = deployment.fresh()
    weights = {"heavy": 2.0, "light": 1.0}
    asyncio.run(
        set_tenants(deployment, {t: {"lane": "standard", "weight": w} for t, w in weights.items()})
    )
    with deployment.fleet({}):
        served, window_s = asyncio.run(_fairness_run(deployment, texts, capacity_per_s, options))
    return FairnessResult(weights, served, window_s)


async def _fairness_run(
    deployment: Deployment, texts: Sequence[str], capacity_per_s: float, options: Options
) -> tuple[dict[str, int], float]:
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await closed_loop(client, sentence_requests(texts, "warm"), 256, 64)
        # Each tenant alone could keep the worker busy for the whole run.
        each = int(1.3 * capacity_per_s * options.fairness_s)
        heavy, light = sentence_requests(texts, "heavy"), sentence_requests(texts, "light")
        interleaved = (next(tenant) for _ in range(each) for tenant in (heavy, light))
        await client.submit_many(interleaved)
        served = {"heavy": 0, "light": 0}
        # Skip the first seconds (the worker's buffer filling), then count a window.
        settle_s, window_s = 3.0, options.fairness_s - 3.0
        started = time.perf_counter()
        async with asyncio.timeout(options.fairness_s + 60):
            async for result in client.results():
                now = time.perf_counter() - started
                if now >= settle_s + window_s:
                    break
                if now >= settle_s and isinstance(result, InferenceResult):
                    served[result.tenant] = served.get(result.tenant, 0) + 1
        return served, window_s


# ---- report ------------------------------------------------------------------------------


def batching_table(rows: Sequence[BatchingRow]) -> list[str]:
    base = rows[0].tasks_per_s
    lines = [
        "| max_batch_size | tasks/s | gain vs 1 | latency P50 (ms) | P99 (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p50, _, p99 = percentiles(row.latencies_ms)
        lines.append(
            f"| {row.max_batch_size} | {row.tasks_per_s:,.0f} | {row.tasks_per_s / base:.1f}x "
            f"| {p50:,.0f} | {p99:,.0f} |"
        )
    return lines


def isolation_table(result: IsolationResult) -> list[str]:
    lines = [
        "| topology | realtime tenant at 0.1 C | requests | P50 (ms) | P95 (ms) | P99 (ms) "
        "| P99 loaded / idle |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for found in result.topologies:
        idle, loaded = percentiles(found.idle_ms), percentiles(found.loaded_ms)
        offered = sum(r.bulk_offered for r in found.rounds)
        verdict = "met" if found.met else "missed"
        lines += [
            f"| {found.topology} | idle system | {len(found.idle_ms)} | {idle[0]:.1f} "
            f"| {idle[1]:.1f} | {idle[2]:.1f} | |",
            f"| {found.topology} | bulk tenant offering 3 C ({offered:,} requests) "
            f"| {len(found.loaded_ms)} | {loaded[0]:.1f} | {loaded[1]:.1f} | {loaded[2]:.1f} "
            f"| **{found.ratio:.2f}x** pooled, median of rounds "
            f"**{found.median_round_ratio:.2f}x** ({verdict}; rounds "
            + ", ".join(f"{r.ratio:.2f}x" for r in found.rounds)
            + ") |",
        ]
    unbudgeted = result.without_budget
    if unbudgeted is not None:
        off_idle, off_loaded = (
            percentiles(latencies_ms(unbudgeted.idle)),
            percentiles(latencies_ms(unbudgeted.loaded)),
        )
        lines.append(
            f"| {PER_STAGE}, latency budget off (one round) | bulk at 3 C "
            f"({unbudgeted.bulk_offered:,} requests) | {len(unbudgeted.loaded)} "
            f"| {off_loaded[0]:.1f} | {off_loaded[1]:.1f} | {off_loaded[2]:.1f} "
            f"| {unbudgeted.ratio:.2f}x (idle P99 {off_idle[2]:.1f}) |"
        )
    lines += [
        "",
        f"C = {result.capacity_per_s:,.0f} tasks/s; target: P99 loaded / idle <= "
        f"{ISOLATION_TARGET}x, met only if both the pooled ratio and the median of the rounds' "
        f"ratios are. {len(result.topologies[0].rounds)} round(s) of each topology, taken in "
        "turn (the order turning by one each round), each a fresh namespace and fleet, a few "
        "seconds of unmeasured realtime traffic, "
        f"an idle window, then a loaded one ({result.window_s:.0f} s each); the bulk tenant "
        "publishes from a process of its "
        "own. Lane pools after preprocess: a realtime inference and postprocess worker beside "
        "one of each for the other lanes under `worker.sched_idle` (and `kafka.linger_ms` "
        "20), one preprocess worker for every request on the shared requests topic. Lane "
        "pools at every stage: the same, and two preprocess pools too, each reading its own "
        "tenants' request topics (`kafka.tenant_topics`, clients on their tenants' topics).",
        "",
        "Where a realtime task's time goes (medians, ms; `_queue`: from a worker's intake to "
        "its batch; the rest is Kafka hops and records waiting in Kafka before intake):",
        "",
        "| realtime tenant | " + " | ".join(TIMING_KEYS) + " | end to end |",
        "|---|" + "---:|" * (len(TIMING_KEYS) + 1),
    ]
    for found in result.topologies:
        lines += [
            _timing_row(f"{found.topology}: idle", found.idle),
            _timing_row(f"{found.topology}: bulk at 3 C", found.loaded),
            _timing_row(f"{found.topology}: slowest 5 % under bulk", _slowest(found.loaded, 0.05)),
        ]
    if unbudgeted is not None:
        lines.append(_timing_row("latency budget off: bulk at 3 C", unbudgeted.loaded))
    return lines


def _slowest(results: Sequence[InferenceResult], fraction: float) -> list[InferenceResult]:
    ordered = sorted(results, key=lambda r: r.completed_at_ms - r.submitted_at_ms)
    return ordered[int(len(ordered) * (1 - fraction)) :]


def _timing_row(label: str, results: Sequence[InferenceResult]) -> str:
    cells = [statistics.median(r.timings_ms.get(key, 0.0) for r in results) for key in TIMING_KEYS]
    total = statistics.median(latencies_ms(results))
    return f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {total:.1f} |"


def fairness_table(result: FairnessResult) -> list[str]:
    total = sum(result.served.values())
    deviation = abs(result.ratio / 2.0 - 1)
    verdict = "met" if deviation <= FAIRNESS_TOLERANCE else "missed"
    lines = [
        "| tenant | weight | tasks served | share |",
        "|---|---:|---:|---:|",
    ]
    for tenant, weight in result.weights.items():
        served = result.served.get(tenant, 0)
        lines.append(f"| {tenant} | {weight:g} | {served:,} | {served / max(1, total):.1%} |")
    lines += [
        "",
        f"Served ratio {result.ratio:.2f} : 1 over {result.window_s:.0f} s with both "
        f"backlogged (target 2 : 1 within {FAIRNESS_TOLERANCE:.0%}: {verdict}, "
        f"off by {deviation:.1%}).",
    ]
    return lines


def plot(rows: Sequence[BatchingRow], isolation: IsolationResult) -> list[str]:
    """Throughput and P99 by batch size; the realtime tenant's latency distributions."""
    try:
        from bench.plots import figure, save
    except ImportError:  # matplotlib is the `bench` extra
        return []
    fig, (gain, tail) = figure(2)
    sizes = [str(r.max_batch_size) for r in rows]
    gain.bar(sizes, [r.tasks_per_s for r in rows], color="tab:blue")
    gain.set(xlabel="max_batch_size", ylabel="tasks/s", title="Inference worker throughput")
    tail.plot(sizes, [percentiles(r.latencies_ms)[2] for r in rows], marker="o", color="tab:red")
    tail.set(xlabel="max_batch_size", ylabel="P99 latency (ms)", title="Latency at 256 in flight")
    batching = save(fig, "lanes_batching")
    fig, (cdf,) = figure(1)
    for found in isolation.topologies:
        for label, values in (("idle", found.idle_ms), ("bulk at 3x capacity", found.loaded_ms)):
            ordered = np.sort(np.asarray(values))
            cdf.plot(
                ordered,
                np.arange(1, len(ordered) + 1) / len(ordered),
                label=f"{found.topology}: {label}",
            )
    cdf.set(xlabel="realtime latency (ms)", ylabel="fraction of requests", title="Isolation")
    cdf.legend()
    isolation_png = save(fig, "lanes_isolation")
    return [f"![{p.stem}](bench/plots/{p.name})" for p in (batching, isolation_png)]


def report(
    rows: Sequence[BatchingRow],
    isolation: IsolationResult,
    fairness: FairnessResult,
    arguments: Sequence[str],
) -> str:
    command = shlex.join([".venv/bin/python", "-m", "bench.bench_lanes", *arguments])
    lines = [
        f"Reproduce: `{command}` ({os.cpu_count()} cores; Kafka, Redis, the workers (one per "
        "stage unless said) and the clients on the same machine; MiniLM, one "
        f"{SEQUENCE_TOKENS}-token sentence per request, CPU).",
        "",
        f"**Batching gain** (closed loop, {CONCURRENCY} requests outstanding; latency is "
        "submitted to completed, server clocks):",
        "",
        *batching_table(rows),
        "",
        "**Isolation** (a realtime tenant while a bulk tenant floods the pipeline):",
        "",
        *isolation_table(isolation),
        "",
        "**Weighted fairness** (two standard tenants, weights 2 : 1, both backlogged):",
        "",
        *fairness_table(fairness),
    ]
    pictures = plot(rows, isolation)
    if pictures:
        lines += ["", *pictures]
    return "\n".join(lines)


def _capacity(deployment: Deployment, texts: Sequence[str], options: Options) -> float:
    (row,) = measure_batching(deployment, texts, options, [CAPACITY_BATCH_SIZE])
    return row.tasks_per_s


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    parser.add_argument(
        "--sizes", default=",".join(map(str, BATCH_SIZES)), help="max_batch_size values of (1)"
    )
    parser.add_argument("--source", type=Path, help="MiniLM's folder (default: the package)")
    parser.add_argument(
        "--isolation-only",
        action="store_true",
        help="measure (2) alone, print it, write nothing",
    )
    parser.add_argument(
        "--capacity",
        type=float,
        metavar="C",
        help="with --isolation-only: C in tasks/s (default: measured, the batch-32 throughput)",
    )
    parser.add_argument(
        "--topologies",
        default=",".join(TOPOLOGIES),
        help=f"isolation topologies, of {', '.join(TOPOLOGIES)} (comma-separated)",
    )
    parser.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="the workers' ONNX Runtime providers, comma-separated (default: CPU)",
    )
    parser.add_argument("--rounds", type=int, help="isolation rounds of each topology")
    parser.add_argument("--window-s", type=float, help="length of each isolation window")
    parser.add_argument(
        "--fused-pools",
        default="1,1",
        help=f"'{FUSED_POOLS}': fused workers of the realtime pool and of the other lanes",
    )
    parser.add_argument(
        "--flood-processes",
        type=int,
        default=1,
        help="processes publishing the bulk flood (one tops out near 35,000 requests/s)",
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(n) for n in args.sizes.split(","))
    if CAPACITY_BATCH_SIZE not in sizes:
        parser.error(f"--sizes must hold {CAPACITY_BATCH_SIZE}: C is the throughput there")
    realtime_pool, lower_pool = (int(n) for n in args.fused_pools.split(","))
    options = Options(
        quick=args.quick,
        window_s=args.window_s,
        rounds=args.rounds,
        fused_pools=(realtime_pool, lower_pool),
        flood_processes=args.flood_processes,
    )
    topologies = [name.strip() for name in args.topologies.split(",")]
    if unknown := set(topologies) - set(TOPOLOGIES):
        parser.error(f"unknown topologies: {sorted(unknown)}")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lanes-")))
        repository = root / "repository"
        bench_model.build_repository(repository, args.source)
        version = bench_model.minilm_version(repository)
        tokenizer = bench_model.tokenizer_of(version)
        texts = bench_model.sentences(tokenizer, SEQUENCE_TOKENS, 512)
        providers = tuple(name.strip() for name in args.providers.split(","))
        deployment = stack.enter_context(private_deployment(root, repository, providers=providers))
        if args.isolation_only:
            capacity = args.capacity or _capacity(deployment, texts, options)
            print(f"isolation at C = {capacity:,.0f} tasks/s", flush=True)
            isolation = measure_isolation(deployment, texts, capacity, options, topologies)
            print("\n".join(isolation_table(isolation)))
            return
        print("batching gain", flush=True)
        rows = measure_batching(deployment, texts, options, sizes)
        capacity = next(r.tasks_per_s for r in rows if r.max_batch_size == CAPACITY_BATCH_SIZE)
        print("isolation", flush=True)
        isolation = measure_isolation(deployment, texts, capacity, options, topologies)
        print("fairness", flush=True)
        fairness = measure_fairness(deployment, texts, capacity, options)
    block = report(rows, isolation, fairness, sys.argv[1:] if argv is None else argv)
    print(block)
    write_section(block, args.out, START, END, "Lanes, fairness and dynamic batching")


if __name__ == "__main__":
    main()
