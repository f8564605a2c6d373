"""Builds ``tiny-classifier``: a small deterministic MLP for tests and benchmarks.

``logits = relu(features @ W1 + b1) @ W2 + b2``, weights drawn from
``numpy.random.default_rng(seed)``, so the same arguments always give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._graph import FLOAT, GraphBuilder, tensor_info
from ._repository import save_model, tensor_spec, version_dir, write_config

MODEL_NAME = "tiny-classifier"


def build_tiny_classifier(
    repository: Path,
    version: int = 1,
    *,
    seed: int = 0,
    num_features: int = 16,
    num_classes: int = 4,
) -> Path:
    """Writes ``<repository>/tiny-classifier/{config.json,<version>/model.onnx}``.

    Input ``features`` float32 ``[batch, num_features]``; output ``logits`` float32
    ``[batch, num_classes]``. Returns the model folder.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    hidden_size = 2 * max(num_features, num_classes)
    rng = np.random.default_rng(seed)
    graph = GraphBuilder(MODEL_NAME)
    w1 = graph.const("fc1.weight", rng.standard_normal((num_features, hidden_size)) * 0.5)
    b1 = graph.const("fc1.bias", rng.standard_normal(hidden_size) * 0.1)
    w2 = graph.const("fc2.weight", rng.standard_normal((hidden_size, num_classes)) * 0.5)
    b2 = graph.const("fc2.bias", rng.standard_normal(num_classes) * 0.1)
    hidden = graph.op("Relu", graph.op("Gemm", "features", w1, b1))
    graph.op("Gemm", hidden, w2, b2, name="logits")
    model = graph.model(
        [tensor_info("features", FLOAT, ["batch", num_features])],
        [tensor_info("logits", FLOAT, ["batch", num_classes])],
    )
    target = version_dir(repository, MODEL_NAME, version)
    save_model(model, target)
    model_dir = target.parent
    write_config(model_dir, _config(num_features, num_classes))
    return model_dir


def _config(num_features: int, num_classes: int) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime",
        "version_policy": {"latest": 1},
        "inputs": [tensor_spec("features", "FP32", [-1, num_features])],
        "outputs": [tensor_spec("logits", "FP32", [-1, num_classes])],
        "batching": {"max_batch_size": 256, "max_wait_ms": 2},
        "pipelines": [
            {
                "name": "tiny-classify",
                "preprocess": "tensor.passthrough",
                "postprocess": "classification.softmax_topk",
                "parameters": {"top_k": 2},
            }
        ],
    }
