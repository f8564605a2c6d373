"""Start and stop whole worker processes: the demo, the benchmarks and the e2e tests use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("preprocess", "inference", "postprocess")
FUSED = "fused"
"""The three stages in one worker process (`stages.fused`)."""
# Several workers share this host: each takes a free loopback port for /metrics and health
# and announces it in Redis (`conveyor top` reads it there).
_LOCAL = {
    "CONVEYOR_OBSERVABILITY__METRICS_PORT": "0",
    "CONVEYOR_OBSERVABILITY__METRICS_HOST": "127.0.0.1",
}


@dataclass
class WorkerProcess:
    stage: str
    process: subprocess.Popen[bytes]
    log_path: Path
    instance_id: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class WorkerFleet:
    """Worker processes of every stage, configured by environment variables (the settings)."""

    env: dict[str, str]
    """CONVEYOR_* / KAFKA_BOOTSTRAP / REDIS_URL for every worker."""
    log_dir: Path
    instance_prefix: str = ""
    """Before each `<stage>-<n>` instance id: a host's name where several hosts serve (the
    id names the transactional producer, which must be unique in the cluster)."""
    own_sessions: bool = False
    """Each worker in a session of its own, as a service manager starts them: a Ctrl-C at the
    terminal reaches the parent only, which stops each worker with one signal (a second one
    makes a worker exit at once), and the kernel's autogroups share the CPU per worker. Off
    for the tests, demo and benchmarks, whose workers share the caller's session."""
    workers: list[WorkerProcess] = field(default_factory=list)
    _started: dict[str, int] = field(default_factory=dict)

    def start(
        self, stage: str, count: int = 1, extra_env: dict[str, str] | None = None
    ) -> list[WorkerProcess]:
        if stage not in (*STAGES, FUSED):
            raise ValueError(f"stage must be one of {(*STAGES, FUSED)}, got {stage!r}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for _ in range(count):
            self._started[stage] = self._started.get(stage, 0) + 1
            instance_id = f"{self.instance_prefix}{stage}-{self._started[stage] - 1}"
            worker = self._spawn(stage, instance_id, extra_env or {})
            self.workers.append(worker)
            started.append(worker)
        return started

    def restart(self, worker: WorkerProcess) -> WorkerProcess:
        """A new process in the place of a dead or stopped one, with the same instance id (so
        an exactly-once worker fences what its predecessor left open)."""
        if worker.alive:
            raise RuntimeError(f"{worker.instance_id} is still running")
        replacement = self._spawn(worker.stage, worker.instance_id, worker.extra_env)
        self.workers[self.workers.index(worker)] = replacement
        return replacement

    def _spawn(self, stage: str, instance_id: str, extra_env: dict[str, str]) -> WorkerProcess:
        log_path = self.log_dir / f"{instance_id}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers", "worker", stage],
                env={
                    **os.environ,
                    **_LOCAL,
                    "CONVEYOR_WORKER__INSTANCE_ID": instance_id,
                    **self.env,
                    **extra_env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.own_sessions,
            )
        return WorkerProcess(stage, process, log_path, instance_id, extra_env)

    def start_all(self, per_stage: int = 1) -> None:
        for stage in STAGES:
            self.start(stage, per_stage)

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until every worker has joined its group and holds partitions (its log says so)."""
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            while ": assigned [" not in worker.log():
                if not worker.alive:
                    raise RuntimeError(f"{worker.stage} worker exited:\n{worker.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{worker.stage} worker not ready:\n{worker.log()[-3000:]}")
                time.sleep(0.1)

    def stop(self, worker: WorkerProcess, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Signal one worker and wait for it; returns its exit code."""
        if worker.alive:
            worker.process.send_signal(sig)
        try:
            return worker.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            return worker.process.wait()

    def stop_all(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.process.send_signal(sig)
        for worker in self.workers:
            # Signalled once: a second SIGTERM or SIGINT makes a worker exit at once.
            try:
                worker.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self.workers.clear()

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
