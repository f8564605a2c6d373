"""Start `conveyor gateway` as a process of its own (the e2e tests and the benchmark).

The gateway runs in its own process, as in production, never in the caller's: its gRPC
module and tritonclient's both register `inference.*` protobuf messages, which cannot share
one process's descriptor pool.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.settings import Settings

_READY = re.compile(r"gateway ready: http (\d+) grpc (\d+) \(instance ([^,]+),")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The gateway processes a supervisor started (`gateway.processes` > 1); none for
        a gateway of one process."""
        pid = self.process.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []


def gateway_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment (settings) of a gateway on free loopback ports serving the pipeline
    of `settings`."""
    return {
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "REDIS_URL": settings.redis.url,
        "CONVEYOR_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CONVEYOR_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "CONVEYOR_MODEL_REPOSITORY": str(settings.model_repository),
        "CONVEYOR_GATEWAY__HTTP_HOST": "127.0.0.1",
        "CONVEYOR_GATEWAY__HTTP_PORT": "0",
        "CONVEYOR_GATEWAY__GRPC_PORT": "0",
        "CONVEYOR_GATEWAY__INSTANCE_ID": "gw-test",
        "CONVEYOR_LOG_LEVEL": "INFO",
        **extra,
    }


def ready_instances(log: str) -> dict[str, tuple[int, int]]:
    """Every gateway process whose "ready" line is in `log`: instance id -> (HTTP port,
    gRPC port)."""
    return {m.group(3): (int(m.group(1)), int(m.group(2))) for m in _READY.finditer(log)}


@contextlib.contextmanager
def running_gateway(
    env: dict[str, str], log_path: Path, timeout_s: float = 60
) -> Iterator[GatewayProcess]:
    """A gateway process, until its log says both listeners are bound (with
    `CONVEYOR_GATEWAY__PROCESSES` > 1: in every process); SIGTERM at exit."""
    processes = int(env.get("CONVEYOR_GATEWAY__PROCESSES", "1"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers", "gateway"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while len(ready := ready_instances(log_path.read_text(errors="replace"))) < processes:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        http_port, grpc_port = next(iter(ready.values()))
        yield GatewayProcess(process, log_path, http_port, grpc_port)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
