"""Lanes, fairness and dynamic batching through the whole pipeline, with MiniLM, in one run.

Run with ``.venv/bin/python -m bench.bench_lanes [--quick]``. Like ``bench.bench_pipeline``
it starts a private native stack and whole worker processes (one per stage), prints Markdown
tables, writes them into BENCHMARKS.md between the ``bench:lanes`` markers and draws
``bench/plots/lanes_*.png`` (with the ``bench`` extra installed).

(1) Batching gain: the inference worker at ``max_batch_size`` 1, 8, 32 and 128, driven by a
closed loop of ``CONCURRENCY`` outstanding requests (one 32-token sentence each):
throughput, and the server-side latency (submitted to completed) of every task.
(2) Isolation: capacity C is the batch-32 throughput of (1). A ``realtime`` tenant sends
0.1 C requests/s (paced) alone, then again while a ``bulk`` tenant offers 3 C requests/s;
the realtime tenant's P99 under load against its P99 idle.
(3) Fairness: two ``standard`` tenants with weights 2 and 1 each keep a backlog larger than
what the worker serves in the window; tasks served per tenant while both are backlogged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from bench import bench_model
from bench.bench_pipeline import Deployment, percentiles, private_stack
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest, InferenceResult
from workers.client import Client, Result
from workers.fleet import STAGES
from workers.lanes.registry import TenantRegistry
from workers.names import RedisKeys

START, END = "<!-- bench:lanes:start -->", "<!-- bench:lanes:end -->"
BATCH_SIZES = (1, 8, 32, 128)
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

    @property
    def batching_tasks(self) -> int:
        return 600 if self.quick else 2000

    @property
    def isolation_s(self) -> float:
        return 6.0 if self.quick else 20.0

    @property
    def fairness_s(self) -> float:
        return 8.0 if self.quick else 25.0


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


@dataclass(frozen=True)
class IsolationResult:
    capacity_per_s: float
    idle: list[InferenceResult]
    loaded: list[InferenceResult]
    bulk_offered: int
    loaded_without_budget: list[InferenceResult]
    """The loaded phase again with `lanes.latency_budget_ms` 0: what the budget buys."""

    @property
    def idle_ms(self) -> list[float]:
        return latencies_ms(self.idle)

    @property
    def loaded_ms(self) -> list[float]:
        return latencies_ms(self.loaded)

    @property
    def ratio(self) -> float:
        return percentiles(self.loaded_ms)[2] / percentiles(self.idle_ms)[2]


def measure_isolation(
    deployment: Deployment, texts: Sequence[str], capacity_per_s: float, options: Options
) -> IsolationResult:
    phases: list[tuple[list[InferenceResult], list[InferenceResult], int]] = []
    for budget_ms in (None, "0"):
        deployment = deployment.fresh()
        tenants: dict[str, dict[str, object]] = {
            "interactive": {"lane": "realtime"},
            "backfill": {"lane": "bulk"},
        }
        asyncio.run(set_tenants(deployment, tenants))
        env = {} if budget_ms is None else {"CONVEYOR_LANES__LATENCY_BUDGET_MS": budget_ms}
        with deployment.fleet({}, {stage: env for stage in STAGES}):
            phases.append(
                asyncio.run(
                    _isolation_run(deployment, texts, capacity_per_s, options, budget_ms is None)
                )
            )
    (idle, loaded, offered), (_, unbudgeted, _) = phases
    return IsolationResult(capacity_per_s, idle, loaded, offered, unbudgeted)


async def _isolation_run(
    deployment: Deployment,
    texts: Sequence[str],
    capacity_per_s: float,
    options: Options,
    with_idle: bool,
) -> tuple[list[InferenceResult], list[InferenceResult], int]:
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        realtime = sentence_requests(texts, "interactive")
        bulk = sentence_requests(texts, "backfill")
        await closed_loop(client, realtime, 256, 64)  # warm-up
        rate = 0.1 * capacity_per_s
        idle = await paced(client, realtime, rate, options.isolation_s) if with_idle else []
        if idle:
            print(f"  realtime idle P99 {percentiles(latencies_ms(idle))[2]:.1f} ms", flush=True)
        flood = asyncio.create_task(offer(client, bulk, 3 * capacity_per_s, options.isolation_s))
        loaded = await paced(client, realtime, rate, options.isolation_s)
        offered = await flood
        p99 = percentiles(latencies_ms(loaded))[2]
        print(f"  realtime under 3x bulk P99 {p99:.1f} ms (budget {with_idle})", flush=True)
        return idle, loaded, offered


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
    idle, loaded = percentiles(result.idle_ms), percentiles(result.loaded_ms)
    unbudgeted_ms = latencies_ms(result.loaded_without_budget)
    unbudgeted = percentiles(unbudgeted_ms)
    verdict = "met" if result.ratio <= ISOLATION_TARGET else "missed"
    return [
        "| realtime tenant at 0.1 C | requests | P50 (ms) | P95 (ms) | P99 (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| idle system | {len(result.idle_ms)} | {idle[0]:.1f} | {idle[1]:.1f} | {idle[2]:.1f} |",
        f"| bulk tenant offering 3 C ({result.bulk_offered:,} requests) | "
        f"{len(result.loaded_ms)} | {loaded[0]:.1f} | {loaded[1]:.1f} | {loaded[2]:.1f} |",
        f"| the same, latency budget off | {len(unbudgeted_ms)} | {unbudgeted[0]:.1f} "
        f"| {unbudgeted[1]:.1f} | {unbudgeted[2]:.1f} |",
        "",
        f"C = {result.capacity_per_s:,.0f} tasks/s. P99 under load / P99 idle = "
        f"**{result.ratio:.2f}x** (target <= {ISOLATION_TARGET}x: {verdict}); with the "
        f"latency budget off (`lanes.latency_budget_ms=0`) "
        f"{unbudgeted[2] / idle[2]:.2f}x.",
        "",
        "Where a realtime task's time goes (medians, ms; `_queue`: from a worker's intake to "
        "its batch; the rest is Kafka hops and records waiting in Kafka before intake):",
        "",
        "| realtime tenant | " + " | ".join(TIMING_KEYS) + " | end to end |",
        "|---|" + "---:|" * (len(TIMING_KEYS) + 1),
        _timing_row("idle system", result.idle),
        _timing_row("bulk at 3 C", result.loaded),
        _timing_row("bulk at 3 C, budget off", result.loaded_without_budget),
    ]


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
    for label, values in (
        ("idle", isolation.idle_ms),
        ("bulk at 3x capacity", isolation.loaded_ms),
    ):
        ordered = np.sort(np.asarray(values))
        cdf.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label)
    cdf.set(xlabel="realtime latency (ms)", ylabel="fraction of requests", title="Isolation")
    cdf.legend()
    isolation_png = save(fig, "lanes_isolation")
    return [f"![{p.stem}](bench/plots/{p.name})" for p in (batching, isolation_png)]


def report(
    rows: Sequence[BatchingRow],
    isolation: IsolationResult,
    fairness: FairnessResult,
    options: Options,
) -> str:
    command = ".venv/bin/python -m bench.bench_lanes" + (" --quick" if options.quick else "")
    lines = [
        f"Reproduce: `{command}` ({os.cpu_count()} cores; Kafka, Redis, one worker per stage "
        f"and the client on the same machine; MiniLM, one {SEQUENCE_TOKENS}-token sentence "
        "per request, CPU).",
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    parser.add_argument(
        "--sizes", default=",".join(map(str, BATCH_SIZES)), help="max_batch_size values of (1)"
    )
    args = parser.parse_args(argv)
    options = Options(quick=args.quick)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lanes-")))
        repository = root / "repository"
        bench_model.build_repository(repository)
        version = bench_model.minilm_version(repository)
        tokenizer = bench_model.tokenizer_of(version)
        texts = bench_model.sentences(tokenizer, SEQUENCE_TOKENS, 512)
        native = stack.enter_context(private_stack(root / "stack"))
        pids = {s.name: s.pid for s in native.status() if s.pid is not None}
        deployment = Deployment(native, repository, root / "logs", pids)
        print("batching gain", flush=True)
        sizes = tuple(int(n) for n in args.sizes.split(","))
        rows = measure_batching(deployment, texts, options, sizes)
        capacity = statistics.median([r.tasks_per_s for r in rows if r.max_batch_size == 32])
        print("isolation", flush=True)
        isolation = measure_isolation(deployment, texts, capacity, options)
        print("fairness", flush=True)
        fairness = measure_fairness(deployment, texts, capacity, options)
    block = report(rows, isolation, fairness, options)
    print(block)
    write_section(block, args.out, START, END, "Lanes, fairness and dynamic batching")


if __name__ == "__main__":
    main()
