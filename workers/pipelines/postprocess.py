"""Postprocess functions: pooling, normalization, softmax and top-k over one task's rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from schemas import ContractError, ErrorCode
from workers.models.repository import PipelineConfig
from workers.pipelines.base import Array, parameter, require


def _l2_normalize(rows: Array) -> Array:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    normalized: Array = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


def normalize_embedding(
    outputs: Mapping[str, Array], parameters: Mapping[str, Any], pipeline: PipelineConfig
) -> dict[str, Array]:
    """`embedding.normalize`: L2-normalize a pooled `sentence_embedding` [n, d]."""
    pooled = require(outputs, "sentence_embedding", "outputs")
    return {"embedding": _l2_normalize(pooled)}


def mean_pool_normalize(
    outputs: Mapping[str, Array], parameters: Mapping[str, Any], pipeline: PipelineConfig
) -> dict[str, Array]:
    """`embedding.mean_pool_normalize`: mean over unmasked tokens of `last_hidden_state`.

    For graphs that do not pool inside; the inference stage forwards `attention_mask`. That
    mask is the task's own (unpadded) one, while `last_hidden_state` is padded to the longest
    task of the batch: positions past the mask are padding and are dropped.
    """
    hidden = require(outputs, "last_hidden_state", "outputs")
    mask = require(outputs, "attention_mask", "outputs")
    seq = min(hidden.shape[1], mask.shape[1])
    hidden = hidden[:, :seq]
    weights = mask[:, :seq, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return {"embedding": _l2_normalize(pooled)}


def softmax_top_k(
    outputs: Mapping[str, Array], parameters: Mapping[str, Any], pipeline: PipelineConfig
) -> dict[str, Array]:
    """`classification.softmax_topk`: probabilities [n, c] plus the top k classes and scores."""
    logits = require(outputs, "logits", "outputs").astype(np.float32)
    top_k = parameter(parameters, pipeline, "top_k", 1)
    classes = logits.shape[1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise ContractError(
            ErrorCode.INVALID_VALUE,
            f"parameters.top_k must be an int in 1..{classes}, got {top_k!r}",
            "parameters.top_k",
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return {
        "probabilities": probabilities.astype(np.float32),
        "top_k_indices": order.astype(np.int64),
        "top_k_scores": np.take_along_axis(probabilities, order, axis=1).astype(np.float32),
    }
