"""The model repository: a folder laid out like Triton's, read into typed configs.

```
<repository>/<model>/config.json        name, inputs, outputs, batching, pipelines, version_policy
<repository>/<model>/<version>/model.onnx (+ assets such as tokenizer.json)
```

A *pipeline* (declared in a model's config) names one preprocess function, that model and one
postprocess function. The version policy picks which versions serve: `{"latest": N}` (default,
N=1), `{"specific": [1, 3]}` or `{"all": {}}`; a request may pin any served version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from schemas import ContractError, ErrorCode
from workers.models.signature import Signature, TensorContract, parse_signature

CONFIG_FILENAME = "config.json"
MODEL_FILENAME = "model.onnx"
FP16_FILENAME = "model.fp16.onnx"
"""A version's optional float16 variant of the same graph (`runtime.precision`)."""


class RepositoryError(ValueError):
    """A model repository that cannot be read; names the file and the bad value."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 marks a dynamic dimension; the first is the batch dimension."""


@dataclass(frozen=True)
class BatchingConfig:
    """How the inference worker batches a model (Triton's `dynamic_batching`, plus buckets)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    """From a batch's first item, on the monotonic clock."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Sizes formed at once when that many rows are queued (e.g. the sizes a GPU runs best)."""
    shape_buckets: tuple[int, ...] = ()
    """Boundaries on the inputs' second dimension (sequence length): a batch only holds
    rows of one bucket, so short texts are not padded to the longest. Longer rows go in a
    last bucket of their own."""
    cost: Literal["rows", "tokens"] = "rows"
    """What a task costs its tenant's fair share: rows, or rows x sequence length."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes {list(self.preferred_batch_sizes)} must lie in "
                f"1..max_batch_size ({self.max_batch_size})"
            )
        if list(self.shape_buckets) != sorted(set(self.shape_buckets)) or any(
            b < 1 for b in self.shape_buckets
        ):
            raise ValueError(f"shape_buckets {list(self.shape_buckets)} must rise from >= 1")
        if self.cost not in ("rows", "tokens"):
            raise ValueError(f"cost must be 'rows' or 'tokens', got {self.cost!r}")

    def bucket_of(self, length: int) -> int:
        """The smallest boundary >= `length` (0 without buckets, -1 past the last)."""
        if not self.shape_buckets:
            return 0
        return next((b for b in self.shape_buckets if length <= b), -1)


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    model: str
    preprocess: str
    postprocess: str
    parameters: dict[str, Any] = field(default_factory=dict)
    signature: Signature | None = None
    """What the model must take and give, and the runtime it needs (see `signature`)."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig
    pipelines: tuple[PipelineConfig, ...]
    served_versions: tuple[int, ...]
    """Versions the policy serves, ascending."""
    directory: Path
    retain: int | None = None
    """`latest: N` keeps N versions loaded after a swap; None (specific, all) keeps all."""

    @property
    def latest_version(self) -> int:
        return self.served_versions[-1]

    def version_dir(self, version: int) -> Path:
        return self.directory / str(version)

    def available_versions(self) -> list[int]:
        """Version folders holding a model file now (the folder may have changed since)."""
        return _available(self.directory)

    def signatures(self) -> list[tuple[str, Signature]]:
        """Every pipeline's contract the model must meet, by pipeline name."""
        return [(p.name, p.signature) for p in self.pipelines if p.signature is not None]


@dataclass(frozen=True)
class ModelVersion:
    """One servable (model, version): what a request resolves to."""

    config: ModelConfig
    version: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def path(self) -> Path:
        return self.config.version_dir(self.version) / MODEL_FILENAME

    def asset(self, filename: str) -> Path:
        return self.config.version_dir(self.version) / filename


