"""Small value checks shared by the message and tensor validators (all raise ContractError)."""

from __future__ import annotations

import math
import re
from typing import Any

from schemas.errors import ContractError, ErrorCode

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
MAX_NESTING = 32
"""Deepest nesting accepted in ``parameters`` (guards against RecursionError)."""


def kind_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_utf8(text: str, path: str) -> None:
    """Reject strings that cannot be UTF-8 encoded (lone surrogates from bad input bytes)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ContractError.at(
            ErrorCode.BAD_UTF8, path, f"invalid UTF-8 at character {exc.start}"
        ) from None


def check_str(
    value: Any, path: str, *, max_len: int, min_len: int = 1, pattern: re.Pattern[str] | None = None
) -> str:
    if not isinstance(value, str):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, path, f"expected a string, got {kind_name(value)}"
        )
    check_utf8(value, path)
    if not min_len <= len(value) <= max_len:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, path, f"length {len(value)} not in {min_len}..{max_len}"
        )
    if pattern is not None and pattern.fullmatch(value) is None:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, path, f"{value!r} does not match {pattern.pattern}"
        )
    return value


def check_int(value: Any, path: str, *, minimum: int, maximum: int = 2**63 - 1) -> int:
    if type(value) is not int:
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, path, f"expected an int, got {kind_name(value)}"
        )
    if not minimum <= value <= maximum:
        raise ContractError.at(
            ErrorCode.INVALID_VALUE, path, f"{value} not in {minimum}..{maximum}"
        )
    return value


def check_number(value: Any, path: str) -> float:
    """A finite int or float (bool excluded); returns it as float."""
    if type(value) is int:
        if not INT64_MIN <= value <= UINT64_MAX:
            raise ContractError.at(ErrorCode.INVALID_VALUE, path, f"{value} out of 64-bit range")
        return float(value)
    if type(value) is not float:
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, path, f"expected a number, got {kind_name(value)}"
        )
    if not math.isfinite(value):
        raise ContractError.at(ErrorCode.NAN_FORBIDDEN, path, f"{value} is not a finite number")
    return value


def check_json_like(value: Any, path: str, depth: int = 0) -> None:
    """JSON-like data only: null, bool, int64/uint64, finite float, str, list, str-keyed dict."""
    if depth > MAX_NESTING:
        raise ContractError.at(ErrorCode.INVALID_VALUE, path, f"nested deeper than {MAX_NESTING}")
    if value is None or type(value) is bool:
        return
    if type(value) in (int, float):
        check_number(value, path)
    elif isinstance(value, str):
        check_utf8(value, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_like(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContractError.at(ErrorCode.WRONG_TYPE, path, f"key {key!r} is not a string")
            check_utf8(key, path)
            check_json_like(item, f"{path}.{key}", depth + 1)
    else:
        raise ContractError.at(ErrorCode.WRONG_TYPE, path, f"{kind_name(value)} is not JSON-like")
