"""The V2 REST front end (aiohttp): health, server and model metadata, model readiness,
inference (V2 JSON and the binary tensor extension), task status and /metrics.

Every answer other than a success is the V2 error shape `{"error": "..."}` (plus `code` and
`task_id`) with a proper status; an unexpected exception is logged and answered 500 without
its traceback.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from schemas import ContractError
from workers.component import Component
from workers.gateway.answers import outputs_of, response_head
from workers.gateway.core import Gateway, Submission
from workers.gateway.errors import GatewayError
from workers.gateway.tensors import http_response, parse_http

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
TASK_ID_HEADER = "Conveyor-Task-Id"
VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "async_inference", "task_status"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(error: GatewayError) -> web.Response:
    headers = {TASK_ID_HEADER: error.task_id} if error.task_id else {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return _json(error.body(), error.status, headers)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


class HttpFront(Component):
    """The HTTP listener; `start()` binds, `stop()` lets requests in progress finish."""

    def __init__(self, gateway: Gateway, host: str, port: int, grace_s: float = 10.0) -> None:
        self.gateway = gateway
        self._host = host
        self._port = port
        self._grace_s = grace_s
        self._runner: web.AppRunner | None = None
        self.port = port
        """The bound port (the free one taken when configured 0)."""

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.gateway.config.max_body_bytes, middlewares=[self._middleware]
        )
        get, post = web.get, web.post
        # aiohttp tries the routes under one prefix (`/v2/models`) in this order, one regex
        # each: inference, the route every request of a busy gateway takes, goes first.
        app.add_routes(
            [
                post("/v2/models/{name}/infer", self.infer),
                post("/v2/models/{name}/versions/{version}/infer", self.infer),
                get("/v2/health/live", self.live),
                get("/v2/health/ready", self.ready),
                get("/v2", self.server_metadata),
                get("/v2/models/{name}", self.model_metadata),
                get("/v2/models/{name}/versions/{version}", self.model_metadata),
                get("/v2/models/{name}/ready", self.model_ready),
                get("/v2/models/{name}/versions/{version}/ready", self.model_ready),
                get("/v2/tasks/{task_id}", self.task),
                get("/metrics", self.metrics),
            ]
        )
        return app

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("HTTP front already started")
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=self._grace_s
        )
        await self._runner.setup()
        tls = self._tls()
        site = web.TCPSite(
            self._runner,
            self._host,
            self._port,
            backlog=4096,
            ssl_context=tls,
            reuse_port=self.gateway.config.reuse_port or None,
        )
        await site.start()
        server = site._server  # the bound socket tells the port actually taken
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        scheme = "https" if tls is not None else "http"
        log.info("gateway HTTP on %s://%s:%d", scheme, self._host, self.port)

    def _tls(self) -> ssl.SSLContext | None:
        config = self.gateway.config
        if config.tls_certfile is None or config.tls_keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
        return context

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc)
        except ContractError as exc:
            response = error_response(GatewayError.of_contract(exc))
        except web.HTTPException as exc:  # unknown route, wrong method, body over the limit
            code = (
                "PAYLOAD_TOO_LARGE" if exc.status == 413 else exc.reason.upper().replace(" ", "_")
            )
            response = error_response(GatewayError(exc.status, code, exc.reason))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(GatewayError(500, "INTERNAL", "internal error"))
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.gateway.metrics.observe("http", route, response.status, time.perf_counter() - started)
        return response

    # ---- health and metadata -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.gateway.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": "conveyor", "version": VERSION, "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        served, _ = self.gateway.catalog.resolve(
            request.match_info["name"], request.match_info.get("version")
        )
        return _json(served.metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.gateway.catalog.resolve(name, request.match_info.get("version"))
        ready = self.gateway.model_ready()
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.gateway.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- inference ---------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        gateway = self.gateway
        tenant = await gateway.authenticate(
            _api_key(request), request.headers.get("conveyor-tenant")
        )
        served, version = gateway.catalog.resolve(
            request.match_info["name"], request.match_info.get("version")
        )
        gateway.require_ready()
        header_length = _header_length(request)
        if (request.content_length or 0) > gateway.config.max_body_bytes:
            raise GatewayError(
                413,
                "PAYLOAD_TOO_LARGE",
                f"body of {request.content_length} bytes > gateway.max_body_bytes "
                f"{gateway.config.max_body_bytes}",
            )
        body = parse_http(await request.read(), header_length, gateway.limits, served.text_inputs)
        sub = Submission(tenant, served, version, body, request.headers.get("traceparent"))
        if _wants_async(request):
            return await self._submit(request, sub)
        answer = await gateway.infer(sub)
        result = answer.result
        head = response_head(result, served.name, body.id)
        payload, json_length = http_response(head, outputs_of(result), body)
        headers = {TASK_ID_HEADER: result.task_id}
        if answer.request.traceparent:
            headers["traceparent"] = answer.request.traceparent
        # Where the time went (W3C Server-Timing, ms): the gateway's own work, the broker's
        # acknowledgement, and the pipeline until the result arrived.
        own_s = time.perf_counter() - arrived - answer.publish_s - answer.pipeline_s
        headers["Server-Timing"] = (
            f"gateway;dur={own_s * 1000:.3f}, publish;dur={answer.publish_s * 1000:.3f}, "
            f"pipeline;dur={answer.pipeline_s * 1000:.3f}"
        )
        if json_length is None:
            return web.Response(body=payload, content_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(json_length)
        return web.Response(body=payload, content_type="application/octet-stream", headers=headers)

    async def _submit(self, request: web.Request, sub: Submission) -> web.Response:
        callback = request.query.get("callback") or request.headers.get("conveyor-callback-url")
        reply_to = request.query.get("reply_to") or request.headers.get("conveyor-reply-to")
        published = await self.gateway.submit(sub, callback, reply_to)
        location = f"/v2/tasks/{published.task_id}"
        headers = {TASK_ID_HEADER: published.task_id, "Location": location}
        if published.traceparent:
            headers["traceparent"] = published.traceparent
        body = {
            "id": sub.body.id or published.task_id,
            "task_id": published.task_id,
            "state": "SUBMITTED",
            "status_url": location,
        }
        return _json(body, 202, headers)

    async def task(self, request: web.Request) -> web.Response:
        tenant = await self.gateway.authenticate(
            _api_key(request), request.headers.get("conveyor-tenant")
        )
        return _json(await self.gateway.task(tenant, request.match_info["task_id"]))


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise GatewayError(
            400, "MALFORMED", f"{HEADER_LENGTH} must be an integer, got {raw!r}"
        ) from None


def _wants_async(request: web.Request) -> bool:
    flag = request.query.get("async") or request.headers.get("conveyor-async") or ""
    prefer = request.headers.get("Prefer", "")
    return flag.lower() in ("true", "1", "yes") or "respond-async" in prefer
