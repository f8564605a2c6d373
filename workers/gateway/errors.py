"""Every failure a gateway caller can see: one exception, mapped to an HTTP status and a
gRPC code, answered in the protocol's error shape (`{"error": "..."}`), never a traceback."""

from __future__ import annotations

from typing import Any

import grpc

from schemas import ContractError, ErrorCode, ErrorResult
from workers.exits import PortTakenError

_STATUS_OF_CODE: dict[ErrorCode, int] = {
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_PIPELINE: 404,
    ErrorCode.UNKNOWN_MODEL_VERSION: 404,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.UNKNOWN_TENANT: 403,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INFERENCE_FAILED: 500,
    ErrorCode.CLAIM_CHECK_MISSING: 500,
    ErrorCode.INTERNAL: 500,
}
"""Contract error codes that are not the caller's malformed input (400)."""

_GRPC_OF_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(code: ErrorCode) -> int:
    """The HTTP status of a contract error code."""
    return _STATUS_OF_CODE.get(code, 400)


class GatewayError(Exception):
    """A request the gateway answers with an error: HTTP `status`, a stable `code`, a
    message naming the bad value, and the task id when a task exists."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        task_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.task_id = task_id
        self.retry_after_s = retry_after_s

    @classmethod
    def of_contract(cls, error: ContractError, task_id: str | None = None) -> GatewayError:
        return cls(status_of(error.code), error.code.value, error.message, task_id)

    @classmethod
    def of_result(cls, result: ErrorResult) -> GatewayError:
        message = f"{result.status.value} at {result.stage}: {result.message}"
        return cls(status_of(result.code), result.code.value, message, result.task_id)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return _GRPC_OF_STATUS.get(self.status, grpc.StatusCode.UNKNOWN)

    def body(self) -> dict[str, Any]:
        """The V2 error shape, plus the stable code and the task id."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.task_id is not None:
            body["task_id"] = self.task_id
        return body

    def details(self) -> str:
        """The gRPC status details: the message, the code and the task id."""
        task = f" (task_id {self.task_id})" if self.task_id else ""
        return f"{self.code}: {self.message}{task}"


def bad_request(message: str, code: ErrorCode = ErrorCode.INVALID_VALUE) -> GatewayError:
    return GatewayError(status_of(code), code.value, message)


def port_taken(setting: str, port: int) -> PortTakenError:
    """The one-line error (exit code 5) for a gateway port another process holds."""
    name = setting.split(".")[1]
    return PortTakenError(
        f"{setting} {port} is taken by another process: stop it, or choose another port "
        f"(--{name.replace('_', '-')} or CONVEYOR_GATEWAY__{name.upper()})"
    )
