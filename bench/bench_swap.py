"""Batch latency while model versions swap, against steady state (issue 8's P99 figure).

Run with ``.venv/bin/python -m bench.bench_swap [--quick]``. One inference worker's serving
path without Kafka: batches of 32 rows of ``tiny-classifier`` (or ``--features`` wide) route
through the model lifecycle and run on a lease, at a fixed rate, first with no swap, then
while a new version is loaded, checked, warmed up and switched every ``--swap-every-s``.
Prints a Markdown table and writes it into BENCHMARKS.md between the ``bench:swap`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import BENCHMARKS, write_section
from workers.models.builders import build_tiny_classifier
from workers.models.events import ModelEvents
from workers.models.lifecycle import ModelLifecycle
from workers.models.repository import ModelRepository
from workers.models.runtime import ModelRuntime, RuntimeOptions
from workers.observability.metrics import WorkerMetrics
from workers.settings import ModelSettings

MODEL = "tiny-classifier"


async def serve(
    lifecycle: ModelLifecycle, runtime: ModelRuntime, features: int, batches: int, interval_s: float
) -> list[float]:
    latencies = []
    feeds = {"features": np.random.default_rng(0).standard_normal((32, features), np.float32)}
    for i in range(batches):
        started = time.perf_counter()
        await lifecycle.wait_open()
        lease = lifecycle.acquire(MODEL, lifecycle.route(MODEL, f"task-{i}", None))
        try:
            assert lease.model is not None
            await runtime.run(lease.model, feeds)
        finally:
            lifecycle.release(lease)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, interval_s - latencies[-1]))
    return latencies


async def swapping(
    lifecycle: ModelLifecycle, repository: Path, features: int, every_s: float, stop: asyncio.Event
) -> int:
    version = 1
    while not stop.is_set():
        await asyncio.sleep(every_s)
        version += 1
        build_tiny_classifier(repository, version, seed=version, num_features=features)
        await lifecycle.load(MODEL, version, source="bench")
    return version - 1


async def run(quick: bool, features: int, swap_every_s: float, budget: bool) -> str:
    batches = 300 if quick else 2000
    interval_s = 0.005
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        build_tiny_classifier(repository, 1, seed=1, num_features=features)
        size = (repository / MODEL / "1" / "model.onnx").stat().st_size
        settings = ModelSettings(
            memory_budget_bytes=int(size * 1.6) if budget else 0, memory_overhead_ratio=1.0
        )
        options = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=2)
        async with ModelRuntime(options) as runtime:
            lifecycle = ModelLifecycle(
                ModelRepository(repository),
                runtime,
                settings,
                ModelEvents(WorkerMetrics("inference"), "bench"),
            )
            async with lifecycle:
                steady = await serve(lifecycle, runtime, features, batches, interval_s)
                stop = asyncio.Event()
                swaps = asyncio.create_task(
                    swapping(lifecycle, repository, features, swap_every_s, stop)
                )
                during = await serve(lifecycle, runtime, features, batches, interval_s)
                stop.set()
                count = await swaps
    p = {
        name: np.percentile(np.array(v) * 1000, [50, 99])
        for name, v in (("steady", steady), ("swapping", during))
    }
    mode = "budget (unload first)" if budget else "load beside"
    return (
        f"| {mode} | {features} | {count} | {p['steady'][0]:.2f} | {p['steady'][1]:.2f} | "
        f"{p['swapping'][0]:.2f} | {p['swapping'][1]:.2f} | "
        f"{p['swapping'][1] / p['steady'][1]:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--swap-every-s", type=float, default=0.5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = [
        asyncio.run(run(args.quick, args.features, args.swap_every_s, budget))
        for budget in (False, True)
    ]
    table = "\n".join(
        [
            "Batch latency (32 rows, CPU, 2 intra-op threads, one batch per 5 ms) with no swap and "
            "while a version is loaded, checked, warmed up and switched every "
            f"{args.swap_every_s} s "
            "(`.venv/bin/python -m bench.bench_swap`).",
            "",
            "| swap | features | swaps | steady P50 ms | steady P99 ms | swapping P50 ms | "
            "swapping P99 ms | P99 ratio |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if not args.no_write:
        write_section(
            table,
            BENCHMARKS,
            "<!-- bench:swap:start -->",
            "<!-- bench:swap:end -->",
            "Model swaps",
        )


if __name__ == "__main__":
    main()
