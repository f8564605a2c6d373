"""Request limits checked at intake, before a request costs anything but its decoding.

Decoding already bounds the message, its tensors and their elements (`DecodeLimits`); these
checks bound the text work a request may ask of preprocess: how many texts and how long each
one is. A tokenizer reads a whole text even when it truncates the tokens it keeps, so the
length is capped in bytes before tokenizing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas import ContractError, ErrorCode
from workers.settings import LimitsSettings

_TEXT_KINDS = "OUS"


def check_request_inputs(inputs: Mapping[str, Any], limits: LimitsSettings) -> None:
    """Raise PAYLOAD_TOO_LARGE for too many texts, INPUT_TOO_LONG for a text too long."""
    for name, array in inputs.items():
        dtype = getattr(array, "dtype", None)
        if dtype is None or dtype.kind not in _TEXT_KINDS:
            continue
        if array.size > limits.max_texts_per_request:
            raise ContractError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"inputs.{name} holds {array.size} texts > limit {limits.max_texts_per_request}",
                f"inputs.{name}",
            )
        for row, text in enumerate(array.flat):
            size = _utf8_bytes(text)
            if size > limits.max_text_bytes:
                raise ContractError(
                    ErrorCode.INPUT_TOO_LONG,
                    f"inputs.{name}[{row}] is {size} bytes > limit {limits.max_text_bytes}",
                    f"inputs.{name}[{row}]",
                )


def _utf8_bytes(text: object) -> int:
    if isinstance(text, bytes):
        return len(text)
    if isinstance(text, str):
        # Fast path: ASCII-only text is one byte a character; otherwise count exactly.
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return 0
