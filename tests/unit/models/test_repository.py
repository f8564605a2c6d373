"""The model repository: version policies, resolution errors, and broken repositories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas import ContractError, ErrorCode
from workers.models.builders import build_tiny_classifier
from workers.models.repository import (
    BatchingConfig,
    ModelRepository,
    RepositoryError,
    TensorSpec,
)

PIPELINE = "tiny-classify"
MODEL = "tiny-classifier"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-classifier versions 1, 2 and 3, each with its own weights."""
    root = tmp_path_factory.mktemp("tiny-versions")
    for version in (1, 2, 3):
        build_tiny_classifier(root, version, seed=version)
    return root


@pytest.fixture
def root(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repository"
    shutil.copytree(built, copy)
    return copy


def _edit_config(model_dir: Path, **changes: Any) -> Path:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


def _with_policy(root: Path, policy: Any) -> ModelRepository:
    _edit_config(root / MODEL, version_policy=policy)
    return ModelRepository(root)


def test_reads_the_config(root: Path) -> None:
    repository = ModelRepository(root)

    model = repository.models[MODEL]
    pipeline = repository.pipeline(PIPELINE)
    assert model.inputs == (TensorSpec("features", "FP32", (-1, 16)),)
    assert model.outputs == (TensorSpec("logits", "FP32", (-1, 4)),)
    assert model.batching == BatchingConfig(max_batch_size=256, max_wait_ms=2.0)
    assert model.directory == root / MODEL
    assert pipeline.model == MODEL
    assert pipeline.preprocess == "tensor.passthrough"
    assert pipeline.postprocess == "classification.softmax_topk"
    assert pipeline.parameters == {"top_k": 2}


def test_default_policy_serves_only_the_latest(root: Path) -> None:
    repository = ModelRepository(root)

    pipeline, version = repository.resolve(PIPELINE, None)

    assert repository.models[MODEL].served_versions == (3,)
    assert pipeline.name == PIPELINE
    assert version.version == 3
    assert version.path == root / MODEL / "3" / "model.onnx"
    assert version.path.is_file()
    assert version.asset("tokenizer.json") == root / MODEL / "3" / "tokenizer.json"


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({"latest": 2}, (2, 3)),
        ({"latest": 10}, (1, 2, 3)),
        ({"specific": [3, 1]}, (1, 3)),
        ({"all": {}}, (1, 2, 3)),
    ],
)
def test_version_policies(root: Path, policy: dict[str, Any], served: tuple[int, ...]) -> None:
    repository = _with_policy(root, policy)

    assert repository.models[MODEL].served_versions == served
    assert repository.resolve(PIPELINE, None)[1].version == served[-1]
    for number in served:
        version = repository.resolve(PIPELINE, number)[1]
        assert version.version == number
        assert version.path == root / MODEL / str(number) / "model.onnx"


def test_versions_hold_different_weights(root: Path) -> None:
    repository = _with_policy(root, {"all": {}})

    paths = [repository.resolve(PIPELINE, v)[1].path for v in (1, 2, 3)]

    assert len({p.read_bytes() for p in paths}) == 3


def test_pinning_an_unserved_version_names_the_served_ones(root: Path) -> None:
    repository = _with_policy(root, {"specific": [1, 3]})

    for version in (2, 4, 0):
        with pytest.raises(ContractError) as caught:
            repository.resolve(PIPELINE, version)
        assert caught.value.code is ErrorCode.UNKNOWN_MODEL_VERSION
        assert caught.value.field == "model_version"
        assert f"version {version} is not served" in caught.value.message
        assert "served: [1, 3]" in caught.value.message


def test_unknown_pipeline_names_the_known_ones(root: Path) -> None:
    repository = ModelRepository(root)

    with pytest.raises(ContractError) as caught:
        repository.resolve("tiny-classify-v2", None)

    assert caught.value.code is ErrorCode.UNKNOWN_PIPELINE
    assert caught.value.field == "pipeline"
    assert "'tiny-classify-v2'" in caught.value.message
    assert "['tiny-classify']" in caught.value.message


