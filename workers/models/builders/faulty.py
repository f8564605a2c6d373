"""Versions of ``tiny-classifier`` that must never serve, for lifecycle tests and benchmarks.

- ``"incompatible"``: takes 8 features where the pipeline's contract says 16 (a signature
  mismatch, refused before loading).
- ``"bad-rows"``: fits the signature but averages over the batch, so it answers one row
  whatever the batch size (loads, then fails its warm-up batch).

Only the version folder is written (the model's ``config.json`` stays as it is); the model
file is written elsewhere and renamed into place, as a deployment should.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import onnx
from onnx import helper

from .tiny import MODEL_NAME, build_tiny_classifier

Fault = Literal["incompatible", "bad-rows"]


def build_faulty_tiny(repository: Path, version: int, fault: Fault, *, seed: int = 0) -> Path:
    """Writes ``<repository>/tiny-classifier/<version>/model.onnx``; returns its folder."""
    with tempfile.TemporaryDirectory(dir=repository) as scratch:
        features = 8 if fault == "incompatible" else 16
        build_tiny_classifier(Path(scratch), version, seed=seed, num_features=features)
        staged = Path(scratch) / MODEL_NAME / str(version)
        if fault == "bad-rows":
            _average_over_batch(staged / "model.onnx")
        elif fault != "incompatible":
            raise ValueError(f"fault must be incompatible or bad-rows, got {fault!r}")
        target = repository / MODEL_NAME / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    return target


def _average_over_batch(path: Path) -> None:
    model = onnx.load(str(path))
    graph = model.graph
    (output,) = graph.output
    for node in graph.node:  # the last node now writes an inner tensor
        node.output[:] = ["logits_rows" if o == output.name else o for o in node.output]
    graph.node.append(
        helper.make_node("ReduceMean", ["logits_rows"], [output.name], axes=[0], keepdims=1)
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
