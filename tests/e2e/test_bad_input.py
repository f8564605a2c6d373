"""Every kind of bad request ends FAILED (or EXPIRED) with a reason, a dead letter and an
error result, and the workers keep serving."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest

from schemas import ErrorCode, ErrorResult, InferenceRequest, InferenceResult, Status, encode
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import FEATURES, read_topic, settled_states, tiny_request
from workers.client import Client
from workers.ledger import Ledger

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class BadRequest:
    name: str
    value: bytes
    code: ErrorCode
    status: Status = Status.FAILED


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


def _v2(task_id: str, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": task_id,
        "tenant": "mallory",
        "pipeline": "tiny-classify",
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [1, FEATURES],
                "data": [0.5] * FEATURES,
            }
        ],
    }
    body.update(extra)
    return body


def _msgpack(
    task_id: str,
    features: npt.NDArray[Any] | None = None,
    pipeline: str = "tiny-classify",
    **options: Any,
) -> bytes:
    if features is None:
        features = np.zeros((1, FEATURES), np.float32)
    request = InferenceRequest.new(
        tenant="mallory",
        pipeline=pipeline,
        inputs={"features": features},
        task_id=task_id,
        **options,
    )
    return encode(request)


CASES: list[Callable[[str], BadRequest]] = [
    lambda t: BadRequest("not msgpack", b"\xc1\xff garbage", ErrorCode.MALFORMED),
    lambda t: BadRequest("truncated json", b'{"id": "x", "tenant": ', ErrorCode.MALFORMED),
    lambda t: BadRequest(
        "missing tenant",
        _json({k: v for k, v in _v2(t).items() if k != "tenant"}),
        ErrorCode.MISSING_FIELD,
    ),
    lambda t: BadRequest(
        "unknown pipeline", _msgpack(t, pipeline="no-such-pipeline"), ErrorCode.UNKNOWN_PIPELINE
    ),
    lambda t: BadRequest(
        "unserved version", _msgpack(t, model_version=9), ErrorCode.UNKNOWN_MODEL_VERSION
    ),
    lambda t: BadRequest(
        "wrong shape", _msgpack(t, features=np.zeros((1, 5), np.float32)), ErrorCode.SHAPE_MISMATCH
    ),
    lambda t: BadRequest(
        "wrong dtype",
        _msgpack(t, features=np.zeros((1, FEATURES), np.int64)),
        ErrorCode.DTYPE_MISMATCH,
    ),
    lambda t: BadRequest(
        "empty input",
        _msgpack(t, features=np.zeros((0, FEATURES), np.float32)),
        ErrorCode.EMPTY_INPUT,
    ),
    lambda t: BadRequest(
        "deadline passed",
        _msgpack(t, deadline_ms=int(time.time() * 1000) - 1),
        ErrorCode.DEADLINE_EXCEEDED,
        Status.EXPIRED,
    ),
    lambda t: BadRequest(
        "newer schema major",
        _json(_v2(t, schema_version="9.0")),
        ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
    ),
    lambda t: BadRequest("unknown field", _json(_v2(t, deadline=5)), ErrorCode.UNKNOWN_FIELD),
    lambda t: BadRequest(
        "NaN in json", _json(_v2(t)).replace(b"0.5", b"NaN", 1), ErrorCode.NAN_FORBIDDEN
    ),
    lambda t: BadRequest("wrong type", msgpack.packb([1, 2, 3]), ErrorCode.MALFORMED),
]


@pytest.mark.parametrize("fused", [False, True], ids=["staged", "fused"])
async def test_malformed_requests_fail_with_a_reason_and_workers_survive(
    pipeline: Pipeline, client: Client, ledger: Ledger, fused: bool
) -> None:
    if fused:  # the three stages in one process answer bad input as the staged ones do
        pipeline.fleet.start("fused")
    else:
        pipeline.fleet.start_all()
    bad = [make(f"bad-{i}") for i, make in enumerate(CASES)]
    for i, case in enumerate(bad):
        # The task id travels in a header, as any client's would: the only identity an
        # undecodable payload still has.
        headers: Headers = [
            ("conveyor-task-id", f"bad-{i}".encode()),
            ("conveyor-tenant", b"mallory"),
        ]
        await client.submit_raw(case.value, key=f"bad-{i}".encode(), headers=headers)

    await settled_states(ledger, [f"bad-{i}" for i in range(len(bad))])
    for i, case in enumerate(bad):
        result = await client.result(f"bad-{i}", timeout_s=60)
        assert isinstance(result, ErrorResult), case.name
        assert (result.code, result.status) == (case.code, case.status), (case.name, result)
        assert result.message, case.name
        record = await ledger.get(f"bad-{i}")
        assert record is not None, case.name
        assert record.state == case.status, case.name
        assert record.error_code == case.code.value, case.name
        assert record.error_message, case.name

    dead = await read_topic(pipeline.settings.kafka.bootstrap, pipeline.topics.dlq)
    dead_codes = {dict(r.headers)["conveyor-task-id"].decode(): dict(r.headers) for r in dead}
    for i, case in enumerate(bad):
        letter = dead_codes[f"bad-{i}"]
        assert letter["conveyor-error-code"].decode() == case.code.value, case.name
        assert letter["conveyor-error-stage"] == b"preprocess", case.name
    assert {r.value for r in dead} == {case.value for case in bad}

    good = await client.submit(tiny_request("acme"))
    assert isinstance(await client.result(good, timeout_s=60), InferenceResult)
    assert all(w.alive for w in pipeline.fleet.workers)
