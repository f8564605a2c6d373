"""End-to-end pipeline benchmark: framework overhead and MiniLM efficiency, in one run.

Run with ``.venv/bin/python -m bench.bench_pipeline [--quick]``. It starts a private native
stack (Kafka and Redis on free loopback ports, state in a temporary folder), builds
``tiny-classifier`` and MiniLM into a temporary repository, runs whole worker processes,
prints Markdown tables and writes them into BENCHMARKS.md between the ``bench:pipeline``
markers.

(a) Framework overhead: ``tiny-classify`` requests of one row, published as fast as the
client can, timed from the first send to the last result received (median of 3 runs);
latency is ``completed_at_ms - submitted_at_ms`` of each result. Then a paced low rate.
(b) Efficiency: raw ONNX Runtime MiniLM throughput at batch B on T cores (one run on T
threads, with and without spinning, and T single-threaded runs at once), then the pipeline
with the same B (the workers' defaults, and one run on T threads), and the ratio against the
fastest raw setup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import bench_model
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest, InferenceResult
from workers.client import Client, Result
from workers.fleet import FUSED, STAGES, WorkerFleet
from workers.models.builders import build_tiny_classifier
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import load_settings
from workers.stack import NativeStack, StackConfig

START, END = "<!-- bench:pipeline:start -->", "<!-- bench:pipeline:end -->"
OVERHEAD_TARGET_TASKS_S = 5000
EFFICIENCY_TARGET = 0.9
LATENCY_P50_MS = 10.0
LATENCY_P99_MS = 25.0
CPU_PER_K_S = 1.5
TINY_FEATURES = 16
TIMING_KEYS = ("preprocess", "inference_queue", "inference", "postprocess")

MakeRequest = Callable[[int], InferenceRequest]


# ---- options and environment -------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    quick: bool
    tiny_requests: int
    runs: int
    low_rate_per_s: float
    low_rate_s: float
    low_rate_warmup_s: float
    """The same paced load first, unmeasured: a fresh broker's JIT compiles the paths of a
    paced pattern for ~30 s, and a deployment's broker is long past that."""
    batch_size: int
    threads: int
    minilm_s: float
    scale_out: bool
    fused: bool
    """Also one fused worker (the three stages in one process)."""
    fused_rounds: int
    """MiniLM runs of the fused worker, each between two raw runs of the fastest setup: this
    machine drifts by several percent within minutes, so each run's ratio is against the
    model alone right before and after it, and the median counts."""
    efficiency: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Conveyor end-to-end pipeline benchmark")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--batch-size", type=int, default=32, help="MiniLM batch size B")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads T")
    parser.add_argument("--no-scale-out", action="store_true", help="skip 2 pre / 2 post")
    parser.add_argument("--overhead-only", action="store_true", help="skip (b), MiniLM")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused worker")
    parser.add_argument(
        "--fused-rounds", type=int, default=5, help="MiniLM fused runs, each between raw runs"
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        quick=quick,
        tiny_requests=2_000 if quick else 20_000,
        runs=3,
        low_rate_per_s=200,
        low_rate_s=5 if quick else 15,
        low_rate_warmup_s=2 if quick else 30,
        batch_size=args.batch_size,
        threads=args.threads,
        minilm_s=4 if quick else 20,
        scale_out=not args.no_scale_out,
        fused=not args.no_fused,
        fused_rounds=1 if quick else max(1, args.fused_rounds),
        efficiency=not args.overhead_only,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_stack(state_dir: Path) -> Iterator[NativeStack]:
    """Kafka and Redis of our own on free ports: never the stack someone runs on 9092/6379.
    The broker's JIT as `stack.kafka_jit` says (`CONVEYOR_STACK__KAFKA_JIT=full` for
    Kafka's own)."""
    config = StackConfig(
        state_dir=state_dir,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        kafka_jit=load_settings().stack.kafka_jit,
    )
    stack = NativeStack(config)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@dataclass
class Deployment:
    """One namespace (topic and key prefix) of the private stack, and its worker fleet."""

    stack: NativeStack
    repository: Path
    log_dir: Path
    stack_pids: dict[str, int]
    """Process (group) ids of the broker and Redis, read once: `status()` cannot run in a loop."""
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """The workers' `runtime.providers`."""
    partitions: int | None = None
    """Partitions of the pipeline's topics (default: the settings' default), as `conveyor
    serve` widens them to the most processes reading one topic."""

    def fresh(self) -> Deployment:
        """The same stack under a new prefix: new topics, nothing left over from a run."""
        return dataclasses.replace(self, prefix=f"bench{uuid.uuid4().hex[:8]}")

    @property
    def env(self) -> dict[str, str]:
        c = self.stack.config
        return {
            "KAFKA_BOOTSTRAP": c.kafka_bootstrap,
            "REDIS_URL": c.redis_url,
            "CONVEYOR_KAFKA__TOPIC_PREFIX": self.prefix,
            "CONVEYOR_REDIS__KEY_PREFIX": f"{self.prefix}:",
            "CONVEYOR_MODEL_REPOSITORY": str(self.repository),
            "CONVEYOR_RUNTIME__PROVIDERS": json.dumps(list(self.providers)),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            **({"CONVEYOR_KAFKA__PARTITIONS": str(self.partitions)} if self.partitions else {}),
        }

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @contextlib.contextmanager
    def fleet(
        self,
        counts: dict[str, int],
        extra_env: dict[str, dict[str, str]] | None = None,
        workers: Sequence[tuple[str, dict[str, str]]] = (),
    ) -> Iterator[WorkerFleet]:
        """Topics created, workers started and ready; every worker stopped on exit. `workers`
        (stage, environment) pairs, when given, are started instead of `counts`."""
        kafka: dict[str, object] = {
            "bootstrap": self.stack.config.kafka_bootstrap,
            "topic_prefix": self.prefix,
        }
        if self.partitions:
            kafka["partitions"] = self.partitions
        settings = load_settings(kafka=kafka)
        asyncio.run(ensure_pipeline_topics(settings))
        env = {**self.env, "CONVEYOR_LOG_LEVEL": "INFO"}  # wait_ready reads "assigned" lines
        fleet = WorkerFleet(env, self.log_dir / self.prefix)
        try:
            for stage, env in workers:
                fleet.start(stage, 1, env)
            for stage in () if workers else stages_of(counts):
                fleet.start(stage, counts.get(stage, 1), (extra_env or {}).get(stage))
            fleet.wait_ready(timeout_s=120)
            yield fleet
        finally:
            fleet.stop_all()


@contextlib.contextmanager
def private_deployment(root: Path, repository: Path, **options: Any) -> Iterator[Deployment]:
    """A private stack with its state under `root` and a first deployment on it (`options`:
    `Deployment`'s fields past the first four); the stack stops on exit."""
    with private_stack(root / "stack") as stack:
        pids = {s.name: s.pid for s in stack.status() if s.pid is not None}
        yield Deployment(stack, repository, root / "logs", pids, **options)


def stages_of(counts: dict[str, int]) -> tuple[str, ...]:
    """The worker kinds a layout starts: the three stages, or fused workers only."""
    return (FUSED,) if FUSED in counts else STAGES


# ---- CPU accounting ----------------------------------------------------------------------

_TICKS_S = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> tuple[int, float]:
    """(process group, user+system CPU seconds) of one process; (-1, 0) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return -1, 0.0
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICKS_S


def _group_cpu_s(pgid: int) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            group, cpu_s = _process_cpu_s(int(entry.name))
            if group == pgid:
                total += cpu_s
    return total


def cpu_snapshot(stack_pids: dict[str, int], fleet: WorkerFleet) -> dict[str, float]:
    """CPU seconds used so far by the broker, Redis, each stage's workers and this client."""
    snapshot = {name: _group_cpu_s(pid) for name, pid in stack_pids.items()}
    for worker in fleet.workers:
        name = f"{worker.stage} worker(s)"
        snapshot[name] = snapshot.get(name, 0.0) + _process_cpu_s(worker.process.pid)[1]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snapshot["client (this process)"] = usage.ru_utime + usage.ru_stime
    return snapshot


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


# ---- driving the pipeline ----------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """One saturating run: every result, and the wall time from first send to last result."""

    results: list[InferenceResult]
    elapsed_s: float
    send_s: float
    """Until the broker acknowledged the last request: the client's own publishing rate."""

    @property
    def tasks_per_s(self) -> float:
        return len(self.results) / self.elapsed_s

    def latencies_ms(self) -> list[float]:
        return [float(r.completed_at_ms - r.submitted_at_ms) for r in self.results]


def _successes(results: Sequence[Result]) -> list[InferenceResult]:
    failed = [r for r in results if not isinstance(r, InferenceResult)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} tasks failed; first: {failed[0]!r}")
    return [r for r in results if isinstance(r, InferenceResult)]


async def burst(client: Client, make: MakeRequest, count: int, timeout_s: float) -> Burst:
    """Publish ``count`` requests as fast as possible, then wait for every result.

    Requests are made lazily inside the send loop so ``submitted_at_ms`` is the send time.
    Results that arrive before we ask for them wait in the client's unclaimed buffer.
    """
    started = time.perf_counter()
    ids = await client.submit_many(make(i) for i in range(count))
    sent = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        results = await client.result_many(ids)
    return Burst(_successes(results), time.perf_counter() - started, sent - started)


async def paced(
    client: Client, make: MakeRequest, rate_per_s: float, duration_s: float
) -> tuple[list[float], list[float]]:
    """One request every ``1/rate_per_s``: (client round trips ms, server latencies ms)."""
    round_trips: list[float] = []
    server: list[float] = []

    async def one(index: int) -> None:
        started = time.perf_counter()
        task_id = await client.submit(make(index))
        result = _successes([await client.result(task_id, timeout_s=60)])[0]
        round_trips.append((time.perf_counter() - started) * 1000)
        server.append(float(result.completed_at_ms - result.submitted_at_ms))

    loop_start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(int(rate_per_s * duration_s)):
            await asyncio.sleep(max(0.0, loop_start + index / rate_per_s - time.perf_counter()))
            group.create_task(one(index))
    return round_trips, server


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p50), float(p95), float(p99)


