"""`conveyor gateway` with `gateway.processes` > 1: several gateway processes, one pair of ports.

One Python process answers ~3,000-4,000 requests a second on a core of its own (BENCHMARKS.md,
Gateway); a host with more cores answers more with more processes. A gateway keeps nothing
between requests that another needs (each process has its own Kafka client and reply topic;
API keys, asynchronous tasks and kept results live in Redis), so N processes are N gateways
that share the listening ports: each binds them with SO_REUSEPORT (`gateway.reuse_port`) and
the kernel spreads new connections among them.

This supervisor holds the ports (bound, not listening, so that nothing else takes them and a
configured 0 becomes one free port that every process shares), starts the processes
(instance ids `<instance_id>-<n>`, their metrics in one multiprocess directory: see
`metrics`), starts again one that exits, and on SIGTERM or Ctrl-C passes the signal on, so
that each drains its requests in progress, and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.multiprocess import mark_process_dead

from workers.component import Component
from workers.exits import ExitCode
from workers.gateway.core import instance_name
from workers.gateway.errors import port_taken
from workers.settings import Settings

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 0.5
_RESTART_BACKOFF_S = 5.0
"""A process that exits is started again at most once per this long (a crash loop, e.g. an
unreachable broker, must not spin)."""


@dataclass
class _Child:
    index: int
    instance_id: str
    process: subprocess.Popen[bytes]
    started_s: float


class GatewayProcesses(Component):
    """`processes` gateway processes on shared ports from `start()` to `stop()`; see the
    module."""

    def __init__(self, settings: Settings, http_port: int, grpc_port: int, metrics_dir: str):
        self.settings = settings
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_dir = metrics_dir
        self.restarts = 0
        self._children: list[_Child] = []
        self._stopping = asyncio.Event()
        self._exit_code = ExitCode.OK

    def _spawn(self, index: int) -> _Child:
        config = self.settings.gateway
        instance_id = f"{instance_name(config.instance_id)}-{index}"
        env = {
            **os.environ,
            "CONVEYOR_GATEWAY__PROCESSES": "1",
            "CONVEYOR_GATEWAY__REUSE_PORT": "true",
            "CONVEYOR_GATEWAY__HTTP_PORT": str(self.http_port),
            "CONVEYOR_GATEWAY__GRPC_PORT": str(self.grpc_port),
            "CONVEYOR_GATEWAY__INSTANCE_ID": instance_id,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        # Logs go where the supervisor's go; a Ctrl-C at the terminal reaches the supervisor
        # only (own sessions), which passes one SIGTERM on.
        process = subprocess.Popen(
            [sys.executable, "-m", "workers", "gateway"],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return _Child(index, instance_id, process, time.monotonic())

    async def start(self) -> None:
        self._children = [self._spawn(i) for i in range(self.settings.gateway.processes)]

    def request_stop(self) -> None:
        """From a signal handler: `run()` returns."""
        self._stopping.set()

    async def run(self) -> ExitCode:
        """Until `request_stop()` (or a process that cannot bind its ports): start again
        whatever exits."""
        while not self._stopping.is_set():
            for position, child in enumerate(self._children):
                code = child.process.poll()
                if code is None:
                    continue
                if code == ExitCode.PORT_TAKEN:  # another program holds a port: no retry
                    self._exit_code = ExitCode.PORT_TAKEN
                    self._stopping.set()
                    break
                if time.monotonic() - child.started_s < _RESTART_BACKOFF_S:
                    continue
                log.warning("gateway %s exited (code %s); starting again", child.instance_id, code)
                mark_process_dead(child.process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                self._children[position] = self._spawn(child.index)
                self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _CHECK_EVERY_S)
        return self._exit_code

    async def stop(self) -> None:
        """Each process signalled once (its drain: `worker.shutdown_grace_s`), then waited
        for; killed when it outlasts the grace period by 10 s."""
        grace_s = self.settings.worker.shutdown_grace_s + 10
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                await asyncio.to_thread(child.process.wait, grace_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
                await asyncio.to_thread(child.process.wait)


@contextlib.contextmanager
def held_port(host: str, port: int, setting: str) -> Iterator[int]:
    """`port` (or a free one, for 0) bound with SO_REUSEPORT and not listening: the gateway
    processes bind beside it; nothing without SO_REUSEPORT can take it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise port_taken(setting, port) from None
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def run_gateway_processes(settings: Settings) -> int:
    """Serve with `gateway.processes` processes until SIGTERM or SIGINT."""
    config = settings.gateway
    metrics_dir = tempfile.mkdtemp(prefix="conveyor-gateway-metrics-")
    try:
        with (
            held_port(config.http_host, config.http_port, "gateway.http_port") as http_port,
            held_port(config.http_host, config.grpc_port, "gateway.grpc_port") as grpc_port,
        ):
            processes = GatewayProcesses(settings, http_port, grpc_port, metrics_dir)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, processes.request_stop)
            async with processes:
                log.info(
                    "gateway: %d processes on http %d grpc %d",
                    config.processes,
                    http_port,
                    grpc_port,
                )
                code = await processes.run()
            log.info("gateway processes stopped (%d restarts)", processes.restarts)
            return int(code)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
