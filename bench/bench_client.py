"""Concurrent callers of one `Client`: submits/s, errors and the client's CPU per submit.

Run with ``.venv/bin/python -m bench.bench_client [--callers 1,16,128,512] [--seconds 15]``.
A private native stack (broker and Redis on free loopback ports); no workers: only the
publishing is measured. For each caller count, that many coroutines share one `Client` and
each submits one `tiny-classify` request after another (`client.submit`, awaited) for
``--seconds``. Concurrent submits gather into shared publications (`workers.kafka.gather`);
before that each caller's record batch queued behind the others' in the idempotent
producer (one request in flight per partition). The table goes between the
``bench:client`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import bench_model
from bench.bench_pipeline import private_stack
from bench.report import BENCHMARKS, write_section
from schemas import InferenceRequest
from workers.client import Client
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.names import Topics

START, END = "<!-- bench:client:start -->", "<!-- bench:client:end -->"


@dataclass(frozen=True)
class Row:
    callers: int
    submits_per_s: float
    errors: int
    cpu_us_per_submit: float
    publications: int
    submits: int


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(bootstrap: str, callers: int, seconds: float) -> Row:
    topics = Topics(f"benchclient{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, [TopicSpec(topics.requests, 4), TopicSpec(topics.results, 4)])
    submits = errors = 0
    async with Client(bootstrap, topics) as client:
        inputs = {"x": np.zeros((1, 8), np.float32)}
        end = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal submits, errors
            while time.monotonic() < end:
                request = InferenceRequest.new(tenant="t", pipeline="tiny-classify", inputs=inputs)
                try:
                    await client.submit(request)
                    submits += 1
                except Exception:  # counted: what a caller of the client would see
                    errors += 1

        started, cpu_before = time.monotonic(), _cpu_s()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed, cpu = time.monotonic() - started, _cpu_s() - cpu_before
        publications = client.publications
    cpu_us = cpu / max(1, submits) * 1e6
    return Row(callers, submits / elapsed, errors, cpu_us, publications, submits)


def report(rows: Sequence[Row], seconds: float, command: str) -> str:
    lines = [
        f"Machine: {bench_model.machine_description()}; the broker and Redis share the cores.",
        f"Command: `{command}`; one `Client`, N coroutines each awaiting `client.submit` of "
        f"one `tiny-classify` request after another for {seconds:g} s; no workers (publishing "
        "only). Client CPU from `getrusage`.",
        "",
        "| callers | submits/s | errors | client CPU us per submit | submits per publication |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.callers} | {r.submits_per_s:,.0f} | {r.errors} | {r.cpu_us_per_submit:,.0f} "
            f"| {r.submits / max(1, r.publications):,.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Concurrent callers of one Client")
    parser.add_argument("--callers", default="1,16,128,512")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.callers.split(",")]
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-bench-client-") as root,
        private_stack(Path(root) / "stack") as stack,
    ):
        for callers in counts:
            row = asyncio.run(measure(stack.config.kafka_bootstrap, callers, args.seconds))
            print(f"  {row}", flush=True)
            rows.append(row)
    command = ".venv/bin/python -m bench.bench_client" + (
        f" --callers {args.callers}" if args.callers != "1,16,128,512" else ""
    )
    block = report(rows, args.seconds, command)
    print(block)
    if not args.no_write:
        write_section(block, BENCHMARKS, START, END, "Client: concurrent callers")


if __name__ == "__main__":
    main()