# ---- (a) framework overhead --------------------------------------------------------------


@dataclass(frozen=True)
class OverheadResult:
    counts: dict[str, int]
    bursts: list[Burst]
    cpu_s: dict[str, float]
    low_rate_rtt_ms: list[float]
    low_rate_server_ms: list[float]
    low_rate_cpu_s: dict[str, float]
    """CPU of every process (workers, broker, Redis, client) over the paced run."""

    @property
    def median_burst(self) -> Burst:
        return sorted(self.bursts, key=lambda b: b.tasks_per_s)[len(self.bursts) // 2]


def tiny_requests(count: int) -> MakeRequest:
    rows = np.random.default_rng(0).standard_normal((count, 1, TINY_FEATURES)).astype(np.float32)

    def make(index: int) -> InferenceRequest:
        return InferenceRequest.new(
            tenant="bench", pipeline="tiny-classify", inputs={"features": rows[index % count]}
        )

    return make


async def _overhead_runs(
    deployment: Deployment, fleet: WorkerFleet, options: Options, counts: dict[str, int]
) -> OverheadResult:
    make = tiny_requests(options.tiny_requests)
    timeout_s = max(120.0, options.tiny_requests / 100)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await burst(client, make, 500, timeout_s)  # warm-up: sessions, connections, JIT paths
        before = cpu_snapshot(deployment.stack_pids, fleet)
        bursts = []
        for run in range(options.runs):
            bursts.append(await burst(client, make, options.tiny_requests, timeout_s))
            print(f"  {counts} run {run + 1}: {bursts[-1].tasks_per_s:,.0f} tasks/s", flush=True)
        cpu_s = cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))
        await asyncio.sleep(1.0)  # the bursts' stragglers (commits, samples) settle first
        await paced(client, make, options.low_rate_per_s, options.low_rate_warmup_s)
        before = cpu_snapshot(deployment.stack_pids, fleet)
        rtt, server = await paced(client, make, options.low_rate_per_s, options.low_rate_s)
        paced_cpu_s = cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))
    return OverheadResult(counts, bursts, cpu_s, rtt, server, paced_cpu_s)


