"""Gateway overhead benchmark: the KServe V2 gateway against a Kafka client, in one run.

Run with ``.venv/bin/python -m bench.bench_gateway [--quick]``. It starts a private native
stack (Kafka and Redis on free loopback ports), builds ``tiny-classifier``, runs the three
workers and one ``conveyor gateway`` process, prints Markdown tables and writes them into
BENCHMARKS.md between the ``bench:gateway`` markers. Everything (broker, Redis, workers,
gateway and the load generator) shares this machine's cores.

(1) Round trip at a paced 50 req/s, one row per request: the Python Kafka client
(``Client.submit`` + ``result``), then the same requests through the gateway with V2 JSON
over HTTP (aiohttp) and with tritonclient's gRPC client; p50/p99 and what the gateway adds
at p50 (target <= 2 ms).
(2) Saturation: the pipeline's own ceiling (Kafka client, requests published as fast as it
can), then the gateway with many callers in flight; requests/s answered 200.
(3) Connection storm: 1,000 callers at once, each its own connection, against a gateway
with ``gateway.max_in_flight`` below that: every answer must be 200, 429 or 504, and every
task answered 200 or 504 must end DONE or with an error in the ledger (none lost).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiokafka.errors import KafkaError

from bench.bench_pipeline import (
    Deployment,
    _process_cpu_s,
    percentiles,
    private_deployment,
    tiny_requests,
)
from bench.report import BENCHMARKS, write_section
from schemas import InferenceResult, Status
from workers.client import Client
from workers.fleet import FUSED
from workers.gateway.keys import ApiKeys
from workers.gateway.launcher import GatewayProcess, gateway_env, running_gateway
from workers.ledger import TaskRecord, reached
from workers.ledger.connection import redis_client
from workers.models.builders import build_tiny_classifier
from workers.names import RedisKeys
from workers.settings import Settings, load_settings

ADDED_P50_TARGET_MS = 2.0
SATURATION_TARGET_REQ_S = 5000
TENANT = "bench"
STORM_CALLERS = 1000
STORM_MAX_IN_FLIGHT = 512


@dataclass(frozen=True)
class Options:
    quick: bool
    section: str
    """Marker name in BENCHMARKS.md (`bench:<section>:start`)."""
    paced_s: float
    rate_per_s: float
    saturation_s: float
    saturation_callers: tuple[int, ...]
    ceiling_requests: int
    fused: bool = False
    """One fused worker behind the gateway instead of one worker per stage."""


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Conveyor gateway overhead benchmark")
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument(
        "--section",
        default="gateway",
        help="BENCHMARKS.md markers to write between (bench:SECTION:start/end)",
    )
    parser.add_argument(
        "--fused",
        action="store_true",
        help="one fused worker behind the gateway (the small-host layout) instead of three",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        quick=quick,
        section=str(args.section),
        paced_s=10 if quick else 30,
        rate_per_s=50,
        saturation_s=10 if quick else 30,
        saturation_callers=(128, 512),
        ceiling_requests=5_000 if quick else 20_000,
        fused=bool(args.fused),
    )


def _features(count: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(0).standard_normal((count, 1, 16)).astype(np.float32)


def _body(row: np.ndarray[Any, Any]) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "data": row.reshape(-1).tolist(),
                }
            ]
        }
    )


Caller = Callable[[int], Awaitable[int]]
"""Sends request `index`; returns the answer's status (200 for success)."""


def _server_timing(header: str) -> dict[str, float]:
    """`gateway;dur=0.4, publish;dur=3.1` -> {"gateway": 0.4, "publish": 3.1} (ms)."""
    found: dict[str, float] = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            found[name] = float(duration)
    return found


