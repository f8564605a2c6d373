"""`conveyor demo`: the local stack, the three workers, real traffic from three tenants.

Uses Kafka and Redis from the environment when KAFKA_BOOTSTRAP and REDIS_URL are set,
else starts the native stack (and stops it afterwards unless it was already running).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from schemas import ErrorResult, InferenceRequest, InferenceResult, arrays_of
from workers.cli import stack_config
from workers.client import Client, Result
from workers.commands import build_model
from workers.fleet import WorkerFleet
from workers.ledger import read_task
from workers.models.repository import ModelRepository, RepositoryError
from workers.names import Topics
from workers.service import ensure_pipeline_topics
from workers.settings import Settings
from workers.stack import NativeStack

TENANTS = ("acme", "globex", "initech")
_SUBJECTS = (
    "The shipment",
    "Our quarterly report",
    "A customer in Lisbon",
    "The new GPU cluster",
    "This invoice",
    "The weather in Oslo",
    "Every Kafka partition",
    "The support ticket",
)
_VERBS = (
    "arrived late",
    "needs a second review",
    "was flagged as urgent",
    "looks unusually large",
    "mentions a refund",
    "was approved yesterday",
    "went over budget",
    "asks about pricing",
)
_TAILS = (
    "",
    " again",
    " according to the audit team",
    " before the holiday",
    " and nobody noticed for a week",
)


def sentences(count: int) -> list[str]:
    combos = itertools.cycle(itertools.product(_SUBJECTS, _VERBS, _TAILS))
    return [f"{s} {v}{t}." for s, v, t in itertools.islice(combos, count)]


def run_demo(settings: Settings, *, requests: int, keep_stack: bool) -> int:
    external = bool(os.environ.get("KAFKA_BOOTSTRAP") and os.environ.get("REDIS_URL"))
    stack = None if external else NativeStack(stack_config(settings))
    stop_stack = False
    if stack is not None:
        already_up = all(s.ready for s in stack.status())
        print("stack: " + ("already running" if already_up else "starting Kafka and Redis ..."))
        stack.up()
        stop_stack = not already_up and not keep_stack
    try:
        _ensure_model(settings)
        return asyncio.run(_traffic(settings, requests))
    finally:
        if stack is not None and stop_stack:
            stack.down()
            print("stack: stopped")


def _ensure_model(settings: Settings) -> None:
    try:
        if "text-embedding" in ModelRepository(settings.model_repository).pipelines:
            return
    except RepositoryError:
        pass
    print(f"model: building all-MiniLM-L6-v2 into {settings.model_repository} ...")
    build_model("text-embedding", settings.model_repository, 1)


async def _traffic(settings: Settings, count: int) -> int:
    await ensure_pipeline_topics(settings)
    env = {
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "REDIS_URL": settings.redis.url,
        "CONVEYOR_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "CONVEYOR_MODEL_REPOSITORY": str(settings.model_repository.resolve()),
        "CONVEYOR_LOG_LEVEL": "INFO",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    with WorkerFleet(env, log_dir) as fleet:
        fleet.start_all()
        print(f"workers: preprocess, inference, postprocess starting (logs in {log_dir})")
        await asyncio.to_thread(fleet.wait_ready, 120)
        async with Client(settings.kafka, Topics(settings.kafka.topic_prefix)) as client:
            results, elapsed_s = await _publish_and_collect(client, count)
        print("workers: stopping (SIGTERM)")
    _report(results, elapsed_s)
    sample = results[0].task_id
    record = await read_task(settings.redis, settings.redis.key_prefix, sample)
    if record is not None:
        print(
            f"\nledger for {sample}: state {record.state.value}, "
            f"model {record.model_name} v{record.model_version}, batch {record.batch_id}"
        )
    failed = [r for r in results if isinstance(r, ErrorResult)]
    return 1 if failed else 0


async def _publish_and_collect(client: Client, count: int) -> tuple[list[Result], float]:
    texts = sentences(count)
    requests = [
        InferenceRequest.new(
            tenant=TENANTS[i % len(TENANTS)],
            pipeline="text-embedding",
            inputs={"text": np.array([text], dtype=object)},
        )
        for i, text in enumerate(texts)
    ]
    started = time.monotonic()
    ids = await client.submit_many(requests)
    print(f"published {len(ids)} requests from {len(TENANTS)} tenants")
    pending = {asyncio.ensure_future(client.result(i, timeout_s=300)) for i in ids}
    done_count = 0
    while pending:
        done, pending = await asyncio.wait(pending, timeout=0.5)
        done_count += len(done)
        sys.stdout.write(f"\rprogress: {done_count}/{len(ids)} results")
        sys.stdout.flush()
    elapsed_s = time.monotonic() - started
    print()
    return [await client.result(i) for i in ids], elapsed_s


def _report(results: list[Result], elapsed_s: float) -> None:
    ok = [r for r in results if isinstance(r, InferenceResult)]
    print("\nsample results:")
    for result in ok[:3]:
        embedding = arrays_of(result.outputs)["embedding"][0]
        head = ", ".join(f"{x:+.3f}" for x in embedding[:5])
        timings = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items())
        print(
            f"  {result.task_id[:8]} {result.tenant:<8} [{head}, ...] ({embedding.shape[0]} dims)"
            f"  ms: {timings}"
        )
    latencies = np.array([r.completed_at_ms - r.submitted_at_ms for r in ok], dtype=float)
    print("\nsummary:")
    print(
        f"  tasks: {len(results)} ({len(ok)} done, {len(results) - len(ok)} failed)"
        f" in {elapsed_s:.2f}s = {len(results) / elapsed_s:.0f} tasks/s"
    )
    if latencies.size:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        print(f"  end-to-end latency ms: p50 {p50:.0f}, p95 {p95:.0f}, p99 {p99:.0f}")
    per_tenant = Counter(r.tenant for r in results)
    print("  per tenant: " + ", ".join(f"{t} {n}" for t, n in sorted(per_tenant.items())))
