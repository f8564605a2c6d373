"""The task ledger: one Redis hash per task, moved forward by an atomic, monotonic Lua script.

Every transition of a batch goes to Redis in ONE script call (EVALSHA over all the batch's
keys), so a stage pays one round trip per batch, not per task. The script is atomic, so
concurrent writers (replicas, redeliveries) can never move a task backwards or out of a
terminal state; see ``transition.lua`` for the exact rules. Redis errors propagate unchanged:
the caller decides whether to retry. Retrying is safe: a repeated transition is a DUPLICATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from schemas.messages import Status
from workers.component import Component
from workers.ledger.connection import RedisConnection, redis_client
from workers.ledger.records import Outcome, TaskRecord, Transition, TransitionResult, text
from workers.ledger.scripts import RedisStep, run_scripts
from workers.names import RedisKeys

TRANSITION_LUA = resources.files(__package__).joinpath("transition.lua").read_text("utf-8")
# The script's reply letters (see transition.lua).
_OUTCOMES = {outcome.value[0]: outcome for outcome in Outcome}
_STATES = {status.value[0]: status for status in Status}
if len(_STATES) != len(Status):
    raise RuntimeError("every task state needs a first letter of its own (transition.lua)")
STATES_LUA = """
local states = {}
for i, key in ipairs(KEYS) do
  states[i] = redis.call('HGET', key, 'state')
end
return states
"""
"""Every task's stored state in one command (false, so nil in the reply, where none)."""


class Ledger(Component):
    """Records task transitions and answers where tasks stand.

    Does not own `redis`: `stop()` leaves the client open for whoever created it.
    """

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_s: int) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError(f"ttl_s must be an int >= 1, got {ttl_s!r}")
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._script: AsyncScript | None = None
        self._states: AsyncScript | None = None
        self._started = False

    async def start(self) -> None:
        """Loads the script into Redis (so the first batch is one round trip). Once only."""
        if self._started:
            raise RuntimeError("Ledger can be started only once")
        self._started = True
        try:
            await self._redis.script_load(TRANSITION_LUA)
            await self._redis.script_load(STATES_LUA)
        except BaseException:
            self._started = False
            raise
        self._script = self._redis.register_script(TRANSITION_LUA)
        self._states = self._redis.register_script(STATES_LUA)

    async def stop(self) -> None:
        """Stops accepting calls. Idempotent."""
        self._script = None

    def _running_script(self) -> AsyncScript:
        if self._script is None:
            raise RuntimeError("Ledger is not running: call start() first (and not after stop())")
        return self._script

    async def record(
        self, transitions: Sequence[Transition], also: Sequence[RedisStep] = ()
    ) -> list[TransitionResult]:
        """Applies `transitions` as if one after another, in one round trip; one result per
        transition.

        Several transitions of the same task in one batch are applied one after another.
        An empty batch makes no call to Redis. After a Redis restart the script is reloaded
        (NOSCRIPT) transparently. `also`: commands of other components that go in the same
        round trip (a tenant's in-flight count released as its tasks end), not atomically
        with the transitions; idempotent ones, as a retry of the call repeats them.
        """
        script = self._running_script()
        if not transitions:
            return []
        # Transitions alike but for their task go as one group: its state, time and fields
        # once, and Redis's thread pays per group. Those of different tasks touch different
        # hashes, so they may go in any order; a task's own keep theirs: its n-th transition
        # goes in the n-th layer, and within a layer alike ones go together (a poll's tasks
        # of several tenants, interleaved, form one group per tenant, not one per run).
        layers: list[dict[tuple[object, ...], list[int]]] = []
        seen: dict[str, int] = {}
        for i, t in enumerate(transitions):
            n = seen.get(t.task_id, 0)
            seen[t.task_id] = n + 1
            if n == len(layers):
                layers.append({})
            layers[n].setdefault(t.shared(), []).append(i)
        order: list[int] = []
        keys: list[str] = []
        args: list[str | int] = [self._ttl_s]
        for layer in layers:
            for run in layer.values():
                first = transitions[run[0]]
                fields = first.fields()
                order += run
                keys += [self._keys.task(transitions[i].task_id) for i in run]
                args += [first.state.value, first.at_ms, len(run), len(fields)]
                for name, value in fields.items():
                    args += [name, value]
        reply = text((await run_scripts(self._redis, [(script, keys, args)], also))[0])
        if len(reply) != 2 * len(transitions):
            raise RuntimeError(
                f"ledger script returned {reply!r} for {len(transitions)} transitions"
            )
        sent_at = [0] * len(transitions)  # where each transition's reply letters are
        for p, i in enumerate(order):
            sent_at[i] = 2 * p
        return [
            TransitionResult(t.task_id, _OUTCOMES[reply[p]], _STATES[reply[p + 1]])
            for t, p in zip(transitions, sent_at, strict=True)
        ]

    async def states(self, task_ids: Sequence[str]) -> dict[str, Status | None]:
        """The stored state of each task (None when unknown or expired), in one command."""
        self._running_script()
        if not task_ids:
            return {}
        assert self._states is not None, "registered with the transition script"
        keys = [self._keys.task(task_id) for task_id in task_ids]
        values: list[bytes | str | None] = await self._states(keys=keys)
        return {
            task_id: None if value is None else Status(text(value))
            for task_id, value in zip(task_ids, values, strict=True)
        }

    async def get(self, task_id: str) -> TaskRecord | None:
        """The task's full record, or None when unknown or expired."""
        self._running_script()
        return await _read_record(self._redis, self._keys, task_id)


async def _read_record(redis: aioredis.Redis, keys: RedisKeys, task_id: str) -> TaskRecord | None:
    raw = await redis.hgetall(keys.task(task_id))
    return TaskRecord.from_hash(task_id, raw)


async def read_task(
    connection: RedisConnection, key_prefix: str, task_id: str
) -> TaskRecord | None:
    """One task's record, read with a client of its own (for `conveyor status TASK_ID`)."""
    client = redis_client(connection)
    try:
        return await _read_record(client, RedisKeys(key_prefix), task_id)
    finally:
        await client.aclose()
