"""Golden vectors: today's encoder produces exactly the checked-in bytes, and reads them back."""

from __future__ import annotations

import pytest

from schemas import (
    InferenceRequest,
    Message,
    decode_request,
    decode_result,
)
from tests.unit.schemas.make_golden import GOLDEN_DIR, golden_files

FILES = golden_files()


def decode_as(message: Message, value: bytes) -> Message:
    if isinstance(message, InferenceRequest):
        return decode_request(value)
    return decode_result(value)


def test_golden_directory_has_exactly_the_generated_files() -> None:
    assert sorted(p.name for p in GOLDEN_DIR.iterdir()) == sorted(FILES)


@pytest.mark.parametrize("file_name", sorted(FILES))
def test_encoder_output_is_unchanged(file_name: str) -> None:
    _, _, value = FILES[file_name]
    assert (GOLDEN_DIR / file_name).read_bytes() == value, (
        f"{file_name} changed: a wire change needs a schema version bump; "
        "regenerate with python -m tests.unit.schemas.make_golden"
    )


@pytest.mark.parametrize("file_name", sorted(FILES))
def test_golden_bytes_decode_to_the_message(file_name: str) -> None:
    message, _, _ = FILES[file_name]
    assert decode_as(message, (GOLDEN_DIR / file_name).read_bytes()) == message
