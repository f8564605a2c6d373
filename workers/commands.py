"""What the `conveyor` subcommands other than `stack` do; cli.py only parses arguments."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from schemas import ErrorResult, InferenceRequest, InferenceResult, arrays_of
from workers.client import Client
from workers.ledger import read_task
from workers.models.builders import build_minilm, build_tiny_classifier, find_minilm_package_dir
from workers.names import Topics
from workers.settings import Settings

BUILDERS = ("text-embedding", "tiny-classify")


def build_model(pipeline: str, repository: Path, version: int) -> Path:
    """Write the model behind `pipeline` into the repository (offline, no PyTorch)."""
    if pipeline == "text-embedding":
        return build_minilm(find_minilm_package_dir(), repository, version)
    if pipeline == "tiny-classify":
        return build_tiny_classifier(repository, version)
    raise ValueError(f"no builder for pipeline {pipeline!r}; known: {list(BUILDERS)}")


def result_to_json(result: InferenceResult | ErrorResult) -> dict[str, Any]:
    if isinstance(result, ErrorResult):
        return {
            "id": result.task_id,
            "tenant": result.tenant,
            "status": result.status.value,
            "code": result.code.value,
            "error": result.message,
            "stage": result.stage,
        }
    return {
        "id": result.task_id,
        "tenant": result.tenant,
        "status": result.status.value,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
        "outputs": {
            name: {"shape": list(a.shape), "data": np.asarray(a).ravel()[:8].tolist()}
            for name, a in arrays_of(result.outputs).items()
        },
    }


async def submit(
    settings: Settings, tenant: str, pipeline: str, texts: list[str], wait_s: float | None
) -> int:
    request = InferenceRequest.new(
        tenant=tenant, pipeline=pipeline, inputs={"text": np.array(texts, dtype=object)}
    )
    async with Client(settings.kafka, Topics(settings.kafka.topic_prefix)) as client:
        task_id = await client.submit(request)
        print(task_id)
        if wait_s is None:
            return 0
        result = await client.result(task_id, timeout_s=wait_s)
        print(json.dumps(result_to_json(result)))
        return 0 if isinstance(result, InferenceResult) else 1


async def follow_results(settings: Settings, tenant: str | None) -> int:
    async with Client(settings.kafka, Topics(settings.kafka.topic_prefix)) as client:
        async for result in client.results(tenant):
            print(json.dumps(result_to_json(result)), flush=True)
    return 0


def status(settings: Settings, task_id: str) -> int:
    record = asyncio.run(read_task(settings.redis, settings.redis.key_prefix, task_id))
    if record is None:
        print(f"no task {task_id!r} in the ledger", file=sys.stderr)
        return 1
    print(json.dumps(record.to_dict(), indent=2))
    return 0
