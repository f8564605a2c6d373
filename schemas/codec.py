"""The one place Conveyor encodes and decodes Kafka messages.

Content types: ``application/msgpack`` (default; see ``schemas._msgpack_codec`` for the
zero-copy framing) and ``application/json`` (KServe V2 / Open Inference Protocol bodies,
see ``schemas._json_codec``). A value without a ``content-type`` header is JSON when its
first non-space byte is ``{``, else msgpack.

Guarantees:

* Every decode failure raises ``ContractError`` and nothing else; the message names the
  wire field (``"inputs[0].shape: product 6 != 5 elements"``).
* msgpack numeric tensors decode without copying: read-only ``numpy.frombuffer`` views over
  the very ``bytes`` passed in (keep that object alive as long as the arrays). All decoded
  arrays are read-only, in both encodings.
* Limits (``DecodeLimits``) are checked before anything proportional to the claimed sizes
  is allocated.
* NaN/Inf: msgpack carries float tensors as raw IEEE bytes and lets them through (models
  emit -inf logits); JSON has no NaN, so JSON encode and decode raise ``NAN_FORBIDDEN``.
  ``parameters`` and ``timings_ms`` must be finite in both encodings.

Versioning: every message carries ``schema_version`` ("major.minor") in its body and the
``conveyor-schema`` header. A different major is ``UNSUPPORTED_SCHEMA_VERSION``. A higher
minor of our major is accepted and the fields (and tensor-entry keys) it added are ignored.
Unknown-field policy: at our minor or lower, an unknown field is rejected with
``UNKNOWN_FIELD`` (typos such as ``deadline`` for ``deadline_ms`` fail loudly instead of
being dropped). JSON requests may omit ``schema_version`` (plain V2 clients); msgpack
envelopes must carry it.
"""

from __future__ import annotations

import re
from typing import Any

from schemas import _envelope, _json_codec, _msgpack_codec
from schemas._envelope import Headers, header
from schemas.errors import ContractError, ErrorCode
from schemas.fields import CONTENT_TYPES, JSON, MSGPACK
from schemas.limits import DEFAULT_LIMITS, DecodeLimits
from schemas.messages import (
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
)

__all__ = [
    "JSON",
    "MSGPACK",
    "DecodeLimits",
    "Headers",
    "content_type_of",
    "decode_request",
    "decode_result",
    "encode",
    "headers_for",
    "key_for",
    "reply_content_type",
]

CONTENT_TYPE_HEADER = "content-type"
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def encode(message: Message, content_type: str = MSGPACK) -> bytes:
    """Encode a message as a Kafka value in ``content_type``."""
    if content_type == MSGPACK:
        return _msgpack_codec.encode(message)
    if content_type == JSON:
        return _json_codec.encode(message)
    raise ContractError.at(
        ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        "content_type",
        f"{content_type!r} not one of {list(CONTENT_TYPES)}",
    )


def headers_for(message: Message, content_type: str = MSGPACK) -> list[tuple[str, bytes]]:
    """Kafka headers (aiokafka's format) that travel with an encoded message."""
    headers = [
        (CONTENT_TYPE_HEADER, content_type.encode("ascii")),
        (_envelope.SCHEMA_HEADER, _envelope.VERSION_TEXT.encode("ascii")),
        ("conveyor-tenant", message.tenant.encode("utf-8")),
        ("conveyor-task-id", message.task_id.encode("utf-8")),
    ]
    if message.traceparent is not None:
        headers.append(("traceparent", message.traceparent.encode("ascii")))
    return headers


def key_for(message: Message) -> bytes:
    """Kafka key: the task id, so every message of a task lands on one partition."""
    return message.task_id.encode("utf-8")


def reply_content_type(request: InferenceRequest, request_content_type: str) -> str:
    """The encoding a request's result must use: its override, else the request's own."""
    return request.response_content_type or request_content_type


def content_type_of(headers: Headers | None, value: bytes) -> str:
    """A value's content type: its header (ignoring parameters like charset), else sniffed."""
    raw = header(headers, CONTENT_TYPE_HEADER)
    if raw is None:
        end = _LEADING_SPACE.match(value)
        position = end.end() if end is not None else 0
        return JSON if value[position : position + 1] == b"{" else MSGPACK
    text = raw.decode("ascii", "replace").split(";", 1)[0].strip().lower()
    if text not in CONTENT_TYPES:
        raise ContractError.at(
            ErrorCode.UNSUPPORTED_CONTENT_TYPE,
            f"header {CONTENT_TYPE_HEADER}",
            f"{text!r} not one of {list(CONTENT_TYPES)}",
        )
    return text


def decode_request(
    value: bytes, headers: Headers | None = None, *, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferenceRequest:
    """Decode a client's request (msgpack or V2 JSON)."""
    message = _decode(InferenceRequest, value, headers, limits)
    assert isinstance(message, InferenceRequest)
    return message


def decode_result(
    value: bytes, headers: Headers | None = None, *, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferenceResult | ErrorResult:
    """Decode a result or an error (told apart by ``status``)."""
    message = _decode(None, value, headers, limits)
    assert isinstance(message, InferenceResult | ErrorResult)
    return message


def _decode(
    cls: type[Message] | None, value: bytes, headers: Headers | None, limits: DecodeLimits
) -> Message:
    if not isinstance(value, bytes):
        raise ContractError.at(
            ErrorCode.WRONG_TYPE, "value", f"expected bytes, got {type(value).__name__}"
        )
    if len(value) > limits.max_message_bytes:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE,
            "value",
            f"{len(value)} bytes > limit {limits.max_message_bytes}",
        )
    body: Any
    reader: _envelope.TensorDecoder
    if content_type_of(headers, value) == JSON:
        body, reader, required = _json_codec.loads(value), _json_codec.TensorReader(limits), False
    else:
        body, data_start = _msgpack_codec.split(value)
        reader, required = _msgpack_codec.TensorReader(value, data_start, limits), True
    target = cls if cls is not None else _envelope.result_class(body)
    return _envelope.from_wire(target, body, headers, reader, required)
