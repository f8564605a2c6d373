"""What Redis does per task: its CPU and its commands, one fused worker at saturation.

Run with ``.venv/bin/python -m bench.bench_redis [--tasks 20000] [--ledger-states final]``.
Redis's one thread is the ceiling of a whole pipeline on one GPU host (BENCHMARKS, "One GPU
host at full speed"), so this measures what a task costs it. A private native stack, one
fused worker, MiniLM-shaped tasks (`build_minilm(encoder_layers=0)`: MiniLM's inputs,
tokenizer and output at about a GPU's speed, one 32-token sentence a request), a burst of
``--tasks`` requests after a warm-up; Redis's own CPU (`INFO cpu`) and `INFO commandstats`
are read before and after. Commands run inside the Lua scripts are counted under their own
names and again, inclusively, under EVALSHA. The table goes between the ``bench:redis``
markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import bench_model
from bench import bench_pipeline as bp
from bench.report import BENCHMARKS, write_section
from workers.client import Client
from workers.fleet import FUSED

START, END = "<!-- bench:redis:start -->", "<!-- bench:redis:end -->"


@dataclass(frozen=True)
class RedisCost:
    tasks: int
    tasks_per_s: float
    cpu_us_per_task: float
    commands: list[tuple[str, float, float]]
    """(command, calls per task, us per task), most time first."""


async def _read(url: str) -> tuple[dict[str, Any], float]:
    client = aioredis.from_url(url)
    try:
        stats = await client.info("commandstats")
        cpu = await client.info("cpu")
    finally:
        await client.aclose()
    return stats, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def _burst(deployment: bp.Deployment, make: bp.MakeRequest, tasks: int) -> RedisCost:
    url = deployment.stack.config.redis_url
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await bp.burst(client, make, 2_000, 120)  # warm-up
        stats_before, cpu_before = await _read(url)
        result = await bp.burst(client, make, tasks, max(120.0, tasks / 100))
        stats_after, cpu_after = await _read(url)
    commands = []
    for name, after in stats_after.items():
        before = stats_before.get(name, {"calls": 0, "usec": 0})
        calls, usec = after["calls"] - before["calls"], after["usec"] - before["usec"]
        if calls:
            commands.append((name.removeprefix("cmdstat_").upper(), calls / tasks, usec / tasks))
    commands.sort(key=lambda c: -c[2])
    return RedisCost(tasks, result.tasks_per_s, (cpu_after - cpu_before) / tasks * 1e6, commands)


def measure(tasks: int, ledger_states: str) -> RedisCost:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-redis-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        version = bench_model.build_repository(repository, encoder_layers=0)
        make = bp.text_requests(bench_model.sentences(bench_model.tokenizer_of(version), 32, 1024))
        with bp.private_deployment(root, repository) as deployment:
            env = {FUSED: {"CONVEYOR_REDIS__LEDGER_STATES": ledger_states}}
            with deployment.fleet({FUSED: 1}, extra_env=env):
                return asyncio.run(_burst(deployment, make, tasks))


def report(costs: Sequence[tuple[str, RedisCost]], command: str) -> str:
    lines = [
        f"Machine: {bench_model.machine_description()}; the broker, Redis, the worker and the "
        "client share the cores.",
        f"Command: `{command}`; one fused worker, MiniLM-shaped tasks (no encoder layers), "
        "one 32-token sentence a request, a burst after a 2,000-request warm-up.",
        "",
        "| `redis.ledger_states` | tasks/s | Redis CPU us per task | tasks/s one Redis "
        "thread allows |",
        "| --- | ---: | ---: | ---: |",
    ]
    for states, cost in costs:
        lines.append(
            f"| {states} | {cost.tasks_per_s:,.0f} | {cost.cpu_us_per_task:.1f} "
            f"| {1e6 / cost.cpu_us_per_task:,.0f} |"
        )
    for states, cost in costs:
        lines += [
            "",
            f"Commands per task, `ledger_states={states}` (those inside scripts also counted "
            "in EVALSHA):",
            "",
            "| command | calls per task | us per task |",
            "| --- | ---: | ---: |",
        ]
        for name, calls, usec in cost.commands:
            if calls >= 0.01:
                lines.append(f"| {name} | {calls:.3f} | {usec:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Redis CPU and commands per task")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--ledger-states", default="every,final", help="every, final or both")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    costs = []
    for states in args.ledger_states.split(","):
        cost = measure(args.tasks, states)
        print(f"  ledger_states={states}: {cost.cpu_us_per_task:.1f} us/task", flush=True)
        costs.append((states, cost))
    command = f".venv/bin/python -m bench.bench_redis --tasks {args.tasks}"
    if args.ledger_states != "every,final":
        command += f" --ledger-states {args.ledger_states}"
    block = report(costs, command)
    print(block)
    if not args.no_write:
        write_section(block, BENCHMARKS, START, END, "Redis per task")


if __name__ == "__main__":
    main()
