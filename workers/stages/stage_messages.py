"""Who a record between stages belongs to, even when it does not decode."""

from __future__ import annotations

from schemas import StageMessage
from workers.stages.preprocess import identify
from workers.stages.work import DEFAULT_LANE, TaskIdentity, Work


def identify_stage_message(work: Work) -> TaskIdentity:
    message = work.message
    if isinstance(message, StageMessage):
        return TaskIdentity(
            message.task_id,
            message.tenant,
            message.pipeline,
            message.reply_to,
            message.content_type,
            message.traceparent,
            message.priority or DEFAULT_LANE,
        )
    return identify(work)
