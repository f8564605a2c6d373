"""One gateway process at saturation on a many-core host (issue 16's requests/s target).

On a 2-core machine the gateway, the HTTP load generator and the pipeline behind it share
the cores, so the pipeline's own ceiling bounds what any gateway answers there. Here the
gateway has cores to spare: `--fused-workers` fused workers serve the trivial model,
`--load-processes` processes of `--callers` concurrent aiohttp callers each drive V2 JSON
requests over HTTP, and the window's figures say whether the gateway process is the limit
(its core busy) or what else is. The pipeline's ceiling is measured first with the Kafka
client, as `bench_gateway` does.

    python -m bench.bench_gateway_host --fused-workers 6 --load-processes 4 --callers 64

On the lent GPU host (no GPU used): `GATEWAY=1 bash bench/device_pipeline.sh <these args>`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.bench_gateway import (
    SATURATION_TARGET_REQ_S,
    _add_key,
    _body,
    _features,
    _settings,
)
from bench.bench_pipeline import (
    Deployment,
    _process_cpu_s,
    burst,
    cpu_delta,
    cpu_snapshot,
    private_deployment,
    tiny_requests,
)
from bench.report import BENCHMARKS, write_section
from workers.client import Client
from workers.fleet import FUSED, WorkerFleet
from workers.gateway.launcher import GatewayProcess, gateway_env, running_gateway
from workers.models.builders import build_tiny_classifier


@dataclass(frozen=True)
class Options:
    gateway_processes: int
    """`gateway.processes`: 1 is the target's one process."""
    fused_workers: int
    load_processes: int
    callers: int
    """Concurrent HTTP callers in each load process."""
    seconds: float
    warmup_s: float
    ceiling_requests: int
    profile_s: float
    """py-spy on the gateway for this long in the window (0: none); stacks beside `out`."""
    out: Path | None
    """Markdown written here instead of BENCHMARKS.md's `gateway-host` section."""


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gateway-processes", type=int, default=1)
    parser.add_argument("--fused-workers", type=int, default=4)
    parser.add_argument("--load-processes", type=int, default=4)
    parser.add_argument("--callers", type=int, default=64, help="per load process")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--ceiling-requests", type=int, default=50_000)
    parser.add_argument("--profile-s", type=float, default=0)
    parser.add_argument("--out", type=Path)
    a = parser.parse_args(argv)
    return Options(
        a.gateway_processes,
        a.fused_workers,
        a.load_processes,
        a.callers,
        a.seconds,
        a.warmup_s,
        a.ceiling_requests,
        a.profile_s,
        a.out,
    )


@dataclass(frozen=True)
class Load:
    """What one load process saw inside the measured window."""

    statuses: dict[int, int]
    cpu_s: float


def _load_process(url: str, key: str, callers: int, start_at: float, end_at: float) -> Load:
    """A load process: `callers` callers in a loop until `end_at` (wall clock, shared by
    every process); only answers that arrive inside [start_at, end_at] count."""
    return asyncio.run(_load(url, key, callers, start_at, end_at))


async def _load(url: str, key: str, callers: int, start_at: float, end_at: float) -> Load:
    bodies = [_body(row) for row in _features(1024)]
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    statuses: collections.Counter[int] = collections.Counter()
    cpu_at_start = 0.0

    async def caller(session: aiohttp.ClientSession, first: int) -> None:
        index = first
        while (now := time.time()) < end_at:
            async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as r:
                await r.read()
            if now >= start_at and time.time() <= end_at:
                statuses[r.status] += 1
            index += callers

    async def mark_start() -> None:
        nonlocal cpu_at_start
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_at_start = _own_cpu_s()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as group:
        group.create_task(mark_start())
        for first in range(callers):
            group.create_task(caller(session, first))
    return Load(dict(statuses), _own_cpu_s() - cpu_at_start)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Window:
    req_s: float
    statuses: dict[int, int]
    gateway_cpu_s: float
    cpu_s: dict[str, float]
    """Every process's CPU seconds in the window (the load processes' together)."""


async def _ceiling(deployment: Deployment, count: int) -> float:
    make = tiny_requests(count)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await burst(client, make, min(count, 5_000), 120)  # warm every worker
        measured = await burst(client, make, count, 300)
    return measured.tasks_per_s


