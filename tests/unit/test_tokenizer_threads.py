"""Where a worker's tokenizer runs (`workers.service.tokenizer_threads`): on the event loop's
thread in a fused worker whose model has the CPU's cores, its own pool elsewhere."""

from __future__ import annotations

import os
from collections.abc import Iterator

import onnxruntime as ort
import pytest

from workers import service

CPU = ("CPUExecutionProvider",)
GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture(autouse=True)
def _unset() -> Iterator[None]:
    """Unset during the test, as it was after (the function sets it in this process)."""
    before = os.environ.pop("TOKENIZERS_PARALLELISM", None)
    yield
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    if before is not None:
        os.environ["TOKENIZERS_PARALLELISM"] = before


def test_a_fused_worker_on_the_cpu_tokenizes_on_its_own_thread() -> None:
    service.tokenizer_threads("fused", CPU)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_a_fused_worker_asking_for_a_gpu_this_build_lacks_is_on_the_cpu() -> None:
    service.tokenizer_threads("fused", ("NoSuchExecutionProvider", *CPU))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_a_fused_worker_on_a_device_and_preprocess_keep_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU))
    service.tokenizer_threads("fused", GPU)
    service.tokenizer_threads("preprocess", CPU)
    assert "TOKENIZERS_PARALLELISM" not in os.environ


def test_what_the_user_set_stays() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    service.tokenizer_threads("fused", CPU)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
