"""Error codes shared by every Conveyor component, and the one exception the contract raises.

The string values of :class:`ErrorCode` are part of the wire contract: they appear in
``ErrorResult.code``, in metrics labels and in client code. Never rename or reuse one;
add new codes only (a new code is a minor schema change).
"""

from __future__ import annotations

import enum

__all__ = ["ContractError", "ErrorCode"]


class ErrorCode(enum.StrEnum):
    """Stable, product-wide error codes (the value is what travels on the wire)."""

    # Decoding and validation of messages (raised by schemas/).
    MALFORMED = "MALFORMED"
    """The bytes are not decodable msgpack/JSON, or the framing is broken."""
    WRONG_TYPE = "WRONG_TYPE"
    MISSING_FIELD = "MISSING_FIELD"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    INVALID_VALUE = "INVALID_VALUE"
    DTYPE_MISMATCH = "DTYPE_MISMATCH"
    SHAPE_MISMATCH = "SHAPE_MISMATCH"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    BAD_UTF8 = "BAD_UTF8"
    NAN_FORBIDDEN = "NAN_FORBIDDEN"
    UNSUPPORTED_SCHEMA_VERSION = "UNSUPPORTED_SCHEMA_VERSION"
    UNSUPPORTED_CONTENT_TYPE = "UNSUPPORTED_CONTENT_TYPE"
    CLAIM_CHECK_MISSING = "CLAIM_CHECK_MISSING"
    # Raised by the workers.
    UNKNOWN_PIPELINE = "UNKNOWN_PIPELINE"
    UNKNOWN_MODEL_VERSION = "UNKNOWN_MODEL_VERSION"
    EMPTY_INPUT = "EMPTY_INPUT"
    INPUT_TOO_LONG = "INPUT_TOO_LONG"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INFERENCE_FAILED = "INFERENCE_FAILED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNKNOWN_TENANT = "UNKNOWN_TENANT"
    DUPLICATE_ID = "DUPLICATE_ID"
    """A request reused a task id already taken by another request (the first one's answer
    and ledger record stand; the duplicate is answered with this and dead-lettered)."""
    UNDELIVERABLE = "UNDELIVERABLE"
    """The task's answer could not be written where it had to go (its ``reply_to`` topic
    vanished or may not be written): the error result goes to the default results topic."""
    INTERNAL = "INTERNAL"


class ContractError(Exception):
    """A message broke the wire contract.

    Every decode or validation failure in ``schemas`` raises this and nothing else.
    ``field`` is the dotted/indexed path of the offending field on the wire
    (``"inputs[0].shape"``), or ``None`` when the whole value is at fault.
    """

    code: ErrorCode
    message: str
    field: str | None

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def at(cls, code: ErrorCode, field: str | None, detail: str) -> ContractError:
        """Build an error whose message starts with the field path: ``"inputs[0].shape: ..."``."""
        return cls(code, f"{field}: {detail}" if field else detail, field)

    def __reduce__(self) -> tuple[type[ContractError], tuple[ErrorCode, str, str | None]]:
        return (type(self), (self.code, self.message, self.field))
