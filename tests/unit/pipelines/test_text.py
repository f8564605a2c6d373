"""`text.tokenize`: shapes, padding, truncation and the error codes for bad text inputs."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig
from workers.pipelines.text import TOKENIZER_FILENAME, Tokenize

Served = tuple[PipelineConfig, ModelVersion]
CLS_ID, SEP_ID = 101, 102


def _texts(*texts: Any) -> np.ndarray[Any, np.dtype[Any]]:
    array = np.empty(len(texts), dtype=object)
    array[:] = list(texts)
    return array


def _with(pipeline: PipelineConfig, **parameters: Any) -> PipelineConfig:
    return dataclasses.replace(pipeline, parameters={**pipeline.parameters, **parameters})


def _error(
    served: Served, text: Any, parameters: dict[str, Any] | None = None, **pipeline_params: Any
) -> ContractError:
    pipeline, model = served
    with pytest.raises(ContractError) as caught:
        Tokenize()({"text": text}, parameters or {}, _with(pipeline, **pipeline_params), model)
    return caught.value


def test_batch_pads_to_the_longest_text_of_the_request(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled
    texts = ["Hi", "A somewhat longer sentence about Kafka streams.", ""]
    reference = Tokenizer.from_file(str(model.asset(TOKENIZER_FILENAME)))

    feeds = Tokenize()({"text": _texts(*texts)}, {}, pipeline, model)

    expected = [reference.encode(t).ids for t in texts]
    longest = max(len(ids) for ids in expected)
    assert set(feeds) == {"input_ids", "attention_mask"}
    for name in feeds:
        assert feeds[name].shape == (3, longest)
        assert feeds[name].dtype == np.int64
    for row, ids in enumerate(expected):
        assert feeds["input_ids"][row, : len(ids)].tolist() == ids
        assert not feeds["input_ids"][row, len(ids) :].any()
        assert feeds["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (longest - len(ids))
    assert expected[2] == [CLS_ID, SEP_ID]  # an empty text still holds the special tokens


def test_accepts_a_numpy_unicode_array(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    feeds = Tokenize()({"text": np.array(["hello world"])}, {}, pipeline, model)

    assert feeds["input_ids"].shape == (1, 4)


def test_truncates_to_max_sequence_length(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    feeds = Tokenize()(
        {"text": _texts("word " * 50, "short")},
        {},
        _with(pipeline, max_sequence_length=8),
        model,
    )

    assert feeds["input_ids"].shape == (2, 8)
    assert feeds["input_ids"][0, 0] == CLS_ID
    assert feeds["input_ids"][0, -1] == SEP_ID
    assert feeds["attention_mask"].sum(axis=1).tolist() == [8, 3]


def test_default_max_sequence_length_is_the_pipelines_256(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    feeds = Tokenize()({"text": _texts("word " * 400)}, {}, pipeline, model)

    assert feeds["input_ids"].shape == (1, 256)


def test_request_cannot_raise_the_pipeline_limits(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    feeds = Tokenize()(
        {"text": _texts("word " * 50)},
        {"max_sequence_length": 512},
        _with(pipeline, max_sequence_length=8),
        model,
    )
    error = _error(minilm_pooled, _texts("a", "b", "c"), {"max_texts": 100}, max_texts=2)

    assert feeds["input_ids"].shape == (1, 8)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_truncate_false_rejects_a_text_over_the_limit(minilm_pooled: Served) -> None:
    error = _error(
        minilm_pooled, _texts("fits", "word " * 7), {"truncate": False}, max_sequence_length=8
    )

    assert error.code is ErrorCode.INPUT_TOO_LONG
    assert error.field == "inputs.text[1]"
    assert "8 tokens" in error.message


def test_truncate_false_accepts_a_text_exactly_at_the_limit(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    feeds = Tokenize()(
        {"text": _texts("word " * 6)},  # [CLS] + 6 + [SEP] = 8 tokens
        {"truncate": False},
        _with(pipeline, max_sequence_length=8),
        model,
    )

    assert feeds["input_ids"].shape == (1, 8)


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        (_texts("ok", 3), ErrorCode.WRONG_TYPE, "inputs.text[1]"),
        (_texts(b"raw bytes"), ErrorCode.WRONG_TYPE, "inputs.text[0]"),
        (_texts(None), ErrorCode.WRONG_TYPE, "inputs.text[0]"),
        (np.zeros(2, dtype=np.float32), ErrorCode.DTYPE_MISMATCH, "inputs.text"),
        (np.array([1, 2], dtype=np.int64), ErrorCode.DTYPE_MISMATCH, "inputs.text"),
        (_texts(), ErrorCode.EMPTY_INPUT, "inputs.text"),
        (_texts("a", "b").reshape(1, 2), ErrorCode.SHAPE_MISMATCH, "inputs.text"),
        (np.array("scalar", dtype=object), ErrorCode.SHAPE_MISMATCH, "inputs.text"),
    ],
    ids=["int", "bytes", "none", "float", "int64", "empty", "2d", "0d"],
)
def test_rejects_bad_text_inputs(
    minilm_pooled: Served, text: np.ndarray[Any, np.dtype[Any]], code: ErrorCode, field: str
) -> None:
    error = _error(minilm_pooled, text)

    assert error.code is code
    assert error.field == field


def test_missing_text_names_the_field(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    with pytest.raises(ContractError) as caught:
        Tokenize()({"texts": _texts("a")}, {}, pipeline, model)

    assert caught.value.code is ErrorCode.MISSING_FIELD
    assert caught.value.field == "inputs.text"


def test_max_texts_limit(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled

    at_limit = Tokenize()({"text": _texts("a", "b")}, {}, _with(pipeline, max_texts=2), model)
    over_pipeline_limit = _error(minilm_pooled, _texts("a", "b", "c"), max_texts=2)
    over_default_limit = _error(minilm_pooled, _texts(*["a"] * 257))

    assert at_limit["input_ids"].shape[0] == 2
    assert over_pipeline_limit.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "3 texts > limit 2" in over_pipeline_limit.message
    assert over_default_limit.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "limit 256" in over_default_limit.message


@pytest.mark.parametrize("truncate", ["yes", 1, None])
def test_truncate_must_be_a_boolean(minilm_pooled: Served, truncate: object) -> None:
    error = _error(minilm_pooled, _texts("a"), {"truncate": truncate})

    assert error.code is ErrorCode.WRONG_TYPE
    assert error.field == "parameters.truncate"


def test_many_tasks_in_one_call_answer_as_one_call_each(minilm_pooled: Served) -> None:
    pipeline, model = minilm_pooled
    pipeline = _with(pipeline, max_sequence_length=8)
    tasks: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"text": _texts("Hi", "two texts here")}, {}),
        ({"text": _texts("word " * 7)}, {"truncate": False}),  # too long: fails alone
        ({"text": _texts(1)}, {}),  # not text: fails alone
        ({"text": _texts("word " * 7)}, {}),  # truncated
        ({"nope": _texts("x")}, {}),
    ]
    tokenize = Tokenize()

    answers = tokenize.many(tasks, pipeline, model)

    assert len(answers) == len(tasks)
    codes = [a.code if isinstance(a, ContractError) else None for a in answers]
    assert codes == [
        None,
        ErrorCode.INPUT_TOO_LONG,
        ErrorCode.WRONG_TYPE,
        None,
        ErrorCode.MISSING_FIELD,
    ]
    for (inputs, parameters), answer in zip(tasks, answers, strict=True):
        if isinstance(answer, dict):
            alone = tokenize(inputs, parameters, pipeline, model)
            assert answer.keys() == alone.keys()
            assert all(np.array_equal(answer[k], alone[k]) for k in alone)
