"""Padding saved by shape buckets: MiniLM on a realistic mix of text lengths.

Run with ``.venv/bin/python -m bench.bench_buckets [--quick]``; prints a Markdown table, writes
it into BENCHMARKS.md between the ``bench:buckets`` markers and draws
``bench/plots/buckets.png`` (needs the ``bench`` extra: matplotlib).

The inference stage collates the requests of a batch by zero-padding every row to the longest
one (``workers.pipelines.collate``), so one paragraph in a batch of tweets makes the model
compute the whole batch at paragraph length. Two ways of batching the same texts, in the same
``OnnxModel`` session:

- arrival order (today): consecutive ``batch_size`` requests, padded to the longest of each;
- bucketed: each request goes to the smallest boundary of ``BOUNDARIES`` >= its token count;
  batches form in arrival order within a bucket, padded to the longest of each (not to the
  boundary). A bucket's last, partial batch runs as it is, as the batcher's deadline would
  flush it.

Each request is one text tokenized by the text-embedding pipeline's own ``text.tokenize``
(truncation at its ``max_sequence_length``, 256), then batched with the workers' ``collate``.
Tokenization is not timed: the comparison is the model's compute.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import bench_model
from bench.report import BENCHMARKS, write_section
from workers.models.builders.minilm import MODEL_NAME
from workers.models.repository import ModelRepository, ModelVersion, PipelineConfig
from workers.models.runtime import OnnxModel
from workers.pipelines.collate import collate
from workers.pipelines.text import Tokenize

START, END = "<!-- bench:buckets:start -->", "<!-- bench:buckets:end -->"
TITLE = "Padding saved by shape buckets"
PIPELINE = "text-embedding"
PLOT_NAME = "buckets"
BOUNDARIES = (16, 32, 64, 128, 256)
"""Bucket upper bounds in tokens; the last is the pipeline's truncation length."""

# The length mix: text lengths in words ~ log-normal, median 16 words, sigma 1.0 (of the log).
# Most texts are short (queries, titles, tweets): ~45% fit in 16 tokens, two thirds are at
# most 24 words. A long tail of paragraphs: ~9% over 62 words, ~2% over 126 and ~0.3% past
# the 256-token cap, which the tokenizer truncates. Each word of bench_model.WORDS is one
# WordPiece token, so a text of w words is w + 2 tokens ([CLS], [SEP]) below the cap.
SEED = 20_251
MEDIAN_WORDS = 16
SIGMA = 1.0
MAX_WORDS = 400
"""Longest text drawn, in words: past the cap on purpose, so truncation is exercised."""

Feeds = bench_model.Feeds
Batch = list[int]
"""Indices into the request list, in the order the requests arrived."""


def word_counts(count: int, seed: int = SEED) -> list[int]:
    """``count`` text lengths in words from the seeded log-normal mix, in arrival order."""
    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(mean=math.log(MEDIAN_WORDS), sigma=SIGMA, size=count)
    return [int(w) for w in np.clip(np.rint(drawn), 1, MAX_WORDS)]


def texts_of(counts: Sequence[int], seed: int = SEED) -> list[str]:
    """One text of random ``bench_model.WORDS`` per word count."""
    rng = np.random.default_rng(seed + 1)
    return [" ".join(str(w) for w in rng.choice(bench_model.WORDS, size=n)) for n in counts]


def bucket_of(tokens: int, boundaries: Sequence[int] = BOUNDARIES) -> int:
    """The smallest boundary >= ``tokens``; a length past the last boundary is an error."""
    for boundary in boundaries:
        if tokens <= boundary:
            return boundary
    raise ValueError(f"length {tokens} exceeds the largest bucket boundary {boundaries[-1]}")


def arrival_batches(count: int, batch_size: int) -> list[Batch]:
    """Consecutive runs of ``batch_size`` requests, the last one possibly shorter."""
    _check_batch_size(batch_size)
    return [
        list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)
    ]


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, boundaries: Sequence[int] = BOUNDARIES
) -> list[Batch]:
    """Batches of one bucket each, in arrival order within the bucket.

    Batches are listed in the order they would close: a full batch when its last request
    arrives, then the partial ones at the end (a deadline flush).
    """
    _check_batch_size(batch_size)
    open_batches: dict[int, Batch] = {}
    closed: list[Batch] = []
    for index, tokens in enumerate(lengths):
        bucket = bucket_of(tokens, boundaries)
        batch = open_batches.setdefault(bucket, [])
        batch.append(index)
        if len(batch) == batch_size:
            closed.append(open_batches.pop(bucket))
    return closed + sorted(open_batches.values(), key=lambda b: b[-1])


