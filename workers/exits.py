"""Exit codes of the `conveyor` command and the one-line errors that carry them.

Scripts tell failures apart by the code; people read the line. Every command ends with one of
these (`conveyor check` keeps its probe codes: 0 ready, 1 live but not ready, 2 not live).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    UnknownTopicOrPartitionError,
)
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from workers.settings import Settings


class ExitCode(IntEnum):
    OK = 0
    TASK_FAILED = 1
    """The task was answered FAILED, EXPIRED or REJECTED; or what was asked for is not there
    (no such task in the ledger, no policy for the tenant)."""
    USAGE = 2
    """Bad arguments, settings or input file; no model repository; no ONNX Runtime."""
    UNREACHABLE = 3
    """Kafka or Redis could not be reached (or refused the credentials), or the pipeline's
    topics do not exist yet (no worker has started)."""
    TIMEOUT = 4
    """No answer within the time asked for (`submit --wait-s`)."""
    PORT_TAKEN = 5
    """A worker's explicitly set metrics port is held by another process."""
    INTERRUPTED = 130
    """Ctrl-C."""


class CommandError(Exception):
    """A failure the `conveyor` command reports as one line and exits with `code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class PortTakenError(CommandError):
    """The metrics port a worker was told to use is held by another process."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.PORT_TAKEN)


@contextmanager
def registry_errors(settings: Settings, what: str) -> Iterator[None]:
    """The failures of a command on a registry in Redis (tenants, API keys) as one line: a bad
    value is usage (2), an unreachable or refusing Redis says so (3), any other Redis error
    names `what` (1)."""
    from workers.lanes.registry import PolicyError  # the registry imports the settings

    try:
        yield
    except PolicyError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    except RedisError as exc:
        if (known := explain(exc, settings)) is not None:
            raise known from None
        raise CommandError(f"{what}: {exc}", ExitCode.TASK_FAILED) from None


def explain(error: BaseException, settings: Settings) -> CommandError | None:
    """The one-line error for a failure to reach a service, or None for anything else (a
    bug keeps its traceback). Follows `raise ... from` chains and single-error groups."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, BaseExceptionGroup) and len(seen.exceptions) == 1:
            seen = seen.exceptions[0]
            continue
        if (found := _explain_one(seen, settings)) is not None:
            return found
        seen = seen.__cause__
    return None


_STACK_HINT = "is the stack up? (conveyor stack up; conveyor stack status)"


def _explain_one(error: BaseException, settings: Settings) -> CommandError | None:
    if isinstance(error, ModuleNotFoundError) and error.name == "onnxruntime":
        return CommandError(
            "ONNX Runtime is not installed: pip install 'conveyor[cpu]' (or 'conveyor[gpu]' "
            "for CUDA; one of the two, never both)",
            ExitCode.USAGE,
        )
    k = settings.kafka
    if isinstance(error, KafkaConnectionError | KafkaTimeoutError | NoBrokersAvailable):
        if k.security_protocol == "PLAINTEXT":
            hint = _STACK_HINT
        else:
            hint = (
                f"the broker is down or refused {k.security_protocol}/{k.sasl_mechanism} "
                f"as user {k.sasl_username!r}: check the kafka.* settings (the broker log says "
                "which)"
            )
        return CommandError(
            f"cannot reach Kafka at {k.bootstrap} (kafka.bootstrap, KAFKA_BOOTSTRAP): {hint}",
            ExitCode.UNREACHABLE,
        )
    if isinstance(error, UnknownTopicOrPartitionError):
        return CommandError(
            f"Kafka at {k.bootstrap} has no such topic ({error.args[0] if error.args else error}): "
            "workers create the pipeline's topics when they start: start one first (conveyor "
            "worker preprocess), with the same kafka.topic_prefix",
            ExitCode.UNREACHABLE,
        )
    if isinstance(error, RedisAuthenticationError):
        return CommandError(
            f"Redis at {redacted_url(settings.redis.url)} refused the credentials: check "
            f"redis.username and redis.password_file ({error})",
            ExitCode.UNREACHABLE,
        )
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return CommandError(
            f"cannot reach Redis at {redacted_url(settings.redis.url)} (redis.url, REDIS_URL): "
            + _STACK_HINT,
            ExitCode.UNREACHABLE,
        )
    return None


def redacted_url(url: str) -> str:
    """`url` without the password it may hold."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