def measure_overhead(deployment: Deployment, options: Options) -> list[OverheadResult]:
    layouts = [{"preprocess": 1, "inference": 1, "postprocess": 1}]
    if options.scale_out:
        layouts.append({"preprocess": 2, "inference": 1, "postprocess": 2})
    if options.fused:
        layouts.append({FUSED: 1})
    results = []
    for counts in layouts:
        with deployment.fleet(counts) as fleet:
            results.append(asyncio.run(_overhead_runs(deployment, fleet, options, counts)))
        deployment = deployment.fresh()
    return results


# ---- (b) MiniLM efficiency ---------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    """The MiniLM pipeline under one inference setting, and what it cost per process."""

    setting: str
    burst: Burst
    cpu_s: dict[str, float]

    def timing_means_ms(self) -> dict[str, float]:
        return {
            key: statistics.fmean(r.timings_ms.get(key, 0.0) for r in self.burst.results)
            for key in TIMING_KEYS
        }

    def inference_batches_ms(self) -> list[float]:
        """Each batch's ORT time; every task of a batch carries the same float, so dedupe."""
        return sorted({r.timings_ms["inference"] for r in self.burst.results})

    @property
    def mean_batch(self) -> float:
        return len(self.burst.results) / len(self.inference_batches_ms())

    @property
    def ort_time_share(self) -> float:
        """Sum of ORT batch times over wall time (> 100% when batches overlapped)."""
        return sum(self.inference_batches_ms()) / 1000 / self.burst.elapsed_s


