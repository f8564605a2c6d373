"""The signature check names every difference between a graph and its pipeline's contract."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from workers.models.builders import build_tiny_classifier
from workers.models.builders.faulty import build_faulty_tiny
from workers.models.repository import ModelRepository
from workers.models.signature import (
    RuntimeRequirements,
    Signature,
    TensorContract,
    check_model,
    parse_signature,
)

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    build_tiny_classifier(tmp_path, 1)
    build_faulty_tiny(tmp_path, 2, "incompatible")
    return tmp_path


def graph(repository: Path, version: int) -> onnx.ModelProto:
    return onnx.load(str(repository / "tiny-classifier" / str(version) / "model.onnx"))


def contract(repository: Path) -> Signature:
    (pipeline,) = ModelRepository(repository).models["tiny-classifier"].pipelines
    assert pipeline.signature is not None
    return pipeline.signature


def test_a_model_that_fits_has_no_differences(repository: Path) -> None:
    assert check_model(contract(repository), graph(repository, 1), CPU, ort.__version__) == []


def test_other_input_width_is_named(repository: Path) -> None:
    problems = check_model(contract(repository), graph(repository, 2), CPU, ort.__version__)

    assert problems == ["input 'features': dim 1 is 8, contract says 16"]


def test_every_difference_is_listed(repository: Path) -> None:
    wanted = Signature(
        inputs=(
            TensorContract("features", "INT64", (-1, 16, 3)),
            TensorContract("mask", "INT64", (-1, 16)),
        ),
        outputs=(TensorContract("embedding", "FP32", (-1, 4)),),
        runtime=RuntimeRequirements(
            min_opset=99, min_ort_version="99.0", execution_provider="MagicExecutionProvider"
        ),
    )

    problems = check_model(wanted, graph(repository, 1), CPU, "1.20.0")

    assert problems == [
        "input 'features': datatype FP32, contract says INT64",
        "input 'features': rank 2, contract says 3",
        "input 'mask' is missing",
        "output 'embedding' is missing",
        "opset 17, contract needs >= 99",
        "ONNX Runtime 1.20.0 here, contract needs >= 99.0",
        "execution provider MagicExecutionProvider unavailable; "
        "this runtime has ['CPUExecutionProvider']",
    ]


def test_a_fixed_batch_dimension_is_a_difference(repository: Path) -> None:
    model = graph(repository, 1)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4

    problems = check_model(contract(repository), model, CPU, ort.__version__)

    assert problems == ["input 'features': batch dim 0 is fixed at 4, contract says dynamic"]


def test_a_pipeline_may_declare_its_own_contract_and_runtime() -> None:
    signature = parse_signature(
        {"inputs": [{"name": "x", "datatype": "FP16", "shape": [-1, 2]}], "batch_dim": 0},
        {"min_opset": 13, "execution_provider": "CUDAExecutionProvider"},
        [],
        [TensorContract("y", "FP32", (-1,))],
    )

    assert signature.inputs == (TensorContract("x", "FP16", (-1, 2)),)
    assert signature.outputs == (TensorContract("y", "FP32", (-1,)),)
    assert signature.runtime == RuntimeRequirements(13, None, "CUDAExecutionProvider")


def test_unknown_runtime_requirements_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime requirement 'gpu'"):
        parse_signature(None, {"gpu": True}, [], [])
