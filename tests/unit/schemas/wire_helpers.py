"""Helpers that build raw wire values by hand (to forge broken messages in tests)."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack

MAGIC = b"CNVY"


def frame(envelope: Any, data: bytes = b"", *, raw_envelope: bytes | None = None) -> bytes:
    """A msgpack frame around ``envelope`` with ``data`` as its data section."""
    packed = raw_envelope if raw_envelope is not None else msgpack.packb(envelope)
    head = struct.pack("<4sI", MAGIC, len(packed)) + packed
    return head + bytes(-len(head) % 64) + data


def unframe(value: bytes) -> tuple[Any, bytes]:
    """The envelope and the data section of a frame."""
    (length,) = struct.unpack_from("<I", value, 4)
    start = 8 + length
    return msgpack.unpackb(value[8:start]), value[start + (-start % 64) :]


def json_bytes(body: Any) -> bytes:
    return json.dumps(body).encode("utf-8")


def v2_request(**changes: Any) -> dict[str, Any]:
    """A valid V2 JSON request body, with top-level ``changes`` applied (None deletes)."""
    body: dict[str, Any] = {
        "id": "t-1",
        "tenant": "acme",
        "pipeline": "text-embedding",
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello world"]},
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
        ],
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def with_tensor(index: int, **changes: Any) -> dict[str, Any]:
    """A V2 request whose ``inputs[index]`` has ``changes`` applied (None deletes)."""
    body = v2_request()
    entry = body["inputs"][index]
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return body
