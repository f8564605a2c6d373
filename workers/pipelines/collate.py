"""Stacking tasks into one model batch and splitting the outputs back, row-accurately."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from schemas import ContractError, ErrorCode, TensorRef
from workers.pipelines.base import Array


def rows_of(tensors: Mapping[str, Array | TensorRef]) -> int:
    """Rows of a task: the batch dimension of its first tensor (claim-checked ones too)."""
    first = next(iter(tensors.values()), None)
    return int(first.shape[0]) if first is not None and len(first.shape) else 0


def collate(items: Sequence[Mapping[str, Array]]) -> dict[str, Array]:
    """Concatenate each tensor along the batch dimension, zero-padding ragged trailing dims.

    Zero is the pad for token ids and attention masks alike, so a padded row computes what it
    would alone (the attention mask hides the padding).
    """
    batch: dict[str, Array] = {}
    for name in items[0]:
        parts = [item[name] for item in items]
        target = tuple(max(sizes) for sizes in zip(*(p.shape[1:] for p in parts), strict=True))
        padded = [
            p
            if p.shape[1:] == target
            else np.pad(
                p, [(0, 0), *((0, t - s) for s, t in zip(p.shape[1:], target, strict=True))]
            )
            for p in parts
        ]
        batch[name] = np.concatenate(padded, axis=0) if len(padded) > 1 else padded[0]
    return batch


def split(outputs: dict[str, Array], rows: Sequence[int]) -> list[dict[str, Array]]:
    """Each task's rows of every output; the model must answer one row per input row."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ContractError(
                ErrorCode.INFERENCE_FAILED,
                f"output {name!r} has shape {list(array.shape)}, expected {total} rows",
            )
    bounds = np.cumsum([0, *rows])
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in itertools.pairwise(bounds)
    ]
