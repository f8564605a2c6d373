"""Who a record belongs to, even when it does not decode, and answering it when it fails."""

from __future__ import annotations

import re

from schemas import ContractError, InferenceRequest, Status, content_type_of
from schemas.fields import ID_RE, MSGPACK, NAME_RE, TRACEPARENT_RE
from schemas.frames import Frame
from workers.engine.framing import fail_rows
from workers.engine.work import DEFAULT_LANE, StageOutput, TaskIdentity, Work, fail
from workers.names import Topics


class AnswersFailures:
    """What every stage does with a task it cannot serve (see `work.fail`)."""

    name: str
    topics: Topics

    def _fail(
        self, output: StageOutput, work: Work, error: ContractError, status: Status = Status.FAILED
    ) -> None:
        fail(
            output,
            work,
            self._identity(work),
            error,
            stage=self.name,
            results_topic=self.topics.results,
            dlq_topic=self.topics.dlq,
            status=status,
        )

    def _fail_rows(
        self,
        output: StageOutput,
        work: Work,
        frame: Frame,
        rows: list[int],
        error: ContractError,
        status: Status = Status.FAILED,
    ) -> None:
        """Answer tasks of a frame as failed; the rest of it goes on (see `framing.fail_rows`)."""
        fail_rows(
            output,
            work,
            frame,
            rows,
            error,
            stage=self.name,
            results_topic=self.topics.results,
            dlq_topic=self.topics.dlq,
            status=status,
        )

    def _identity(self, work: Work) -> TaskIdentity:
        return identify_task(work)


def identify_task(work: Work) -> TaskIdentity:
    """The task a record belongs to: from the decoded request, else its headers and key.

    A frame's tasks are answered row by row (`framing.fail_rows`), not through this."""
    request = work.message
    record = work.record
    if isinstance(request, InferenceRequest):
        try:
            content_type = content_type_of(record.headers, record.value or b"")
        except ContractError:
            content_type = MSGPACK
        return TaskIdentity(
            request.task_id,
            request.tenant,
            request.pipeline,
            request.reply_to,
            request.response_content_type or content_type,
            request.traceparent,
            request.priority or DEFAULT_LANE,
        )
    key = record.key.decode("utf-8", "replace") if record.key else None
    fallback = f"{record.topic}-{record.partition}-{record.offset}"
    try:
        content_type = content_type_of(record.headers, record.value or b"")
    except ContractError:
        content_type = MSGPACK
    traceparent = work.header("traceparent")
    return TaskIdentity(
        task_id=_valid(ID_RE, work.header("conveyor-task-id"), _valid(ID_RE, key, fallback)),
        tenant=_valid(NAME_RE, work.header("conveyor-tenant"), "unknown"),
        pipeline=None,
        reply_to=None,
        content_type=content_type,
        traceparent=traceparent if traceparent and TRACEPARENT_RE.fullmatch(traceparent) else None,
    )


def _valid(pattern: re.Pattern[str], value: str | None, fallback: str) -> str:
    """`value` when the contract would accept it, else `fallback`: an error reply must encode."""
    if value and len(value) <= 128 and pattern.fullmatch(value):
        return value
    return fallback
