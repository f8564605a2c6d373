"""Codec benchmark: a 1 MB float32 tensor in an InferenceRequest, our codecs vs pickle.

Run with ``.venv/bin/python -m bench.bench_codec``; prints a Markdown table and writes it
into BENCHMARKS.md between the ``bench:codec`` markers.
"""

from __future__ import annotations

import functools
import pickle
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schemas import JSON, MSGPACK, InferenceRequest, decode_request, encode

TENSOR_BYTES = 1024 * 1024
DECODE_TARGET_MS = 0.05
BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
START, END = "<!-- bench:codec:start -->", "<!-- bench:codec:end -->"


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


def write_section(markdown: str, path: Path = BENCHMARKS) -> None:
    """Replace only the text between our markers (creating the file or section if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{START}\n{markdown}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Codec\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    markdown = table(measure())
    print(markdown)
    write_section(markdown)


if __name__ == "__main__":
    main()
