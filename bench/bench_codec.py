"""Codec benchmarks: a 1 MB tensor (our codecs vs pickle) and the per-message hot path.

Run with ``.venv/bin/python -m bench.bench_codec``; prints two Markdown tables and writes
them into BENCHMARKS.md between the ``bench:codec`` and ``bench:messages`` markers. The
second table is the per-message framework cost the stage workers pay for a tiny message
(one FP32 [1, 16] tensor, like the ``tiny-classify`` pipeline): decode, encode, and deriving
the next message with ``dataclasses.replace`` (validates every field) vs ``evolve``
(validates only the changed ones).
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from schemas import (
    JSON,
    MSGPACK,
    InferenceRequest,
    InferenceResult,
    StageMessage,
    decode_request,
    decode_stage,
    encode,
    headers_for,
)

TENSOR_BYTES = 1024 * 1024
DECODE_TARGET_MS = 0.05
from bench.report import BENCHMARKS, write_section  # noqa: E402

START, END = "<!-- bench:codec:start -->", "<!-- bench:codec:end -->"
MESSAGES_START, MESSAGES_END = "<!-- bench:messages:start -->", "<!-- bench:messages:end -->"
MESSAGES_REPETITIONS = 20_000
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BEFORE_US: dict[str, float] = {
    "decode_request": 19.67,
    "decode_stage": 24.79,
    "encode_stage": 8.65,
    "encode_result": 8.17,
    "preprocess": 23.92,
    "inference": 15.03,
    "postprocess": 11.21,
}
"""Old-path figures of ``hot_path`` measured on the code before each field was checked only
once (``measure_messages`` run against that revision's ``schemas``), kept for the table."""
BEFORE_NOTE = "same machine, two interleaved runs each, best kept; 2 shared cores"


def median_ms(action: Callable[[], object], repetitions: int) -> float:
    """Median wall time of ``action`` over ``repetitions`` runs (after a short warm-up)."""
    for _ in range(min(10, repetitions)):
        action()
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        action()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def request() -> InferenceRequest:
    values = np.random.default_rng(0).standard_normal(TENSOR_BYTES // 4).astype(np.float32)
    return InferenceRequest(
        task_id="bench-1",
        tenant="acme",
        pipeline="text-embedding",
        inputs={"embedding": values},
        submitted_at_ms=1_700_000_000_000,
    )


def measure() -> list[tuple[str, int, float, float]]:
    """(codec, encoded bytes, encode ms, decode ms) for each codec."""
    message = request()
    rows = []
    codecs: list[tuple[str, Callable[[], bytes], Callable[[bytes], object], int]] = [
        ("conveyor msgpack", lambda: encode(message, MSGPACK), decode_request, 2000),
        ("pickle (protocol 5)", lambda: pickle.dumps(message, protocol=5), pickle.loads, 500),
        ("conveyor V2 JSON", lambda: encode(message, JSON), decode_request, 100),
    ]
    for name, encoder, decoder, repetitions in codecs:
        value = encoder()
        assert decoder(value) == message
        encode_ms = median_ms(encoder, max(repetitions // 4, 10))
        decode_ms = median_ms(functools.partial(decoder, value), repetitions)
        rows.append((name, len(value), encode_ms, decode_ms))
    return rows


def table(rows: list[tuple[str, int, float, float]]) -> str:
    base_encode, base_decode = rows[0][2], rows[0][3]
    lines = [
        f"1 MB float32 tensor in an `InferenceRequest`; median of repeated runs "
        f"(`time.perf_counter_ns`), Python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()}. Ratios are relative to the msgpack codec. "
        f"Decode target: <= {DECODE_TARGET_MS} ms.",
        "",
        "| codec | size (bytes) | encode (ms) | decode (ms) | encode ratio | decode ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, size, encode_ms, decode_ms in rows:
        lines.append(
            f"| {name} | {size:,} | {encode_ms:.4f} | {decode_ms:.4f} "
            f"| {encode_ms / base_encode:.1f}x | {decode_ms / base_decode:.1f}x |"
        )
    verdict = "meets" if rows[0][3] <= DECODE_TARGET_MS else "MISSES"
    lines += ["", f"msgpack decode {verdict} the {DECODE_TARGET_MS} ms target."]
    return "\n".join(lines)


def small_messages() -> tuple[InferenceRequest, StageMessage, InferenceResult]:
    """A tiny-model task as the stages see it: one FP32 [1, 16] tensor per message."""
    values = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    common: dict[str, Any] = {"task_id": "0af7651916cd43dd8448eb211c80319c", "tenant": "acme"}
    request = InferenceRequest(
        **common,
        pipeline="tiny-classify",
        inputs={"features": values},
        deadline_ms=1_700_000_060_000,
        traceparent=TRACEPARENT,
        submitted_at_ms=1_700_000_000_000,
    )
    stage = StageMessage(
        **common,
        pipeline="tiny-classify",
        content_type=MSGPACK,
        tensors={"features": values},
        model_name="tiny-classifier",
        model_version=1,
        deadline_ms=1_700_000_060_000,
        traceparent=TRACEPARENT,
        submitted_at_ms=1_700_000_000_000,
        timings_ms={"preprocess": 0.05},
    )
    result = InferenceResult(
        **common,
        pipeline="tiny-classify",
        outputs={"logits": values},
        model_name="tiny-classifier",
        model_version=1,
        submitted_at_ms=1_700_000_000_000,
        completed_at_ms=1_700_000_000_004,
        timings_ms={"preprocess": 0.05, "inference": 0.2, "postprocess": 0.03},
        traceparent=TRACEPARENT,
    )
    return request, stage, result


Operation = Callable[[], object]


def hot_path(
    request: InferenceRequest, stage: StageMessage, result: InferenceResult
) -> list[tuple[str, str, Operation, Operation | None]]:
    """(key, operation, old path, new path) for each step a stage worker takes per task.

    Decoding and encoding keep their API (new path ``None``: the old path got faster);
    deriving the next message moves from the validating constructor or
    ``dataclasses.replace`` to ``evolve``/``from_request``/``from_stage``, each checking
    only the fields it is given. New paths are skipped on code that lacks them.
    """
    request_value, stage_value = encode(request), encode(stage)
    request_headers, stage_headers = headers_for(request), headers_for(stage)
    values = stage.tensors["features"]
    inferred = {**stage.timings_ms, "inference_queue": 0.1, "inference": 0.2}
    finished = {**inferred, "postprocess": 0.03}
    preprocess = {"preprocess": 0.05}
    model: dict[str, Any] = {"model_name": "tiny-classifier", "model_version": 1}
    new_api = hasattr(stage, "evolve")

    def postprocess_old() -> object:
        return InferenceResult(
            task_id=stage.task_id,
            tenant=stage.tenant,
            pipeline=stage.pipeline,
            outputs={"logits": values},
            model_name="tiny-classifier",
            model_version=1,
            submitted_at_ms=stage.submitted_at_ms,
            completed_at_ms=1_700_000_000_004,
            timings_ms=finished,
            traceparent=stage.traceparent,
        )

    return [
        (
            "decode_request",
            "`decode_request` (msgpack)",
            lambda: decode_request(request_value, request_headers),
            None,
        ),
        (
            "decode_stage",
            "`decode_stage` (msgpack)",
            lambda: decode_stage(stage_value, stage_headers),
            None,
        ),
        ("encode_stage", "`encode(StageMessage)` (msgpack)", lambda: encode(stage), None),
        ("encode_result", "`encode(InferenceResult)` (msgpack)", lambda: encode(result), None),
        (
            "preprocess",
            "preprocess: `replace(from_request(...), model_name=, model_version=, timings_ms=)`"
            " -> `from_request(..., model_name=, model_version=, timings_ms=)`",
            lambda: dataclasses.replace(
                StageMessage.from_request(request, MSGPACK, {"features": values}),
                **model,
                timings_ms=preprocess,
            ),
            None
            if not new_api
            else lambda: StageMessage.from_request(
                request, MSGPACK, {"features": values}, **model, timings_ms=preprocess
            ),
        ),
        (
            "inference",
            "inference: `replace(stage, tensors=, batch_id=, timings_ms=)` -> `stage.evolve(...)`",
            lambda: dataclasses.replace(
                stage, tensors={"logits": values}, batch_id="b-1", timings_ms=inferred
            ),
            None
            if not new_api
            else lambda: stage.evolve(
                tensors={"logits": values}, batch_id="b-1", timings_ms=inferred
            ),
        ),
        (
            "postprocess",
            "postprocess: `InferenceResult(...)` -> `InferenceResult.from_stage(stage, outputs,"
            " completed_at_ms=, timings_ms=)`",
            postprocess_old,
            None
            if not new_api
            else lambda: InferenceResult.from_stage(
                stage,
                {"logits": values},
                completed_at_ms=1_700_000_000_004,
                timings_ms=finished,
            ),
        ),
    ]


def measure_messages() -> list[tuple[str, str, float, float | None]]:
    """(key, operation, old path µs, new path µs) per message, medians of many runs."""
    request, stage, result = small_messages()
    assert decode_request(encode(request), headers_for(request)) == request
    assert decode_stage(encode(stage), headers_for(stage)) == stage
    rows = []
    for key, name, old, new in hot_path(request, stage, result):
        if new is not None:
            assert old() == new(), name
        old_us = median_ms(old, MESSAGES_REPETITIONS) * 1000
        new_us = None if new is None else median_ms(new, MESSAGES_REPETITIONS) * 1000
        rows.append((key, name, old_us, new_us))
    return rows


def messages_table(rows: list[tuple[str, str, float, float | None]]) -> str:
    lines = [
        f"Per-message framework cost on the stage workers' hot path for a tiny message (one "
        f"FP32 [1, 16] tensor, traceparent, deadline, timings); median of "
        f"{MESSAGES_REPETITIONS:,} runs (`time.perf_counter_ns`), Python "
        f"{platform.python_version()}, numpy {np.__version__}, {platform.machine()}. "
        f"*Before*: the old code and API, measured with this script before each field was "
        f"checked only once ({BEFORE_NOTE}). *Old API now*: the old call on today's code "
        f"(the constructor and `dataclasses.replace` still check every field). *After*: the "
        f"API the stages should use.",
        "",
        "| operation | before (µs) | old API now (µs) | after (µs) | after / before |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    afters: dict[str, float] = {}
    for key, name, old_us, new_us in rows:
        after = afters[key] = old_us if new_us is None else new_us
        before = BEFORE_US.get(key)
        before_text = "n/a" if before is None else f"{before:.2f}"
        ratio = "n/a" if before is None else f"{after / before:.2f}"
        old_text = "same call" if new_us is None else f"{old_us:.2f}"
        lines.append(f"| {name} | {before_text} | {old_text} | {after:.2f} | {ratio} |")
    if set(PER_TASK) <= afters.keys() and set(PER_TASK) <= BEFORE_US.keys():
        before_task = sum(BEFORE_US[key] * count for key, count in PER_TASK.items())
        after_task = sum(afters[key] * count for key, count in PER_TASK.items())
        lines.append(
            f"| **one task through the three stages** (decode, derive, encode in each) "
            f"| {before_task:.1f} | | {after_task:.1f} | {after_task / before_task:.2f} |"
        )
    return "\n".join(lines)


PER_TASK = {
    "decode_request": 1,
    "preprocess": 1,
    "encode_stage": 2,
    "decode_stage": 2,
    "inference": 1,
    "postprocess": 1,
    "encode_result": 1,
}
"""How often each step runs for one task: preprocess, inference and postprocess workers."""


def main() -> None:
    markdown = table(measure())
    print(markdown)
    write_section(markdown, BENCHMARKS, START, END, "Codec")
    messages = messages_table(measure_messages())
    print(messages)
    write_section(messages, BENCHMARKS, MESSAGES_START, MESSAGES_END, "Per-message hot path")


if __name__ == "__main__":
    main()
