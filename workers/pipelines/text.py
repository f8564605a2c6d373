"""Text preprocessing: tokenization with the model version's own tokenizer.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from schemas import ContractError, ErrorCode
from workers.models.repository import ModelVersion, PipelineConfig
from workers.pipelines.base import Array, parameter, require

TOKENIZER_FILENAME = "tokenizer.json"
DEFAULT_MAX_TEXTS = 256


class Tokenize:
    """`text.tokenize`: BYTES `text` [n] -> `input_ids`, `attention_mask` [n, seq].

    Texts longer than `max_sequence_length` tokens are truncated (`truncate: true`, as
    sentence-transformers does) or rejected with INPUT_TOO_LONG (`truncate: false`). Rows pad
    to the longest text of the request; the batcher pads across requests.
    """

    def __init__(self) -> None:
        self._tokenizers: dict[tuple[Path, int], Tokenizer] = {}

    def __call__(
        self,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any],
        pipeline: PipelineConfig,
        model: ModelVersion,
    ) -> dict[str, Array]:
        answer = self.many([(inputs, parameters)], pipeline, model)[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def many(
        self,
        tasks: Sequence[tuple[Mapping[str, Array], Mapping[str, Any]]],
        pipeline: PipelineConfig,
        model: ModelVersion,
    ) -> list[dict[str, Array] | Exception]:
        """Every task's texts in one `encode_batch_fast` (the tokenizer's own threads); a task
        whose texts are refused fails alone."""
        max_texts = parameter({}, pipeline, "max_texts", DEFAULT_MAX_TEXTS)
        max_length = int(parameter({}, pipeline, "max_sequence_length", 256))
        answers: list[dict[str, Array] | Exception] = []
        texts: list[str] = []
        spans: list[tuple[int, int, bool]] = []
        for inputs, parameters in tasks:
            try:
                mine = _texts(require(inputs, "text", "inputs"), max_texts)
                truncate = _truncate(parameters, pipeline)
            except ContractError as error:
                answers.append(error)
                spans.append((0, 0, True))
                continue
            answers.append({})
            spans.append((len(texts), len(texts) + len(mine), truncate))
            texts.extend(mine)
        tokenizer = self._tokenizer(model.asset(TOKENIZER_FILENAME), max_length)
        # Without offsets, which nothing here reads: ~18 % less CPU a text (32 tokens).
        encodings = tokenizer.encode_batch_fast(texts) if texts else []
        for i, (start, stop, truncate) in enumerate(spans):
            if isinstance(answers[i], Exception):
                continue
            try:
                answers[i] = _tensors(encodings[start:stop], truncate, max_length)
            except ContractError as error:
                answers[i] = error
        return answers

    def _tokenizer(self, path: Path, max_length: int) -> Tokenizer:
        key = (path, max_length)
        if key not in self._tokenizers:
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=max_length)
            self._tokenizers[key] = tokenizer
        return self._tokenizers[key]


def _truncate(parameters: Mapping[str, Any], pipeline: PipelineConfig) -> bool:
    truncate = parameter(parameters, pipeline, "truncate", True)
    if not isinstance(truncate, bool):
        raise ContractError(
            ErrorCode.WRONG_TYPE,
            f"parameters.truncate must be a boolean, got {truncate!r}",
            "parameters.truncate",
        )
    return truncate


def _tensors(encodings: Sequence[Encoding], truncate: bool, max_length: int) -> dict[str, Array]:
    """One task's `input_ids` and `attention_mask`, its rows padded to its longest text; a
    text over `max_length` tokens is INPUT_TOO_LONG unless `truncate`."""
    if not truncate:
        for row, encoding in enumerate(encodings):
            if encoding.overflowing:
                raise ContractError(
                    ErrorCode.INPUT_TOO_LONG,
                    f"inputs.text[{row}] is longer than {max_length} tokens and truncate is false",
                    f"inputs.text[{row}]",
                )
    # `Encoding.ids` builds a new list on every access: read each once. Without padding
    # every token is attended, so the mask is 1 exactly where a row has a token.
    rows = [e.ids for e in encodings]
    if len(rows) == 1:  # the usual request: one text
        ids = np.array(rows, dtype=np.int64)
        mask = np.ones_like(ids)
    else:
        lengths = [len(tokens) for tokens in rows]
        ids = np.zeros((len(rows), max(lengths)), dtype=np.int64)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = tokens
        mask = (np.arange(ids.shape[1]) < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def _texts(tensor: Array, max_texts: int) -> list[str]:
    if tensor.dtype.kind not in "OU":
        raise ContractError(
            ErrorCode.DTYPE_MISMATCH,
            f"inputs.text must be a BYTES tensor of strings, got dtype {tensor.dtype}",
            "inputs.text",
        )
    if tensor.ndim != 1:
        raise ContractError(
            ErrorCode.SHAPE_MISMATCH,
            f"inputs.text must be 1-D, got shape {list(tensor.shape)}",
            "inputs.text",
        )
    if tensor.shape[0] == 0:
        raise ContractError(ErrorCode.EMPTY_INPUT, "inputs.text holds no texts", "inputs.text")
    if tensor.shape[0] > max_texts:
        raise ContractError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"inputs.text holds {tensor.shape[0]} texts > limit {max_texts}",
            "inputs.text",
        )
    texts: list[str] = tensor.tolist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ContractError(
                ErrorCode.WRONG_TYPE,
                f"inputs.text[{row}] must be UTF-8 text, got {type(text).__name__}",
                f"inputs.text[{row}]",
            )
    return texts
