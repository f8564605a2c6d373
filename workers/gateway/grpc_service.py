"""The V2 gRPC front end: `inference.GRPCInferenceService` (grpc.aio), from the protocol's
.proto (`workers/gateway/v2/`). ModelInfer takes `raw_input_contents` (what tritonclient
sends) or typed `contents`, and answers with `raw_output_contents`.

Errors end the call with a status code and details naming the code and task id:
INVALID_ARGUMENT (400), UNAUTHENTICATED (401), NOT_FOUND (404), RESOURCE_EXHAUSTED (413,
429), UNAVAILABLE (503), DEADLINE_EXCEEDED (504), INTERNAL (500, never a traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc import aio

from schemas import ContractError, ErrorCode
from workers.component import Component
from workers.gateway.answers import outputs_of
from workers.gateway.core import Gateway, Submission
from workers.gateway.errors import GatewayError, bad_request
from workers.gateway.http import EXTENSIONS, VERSION
from workers.gateway.models import PLATFORM
from workers.gateway.tensors import (
    RESERVED_PARAMETERS,
    Array,
    InferBody,
    array_from_raw,
    array_from_values,
    raw_of,
    selected,
    timeout_of,
)
from workers.gateway.v2 import grpc_predict_v2_pb2 as pb
from workers.gateway.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_Reply = TypeVar("_Reply")


def _metadata(context: aio.ServicerContext[Any, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found[key.lower()] = value
    return found


def _api_key(metadata: dict[str, str]) -> str | None:
    auth = metadata.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return metadata.get("x-api-key")


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _answer(
        self,
        route: str,
        context: aio.ServicerContext[Any, Any],
        work: Callable[[], Awaitable[_Reply]],
    ) -> _Reply:
        started = time.perf_counter()
        try:
            reply = await work()
        except ContractError as exc:
            error = GatewayError.of_contract(exc)
        except GatewayError as exc:
            error = exc
        except Exception:
            log.exception("gRPC %s failed", route)
            error = GatewayError(500, "INTERNAL", "internal error")
        else:
            self.gateway.metrics.observe("grpc", route, 200, time.perf_counter() - started)
            return reply
        self.gateway.metrics.observe("grpc", route, error.status, time.perf_counter() - started)
        if error.task_id:
            context.set_trailing_metadata((("conveyor-task-id", error.task_id),))
        await context.abort(error.grpc_code, error.details())
        raise AssertionError("abort returns only by raising")

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.gateway.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="conveyor", version=VERSION, extensions=EXTENSIONS)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            self.gateway.catalog.resolve(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=self.gateway.model_ready())

        return await self._answer("ModelReady", context, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            served, _ = self.gateway.catalog.resolve(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=served.name,
                versions=[str(v) for v in served.versions],
                platform=PLATFORM,
                inputs=[
                    tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.inputs
                ],
                outputs=[
                    tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in served.outputs
                ],
            )

        return await self._answer("ModelMetadata", context, work)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        return await self._answer("ModelInfer", context, lambda: self._infer(request, context))

    async def _infer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        gateway = self.gateway
        metadata = _metadata(context)
        tenant = await gateway.authenticate(_api_key(metadata), metadata.get("conveyor-tenant"))
        served, version = gateway.catalog.resolve(request.model_name, request.model_version or None)
        gateway.require_ready()
        inputs = _inputs(request, gateway, served.text_inputs)
        parameters = {k: _parameter(v) for k, v in request.parameters.items()}
        remaining = context.time_remaining()
        body = InferBody(
            id=request.id or None,
            inputs=inputs,
            parameters={k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
            outputs=tuple(o.name for o in request.outputs),
            timeout_s=remaining if remaining is not None else timeout_of(parameters.get("timeout")),
        )
        sub = Submission(tenant, served, version, body, metadata.get("traceparent"))
        answer = await gateway.infer(sub)
        result = answer.result
        outputs = selected(outputs_of(result), body.outputs)
        trailing = [("conveyor-task-id", result.task_id)]
        if answer.request.traceparent:
            trailing.append(("traceparent", answer.request.traceparent))
        context.set_trailing_metadata(tuple(trailing))
        return _response(request, served.name, result.task_id, result.model_version, outputs)


def _inputs(request: pb.ModelInferRequest, gateway: Gateway, text: bool) -> dict[str, Array]:
    limits = gateway.limits
    if not request.inputs:
        raise bad_request("inputs: at least one tensor is required", ErrorCode.MISSING_FIELD)
    if len(request.inputs) > limits.max_tensors:
        raise ContractError.at(
            ErrorCode.PAYLOAD_TOO_LARGE,
            "inputs",
            f"{len(request.inputs)} > limit {limits.max_tensors}",
        )
    raw: Sequence[bytes] = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs",
            ErrorCode.SHAPE_MISMATCH,
        )
    inputs: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        path = f"inputs[{index}]"
        shape = list(tensor.shape)
        if raw:
            inputs[tensor.name] = array_from_raw(
                raw[index], tensor.datatype, shape, path, limits, text
            )
            continue
        field = _CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise bad_request(
                f"{path}.datatype {tensor.datatype!r} needs raw_input_contents",
                ErrorCode.DTYPE_MISMATCH,
            )
        values: list[Any] = list(getattr(tensor.contents, field))
        if tensor.datatype == "BYTES" and text:
            values = [_text(v, f"{path}.contents[{i}]") for i, v in enumerate(values)]
        inputs[tensor.name] = array_from_values(values, tensor.datatype, shape, path, limits)
    return inputs


def _text(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError.at(ErrorCode.BAD_UTF8, where, f"not UTF-8: {exc.reason}") from None


def _response(
    request: pb.ModelInferRequest,
    model_name: str,
    task_id: str,
    model_version: int,
    outputs: dict[str, Array],
) -> pb.ModelInferResponse:
    from schemas.tensors import datatype_of

    response = pb.ModelInferResponse(
        model_name=model_name,
        model_version=str(model_version),
        id=request.id or task_id,
    )
    response.parameters["task_id"].string_param = task_id
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array, name), shape=array.shape)
        response.raw_output_contents.append(raw_of(array))
    return response


class GrpcFront(Component):
    """The gRPC listener (grpc.aio); `stop()` lets calls in progress finish for a grace."""

    def __init__(self, gateway: Gateway, host: str, port: int, grace_s: float = 10.0) -> None:
        self.gateway = gateway
        self._address = f"{host}:{port}"
        self._grace_s = grace_s
        self._server: aio.Server | None = None
        self.port = port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("gRPC front already started")
        limit = self.gateway.config.max_body_bytes
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                # Off unless processes share the port: then a second gateway started on a
                # taken port would bind beside it silently instead of failing.
                ("grpc.so_reuseport", int(self.gateway.config.reuse_port)),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Servicer(self.gateway), server
        )
        config = self.gateway.config
        if config.tls_certfile is not None and config.tls_keyfile is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_keyfile.read_bytes(), config.tls_certfile.read_bytes())]
            )
            self.port = server.add_secure_port(self._address, credentials)
        else:
            self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"gRPC cannot listen on {self._address}")
        await server.start()
        self._server = server
        log.info("gateway gRPC on %s (port %d)", self._address, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(self._grace_s)
            self._server = None