class ModelRepository:
    """Reads every model's config at construction; resolves pipelines to model versions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.is_dir():
            raise RepositoryError(
                f"model repository {root} does not exist; build one with "
                "`conveyor models build text-embedding`"
            )
        self.models: dict[str, ModelConfig] = {}
        self.pipelines: dict[str, PipelineConfig] = {}
        for config_path in sorted(root.glob(f"*/{CONFIG_FILENAME}")):
            model = _read_model(config_path)
            if model.name in self.models:
                raise RepositoryError(
                    f"{config_path}: model name {model.name!r} is already used by "
                    f"{self.models[model.name].directory}"
                )
            self.models[model.name] = model
            for pipeline in model.pipelines:
                if pipeline.name in self.pipelines:
                    raise RepositoryError(
                        f"{config_path}: pipeline {pipeline.name!r} declared twice "
                        f"(also by model {self.pipelines[pipeline.name].model!r})"
                    )
                self.pipelines[pipeline.name] = pipeline

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            known = sorted(self.pipelines)
            raise ContractError(
                ErrorCode.UNKNOWN_PIPELINE,
                f"pipeline {name!r} is not served; known: {known}",
                "pipeline",
            ) from None

    def resolve(
        self, pipeline_name: str, version: int | None
    ) -> tuple[PipelineConfig, ModelVersion]:
        """The pipeline and the model version a request runs on; pinned or latest."""
        pipeline = self.pipeline(pipeline_name)
        model = self.models[pipeline.model]
        if version is None:
            return pipeline, ModelVersion(model, model.latest_version)
        if version not in model.served_versions:
            raise ContractError(
                ErrorCode.UNKNOWN_MODEL_VERSION,
                f"model {model.name!r} version {version} is not served; "
                f"served: {list(model.served_versions)}",
                "model_version",
            )
        return pipeline, ModelVersion(model, version)


def _read_model(config_path: Path) -> ModelConfig:
    try:
        raw = json.loads(config_path.read_text("utf-8"))
        name = str(raw["name"])
        directory = config_path.parent
        available = _available(directory)
        if not available:
            raise RepositoryError(f"{directory}: no version folder holds {MODEL_FILENAME}")
        batching = raw.get("batching", {})
        inputs = tuple(_spec(s) for s in raw["inputs"])
        outputs = tuple(_spec(s) for s in raw["outputs"])
        policy = raw.get("version_policy", {"latest": 1})
        return ModelConfig(
            name=name,
            inputs=inputs,
            outputs=outputs,
            batching=BatchingConfig(
                max_batch_size=int(batching.get("max_batch_size", 32)),
                max_wait_ms=float(batching.get("max_wait_ms", 5.0)),
                preferred_batch_sizes=tuple(
                    sorted(int(n) for n in batching.get("preferred_batch_sizes", ()))
                ),
                shape_buckets=tuple(int(n) for n in batching.get("shape_buckets", ())),
                cost=batching.get("cost", "rows"),
            ),
            pipelines=tuple(
                PipelineConfig(
                    name=str(p["name"]),
                    model=name,
                    preprocess=str(p["preprocess"]),
                    postprocess=str(p["postprocess"]),
                    parameters=dict(p.get("parameters", {})),
                    signature=parse_signature(
                        p.get("signature"),
                        p.get("runtime"),
                        [_contract(t) for t in inputs],
                        [_contract(t) for t in outputs],
                    ),
                )
                for p in raw.get("pipelines", [])
            ),
            served_versions=_apply_policy(policy, available, config_path),
            directory=directory,
            retain=int(policy["latest"]) if "latest" in policy else None,
        )
    except RepositoryError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{config_path}: {type(exc).__name__}: {exc}") from exc


def _available(directory: Path) -> list[int]:
    return sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILENAME).exists()
    )


def _contract(spec: TensorSpec) -> TensorContract:
    return TensorContract(spec.name, spec.datatype, spec.shape)


def _spec(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(raw["name"]), str(raw["datatype"]), tuple(int(d) for d in raw["shape"]))


def _apply_policy(policy: dict[str, Any], available: list[int], where: Path) -> tuple[int, ...]:
    if "latest" in policy:
        count = int(policy["latest"])
        if count < 1:
            raise RepositoryError(f"{where}: version_policy.latest must be >= 1, got {count}")
        return tuple(available[-count:])
    if "specific" in policy:
        wanted = [int(v) for v in policy["specific"]]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise RepositoryError(
                f"{where}: version_policy.specific names missing versions {missing}; "
                f"available: {available}"
            )
        return tuple(sorted(wanted))
    if "all" in policy:
        return tuple(available)
    raise RepositoryError(
        f"{where}: version_policy must be latest, specific or all, got {policy!r}"
    )