def test_folders_without_a_model_or_with_non_numeric_names_are_not_versions(root: Path) -> None:
    (root / MODEL / "4").mkdir()
    (root / MODEL / "latest").mkdir()
    shutil.copy(root / MODEL / "1" / "model.onnx", root / MODEL / "latest" / "model.onnx")

    repository = _with_policy(root, {"all": {}})

    assert repository.models[MODEL].served_versions == (1, 2, 3)


def test_missing_repository_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(RepositoryError, match="does not exist") as caught:
        ModelRepository(missing)

    assert str(missing) in str(caught.value)
    assert "conveyor models build" in str(caught.value)


def test_empty_repository_serves_nothing(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)

    with pytest.raises(ContractError) as caught:
        repository.resolve(PIPELINE, None)

    assert caught.value.code is ErrorCode.UNKNOWN_PIPELINE


def test_bad_json_names_the_file(root: Path) -> None:
    config = root / MODEL / "config.json"
    config.write_text('{"name": "tiny-classifier",')

    with pytest.raises(RepositoryError) as caught:
        ModelRepository(root)

    assert str(config) in str(caught.value)
    assert "JSONDecodeError" in str(caught.value)


@pytest.mark.parametrize("key", ["name", "inputs", "outputs"])
def test_missing_key_names_the_file_and_key(root: Path, key: str) -> None:
    config = root / MODEL / "config.json"
    raw = json.loads(config.read_text())
    del raw[key]
    config.write_text(json.dumps(raw))

    with pytest.raises(RepositoryError) as caught:
        ModelRepository(root)

    assert str(config) in str(caught.value)
    assert f"KeyError: '{key}'" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"pipelines": [{"name": "p", "postprocess": "x"}]}, "'preprocess'"),
        ({"inputs": [{"name": "f", "datatype": "FP32", "shape": ["batch"]}]}, "'batch'"),
        ({"inputs": [{"name": "f", "datatype": "FP32", "shape": 16}]}, "TypeError"),
        ({"batching": {"max_batch_size": "many"}}, "'many'"),
    ],
    ids=["pipeline-key", "shape-dim", "shape-type", "batching"],
)
def test_malformed_values_name_the_file(root: Path, changes: dict[str, Any], detail: str) -> None:
    config = _edit_config(root / MODEL, **changes)

    with pytest.raises(RepositoryError) as caught:
        ModelRepository(root)

    assert str(config) in str(caught.value)
    assert detail in str(caught.value)


@pytest.mark.parametrize(
    ("policy", "detail"),
    [
        ({"latest": 0}, "version_policy.latest must be >= 1, got 0"),
        ({"latest": "two"}, "'two'"),
        ({"specific": [2, 7]}, "version_policy.specific names missing versions [7]"),
        ({"newest": 1}, "version_policy must be latest, specific or all, got {'newest': 1}"),
        ([1, 2], "version_policy must be latest, specific or all"),
    ],
    ids=["latest-zero", "latest-text", "specific-missing", "unknown", "not-a-mapping"],
)
def test_bad_version_policy_names_the_file(root: Path, policy: Any, detail: str) -> None:
    with pytest.raises(RepositoryError) as caught:
        _with_policy(root, policy)

    assert str(root / MODEL / "config.json") in str(caught.value)
    assert detail in str(caught.value)


def test_model_without_versions_names_its_folder(root: Path) -> None:
    for version in (1, 2, 3):
        shutil.rmtree(root / MODEL / str(version))

    with pytest.raises(RepositoryError, match=r"no version folder holds model\.onnx") as caught:
        ModelRepository(root)

    assert str(root / MODEL) in str(caught.value)


def test_pipeline_declared_by_two_models(root: Path) -> None:
    shutil.copytree(root / MODEL, root / "zz-other")  # read after tiny-classifier
    config = _edit_config(root / "zz-other", name="other-classifier")

    with pytest.raises(RepositoryError, match="'tiny-classify' declared twice") as caught:
        ModelRepository(root)

    assert str(config) in str(caught.value)
    assert "also by model 'tiny-classifier'" in str(caught.value)


def test_model_name_used_by_two_folders(root: Path) -> None:
    shutil.copytree(root / MODEL, root / "zz-copy")
    config = _edit_config(root / "zz-copy", pipelines=[])

    with pytest.raises(RepositoryError, match="'tiny-classifier' is already used") as caught:
        ModelRepository(root)

    assert str(config) in str(caught.value)