@dataclass(frozen=True)
class EfficiencyResult:
    raw: dict[str, tuple[bench_model.RawResult, bench_model.RawResult]]
    """Raw ORT setups on the same cores and batch, each measured before and after the
    pipeline runs: T threads on one run (the workers' options otherwise), the same with
    ORT's own default (threads spin between runs, which the workers turn off), and T runs
    at once of one thread each (what the workers do by default)."""
    runs: list[PipelineRun]
    """One run of each setting; of the fused worker's rounds, the median one."""
    fused_rounds: list[tuple[PipelineRun, float, float]] = field(default_factory=list)
    """Each fused run with the fastest raw setup's seq/s right before and right after it."""

    def round_ratio(self, bracketed: tuple[PipelineRun, float, float]) -> float:
        run, before, after = bracketed
        return run.burst.tasks_per_s / ((before + after) / 2)

    def raw_seq_per_s(self, setup: str) -> float:
        before, after = self.raw[setup]
        return (before.seq_per_s + after.seq_per_s) / 2

    @property
    def best_raw(self) -> str:
        return max(self.raw, key=self.raw_seq_per_s)

    @property
    def raw_ms_per_batch(self) -> float:
        """Of one run on T threads: what a batch costs the model alone."""
        before, after = self.raw[RAW_ONE_RUN]
        return (before.ms_per_batch + after.ms_per_batch) / 2

    def ratio(self, run: PipelineRun) -> float:
        """Against the fastest raw setup: the model alone at its best on these cores; a fused
        round against the raw runs around it."""
        for bracketed in self.fused_rounds:
            if bracketed[0] is run:
                return self.round_ratio(bracketed)
        return run.burst.tasks_per_s / self.raw_seq_per_s(self.best_raw)


FUSED_SETTING = "fused worker"
RAW_ONE_RUN = "1 run x T threads"
RAW_SPINNING = "1 run x T threads, spinning"
RAW_CONCURRENT = "T runs x 1 thread"


def text_requests(texts: Sequence[str]) -> MakeRequest:
    def make(index: int) -> InferenceRequest:
        text = np.array([texts[index % len(texts)]], dtype=object)
        return InferenceRequest.new(
            tenant="bench", pipeline="text-embedding", inputs={"text": text}
        )

    return make


