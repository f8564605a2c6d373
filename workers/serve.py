"""`conveyor serve`: the whole pipeline on one host, as processes per stage.

Each process is one `conveyor worker <stage>` (its own consumer-group member, log file and
/metrics port, announced in Redis as today), started and restarted by this supervisor. The
defaults share the host's cores out among the stages; what each process may use is set in its
environment so processes do not fight over cores: one BLAS thread, a tokenizer pool of its
share of the cores, ONNX Runtime intra-op threads of the CPU inference share, and each GPU
inference process pinned to one device (`CUDA_VISIBLE_DEVICES`, round robin).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.component import Component
from workers.fleet import FUSED, STAGES, WorkerFleet, WorkerProcess
from workers.kafka.admin import partitions_of_each
from workers.names import Topics
from workers.settings import Settings

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 1.0
_RESTART_BACKOFF_S = 5.0
"""A process that exits is started again, at most once per this long (a crash loop, e.g. an
unreachable broker, must not spin)."""


@dataclass(frozen=True)
class HostPlan:
    """How many processes of each stage run on this host, and what each may use."""

    cores: int
    preprocess: int
    inference: int
    postprocess: int
    gpus: tuple[int, ...] = ()
    """Devices the inference processes are pinned to, round robin; empty: CPU inference."""
    concurrent_runs: int = 2
    fused: int = 0
    """Fused workers (the three stages in one process) instead of processes per stage."""

    def __post_init__(self) -> None:
        counts = (
            (self.fused,) if self.fused else (self.preprocess, self.inference, self.postprocess)
        )
        if min(self.cores, *counts) < 1:
            raise ValueError(f"every count must be >= 1: {self}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of worker process the plan runs: the three stages, or fused workers."""
        return (FUSED,) if self.fused else STAGES

    def count(self, stage: str) -> int:
        counts = {
            "preprocess": self.preprocess,
            "inference": self.inference,
            "postprocess": self.postprocess,
            FUSED: self.fused,
        }
        return counts[stage]

    @property
    def widest(self) -> int:
        """The most processes of one kind: the partitions each topic they read needs."""
        return max(self.count(kind) for kind in self.kinds)

    @property
    def cpu_threads(self) -> int:
        """Tokenizer threads of one CPU-stage (or fused) process: its share of the cores."""
        processes = self.fused or self.preprocess + self.inference + self.postprocess
        return max(1, self.cores // processes)

    @property
    def inference_threads(self) -> int:
        """ORT intra-op threads of one run of a CPU inference (or fused) process: the cores
        the CPU stages leave, shared among the model processes' concurrent runs."""
        if self.fused:
            return max(1, self.cores // (self.fused * self.concurrent_runs))
        left = max(1, self.cores - self.preprocess - self.postprocess)
        return max(1, left // (self.inference * self.concurrent_runs))

    def environment(self, stage: str, index: int) -> dict[str, str]:
        """What process `index` of `stage` is told through its environment."""
        threads = {"OMP_NUM_THREADS": "1"}  # numpy's BLAS: the stages' arrays are small
        tokenizes, runs_model = stage in ("preprocess", FUSED), stage in ("inference", FUSED)
        if tokenizes:
            threads["RAYON_NUM_THREADS"] = str(self.cpu_threads)  # the tokenizer's pool
            # A fused process with its model on the CPU tokenizes on its own thread: the
            # model's threads have its cores (`service.tokenizer_threads`).
            parallel = self.cpu_threads > 1 and not (stage == FUSED and not self.gpus)
            threads["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
        if runs_model and not self.gpus:
            threads["CONVEYOR_RUNTIME__INTRA_OP_THREADS"] = str(self.inference_threads)
        # What the user set for every process stays theirs.
        env = {name: value for name, value in threads.items() if name not in os.environ}
        if runs_model and self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[index % len(self.gpus)])
            env["CONVEYOR_RUNTIME__DEVICE_ID"] = "0"  # the one device it sees
        return env


def instance_prefix(settings: Settings, hostname: str | None = None) -> str:
    """`<hostname>-`, and the lane pool's lanes where `worker.lanes` makes one
    (`<hostname>-realtime-`): two `serve`s of one host, one per lane pool, share preprocess's
    consumer group (and a transactional id's prefix), so their instance ids must differ."""
    host = hostname if hostname is not None else socket.gethostname()
    lanes = settings.worker.lanes
    return f"{host}-{'+'.join(lanes)}-" if lanes else f"{host}-"


def plan_host(
    cores: int,
    gpus: Sequence[int] = (),
    *,
    preprocess: int | None = None,
    inference: int | None = None,
    postprocess: int | None = None,
    concurrent_runs: int = 2,
    fused: int = 0,
) -> HostPlan:
    """Defaults: a quarter of the cores each to preprocess and postprocess processes (their
    cost per task is alike: decoding, frames, Kafka), and one inference process per GPU (two
    runs in flight keep one busy) or, without a GPU, a quarter of the cores in processes of
    several threads. What is left serves the broker and Redis where they share the host.
    `fused`: that many fused workers instead, sharing the cores (and GPUs, round robin)."""
    if fused:
        return HostPlan(
            cores, 0, 0, 0, gpus=tuple(gpus), concurrent_runs=concurrent_runs, fused=fused
        )
    quarter = max(1, cores // 4)
    return HostPlan(
        cores=cores,
        preprocess=preprocess or quarter,
        inference=inference or (len(gpus) if gpus else max(1, quarter // 2)),
        postprocess=postprocess or quarter,
        gpus=tuple(gpus),
        concurrent_runs=concurrent_runs,
    )


def visible_gpus() -> tuple[int, ...]:
    """GPUs this host gives its processes: CUDA_VISIBLE_DEVICES where set, else every device
    NVML counts (none without the `gpu` extra or a driver)."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return tuple(int(d) for d in pinned.split(",") if d.strip().isdigit())
    try:
        import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]

        pynvml.nvmlInit()
        return tuple(range(pynvml.nvmlDeviceGetCount()))
    except Exception:  # no package, no driver, no device: all mean "no GPU here"
        return ()


async def thin_topics(settings: Settings, plan: HostPlan) -> list[str]:
    """Topics with fewer partitions than the processes reading them: the extra processes of
    that stage would hold none of them and idle."""
    topics = Topics(settings.kafka.topic_prefix)
    # A fused worker reads what preprocess reads.
    readers = {
        topic: stage
        for stage in plan.kinds
        for topic in topics.inputs_of("preprocess" if stage == FUSED else stage)
    }
    counts = await partitions_of_each(settings.kafka, list(readers))
    found = []
    for topic, stage in readers.items():
        if len(counts[topic]) < plan.count(stage):
            found.append(
                f"{topic}: {len(counts[topic])} partitions for {plan.count(stage)} {stage} "
                "processes (add partitions: kafka-topics --alter --partitions N)"
            )
    return found


class Supervisor(Component):
    """Starts the plan's processes, starts again any that exits, and stops them all (each gets
    the worker's own drain on SIGTERM: in-flight batches finish, offsets commit)."""

    def __init__(self, fleet: WorkerFleet, plan: HostPlan, grace_s: float) -> None:
        self.fleet = fleet
        self.plan = plan
        self.grace_s = grace_s
        self.restarts = 0
        self._started_at: dict[str, float] = {}
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        for stage in self.plan.kinds:
            for index in range(self.plan.count(stage)):
                for worker in self.fleet.start(stage, 1, self.plan.environment(stage, index)):
                    self._started_at[worker.instance_id] = time.monotonic()

    async def stop(self) -> None:
        """Every process signalled once, then waited for (killed after `grace_s`)."""
        self._stopping.set()
        await asyncio.to_thread(self.fleet.stop_all, signal.SIGTERM, self.grace_s)

    def request_stop(self) -> None:
        """From a signal handler: `run()` returns."""
        self._stopping.set()

    async def run(self) -> None:
        """Until `request_stop()`: start again what exits."""
        while not self._stopping.is_set():
            for worker in list(self.fleet.workers):
                if not worker.alive:
                    self._restart(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _CHECK_EVERY_S)

    def _restart(self, worker: WorkerProcess) -> None:
        since = time.monotonic() - self._started_at.get(worker.instance_id, 0.0)
        if since < _RESTART_BACKOFF_S:
            return
        log.warning(
            "%s exited (code %s); starting it again (log: %s)",
            worker.instance_id,
            worker.process.returncode,
            worker.log_path,
        )
        replacement = self.fleet.restart(worker)
        self._started_at[replacement.instance_id] = time.monotonic()
        self.restarts += 1


async def serve(settings: Settings, plan: HostPlan, log_dir: Path) -> int:
    """Run the plan until SIGTERM or SIGINT."""
    from workers.service import ensure_pipeline_topics

    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"partitions": max(settings.kafka.partitions, plan.widest)}
            )
        }
    )
    await ensure_pipeline_topics(settings)
    for warning in await thin_topics(settings, plan):
        log.warning("%s", warning)
    # Children read the same settings from the environment; new topics get enough partitions.
    env = {"CONVEYOR_KAFKA__PARTITIONS": str(settings.kafka.partitions)}
    env = {k: v for k, v in env.items() if k not in os.environ}
    fleet = WorkerFleet(env, log_dir, instance_prefix=instance_prefix(settings), own_sessions=True)
    supervisor = Supervisor(fleet, plan, grace_s=settings.worker.shutdown_grace_s + 10)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    async with supervisor:
        devices = f"GPUs {','.join(map(str, plan.gpus))}" if plan.gpus else "CPU"
        processes = (
            f"{plan.fused} fused ({devices})"
            if plan.fused
            else f"{plan.preprocess} preprocess, {plan.inference} inference ({devices}), "
            f"{plan.postprocess} postprocess"
        )
        print(f"serving: {processes} on {plan.cores} cores; logs in {log_dir}", flush=True)
        await supervisor.run()
    print(f"stopped ({supervisor.restarts} restarts)", flush=True)
    return 0
