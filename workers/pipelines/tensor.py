"""`tensor.passthrough`: inputs that already are the model's tensors, checked against its config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas import ContractError, ErrorCode
from schemas.tensors import datatype_of
from workers.models.repository import ModelVersion, PipelineConfig, TensorSpec
from workers.pipelines.base import Array, require


class Passthrough:
    """Checks names, datatypes, ranks and fixed dimensions; a request may hold several rows."""

    def __call__(
        self,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any],
        pipeline: PipelineConfig,
        model: ModelVersion,
    ) -> dict[str, Array]:
        expected = {spec.name for spec in model.config.inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise ContractError(
                ErrorCode.UNKNOWN_FIELD,
                f"inputs {unknown} are not inputs of model {model.name!r}; "
                f"expected {sorted(expected)}",
                f"inputs.{unknown[0]}",
            )
        feeds = {
            spec.name: _check(require(inputs, spec.name, "inputs"), spec)
            for spec in model.config.inputs
        }
        rows = {array.shape[0] for array in feeds.values()}
        if len(rows) != 1:
            raise ContractError(
                ErrorCode.SHAPE_MISMATCH,
                f"inputs disagree on the batch dimension: {sorted(rows)}",
                "inputs",
            )
        return feeds


def _check(array: Array, spec: TensorSpec) -> Array:
    where = f"inputs.{spec.name}"
    datatype = datatype_of(array, where)
    if datatype != spec.datatype:
        raise ContractError(
            ErrorCode.DTYPE_MISMATCH,
            f"{where}: datatype {datatype}, model expects {spec.datatype}",
            where,
        )
    if array.ndim != len(spec.shape):
        raise ContractError(
            ErrorCode.SHAPE_MISMATCH,
            f"{where}: shape {list(array.shape)} has rank {array.ndim}, model expects "
            f"rank {len(spec.shape)} {list(spec.shape)}",
            where,
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise ContractError(
                ErrorCode.SHAPE_MISMATCH,
                f"{where}: dimension {axis} is {got}, model expects {want} "
                f"(shape {list(spec.shape)})",
                where,
            )
    if array.shape[0] == 0:
        raise ContractError(ErrorCode.EMPTY_INPUT, f"{where}: no rows", where)
    return array
