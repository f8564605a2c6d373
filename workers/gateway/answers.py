"""Results as callers see them: the V2 response head, output arrays, task bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from schemas import ContractError, ErrorResult, InferenceResult, arrays_of
from workers.client import Result
from workers.gateway.errors import GatewayError
from workers.gateway.tensors import Array, InferBody, http_response


def response_head(
    result: InferenceResult, model_name: str, request_id: str | None
) -> dict[str, Any]:
    """The V2 response fields besides `outputs`."""
    return {
        "model_name": model_name,
        "model_version": str(result.model_version),
        "id": request_id or result.task_id,
        "parameters": {"task_id": result.task_id, "model": result.model_name},
    }


def outputs_of(result: InferenceResult) -> Mapping[str, Array]:
    try:
        return arrays_of(result.outputs, "outputs")
    except ContractError as exc:
        raise GatewayError.of_contract(exc, result.task_id) from None


def task_body(result: Result) -> dict[str, Any]:
    """A result as `GET /v2/tasks/{id}` and callbacks give it: V2 JSON, or the error."""
    if isinstance(result, ErrorResult):
        return {
            "task_id": result.task_id,
            "state": result.status.value,
            "error": GatewayError.of_result(result).body(),
        }
    json_body, _ = http_response(
        response_head(result, result.pipeline, None), outputs_of(result), InferBody(None, {})
    )
    return {
        "task_id": result.task_id,
        "state": result.status.value,
        "result": orjson.loads(json_body),
    }