def measure_efficiency(deployment: Deployment, options: Options) -> EfficiencyResult:
    """Raw ORT setups, then the pipeline with the workers' defaults and with one run on T
    threads, then raw ORT again."""
    version = bench_model.minilm_version(deployment.repository)
    tokenizer = bench_model.tokenizer_of(version)
    texts = bench_model.sentences(tokenizer, 32, 4 * options.batch_size)
    feeds = bench_model.feeds_for(tokenizer, texts[: options.batch_size])
    cpu = ["CPUExecutionProvider"]
    t = options.threads
    setups = {
        RAW_ONE_RUN: (bench_model.load_model(version, cpu, t), 1),
        RAW_SPINNING: (bench_model.load_model(version, cpu, t, allow_spinning=True), 1),
        RAW_CONCURRENT: (bench_model.load_model(version, cpu, 1), t),
    }
    raw_s = 3 if options.quick else 10

    def raw() -> dict[str, bench_model.RawResult]:
        found = {}
        for name, (model, concurrent) in setups.items():
            found[name] = bench_model.measure_raw(model, feeds, raw_s, concurrent=concurrent)
            print(f"  raw ORT, {name}: {found[name].seq_per_s:,.0f} seq/s", flush=True)
        return found

    before = raw()
    count = max(
        4 * options.batch_size, int(max(r.seq_per_s for r in before.values()) * options.minilm_s)
    )
    runs = []
    settings = {
        "workers' defaults": {},
        f"1 run x {t} threads, 2 in flight": {
            "CONVEYOR_RUNTIME__INTRA_OP_THREADS": str(t),
            "CONVEYOR_RUNTIME__CONCURRENT_RUNS": "1",
            "CONVEYOR_WORKER__BATCHES_IN_FLIGHT": "2",
        },
    }
    for name, env in settings.items():
        deployment = deployment.fresh()
        runs.append(_pipeline_run(deployment, options, texts, count, name, env))
        print(f"  pipeline, {name}: {runs[-1].burst.tasks_per_s:,.0f} seq/s", flush=True)
    rounds: list[tuple[PipelineRun, float, float]] = []
    if options.fused:
        best = max(before, key=lambda name: before[name].seq_per_s)
        model, concurrent = setups[best]
        raw_before = before[best].seq_per_s
        for _ in range(options.fused_rounds):
            deployment = deployment.fresh()
            run = _pipeline_run(deployment, options, texts, count, FUSED_SETTING, {}, True)
            raw_after = bench_model.measure_raw(model, feeds, raw_s, concurrent=concurrent)
            rounds.append((run, raw_before, raw_after.seq_per_s))
            print(
                f"  pipeline, {FUSED_SETTING}: {run.burst.tasks_per_s:,.0f} seq/s between raw "
                f"{raw_before:,.0f} and {raw_after.seq_per_s:,.0f}",
                flush=True,
            )
            raw_before = raw_after.seq_per_s
        by_ratio = sorted(rounds, key=lambda r: r[0].burst.tasks_per_s / (r[1] + r[2]))
        runs.append(by_ratio[len(by_ratio) // 2][0])
    after = raw()
    return EfficiencyResult({name: (before[name], after[name]) for name in setups}, runs, rounds)


def _pipeline_run(
    deployment: Deployment,
    options: Options,
    texts: Sequence[str],
    count: int,
    setting: str,
    env: dict[str, str],
    fused: bool = False,
) -> PipelineRun:
    inference_env = {"CONVEYOR_WORKER__MAX_BATCH_SIZE": str(options.batch_size), **env}
    stage = FUSED if fused else "inference"
    with deployment.fleet({FUSED: 1} if fused else {}, {stage: inference_env}) as fleet:
        burst_, cpu_s = asyncio.run(_efficiency_run(deployment, fleet, texts, count))
    return PipelineRun(setting, burst_, cpu_s)


async def _efficiency_run(
    deployment: Deployment, fleet: WorkerFleet, texts: Sequence[str], count: int
) -> tuple[Burst, dict[str, float]]:
    make = text_requests(texts)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await burst(client, make, 2 * len(texts), 300)  # warm-up: loads the ORT session
        before = cpu_snapshot(deployment.stack_pids, fleet)
        pipeline = await burst(client, make, count, 600)
        return pipeline, cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))


# ---- report ------------------------------------------------------------------------------


def _layout(counts: dict[str, int]) -> str:
    if FUSED in counts:
        return f"fused x{counts[FUSED]}"
    return "/".join(str(counts.get(stage, 1)) for stage in STAGES)


