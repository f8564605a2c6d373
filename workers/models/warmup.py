"""Warm-up batches: a real batch through a new version before it takes traffic.

The batch is the last one the serving version ran (real data, real shapes), else one made
from the model's declared inputs. The outputs must be every declared output, one row per
input row, all finite: a version that fails this never serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from workers.models.repository import ModelConfig

Array = npt.NDArray[Any]

_NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
_SYNTHETIC_DIM = 8


class WarmupError(RuntimeError):
    """A version's warm-up batch failed; the message says how."""


def sample_of(feeds: dict[str, Array], rows: int) -> dict[str, Array]:
    """The first `rows` rows of a served batch, copied (kept beyond the batch's life)."""
    return {name: np.array(array[:rows]) for name, array in feeds.items()}


def synthetic_feeds(config: ModelConfig, rows: int) -> dict[str, Array]:
    """A batch shaped by the declared inputs: ones for integers (valid token ids and masks),
    small random values for floats."""
    rng = np.random.default_rng(0)
    feeds: dict[str, Array] = {}
    for spec in config.inputs:
        shape = tuple(
            rows if i == 0 else (_SYNTHETIC_DIM if d < 0 else d) for i, d in enumerate(spec.shape)
        )
        dtype = _NUMPY.get(spec.datatype, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.ones(shape, dtype=dtype)
    return feeds


def check_outputs(config: ModelConfig, feeds: dict[str, Array], outputs: dict[str, Array]) -> None:
    """Raises WarmupError naming every way the outputs are wrong for the batch."""
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    problems = []
    for spec in config.outputs:
        array = outputs.get(spec.name)
        if array is None:
            problems.append(f"output {spec.name!r} missing")
            continue
        if array.ndim == 0 or array.shape[0] != rows:
            problems.append(f"output {spec.name!r} has shape {array.shape} for {rows} input rows")
        elif np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            problems.append(f"output {spec.name!r} holds NaN or infinity")
    if problems:
        raise WarmupError("; ".join(problems))
