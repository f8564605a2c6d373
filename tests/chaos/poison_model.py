"""A tiny classifier that fails, inside ONNX Runtime, on any batch holding a poison row.

A row is poison when one of its features exceeds POISON_ABOVE: the graph then reshapes the
batch to a size that cannot exist, so the whole batch raises, as a real model does on input
it cannot handle. Only bisection finds which record to blame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 16
CLASSES = 4
POISON_ABOVE = 1000.0
NAME = "tiny-poison"


def build_poison_classifier(repository: Path, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    init = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.array(POISON_ABOVE, np.float32), "limit"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["raw"]),
        helper.make_node("ReduceMax", ["features"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "limit"], ["poisoned"]),
        helper.make_node("Cast", ["poisoned"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Size", ["features"], ["size"]),
        helper.make_node("Add", ["size", "flag"], ["bad_size"]),
        helper.make_node("Unsqueeze", ["bad_size", "axes0"], ["shape"]),
        helper.make_node("Reshape", ["features", "shape"], ["flat"]),
        helper.make_node("ReduceSum", ["flat"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder = repository / NAME
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")
    config = {
        "name": NAME,
        "platform": "onnxruntime",
        "version_policy": {"latest": 1},
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "pipelines": [
            {
                "name": NAME,
                "preprocess": "tensor.passthrough",
                "postprocess": "classification.softmax_topk",
                "parameters": {"top_k": 2},
            }
        ],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
