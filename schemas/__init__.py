"""Conveyor's wire contract: the messages clients send and receive, and their codec.

Requests come in and results (or errors) go out one task per record, as these messages.
Between the internal stages tasks travel as task frames (``schemas.frames``: many tasks
per record, column by column).

Typical use::

    from schemas import InferenceRequest, encode, decode_request, headers_for, key_for

    request = InferenceRequest.new(tenant="acme", pipeline="text-embedding", inputs=...)
    value = encode(request)  # application/msgpack
    await producer.send(topic, value, key=key_for(request), headers=headers_for(request))
    request = decode_request(record.value, record.headers)  # raises ContractError only
"""

from schemas.claimcheck import ClaimCheck, claim_key
from schemas.codec import (
    content_type_of,
    decode_request,
    decode_result,
    encode,
    headers_for,
    key_for,
    reply_content_type,
)
from schemas.errors import ContractError, ErrorCode
from schemas.fields import CONTENT_TYPES, JSON, MSGPACK
from schemas.limits import DEFAULT_LIMITS, DecodeLimits
from schemas.messages import (
    SCHEMA_VERSION,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
    Status,
)
from schemas.tensors import DATATYPES, TensorRef, TensorValue, arrays_of

__all__ = [
    "CONTENT_TYPES",
    "DATATYPES",
    "DEFAULT_LIMITS",
    "JSON",
    "MSGPACK",
    "SCHEMA_VERSION",
    "ClaimCheck",
    "ContractError",
    "DecodeLimits",
    "ErrorCode",
    "ErrorResult",
    "InferenceRequest",
    "InferenceResult",
    "Message",
    "Status",
    "TensorRef",
    "TensorValue",
    "arrays_of",
    "claim_key",
    "content_type_of",
    "decode_request",
    "decode_result",
    "encode",
    "headers_for",
    "key_for",
    "reply_content_type",
]
