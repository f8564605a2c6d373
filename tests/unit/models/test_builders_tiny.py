"""The tiny classifier builder: layout, config, validity, determinism, numerics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from workers.models.builders import build_tiny_classifier

EXPECTED_CONFIG = {
    "name": "tiny-classifier",
    "platform": "onnxruntime",
    "version_policy": {"latest": 1},
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}],
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


def _session(model_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _run(model_path: Path, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    (logits,) = _session(model_path).run(["logits"], {"features": features})
    return np.asarray(logits, dtype=np.float32)


def _features(batch: int, num_features: int = 16) -> npt.NDArray[np.float32]:
    return np.random.default_rng(42).standard_normal((batch, num_features)).astype(np.float32)


def test_writes_repository_layout_and_config(tmp_path: Path) -> None:
    model_dir = build_tiny_classifier(tmp_path, version=3)

    assert model_dir == tmp_path / "tiny-classifier"
    assert (model_dir / "3" / "model.onnx").is_file()
    assert json.loads((model_dir / "config.json").read_text()) == EXPECTED_CONFIG


def test_model_passes_onnx_checker_with_dynamic_batch(tmp_path: Path) -> None:
    model_path = build_tiny_classifier(tmp_path) / "1" / "model.onnx"

    onnx.checker.check_model(str(model_path), full_check=True)
    model = onnx.load(str(model_path))
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "features"
    assert graph_output.name == "logits"
    input_dims = graph_input.type.tensor_type.shape.dim
    assert input_dims[0].dim_param == "batch"
    assert input_dims[1].dim_value == 16


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_logits_have_batch_by_classes_shape(tmp_path: Path, batch: int) -> None:
    model_path = build_tiny_classifier(tmp_path) / "1" / "model.onnx"

    logits = _run(model_path, _features(batch))

    assert logits.shape == (batch, 4)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_logits_match_numpy_forward_pass(tmp_path: Path) -> None:
    model_path = build_tiny_classifier(tmp_path, num_features=8, num_classes=5) / "1" / "model.onnx"
    weights = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer
    }
    features = _features(10, num_features=8)

    hidden = np.maximum(features @ weights["fc1.weight"] + weights["fc1.bias"], 0.0)
    expected = hidden @ weights["fc2.weight"] + weights["fc2.bias"]

    np.testing.assert_allclose(_run(model_path, features), expected, rtol=1e-5, atol=1e-5)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = build_tiny_classifier(tmp_path / "a", seed=7)
    second = build_tiny_classifier(tmp_path / "b", seed=7)

    for name in ("1/model.onnx", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_different_seed_gives_different_weights(tmp_path: Path) -> None:
    first = build_tiny_classifier(tmp_path / "a", seed=0)
    second = build_tiny_classifier(tmp_path / "b", seed=1)

    features = _features(4)
    assert not np.allclose(
        _run(first / "1" / "model.onnx", features), _run(second / "1" / "model.onnx", features)
    )


def test_outputs_are_deterministic_across_runs(tmp_path: Path) -> None:
    model_path = build_tiny_classifier(tmp_path) / "1" / "model.onnx"
    features = _features(32)

    np.testing.assert_array_equal(_run(model_path, features), _run(model_path, features))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_features": 0}, "num_features must be >= 1, got 0"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"version": 0}, "version must be >= 1, got 0"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tiny_classifier(tmp_path, **kwargs)
