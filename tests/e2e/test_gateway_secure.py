"""The gateway on the secured stack (SASL/SCRAM with the broker's authorizer on, Redis over
TLS as an ACL user): a V2 request through the gateway is served end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.helpers import secure_namespace
from tests.services import SecureServices
from workers.fleet import WorkerFleet
from workers.gateway.keys import ApiKeys
from workers.gateway.launcher import gateway_env, running_gateway
from workers.kafka.admin import delete_topics_with_prefix
from workers.ledger.connection import redis_client
from workers.names import RedisKeys

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_gateway_serves_through_sasl_and_tls(
    secure_services: SecureServices, model_repository: Path, tmp_path: Path
) -> None:
    namespace = await secure_namespace(secure_services, model_repository)
    prefix, settings, env = namespace.prefix, namespace.settings, namespace.env
    redis = redis_client(settings.redis)
    key = await ApiKeys(redis, RedisKeys(f"{prefix}:")).add("acme")
    await redis.aclose()
    fleet = WorkerFleet(env, tmp_path / "logs")
    try:
        fleet.start_all()
        fleet.wait_ready()
        with running_gateway({**gateway_env(settings), **env}, tmp_path / "gw.log") as gateway:
            body = {
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
                ]
            }
            infer = f"{gateway.http_url}/v2/models/tiny-classify/infer"
            async with aiohttp.ClientSession() as session, asyncio.timeout(90):
                while True:  # until the gateway sees every stage's worker announced
                    headers = {"Authorization": f"Bearer {key}"}
                    async with session.post(infer, json=body, headers=headers) as r:
                        status, text = r.status, await r.text()
                    if status != 503:
                        break
                    await asyncio.sleep(0.2)
            assert status == 200, text
            assert secure_services.access.password("admin") not in gateway.log()
    finally:
        fleet.stop_all()
        await delete_topics_with_prefix(settings.kafka, prefix)
