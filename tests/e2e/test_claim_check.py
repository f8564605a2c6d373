"""Tensors above the claim-check threshold travel between stages through Redis."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import redis.asyncio as aioredis

from schemas import InferenceRequest, InferenceResult, arrays_of
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import FEATURES, read_topic
from tests.services import Services
from workers.client import Client

pytestmark = pytest.mark.e2e

ROWS = 200  # [200, 16] float32 = 12.8 KB in, [200, 4] = 3.2 KB of logits out


async def test_big_tensors_ride_in_redis_and_results_stay_exact(
    services: Services, pipeline: Pipeline, client: Client
) -> None:
    small = {"CONVEYOR_WORKER__CLAIM_CHECK_THRESHOLD_BYTES": "1024"}
    for stage in ("preprocess", "inference", "postprocess"):
        pipeline.fleet.start(stage, extra_env=small)
    features = np.random.default_rng(7).standard_normal((ROWS, FEATURES)).astype(np.float32)
    request = InferenceRequest.new(
        tenant="acme", pipeline="tiny-classify", inputs={"features": features}, model_version=1
    )
    await client.submit(request)
    result = await client.result(request.task_id, timeout_s=60)

    assert isinstance(result, InferenceResult), getattr(result, "message", result)
    model = pipeline.settings.model_repository / "tiny-classifier" / "1" / "model.onnx"
    (logits,) = ort.InferenceSession(str(model)).run(["logits"], {"features": features})
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(arrays_of(result.outputs)["probabilities"], expected, rtol=1e-5)

    between = await read_topic(
        pipeline.settings.kafka.bootstrap, pipeline.topics.preprocessed_of("standard")
    )
    assert between
    assert all(len(r.value or b"") < 2048 for r in between), "the tensor must not ride in Kafka"
    redis = aioredis.Redis.from_url(services.redis_url)
    try:
        claims = [k async for k in redis.scan_iter(match=f"{pipeline.keys.prefix}claim:*")]
        assert len(claims) == 2  # preprocess's features, inference's logits
        ttls = [await redis.ttl(k) for k in claims]
        assert all(0 < ttl <= 24 * 3600 for ttl in ttls), ttls
    finally:
        await redis.aclose()
