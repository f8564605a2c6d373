"""Golden vectors: fixed messages and the exact bytes today's encoder produces for them.

Regenerate (only for an intended wire change) with::

    .venv/bin/python -m tests.unit.schemas.make_golden
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas import (
    JSON,
    MSGPACK,
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
    Status,
    encode,
)

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "data" / "golden"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EXTENSIONS = {MSGPACK: "msgpack", JSON: "json"}


def golden_messages() -> dict[str, Message]:
    """Deterministic messages (fixed ids, timestamps and tensor values)."""
    request = InferenceRequest(
        task_id="golden-task-1",
        tenant="acme",
        pipeline="text-embedding",
        inputs={
            "text": np.array(["hello world", "héllo ☃"], dtype=object),
            "mask": np.array([[1, 1, 0]], dtype=np.int64),
        },
        parameters={
            "normalize": True,
            "top_k": 3,
            "temperature": 0.25,
            "epsilon": 1e-07,  # pins the JSON exponent form (orjson: 1e-7)
            "tags": ["a", None],
        },
        model_version=2,
        priority="bulk",
        deadline_ms=1_700_000_060_000,
        reply_to="conveyor.results.acme",
        traceparent=TRACEPARENT,
        submitted_at_ms=1_700_000_000_000,
        response_content_type=JSON,
    )
    result = InferenceResult(
        task_id="golden-task-1",
        tenant="acme",
        pipeline="text-embedding",
        outputs={
            "embedding": (np.arange(8, dtype=np.float32) / 3).reshape(2, 4),
            "score": np.array(0.1, dtype=np.float64),
            "half": np.array([1.5, -2.0], dtype=np.float16),
        },
        model_name="minilm",
        model_version=2,
        submitted_at_ms=1_700_000_000_000,
        completed_at_ms=1_700_000_000_042,
        timings_ms={"preprocess": 1.5, "inference": 12.25, "postprocess": 0.5},
        traceparent=TRACEPARENT,
    )
    error = ErrorResult(
        task_id="golden-task-2",
        tenant="acme",
        status=Status.FAILED,
        code=ErrorCode.SHAPE_MISMATCH,
        message="inputs[0].shape: product 6 != 5 elements",
        stage="intake",
        pipeline="text-embedding",
        traceparent=TRACEPARENT,
        completed_at_ms=1_700_000_000_001,
    )
    return {"request": request, "result": result, "error": error}


def golden_files() -> dict[str, tuple[Message, str, bytes]]:
    """File name -> (message, content type, encoded bytes)."""
    files = {}
    for name, message in golden_messages().items():
        for content_type, extension in EXTENSIONS.items():
            files[f"{name}.{extension}"] = (message, content_type, encode(message, content_type))
    return files


def main() -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, (_, _, value) in golden_files().items():
        (GOLDEN_DIR / file_name).write_bytes(value)
        print(f"wrote {GOLDEN_DIR / file_name} ({len(value)} bytes)")


if __name__ == "__main__":
    main()
