"""Collating tasks into one batch and splitting outputs back; padding must not change results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig
from workers.models.runtime import OnnxModel
from workers.pipelines import postprocessor
from workers.pipelines.collate import collate, rows_of, split
from workers.pipelines.text import Tokenize

Served = tuple[PipelineConfig, ModelVersion]
Array = np.ndarray[Any, np.dtype[Any]]
SHORT = "Short text."
LONGER = [
    "A much longer text that tokenizes to many more word pieces than the short one does.",
    "Two sentences here. The second is there to make this one the longest of the batch.",
]


def _task(rows: int, seq: int, start: int) -> dict[str, Array]:
    ids = np.arange(start, start + rows * seq, dtype=np.int64).reshape(rows, seq) + 1
    return {"input_ids": ids, "attention_mask": np.ones((rows, seq), np.int64)}


def test_collate_pads_ragged_sequences_and_split_restores_rows() -> None:
    tasks = [_task(1, 3, 0), _task(2, 5, 100), _task(1, 2, 200)]

    batch = collate(tasks)
    parts = split(batch, [rows_of(t) for t in tasks])

    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 5)
    assert len(parts) == len(tasks)
    for task, part in zip(tasks, parts, strict=True):
        for name, original in task.items():
            rows, seq = original.shape
            assert part[name].shape == (rows, 5)
            np.testing.assert_array_equal(part[name][:, :seq], original)
            assert not part[name][:, seq:].any()  # zero padding


def test_collate_pads_every_trailing_dim() -> None:
    a = np.ones((1, 2, 3), np.float32)
    b = np.ones((2, 4, 1), np.float32)

    batch = collate([{"x": a}, {"x": b}])["x"]

    assert batch.shape == (3, 4, 3)
    assert batch.sum() == a.sum() + b.sum()


def test_collate_of_one_task_is_that_task() -> None:
    task = _task(2, 3, 0)

    assert collate([task])["input_ids"] is task["input_ids"]
    assert rows_of({}) == 0


def test_split_slices_rows_in_order() -> None:
    outputs = {"logits": np.arange(12, dtype=np.float32).reshape(6, 2)}

    parts = split(outputs, [1, 3, 2])

    assert [p["logits"][:, 0].tolist() for p in parts] == [[0.0], [2.0, 4.0, 6.0], [8.0, 10.0]]


@pytest.mark.parametrize(
    ("outputs", "detail"),
    [
        ({"logits": np.zeros((3, 2), np.float32)}, "shape [3, 2], expected 4 rows"),
        ({"logits": np.zeros((5, 2), np.float32)}, "expected 4 rows"),
        ({"logits": np.zeros((4, 2)), "extra": np.zeros((2,))}, "'extra'"),
        ({"logits": np.float32(1.0).reshape(())}, "shape []"),
    ],
    ids=["too-few", "too-many", "one-output-short", "scalar"],
)
def test_split_rejects_outputs_that_do_not_match_the_rows(
    outputs: dict[str, Array], detail: str
) -> None:
    with pytest.raises(ContractError) as caught:
        split(outputs, [1, 3])

    assert caught.value.code is ErrorCode.INFERENCE_FAILED
    assert detail in caught.value.message


def _embed_in_one_batch(
    served: Served, model: OnnxModel, texts: list[str]
) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    """What the stages do: tokenize per task, collate, run, split, postprocess per task."""
    pipeline, version = served
    tokenize = Tokenize()
    names = [spec.name for spec in version.config.inputs]
    per_task = [
        tokenize({"text": np.array([t], dtype=object)}, {}, pipeline, version) for t in texts
    ]
    outputs = model.run(collate([{n: task[n] for n in names} for task in per_task]))
    postprocess = postprocessor(pipeline.postprocess)
    return [
        postprocess({**rows, "attention_mask": task["attention_mask"]}, {}, pipeline)["embedding"]
        for rows, task in zip(split(outputs, [1] * len(texts)), per_task, strict=True)
    ]


@pytest.mark.parametrize("variant", ["pooled", "unpooled"])
def test_padding_in_a_batch_does_not_change_an_embedding(
    variant: str, request: pytest.FixtureRequest
) -> None:
    served: Served = request.getfixturevalue(f"minilm_{variant}")
    model: OnnxModel = request.getfixturevalue(f"{variant}_model")

    (alone,) = _embed_in_one_batch(served, model, [SHORT])
    batched = _embed_in_one_batch(served, model, [*LONGER[:1], SHORT, *LONGER[1:]])

    assert alone.shape == (1, 384)
    np.testing.assert_allclose(batched[1], alone, atol=1e-5)
