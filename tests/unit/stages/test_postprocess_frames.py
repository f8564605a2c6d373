"""Postprocess over a whole frame: one call for tasks that share their parameters, one result
record per task, and a task whose parameters are refused failing alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiokafka import ConsumerRecord

from schemas import DEFAULT_LIMITS, ErrorResult, InferenceResult, Status, decode_result
from schemas.frames import Frame, encode_frame, frame_headers
from workers.models.builders import build_tiny_classifier
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.stages.postprocess import PostprocessStage

TOPICS = Topics("t")


def _frame(parameters: list[dict[str, object]]) -> Frame:
    count = len(parameters)
    logits = np.arange(count * 4, dtype=np.float32).reshape(count, 4)
    return Frame(
        tenant="acme",
        pipeline="tiny-classify",
        lane="standard",
        task_ids=[f"task-{i}" for i in range(count)],
        row_counts=[1] * count,
        submitted_at_ms=[1_700_000_000_000] * count,
        deadline_ms=[None] * count,
        reply_to=[None] * count,
        content_types=["application/msgpack"] * count,
        traceparents=[None] * count,
        parameters=parameters,
        attempts=[0] * count,
        timings_ms={"inference": [1.0] * count},
        tensors={"logits": logits},
        model_name="tiny-classifier",
        model_version=1,
        batch_id="b-1",
    )


def _record(frame: Frame) -> ConsumerRecord[bytes, bytes]:
    value = encode_frame(frame)
    return ConsumerRecord(
        topic=TOPICS.inferred_of("standard"),
        partition=0,
        offset=3,
        timestamp=0,
        timestamp_type=0,
        key=b"acme/0",
        value=value,
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=len(value),
        headers=tuple(frame_headers(frame)),
    )


async def _answers(tmp_path: Path, frame: Frame) -> dict[str, InferenceResult | ErrorResult]:
    build_tiny_classifier(tmp_path)
    stage = PostprocessStage(TOPICS, ModelRepository(tmp_path), DEFAULT_LIMITS)
    output = await stage.process([stage.decode(_record(frame))])
    records = await output.records(None)
    answers = {}
    for record in records:
        if record.kind in ("result", "error"):
            result = decode_result(record.value, record.headers)
            assert result.task_id not in answers, "a task answered twice"
            answers[result.task_id] = result
    return answers


async def test_a_frame_is_answered_one_result_per_task(tmp_path: Path) -> None:
    answers = await _answers(tmp_path, _frame([{}] * 5))
    assert sorted(answers) == [f"task-{i}" for i in range(5)]
    for i in range(5):
        result = answers[f"task-{i}"]
        assert isinstance(result, InferenceResult)
        outputs = {name: np.asarray(value) for name, value in result.outputs.items()}
        assert outputs["probabilities"].shape == (1, 4)
        assert outputs["top_k_indices"].tolist() == [[3, 2]]  # the pipeline's top_k: 2
        assert result.timings_ms["inference"] == 1.0
        assert "postprocess" in result.timings_ms


async def test_a_task_with_refused_parameters_fails_alone(tmp_path: Path) -> None:
    answers = await _answers(tmp_path, _frame([{}, {"top_k": 99}, {"top_k": 1}]))
    assert isinstance(answers["task-0"], InferenceResult)
    refused = answers["task-1"]
    assert isinstance(refused, ErrorResult)
    assert refused.status is Status.FAILED
    assert refused.code.value == "INVALID_VALUE"
    last = answers["task-2"]
    assert isinstance(last, InferenceResult)
    assert np.asarray(last.outputs["top_k_indices"]).tolist() == [[3]]
