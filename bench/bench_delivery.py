"""What exactly-once delivery costs against at-least-once, end to end, in one run.

Run with ``.venv/bin/python -m bench.bench_delivery [--quick]``. It starts a private native
stack (Kafka and Redis on free loopback ports, state in a temporary folder), builds
``tiny-classifier`` into a temporary repository and, for each delivery mode
(``CONVEYOR_WORKER__DELIVERY``), starts the three stages (one process each) under a fresh
topic prefix. Rounds interleave the modes (ALO, EOS, ALO, EOS, ...) so drift in the load of
the shared machine falls on both. Each round: a warm-up, a saturating burst of one-row
``tiny-classify`` requests (tasks/s from the first send to the last result), then a paced
run at a low rate. Latency is from ``submitted_at_ms`` to the moment the client receives the
result: under exactly-once that includes the last stage's commit, which ``completed_at_ms``
(stamped before it) does not. The Markdown table goes between the ``bench:delivery`` markers
in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from bench import bench_model
from bench.bench_pipeline import (
    Deployment,
    MakeRequest,
    burst,
    cpu_delta,
    cpu_snapshot,
    private_deployment,
    tiny_requests,
)
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest, InferenceResult
from workers.client import Client, Result
from workers.fleet import STAGES, WorkerFleet
from workers.models.builders import build_tiny_classifier

START, END = "<!-- bench:delivery:start -->", "<!-- bench:delivery:end -->"
MODES = ("at_least_once", "exactly_once")
SHORT = {"at_least_once": "ALO", "exactly_once": "EOS"}
BROKER = "kafka"
"""The broker's name among the stack's processes (its CPU is reported on its own)."""
WARMUP_REQUESTS = 500


# ---- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    quick: bool
    requests: int
    runs: int
    rate_per_s: float
    rate_s: float


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Conveyor exactly-once vs at-least-once")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--requests", type=int, default=None, help="requests per burst")
    parser.add_argument("--runs", type=int, default=3, help="saturating runs per mode")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    requests = args.requests or (2_000 if quick else 10_000)
    return Options(quick, requests, args.runs, rate_per_s=50, rate_s=2 if quick else 5)


# ---- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """Results of one run and the wall-clock ms at which the client received each."""

    results: list[InferenceResult]
    received_ms: list[float]

    def latencies_ms(self) -> list[float]:
        """Submitted (client clock) to received by the client: the whole trip, commits included."""
        return [t - r.submitted_at_ms for r, t in zip(self.results, self.received_ms, strict=True)]


@dataclass(frozen=True)
class Run:
    """One saturating burst in one mode, and the CPU every process spent on it."""

    mode: str
    received: Received
    elapsed_s: float
    cpu_s: dict[str, float]

    @property
    def tasks_per_s(self) -> float:
        return len(self.received.results) / self.elapsed_s

    def cpu_ms_per_task(self, name: str | None = None) -> float:
        seconds = sum(s for n, s in self.cpu_s.items() if name is None or n == name)
        return 1000 * seconds / len(self.received.results)


def _successes(results: Sequence[Result]) -> list[InferenceResult]:
    failed = [r for r in results if not isinstance(r, InferenceResult)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} tasks failed; first: {failed[0]!r}")
    return [r for r in results if isinstance(r, InferenceResult)]


async def _receive(client: Client, expected: set[str], count: int) -> Received:
    """The first result of each expected task, stamped on arrival, until ``count`` came."""
    seen: dict[str, tuple[Result, float]] = {}
    stream = cast(AsyncGenerator[Result, None], client.results())
    try:
        async for result in stream:
            if result.task_id in expected and result.task_id not in seen:
                seen[result.task_id] = (result, time.time() * 1000)
                if len(seen) == count:
                    break
    finally:
        await stream.aclose()
    pairs = list(seen.values())
    return Received(_successes([r for r, _ in pairs]), [t for _, t in pairs])


async def _start_receiving(
    client: Client, expected: set[str], count: int
) -> asyncio.Task[Received]:
    task = asyncio.create_task(_receive(client, expected, count))
    await asyncio.sleep(0)  # let it subscribe before the first request goes out
    return task


def _tracked(make: MakeRequest, expected: set[str], count: int) -> Iterator[InferenceRequest]:
    """Requests made as they are sent (``submitted_at_ms`` = send time), ids noted first."""
    for index in range(count):
        request = make(index)
        expected.add(request.task_id)
        yield request


async def saturate(client: Client, make: MakeRequest, count: int) -> tuple[Received, float]:
    """Publish ``count`` requests as fast as the client can; (results, first send to last)."""
    expected: set[str] = set()
    receiving = await _start_receiving(client, expected, count)
    started = time.perf_counter()
    await client.submit_many(_tracked(make, expected, count))
    async with asyncio.timeout(max(120.0, count / 50)):
        received = await receiving
    return received, time.perf_counter() - started


async def paced(
    client: Client, make: MakeRequest, rate_per_s: float, duration_s: float
) -> Received:
    """One request every ``1/rate_per_s`` for ``duration_s``."""
    count = int(rate_per_s * duration_s)
    expected: set[str] = set()
    receiving = await _start_receiving(client, expected, count)
    requests = _tracked(make, expected, count)
    loop_start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index, request in enumerate(requests):
            await asyncio.sleep(max(0.0, loop_start + index / rate_per_s - time.perf_counter()))
            group.create_task(client.submit(request))
    async with asyncio.timeout(60):
        return await receiving


# ---- one round: a fleet in one mode ------------------------------------------------------


async def _drive(
    deployment: Deployment, fleet: WorkerFleet, mode: str, options: Options
) -> tuple[Run, Received]:
    make = tiny_requests(options.requests)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await burst(client, make, WARMUP_REQUESTS, 120)  # sessions, connections, transactions
        before = cpu_snapshot(deployment.stack_pids, fleet)
        received, elapsed_s = await saturate(client, make, options.requests)
        run = Run(
            mode, received, elapsed_s, cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))
        )
        low = await paced(client, make, options.rate_per_s, options.rate_s)
    return run, low


def run_round(deployment: Deployment, mode: str, options: Options) -> tuple[Run, Received]:
    extra_env = {stage: {"CONVEYOR_WORKER__DELIVERY": mode} for stage in STAGES}
    with deployment.fleet({}, extra_env) as fleet:
        return asyncio.run(_drive(deployment, fleet, mode, options))


@dataclass
class ModeResult:
    mode: str
    runs: list[Run]
    low: list[Received]

    @property
    def median_run(self) -> Run:
        return sorted(self.runs, key=lambda r: r.tasks_per_s)[len(self.runs) // 2]

    def low_latencies_ms(self) -> list[float]:
        return [ms for received in self.low for ms in received.latencies_ms()]


def measure(deployment: Deployment, options: Options) -> dict[str, ModeResult]:
    """Rounds interleaved by mode, each on a fresh prefix (new topics, groups, txn ids)."""
    results = {mode: ModeResult(mode, [], []) for mode in MODES}
    for index in range(options.runs):
        for mode in MODES:
            deployment = deployment.fresh()
            run, low = run_round(deployment, mode, options)
            results[mode].runs.append(run)
            results[mode].low.append(low)
            p50, p99 = p50_p99(low.latencies_ms())
            print(
                f"  round {index + 1} {SHORT[mode]}: {run.tasks_per_s:,.0f} tasks/s; "
                f"{options.rate_per_s:.0f} req/s p50 {p50:.0f} ms, p99 {p99:.0f} ms",
                flush=True,
            )
    return results


# ---- report ------------------------------------------------------------------------------


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return float(p50), float(p99)


@dataclass(frozen=True)
class Summary:
    """The numbers of one table row."""

    tasks_per_s: float
    saturated: tuple[float, float]
    low: tuple[float, float]
    cpu_ms: float
    broker_cpu_ms: float


def summarize(m: ModeResult) -> Summary:
    median = m.median_run
    return Summary(
        median.tasks_per_s,
        p50_p99(median.received.latencies_ms()),
        p50_p99(m.low_latencies_ms()),
        median.cpu_ms_per_task(),
        median.cpu_ms_per_task(BROKER),
    )


def _row(name: str, runs: str, s: Summary, fmt: str) -> str:
    return (
        f"| {name} | {s.tasks_per_s:{fmt}} | {runs} "
        f"| {s.saturated[0]:{fmt}} / {s.saturated[1]:{fmt}} | {s.low[0]:{fmt}} / {s.low[1]:{fmt}} "
        f"| {s.cpu_ms:.2f} | {s.broker_cpu_ms:.2f} |"
    )


def ratio_row(alo: Summary, eos: Summary) -> str:
    def r(a: float, b: float) -> str:
        return f"{b / a:.2f}x" if a else "-"

    return (
        f"| **EOS / ALO** | {r(alo.tasks_per_s, eos.tasks_per_s)} | "
        f"| {r(alo.saturated[0], eos.saturated[0])} / {r(alo.saturated[1], eos.saturated[1])} "
        f"| {r(alo.low[0], eos.low[0])} / {r(alo.low[1], eos.low[1])} "
        f"| {r(alo.cpu_ms, eos.cpu_ms)} | {r(alo.broker_cpu_ms, eos.broker_cpu_ms)} |"
    )


def table(results: dict[str, ModeResult], options: Options) -> list[str]:
    lines = [
        f"| delivery | tasks/s (median of {options.runs}) | runs | saturated p50 / p99 ms "
        f"| {options.rate_per_s:.0f} req/s p50 / p99 ms | CPU ms / task (all) "
        "| broker CPU ms / task |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    summaries = {mode: summarize(m) for mode, m in results.items()}
    for mode, m in results.items():
        runs = ", ".join(f"{r.tasks_per_s:,.0f}" for r in m.runs)
        lines.append(_row(f"`{mode}` ({SHORT[mode]})", runs, summaries[mode], ",.0f"))
    lines.append(ratio_row(summaries["at_least_once"], summaries["exactly_once"]))
    return lines


def _command(options: Options) -> str:
    return f".venv/bin/python -m bench.bench_delivery{' --quick' if options.quick else ''}"


def report(
    results: dict[str, ModeResult], options: Options, load_start: float, load_end: float
) -> str:
    lines = [
        f"Exactly-once (`CONVEYOR_WORKER__DELIVERY=exactly_once`) against at-least-once, "
        f"`tiny-classify`, 1 row per request, 1/1/1 workers (pre/inf/post), "
        f"{options.requests:,} requests per saturating run; modes interleaved round by round "
        f"(ALO, EOS, ALO, ...), each round a fresh topic prefix and fleet, {WARMUP_REQUESTS} "
        f"warm-up requests first.",
        f"Machine: {bench_model.machine_description()}; broker, Redis, workers and client "
        f"share these cores. Load average (1 min) {load_start:.2f} at start, {load_end:.2f} "
        "at end (other sessions may share this machine).",
        f"Command: `{_command(options)}`; private native stack on free ports.",
        "",
        *table(results, options),
        "",
        "Latency is `submitted_at_ms` to the client receiving the result (read_committed), "
        "so it includes the last stage's commit; saturated = the median run, "
        f"{options.rate_per_s:.0f} req/s = {options.runs} paced runs of "
        f"{options.rate_s:.0f} s pooled. CPU is user+system of every process (broker, Redis, "
        "workers, client) over the median run, per task.",
        "",
        "What exactly-once costs: every batch of every stage becomes one Kafka transaction "
        "(AddPartitionsToTxn on first send, produce, AddOffsetsToTxn + TxnOffsetCommit instead "
        "of a plain offset commit, then EndTxn, whose commit markers the broker writes to every "
        "partition touched), and a worker runs its transactions one at a time. Downstream "
        "read_committed consumers (the next stage, and the client) see a batch only once its "
        "transaction commits and the last stable offset moves past it, so each of the three "
        "hops adds a commit round trip to the latency.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_tiny_classifier(repository)
        with private_deployment(root, repository) as deployment:
            results = measure(deployment, options)
    markdown = report(results, options, load_start, os.getloadavg()[0])
    print(markdown)
    write_section(markdown, BENCHMARKS, START, END, "Delivery: exactly-once vs at-least-once")


if __name__ == "__main__":
    main()
