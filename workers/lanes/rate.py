"""Per-tenant rate quotas: one token bucket per tenant in Redis, shared by every replica.

The bucket is kept as GCRA (the generic cell rate algorithm): one number per tenant, the
"theoretical arrival time" (TAT) at which the bucket would be full again. A request costs
one emission interval (1 / rate); it is admitted when the TAT it would push to is no more
than `burst` intervals ahead of now. This is a token bucket of size `burst` refilled at
`rate_per_s`, stored as one key with no refill bookkeeping.

Choices:
- The clock is Redis's own (`TIME` inside the script), never the caller's: replicas on
  different hosts then agree on every bucket without clock sync, and a replica with a
  skewed clock can neither overspend nor starve a tenant.
- Delay mode books the future token: with `max_delay_ms` > 0, a request whose wait is
  within it moves the TAT on and gets that wait back, so the caller may hold the task that
  long and then send it. Delayed tasks keep their order (each books after the previous) and
  the bucket is never overspent. A request over `max_delay_ms` books nothing.
- A key expires once its TAT has passed (plus a margin): a full bucket and a missing key
  mean the same, so idle tenants cost no memory.
- Changing a tenant's rate or burst needs no reset: the next request is judged against the
  stored TAT with the new interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis

from workers.ledger.scripts import run_scripts
from workers.names import RedisKeys

_MARGIN_MS = 1000

# KEYS[1]: the bucket. ARGV: emission interval (µs), burst, max delay (µs), requests n.
# Takes a token for each of the n requests in order, as n calls would. Returns each wait in
# whole µs: 0 admitted, <= max delay booked, > max delay refused (nothing written for it).
_TAKE_LUA = f"""
local interval, burst, max_delay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then
    tat = now
end
local waits, moved = {{}}, false
for i = 1, n do
    local next_tat = tat + interval
    local wait = math.ceil(next_tat - burst * interval - now)
    if wait > max_delay then
        waits[i] = wait
    else
        tat = next_tat
        moved = true
        waits[i] = math.max(wait, 0)
    end
end
if moved then
    local ttl_ms = math.ceil((tat - now) / 1000) + {_MARGIN_MS}
    redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', ttl_ms)
end
return waits
"""


def bucket_size(rate_per_s: float, burst: int) -> int:
    """Tokens a full bucket holds: `burst`, or by default one second's worth (at least 1)."""
    return burst or max(1, math.ceil(rate_per_s))


class RateQuota:
    """Takes tokens from tenants' shared buckets: one round trip per batch, one script call
    per bucket."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._take = redis.register_script(_TAKE_LUA)

    async def take(
        self, requests: Sequence[tuple[str, float, int]], max_delay_ms: int = 0
    ) -> list[float]:
        """For each (tenant, rate_per_s, burst), in order, take one token.

        Returns per request the milliseconds to wait: 0.0 admitted now; up to
        `max_delay_ms` admitted after that wait (its token is booked); above it refused,
        the value being how long until a token would be free. With the default
        `max_delay_ms` 0, any positive value is a refusal. `rate_per_s` 0 is unlimited and
        costs no Redis call; `burst` 0 means `bucket_size`'s default.
        """
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        for tenant, rate_per_s, burst in requests:
            if not (math.isfinite(rate_per_s) and rate_per_s >= 0) or burst < 0:
                raise ValueError(
                    f"tenant {tenant!r}: rate_per_s must be finite and >= 0 and burst >= 0, "
                    f"got rate_per_s={rate_per_s!r}, burst={burst!r}"
                )
        waits_ms = [0.0] * len(requests)
        limited = [i for i, (_, rate_per_s, _) in enumerate(requests) if rate_per_s > 0]
        if not limited:
            return waits_ms
        # One script call per bucket with all of its requests: a tenant's requests of a
        # batch take their tokens in one step, not one call each.
        buckets: dict[tuple[str, float, int], list[int]] = {}
        for i in limited:
            buckets.setdefault(requests[i], []).append(i)
        answers = await run_scripts(
            self._redis,
            [
                (
                    self._take,
                    [self._keys.rate_bucket(tenant)],
                    [
                        1e6 / rate_per_s,
                        bucket_size(rate_per_s, burst),
                        max_delay_ms * 1000,
                        len(indices),
                    ],
                )
                for (tenant, rate_per_s, burst), indices in buckets.items()
            ],
        )
        for indices, waits_us in zip(buckets.values(), answers, strict=True):
            for i, wait_us in zip(indices, waits_us, strict=True):
                waits_ms[i] = int(wait_us) / 1000
        return waits_ms
