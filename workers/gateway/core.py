"""The gateway's protocol-independent core: who is calling, what to publish, how to answer.

One `Client` per gateway process publishes every request to `<prefix>.requests` with this
instance's reply topic and reads that topic with its one consumer; a synchronous request
awaits its future by task id. An asynchronous request (and a synchronous one whose wait
timed out) is remembered in Redis (`<key_prefix>gateway-task:<id>`: tenant, callback) before
it is published; when its result comes, the result is kept there for `gateway.result_ttl_s`
and POSTed to the callback URL, if one was given. `GET /v2/tasks/{id}` reads that hash and
the task's ledger record in one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka.errors import KafkaError
from prometheus_client import Gauge
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from schemas import (
    MSGPACK,
    ContractError,
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    decode_result,
    encode,
)
from workers.client import Client, Result
from workers.component import Component
from workers.gateway.answers import task_body
from workers.gateway.errors import GatewayError
from workers.gateway.keys import ApiKeys, KeyDirectory
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.models import ModelCatalog, ServedModel
from workers.gateway.tensors import InferBody
from workers.kafka.admin import TopicSpec, ensure_topics
from workers.ledger import TaskRecord
from workers.ledger.connection import redis_client
from workers.ledger.records import text
from workers.models.repository import ModelRepository
from workers.names import STAGES, TENANT_RE, RedisKeys, Topics
from workers.observability.registry import announced_workers
from workers.observability.tracing import child_of
from workers.settings import Settings, SettingsError
from workers.tasks import TaskSet

log = logging.getLogger(__name__)

CALLBACK_ATTEMPTS = 3
CALLBACKS_AT_ONCE = 64
STAGE_WATCH_INTERVAL_S = 1.0
"""How often the workers' announcements are read: a model is ready while every stage of
the pipeline has a live worker (announcements expire 15 s after a worker dies)."""


@dataclass(frozen=True)
class Submission:
    """One inference request as a front end (HTTP, gRPC) hands it to the core."""

    tenant: str
    served: ServedModel
    version: int | None
    body: InferBody
    traceparent: str | None = None


@dataclass(frozen=True)
class Answer:
    """A synchronous request's result, and where its time went."""

    request: InferenceRequest
    result: InferenceResult
    publish_s: float
    """Until the broker acknowledged the request."""
    pipeline_s: float
    """From the acknowledgement to the result's arrival on the reply topic."""


@dataclass(frozen=True)
class _Kept:
    tenant: str
    callback: str | None
    since_s: float


class _InFlight:
    """Requests this gateway holds (`with` around each); past `limit`, 429 at once."""

    __slots__ = ("count", "gauge", "limit")

    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.count = 0
        self.limit = limit
        self.gauge = gauge

    def __enter__(self) -> None:
        if self.count >= self.limit:
            raise GatewayError(
                429,
                ErrorCode.QUOTA_EXCEEDED.value,
                f"this gateway holds {self.count} requests (gateway.max_in_flight); retry shortly",
                retry_after_s=1,
            )
        self.count += 1
        self.gauge.inc()

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        self.gauge.dec()


def instance_name(configured: str | None) -> str:
    """The gateway's instance id: configured, else the host name made topic-safe."""
    if configured:
        return configured
    host = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname())
    return (host.strip("-_") or "gateway")[:64]


