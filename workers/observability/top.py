"""`conveyor top`: a live terminal view of stages, lanes, tenants, lag and throughput.

Finds workers through their announcements in Redis, scrapes each one's /metrics, and shows
rates between two scrapes. `--once` prints one frame (two scrapes `interval_s` apart).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from workers.ledger.connection import RedisConnection, redis_client
from workers.names import RedisKeys
from workers.observability.registry import announced_workers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Frame:
    """One view: per stage and per tenant figures, rates per second."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    tenants: dict[str, float] = field(default_factory=dict)
    lanes: dict[tuple[str, str], float] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)
    gpus: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(host, device) -> (busy fraction, memory used in bytes), from the inference workers'
    NVML gauges; every worker of a host sees all of its devices, so each is shown once."""


async def discover(connection: RedisConnection, keys: RedisKeys) -> list[dict[str, str]]:
    client = redis_client(connection, decode_responses=True)
    try:
        return await announced_workers(client, keys)
    finally:
        await client.aclose()


def scrape(url: str) -> Samples:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == val for k, val in match.items())
    )


def frame(
    workers: list[dict[str, str]], first: list[Samples], second: list[Samples], elapsed_s: float
) -> Frame:
    view = Frame()
    for worker, a, b in zip(workers, first, second, strict=True):
        stage = worker.get("stage", "?")
        view.workers[stage] = view.workers.get(stage, 0) + 1
        row = view.stages.setdefault(stage, defaultdict(float))
        for name, key in (
            ("conveyor_messages_in_total", "in/s"),
            ("conveyor_messages_out_total", "out/s"),
            ("conveyor_errors_total", "errors/s"),
        ):
            row[key] += (_sum(b, name) - _sum(a, name)) / elapsed_s
        row["in flight"] += _sum(b, "conveyor_tasks_in_flight")
        row["queued"] += _sum(b, "conveyor_queue_depth")
        row["lag"] += _sum(b, "conveyor_consumer_lag")
        host = urllib.parse.urlsplit(worker.get("metrics_url", "")).hostname or "?"
        for (name, labels), value in b.items():
            labels_d = dict(labels)
            if name == "conveyor_gpu_utilization_ratio":
                memory = b.get(("conveyor_gpu_memory_used_bytes", labels), 0.0)
                view.gpus[(host, labels_d.get("gpu", "?"))] = (value, memory)
            elif name == "conveyor_tasks_completed_total":
                tenant = labels_d.get("tenant", "?")
                rate = (value - a.get((name, labels), 0.0)) / elapsed_s
                view.tenants[tenant] = view.tenants.get(tenant, 0.0) + rate
            elif name == "conveyor_queue_depth":
                lane = (stage, labels_d.get("lane", "?"))
                view.lanes[lane] = view.lanes.get(lane, 0.0) + value
    return view


def render(view: Frame) -> str:
    columns = ("in/s", "out/s", "errors/s", "in flight", "queued", "lag")
    lines = [
        f"conveyor top  {time.strftime('%H:%M:%S')}",
        "",
        f"{'stage':<12} {'workers':>7} " + " ".join(f"{c:>10}" for c in columns),
    ]
    shown = (
        "preprocess",
        "inference",
        "postprocess",
        *(["fused"] if "fused" in view.workers else []),
    )
    for stage in shown:
        row = view.stages.get(stage, {})
        lines.append(
            f"{stage:<12} {view.workers.get(stage, 0):>7} "
            + " ".join(f"{row.get(c, 0.0):>10.1f}" for c in columns)
        )
    lines += ["", f"{'lane (stage)':<28} {'queued':>8}"]
    lines += [
        f"{lane + ' (' + stage + ')':<28} {depth:>8.0f}"
        for (stage, lane), depth in sorted(view.lanes.items())
    ]
    if view.gpus:
        lines += ["", f"{'gpu (host)':<28} {'busy':>8} {'memory':>10}"]
        lines += [
            f"{gpu + ' (' + host + ')':<28} {busy:>8.0%} {memory / 2**30:>6.1f} GiB"
            for (host, gpu), (busy, memory) in sorted(view.gpus.items())
        ]
    lines += ["", f"{'tenant':<20} {'done/s':>8}"]
    lines += [f"{tenant:<20} {rate:>8.1f}" for tenant, rate in sorted(view.tenants.items())]
    return "\n".join(lines)


async def run_top(
    connection: RedisConnection, keys: RedisKeys, interval_s: float, once: bool
) -> int:
    while True:
        workers = await discover(connection, keys)
        urls = [w.get("metrics_url", "") for w in workers]
        first = await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in urls))
        started = time.monotonic()
        await asyncio.sleep(interval_s)
        second = await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in urls))
        text = render(frame(workers, list(first), list(second), time.monotonic() - started))
        if once:
            print(text)
            return 0 if workers else 1
        print("\033[2J\033[H" + text, flush=True)
