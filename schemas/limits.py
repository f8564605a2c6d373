"""Bounds a decoder enforces before it allocates anything large."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "DecodeLimits"]


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Decode-time limits; breaking one raises ``ContractError(PAYLOAD_TOO_LARGE)``."""

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest encoded message (msgpack or JSON), checked before parsing."""
    max_tensors: int = 64
    """Most tensors in one message."""
    max_tensor_elements: int = 1 << 24
    """Most elements in one tensor (product of its shape)."""
    max_string_bytes: int = 1024 * 1024
    """Longest single element of a BYTES tensor, in bytes (text: UTF-8 characters)."""

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_tensors", "max_tensor_elements", "max_string_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be an int >= 1, got {value!r}")


DEFAULT_LIMITS = DecodeLimits()