def computed_tokens(lengths: Sequence[int], batches: Sequence[Batch]) -> int:
    """Token positions the model computes: each batch is its size times its longest request."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


@dataclass(frozen=True)
class Padding:
    """Token accounting of one way of batching the same requests."""

    batches: int
    real_tokens: int
    computed_tokens: int

    @property
    def padded_tokens(self) -> int:
        return self.computed_tokens - self.real_tokens

    @property
    def padding_share(self) -> float:
        """Share of the computed positions that are padding."""
        return self.padded_tokens / self.computed_tokens if self.computed_tokens else 0.0


def padding_of(lengths: Sequence[int], batches: Sequence[Batch]) -> Padding:
    covered = sorted(i for batch in batches for i in batch)
    if covered != list(range(len(lengths))):
        raise ValueError("batches must hold every request exactly once")
    return Padding(len(batches), sum(lengths), computed_tokens(lengths, batches))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# --- measuring (needs the built model) -------------------------------------------------------


@dataclass(frozen=True)
class Result:
    batch_size: int
    batching: str
    padding: Padding
    pass_s: list[float]
    """Seconds to run every batch once, one per repetition."""
    requests: int

    @property
    def seq_per_s(self) -> float:
        return self.requests / statistics.median(self.pass_s)

    @property
    def seq_per_s_range(self) -> str:
        """Slowest and fastest pass: how much the machine moved the median."""
        return f"{self.requests / max(self.pass_s):,.0f}-{self.requests / min(self.pass_s):,.0f}"


def tokenized(texts: Sequence[str], pipeline: PipelineConfig, version: ModelVersion) -> list[Feeds]:
    """Each text as its own request, through the pipeline's preprocess (one row each)."""
    tokenize = Tokenize()
    return [
        tokenize({"text": np.array([text], dtype=object)}, {}, pipeline, version) for text in texts
    ]


def run_pass(model: OnnxModel, feeds: Sequence[Feeds]) -> float:
    started = time.perf_counter()
    for batch in feeds:
        model.run(batch)
    return time.perf_counter() - started


def measure(
    model: OnnxModel, requests: Sequence[Feeds], batch_size: int, repetitions: int
) -> list[Result]:
    """Arrival order vs bucketed at one batch size, the two interleaved repetition by repetition."""
    lengths = [int(r["input_ids"].shape[1]) for r in requests]
    plans = {
        "arrival order": arrival_batches(len(lengths), batch_size),
        "bucketed": bucketed_batches(lengths, batch_size),
    }
    # Collated before timing, with the workers' own collate (zero padding to the longest row).
    feeds = {
        name: [collate([requests[i] for i in batch]) for batch in batches]
        for name, batches in plans.items()
    }
    for batches in feeds.values():
        # Warm-up: one batch of each plan's longest shape, so the memory arena has grown.
        model.run(max(batches, key=lambda f: f["input_ids"].size))
    times: dict[str, list[float]] = {name: [] for name in plans}
    for repetition in range(repetitions):
        # Alternate which plan goes first, so slow drift on a shared machine falls on both.
        order = list(plans) if repetition % 2 == 0 else list(reversed(plans))
        for name in order:
            times[name].append(run_pass(model, feeds[name]))
    results = [
        Result(batch_size, name, padding_of(lengths, batches), times[name], len(lengths))
        for name, batches in plans.items()
    ]
    for r in results:
        print(
            f"batch {batch_size} {r.batching}: {r.padding.computed_tokens:,} tokens computed, "
            f"{r.seq_per_s:,.0f} seq/s",
            flush=True,
        )
    return results


# --- report ------------------------------------------------------------------------------------


def mix_summary(lengths: Sequence[int]) -> str:
    p50, p90, p99 = (int(np.percentile(lengths, q)) for q in (50, 90, 99))
    per_bucket = {b: 0 for b in BOUNDARIES}
    for tokens in lengths:
        per_bucket[bucket_of(tokens)] += 1
    buckets = ", ".join(f"<= {b}: {n:,}" for b, n in per_bucket.items())
    return (
        f"Length mix: {len(lengths):,} texts in arrival order, words ~ log-normal (median "
        f"{MEDIAN_WORDS} words, sigma {SIGMA}, seed {SEED}, at most {MAX_WORDS} words), one "
        f"token per word plus [CLS] and [SEP], truncated at {BOUNDARIES[-1]} tokens by the "
        f"pipeline's `text.tokenize`. Tokens p50 / p90 / p99 / max: {p50} / {p90} / {p99} / "
        f"{max(lengths)}; requests per bucket: {buckets}."
    )


