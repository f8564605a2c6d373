"""Pipelines addressed as V2 models: names, versions, metadata and readiness.

A V2 model name is a pipeline's name (`text-embedding`, `tiny-classify`), or a model's name
(`all-minilm-l6-v2`), which addresses the first pipeline its config declares. A version in
the path (`/v2/models/NAME/versions/2`) pins that model version.

Metadata describes what a caller sends and receives, which is not always the model's own
tensors: a pipeline that tokenizes takes text (`text`, BYTES) and one that pools answers
with its postprocess function's outputs. Preprocess and postprocess functions unknown here
are described by the model's own tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import ErrorCode
from workers.gateway.errors import GatewayError
from workers.models.repository import ModelConfig, ModelRepository, PipelineConfig, TensorSpec

PLATFORM = "conveyor_pipeline"


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ServedModel:
    """One V2 model: a pipeline and the model it runs."""

    name: str
    """The V2 name the caller used."""
    pipeline: PipelineConfig
    model: ModelConfig
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    @property
    def versions(self) -> tuple[int, ...]:
        return self.model.served_versions

    @property
    def text_inputs(self) -> bool:
        """BYTES inputs are UTF-8 text (tokenizing pipelines), not binary."""
        return self.pipeline.preprocess == "text.tokenize"

    def metadata(self) -> dict[str, object]:
        return {
            "name": self.name,
            "versions": [str(v) for v in self.versions],
            "platform": PLATFORM,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parameters": {"pipeline": self.pipeline.name, "model": self.model.name},
        }


class ModelCatalog:
    """Resolves V2 model names against the model repository, read once at start."""

    def __init__(self, repository: ModelRepository) -> None:
        self._served: dict[str, ServedModel] = {}
        for pipeline in repository.pipelines.values():
            model = repository.models[pipeline.model]
            self._served[pipeline.name] = _served(pipeline.name, pipeline, model)
        for model in repository.models.values():
            if model.pipelines and model.name not in self._served:
                self._served[model.name] = _served(model.name, model.pipelines[0], model)

    def names(self) -> list[str]:
        return sorted(self._served)

    def resolve(self, name: str, version: str | None = None) -> tuple[ServedModel, int | None]:
        """The model and the pinned version (None: the current one). 404 when unknown."""
        served = self._served.get(name)
        if served is None:
            raise GatewayError(
                404,
                ErrorCode.UNKNOWN_PIPELINE.value,
                f"model {name!r} is not served; known: {self.names()}",
            )
        if version is None or version == "":
            return served, None
        try:
            pinned = int(version)
        except ValueError:
            pinned = -1
        if pinned not in served.versions:
            raise GatewayError(
                404,
                ErrorCode.UNKNOWN_MODEL_VERSION.value,
                f"model {name!r} version {version!r} is not served; "
                f"served: {[str(v) for v in served.versions]}",
            )
        return served, pinned


def _served(name: str, pipeline: PipelineConfig, model: ModelConfig) -> ServedModel:
    return ServedModel(
        name, pipeline, model, _inputs_of(pipeline, model), _outputs_of(pipeline, model)
    )


def _inputs_of(pipeline: PipelineConfig, model: ModelConfig) -> tuple[TensorMeta, ...]:
    if pipeline.preprocess == "text.tokenize":
        return (TensorMeta("text", "BYTES", (-1,)),)
    return tuple(_meta(spec) for spec in model.inputs)


def _outputs_of(pipeline: PipelineConfig, model: ModelConfig) -> tuple[TensorMeta, ...]:
    width = _last_dim(model.outputs)
    if pipeline.postprocess.startswith("embedding."):
        return (TensorMeta("embedding", "FP32", (-1, width)),)
    if pipeline.postprocess == "classification.softmax_topk":
        top_k = pipeline.parameters.get("top_k", 1)
        k = top_k if isinstance(top_k, int) and not isinstance(top_k, bool) else -1
        return (
            TensorMeta("probabilities", "FP32", (-1, width)),
            TensorMeta("top_k_indices", "INT64", (-1, k)),
            TensorMeta("top_k_scores", "FP32", (-1, k)),
        )
    return tuple(_meta(spec) for spec in model.outputs)


def _last_dim(specs: tuple[TensorSpec, ...]) -> int:
    return specs[0].shape[-1] if specs and specs[0].shape else -1


def _meta(spec: TensorSpec) -> TensorMeta:
    return TensorMeta(spec.name, spec.datatype, tuple(spec.shape))
