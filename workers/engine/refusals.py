"""What delivery does with a record the broker refused for good (`workers.kafka.produce`).

The refusal belongs to the tasks of that record, never to the batch: those tasks are failed
and the rest of the batch goes on.

- a result whose `reply_to` topic is refused (missing, not writable, internal): the task is
  FAILED `UNDELIVERABLE` (its DONE move replaced), an error result goes to the default
  results topic and the result itself to the dead letters;
- a result too large: FAILED `PAYLOAD_TOO_LARGE`, an error result where the result was to
  go, a dead letter of its headers;
- an error result whose topic is refused, or refused there as too large: the same error
  result on the default results topic (the task failed already, its dead letter is on its
  way);
- a frame between stages too large: each of its tasks FAILED `PAYLOAD_TOO_LARGE`, an error
  result each, one dead letter of its headers;
- a dead letter too large: sent without its value.

A refusal of one of Conveyor's own pipeline topics (`Topics.all()`: a lane topic, the
results or dead-letter topic) is no request's fault: it is raised as a retriable error, and
the worker retries (not ready) until an operator fixes the topic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from schemas import ContractError, ErrorCode, ErrorResult, Status, encode, headers_for
from schemas.fields import CONTENT_TYPES, ID_RE, MSGPACK, NAME_RE
from schemas.frames import decode_frame
from workers.engine.work import Outgoing
from workers.kafka.produce import Refused
from workers.ledger import Transition
from workers.names import Topics

_ANSWERS = ("result", "error")


class OwnTopicRefused(KafkaError):  # type: ignore[misc]
    """One of Conveyor's own topics refused a record: retried, the worker not ready."""

    retriable = True


