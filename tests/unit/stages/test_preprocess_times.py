"""The PREPROCESSED time of requests preprocessed together."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from schemas import InferenceRequest, Status
from tests.records import request_record
from workers.models.builders import build_tiny_classifier
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.settings import LimitsSettings
from workers.stages.preprocess import PreprocessStage


async def test_requests_preprocessed_together_share_one_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One time per preprocessed group (not per task) lets the ledger write a frame's
    # PREPROCESSED transitions as one group: Redis's thread pays per group.
    build_tiny_classifier(tmp_path)
    stage = PreprocessStage(Topics("t"), ModelRepository(tmp_path), LimitsSettings())
    requests = [
        InferenceRequest.new(
            tenant=tenant,
            pipeline="tiny-classify",
            inputs={"features": np.ones((1, 16), np.float32)},
        )
        for tenant in ("acme", "globex", "acme")
    ]
    # A clock that moves on at every reading: times taken per task would all differ.
    clock = itertools.count(time.time(), 0.01)
    monkeypatch.setattr(time, "time", lambda: next(clock))
    before = int(time.time() * 1000)
    output = await stage.process(
        [stage.decode(request_record(r, i)) for i, r in enumerate(requests)]
    )
    after = int(time.time() * 1000)

    assert [t.state for t in output.transitions] == [Status.PREPROCESSED] * 3
    assert len({t.at_ms for t in output.transitions}) == 1
    assert before <= output.transitions[0].at_ms <= after
