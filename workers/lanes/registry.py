"""The tenant registry: each tenant's policy (lane, weight, rate quota, in-flight cap, default
deadline) in one Redis hash, written by `conveyor tenants set`, read by every worker.

`TenantRegistry` is the store (the CLI's view). `TenantDirectory` is the workers' view: a
local copy refreshed every `lanes.refresh_interval_s`, so the scheduler's per-record lookups
are plain dict reads, and a Redis outage leaves workers on the last policies they saw.

Wire format: one JSON object per tenant. Readers ignore keys they do not know and fill keys
that are missing with the defaults, so a rolling upgrade may add a field without older
workers dropping the tenant's whole policy; `TenantRegistry.set` merges at the JSON level,
so an older CLI does not erase a field it does not know either.

No change counter is stored: a refresh is one HGETALL of small entries per interval, and a
counter would need a reserved field in a hash documented as tenant -> policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from workers.component import Component
from workers.lanes.rate import bucket_size
from workers.names import LANES, TENANT_RE, RedisKeys
from workers.settings import LaneSettings
from workers.tasks import TaskSet

log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """A tenant policy (or tenant name) that cannot be stored; the message names the field
    and the bad value."""


@dataclass(frozen=True)
class TenantPolicy:
    """What one tenant is granted. Zero means "the default" wherever a field allows it."""

    lane: str = "standard"
    """Priority class, one of `workers.names.LANES`."""
    weight: float = 1.0
    """Share of its lane's capacity relative to the lane's other tenants (> 0)."""
    rate_per_s: float = 0.0
    """Sustained requests per second across every replica; 0: unlimited."""
    burst: int = 0
    """Requests admitted at once from an idle bucket; 0: max(1, ceil(rate_per_s))."""
    max_in_flight: int = 0
    """Tasks admitted and not yet final; 0: `limits.max_pending_tasks_per_tenant`."""
    deadline_ms: int = 0
    """Relative deadline given to requests that carry none; 0: none."""

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise PolicyError(f"lane must be one of {', '.join(LANES)}, got {self.lane!r}")
        _check_number("weight", self.weight, positive=True)
        _check_number("rate_per_s", self.rate_per_s, positive=False)
        for name in ("burst", "max_in_flight", "deadline_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"{name} must be an integer >= 0, got {value!r}")
        # Stored floats stay floats: an int weight from JSON or argparse is the same policy.
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "rate_per_s", float(self.rate_per_s))

    @property
    def limited(self) -> bool:
        return self.rate_per_s > 0

    @property
    def burst_tokens(self) -> int:
        """The bucket size actually used (`burst`, or its default from the rate)."""
        return bucket_size(self.rate_per_s, self.burst)

    def in_flight_cap(self, default: int) -> int:
        """This tenant's cap on tasks in flight, given the global default (0: no cap)."""
        return self.max_in_flight or default

    def replace(self, **changes: Any) -> TenantPolicy:
        """A copy with `changes` applied and validated; unknown fields raise PolicyError."""
        unknown = set(changes) - _FIELDS
        if unknown:
            raise PolicyError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TenantPolicy:
        """Known keys only (newer writers may add fields); missing ones take the defaults."""
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    @classmethod
    def from_json(cls, raw: bytes | str) -> TenantPolicy:
        return cls.from_dict(_object(raw))

    @classmethod
    def defaults(cls, lanes: LaneSettings) -> TenantPolicy:
        """The policy of a tenant with none of its own: no rate limit, no deadline."""
        return cls(lane=lanes.default_class, weight=lanes.default_weight)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TenantPolicy))


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    ):
        return
    bound = "> 0" if positive else ">= 0"
    raise PolicyError(f"{name} must be a finite number {bound}, got {value!r}")


