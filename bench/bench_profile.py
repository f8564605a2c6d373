"""Where each stage's CPU per task goes: py-spy on the three workers during a tiny-model burst.

Run with ``.venv/bin/python -m bench.bench_profile [--tasks N]`` (py-spy comes with the
``bench`` extra: ``pip install -e '.[bench]'``; it needs ptrace, which root has). Same private
stack and worker processes as ``bench_pipeline`` (a), one per stage. After a warm-up,
``py-spy record`` attaches to each worker (on-CPU samples only, every thread), the burst of
``--tasks`` requests is published at once (or paced, ``--rate-per-s``, each awaited) and
waited for, and the recorders are stopped.
Per stage it reports the process's CPU per task from ``/proc`` over the burst and how the
samples split: by area (the package of the innermost Python frame: our stages, the codec,
aiokafka, redis-py, asyncio, ...) and by function (own time). Writes between the
``bench:profile`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bench_model
from bench import bench_pipeline as bp
from bench.report import BENCHMARKS, write_section
from workers.client import Client
from workers.fleet import FUSED, STAGES, WorkerFleet
from workers.models.builders import build_tiny_classifier

START, END = "<!-- bench:profile:start -->", "<!-- bench:profile:end -->"
MINILM_MARKERS = "<!-- bench:profile-minilm:start -->", "<!-- bench:profile-minilm:end -->"
PACED_MARKERS = "<!-- bench:profile-paced:start -->", "<!-- bench:profile-paced:end -->"
FUSED_MARKERS = "<!-- bench:profile-fused:start -->", "<!-- bench:profile-fused:end -->"
TOP_FUNCTIONS = 12
SAMPLES_PER_S = 250
AREAS = (
    ("workers/engine/", "engine (runner, delivery, frames, isolation)"),
    ("workers/stages/", "stage code (preprocess, inference, postprocess)"),
    ("workers/lanes/", "lanes (admission, batcher, DRR, flow)"),
    ("workers/pipelines/", "pipeline functions (tokenize, softmax, ...)"),
    ("workers/ledger/", "ledger"),
    ("workers/observability/", "metrics and tracing"),
    ("workers/", "other workers code"),
    ("schemas/", "codec and validation (schemas)"),
    ("aiokafka/", "aiokafka"),
    ("redis/", "redis-py"),
    ("prometheus_client/", "prometheus-client"),
    ("asyncio/", "asyncio event loop"),
    ("numpy/", "numpy"),
    ("msgpack/", "msgpack"),
)


@dataclass(frozen=True)
class StageProfile:
    stage: str
    cpu_s: float
    """The process's user+system CPU over the burst (/proc)."""
    samples: int
    areas: list[tuple[str, int]]
    top: list[tuple[str, int]]


