"""Model versions in service: load beside, check, warm up, switch atomically, retire, roll back.

A swap never stops serving. The new version is loaded on the loader thread while the current
one keeps running batches; it must meet every pipeline's signature and pass a warm-up batch;
then the routing table is replaced in one assignment. Batches hold a lease on the version
they run on, so a retired version keeps its session until its last running batch ends, and
is released then. A failed load changes nothing but the events it reports.

Memory budget: when the estimated memory of the loaded versions plus the new one exceeds
`memory_budget_bytes`, the versions the swap would retire are unloaded first. Intake pauses
for that window: `wait_open()` holds new batches (so the stage stops taking records once its
in-flight bound is reached), the old version's running batches finish, it is released, the
new one loads. The pause is bounded by `swap_pause_max_s` for the drain plus the load itself;
if the new version fails, the old one is loaded back before intake resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

import onnx
import onnxruntime as ort

from schemas import ContractError, ErrorCode
from workers.component import Component
from workers.models.events import EventKind, ModelEvents
from workers.models.repository import ModelConfig, ModelRepository, ModelVersion
from workers.models.routing import RoutingTable
from workers.models.runtime import Array, ModelRuntime, OnnxModel
from workers.models.signature import SignatureError, check_model
from workers.models.warmup import WarmupError, check_outputs, sample_of, synthetic_feeds
from workers.settings import ModelSettings

log = logging.getLogger(__name__)

Role = str
"""serve (become current), canary or shadow."""
ROLES = ("serve", "canary", "shadow")


@dataclass
class LoadedVersion:
    """A session in service, with the count of batches running on it."""

    version: ModelVersion
    model: OnnxModel | None
    estimated_bytes: int
    leases: int = 0
    retired: bool = False

    @property
    def number(self) -> int:
        return self.version.version


@dataclass
class _ModelState:
    config: ModelConfig
    table: RoutingTable
    loaded: dict[int, LoadedVersion] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    """Earlier current versions, most recent last: what `rollback` returns to."""
    sample: dict[str, Array] | None = None


class LoadRefused(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelLifecycle(Component):
    """Every model's versions in one inference worker, and where each task goes."""

    def __init__(
        self,
        repository: ModelRepository,
        runtime: ModelRuntime,
        settings: ModelSettings,
        events: ModelEvents,
    ) -> None:
        self.repository = repository
        self.runtime = runtime
        self.settings = settings
        self.events = events
        self._models: dict[str, _ModelState] = {}
        self._swap_lock: asyncio.Lock | None = None
        self._open: asyncio.Event | None = None
        self._lease_ended: asyncio.Event | None = None
        self._started = False

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load, check and warm every served version; a model with none that loads fails."""
        if self._started:
            raise RuntimeError("ModelLifecycle already started")
        self._started = True
        self._swap_lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self._lease_ended = asyncio.Event()
        for config in self.repository.models.values():
            state = _ModelState(config, RoutingTable(config.latest_version))
            self._models[config.name] = state
            for number in config.served_versions:
                try:
                    state.loaded[number] = await self._prepare(state, number, "startup")
                except LoadRefused:
                    continue
            if not state.loaded:
                raise RuntimeError(f"model {config.name!r}: no served version loads; see the log")
            state.table = RoutingTable(max(state.loaded))
            self.events.routing(config.name, state.table)

    async def stop(self) -> None:
        for state in self._models.values():
            for loaded in state.loaded.values():
                loaded.model = None
            state.loaded.clear()
        self._started = False

    # ---- serving ----------------------------------------------------------------------

    async def wait_open(self) -> None:
        """Returns at once unless a budget swap has paused intake (then when it ends)."""
        if self._open is not None and not self._open.is_set():
            await self._open.wait()

    def table(self, model: str) -> RoutingTable:
        return self._state(model).table

    def route(self, model: str, task_id: str, stamped: int | None) -> int:
        """The version a task runs on: its pin, else what the policy decides."""
        state = self._state(model)
        if stamped is None:
            return state.table.route(task_id)
        loaded = state.loaded.get(stamped)
        if loaded is None or loaded.retired:
            raise ContractError(
                ErrorCode.UNKNOWN_MODEL_VERSION,
                f"model {model!r} version {stamped} is not served here; "
                f"served: {sorted(self.live_versions(model))}",
                "model_version",
            )
        return stamped

    def acquire(self, model: str, version: int) -> LoadedVersion:
        """A lease on a live version (synchronous: routing and leasing see one table)."""
        loaded = self._state(model).loaded.get(version)
        if loaded is None or loaded.retired or loaded.model is None:
            raise ContractError(
                ErrorCode.UNKNOWN_MODEL_VERSION,
                f"model {model!r} version {version} is not loaded",
                "model_version",
            )
        loaded.leases += 1
        return loaded

    def release(self, loaded: LoadedVersion) -> None:
        loaded.leases -= 1
        if loaded.leases > 0:
            return
        if loaded.retired and loaded.model is not None:
            loaded.model = None  # the session goes with its last reference
            self._forget(loaded)
        if self._lease_ended is not None:
            self._lease_ended.set()

    def remember(self, model: str, feeds: dict[str, Array]) -> None:
        """Keep a few rows of a served batch: the next warm-up runs on real data."""
        self._state(model).sample = sample_of(feeds, self.settings.warmup_rows)

    def live_versions(self, model: str) -> set[int]:
        return {n for n, v in self._state(model).loaded.items() if not v.retired}

    # ---- commands ---------------------------------------------------------------------

    async def load(
        self,
        model: str,
        version: int,
        role: Role = "serve",
        fraction: float | None = None,
        source: str = "control",
        push_history: bool = True,
    ) -> bool:
        """Bring `version` into `role`; False (with an event saying why) when refused."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        state = self._state(model)
        async with self._lock():
            try:
                await self._ensure_loaded(state, version, role, source)
            except LoadRefused:
                return False
            self._assign(state, version, role, fraction, push_history)
            await self._announce(state, version, role, source)
            await self._retire_unretained(state, source)
        return True

    async def unload(self, model: str, version: int, source: str = "control") -> bool:
        state = self._state(model)
        async with self._lock():
            if version == state.table.current:
                await self.events.record(
                    EventKind.REFUSED,
                    model,
                    version,
                    source=source,
                    reason="serving",
                    message="the current version cannot be unloaded; load or roll back first",
                )
                return False
            state.table = state.table.without(version)
            self.events.routing(model, state.table)
            loaded = state.loaded.get(version)
            if loaded is not None:
                await self._retire(state, loaded, source)
        return True

    async def rollback(self, model: str, source: str = "control") -> bool:
        """Back to the version that was current before this one, loading it if it was released."""
        state = self._state(model)
        available = set(state.config.available_versions())
        while state.history:
            previous = state.history.pop()
            if previous != state.table.current and previous in available:
                return await self.load(model, previous, "serve", None, source, push_history=False)
        await self.events.record(
            EventKind.REFUSED,
            model,
            state.table.current,
            source=source,
            reason="rollback",
            message="no earlier version to roll back to",
        )
        return False

    # ---- steps ------------------------------------------------------------------------

    async def _ensure_loaded(
        self, state: _ModelState, version: int, role: Role, source: str
    ) -> None:
        loaded = state.loaded.get(version)
        if loaded is not None and not loaded.retired and loaded.model is not None:
            return
        need = self._estimate(state.config, version)
        budget = self.settings.memory_budget_bytes
        if budget and self._resident() + need > budget:
            await self._swap_within_budget(state, version, role, source)
        else:
            state.loaded[version] = await self._prepare(state, version, source)

    async def _swap_within_budget(
        self, state: _ModelState, version: int, role: Role, source: str
    ) -> None:
        """Unload what the swap retires first, with intake paused; reload it on failure."""
        future = self._next_table(state.table, version, role, None).versions()
        doomed = [v for n, v in state.loaded.items() if n not in future and not v.retired]
        assert self._open is not None
        self._open.clear()
        paused_at = time.monotonic()
        try:
            await self._drain(state, doomed)
            for loaded in doomed:
                loaded.model = None
            try:
                state.loaded[version] = await self._prepare(state, version, source)
            except LoadRefused:
                for loaded in doomed:  # the old version serves again
                    loaded.model = (await self._prepare(state, loaded.number, "restore")).model
                raise
            for loaded in doomed:
                loaded.retired = True
                self._forget(loaded)
        finally:
            self._open.set()
            self.events.paused(state.config.name, time.monotonic() - paused_at)

    async def _drain(self, state: _ModelState, doomed: list[LoadedVersion]) -> None:
        assert self._lease_ended is not None
        try:
            async with asyncio.timeout(self.settings.swap_pause_max_s):
                while any(v.leases for v in doomed):
                    self._lease_ended.clear()
                    await self._lease_ended.wait()
        except TimeoutError:
            raise await self._refuse(
                state,
                doomed[0].number if doomed else 0,
                "memory",
                f"over the memory budget and the old version still ran batches after "
                f"{self.settings.swap_pause_max_s}s",
                "budget",
            ) from None

    async def _prepare(self, state: _ModelState, version: int, source: str) -> LoadedVersion:
        """Check the graph, load a session, warm it up; LoadRefused (reported) otherwise."""
        config = state.config
        target = ModelVersion(config, version)
        try:
            graph = await self.runtime.off_loop(_read_graph, str(target.path))
            problems = [
                f"pipeline {name!r}: {problem}"
                for name, signature in config.signatures()
                for problem in check_model(
                    signature, graph, ort.get_available_providers(), ort.__version__
                )
            ]
            if problems:
                raise SignatureError(f"model {config.name!r} version {version}", problems)
            model = await self.runtime.load(target)
            if self.settings.warmup:
                await self._warm(state, model)
        except SignatureError as exc:
            raise await self._refuse(state, version, "signature", str(exc), source) from exc
        except WarmupError as exc:
            message = f"model {config.name!r} version {version} failed warm-up: {exc}"
            raise await self._refuse(state, version, "warmup", message, source) from exc
        except Exception as exc:  # a file that does not parse, a session that fails
            message = f"model {config.name!r} version {version}: {type(exc).__name__}: {exc}"
            raise await self._refuse(state, version, "load", message, source) from exc
        loaded = LoadedVersion(target, model, self._estimate(config, version))
        await self.events.record(EventKind.LOADED, config.name, version, source=source)
        return loaded

    async def _warm(self, state: _ModelState, model: OnnxModel) -> None:
        feeds = state.sample or synthetic_feeds(state.config, self.settings.warmup_rows)
        try:
            outputs = await self.runtime.run(model, feeds)
        except Exception as exc:
            raise WarmupError(f"{type(exc).__name__}: {exc}") from exc
        check_outputs(state.config, feeds, outputs)

    async def _refuse(
        self, state: _ModelState, version: int, reason: str, message: str, source: str
    ) -> LoadRefused:
        await self.events.record(
            EventKind.REFUSED,
            state.config.name,
            version,
            source=source,
            reason=reason,
            message=message,
        )
        return LoadRefused(reason, message)

    def _assign(
        self,
        state: _ModelState,
        version: int,
        role: Role,
        fraction: float | None,
        push_history: bool,
    ) -> None:
        if role == "serve" and push_history and state.table.current != version:
            state.history.append(state.table.current)
        table = self._next_table(state.table, version, role, fraction)
        state.table = table  # one assignment: a batch routes on the old table or the new
        self.events.routing(state.config.name, table)

    def _next_table(
        self, table: RoutingTable, version: int, role: Role, fraction: float | None
    ) -> RoutingTable:
        if role == "serve":
            return table.promoted(version)
        table = table.without(version)
        if role == "canary":
            share = self.settings.canary_fraction if fraction is None else fraction
            return replace(table, canary=version, canary_fraction=share)
        share = self.settings.shadow_fraction if fraction is None else fraction
        return replace(table, shadow=version, shadow_fraction=share)

    async def _announce(self, state: _ModelState, version: int, role: Role, source: str) -> None:
        kind = {"serve": EventKind.SWITCHED, "canary": EventKind.CANARY}.get(role, EventKind.SHADOW)
        await self.events.record(kind, state.config.name, version, source=source)

    def _kept(self, state: _ModelState) -> set[int]:
        """Versions kept loaded: those routed to, plus (policy `latest: N`) the N-1 most
        recent earlier current versions, or (specific, all) everything loaded."""
        routed = state.table.versions()
        if state.config.retain is None:
            return routed | set(state.loaded)
        recent = [v for v in reversed(state.history) if v not in routed]
        return routed | set(recent[: state.config.retain - 1])

    async def _retire_unretained(self, state: _ModelState, source: str) -> None:
        keep = self._kept(state)
        for number, loaded in list(state.loaded.items()):
            if number not in keep and not loaded.retired:
                await self._retire(state, loaded, source)

    async def _retire(self, state: _ModelState, loaded: LoadedVersion, source: str) -> None:
        loaded.retired = True
        await self.events.record(EventKind.RETIRED, state.config.name, loaded.number, source=source)
        if loaded.leases == 0:
            loaded.model = None
            self._forget(loaded)

    def _forget(self, loaded: LoadedVersion) -> None:
        state = self._models.get(loaded.version.name)
        if state is not None and state.loaded.get(loaded.number) is loaded:
            del state.loaded[loaded.number]
        log.info("released %s v%d", loaded.version.name, loaded.number)

    def _resident(self) -> int:
        return sum(
            v.estimated_bytes
            for state in self._models.values()
            for v in state.loaded.values()
            if v.model is not None
        )

    def _estimate(self, config: ModelConfig, version: int) -> int:
        """Session memory estimated from the files of the version (weights dominate)."""
        folder = config.version_dir(version)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return int(size * self.settings.memory_overhead_ratio)

    def _state(self, model: str) -> _ModelState:
        try:
            return self._models[model]
        except KeyError:
            raise ContractError(
                ErrorCode.UNKNOWN_MODEL_VERSION,
                f"model {model!r} is not served here; known: {sorted(self._models)}",
                "model_name",
            ) from None

    def _lock(self) -> asyncio.Lock:
        if self._swap_lock is None:
            raise RuntimeError("ModelLifecycle is not started")
        return self._swap_lock


def _read_graph(path: str) -> onnx.ModelProto:
    # Weights stay on disk: the check reads only the graph's declarations.
    return onnx.load(path, load_external_data=False)
