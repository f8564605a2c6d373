"""Task id claims against the real Redis: first use, the same record again, a duplicate."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.conftest import Namespace
from workers.ledger.claims import TaskClaims
from workers.names import RedisKeys

pytestmark = pytest.mark.integration


async def test_an_id_is_the_first_records_and_its_claim_is_never_renewed(
    redis_client: aioredis.Redis, namespace: Namespace
) -> None:
    keys = RedisKeys(namespace.key_prefix)
    claims = TaskClaims(redis_client, keys, ttl_s=60)
    assert await claims.claim([("a", "r:0:1"), ("b", "r:0:2")]) == [True, True]
    assert await redis_client.get(keys.id_owner("a")) == b"r:0:1"
    assert 0 < await redis_client.ttl(keys.id_owner("a")) <= 60

    await redis_client.expire(keys.id_owner("a"), 5)
    # In one call, in order: the same record again, another record with a claimed id, a
    # new id twice (its second use is a duplicate of the first).
    assert await claims.claim([("a", "r:0:1"), ("b", "r:0:9"), ("c", "r:0:3"), ("c", "r:0:4")]) == [
        True,
        False,
        True,
        False,
    ]
    # A claim found is left as it was: neither its record nor its time to live changes.
    assert await redis_client.get(keys.id_owner("b")) == b"r:0:2"
    assert await redis_client.get(keys.id_owner("c")) == b"r:0:3"
    assert 0 < await redis_client.ttl(keys.id_owner("a")) <= 5
