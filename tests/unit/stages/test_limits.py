"""Each request limit: a payload just under it passes, one just over it fails with its code,
and the preprocess stage answers the failure before any pipeline work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas import ContractError, ErrorCode, InferenceRequest, encode
from tests.records import request_record
from workers.models.repository import ModelRepository
from workers.names import Topics
from workers.settings import LimitsSettings
from workers.stages.limits import check_request_inputs
from workers.stages.preprocess import PreprocessStage


def _texts(*texts: str) -> dict[str, np.ndarray]:
    return {"text": np.array(texts, dtype=object)}


def _code(inputs: dict[str, np.ndarray], limits: LimitsSettings) -> ErrorCode | None:
    try:
        check_request_inputs(inputs, limits)
    except ContractError as error:
        return error.code
    return None


def test_texts_per_request_just_under_and_just_over() -> None:
    limits = LimitsSettings(max_texts_per_request=3)
    assert _code(_texts("a", "b", "c"), limits) is None
    assert _code(_texts("a", "b", "c", "d"), limits) == ErrorCode.PAYLOAD_TOO_LARGE


def test_text_bytes_just_under_and_just_over() -> None:
    limits = LimitsSettings(max_text_bytes=8)
    assert _code(_texts("x" * 8), limits) is None
    assert _code(_texts("x" * 9), limits) == ErrorCode.INPUT_TOO_LONG
    # Counted in UTF-8 bytes, not characters: four 2-byte characters fit, a fifth does not.
    assert _code(_texts("é" * 4), limits) is None
    assert _code(_texts("é" * 4 + "x"), limits) == ErrorCode.INPUT_TOO_LONG


def test_numeric_tensors_are_not_texts() -> None:
    limits = LimitsSettings(max_texts_per_request=1)
    assert _code({"features": np.zeros((4, 16), np.float32)}, limits) is None


def _decode_error(request: InferenceRequest, limits: LimitsSettings) -> ErrorCode | None:
    stage = PreprocessStage(Topics("t"), ModelRepository(Path(__file__).parent), limits)
    work = stage.decode(request_record(request))
    return work.error.code if work.error else None


def _request(inputs: dict[str, np.ndarray]) -> InferenceRequest:
    return InferenceRequest.new(tenant="acme", pipeline="p", inputs=inputs)


def test_tensor_elements_just_under_and_just_over() -> None:
    limits = LimitsSettings(max_tensor_elements=64)
    assert _decode_error(_request({"x": np.zeros((4, 16), np.float32)}), limits) is None
    over = _request({"x": np.zeros((5, 13), np.float32)})
    assert _decode_error(over, limits) == ErrorCode.PAYLOAD_TOO_LARGE


def test_message_bytes_just_under_and_just_over() -> None:
    request = _request({"x": np.zeros((64, 64), np.float32)})
    size = len(encode(request))
    assert _decode_error(request, LimitsSettings(max_message_bytes=size)) is None
    assert _decode_error(request, LimitsSettings(max_message_bytes=size - 1)) == (
        ErrorCode.PAYLOAD_TOO_LARGE
    )


def test_preprocess_checks_texts_at_intake() -> None:
    limits = LimitsSettings(max_texts_per_request=2, max_text_bytes=5)
    assert _decode_error(_request(_texts("hello", "world")), limits) is None
    assert _decode_error(_request(_texts("a", "b", "c")), limits) == ErrorCode.PAYLOAD_TOO_LARGE
    assert _decode_error(_request(_texts("hello!")), limits) == ErrorCode.INPUT_TOO_LONG


@pytest.mark.parametrize("name", ["max_texts_per_request", "max_text_bytes", "max_tensors"])
def test_limits_refuse_nonsense(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LimitsSettings(**{name: 0})
