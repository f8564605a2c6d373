"""`tensor.passthrough`: names, datatypes, ranks and fixed dimensions against the config."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig, TensorSpec
from workers.pipelines.tensor import Passthrough

Served = tuple[PipelineConfig, ModelVersion]
Array = np.ndarray[Any, np.dtype[Any]]


def _error(served: Served, inputs: dict[str, Array]) -> ContractError:
    pipeline, model = served
    with pytest.raises(ContractError) as caught:
        Passthrough()(inputs, {}, pipeline, model)
    return caught.value


def test_valid_features_pass_through_unchanged(tiny: Served) -> None:
    pipeline, model = tiny
    features = np.ones((3, 16), dtype=np.float32)

    feeds = Passthrough()({"features": features}, {}, pipeline, model)

    assert feeds.keys() == {"features"}
    assert feeds["features"] is features


@pytest.mark.parametrize(
    ("features", "code", "detail"),
    [
        (
            np.ones((2, 16), np.float64),
            ErrorCode.DTYPE_MISMATCH,
            "datatype FP64, model expects FP32",
        ),
        (np.ones((2, 16), np.int32), ErrorCode.DTYPE_MISMATCH, "datatype INT32"),
        (np.ones(16, np.float32), ErrorCode.SHAPE_MISMATCH, "rank 1, model expects rank 2"),
        (np.ones((1, 2, 16), np.float32), ErrorCode.SHAPE_MISMATCH, "rank 3"),
        (np.ones((2, 15), np.float32), ErrorCode.SHAPE_MISMATCH, "dimension 1 is 15"),
        (np.ones((0, 16), np.float32), ErrorCode.EMPTY_INPUT, "no rows"),
    ],
    ids=["fp64", "int32", "rank1", "rank3", "fixed-dim", "no-rows"],
)
def test_rejects_mismatched_features(
    tiny: Served, features: Array, code: ErrorCode, detail: str
) -> None:
    error = _error(tiny, {"features": features})

    assert error.code is code
    assert error.field == "inputs.features"
    assert detail in error.message


def test_rejects_unknown_and_missing_inputs(tiny: Served) -> None:
    features = np.ones((1, 16), np.float32)

    unknown = _error(tiny, {"features": features, "extra": features})
    missing = _error(tiny, {})

    assert unknown.code is ErrorCode.UNKNOWN_FIELD
    assert unknown.field == "inputs.extra"
    assert missing.code is ErrorCode.MISSING_FIELD
    assert missing.field == "inputs.features"


def test_inputs_must_agree_on_rows(tiny: Served) -> None:
    pipeline, model = tiny
    specs = (TensorSpec("ids", "INT64", (-1, -1)), TensorSpec("mask", "INT64", (-1, -1)))
    two_inputs = ModelVersion(dataclasses.replace(model.config, inputs=specs), model.version)

    error = _error(
        (pipeline, two_inputs),
        {"ids": np.ones((2, 5), np.int64), "mask": np.ones((3, 5), np.int64)},
    )

    assert error.code is ErrorCode.SHAPE_MISMATCH
    assert "[2, 3]" in error.message
