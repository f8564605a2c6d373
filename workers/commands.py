"""What the `conveyor` subcommands other than `stack` do; cli.py only parses arguments."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np

from schemas import ErrorResult, InferenceRequest, InferenceResult, arrays_of
from workers.client import Client
from workers.exits import CommandError, ExitCode
from workers.ledger import read_task
from workers.models.builders import build_minilm, build_tiny_classifier, find_minilm_package_dir
from workers.names import Topics
from workers.settings import Settings

BUILDERS = ("text-embedding", "tiny-classify")


def build_model(
    pipeline: str, repository: Path, version: int, precision: Literal["fp32", "fp16"] = "fp32"
) -> Path:
    """Write the model behind `pipeline` into the repository (offline, no PyTorch);
    `precision="fp16"` adds the float16 variant served on CUDA and TensorRT."""
    if pipeline == "text-embedding":
        return build_minilm(find_minilm_package_dir(), repository, version, precision=precision)
    if precision != "fp32":
        raise CommandError(f"{pipeline} has no fp16 variant (text-embedding has)", ExitCode.USAGE)
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


def texts_from_file(path: Path) -> list[str]:
    """`submit --file`: one text per line (blank lines skipped); `-` reads stdin."""
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", ExitCode.USAGE) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}",
            ExitCode.USAGE,
        ) from None
    texts = [line for line in text.splitlines() if line.strip()]
    if not texts:
        raise CommandError(f"{path} holds no text (one per line)", ExitCode.USAGE)
    return texts


async def submit(
    settings: Settings, tenant: str, pipeline: str, texts: list[str], wait_s: float | None
) -> int:
    """Publish one request of `texts`; print its task id, and with `wait_s` its result.
    Exit 0 done, 1 the task failed (the error result is printed too), 4 no answer in time."""
    request = InferenceRequest.new(
        tenant=tenant, pipeline=pipeline, inputs={"text": np.array(texts, dtype=object)}
    )
    # Without --wait-s nothing reads the answer here: no consumer to start (and no results
    # topic to find) before the request goes out.
    async with Client(
        settings.kafka, Topics(settings.kafka.topic_prefix), reads_results=wait_s is not None
    ) as client:
        task_id = await client.submit(request)
        print(task_id, flush=True)
        if wait_s is None:
            return ExitCode.OK
        try:
            result = await client.result(task_id, timeout_s=wait_s)
        except TimeoutError:
            raise CommandError(
                f"no result for task {task_id} within {wait_s:g}s: are the three workers "
                f"running? (conveyor top; conveyor status {task_id} shows how far it got)",
                ExitCode.TIMEOUT,
            ) from None
        print(json.dumps(result_to_json(result)))
        if isinstance(result, ErrorResult):
            raise CommandError(
                f"task {task_id} {result.status.value} at {result.stage}: "
                f"{result.code.value}: {result.message}",
                ExitCode.TASK_FAILED,
            )
        return ExitCode.OK


async def follow_results(settings: Settings, tenant: str | None) -> int:
    async with Client(settings.kafka, Topics(settings.kafka.topic_prefix)) as client:
        who = f"tenant {tenant}" if tenant else "every tenant"
        print(f"following results of {who} on {client.results_topic}", file=sys.stderr, flush=True)
        async for result in client.results(tenant):
            print(json.dumps(result_to_json(result)), flush=True)
    return 0


def status(settings: Settings, task_id: str) -> int:
    record = asyncio.run(read_task(settings.redis, settings.redis.key_prefix, task_id))
    if record is None:
        raise CommandError(
            f"no task {task_id!r} in the ledger under key prefix {settings.redis.key_prefix!r} "
            "(unknown, or past redis.task_ttl_s)",
            ExitCode.TASK_FAILED,
        )
    print(json.dumps(record.to_dict(), indent=2))
    return 0