def measure(options: Options, out_dir: Path | None) -> tuple[float, Window]:
    with tempfile.TemporaryDirectory(prefix="conveyor-gateway-host-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_tiny_classifier(repository)
        partitions = max(options.fused_workers, 4)
        with private_deployment(root, repository, partitions=partitions) as deployment:
            settings = _settings(deployment)
            key = asyncio.run(_add_key(settings))
            with deployment.fleet({FUSED: options.fused_workers}) as fleet:
                print(f"pipeline ceiling: {options.ceiling_requests:,} requests", flush=True)
                ceiling = asyncio.run(_ceiling(deployment, options.ceiling_requests))
                print(f"pipeline ceiling: {ceiling:,.0f} tasks/s", flush=True)
                env = gateway_env(
                    settings,
                    CONVEYOR_LOG_LEVEL="INFO",
                    CONVEYOR_GATEWAY__PROCESSES=str(options.gateway_processes),
                )
                with running_gateway(env, root / "logs" / "gateway.log") as gateway:
                    window = _saturate(options, deployment, fleet, gateway, key, out_dir)
    return ceiling, window


def _saturate(
    options: Options,
    deployment: Deployment,
    fleet: WorkerFleet,
    gateway: GatewayProcess,
    key: str,
    out_dir: Path | None,
) -> Window:
    url = f"{gateway.http_url}/v2/models/tiny-classify/infer"
    start_at = time.time() + options.warmup_s + 3  # the load processes' start included
    end_at = start_at + options.seconds
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(options.load_processes, mp_context=context) as pool:
        futures = [
            pool.submit(_load_process, url, key, options.callers, start_at, end_at)
            for _ in range(options.load_processes)
        ]
        time.sleep(max(0.0, start_at - time.time()))
        before = cpu_snapshot(deployment.stack_pids, fleet)
        gateway_before = _gateway_cpu_s(gateway)
        spy = _profile([gateway.process.pid, *gateway.children()][-1], options.profile_s, out_dir)
        time.sleep(max(0.0, end_at - time.time()))
        gateway_after = _gateway_cpu_s(gateway)
        cpu = cpu_delta(before, cpu_snapshot(deployment.stack_pids, fleet))
        loads = [future.result() for future in futures]
        if spy is not None:
            spy.wait()
    cpu.pop("client (this process)", None)
    cpu["gateway"] = gateway_after - gateway_before
    cpu["load processes"] = sum(load.cpu_s for load in loads)
    statuses: collections.Counter[int] = collections.Counter()
    for load in loads:
        statuses.update(load.statuses)
    return Window(statuses[200] / options.seconds, dict(statuses), cpu["gateway"], cpu)


def _gateway_cpu_s(gateway: GatewayProcess) -> float:
    pids = [gateway.process.pid, *gateway.children()]
    return sum(_process_cpu_s(pid)[1] for pid in pids)


def _profile(pid: int, seconds: float, out_dir: Path | None) -> subprocess.Popen[bytes] | None:
    if seconds <= 0 or out_dir is None:
        return None
    stacks = out_dir / "gateway-stacks.txt"
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "200", "--format", "raw", "--nonblocking", "--output", str(stacks)]
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def report(options: Options, ceiling: float, w: Window) -> str:
    cores = os.cpu_count() or 1
    target = min(SATURATION_TARGET_REQ_S, ceiling)
    which = "the pipeline's ceiling" if ceiling < SATURATION_TARGET_REQ_S else "5,000"
    answered = max(1, w.statuses.get(200, 0))
    gateway_busy = w.gateway_cpu_s / options.seconds / options.gateway_processes
    processes = options.gateway_processes
    verdict = "met" if w.req_s >= target else "MISSED"
    lines = [
        f"Machine: {cores} cores; the broker, Redis, {options.fused_workers} fused workers, "
        f"{'one gateway process' if processes == 1 else f'a gateway of {processes} processes'}"
        f" and {options.load_processes} load processes "
        f"({options.callers} HTTP callers each, aiohttp, V2 JSON) on it. `tiny-classify`, one "
        "row a request.",
        "Command: `python -m bench.bench_gateway_host --gateway-processes "
        f"{processes} --fused-workers {options.fused_workers} --load-processes "
        f"{options.load_processes} --callers {options.callers} --seconds {options.seconds:g}`.",
        "",
        "| what | figure |",
        "| --- | ---: |",
        f"| pipeline ceiling (Kafka client, {options.ceiling_requests:,} requests at once) | "
        f"{ceiling:,.0f} tasks/s |",
        f"| gateway of {processes} process{'es' if processes > 1 else ''}, "
        f"{options.load_processes * options.callers} callers, "
        f"{options.seconds:g} s | **{w.req_s:,.0f} req/s** |",
        f"| answers | {', '.join(f'{s}: {n:,}' for s, n in sorted(w.statuses.items()))} |",
        f"| gateway CPU a request | {1000 * w.gateway_cpu_s / answered:.3f} ms |",
        f"| each gateway process busy | {gateway_busy:.0%} of a core |",
        "",
        "CPU in the window, a request (ms) and share of the machine:",
        "",
        "| process | CPU ms / request | cores busy |",
        "| --- | ---: | ---: |",
        *(
            f"| {name} | {1000 * cpu_s / answered:.3f} | {cpu_s / options.seconds:.2f} |"
            for name, cpu_s in sorted(w.cpu_s.items(), key=lambda kv: -kv[1])
        ),
        f"| all | {1000 * sum(w.cpu_s.values()) / answered:.3f} | "
        f"{sum(w.cpu_s.values()) / options.seconds:.2f} of {cores} |",
        "",
        f"Target: one gateway process >= min(5,000, pipeline ceiling) = {target:,.0f} req/s "
        f"({which}): {w.req_s / max(target, 1):.0%}, **{verdict}**"
        + ("." if processes == 1 else f" with {processes} processes (the target names one)."),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    out_dir = options.out.parent if options.out is not None else None
    ceiling, window = measure(options, out_dir)
    markdown = report(options, ceiling, window)
    print(markdown, flush=True)
    if options.out is not None:
        options.out.write_text(markdown + "\n")
        return
    write_section(
        markdown,
        BENCHMARKS,
        "<!-- bench:gateway-host:start -->",
        "<!-- bench:gateway-host:end -->",
        "Gateway: one process on a many-core host",
    )


if __name__ == "__main__":
    main()
