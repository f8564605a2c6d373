"""CPU per task at a paced rate, settings A/B: which workers' setting costs what at low rates.

Run with ``.venv/bin/python -m bench.bench_paced [--layout fused|staged] [--rate-per-s 200]
[--variant NAME=VAR=VALUE ...] [--rounds 2]``. One private stack; for each round and each
variant (alternating, so a machine that gets busier or quieter weighs on every variant alike)
a fresh fleet of `tiny-classify` workers with the variant's environment is started, warmed
with the same paced load for ``--warmup-s`` (a fresh broker's JIT), then measured for
``--seconds``: the client's round trips and the CPU of every process from /proc. Without
``--variant`` it measures the workers' defaults alone. Prints a table; writes nothing.

A code change is measured the same way from two worktrees (`git worktree add /tmp/before REV`,
then this command in each, alternating).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bench_pipeline as bp
from workers.client import Client
from workers.fleet import FUSED, WorkerFleet
from workers.models.builders import build_tiny_classifier


@dataclass(frozen=True)
class Measured:
    variant: str
    round: int
    round_trips_ms: list[float]
    cpu_s: dict[str, float]

    def per_k(self, name: str) -> float:
        return self.cpu_s.get(name, 0.0) / len(self.round_trips_ms) * 1000


def _variants(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    """`NAME=VAR=VALUE` pairs grouped by NAME; `defaults` (no variable) when none."""
    variants: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, assignment = spec.partition("=")
        variable, _, value = assignment.partition("=")
        if not name or not variable:
            raise SystemExit(f"--variant wants NAME=VAR=VALUE, got {spec!r}")
        variants.setdefault(name, {})[variable] = value
    return variants or {"defaults": {}}


async def _measure(
    deployment: bp.Deployment,
    fleet: WorkerFleet,
    rate_per_s: float,
    warmup_s: float,
    seconds: float,
) -> tuple[list[float], dict[str, float]]:
    make = bp.tiny_requests(2000)
    async with Client(deployment.stack.config.kafka_bootstrap, deployment.topics) as client:
        await bp.burst(client, make, 500, 120)  # sessions, connections, the model
        await bp.paced(client, make, rate_per_s, warmup_s)
        before = bp.cpu_snapshot(deployment.stack_pids, fleet)
        round_trips, _ = await bp.paced(client, make, rate_per_s, seconds)
        return round_trips, bp.cpu_delta(before, bp.cpu_snapshot(deployment.stack_pids, fleet))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CPU per task at a paced rate, settings A/B")
    parser.add_argument("--layout", choices=["fused", "staged"], default="fused")
    parser.add_argument("--rate-per-s", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup-s", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE")
    options = parser.parse_args(argv)
    variants = _variants(options.variant)
    counts = {FUSED: 1} if options.layout == "fused" else {}
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-paced-") as root_name:
        root = Path(root_name)
        build_tiny_classifier(root / "repository")
        with bp.private_deployment(root, root / "repository") as deployment:
            for round_ in range(1, options.rounds + 1):
                for name, env in variants.items():
                    deployment = deployment.fresh()
                    kinds = bp.stages_of(counts)
                    with deployment.fleet(counts, {kind: env for kind in kinds}) as fleet:
                        rtt, cpu = asyncio.run(
                            _measure(
                                deployment,
                                fleet,
                                options.rate_per_s,
                                options.warmup_s,
                                options.seconds,
                            )
                        )
                    results.append(Measured(name, round_, rtt, cpu))
                    print(f"  round {round_} {name}: done", flush=True)
    print(report(results, options.layout, options.rate_per_s))


def report(results: Sequence[Measured], layout: str, rate_per_s: float) -> str:
    names = sorted({name for r in results for name in r.cpu_s}, key=lambda n: -results[0].per_k(n))
    lines = [
        f"{layout} workers, `tiny-classify`, paced at {rate_per_s:g} req/s; CPU s per 1,000 "
        "tasks by process (/proc), client round trip p50 / p99 ms",
        "",
        "| round | variant | " + " | ".join(names) + " | all | p50 / p99 ms |",
        "| ---: | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: |",
    ]
    for r in results:
        p50, _, p99 = bp.percentiles(r.round_trips_ms)
        cells = " | ".join(f"{r.per_k(n):.2f}" for n in names)
        total = sum(r.per_k(n) for n in names)
        lines.append(f"| {r.round} | {r.variant} | {cells} | {total:.2f} | {p50:.1f} / {p99:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
