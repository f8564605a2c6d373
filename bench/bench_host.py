"""One host at full speed: the whole pipeline on one machine -- broker, Redis, `conveyor serve`'s
processes per stage and the load clients -- serving MiniLM, one 32-token sentence a request.

    python -m bench.bench_host [--source DIR] [--providers CUDAExecutionProvider,...]
        [--layouts 4:1:4,fused:8] [--clients 4] [--seconds 60] [--precision fp32|fp16]
        [--paced-fractions 0.1,0.5] [--worker-env NAME=VALUE ...] [--profile-s S] [--out FILE]

For each layout (preprocess:inference:postprocess processes, or `fused:N` fused workers, each
told its share of the cores as `conveyor serve` tells it, the topics widened to the most
processes reading one), `--clients` load processes keep `--window` requests each in flight
(closed loop) for `--seconds` after a warm-up, each reading the answers from a reply
topic of its own with a plain consumer. Reported: tasks/s answered inside the window (sum over
clients), latency p50/p99 of those answers, tasks lost (submitted, never answered after a
drain), CPU seconds by process kind, GPU utilization (nvidia-smi, where there is one), and
raw ONNX Runtime at batch 128 measured in the same run as the yardstick. `--paced-fractions`
then runs the layout that sustained the most again, paced at those fractions of its rate
(latency at 10 % and 50 % of capacity). On the lent GPU host
`bench/device_pipeline.sh` runs it (HOST=1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer

from bench import bench_model
from bench.bench_pipeline import (
    Deployment,
    cpu_delta,
    cpu_snapshot,
    percentiles,
    private_deployment,
)
from bench.bench_profile import SAMPLES_PER_S, StageProfile, load_profile
from schemas import InferenceRequest, InferenceResult, decode_result
from workers.client import Client
from workers.cores import available_cores
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.models.builders import build_minilm, find_minilm_package_dir
from workers.models.runtime import OnnxModel, RuntimeOptions
from workers.names import Topics
from workers.serve import HostPlan, plan_host
from workers.settings import KafkaSettings

TENANTS = ("acme", "globex", "initech")
SEQ_TOKENS = 32
RAW_BATCH = 128


@dataclass(frozen=True)
class LayoutRun:
    layout: HostPlan
    rate_per_s: float
    """0: a closed loop (saturating)."""
    tasks_per_s: float
    submitted: int
    lost: int
    failed: int
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float]
    seconds: float
    gpu_busy: list[float]
    profiles: list[tuple[str, StageProfile]] = dataclasses.field(default_factory=list)
    """(process kind, py-spy samples) with --profile-s."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="MiniLM's folder (default: the package)")
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument(
        "--layouts", default="1:1:1", help="pre:inf:post or fused:N processes, comma-separated"
    )
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--window", type=int, default=4096, help="requests in flight a client")
    parser.add_argument(
        "--rate-per-s",
        default="0",
        help="paced load over all clients, a run per rate for each layout: 0,1200 (0: saturate)",
    )
    parser.add_argument(
        "--paced-fractions",
        default="",
        help="then the best saturated layout paced at these fractions of its tasks/s: 0.1,0.5",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set for every worker, e.g. CONVEYOR_REDIS__LEDGER_STATES=final",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument(
        "--encoder-layers",
        type=int,
        default=6,
        help="MiniLM's first N encoder layers only (0: embeddings and pooling): on a machine "
        "without a GPU, a model about as fast as one, so the CPU stages are what is measured",
    )
    parser.add_argument("--raw-s", type=float, default=5.0)
    parser.add_argument(
        "--profile-s",
        type=float,
        default=0.0,
        help="py-spy the layout's first worker (fused, or preprocess when staged) and one load "
        "client this long in each saturated window; their top areas and functions go into "
        "the report, their raw stacks beside --out",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--reply-to", help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- one load client (a process of its own) ------------------------------------------------


async def run_client(args: argparse.Namespace) -> dict[str, object]:
    texts = args.texts.read_text().splitlines()
    consumer = AIOKafkaConsumer(
        args.reply_to,
        bootstrap_servers=args.bootstrap,
        group_id=f"{args.reply_to}-reader",
        auto_offset_reset="latest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    submitted = received = failed = 0
    in_window: list[float] = []
    started = time.time()
    window_from, window_to = started + args.warmup_s, started + args.warmup_s + args.seconds
    done = asyncio.Event()

    async def read() -> None:
        nonlocal received, failed
        while not done.is_set() or received < submitted:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    result = decode_result(record.value or b"", record.headers)
                    received += 1
                    if not isinstance(result, InferenceResult):
                        failed += 1
                    elif window_from * 1000 <= result.completed_at_ms < window_to * 1000:
                        in_window.append(float(result.completed_at_ms - result.submitted_at_ms))
            if done.is_set() and time.time() > window_to + 60:
                return  # the rest is lost

    reader = asyncio.create_task(read())
    # Submit-only: the reader above takes the answers (a client reading them too would decode
    # every result twice on this host's cores).
    inputs = [{"text": np.array([text], dtype=object)} for text in texts]
    async with Client(args.bootstrap, Topics(args.prefix), reads_results=False) as client:
        index = args.seed * 1_000_003
        # Paced (an open loop at --rate-per-s over all clients, every 10 ms what is due) or
        # saturating (a closed loop keeping --window requests in flight, 256 at a time).
        rate_per_s = float(args.rate_per_s) / args.clients
        while time.time() < window_to:
            if rate_per_s:
                due = int((time.time() - started) * rate_per_s) - submitted
                if due < 1:
                    await asyncio.sleep(0.01)
                    continue
            elif submitted - received >= args.window:
                await asyncio.sleep(0.001)
                continue
            chunk = [
                InferenceRequest.new(
                    tenant=TENANTS[(index + i) % len(TENANTS)],
                    pipeline="text-embedding",
                    inputs=inputs[(index + i) % len(inputs)],
                    reply_to=args.reply_to,
                )
                for i in range(min(due, 256) if rate_per_s else 256)
            ]
            index += len(chunk)
            await client.submit_many(chunk)
            submitted += len(chunk)
        done.set()
        await reader
    await consumer.stop()
    return {
        "submitted": submitted,
        "received": received,
        "in_window": len(in_window),
        "failed": failed,
        "latencies_ms": in_window[:: max(1, len(in_window) // 20000)],
    }


# ---- the host -------------------------------------------------------------------------------


def parse_layout(text: str, cores: int, gpus: tuple[int, ...]) -> HostPlan:
    """`pre:inf:post` processes per stage, or `fused:N` fused workers."""
    if text.startswith("fused:"):
        return plan_host(cores, gpus, fused=int(text.removeprefix("fused:")))
    pre, inf, post = (int(n) for n in text.split(":"))
    return HostPlan(cores, pre, inf, post, gpus)


def layout_name(plan: HostPlan) -> str:
    return (
        f"fused:{plan.fused}"
        if plan.fused
        else f"{plan.preprocess}:{plan.inference}:{plan.postprocess}"
    )


@contextlib.contextmanager
def gpu_busy_sampler() -> Iterator[list[float]]:
    """GPU utilization (%) every 0.5 s from nvidia-smi while the block runs; empty without."""
    samples: list[float] = []
    if shutil.which("nvidia-smi") is None:
        yield samples
        return
    process = subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            "-lms",
            "500",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with contextlib.suppress(ValueError):
                samples.append(float(line.split(",")[0]))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        process.terminate()
        process.wait()


def _children_cpu_s() -> float:
    """CPU seconds of the waited-for child processes (the load clients, once done)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_layout(
    deployment: Deployment,
    plan: HostPlan,
    args: argparse.Namespace,
    texts_file: Path,
    rate_per_s: float,
) -> LayoutRun:
    replies = [f"hostbench-{deployment.prefix}-{i}" for i in range(args.clients)]
    bootstrap = deployment.stack.config.kafka_bootstrap
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(t, 4) for t in replies]))
    chosen = dict(item.split("=", 1) for item in args.worker_env)
    workers = [
        (
            stage,
            {
                "CONVEYOR_WORKER__MAX_BATCH_SIZE": str(args.max_batch),
                **plan.environment(stage, i),
                **chosen,
            },
        )
        for stage in plan.kinds
        for i in range(plan.count(stage))
    ]
    with deployment.fleet({}, workers=workers) as fleet:
        before = cpu_snapshot(deployment.stack_pids, fleet)
        children_before = _children_cpu_s()
        with gpu_busy_sampler() as gpu_busy:
            clients = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.bench_host",
                        "--client",
                        "--bootstrap",
                        bootstrap,
                        "--prefix",
                        deployment.prefix,
                        "--reply-to",
                        reply,
                        "--texts",
                        str(texts_file),
                        "--seed",
                        str(i),
                        "--window",
                        str(args.window),
                        "--seconds",
                        str(args.seconds),
                        "--warmup-s",
                        str(args.warmup_s),
                        "--clients",
                        str(args.clients),
                        "--rate-per-s",
                        str(rate_per_s),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
                for i, reply in enumerate(replies)
            ]
            profiles = (
                _profile(
                    [
                        (f"{fleet.workers[0].stage} worker(s)", fleet.workers[0].process.pid),
                        ("load clients", clients[0].pid),
                    ],
                    args,
                )
                if args.profile_s and not rate_per_s
                else []
            )
            _keep_stacks(profiles, args)
            outputs = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in clients]
            window_samples = list(gpu_busy)
        cpu_s = cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))
        cpu_s.pop("client (this process)", None)  # the load runs in the client processes
        cpu_s["load clients"] = _children_cpu_s() - children_before
    latencies = [x for o in outputs for x in o["latencies_ms"]]
    p50, _, p99 = percentiles(latencies) if latencies else (float("nan"),) * 3
    submitted = sum(int(o["submitted"]) for o in outputs)
    return LayoutRun(
        layout=plan,
        rate_per_s=rate_per_s,
        tasks_per_s=sum(int(o["in_window"]) for o in outputs) / args.seconds,
        submitted=submitted,
        lost=submitted - sum(int(o["received"]) for o in outputs),
        failed=sum(int(o["failed"]) for o in outputs),
        p50_ms=p50,
        p99_ms=p99,
        cpu_s=cpu_s,
        seconds=args.seconds,
        gpu_busy=window_samples,
        profiles=_load_profiles(profiles),
    )


def _load_profiles(profiles: Sequence[tuple[str, Path]]) -> list[tuple[str, StageProfile]]:
    loaded = [(kind, load_profile(path, kind, 0.0)) for kind, path in profiles if path.exists()]
    for folder in {path.parent for _, path in profiles}:
        shutil.rmtree(folder, ignore_errors=True)
    return loaded


def _keep_stacks(profiles: Sequence[tuple[str, Path]], args: argparse.Namespace) -> None:
    """py-spy's raw stacks beside `--out` (`<out>-<kind>.txt`), for callers and flame graphs."""
    if args.out is None:
        return
    for kind, path in profiles:
        if path.exists():
            slug = kind.split(" ")[0]
            shutil.copy(path, args.out.with_name(f"{args.out.stem}-{slug}.txt"))


def _profile(
    targets: Sequence[tuple[str, int]], args: argparse.Namespace
) -> list[tuple[str, Path]]:
    """py-spy's raw stacks of each (kind, pid) over `--profile-s` seconds from the middle of the
    window (blocks meanwhile). `--native` on the first (the worker), so that time in ONNX
    Runtime, the CUDA driver or the tokenizer shows by library, not as its Python caller."""
    spy = shutil.which("py-spy")
    if spy is None:
        print("  --profile-s: no py-spy on PATH, not profiled", flush=True)
        return []
    time.sleep(args.warmup_s + max(0.0, (args.seconds - args.profile_s) / 2))
    folder = Path(tempfile.mkdtemp(prefix="conveyor-host-profile-"))
    recorders = []
    for index, (kind, pid) in enumerate(targets):
        path = folder / f"{index}.txt"
        command = [
            spy, "record", "--format", "raw", "--rate", str(SAMPLES_PER_S),
            "--duration", str(int(args.profile_s)), "--output", str(path), "--pid", str(pid),
        ]  # fmt: skip
        # Native stacks need the process paused at each sample (py-spy refuses --native with
        # --nonblocking): the sampled worker runs a little slower; the client keeps its pace.
        command.append("--native" if index == 0 else "--nonblocking")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        recorders.append((kind, path, process))
    for kind, _, process in recorders:
        _, err = process.communicate()
        if process.returncode != 0:
            print(f"  py-spy on the {kind} failed: {err.decode()[-300:]}", flush=True)
    return [(kind, path) for kind, path, _ in recorders]


def report(runs: Sequence[LayoutRun], raw: dict[str, float], args: argparse.Namespace) -> str:
    providers = args.providers.split(",")
    lines = [
        f"Machine: {bench_model.machine_description(providers)}.",
        f"Command: `python -m bench.bench_host {' '.join(sys.argv[1:])}`",
        "",
        "| raw ONNX Runtime | seq/s |",
        "|---|---|",
        *(f"| {name} | {value:,.0f} |" for name, value in raw.items()),
        "",
        "| processes | load | tasks/s | vs raw fp32 b128 | p50 ms | p99 ms | lost "
        "| failed | GPU busy (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = raw.get(f"fp32 batch {RAW_BATCH}", float("nan"))
    for run in runs:
        plan = run.layout
        busy = f"{statistics.median(run.gpu_busy):.0f}%" if run.gpu_busy else "-"
        load = (
            f"{args.clients} clients paced at {run.rate_per_s:,.0f}/s"
            if run.rate_per_s
            else f"{args.clients} clients x {args.window} in flight"
        )
        lines.append(
            f"| {layout_name(plan)} | {load} "
            f"| {run.tasks_per_s:,.0f} | {run.tasks_per_s / base:.2f} | {run.p50_ms:.1f} "
            f"| {run.p99_ms:.1f} | {run.lost} | {run.failed} | {busy} |"
        )
    lines += ["", "CPU seconds per 1,000 tasks answered (warm-up and drain included):", ""]
    kinds = sorted({k for run in runs for k in run.cpu_s})
    lines += ["| processes | load | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 2) + "|"]
    for run in runs:
        tasks = max(1.0, float(run.submitted - run.lost))  # the CPU covers warm-up and drain
        cells = " | ".join(f"{run.cpu_s.get(k, 0.0) / tasks * 1000:.2f}" for k in kinds)
        load = f"{run.rate_per_s:,.0f}/s" if run.rate_per_s else "saturated"
        lines.append(f"| {layout_name(run.layout)} | {load} | {cells} |")
    for run in runs:
        lines += _profile_tables(run)
    return "\n".join(lines)


def _profile_tables(run: LayoutRun) -> list[str]:
    """Where one worker's and one load client's CPU went (py-spy, innermost frame), each share
    also as microseconds of that kind's CPU per task in this run."""
    lines = []
    tasks = max(1.0, float(run.submitted - run.lost))
    for kind, profile in run.profiles:
        per_task_us = run.cpu_s.get(kind, 0.0) / tasks * 1e6
        lines += [
            "",
            f"{layout_name(run.layout)}, one of the {kind} sampled ({profile.samples:,} samples on "
            f"CPU); its kind's CPU {per_task_us:,.0f} us a task:",
            "",
            "| area or function (innermost frame) | share | ~us per task |",
            "|---|---:|---:|",
        ]
        for name, count in [*profile.areas, *profile.top]:
            share = count / max(1, profile.samples)
            lines.append(f"| {name} | {share:.1%} | {share * per_task_us:,.1f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.client:
        # Young collections every 50,000 allocations, as the workers: on one host the load's
        # CPU is taken from them. The standard loop, not uvloop: under uvloop the result
        # line (over 64 KB) came out cut at 64 KB on the lent host.
        gc.set_threshold(50_000, *gc.get_threshold()[1:])
        print(json.dumps(asyncio.run(run_client(args))))
        return
    providers = tuple(args.providers.split(","))
    gpu = providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    cores = available_cores()
    with tempfile.TemporaryDirectory(prefix="conveyor-host-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_minilm(
            args.source or find_minilm_package_dir(),
            repository,
            precision=args.precision,
            encoder_layers=args.encoder_layers,
        )
        version = bench_model.minilm_version(repository)
        tokenizer = bench_model.tokenizer_of(version)
        texts = bench_model.sentences(tokenizer, SEQ_TOKENS, 4096)
        texts_file = root / "texts.txt"
        texts_file.write_text("\n".join(texts))
        feeds = bench_model.feeds_for(tokenizer, texts[:RAW_BATCH])
        raw = {}
        for precision in ("fp32", "fp16") if args.precision == "fp16" else ("fp32",):
            options = RuntimeOptions(
                providers=providers, intra_op_threads=0 if gpu else cores, precision=precision
            )
            model = OnnxModel(version, options)
            raw[f"{precision} batch {RAW_BATCH}"] = bench_model.measure_raw(
                model, feeds, args.raw_s
            ).seq_per_s
            del model
        print(raw, flush=True)
        with private_deployment(root, repository, providers=providers) as deployment:
            runs = []
            best: tuple[float, HostPlan, Deployment] | None = None
            for text in args.layouts.split(","):
                plan = parse_layout(text, cores, (0,) if gpu else ())
                # Topics as wide as `conveyor serve` makes them for this plan.
                wide = dataclasses.replace(
                    deployment, partitions=max(KafkaSettings().partitions, plan.widest)
                )
                for rate in (float(r) for r in args.rate_per_s.split(",")):
                    runs.append(run_layout(wide.fresh(), plan, args, texts_file, rate))
                    print(runs[-1], flush=True)
                    if rate == 0 and (best is None or runs[-1].tasks_per_s > best[0]):
                        best = (runs[-1].tasks_per_s, plan, wide)
            for fraction in (float(f) for f in args.paced_fractions.split(",") if f):
                if best is None:
                    raise SystemExit("--paced-fractions needs a saturated run (--rate-per-s 0)")
                sustained, plan, wide = best
                paced = round(sustained * fraction)
                runs.append(run_layout(wide.fresh(), plan, args, texts_file, paced))
                print(runs[-1], flush=True)
    markdown = report(runs, raw, args)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")


if __name__ == "__main__":
    main()
