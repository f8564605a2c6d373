"""Where each stage's CPU per task goes: the three workers under cProfile, one tiny-model burst.

Run with ``.venv/bin/python -m bench.bench_profile [--tasks N]``. Same private stack and
worker processes as ``bench_pipeline`` (a), each worker started as
``python -m cProfile -o <instance>.prof -m workers worker STAGE``. After a warm-up it
publishes ``--tasks`` requests at once, waits for every result, stops the workers (SIGTERM:
cProfile writes its stats on the clean exit) and reports, per stage: the process's CPU
seconds per task from ``/proc`` over the burst, the profiled main thread's busy time per task
(wall time in functions, the event loop's idle wait in ``epoll.poll`` left out), and the
functions with the most own time per task. Writes between the ``bench:profile`` markers of
BENCHMARKS.md. cProfile slows Python code down (about 1.5-2x here): read the shares, not the
absolute times, and take throughput from ``bench_pipeline``.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bench_pipeline as bp
from bench.report import BENCHMARKS, write_section
from workers.client import Client
from workers.fleet import STAGES, WorkerFleet
from workers.models.builders import build_tiny_classifier

START, END = "<!-- bench:profile:start -->", "<!-- bench:profile:end -->"
TOP_FUNCTIONS = 12
_IDLE = ("poll' of 'select.epoll", "select' of 'select.epoll")


@dataclass(frozen=True)
class StageProfile:
    stage: str
    cpu_s: float
    """The process's user+system CPU over the burst (/proc)."""
    busy_s: float
    """Profiled main-thread time outside the event loop's idle wait, the process's whole
    life (start, warm-up and burst): what the shares are of."""
    top: list[tuple[str, float, int]]
    """(function, own seconds, calls), most own time first."""


def _label(function: tuple[str, int, str]) -> str:
    filename, line, name = function
    if filename == "~":
        return name
    parts = Path(filename).parts
    for root in ("workers", "schemas", "aiokafka", "redis", "msgpack", "numpy", "asyncio"):
        if root in parts:
            short = "/".join(parts[parts.index(root) :])
            return f"{short}:{line} {name}"
    return f"{Path(filename).name}:{line} {name}"


def load_profile(path: Path, stage: str, cpu_s: float) -> StageProfile:
    stats = pstats.Stats(str(path))
    rows = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    idle = 0.0
    own: list[tuple[str, float, int]] = []
    for function, (_, calls, tottime, _, _) in rows.items():
        label = _label(function)
        total += tottime
        if any(mark in label for mark in _IDLE):
            idle += tottime
            continue
        own.append((label, tottime, calls))
    own.sort(key=lambda row: -row[1])
    return StageProfile(stage, cpu_s, total - idle, own[:TOP_FUNCTIONS])


async def _burst(deployment: bp.Deployment, fleet: WorkerFleet, tasks: int) -> dict[str, float]:
    make = bp.tiny_requests(tasks)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await bp.burst(client, make, 500, 120)  # warm-up
        before = bp.cpu_snapshot(deployment.stack_pids, fleet)
        started = time.perf_counter()
        result = await bp.burst(client, make, tasks, max(120.0, tasks / 100))
        print(
            f"  {tasks} tasks in {time.perf_counter() - started:.1f} s "
            f"({result.tasks_per_s:,.0f} tasks/s under cProfile)",
            flush=True,
        )
        return bp.cpu_delta(before, bp.cpu_snapshot(deployment.stack_pids, fleet))


def measure(tasks: int) -> tuple[list[StageProfile], dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="conveyor-profile-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_tiny_classifier(repository)
        with bp.private_stack(root / "stack") as stack:
            pids = {s.name: s.pid for s in stack.status() if s.pid is not None}
            deployment = bp.Deployment(stack, repository, root / "logs", pids)
            profiles = root / "profiles"
            with deployment.fleet({}, profile_dir=profiles) as fleet:
                cpu = asyncio.run(_burst(deployment, fleet, tasks))
            # The fleet's exit stopped the workers: their stats are written now.
            stages = [
                load_profile(profiles / f"{stage}-0.prof", stage, cpu.get(f"{stage} worker(s)", 0))
                for stage in STAGES
            ]
    return stages, cpu


def report(stages: Sequence[StageProfile], cpu: dict[str, float], tasks: int) -> str:
    lines = [
        f"Command: `.venv/bin/python -m bench.bench_profile --tasks {tasks}`; one worker per "
        "stage, `tiny-classify`, every request published at once, the workers under cProfile "
        "(main thread only). CPU from /proc over the burst; broker and Redis included for scale.",
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
            f"**{stage.stage}**: {per_task_us:,.1f} us CPU per task (/proc, over the burst); "
            "the functions with the most own time in its profile, their share of the profiled "
            "busy time and that share of the CPU per task:",
            "",
            "| function | share of busy | ~us per task | calls per task |",
            "| --- | ---: | ---: | ---: |",
        ]
        for label, seconds, calls in stage.top:
            share = seconds / stage.busy_s if stage.busy_s else 0.0
            lines.append(
                f"| `{label}` | {share:.1%} | {share * per_task_us:,.1f} | {calls / tasks:,.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Conveyor per-stage CPU profile")
    parser.add_argument("--tasks", type=int, default=20_000, help="requests in the burst")
    options = parser.parse_args(argv)
    stages, cpu = measure(options.tasks)
    markdown = report(stages, cpu, options.tasks)
    print(markdown)
    write_section(markdown, BENCHMARKS, START, END, "Where each stage's CPU per task goes")


if __name__ == "__main__":
    main()
