"""Metrics and health of live workers during traffic; one trace id from request to result."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from schemas import InferenceResult, decode_result, headers_for
from schemas.frames import decode_frame
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic, tiny_request
from tests.services import Services
from workers.client import Client
from workers.observability.metrics import METRIC_NAMES
from workers.observability.registry import announced_workers
from workers.observability.top import discover, frame, render, scrape
from workers.observability.tracing import trace_id

pytestmark = pytest.mark.e2e

PROMTOOL_CACHE = str(Path(__file__).parents[2] / ".cache" / "promtool" / "bin")
"""Where `ops/run setup` extracts promtool (from Debian's package, without installing it)."""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def _total(text: str, family: str, **labels: str) -> float:
    """Sum of a family's samples (counters: the `_total` sample) matching `labels`."""
    total = 0.0
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _promtool_check(scrape: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool") or shutil.which("promtool", path=PROMTOOL_CACHE)
    assert promtool, f"promtool is missing: ops/run setup puts it in {PROMTOOL_CACHE}"
    return subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, check=False
    )


async def _endpoints(services: Services, pipeline: Pipeline) -> dict[str, str]:
    """stage -> metrics URL, from the announcements workers keep in Redis."""
    redis = aioredis.Redis.from_url(services.redis_url, decode_responses=True)
    try:
        async with asyncio.timeout(30):
            while True:
                found = {
                    w["stage"]: w["metrics_url"]
                    for w in await announced_workers(redis, pipeline.keys)
                }
                if len(found) == 3:
                    return found
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def test_metrics_move_with_traffic_and_pass_promtool(
    services: Services, pipeline: Pipeline, client: Client
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    urls = await _endpoints(services, pipeline)
    before = {stage: _get(url)[1].decode() for stage, url in urls.items()}

    requests = [tiny_request(tenant) for tenant in ("acme", "globex") for _ in range(100)]
    await client.submit_many(requests)
    for request in requests:
        assert isinstance(await client.result(request.task_id, timeout_s=60), InferenceResult)
    await asyncio.sleep(0.5)  # a commit beat: the gauges are sampled on it
    after = {stage: _get(url)[1].decode() for stage, url in urls.items()}

    for stage in urls:
        grown = _total(after[stage], "conveyor_messages_in_total") - _total(
            before[stage], "conveyor_messages_in_total"
        )
        assert grown == 200, (stage, grown)
        assert _total(after[stage], "conveyor_batch_size_count", stage=stage) >= 1
    post = after["postprocess"]
    assert _total(post, "conveyor_tasks_completed_total", status="DONE") == 200
    assert _total(post, "conveyor_tasks_completed_total", status="DONE", tenant="acme") == 100
    assert _total(post, "conveyor_end_to_end_latency_seconds_count") == 200
    assert _total(post, "conveyor_messages_out_total", kind="result") == 200
    inference = after["inference"]
    assert _total(inference, "conveyor_inference_seconds_count", model="tiny-classifier") >= 1
    assert _total(inference, "conveyor_model_info", model="tiny-classifier", version="2") == 1
    assert _total(inference, "conveyor_tasks_in_flight") == 0
    exported = {m.name for text in after.values() for m in text_string_to_metric_families(text)}
    assert {n.removesuffix("_total") for n in METRIC_NAMES} >= exported - {"conveyor_model"}

    for url in urls.values():
        base = url.removesuffix("/metrics")
        for probe in ("/livez", "/readyz"):
            status, body = _get(base + probe)
            assert status == 200, (url, probe, body)
            assert json.loads(body)["ready"] is True
        checked = await asyncio.to_thread(_promtool_check, _get(url)[1])
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_one_trace_id_from_request_headers_to_result_headers(
    pipeline: Pipeline, client: Client
) -> None:
    pipeline.fleet.start_all()
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = tiny_request("acme", traceparent=parent)
    assert ("traceparent", parent.encode()) in headers_for(request)
    await client.submit(request)
    result = await client.result(request.task_id, timeout_s=60)

    assert isinstance(result, InferenceResult)
    assert trace_id(result.traceparent) == trace_id(parent)
    assert result.traceparent != parent, "each stage forwards a span of its own"
    records = await read_topic(pipeline.settings.kafka.bootstrap, pipeline.topics.results)
    (record,) = [
        r for r in records if decode_result(r.value or b"", r.headers).task_id == request.task_id
    ]
    header = dict(record.headers)["traceparent"].decode()
    assert trace_id(header) == "4bf92f3577b34da6a3ce929d0e0e4736"
    between = await read_topic(
        pipeline.settings.kafka.bootstrap, pipeline.topics.inferred_of("standard")
    )
    traceparents = [tp for r in between for tp in decode_frame(r.value or b"").traceparents]
    assert traceparents
    assert {trace_id(tp) for tp in traceparents if tp is not None} == {trace_id(parent)}


async def test_top_shows_every_stage_and_tenant(
    services: Services, pipeline: Pipeline, client: Client
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    await _endpoints(services, pipeline)
    workers = await discover(services.redis_url, pipeline.keys)
    urls = [w["metrics_url"] for w in workers]
    first = [scrape(u) for u in urls]
    requests = [tiny_request("acme") for _ in range(50)]
    await client.submit_many(requests)
    for request in requests:
        await client.result(request.task_id, timeout_s=60)
    # Results reach the client before the postprocess worker counts them (metrics follow
    # delivery), so a scrape may run a moment ahead of the counters: scrape until they settle.
    for _ in range(50):
        view = frame(workers, first, [scrape(u) for u in urls], elapsed_s=1.0)
        if view.tenants.get("acme") == 50:
            break
        await asyncio.sleep(0.1)

    assert view.workers == {"preprocess": 1, "inference": 1, "postprocess": 1}
    assert view.stages["postprocess"]["in/s"] == 50
    assert view.tenants == {"acme": 50}
    text = render(view)
    assert "postprocess" in text
    assert "acme" in text


async def test_otel_spans_of_every_stage_join_the_request_trace(
    pipeline: Pipeline, client: Client
) -> None:
    otel = {
        "CONVEYOR_OBSERVABILITY__OTEL_ENABLED": "true",
        "CONVEYOR_OBSERVABILITY__OTEL_EXPORTER": "console",
    }
    for stage in ("preprocess", "inference", "postprocess"):
        pipeline.fleet.start(stage, extra_env=otel)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = tiny_request("acme", traceparent=parent)
    await client.submit(request)
    assert isinstance(await client.result(request.task_id, timeout_s=60), InferenceResult)
    workers = list(pipeline.fleet.workers)
    pipeline.fleet.stop_all()  # the span processor flushes at exit

    for worker in workers:
        log = worker.log()
        assert f'"name": "conveyor.{worker.stage}"' in log, worker.stage
        assert f'"name": "conveyor.{worker.stage}.batch"' in log, worker.stage
        assert '"trace_id": "0x4bf92f3577b34da6a3ce929d0e0e4736"' in log, worker.stage


async def test_conveyor_check_exit_codes_follow_the_worker(
    services: Services, pipeline: Pipeline
) -> None:
    pipeline.fleet.start_all()
    pipeline.fleet.wait_ready()
    base = (await _endpoints(services, pipeline))["postprocess"].removesuffix("/metrics")

    def check() -> int:
        command = [sys.executable, "-m", "workers", "check", "--url", base]
        return subprocess.run(command, capture_output=True, check=False).returncode

    assert await asyncio.to_thread(check) == 0
    (postprocess,) = [w for w in pipeline.fleet.workers if w.stage == "postprocess"]
    pipeline.fleet.stop(postprocess)
    assert await asyncio.to_thread(check) == 2
