"""Throughput of good requests while some carry a bad `reply_to`, against none, in one run.

Run with ``.venv/bin/python -m bench.bench_bad_reply [--quick]``. It starts a private native
stack, builds ``tiny-classifier``, runs one worker per stage and publishes bursts of one-row
``tiny-classify`` requests with the project's client: alternately 0% and 1% of them name a
``reply_to`` topic that does not exist (refused at admission, answered on the default results
topic). Good throughput is good requests over the time from the first send to the last good
result; the median of the rounds of each mix is reported. Writes its table into BENCHMARKS.md
between the ``bench:bad-reply`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.bench_pipeline import TINY_FEATURES, Deployment, private_deployment
from bench.report import BENCHMARKS, write_section
from schemas import ErrorCode, ErrorResult, InferenceRequest, InferenceResult
from workers.client import Client
from workers.models.builders import build_tiny_classifier

START, END = "<!-- bench:bad-reply:start -->", "<!-- bench:bad-reply:end -->"
TARGET_RATIO = 0.9


def _requests(count: int, bad_every: int, missing_topic: str) -> tuple[list[InferenceRequest], int]:
    rng = np.random.default_rng(0)
    requests, bad = [], 0
    for i in range(count):
        options: dict[str, object] = {}
        if bad_every and i % bad_every == bad_every - 1:
            options["reply_to"] = missing_topic
            bad += 1
        features = rng.standard_normal((1, TINY_FEATURES)).astype(np.float32)
        requests.append(
            InferenceRequest.new(
                tenant="bench", pipeline="tiny-classify", inputs={"features": features}, **options
            )
        )
    return requests, bad


async def _round(client: Client, count: int, bad_every: int, missing_topic: str) -> float:
    """Good tasks per second of one burst; checks every bad one was refused."""
    requests, _ = _requests(count, bad_every, missing_topic)
    good = [r.task_id for r in requests if r.reply_to is None]
    bad = [r.task_id for r in requests if r.reply_to is not None]
    started = time.perf_counter()
    await client.submit_many(requests)
    async with asyncio.timeout(300):
        results = await client.result_many(good)
        elapsed_s = time.perf_counter() - started
        refused = await client.result_many(bad)
    assert all(isinstance(r, InferenceResult) for r in results)
    assert all(isinstance(r, ErrorResult) and r.code is ErrorCode.UNDELIVERABLE for r in refused)
    return len(good) / elapsed_s


async def _measure(deployment: Deployment, count: int, rounds: int) -> dict[int, list[float]]:
    missing = f"{deployment.prefix}-no-such-topic"
    runs: dict[int, list[float]] = {0: [], 100: []}
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await _round(client, count // 4, 0, missing)  # warm-up
        for _ in range(rounds):
            for bad_every in (0, 100):  # alternate, so drift hits both mixes alike
                runs[bad_every].append(await _round(client, count, bad_every, missing))
    return runs


def table(runs: dict[int, list[float]], count: int) -> list[str]:
    clean, mixed = statistics.median(runs[0]), statistics.median(runs[100])
    ratio = mixed / clean
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    return [
        f"{platform.processor() or platform.machine()}, {len(runs[0])} rounds of {count} "
        "one-row `tiny-classify` requests per mix, alternating, 1 worker per stage; "
        "`python -m bench.bench_bad_reply`",
        "",
        "| bad `reply_to` | good tasks/s (median) | rounds | vs 0% |",
        "|---|---|---|---|",
        f"| 0% | {clean:,.0f} | {', '.join(f'{v:,.0f}' for v in runs[0])} | 1.00 |",
        f"| 1% | {mixed:,.0f} | {', '.join(f'{v:,.0f}' for v in runs[100])} | {ratio:.2f} |",
        "",
        f"Target: 1% within 10% of 0% (ratio >= {TARGET_RATIO}): {verdict}. A bad `reply_to` "
        "(a topic that does not exist) is refused at admission after one cached metadata "
        "request, answered UNDELIVERABLE on the default results topic.",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    args = parser.parse_args(argv)
    count, rounds = (1000, 3) if args.quick else (3000, 5)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        root = Path(tmp)
        repository = root / "repository"
        build_tiny_classifier(repository, version=1, seed=0)
        with private_deployment(root, repository) as deployment, deployment.fleet({}):
            runs = asyncio.run(_measure(deployment, count, rounds))
    lines = table(runs, count)
    print("\n".join(lines))
    if not args.no_write:
        write_section("\n".join(lines), BENCHMARKS, START, END, "Bad reply topics (issue 19)")


if __name__ == "__main__":
    main()
