"""Postprocess functions: softmax/top-k numerics and bounds, normalization, mean pooling."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig
from workers.models.runtime import OnnxModel
from workers.pipelines import POSTPROCESSORS, PREPROCESSORS, postprocessor, preprocessor
from workers.pipelines.postprocess import mean_pool_normalize, normalize_embedding, softmax_top_k
from workers.pipelines.text import Tokenize

Served = tuple[PipelineConfig, ModelVersion]
PIPELINE = PipelineConfig("p", "m", "tensor.passthrough", "classification.softmax_topk")
SENTENCES = [
    "Kafka partitions order the records of one key.",
    "A cat sat on the mat.",
    "Inference workers batch requests across tenants to keep the accelerator busy.",
    "x",
]


def _logits(rows: int = 5, classes: int = 6) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(3).standard_normal((rows, classes)).astype(np.float32) * 4


def _cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / norms)


def test_softmax_top_k_matches_numpy() -> None:
    logits = _logits()
    exp = np.exp(logits.astype(np.float64))
    expected = exp / exp.sum(axis=1, keepdims=True)

    result = softmax_top_k({"logits": logits}, {"top_k": 3}, PIPELINE)

    np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
    top = np.argsort(-expected, axis=1)[:, :3]
    assert result["top_k_indices"].tolist() == top.tolist()
    np.testing.assert_allclose(
        result["top_k_scores"], np.take_along_axis(expected, top, axis=1), rtol=1e-6
    )
    assert result["probabilities"].dtype == np.float32
    assert result["top_k_indices"].dtype == np.int64
    assert result["top_k_scores"].dtype == np.float32


def test_softmax_is_stable_for_large_logits_and_breaks_ties_by_index() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)

    result = softmax_top_k({"logits": logits}, {"top_k": 3}, PIPELINE)

    assert np.isfinite(result["probabilities"]).all()
    np.testing.assert_allclose(result["probabilities"], [[0.5, 0.5, 0.0]])
    assert result["top_k_indices"].tolist() == [[0, 1, 2]]


def test_top_k_comes_from_request_then_pipeline_then_one() -> None:
    logits = _logits(classes=4)
    pipeline = dataclasses.replace(PIPELINE, parameters={"top_k": 2})

    assert softmax_top_k({"logits": logits}, {}, PIPELINE)["top_k_indices"].shape == (5, 1)
    assert softmax_top_k({"logits": logits}, {}, pipeline)["top_k_indices"].shape == (5, 2)
    assert softmax_top_k({"logits": logits}, {"top_k": 4}, pipeline)["top_k_scores"].shape == (
        5,
        4,
    )


@pytest.mark.parametrize("top_k", [0, -1, 7, True, 1.0, "2", None])
def test_top_k_out_of_bounds_is_invalid(top_k: object) -> None:
    with pytest.raises(ContractError) as caught:
        softmax_top_k({"logits": _logits(classes=6)}, {"top_k": top_k}, PIPELINE)

    assert caught.value.code is ErrorCode.INVALID_VALUE
    assert caught.value.field == "parameters.top_k"
    assert "1..6" in caught.value.message


def test_missing_logits_names_the_tensor() -> None:
    with pytest.raises(ContractError) as caught:
        softmax_top_k({"scores": _logits()}, {}, PIPELINE)

    assert caught.value.code is ErrorCode.MISSING_FIELD
    assert caught.value.field == "outputs.logits"


def test_normalize_embedding_gives_unit_rows_and_keeps_zero_rows_finite() -> None:
    pooled = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)

    embedding = normalize_embedding({"sentence_embedding": pooled}, {}, PIPELINE)["embedding"]

    np.testing.assert_allclose(embedding, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert embedding.dtype == np.float32


def test_mean_pool_ignores_masked_tokens() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)

    embedding = mean_pool_normalize(
        {"last_hidden_state": hidden, "attention_mask": mask}, {}, PIPELINE
    )["embedding"]

    np.testing.assert_allclose(embedding, [[2.0 / np.sqrt(5.0), 1.0 / np.sqrt(5.0)]], rtol=1e-6)


def test_mean_pool_accepts_a_task_mask_shorter_than_the_padded_batch() -> None:
    """The stage forwards the task's own mask; the hidden state is padded to the batch."""
    hidden = np.array([[[1.0, 0.0], [3.0, 2.0], [7.0, 7.0], [9.0, 9.0]]], dtype=np.float32)
    short_mask = np.array([[1, 1]], dtype=np.int64)

    embedding = mean_pool_normalize(
        {"last_hidden_state": hidden, "attention_mask": short_mask}, {}, PIPELINE
    )["embedding"]

    np.testing.assert_allclose(embedding, [[2.0 / np.sqrt(5.0), 1.0 / np.sqrt(5.0)]], rtol=1e-6)


def test_mean_pool_normalize_equals_normalized_in_graph_pooling(
    minilm_pooled: Served,
    minilm_unpooled: Served,
    pooled_model: OnnxModel,
    unpooled_model: OnnxModel,
) -> None:
    pooled_pipeline, pooled_version = minilm_pooled
    unpooled_pipeline, unpooled_version = minilm_unpooled
    text = np.array(SENTENCES, dtype=object)
    pooled_feeds = Tokenize()({"text": text}, {}, pooled_pipeline, pooled_version)
    unpooled_feeds = Tokenize()({"text": text}, {}, unpooled_pipeline, unpooled_version)

    in_graph = postprocessor(pooled_pipeline.postprocess)(
        pooled_model.run(pooled_feeds), {}, pooled_pipeline
    )["embedding"]
    outside = postprocessor(unpooled_pipeline.postprocess)(
        {**unpooled_model.run(unpooled_feeds), "attention_mask": unpooled_feeds["attention_mask"]},
        {},
        unpooled_pipeline,
    )["embedding"]

    assert pooled_pipeline.postprocess == "embedding.normalize"
    assert unpooled_pipeline.postprocess == "embedding.mean_pool_normalize"
    assert in_graph.shape == outside.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(in_graph, axis=1), 1.0, rtol=1e-5)
    assert _cosines(in_graph, outside).min() >= 0.99999


def test_registry_resolves_names_and_rejects_unknown_ones() -> None:
    assert set(PREPROCESSORS) == {"text.tokenize", "tensor.passthrough"}
    assert postprocessor("classification.softmax_topk") is softmax_top_k
    assert preprocessor("text.tokenize") is not preprocessor("text.tokenize")
    for lookup in (preprocessor, postprocessor):
        with pytest.raises(ContractError) as caught:
            lookup("nope")
        assert caught.value.code is ErrorCode.UNKNOWN_PIPELINE
    assert "embedding.normalize" in POSTPROCESSORS