def _area(frame: str) -> str:
    for marker, area in AREAS:
        if marker in frame:
            return area
    where = frame.rpartition(" (")[2].rstrip(")")
    if ".py" not in where and where:  # a native frame (py-spy --native): its library
        return f"native: {where.split(':')[0]}"
    return "other (builtins, C extensions, stdlib)"


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` shortened to the path from the package root."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("workers/", "schemas/", "aiokafka/", "redis/", "asyncio/", "msgpack/"):
        if marker in where:
            where = marker + where.split(marker, 1)[1]
            break
    else:
        where = Path(where).name
    return f"{name} ({where})"


_IDLE = ("select (selectors.py", "Condition.wait (threading.py", "_worker (thread.py")
"""Innermost frames of a thread waiting (the event loop's poll, an idle executor thread):
py-spy's own idle filter lets some through; they are not CPU."""


_IDLE_NATIVE = (
    "epoll_wait", "epoll_pwait", "poll (", "select (", "pthread_cond_", "futex", "sem_wait",
    "sem_timedwait", "PyThread_acquire_lock", "take_gil", "nanosleep", "clock_nanosleep",
)  # fmt: skip
"""Native frames of a waiting thread (`py-spy --native`): the wait calls, found among the
innermost few frames since libc's own frames below them are often known by address only."""


def _idle(frames: Sequence[str]) -> bool:
    """Whether a sampled stack is a thread waiting: its innermost Python frame is a wait, or
    one of its innermost native frames is a wait call. Python frames are matched on the
    shortened name: py-spy writes paths from sys.path's root (`concurrent/futures/thread.py`)."""
    if any(frame.startswith(_IDLE_NATIVE) for frame in frames[-3:]):
        return True
    python = next((f for f in reversed(frames) if ".py:" in f), "")
    return any(mark in _function(python) for mark in _IDLE)


def load_profile(path: Path, stage: str, cpu_s: float) -> StageProfile:
    """Aggregate py-spy's raw (collapsed) stacks: innermost frame owns the sample."""
    areas: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        function = _function(leaf)
        if _idle(frames):
            continue
        total += int(count)
        areas[_area(leaf)] += int(count)
        functions[function] += int(count)
    return StageProfile(
        stage, cpu_s, total, areas.most_common(), functions.most_common(TOP_FUNCTIONS)
    )


def _recorders(fleet: WorkerFleet, out: Path) -> list[tuple[str, subprocess.Popen[bytes]]]:
    spy = shutil.which("py-spy") or str(Path(bp.__file__).parents[1] / ".venv/bin/py-spy")
    started = []
    for worker in fleet.workers:
        command = [
            spy, "record", "--format", "raw", "--rate", str(SAMPLES_PER_S),
            "--output", str(out / f"{worker.stage}.txt"), "--pid", str(worker.process.pid),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append((worker.stage, process))
    return started


async def _burst(
    deployment: bp.Deployment,
    fleet: WorkerFleet,
    tasks: int,
    out: Path,
    make: bp.MakeRequest,
    rate_per_s: float,
) -> dict[str, float]:
    """CPU of every process while `tasks` requests go through: all at once, or one every
    1/`rate_per_s` (each awaited) when a rate is given."""
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await bp.burst(client, make, 500, 120)  # warm-up
        recorders = _recorders(fleet, out)
        await asyncio.sleep(1.0)  # py-spy attached
        before = bp.cpu_snapshot(deployment.stack_pids, fleet)
        if rate_per_s:
            round_trips, _ = await bp.paced(client, make, rate_per_s, tasks / rate_per_s)
            p50, _, p99 = bp.percentiles(round_trips)
            how = f"paced at {rate_per_s:,.0f} req/s, round trip p50 {p50:.1f} / p99 {p99:.1f} ms"
        else:
            result = await bp.burst(client, make, tasks, max(120.0, tasks / 100))
            how = f"at {result.tasks_per_s:,.0f} tasks/s"
        cpu = bp.cpu_delta(before, bp.cpu_snapshot(deployment.stack_pids, fleet))
        for _, recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        for stage, recorder in recorders:
            _, err = recorder.communicate(timeout=60)
            if recorder.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"py-spy on {stage} failed: {err.decode()[-500:]}")
        print(f"  {tasks} tasks {how} while sampled", flush=True)
        return cpu


def measure(
    tasks: int,
    pipeline: str,
    rate_per_s: float = 0.0,
    keep: Path | None = None,
    fused: bool = False,
    encoder_layers: int = 6,
) -> tuple[list[StageProfile], dict[str, float]]:
    kinds = (FUSED,) if fused else STAGES
    with tempfile.TemporaryDirectory(prefix="conveyor-profile-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        if pipeline == "text-embedding":
            # One 32-token sentence a request, as bench_host sends them.
            version = bench_model.build_repository(repository, encoder_layers=encoder_layers)
            tokenizer = bench_model.tokenizer_of(version)
            make = bp.text_requests(bench_model.sentences(tokenizer, 32, 1024))
        else:
            build_tiny_classifier(repository)
            make = bp.tiny_requests(tasks)
        with bp.private_deployment(root, repository) as deployment:
            with deployment.fleet({FUSED: 1} if fused else {}) as fleet:
                cpu = asyncio.run(_burst(deployment, fleet, tasks, root, make, rate_per_s))
            stages = [
                load_profile(root / f"{stage}.txt", stage, cpu.get(f"{stage} worker(s)", 0.0))
                for stage in kinds
            ]
            if keep is not None:  # the raw stacks, for a flame graph or a closer look
                keep.mkdir(parents=True, exist_ok=True)
                for stage in kinds:
                    shutil.copy(root / f"{stage}.txt", keep / f"{stage}.txt")
    return stages, cpu


def report(
    stages: Sequence[StageProfile],
    cpu: dict[str, float],
    tasks: int,
    pipeline: str,
    rate_per_s: float = 0.0,
    fused: bool = False,
    encoder_layers: int = 6,
) -> str:
    paced = f" --rate-per-s {rate_per_s:g}" if rate_per_s else ""
    paced += " --fused" if fused else ""
    paced += f" --encoder-layers {encoder_layers}" if encoder_layers != 6 else ""
    workers = "one fused worker" if fused else "one worker per stage"
    how = (
        f"one request every 1/{rate_per_s:g} s, each awaited"
        if rate_per_s
        else "every request published at once"
    )
    lines = [
        f"Command: `.venv/bin/python -m bench.bench_profile --tasks {tasks} --pipeline "
        f"{pipeline}{paced}`; {workers}, `{pipeline}`, {how}; "
        "py-spy samples each worker "
        f"{SAMPLES_PER_S} times a second while on CPU (every thread). CPU from /proc over the "
        "run.",
        "",
        "| process | CPU ms per 1,000 tasks |",
        "| --- | ---: |",
    ]
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds / tasks * 1e6:,.0f} |")
    for stage in stages:
        per_task_us = stage.cpu_s / tasks * 1e6
        lines += [
            "",
            f"**{stage.stage}**: {per_task_us:,.1f} us CPU per task; where its samples fall "
            "(innermost frame), as shares and as that share of the CPU per task:",
            "",
            "| area | share | ~us per task |",
            "| --- | ---: | ---: |",
        ]
        for area, count in stage.areas:
            share = count / max(1, stage.samples)
            lines.append(f"| {area} | {share:.1%} | {share * per_task_us:,.1f} |")
        lines += ["", "| function (own time) | share | ~us per task |", "| --- | ---: | ---: |"]
        for function, count in stage.top:
            share = count / max(1, stage.samples)
            lines.append(f"| `{function}` | {share:.1%} | {share * per_task_us:,.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Conveyor per-stage CPU profile")
    parser.add_argument("--tasks", type=int, default=20_000, help="requests in the burst")
    parser.add_argument(
        "--pipeline",
        choices=["tiny-classify", "text-embedding"],
        default="tiny-classify",
        help="text-embedding: MiniLM, one 32-token sentence a request (own section)",
    )
    parser.add_argument(
        "--rate-per-s",
        type=float,
        default=0.0,
        help="requests paced at this rate, each awaited, instead of all at once (own section)",
    )
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw stacks into this folder")
    parser.add_argument(
        "--fused", action="store_true", help="one fused worker instead (own section)"
    )
    parser.add_argument(
        "--encoder-layers",
        type=int,
        default=6,
        help="text-embedding: MiniLM's first N encoder layers only (0: about a GPU's speed)",
    )
    options = parser.parse_args(argv)
    o = options
    stages, cpu = measure(
        o.tasks, o.pipeline, o.rate_per_s, o.keep, o.fused, encoder_layers=o.encoder_layers
    )
    markdown = report(
        stages, cpu, o.tasks, o.pipeline, o.rate_per_s, o.fused, encoder_layers=o.encoder_layers
    )
    print(markdown)
    if options.fused:
        title = "Where the fused worker's CPU per task goes"
        write_section(markdown, BENCHMARKS, *FUSED_MARKERS, title)
    elif options.rate_per_s:
        title = "Where each stage's CPU per task goes at a paced rate"
        write_section(markdown, BENCHMARKS, *PACED_MARKERS, title)
    elif options.pipeline == "text-embedding":
        write_section(
            markdown, BENCHMARKS, *MINILM_MARKERS, "Where each stage's CPU per MiniLM task goes"
        )
    else:
        write_section(markdown, BENCHMARKS, START, END, "Where each stage's CPU per task goes")


if __name__ == "__main__":
    main()
