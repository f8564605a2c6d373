"""Polls the model repository for version folders that appear, and loads each once.

A version is found when `<model>/<version>/model.onnx` exists; write it elsewhere and
rename the folder into place, so a half-copied file is never read. A version seen once is
not retried (fix it under a new version number); one unloaded by command stays unloaded.
"""

from __future__ import annotations

import asyncio
import logging

from workers.component import Component
from workers.models.lifecycle import ModelLifecycle
from workers.tasks import TaskSet

log = logging.getLogger(__name__)


class RepositoryWatcher(Component):
    def __init__(
        self, lifecycle: ModelLifecycle, interval_s: float, canary_fraction: float
    ) -> None:
        self.lifecycle = lifecycle
        self.interval_s = interval_s
        self.canary_fraction = canary_fraction
        self._seen: dict[str, set[int]] = {}
        self._tasks = TaskSet(self._crashed)
        self._stopping = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("RepositoryWatcher already started")
        self._started = True
        for name, config in self.lifecycle.repository.models.items():
            self._seen[name] = set(config.available_versions())
        if self.interval_s > 0:
            self._tasks.start(self._loop(), "model-repository-watcher")

    async def stop(self) -> None:
        self._stopping.set()
        await self._tasks.cancel()
        self._started = False

    async def poll(self) -> list[tuple[str, int]]:
        """Load every version that appeared since the last poll, oldest first."""
        found = []
        for name, config in self.lifecycle.repository.models.items():
            seen = self._seen.setdefault(name, set())
            for version in config.available_versions():
                if version in seen:
                    continue
                seen.add(version)
                found.append((name, version))
                role = "canary" if self.canary_fraction > 0 else "serve"
                await self.lifecycle.load(name, version, role, None, source="folder")
        return found

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            if not self._stopping.is_set():
                await self.poll()

    def _crashed(self, error: BaseException) -> None:
        log.error("model repository watcher crashed: %s", error)