def overhead_table(results: Sequence[OverheadResult], options: Options) -> list[str]:
    lines = [
        f"### (a) Framework overhead: `tiny-classify`, 1 row per request, "
        f"{options.tiny_requests:,} requests per run",
        "",
        "| workers pre/inf/post or fused | tasks/s (median of 3) | runs | client publish req/s "
        "| p50 ms | p95 ms | p99 ms | target |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        runs = ", ".join(f"{b.tasks_per_s:,.0f}" for b in r.bursts)
        median = r.median_burst
        p50, p95, p99 = percentiles(median.latencies_ms())
        verdict = "met" if median.tasks_per_s >= OVERHEAD_TARGET_TASKS_S else "MISSED"
        publish = len(median.results) / median.send_s
        lines.append(
            f"| {_layout(r.counts)} | {median.tasks_per_s:,.0f} | {runs} | {publish:,.0f} "
            f"| {p50:,.0f} "
            f"| {p95:,.0f} | {p99:,.0f} | >= {OVERHEAD_TARGET_TASKS_S:,}: {verdict} |"
        )
    lines += [
        "",
        "Latency under saturation is `completed_at_ms - submitted_at_ms` of the median run: "
        "mostly queueing behind the burst, not per-task cost. Paced (one request every "
        f"1/{options.low_rate_per_s:.0f} s, each awaited by the client) after "
        f"{options.low_rate_warmup_s:.0f} s of the same load unmeasured (a fresh broker's JIT "
        "compiles a paced pattern's paths for about that long), with the CPU of every process "
        "(workers, broker, Redis, client) over the measured run:",
        "",
        "| workers pre/inf/post or fused | rate | client round trip p50 / p99 ms "
        "| server p50 / p99 ms | CPU s per 1,000 tasks | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rtt, server = percentiles(r.low_rate_rtt_ms), percentiles(r.low_rate_server_ms)
        cpu_per_k = sum(r.low_rate_cpu_s.values()) / max(1, len(r.low_rate_rtt_ms)) * 1000
        met = rtt[0] <= LATENCY_P50_MS and rtt[2] <= LATENCY_P99_MS and cpu_per_k <= CPU_PER_K_S
        lines.append(
            f"| {_layout(r.counts)} | {options.low_rate_per_s:.0f} req/s for "
            f"{options.low_rate_s:.0f} s | {rtt[0]:.1f} / {rtt[2]:.1f} "
            f"| {server[0]:.0f} / {server[2]:.0f} | {cpu_per_k:.2f} "
            f"| p50 <= {LATENCY_P50_MS:.0f}, p99 <= {LATENCY_P99_MS:.0f} ms, "
            f"<= {CPU_PER_K_S} CPU s: {'met' if met else 'MISSED'} |"
        )
    return lines


def cpu_table(title: str, cpu_s: dict[str, float], elapsed_s: float) -> list[str]:
    cores = os.cpu_count() or 1
    lines = [
        f"{title} (wall {elapsed_s:.1f} s, {cores} cores = {cores * elapsed_s:.1f} CPU s):",
        "",
        "| process | CPU s | share of the machine |",
        "| --- | ---: | ---: |",
    ]
    for name, seconds in sorted(cpu_s.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds:.1f} | {seconds / (cores * elapsed_s):.0%} |")
    total = sum(cpu_s.values())
    lines.append(f"| all of them | {total:.1f} | {total / (cores * elapsed_s):.0%} |")
    return lines


def efficiency_table(e: EfficiencyResult, options: Options) -> list[str]:
    t = options.threads
    raw_cells = "; ".join(
        f"{name.replace('T', str(t))}: {before.seq_per_s:,.0f} / {after.seq_per_s:,.0f} seq/s"
        for name, (before, after) in e.raw.items()
    )
    lines = [
        f"### (b) MiniLM efficiency: batch {options.batch_size} on {t} cores, 32-token "
        "sentences, one sentence per request",
        "",
        "Raw ORT (the workers' `OnnxModel`, the same batch back to back, in this process "
        f"before / after the pipeline runs): {raw_cells}. The ratio is against the fastest of "
        f"them on average ({e.best_raw.replace('T', str(t))}); spinning is ORT's own default, "
        "which the workers turn off (`runtime.allow_spinning`).",
        "",
        "| inference worker | pipeline seq/s | tasks | ratio | target "
        "| preprocess ms | inference queue ms | ORT ms / batch | postprocess ms | mean batch "
        "| ORT time / wall |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in e.runs:
        ratio = e.ratio(run)
        verdict = "met" if ratio >= EFFICIENCY_TARGET else "MISSED"
        means = run.timing_means_ms()
        lines.append(
            f"| {run.setting} | {run.burst.tasks_per_s:,.0f} "
            f"| {len(run.burst.results):,} | {ratio:.2f} | >= {EFFICIENCY_TARGET}: {verdict} "
            f"| {means['preprocess']:.2f} | {means['inference_queue']:,.0f} "
            f"| {statistics.median(run.inference_batches_ms()):.0f} "
            f"| {means['postprocess']:.2f} | {run.mean_batch:.1f} | {run.ort_time_share:.0%} |"
        )
    if e.fused_rounds:
        cells = ", ".join(
            f"{e.round_ratio(r):.2f} ({r[0].burst.tasks_per_s:,.0f} between {r[1]:,.0f} and "
            f"{r[2]:,.0f})"
            for r in e.fused_rounds
        )
        lines += [
            "",
            f"Fused worker, {len(e.fused_rounds)} runs, each between two runs of the fastest "
            f"raw setup measured first, its ratio against their mean: {cells}; the row above is "
            "the median run.",
        ]
    lines += [
        "",
        "Workers' defaults: `runtime.concurrent_runs` 2 of one intra-op thread each (cores / "
        "runs), an express thread, `worker.batches_in_flight` 3. Stage timings are means of "
        "every result's `timings_ms`; ORT ms / batch is the median batch; ORT time / wall sums "
        "every batch's ORT time (over 100% when batches overlap).",
    ]
    return lines


def where_time_goes(e: EfficiencyResult) -> list[str]:
    lines = ["Where the time goes (measured above):", ""]
    cores = os.cpu_count() or 1
    for run in e.runs:
        slowdown = statistics.median(run.inference_batches_ms()) / e.raw_ms_per_batch
        model_worker = "fused" if run.setting == FUSED_SETTING else "inference"
        inference_s = sum(s for name, s in run.cpu_s.items() if name.startswith(model_worker))
        others_s = sum(run.cpu_s.values()) - inference_s
        lines.append(
            f"- {run.setting}: ORT ran {run.mean_batch:.1f} tasks per batch, each batch took "
            f"{slowdown:.2f}x the raw time of one run on all cores, ORT time / wall "
            f"{run.ort_time_share:.0%}; the {model_worker} worker used {inference_s:.1f} CPU s "
            f"and everything else (broker, Redis, other workers, client) {others_s:.1f} CPU s of "
            f"the {cores * run.burst.elapsed_s:.1f} the {cores} cores had."
        )
    return lines


def report(
    overhead: Sequence[OverheadResult], efficiency: EfficiencyResult | None, options: Options
) -> str:
    load_1m, load_5m, _ = os.getloadavg()
    first = overhead[0]
    lines = [
        f"Machine: {bench_model.machine_description()}; Kafka broker, Redis, every worker "
        "and the client all share these cores.",
        f"Command: `.venv/bin/python -m bench.bench_pipeline{' --quick' if options.quick else ''}"
        f"{'' if options.scale_out else ' --no-scale-out'}`"
        f"; private native stack on free ports; load average at the end {load_1m:.2f} / "
        f"{load_5m:.2f} (1 / 5 min; other sessions may share this machine).",
        "",
        *overhead_table(overhead, options),
        "",
        *cpu_table(
            f"CPU per process over the three saturated runs with {_layout(first.counts)} workers",
            first.cpu_s,
            sum(b.elapsed_s for b in first.bursts),
        ),
        "",
        *cpu_table(
            f"CPU per process over the paced run with {_layout(first.counts)} workers",
            first.low_rate_cpu_s,
            options.low_rate_s,
        ),
    ]
    for r in overhead[1:]:
        if FUSED in r.counts:
            lines += [
                "",
                *cpu_table(
                    f"CPU per process over the paced run with {_layout(r.counts)}",
                    r.low_rate_cpu_s,
                    options.low_rate_s,
                ),
            ]
    if efficiency is None:
        return "\n".join(lines)
    default_run = efficiency.runs[0]
    lines += [
        "",
        *efficiency_table(efficiency, options),
        "",
        *cpu_table(
            "CPU per process during the MiniLM pipeline run (default settings)",
            default_run.cpu_s,
            default_run.burst.elapsed_s,
        ),
        *[
            line
            for run in efficiency.runs
            if run.setting == FUSED_SETTING
            for line in [
                "",
                *cpu_table(
                    "CPU per process during the MiniLM run with one fused worker",
                    run.cpu_s,
                    run.burst.elapsed_s,
                ),
            ]
        ],
        "",
        *where_time_goes(efficiency),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_tiny_classifier(repository)
        bench_model.build_repository(repository)
        with private_deployment(root, repository) as deployment:
            print("(a) framework overhead", flush=True)
            overhead = measure_overhead(deployment, options)
            efficiency = None
            if options.efficiency:
                print("(b) MiniLM efficiency", flush=True)
                efficiency = measure_efficiency(deployment.fresh(), options)
    markdown = report(overhead, efficiency, options)
    print(markdown)
    if efficiency is not None:  # a partial run leaves the recorded section as it is
        write_section(markdown, BENCHMARKS, START, END, "Pipeline (end to end)")


if __name__ == "__main__":
    main()
