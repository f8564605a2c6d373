"""The plug-in points: what a preprocess and a postprocess function look like."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy.typing as npt

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig

Array = npt.NDArray[Any]


class Preprocessor(Protocol):
    """Turns a request's inputs into the model's input tensors (one row or more per task)."""

    def __call__(
        self,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any],
        pipeline: PipelineConfig,
        model: ModelVersion,
    ) -> dict[str, Array]: ...


@runtime_checkable
class BatchPreprocessor(Preprocessor, Protocol):
    """A preprocessor that also takes many tasks in one call (a poll's requests of one
    pipeline and model version): one answer per task, its tensors or the error that fails it
    alone."""

    def many(
        self,
        tasks: Sequence[tuple[Mapping[str, Array], Mapping[str, Any]]],
        pipeline: PipelineConfig,
        model: ModelVersion,
    ) -> list[dict[str, Array] | Exception]: ...


class Postprocessor(Protocol):
    """Turns one task's rows of model outputs into the result's outputs."""

    def __call__(
        self, outputs: Mapping[str, Array], parameters: Mapping[str, Any], pipeline: PipelineConfig
    ) -> dict[str, Array]: ...


def require(tensors: Mapping[str, Array], name: str, where: str) -> Array:
    try:
        return tensors[name]
    except KeyError:
        raise ContractError(
            ErrorCode.MISSING_FIELD,
            f"{where}: tensor {name!r} is missing; got {sorted(tensors)}",
            f"{where}.{name}",
        ) from None


def parameter(request: Mapping[str, Any], pipeline: PipelineConfig, name: str, default: Any) -> Any:
    """A request's parameter, else the pipeline's, else the default."""
    if name in request:
        return request[name]
    return pipeline.parameters.get(name, default)