def _http_caller(
    session: aiohttp.ClientSession,
    gateway: GatewayProcess,
    key: str,
    own_ms: list[float] | None = None,
) -> Caller:
    rows = _features(1024)
    url = f"{gateway.http_url}/v2/models/tiny-classify/infer"
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}

    async def call(index: int) -> int:
        async with session.post(url, data=_body(rows[index % len(rows)]), headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                print(f"HTTP {index}: {r.status} {body[:200]!r}", flush=True)
            elif own_ms is not None:
                own_ms.append(_server_timing(r.headers.get("Server-Timing", ""))["gateway"])
            return r.status

    return call


def _grpc_caller(client: Any, key: str) -> Caller:
    import tritonclient.grpc.aio as grpcclient

    rows = _features(1024)

    async def call(index: int) -> int:
        features = grpcclient.InferInput("features", [1, 16], "FP32")
        features.set_data_from_numpy(rows[index % len(rows)])
        await client.infer("tiny-classify", [features], headers={"authorization": f"Bearer {key}"})
        return 200

    return call


@dataclass(frozen=True)
class Saturated:
    path: str
    callers: int
    req_s: float
    statuses: dict[int, int]
    gateway_cpu_ms: float | None = None
    """CPU of the gateway process per request answered."""


@dataclass
class Measured:
    latency: dict[str, tuple[float, float, float]]
    ceiling_req_s: float
    saturated: list[Saturated]
    storm: dict[str, int]
    own_ms: tuple[float, float, float]
    """The gateway's own work per HTTP request (Server-Timing `gateway`): p50, p95, p99."""

    @property
    def gateway_req_s(self) -> float:
        return max(s.req_s for s in self.saturated if s.gateway_cpu_ms is not None)


KAFKA, HTTP, GRPC = (
    "Kafka client (Client.submit + result)",
    "gateway, V2 JSON over HTTP (aiohttp)",
    "gateway, gRPC (tritonclient.grpc.aio)",
)


async def _measure(
    settings: Settings, gateway: GatewayProcess, key: str, options: Options
) -> Measured:
    import tritonclient.grpc.aio as grpcclient

    saturated: list[Saturated] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        Client(settings.kafka.bootstrap, _topics(settings)) as client,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        grpc = grpcclient.InferenceServerClient(gateway.grpc_target)
        try:
            make = tiny_requests(1024)
            http = _http_caller(session, gateway, key)
            grpc_call = _grpc_caller(grpc, key)
            for index in range(20):  # warm every path: metadata, connections, first runs
                await client.result(await client.submit(make(index)), timeout_s=30)
                await http(index)
                await grpc_call(index)

            async def kafka_call(index: int) -> int:
                try:
                    result = await client.result(await client.submit(make(index)), timeout_s=60)
                except KafkaError as exc:  # the client's producer gave up on this record
                    print(f"Kafka client {index}: {exc!r}", flush=True)
                    return 0
                return 200 if isinstance(result, InferenceResult) else 500

            print("paced: Kafka client, HTTP and gRPC interleaved", flush=True)
            own_ms: list[float] = []
            timed = _http_caller(session, gateway, key, own_ms)
            paths = {KAFKA: kafka_call, HTTP: timed, GRPC: grpc_call}
            trips = await _interleaved(paths, options.rate_per_s, options.paced_s)
        finally:
            await grpc.close()

        print("saturation: kafka client", flush=True)
        started = time.perf_counter()
        ids = await client.submit_many(make(i) for i in range(options.ceiling_requests))
        await client.result_many(ids, timeout_s=300)
        ceiling = options.ceiling_requests / (time.perf_counter() - started)

        # One record batch per submit: far more callers than this time out in the client's
        # producer (the gateway publishes concurrent callers' requests together instead).
        callers = options.saturation_callers[0]
        print(f"saturation: kafka client, {callers} callers", flush=True)
        rate, statuses = await _saturate(kafka_call, callers, options.saturation_s)
        saturated.append(Saturated("Kafka client (submit + result)", callers, rate, statuses))
        for callers in options.saturation_callers:
            print(f"saturation: gateway HTTP, {callers} callers", flush=True)
            _, cpu_before = _process_cpu_s(gateway.process.pid)
            rate, statuses = await _saturate(http, callers, options.saturation_s)
            _, cpu_after = _process_cpu_s(gateway.process.pid)
            cpu_ms = (cpu_after - cpu_before) * 1000 / max(1, statuses.get(200, 0))
            saturated.append(
                Saturated("gateway, V2 JSON over HTTP", callers, rate, statuses, cpu_ms)
            )
    latency = {name: percentiles(values) for name, values in trips.items()}
    return Measured(latency, ceiling, saturated, {}, percentiles(own_ms))


async def _interleaved(
    callers: dict[str, Caller], rate_per_s: float, duration_s: float
) -> dict[str, list[float]]:
    """`rate_per_s` requests a second in all for `duration_s`, the callers taking turns
    (tick i goes to caller i mod n): the machine carries the target's rate, not n times it,
    and load from elsewhere on it falls on every caller alike. Round trips in ms per caller."""
    names = list(callers)
    trips: dict[str, list[float]] = {name: [] for name in names}
    total_rate = rate_per_s

    async def one(name: str, index: int) -> None:
        started = time.perf_counter()
        status = await callers[name](index)
        if status != 200:
            raise RuntimeError(f"{name} request {index} answered {status}")
        trips[name].append((time.perf_counter() - started) * 1000)

    loop_start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for tick in range(int(total_rate * duration_s)):
            await asyncio.sleep(max(0.0, loop_start + tick / total_rate - time.perf_counter()))
            group.create_task(one(names[tick % len(names)], tick // len(names)))
    return trips


async def _saturate(call: Caller, callers: int, duration_s: float) -> tuple[float, dict[int, int]]:
    statuses: collections.Counter[int] = collections.Counter()
    stop_at = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            statuses[await call(next(counter))] += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(callers):
            group.create_task(caller())
    return statuses[200] / (time.perf_counter() - started), dict(statuses)


async def _storm(settings: Settings, gateway: GatewayProcess, key: str) -> dict[str, int]:
    """1,000 callers at once, each on a connection of its own; then every accepted task's
    ledger record must reach a final state."""
    rows = _features(STORM_CALLERS)
    url = f"{gateway.http_url}/v2/models/tiny-classify/infer"
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    answers: list[tuple[int, str | None]] = []

    async def one(index: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            try:
                async with session.post(url, data=_body(rows[index]), headers=headers) as r:
                    body = await r.read()
                    answers.append((r.status, r.headers.get("Conveyor-Task-Id")))
                    if r.status not in (200, 429, 504):
                        print(f"storm caller {index}: {r.status} {body[:200]!r}", flush=True)
            except aiohttp.ClientError as exc:
                print(f"storm caller {index}: {exc}", flush=True)
                answers.append((0, None))

    async with asyncio.TaskGroup() as group:
        for index in range(STORM_CALLERS):
            group.create_task(one(index))
    counts = collections.Counter(status for status, _ in answers)
    accepted = [task for status, task in answers if status in (200, 504) and task]
    redis = redis_client(settings.redis)
    keys = RedisKeys(settings.redis.key_prefix)
    final: dict[str, TaskRecord | None] = {}
    try:
        async with asyncio.timeout(120):
            while len(final) < len(accepted):
                for task in accepted:
                    record = TaskRecord.from_hash(task, await redis.hgetall(keys.task(task)))
                    if record is not None and reached(record.state, Status.DONE):
                        final[task] = record
                await asyncio.sleep(0.5)
    except TimeoutError:
        pass
    finally:
        await redis.aclose()
    other = sum(n for status, n in counts.items() if status not in (200, 429, 504))
    return {
        "callers": STORM_CALLERS,
        "200": counts[200],
        "429": counts[429],
        "504": counts[504],
        "other": other,
        "accepted": len(accepted),
        "final": len(final),
        "lost": len(accepted) - len(final),
    }


def _topics(settings: Settings) -> Any:
    from workers.names import Topics

    return Topics(settings.kafka.topic_prefix)


def _settings(deployment: Deployment) -> Settings:
    c = deployment.stack.config
    return load_settings(
        kafka={"bootstrap": c.kafka_bootstrap, "topic_prefix": deployment.prefix},
        redis={"url": c.redis_url, "key_prefix": f"{deployment.prefix}:"},
        model_repository=deployment.repository,
    )


async def _add_key(settings: Settings) -> str:
    redis = redis_client(settings.redis)
    try:
        return await ApiKeys(redis, RedisKeys(settings.redis.key_prefix)).add(TENANT)
    finally:
        await redis.aclose()


def _run(deployment: Deployment, options: Options) -> Measured:
    settings = _settings(deployment)
    key = asyncio.run(_add_key(settings))
    log_dir = deployment.log_dir / deployment.prefix
    with deployment.fleet({FUSED: 1} if options.fused else {}):
        env = gateway_env(settings, CONVEYOR_LOG_LEVEL="WARNING")
        env["CONVEYOR_LOG_LEVEL"] = "INFO"  # the ready line
        with running_gateway(env, log_dir / "gateway.log") as gateway:
            measured = asyncio.run(_measure(settings, gateway, key, options))
        storm_env = {**env, "CONVEYOR_GATEWAY__MAX_IN_FLIGHT": str(STORM_MAX_IN_FLIGHT)}
        storm_env["CONVEYOR_GATEWAY__REQUEST_TIMEOUT_S"] = "10"
        print("storm: 1,000 callers", flush=True)
        with running_gateway(storm_env, log_dir / "gateway-storm.log") as gateway:
            measured.storm = asyncio.run(_storm(settings, gateway, key))
    return measured


def report(m: Measured, options: Options) -> str:
    cpu = os.cpu_count()
    load = os.getloadavg()
    lines = [
        f"Machine: {cpu} cores; Kafka broker, Redis, "
        f"{'one fused worker' if options.fused else 'the three workers'}, the gateway and the "
        "load generator all share them.",
        f"Command: `.venv/bin/python -m bench.bench_gateway{' --quick' if options.quick else ''}"
        f"{' --fused' if options.fused else ''}"
        f"{'' if options.section == 'gateway' else ' --section ' + options.section}`"
        f"; private native stack on free ports; `tiny-classify`, one row per request; load "
        f"average at the end {load[0]:.2f} / {load[1]:.2f} (1 / 5 min).",
        "",
        f"### Round trip at a paced {options.rate_per_s:g} req/s in all for "
        f"{options.paced_s:g} s, the three callers taking turns request by request",
        "",
        "| caller | p50 ms | p95 ms | p99 ms | added p50 vs Kafka client |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    base = next(iter(m.latency.values()))[0]
    for index, (name, (p50, p95, p99)) in enumerate(m.latency.items()):
        if index == 0:
            added = "-"
        else:
            verdict = "met" if p50 - base <= ADDED_P50_TARGET_MS else "MISSED"
            added = f"{p50 - base:+.1f} ms (target <= {ADDED_P50_TARGET_MS:g}: {verdict})"
        lines.append(f"| {name} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {added} |")
    own50, own95, own99 = m.own_ms
    lines += [
        "",
        f"Inside the gateway (HTTP, its `Server-Timing: gateway` header: parsing, checks, "
        f"encoding, the response; not the broker's acknowledgement nor the pipeline): p50 "
        f"{own50:.2f} ms, p95 {own95:.2f} ms, p99 {own99:.2f} ms. The rest of what the "
        "gateway adds over the Kafka client is two more hops between processes, which on "
        "cores shared with the broker, Redis, the workers and the load generator is mostly "
        "waiting to be scheduled (see the load average above).",
    ]
    target = min(SATURATION_TARGET_REQ_S, m.ceiling_req_s)
    gw_cpu = min(s.gateway_cpu_ms for s in m.saturated if s.gateway_cpu_ms is not None)
    which = "the pipeline's ceiling" if m.ceiling_req_s < SATURATION_TARGET_REQ_S else "5,000"
    verdict = "met" if m.gateway_req_s >= 0.9 * target else "MISSED"
    lines += [
        "",
        "### Saturation",
        "",
        "| path | callers in flight | requests/s | gateway CPU ms / request | answers |",
        "| --- | --- | ---: | ---: | --- |",
        f"| Kafka client, {options.ceiling_requests:,} requests published at once "
        f"(pipeline ceiling) | - | {m.ceiling_req_s:,.0f} | - | all DONE |",
        *(
            f"| {s.path} | {s.callers} for {options.saturation_s:g} s | {s.req_s:,.0f} | "
            f"{'-' if s.gateway_cpu_ms is None else f'{s.gateway_cpu_ms:.2f}'} | "
            f"{_statuses(s.statuses)} |"
            for s in m.saturated
        ),
        "",
        f"Target: min(5,000, pipeline ceiling) = {target:,.0f} req/s ({which}); the gateway "
        f"reaches {m.gateway_req_s / max(target, 1):.0%} of it (>= 90%: {verdict}). "
        f"One gateway process alone would answer about {1000 / max(gw_cpu, 1e-3):,.0f} req/s "
        "per core at its CPU cost per request (the gateway's own ceiling, were the pipeline "
        "and the load generator not on the same cores).",
        "",
        f"### Connection storm: {STORM_CALLERS:,} callers at once "
        f"(`gateway.max_in_flight` {STORM_MAX_IN_FLIGHT}, `request_timeout_s` 10)",
        "",
        "| 200 | 429 | 504 | other | accepted (200/504) | final in the ledger | lost |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {m.storm['200']} | {m.storm['429']} | {m.storm['504']} | {m.storm['other']} | "
        f"{m.storm['accepted']} | {m.storm['final']} | {m.storm['lost']} |",
    ]
    return "\n".join(lines)


def _statuses(statuses: dict[int, int]) -> str:
    return ", ".join(f"{status}: {count:,}" for status, count in sorted(statuses.items()))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as root_name:
        root = Path(root_name)
        repository = root / "repository"
        build_tiny_classifier(repository)
        with private_deployment(root, repository) as deployment:
            measured = _run(deployment, options)
    markdown = report(measured, options)
    print(markdown)
    start, end = f"<!-- bench:{options.section}:start -->", f"<!-- bench:{options.section}:end -->"
    title = "Gateway (KServe V2, HTTP and gRPC)"
    if options.section != "gateway":
        title += f": {options.section}"
    write_section(markdown, BENCHMARKS, start, end, title)


if __name__ == "__main__":
    main()
