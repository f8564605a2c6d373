"""Worker processes of every stage against the secured stack (SASL/SCRAM with the broker's
authorizer on, Redis over TLS as an ACL user): requests are served end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas import InferenceResult, Status
from tests.e2e.helpers import secure_namespace, tiny_request
from tests.services import SecureServices
from workers.client import Client
from workers.fleet import WorkerFleet
from workers.kafka.admin import delete_topics_with_prefix
from workers.ledger import read_task
from workers.names import Topics

pytestmark = pytest.mark.e2e


async def test_workers_serve_through_sasl_and_tls(
    secure_services: SecureServices, model_repository: Path, tmp_path: Path
) -> None:
    namespace = await secure_namespace(secure_services, model_repository)
    prefix, settings, env = namespace.prefix, namespace.settings, namespace.env
    fleet = WorkerFleet(env, tmp_path / "logs")
    try:
        fleet.start_all()
        async with Client(settings.kafka, Topics(prefix)) as client:
            ids = await client.submit_many([tiny_request("acme") for _ in range(20)])
            results = await asyncio.gather(*(client.result(i, timeout_s=90) for i in ids))
        assert all(isinstance(r, InferenceResult) for r in results), results[:2]
        # The ledger (Redis over TLS) is written just after the result is acknowledged.
        async with asyncio.timeout(30):
            while True:
                record = await read_task(settings.redis, settings.redis.key_prefix, ids[-1])
                if record is not None and record.state == Status.DONE:
                    break
                await asyncio.sleep(0.05)
        for worker in fleet.workers:
            assert secure_services.access.password("admin") not in worker.log()
    finally:
        fleet.stop_all()
        await delete_topics_with_prefix(settings.kafka, prefix)