class Gateway(Component):
    """Publishes V2 requests as tasks and answers them; one per gateway process."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.config = settings.gateway
        self.metrics = metrics or GatewayMetrics()
        self.keys = RedisKeys(settings.redis.key_prefix)
        self.topics = Topics(settings.kafka.topic_prefix)
        self.instance_id = instance_name(self.config.instance_id)
        self.reply_topic = self.topics.gateway_replies(self.instance_id)
        self.limits = settings.limits.decode_limits()
        self.catalog = ModelCatalog(ModelRepository(settings.model_repository))
        self._redis = redis_client(settings.redis, resilient=True)
        self._directory: KeyDirectory | None = None
        self._client: Client | None = None
        self._session: aiohttp.ClientSession | None = None
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._tasks = TaskSet(self._crashed)
        self._callbacks = TaskSet(lambda error: None)
        self._callback_slots = asyncio.Semaphore(CALLBACKS_AT_ONCE)
        self._in_flight = _InFlight(self.config.max_in_flight, self.metrics.in_flight)
        self._stages: frozenset[str] = frozenset()
        self._started = False
        self._ready = False

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("gateway already started")
        self._started = True
        if self.settings.kafka.tenant_topics:
            raise SettingsError(
                "gateway: kafka.tenant_topics is true, but the gateway publishes on the shared "
                "requests topic with a reply topic of its own; run it with shared topics"
            )
        k = self.settings.kafka
        retention_ms = str(self.config.result_ttl_s * 1000)
        await ensure_topics(
            k,
            [
                TopicSpec(self.topics.requests, k.partitions, k.replication_factor),
                TopicSpec(self.topics.results, k.partitions, k.replication_factor),
                TopicSpec(
                    self.reply_topic,
                    k.partitions,
                    k.replication_factor,
                    {"retention.ms": retention_ms},
                ),
            ],
        )
        if self.config.auth == "api_key":
            self._directory = KeyDirectory(
                ApiKeys(self._redis, self.keys), self.config.keys_refresh_s
            )
            await self._directory.start()
        self._client = Client(
            self.settings.kafka, self.topics, reply_to=self.reply_topic, received_limit=4096
        )
        await self._client.start()
        if self.config.callback_url_prefixes:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.callback_timeout_s)
            )
        self._tasks.start(self._keep_results(self._client), "gateway-keep-results")
        await self._read_stages()
        self._tasks.start(self._watch_stages(), "gateway-watch-stages")
        self._ready = True
        log.info("gateway %s: replies on %s", self.instance_id, self.reply_topic)

    async def stop(self) -> None:
        """Stop answering; pending callbacks get `callback_timeout_s` to finish."""
        self._ready = False
        await self._callbacks.wait(self.config.callback_timeout_s)
        await self._callbacks.cancel()
        await self._tasks.cancel()
        if self._client is not None:
            await self._client.stop()
            self._client = None
        if self._directory is not None:
            await self._directory.stop()
            self._directory = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._redis.aclose()

    @property
    def ready(self) -> bool:
        return self._ready

    def stopping(self) -> None:
        """Readiness off at once (SIGTERM), while requests in progress are answered."""
        self._ready = False

    def model_ready(self) -> bool:
        """Ready, and every stage has a live worker announced in Redis."""
        return self._ready and not self.missing_stages()

    def missing_stages(self) -> list[str]:
        if "fused" in self._stages:  # one worker that runs all three
            return []
        return [stage for stage in STAGES if stage not in self._stages]

    async def _read_stages(self) -> None:
        try:
            workers = await announced_workers(self._redis, self.keys)
        except RedisError as exc:  # keep the last view while Redis is away
            log.warning("worker announcements not read: %s", exc)
            return
        self._stages = frozenset(w["stage"] for w in workers if "stage" in w)

    async def _watch_stages(self) -> None:
        while True:
            await asyncio.sleep(STAGE_WATCH_INTERVAL_S)
            await self._read_stages()

    def _crashed(self, error: BaseException) -> None:
        log.error("gateway background task crashed; not ready: %s", error)
        self._ready = False

    # ---- callers ---------------------------------------------------------------------------

    async def authenticate(self, api_key: str | None, tenant_header: str | None) -> str:
        """The caller's tenant (401 without valid credentials)."""
        mode = self.config.auth
        if mode == "none":
            return self.config.default_tenant
        if mode == "header":
            if not tenant_header or not TENANT_RE.fullmatch(tenant_header):
                raise GatewayError(
                    401,
                    "UNAUTHENTICATED",
                    f"a valid conveyor-tenant header is required, got {tenant_header!r}",
                )
            return tenant_header
        if not api_key:
            raise GatewayError(
                401, "UNAUTHENTICATED", "an API key is required (Authorization: Bearer KEY)"
            )
        assert self._directory is not None
        try:
            tenant = await self._directory.tenant_of(api_key)
        except RedisError as exc:
            raise GatewayError(503, "UNAVAILABLE", f"cannot check the API key: {exc}") from None
        if tenant is None:
            raise GatewayError(401, "UNAUTHENTICATED", "unknown API key")
        return tenant

    def require_ready(self) -> None:
        missing = self.missing_stages()
        if self._ready and missing:
            raise GatewayError(
                503,
                "UNAVAILABLE",
                f"the pipeline is not ready: no live {', '.join(missing)} worker announced",
            )
        if not self._ready:
            raise GatewayError(
                503,
                "UNAVAILABLE",
                "the gateway is not ready (starting, stopping or lost its broker connection)",
            )

    # ---- inference -------------------------------------------------------------------------

    def request_of(self, sub: Submission, reply_to: str | None = None) -> InferenceRequest:
        """The task to publish; 400/413 when the inputs break the contract."""
        if sub.body.outputs:
            known = {t.name for t in sub.served.outputs}
            unknown = [name for name in sub.body.outputs if name not in known]
            if unknown:
                raise GatewayError(
                    400,
                    "INVALID_VALUE",
                    f"outputs {unknown} are not produced; known: {sorted(known)}",
                )
        try:
            return InferenceRequest.new(
                tenant=sub.tenant,
                pipeline=sub.served.pipeline.name,
                inputs=sub.body.inputs,
                parameters=sub.body.parameters,
                model_version=sub.version,
                reply_to=reply_to or self.reply_topic,
                traceparent=child_of(sub.traceparent),
            )
        except ContractError as exc:
            raise GatewayError.of_contract(exc) from None

    async def infer(self, sub: Submission) -> Answer:
        """Publish and await the result: 504 with the task id when it does not come in
        time (it is then kept for `GET /v2/tasks/{id}`), the error's status when it failed."""
        self.require_ready()
        client = self._require_client()
        request = self.request_of(sub)
        timeout_s = min(self.config.request_timeout_s, sub.body.timeout_s or float("inf"))
        with self._in_flight:
            started = time.perf_counter()
            await self._publish(client, request)
            published = time.perf_counter()
            try:
                result = await client.result(request.task_id, timeout_s=timeout_s)
            except TimeoutError:
                await self._remember(request, None)
                raise GatewayError(
                    504,
                    ErrorCode.DEADLINE_EXCEEDED.value,
                    f"no result within {timeout_s:g} s; the task goes on: GET "
                    f"/v2/tasks/{request.task_id}",
                    request.task_id,
                ) from None
            except RuntimeError as exc:  # the results reader stopped
                raise GatewayError(503, "UNAVAILABLE", str(exc), request.task_id) from None
        answered = time.perf_counter()
        if isinstance(result, ErrorResult):
            raise GatewayError.of_result(result)
        return Answer(request, result, published - started, answered - published)

    async def submit(
        self, sub: Submission, callback: str | None = None, reply_to: str | None = None
    ) -> InferenceRequest:
        """Publish without waiting (asynchronous inference); returns the published task.
        With `reply_to` the result goes to the caller's own topic and is not kept here."""
        self.require_ready()
        client = self._require_client()
        if callback is not None:
            self._check_callback(callback)
        if reply_to is not None and reply_to == self.topics.results:
            reply_to = None
        request = self.request_of(sub, reply_to)
        with self._in_flight:
            await self._remember(request, callback, keep=reply_to is None)
            await self._publish(client, request)
        return request

    def _check_callback(self, url: str) -> None:
        prefixes = self.config.callback_url_prefixes
        if not url.startswith(("http://", "https://")) or not any(
            url.startswith(p) for p in prefixes
        ):
            raise GatewayError(
                400,
                "INVALID_VALUE",
                f"callback {url!r} is not allowed; gateway.callback_url_prefixes: {list(prefixes)}",
            )

    async def _publish(self, client: Client, request: InferenceRequest) -> None:
        try:
            await client.submit(request)  # concurrent callers share publications
        except RuntimeError as exc:
            raise GatewayError(503, "UNAVAILABLE", str(exc), request.task_id) from None
        except KafkaError as exc:
            raise GatewayError(
                503, "UNAVAILABLE", f"the broker did not take the request: {exc}", request.task_id
            ) from None

    async def _remember(
        self, request: InferenceRequest, callback: str | None, keep: bool = True
    ) -> None:
        """Write the task's owner (and callback) to Redis; mark its result to be kept."""
        fields: dict[FieldT, EncodableT] = {
            "tenant": request.tenant,
            "pipeline": request.pipeline,
        }
        if callback is not None:
            fields["callback"] = callback
        key = self.keys.gateway_task(request.task_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.config.result_ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise GatewayError(
                503, "UNAVAILABLE", f"cannot record the task: {exc}", request.task_id
            ) from None
        if keep:
            self._kept[request.task_id] = _Kept(request.tenant, callback, time.monotonic())
            self._forget_stale()

    def _forget_stale(self) -> None:
        horizon = time.monotonic() - self.config.result_ttl_s
        while self._kept:
            first = next(iter(self._kept.values()))
            if first.since_s >= horizon:
                return
            self._kept.popitem(last=False)

    async def _keep_results(self, client: Client) -> None:
        async for result in client.results():
            kept = self._kept.pop(result.task_id, None)
            if kept is None:
                continue
            key = self.keys.gateway_task(result.task_id)
            try:
                await self._redis.hset(key, "result", encode(result, MSGPACK))
            except RedisError as exc:
                log.warning("result of %s not kept: %s", result.task_id, exc)
            if kept.callback is not None:
                self._callbacks.start(
                    self._call_back(kept.callback, result), f"callback-{result.task_id}"
                )

    async def _call_back(self, url: str, result: Result) -> None:
        session = self._session
        if session is None:
            return
        body = orjson.dumps(task_body(result), option=orjson.OPT_SERIALIZE_NUMPY)
        headers = {"content-type": "application/json", "conveyor-task-id": result.task_id}
        if result.traceparent:
            headers["traceparent"] = result.traceparent
        async with self._callback_slots:
            for attempt in range(CALLBACK_ATTEMPTS):
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        if response.status < 500:
                            self.metrics.callbacks.labels("delivered").inc()
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("callback %s for %s: %s", url, result.task_id, exc)
                await asyncio.sleep(0.5 * 2**attempt)
        self.metrics.callbacks.labels("failed").inc()
        log.warning("callback %s for %s failed %d times", url, result.task_id, CALLBACK_ATTEMPTS)

    # ---- tasks -----------------------------------------------------------------------------

    async def task(self, tenant: str, task_id: str) -> dict[str, Any]:
        """A task's state, error and (when kept) result; 404 for another tenant's task."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.gateway_task(task_id))
                pipe.hgetall(self.keys.task(task_id))
                kept, ledger = await pipe.execute()
        except RedisError as exc:
            raise GatewayError(503, "UNAVAILABLE", f"cannot read the ledger: {exc}") from None
        kept = {text(k): v for k, v in kept.items()}
        record = TaskRecord.from_hash(task_id, ledger)
        owner = text(kept["tenant"]) if "tenant" in kept else (record and record.tenant)
        if owner != tenant:  # never say whether another tenant's task exists
            raise GatewayError(404, "NOT_FOUND", f"no task {task_id!r} of tenant {tenant!r}")
        body: dict[str, Any] = {
            "task_id": task_id,
            "state": record.state.value if record is not None else "SUBMITTED",
        }
        if record is not None:
            body["ledger"] = record.to_dict()
        if "result" in kept:
            try:
                body.update(task_body(decode_result(bytes(kept["result"]))))
            except ContractError as exc:
                log.warning("kept result of %s undecodable: %s", task_id, exc)
        elif record is not None and record.error_code is not None:
            body["error"] = {"error": record.error_message, "code": record.error_code}
        return body

    def _require_client(self) -> Client:
        if self._client is None:
            raise GatewayError(503, "UNAVAILABLE", "the gateway is not started")
        return self._client
