"""Hostile input from a Kafka client nobody here wrote: a plain aiokafka producer mixes good
requests with malformed bytes, wrong types, limits, odd ids and tenants, bad reply topics,
duplicate ids, past deadlines and wrong content types. Every good request is DONE; every bad
one with a usable id gets exactly one error result (and a dead letter) and a final ledger
state; no worker restarts, /readyz stays true, and good requests afterwards are served
normally."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from schemas import (
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Status,
    decode_result,
    encode,
)
from tests.conftest import Namespace
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import FEATURES, read_topic, settled_states
from tests.services import Services
from workers.fleet import STAGES
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.ledger import Ledger
from workers.observability.registry import announced_workers

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Case:
    task_id: str
    value: bytes
    code: ErrorCode | None
    """None: a good request, DONE."""
    status: Status = Status.FAILED
    headers: tuple[tuple[str, bytes], ...] = ()


def _v2(task_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": task_id,
        "tenant": "mallory",
        "pipeline": "tiny-classify",
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, FEATURES], "data": [0.5] * 16}
        ],
    }
    body.update(extra)
    return body


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _msgpack(task_id: str, **options: Any) -> bytes:
    request = InferenceRequest.new(
        tenant="mallory",
        pipeline="tiny-classify",
        inputs={"features": np.zeros((1, FEATURES), np.float32)},
        task_id=task_id,
        **options,
    )
    return encode(request)


def _cases(prefix: str, replies: str, requests_topic: str, run: str) -> list[Case]:
    def tid(name: str) -> str:
        return f"{run}-{name}"

    good = [Case(tid(f"good-json-{i}"), _json(_v2(tid(f"good-json-{i}"))), None) for i in range(6)]
    good += [Case(tid(f"good-mp-{i}"), _msgpack(tid(f"good-mp-{i}")), None) for i in range(6)]
    good += [
        Case(tid(f"good-reply-{i}"), _json(_v2(tid(f"good-reply-{i}"), reply_to=replies)), None)
        for i in range(3)
    ]
    good.append(Case(tid("good-bulk"), _json(_v2(tid("good-bulk"), priority="bulk")), None))
    bad = [
        # malformed bytes and wrong types
        Case(tid("garbage"), b"\xc1\xff\x00 garbage", ErrorCode.MALFORMED),
        Case(tid("truncated"), b'{"id": "x", "tenant": ', ErrorCode.MALFORMED),
        Case(tid("array"), msgpack.packb([1, 2, 3]), ErrorCode.MALFORMED),
        Case(
            tid("json-array"),
            b"[1, 2, 3]",
            ErrorCode.WRONG_TYPE,
            headers=(("content-type", b"application/json"),),
        ),
        Case(tid("tenant-int"), _json(_v2(tid("tenant-int"), tenant=7)), ErrorCode.WRONG_TYPE),
        Case(tid("inputs-str"), _json(_v2(tid("inputs-str"), inputs="x")), ErrorCode.WRONG_TYPE),
        Case(
            tid("deadline-str"),
            _json(_v2(tid("deadline-str"), deadline_ms="soon")),
            ErrorCode.WRONG_TYPE,
        ),
        # limits
        Case(
            tid("huge-shape"),
            _json(
                _v2(
                    tid("huge-shape"),
                    inputs=[
                        {"name": "features", "datatype": "FP32", "shape": [1 << 20, 1 << 20]}
                        | {"data": [0.5]}
                    ],
                )
            ),
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
        # odd ids and tenants (the id in the header is the one still usable)
        Case(tid("odd-id"), _json(_v2("has spaces!")), ErrorCode.INVALID_VALUE),
        Case(tid("long-id"), _json(_v2("x" * 300)), ErrorCode.INVALID_VALUE),
        Case(tid("unicode-id"), _json(_v2("tâche-1")), ErrorCode.INVALID_VALUE),
        Case(
            tid("odd-tenant"),
            _json(_v2(tid("odd-tenant"), tenant="../etc")),
            ErrorCode.INVALID_VALUE,
        ),
        Case(
            tid("empty-tenant"), _json(_v2(tid("empty-tenant"), tenant="")), ErrorCode.INVALID_VALUE
        ),
        # bad reply topics
        Case(
            tid("reply-missing"),
            _json(_v2(tid("reply-missing"), reply_to=f"{prefix}-no-such-topic")),
            ErrorCode.UNDELIVERABLE,
            Status.REJECTED,
        ),
        Case(
            tid("reply-internal"),
            _json(_v2(tid("reply-internal"), reply_to="__consumer_offsets")),
            ErrorCode.UNDELIVERABLE,
            Status.REJECTED,
        ),
        Case(
            tid("reply-own"),
            _msgpack(tid("reply-own"), reply_to=requests_topic),
            ErrorCode.UNDELIVERABLE,
            Status.REJECTED,
        ),
        Case(
            tid("reply-invalid"),
            _json(_v2(tid("reply-invalid"), reply_to="no spaces allowed")),
            ErrorCode.INVALID_VALUE,
        ),
        # closed sets
        Case(
            tid("priority"), _json(_v2(tid("priority"), priority="ultra")), ErrorCode.INVALID_VALUE
        ),
        Case(
            tid("datatype"),
            _json(
                _v2(
                    tid("datatype"),
                    inputs=[{"name": "features", "datatype": "FP128", "shape": [1], "data": [1]}],
                )
            ),
            ErrorCode.INVALID_VALUE,
        ),
        # past deadlines
        Case(
            tid("deadline"),
            _msgpack(tid("deadline"), deadline_ms=1),
            ErrorCode.DEADLINE_EXCEEDED,
            Status.EXPIRED,
        ),
        # wrong content types
        Case(
            tid("content-type"),
            _json(_v2(tid("content-type"))),
            ErrorCode.UNSUPPORTED_CONTENT_TYPE,
            headers=(("content-type", b"text/csv"),),
        ),
        Case(
            tid("json-says-msgpack"),
            _msgpack(tid("json-says-msgpack")),
            ErrorCode.MALFORMED,
            headers=(("content-type", b"application/json"),),
        ),
        Case(
            tid("response-type"),
            _json(_v2(tid("response-type"), response_content_type="text/xml")),
            ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        ),
    ]
    return good + bad


def _headers(case: Case) -> Headers:
    return [
        ("conveyor-task-id", case.task_id.encode()),
        ("conveyor-tenant", b"mallory"),
        *case.headers,
    ]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def _readyz_urls(services: Services, pipeline: Pipeline) -> list[str]:
    redis = aioredis.Redis.from_url(services.redis_url, decode_responses=True)
    try:
        async with asyncio.timeout(30):
            while True:
                found = [
                    w["metrics_url"].removesuffix("/metrics") + "/readyz"
                    for w in await announced_workers(redis, pipeline.keys)
                ]
                if len(found) == 3:
                    return found
                await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


async def _watch_ready(urls: list[str], stop: asyncio.Event, not_ready: list[str]) -> None:
    while not stop.is_set():
        for url in urls:
            status = await asyncio.to_thread(_get, url)
            if status != 200:
                not_ready.append(f"{url}: {status}")
        await asyncio.sleep(0.2)


async def _send(producer: AIOKafkaProducer, topic: str, cases: list[Case]) -> None:
    for case in cases:
        await producer.send(topic, case.value, key=case.task_id.encode(), headers=_headers(case))
    await producer.flush()


async def _answers(bootstrap: str, topics: list[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for topic in topics:
        for record in await read_topic(bootstrap, topic):
            result = decode_result(record.value or b"", record.headers)
            found[result.task_id].append(result)
    return found


async def _good_latencies_s(
    producer: AIOKafkaProducer, pipeline: Pipeline, ledger: Ledger, run: str, count: int
) -> list[float]:
    cases = [Case(f"{run}-{i}", _msgpack(f"{run}-{i}"), None) for i in range(count)]
    started = time.monotonic()
    await _send(producer, pipeline.topics.requests, cases)
    done_at: dict[str, float] = {}
    async with asyncio.timeout(60):
        while len(done_at) < count:
            states = await ledger.states([c.task_id for c in cases])
            for task_id, state in states.items():
                if state is Status.DONE and task_id not in done_at:
                    done_at[task_id] = time.monotonic() - started
                assert state not in (Status.FAILED, Status.REJECTED, Status.EXPIRED), task_id
            await asyncio.sleep(0.02)
    return sorted(done_at.values())


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_hostile_requests_fail_alone_and_good_ones_are_served(
    services: Services,
    namespace: Namespace,
    pipeline: Pipeline,
    ledger: Ledger,
    delivery: str,
) -> None:
    replies = f"{namespace.topic_prefix}-client-replies"  # a client's own topic
    await ensure_topics(services.kafka_bootstrap, [TopicSpec(replies, 1)])
    for stage in STAGES:
        pipeline.fleet.start(stage, 1, {"CONVEYOR_WORKER__DELIVERY": delivery})
    await asyncio.to_thread(pipeline.fleet.wait_ready)
    pids = [w.process.pid for w in pipeline.fleet.workers]
    urls = await _readyz_urls(services, pipeline)
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    stop, not_ready = asyncio.Event(), list[str]()
    watcher = asyncio.create_task(_watch_ready(urls, stop, not_ready))
    try:
        before = await _good_latencies_s(producer, pipeline, ledger, "before", 20)

        cases = _cases(namespace.topic_prefix, replies, pipeline.topics.requests, "h")
        original, duplicate = cases[0], Case(cases[0].task_id, cases[0].value, None)
        await _send(producer, pipeline.topics.requests, cases)
        # A reused id, sent after its first use was read: answered DUPLICATE_ID.
        await settled_states(ledger, [original.task_id], timeout_s=60)
        await _send(producer, pipeline.topics.requests, [duplicate])
        # And undecodable junk without any usable id: the workers must shrug it off.
        await producer.send_and_wait(pipeline.topics.requests, b"\x00\x01junk")

        states = await settled_states(ledger, [c.task_id for c in cases], timeout_s=90)
        assert sum(states.values()) == len(cases)
        async with asyncio.timeout(60):
            while True:
                answers = await _answers(
                    services.kafka_bootstrap, [pipeline.topics.results, replies]
                )
                if len(answers.get(original.task_id, ())) >= 2:
                    break
                await asyncio.sleep(0.5)

        for case in cases:
            record = await ledger.get(case.task_id)
            assert record is not None, case.task_id
            got = answers.get(case.task_id, [])
            if case.code is None:
                assert record.state is Status.DONE, (case.task_id, record)
                results = [r for r in got if isinstance(r, InferenceResult)]
                assert len(results) == 1, (case.task_id, got)
                continue
            assert record.state is case.status, (case.task_id, record)
            assert record.error_code == case.code.value, (case.task_id, record)
            assert len(got) == 1, (case.task_id, got)  # exactly one answer
            (error,) = got
            assert isinstance(error, ErrorResult), (case.task_id, error)
            assert (error.code, error.status) == (case.code, case.status), (case.task_id, error)

        # The duplicate: one DUPLICATE_ID answer beside the first request's result, whose
        # ledger record stays DONE.
        first_answers = answers[original.task_id]
        codes = sorted(getattr(r, "code", "DONE") for r in first_answers)
        assert codes == ["DONE", ErrorCode.DUPLICATE_ID], first_answers
        assert (await ledger.get(original.task_id)).state is Status.DONE  # type: ignore[union-attr]

        replied = await _answers(services.kafka_bootstrap, [replies])
        assert sorted(replied) == sorted(c.task_id for c in cases if "good-reply" in c.task_id)

        dead = await read_topic(services.kafka_bootstrap, pipeline.topics.dlq)
        lettered: defaultdict[str, int] = defaultdict(int)
        for record in dead:
            lettered[dict(record.headers).get("conveyor-task-id", b"").decode()] += 1
        for case in cases:
            expected = 0 if case.code is None else 1
            assert lettered.get(case.task_id, 0) == expected + (case is original), case.task_id

        after = await _good_latencies_s(producer, pipeline, ledger, "after", 20)
        # Served as before (generous: two shared cores).
        assert after[len(after) // 2] <= 3 * before[len(before) // 2] + 2.0, (before, after)
    finally:
        stop.set()
        await watcher
        await producer.stop()
    assert not_ready == []
    assert [w.process.pid for w in pipeline.fleet.workers] == pids
    assert all(w.alive for w in pipeline.fleet.workers)
