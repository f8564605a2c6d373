"""Names a model repository may use for its pipelines' preprocess and postprocess steps."""

from __future__ import annotations

from collections.abc import Callable

from schemas import ContractError, ErrorCode
from workers.pipelines import postprocess
from workers.pipelines.base import Postprocessor, Preprocessor
from workers.pipelines.tensor import Passthrough
from workers.pipelines.text import Tokenize

PREPROCESSORS: dict[str, Callable[[], Preprocessor]] = {
    "text.tokenize": Tokenize,
    "tensor.passthrough": Passthrough,
}
POSTPROCESSORS: dict[str, Postprocessor] = {
    "embedding.normalize": postprocess.normalize_embedding,
    "embedding.mean_pool_normalize": postprocess.mean_pool_normalize,
    "classification.softmax_topk": postprocess.softmax_top_k,
}


def preprocessor(name: str) -> Preprocessor:
    """A fresh instance (preprocessors may cache per-model assets such as tokenizers)."""
    try:
        return PREPROCESSORS[name]()
    except KeyError:
        raise ContractError(
            ErrorCode.UNKNOWN_PIPELINE, f"preprocess {name!r} is not one of {sorted(PREPROCESSORS)}"
        ) from None


def postprocessor(name: str) -> Postprocessor:
    try:
        return POSTPROCESSORS[name]
    except KeyError:
        raise ContractError(
            ErrorCode.UNKNOWN_PIPELINE,
            f"postprocess {name!r} is not one of {sorted(POSTPROCESSORS)}",
        ) from None