def table(results: Sequence[Result], lengths: Sequence[int], args: argparse.Namespace) -> str:
    lines = [
        f"Built `{MODEL_NAME}` on the workers' `OnnxModel`, CPU, intra_op threads "
        f"{args.threads or 'all'}; one text per request, batched with the workers' `collate` "
        f"(zero-pad to the longest row). Bucket boundaries {', '.join(map(str, BOUNDARIES))} "
        "tokens; a batch pads to its own longest row, not to the boundary. Throughput: every "
        f"batch run once per pass, median of {_passes(args.repetitions)}, the two batchings "
        "interleaved in one session; tokenization and collation not timed.",
        f"Machine: {bench_model.machine_description()}.",
        f"Command: `{_command(args)}`; load average at the end {_load_average()} (1 / 5 min; "
        "other sessions may share this machine).",
        "",
        mix_summary(lengths),
        "",
        "| batch | batching | batches | real tokens | computed tokens | padding tokens "
        "| padding share | seq/s (median) | seq/s range | tokens computed vs arrival "
        "| seq/s vs arrival |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r.batch_size: r for r in results if r.batching == "arrival order"}
    for r in results:
        ref = base[r.batch_size]
        lines.append(
            f"| {r.batch_size} | {r.batching} | {r.padding.batches} | "
            f"{r.padding.real_tokens:,} | {r.padding.computed_tokens:,} | "
            f"{r.padding.padded_tokens:,} | "
            f"{r.padding.padding_share:.0%} | {r.seq_per_s:,.1f} | {r.seq_per_s_range} | "
            f"{r.padding.computed_tokens / ref.padding.computed_tokens:.2f}x | "
            f"{r.seq_per_s / ref.seq_per_s:.2f}x |"
        )
    lines += ["", f"![length mix and tokens computed](bench/plots/{PLOT_NAME}.png)"]
    return "\n".join(lines)


def plot(results: Sequence[Result], lengths: Sequence[int]) -> Path:
    """Histogram of the mix with the boundaries; tokens computed per batching and batch size."""
    from bench import plots  # matplotlib only here: the pure parts above run without it

    fig, (mix, tokens) = plots.figure(panels=2)
    # Bin edges and boundary lines at half tokens, so a text of exactly a boundary's length
    # is drawn left of that boundary's line, in the bucket it belongs to.
    mix.hist(
        lengths, bins=[edge + 0.5 for edge in range(0, BOUNDARIES[-1] + 1, 4)], color="tab:gray"
    )
    mix.set_yscale("log")
    for boundary in BOUNDARIES:
        mix.axvline(boundary + 0.5, color="tab:red", linestyle="--", linewidth=1)
    mix.set_xlabel("tokens per text (dashed: bucket boundaries)")
    mix.set_ylabel("texts (log scale)")
    mix.set_title(f"Length mix: {len(lengths):,} texts")

    sizes = sorted({r.batch_size for r in results})
    width = 0.38
    for offset, (name, color) in enumerate(
        (("arrival order", "tab:blue"), ("bucketed", "tab:green"))
    ):
        rows = [next(r for r in results if r.batch_size == b and r.batching == name) for b in sizes]
        xs = [i + (offset - 0.5) * width for i in range(len(sizes))]
        bars = tokens.bar(
            xs, [r.padding.computed_tokens for r in rows], width, label=name, color=color
        )
        tokens.bar_label(bars, labels=[f"{r.seq_per_s:,.0f} seq/s" for r in rows], fontsize=8)
    tokens.axhline(sum(lengths), color="black", linewidth=1, label="real tokens")
    tokens.set_xticks(range(len(sizes)), [str(b) for b in sizes])
    tokens.set_xlabel("batch size")
    tokens.set_ylabel("token positions computed")
    tokens.set_title("Tokens computed (labels: measured seq/s)")
    tokens.legend()
    return plots.save(fig, PLOT_NAME)


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


def _passes(count: int) -> str:
    return "1 pass" if count == 1 else f"{count} passes"


def _command(args: argparse.Namespace) -> str:
    return ".venv/bin/python -m bench.bench_buckets" + (" --quick" if args.quick else "")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="256 texts, batch 32, one pass")
    parser.add_argument("--texts", type=int, default=1024, help="requests in the mix")
    parser.add_argument("--batch-sizes", type=_ints, default=[8, 32, 128])
    parser.add_argument("--repetitions", type=int, default=3, help="passes per batching")
    parser.add_argument("--threads", type=int, default=0, help="intra_op threads; 0 = all")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.batch_sizes, args.repetitions = 256, [32], 1
    return args


def run(args: argparse.Namespace, root: Path) -> tuple[list[Result], list[int]]:
    version = bench_model.build_repository(root)
    pipeline, _ = ModelRepository(root).resolve(PIPELINE, None)
    requests = tokenized(texts_of(word_counts(args.texts)), pipeline, version)
    lengths = [int(r["input_ids"].shape[1]) for r in requests]
    model = bench_model.load_model(version, ["CPUExecutionProvider"], args.threads)
    results: list[Result] = []
    for batch_size in args.batch_sizes:
        results += measure(model, requests, batch_size, args.repetitions)
    return results, lengths


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-buckets-") as root:
        results, lengths = run(args, Path(root))
    markdown = table(results, lengths, args)
    print(markdown)
    print(f"plot: {plot(results, lengths)}")
    write_section(markdown, BENCHMARKS, START, END, TITLE)


if __name__ == "__main__":
    main()