def _object(raw: bytes | str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PolicyError(f"policy is not JSON ({exc}): {raw!r:.200}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy must be a JSON object, got {raw!r:.200}")
    return data


def check_tenant(tenant: str) -> str:
    if not TENANT_RE.fullmatch(tenant):
        raise PolicyError(
            f"tenant {tenant!r} is not a valid name: letters, digits, '_' and '-', "
            "at most 64, starting with a letter or digit"
        )
    return tenant


class TenantRegistry:
    """The tenant hash in Redis: `tenant -> policy JSON`. `defaults` is what a tenant's first
    `set` starts from (the CLI passes `TenantPolicy.defaults(settings.lanes)`, so a tenant
    given only a rate keeps the lane unknown tenants get); every stored entry is complete."""

    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, defaults: TenantPolicy | None = None
    ) -> None:
        self._redis = redis
        self._key = keys.tenants()
        self._defaults = defaults or TenantPolicy()

    async def set(self, tenant: str, **changes: Any) -> TenantPolicy:
        """Merge `changes` onto the tenant's stored policy (or the defaults) and store it.

        Optimistic (WATCH): two concurrent `set`s on one tenant both land, neither undoes
        the other's fields. Raises PolicyError, storing nothing, when the result is invalid.
        """
        check_tenant(tenant)
        TenantPolicy().replace(**changes)  # unknown fields and bad values fail before I/O

        async def merge(pipe: Pipeline) -> TenantPolicy:
            raw = await pipe.hget(self._key, tenant)
            stored = self._defaults.to_dict() if raw is None else _stored(tenant, raw)
            merged = {**stored, **changes}
            policy = TenantPolicy.from_dict(merged)
            pipe.multi()  # type: ignore[no-untyped-call]
            # Unknown keys kept: a newer writer's fields survive an older writer's merge.
            pipe.hset(self._key, tenant, orjson.dumps({**merged, **policy.to_dict()}))
            return policy

        policy: TenantPolicy = await self._redis.transaction(
            merge, self._key, value_from_callable=True
        )
        return policy

    async def get(self, tenant: str) -> TenantPolicy | None:
        raw = await self._redis.hget(self._key, tenant)
        return None if raw is None else TenantPolicy.from_json(raw)

    async def all(self) -> dict[str, TenantPolicy]:
        """Every stored policy; raises PolicyError on the first entry that does not parse."""
        raw = await self._redis.hgetall(self._key)
        return {_text(t): TenantPolicy.from_json(v) for t, v in sorted(raw.items())}

    async def raw(self) -> dict[str, bytes]:
        """Every entry unparsed (for readers that must survive a bad one)."""
        found = await self._redis.hgetall(self._key)
        return {_text(t): _bytes(v) for t, v in found.items()}

    async def delete(self, tenant: str) -> bool:
        """True when the tenant had a policy."""
        return bool(await self._redis.hdel(self._key, tenant))


def _stored(tenant: str, raw: bytes | str) -> dict[str, Any]:
    try:
        return _object(raw)
    except PolicyError as exc:
        raise PolicyError(
            f"{exc}; the stored policy of {tenant!r} cannot be merged onto: "
            f"`conveyor tenants delete {tenant}`, then set it again"
        ) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    # A client made with decode_responses=True answers str; the directory compares bytes.
    return value.encode() if isinstance(value, str) else value


class TenantDirectory(Component):
    """The workers' view of the registry: a local copy, refreshed in the background.

    Lookups are synchronous dict reads. A refresh that fails (Redis down) keeps the last good
    view and is retried next interval; an entry that does not parse keeps that tenant's last
    good policy (or none), logged once per bad value, so one bad write cannot stop a worker.
    """

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, lanes: LaneSettings) -> None:
        self._registry = TenantRegistry(redis, keys)
        self._lanes = lanes
        self._default = TenantPolicy.defaults(lanes)
        self._policies: dict[str, TenantPolicy] = {}
        self._bad: dict[str, bytes] = {}
        self._loaded_at: float | None = None
        self._failing = False
        self._tasks: TaskSet | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load once (errors propagate: a worker must not start on an empty view by accident),
        then refresh every `refresh_interval_s` until `stop()`."""
        if self._tasks is not None:
            raise RuntimeError("TenantDirectory already started")
        await self.refresh()
        self._tasks = TaskSet(on_crash=self._crashed)
        self._tasks.start(self._refresh_forever(), name="tenant-directory-refresh")

    async def stop(self) -> None:
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.cancel()

    # ---- lookups (sync: the scheduler calls them per record) -------------------------------

    def policy(self, tenant: str) -> TenantPolicy | None:
        """The tenant's policy; the default one for an unknown tenant, or None when
        `lanes.unknown_tenants` is `reject`."""
        found = self._policies.get(tenant)
        if found is not None:
            return found
        return self._default if self._lanes.unknown_tenants == "default" else None

    def weight(self, tenant: str) -> float:
        """Scheduling weight; an unknown tenant (even one being rejected) gets the default."""
        return self._policies.get(tenant, self._default).weight

    def lane(self, tenant: str) -> str:
        return self._policies.get(tenant, self._default).lane

    @property
    def default_policy(self) -> TenantPolicy:
        return self._default

    @property
    def tenants(self) -> Mapping[str, TenantPolicy]:
        """Tenants with a policy of their own, as last loaded."""
        return dict(self._policies)

    @property
    def age_s(self) -> float | None:
        """Seconds since the last successful load (staleness under a Redis outage)."""
        return None if self._loaded_at is None else time.monotonic() - self._loaded_at

    # ---- refresh --------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload now; raises when Redis cannot be read (the view is then unchanged)."""
        raw = await self._registry.raw()
        policies: dict[str, TenantPolicy] = {}
        bad: dict[str, bytes] = {}
        for tenant, value in raw.items():
            try:
                policies[tenant] = TenantPolicy.from_json(value)
            except PolicyError as exc:
                bad[tenant] = value
                if self._bad.get(tenant) != value:
                    log.error("tenant %r: ignoring its stored policy: %s", tenant, exc)
                if (last := self._policies.get(tenant)) is not None:
                    policies[tenant] = last
        self._policies, self._bad = policies, bad
        self._loaded_at = time.monotonic()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lanes.refresh_interval_s)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("tenant registry unreadable, keeping the last view: %s", exc)
                self._failing = True
                continue
            if self._failing:
                log.info("tenant registry readable again")
            self._failing = False

    def _crashed(self, error: BaseException) -> None:
        # TaskSet has logged the traceback; lookups keep answering from the last view.
        self._tasks = None