class Refusals:
    """Turns refused records into what is sent instead (see the module's table)."""

    def __init__(self, topics: Topics, stage: str) -> None:
        self.topics = topics
        self.stage = stage
        self._own = frozenset(topics.all())

    def answer(
        self,
        refused: Sequence[Refused],
        outgoing: Sequence[Outgoing],
        transitions: list[Transition],
    ) -> list[Outgoing]:
        """The records to send instead of the refused ones; `transitions` is changed in place
        (the refused tasks' moves become FAILED)."""
        instead: list[Outgoing] = []
        for refusal in refused:
            record = outgoing[refusal.index]
            if not refusal.too_large and record.topic in self._own:
                raise OwnTopicRefused(f"{record.kind} record refused: {refusal.reason}")
            if record.kind == "dead_letter":
                instead.append(_without_value(record, refusal.reason))
            elif record.kind == "error":
                instead.append(self._error_elsewhere(record, refusal))
            elif record.kind == "result":
                instead += self._fail_result(record, refusal, transitions)
            else:
                instead += self._fail_frame(record, refusal, transitions)
        return instead

    def _error_elsewhere(self, record: Outgoing, refusal: Refused) -> Outgoing:
        if refusal.too_large and record.topic == self.topics.results:
            # Too large even for the results topic (a message near its cap): answer anew, short.
            return self._error_result(
                record.headers, record.topic, ErrorCode.PAYLOAD_TOO_LARGE, refusal.reason[:256]
            )
        # A topic that refused it, or one whose records must be smaller than this: the
        # default results topic takes the same answer.
        return Outgoing(self.topics.results, record.key, record.value, record.headers, "error")

    def _fail_result(
        self, record: Outgoing, refusal: Refused, transitions: list[Transition]
    ) -> list[Outgoing]:
        task_id, tenant = (
            _header(record.headers, "conveyor-task-id"),
            _header(record.headers, "conveyor-tenant"),
        )
        code = ErrorCode.PAYLOAD_TOO_LARGE if refusal.too_large else ErrorCode.UNDELIVERABLE
        message = f"the result could not be delivered to {record.topic!r}: {refusal.reason}"
        answer_topic = record.topic if refusal.too_large else self.topics.results
        _fail_in_ledger(transitions, [task_id], tenant, code, message, self.stage)
        return [
            self._error_result(record.headers, answer_topic, code, message),
            self._dead_letter(record, code, message, keep_value=not refusal.too_large),
        ]

    def _fail_frame(
        self, record: Outgoing, refusal: Refused, transitions: list[Transition]
    ) -> list[Outgoing]:
        try:
            frame = decode_frame(record.value)
        except ContractError as exc:  # our own bytes: cannot be; keep the worker going
            raise OwnTopicRefused(f"refused frame does not decode: {exc}") from exc
        code = ErrorCode.PAYLOAD_TOO_LARGE
        message = f"the task's frame to {record.topic!r} was refused: {refusal.reason}"
        _fail_in_ledger(transitions, frame.task_ids, frame.tenant, code, message, self.stage)
        instead = [self._dead_letter(record, code, message, keep_value=False)]
        for i, task_id in enumerate(frame.task_ids):
            result = _error(task_id, frame.tenant, code, message, self.stage, frame.pipeline)
            content_type = frame.content_types[i]
            instead.append(
                Outgoing(
                    frame.reply_to[i] or self.topics.results,
                    task_id.encode(),
                    encode(result, content_type),
                    headers_for(result, content_type),
                    "error",
                )
            )
        return instead

    def _error_result(
        self, headers: Sequence[tuple[str, bytes]], topic: str, code: ErrorCode, message: str
    ) -> Outgoing:
        task_id, tenant = _header(headers, "conveyor-task-id"), _header(headers, "conveyor-tenant")
        content_type = _header(headers, "content-type")
        content_type = content_type if content_type in CONTENT_TYPES else MSGPACK
        result = _error(task_id, tenant, code, message, self.stage)
        return Outgoing(
            topic,
            task_id.encode(),
            encode(result, content_type),
            headers_for(result, content_type),
            "error",
        )

    def _dead_letter(
        self, record: Outgoing, code: ErrorCode, message: str, *, keep_value: bool
    ) -> Outgoing:
        headers = [
            *record.headers,
            ("conveyor-error-code", code.value.encode()),
            ("conveyor-error-message", message[:1024].encode("utf-8", "replace")),
            ("conveyor-error-stage", self.stage.encode()),
            ("conveyor-source", f"undelivered/{record.topic}".encode()),
        ]
        if not keep_value:
            headers.append(("conveyor-value-dropped", str(len(record.value)).encode()))
        value = record.value if keep_value else b""
        return Outgoing(self.topics.dlq, record.key, value, headers, "dead_letter")


def _without_value(record: Outgoing, reason: str) -> Outgoing:
    headers = [*record.headers, ("conveyor-value-dropped", reason[:1024].encode())]
    return Outgoing(record.topic, record.key, b"", headers, record.kind)


def _error(
    task_id: str,
    tenant: str,
    code: ErrorCode,
    message: str,
    stage: str,
    pipeline: str | None = None,
) -> ErrorResult:
    return ErrorResult.new(
        task_id=task_id if ID_RE.fullmatch(task_id) else "unknown",
        tenant=tenant if NAME_RE.fullmatch(tenant) else "unknown",
        code=code,
        message=message,
        stage=stage,
        pipeline=pipeline,
    )


def _fail_in_ledger(
    transitions: list[Transition],
    task_ids: Sequence[str],
    tenant: str,
    code: ErrorCode,
    message: str,
    stage: str,
) -> None:
    """The tasks' moves of this batch become FAILED (a final state: the ledger keeps it)."""
    failing = set(task_ids)
    kept = [t for t in transitions if t.task_id not in failing]
    pipelines = {t.task_id: t.pipeline for t in transitions if t.task_id in failing}
    at_ms = int(time.time() * 1000)
    transitions[:] = kept + [
        Transition(
            task_id=task_id,
            state=Status.FAILED,
            at_ms=at_ms,
            tenant=tenant,
            pipeline=pipelines.get(task_id),
            stage=stage,
            error_code=code.value,
            error_message=message,
        )
        for task_id in dict.fromkeys(task_ids)
        if task_id
    ]


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str:
    for key, value in headers:
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return ""
