"""Raw ONNX Runtime throughput of the built MiniLM, by batch size and sequence length.

Run with ``.venv/bin/python -m bench.bench_model [--quick]``; prints a Markdown table and
writes it into BENCHMARKS.md between the ``bench:model`` markers, or into ``--out PATH``
(a GPU machine: ``--providers CUDAExecutionProvider,CPUExecutionProvider --out gpu.md``).

The session is the workers' own ``OnnxModel`` (same session options, same I/O binding on
device providers), so these numbers are the ceiling the inference stage is compared with.
``bench.bench_pipeline`` reuses the helpers here for its efficiency ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from bench.report import BENCHMARKS, write_section
from workers.models.builders import build_minilm, find_minilm_package_dir
from workers.models.builders.minilm import MODEL_NAME
from workers.models.repository import ModelRepository, ModelVersion
from workers.models.runtime import OnnxModel, RuntimeOptions

START, END = "<!-- bench:model:start -->", "<!-- bench:model:end -->"
TOKENIZER_FILENAME = "tokenizer.json"
# Common English words, each one WordPiece token in the uncased BERT vocabulary.
_WORD_TEXT = (
    "the of and to in is was for on with as by at from it that this are be or have an not "
    "but can all one has more new will they we about which other time two up when may some "
    "into its only first would also after over years people city water house music school "
    "river book game team world day night road light small large green blue red old young"
)
WORDS = tuple(_WORD_TEXT.split())

Feeds = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class RawResult:
    seq_tokens: int
    batch_size: int
    ms_per_batch: float
    seq_per_s: float


def machine_description(providers: Sequence[str] = ("CPUExecutionProvider",)) -> str:
    """CPU model and core count (and GPU name on device providers), Python and ORT versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {platform.machine()}"
    if any(p != "CPUExecutionProvider" for p in providers):
        text += f", GPU: {_gpu_name()}"
    return (
        f"{text}; Python {platform.python_version()}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}"
    )


def _gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi)"
    out = subprocess.run(
        [smi, "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def build_repository(
    root: Path, source: Path | None = None, encoder_layers: int = 6
) -> ModelVersion:
    """Build MiniLM into ``root`` (from the weights package, or `source`) and return v1;
    `encoder_layers` < 6: a cheaper stand-in of the same inputs and outputs."""
    build_minilm(source or find_minilm_package_dir(), root, encoder_layers=encoder_layers)
    return minilm_version(root)


def minilm_version(root: Path) -> ModelVersion:
    repository = ModelRepository(root)
    return ModelVersion(repository.models[MODEL_NAME], 1)


def load_model(
    version: ModelVersion,
    providers: Sequence[str],
    intra_op_threads: int,
    io_binding: bool = False,
    allow_spinning: bool = False,
) -> OnnxModel:
    """A session with the workers' options (``allow_spinning=True``: ORT's own default)."""
    options = RuntimeOptions(
        providers=tuple(providers),
        intra_op_threads=intra_op_threads,
        io_binding=io_binding,
        allow_spinning=allow_spinning,
    )
    return OnnxModel(version, options)


def tokenizer_of(version: ModelVersion) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(version.asset(TOKENIZER_FILENAME)))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def sentences(tokenizer: Tokenizer, seq_tokens: int, count: int, seed: int = 0) -> list[str]:
    """``count`` different sentences, each exactly ``seq_tokens`` tokens with [CLS] and [SEP]."""
    rng = np.random.default_rng(seed)
    found: list[str] = []
    while len(found) < count:
        words = [str(w) for w in rng.choice(WORDS, size=seq_tokens - 2)]
        text = " ".join(words)
        if len(tokenizer.encode(text).ids) == seq_tokens:
            found.append(text)
    return found


def feeds_for(tokenizer: Tokenizer, texts: Sequence[str]) -> Feeds:
    """``input_ids`` and ``attention_mask`` as the preprocess stage makes them (equal lengths)."""
    encodings = tokenizer.encode_batch(list(texts))
    seq = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), seq), dtype=np.int64)
    mask = np.zeros((len(encodings), seq), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def measure_raw(
    model: OnnxModel, feeds: Feeds, duration_s: float, min_runs: int = 3, concurrent: int = 1
) -> RawResult:
    """Run the same batch back to back for ``duration_s`` (after warm-up) on ``concurrent``
    threads at once; seq/s over all of them and ms per batch."""
    for _ in range(3):
        model.run(feeds)
    counts = [0] * concurrent
    started = time.perf_counter()

    def loop(index: int) -> None:
        while counts[index] < min_runs or time.perf_counter() - started < duration_s:
            model.run(feeds)
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    runs = sum(counts)
    batch, seq = feeds["input_ids"].shape
    return RawResult(seq, batch, elapsed / runs * concurrent * 1000, batch * runs / elapsed)


def table(results: Sequence[RawResult], providers: Sequence[str], threads: int) -> str:
    lines = [
        f"Raw ONNX Runtime, built `{MODEL_NAME}` (sentence embedding, pooling in graph), the "
        f"workers' `OnnxModel`; providers `{','.join(providers)}`, intra_op threads "
        f"{threads or 'all'}; fixed-length inputs, the same batch run back to back.",
        f"Machine: {machine_description(providers)}.",
        f"Command: `{_command()}`",
        "",
        "| seq tokens | batch | ms / batch | seq/s | vs batch 1 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r.seq_tokens: r.seq_per_s for r in results if r.batch_size == 1}
    for r in results:
        gain = f"{r.seq_per_s / base[r.seq_tokens]:.1f}x" if r.seq_tokens in base else "-"
        lines.append(
            f"| {r.seq_tokens} | {r.batch_size} | {r.ms_per_batch:.2f} | {r.seq_per_s:,.0f} "
            f"| {gain} |"
        )
    return "\n".join(lines)


def _command() -> str:
    return " ".join([".venv/bin/python -m bench." + Path(sys.argv[0]).stem, *sys.argv[1:]])


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 8, 32, 128])
    parser.add_argument("--seq", type=_ints, default=[32, 128], help="sequence lengths")
    parser.add_argument("--threads", type=int, default=0, help="intra_op threads; 0 = all")
    parser.add_argument("--duration-s", type=float, default=3.0, help="per configuration")
    parser.add_argument("--quick", action="store_true", help="0.5 s per configuration")
    parser.add_argument("--out", type=Path, help="write the marked table here, not BENCHMARKS.md")
    parser.add_argument("--source", type=Path, help="MiniLM source folder (bench.gpu_source)")
    parser.add_argument("--io-binding", action="store_true", help="I/O binding on devices")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, version: ModelVersion) -> list[RawResult]:
    providers = args.providers.split(",")
    model = load_model(version, providers, args.threads, args.io_binding)
    tokenizer = tokenizer_of(version)
    duration_s = 0.5 if args.quick else args.duration_s
    results = []
    for seq in args.seq:
        texts = sentences(tokenizer, seq, max(args.batch_sizes))
        for batch_size in args.batch_sizes:
            result = measure_raw(model, feeds_for(tokenizer, texts[:batch_size]), duration_s)
            print(f"seq {seq} batch {batch_size}: {result.seq_per_s:,.0f} seq/s", flush=True)
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-model-") as root:
        results = run(args, build_repository(Path(root), args.source))
    markdown = table(results, args.providers.split(","), args.threads)
    print(markdown)
    if args.out is not None:
        args.out.write_text(f"{START}\n{markdown}\n{END}\n", encoding="utf-8")
    else:
        write_section(markdown, BENCHMARKS, START, END, "Model (raw ONNX Runtime)")


if __name__ == "__main__":
    main()
