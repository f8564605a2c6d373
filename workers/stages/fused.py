"""Fused: preprocess, inference and postprocess in one worker, two Kafka hops instead of four.

Where a hop costs more than the work (a small host, a low rate: each hop is a produce, a
fetch and a wake-up of another process), one worker can run the whole pipeline: it reads
requests as preprocess does (admission, quotas, duplicate ids), hands each batch's frames to
the model and to postprocess in memory, and publishes results and errors exactly as the
staged pipeline does. The ledger gets the same transitions (in one call), an offset is
committed once the results it produced are acknowledged, and exactly-once covers the whole
request -> result step in one transaction.

What it gives up against the staged layout: the stages cannot be scaled apart (add fused
workers instead: they share the requests topic's partitions), and lanes are kept apart only
by the worker's own batcher (the highest lane's requests are served first), not by topics:
a bulk backlog on the shared requests topic delays a realtime request behind it by the
records one poll returns. For the isolation targets run the stages apart, with lane pools.
"""

from __future__ import annotations

from collections.abc import Hashable

from aiokafka import ConsumerRecord

from schemas import InferenceRequest, Status
from schemas.frames import Frame
from workers.engine.work import StageOutput, Work
from workers.lanes.batcher import BatchWindow
from workers.stages.inference import InferenceStage
from workers.stages.postprocess import PostprocessStage
from workers.stages.preprocess import PreprocessStage

FusedKey = tuple[str, int | None]
"""A request's batch key: its pipeline's model and version pin (the model's window)."""


class FusedStage:
    name = "fused"
    reaches = Status.DONE

    def __init__(
        self,
        preprocess: PreprocessStage,
        inference: InferenceStage,
        postprocess: PostprocessStage,
    ) -> None:
        self.preprocess = preprocess
        self.inference = inference
        self.postprocess = postprocess
        self.topics = preprocess.topics
        self.input_topics = preprocess.input_topics
        self.input_pattern = preprocess.input_pattern
        self.input_selector = preprocess.input_selector

    def batching(self, batch_key: Hashable) -> BatchWindow:
        """The model's window (size, wait, preferred sizes): a batch of requests here is a
        batch of the model."""
        if batch_key is None:  # a request that will fail: preprocess answers it
            return self.preprocess.batching(None)
        return self.inference.batching(batch_key)

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work:
        work = self.preprocess.decode(record)
        request = work.message
        if work.error is None and isinstance(request, InferenceRequest):
            pipeline = self.preprocess.repository.pipelines.get(request.pipeline)
            if pipeline is not None:
                work.batch_key = (pipeline.model, request.model_version)
        return work

    async def process(self, batch: list[Work]) -> StageOutput:
        """Preprocess the batch; run the model on its frames, one run per shape bucket;
        postprocess what it gave. A batch the model fails raises (`BatchFailed`) before any
        output leaves, so the runner's bisection finds the request to blame as elsewhere."""
        output = await self.preprocess.process(batch)
        source = {w.message.task_id: w for w in batch if isinstance(w.message, InferenceRequest)}
        buckets: dict[Hashable, list[Work]] = {}
        for frame in _take_frames(output):
            work = _frame_work(source[frame.task_ids[0]], frame)
            self.inference.place(work, frame)
            buckets.setdefault(work.batch_key, []).append(work)
        for group in buckets.values():
            inferred = await self.inference.process(group)
            frames = _take_frames(inferred)
            output.merge(inferred)
            if frames:
                finished = [
                    _frame_work(w, f) for w, f in zip(_sources(group, frames), frames, strict=True)
                ]
                output.merge(await self.postprocess.process(finished))
        return output


def _take_frames(output: StageOutput) -> list[Frame]:
    """The frames `output` would forward to the next stage, taken out of it."""
    frames = [p.message for p in output.pending if isinstance(p.message, Frame)]
    output.pending = [p for p in output.pending if not isinstance(p.message, Frame)]
    return frames


def _frame_work(source: Work, frame: Frame) -> Work:
    """A frame handed on in memory, as the next stage would have decoded it: answered,
    if it fails, with the record of its first task (dead letters name that source)."""
    return Work(
        source.record,
        message=frame,
        rows=max(1, frame.rows),
        lane=frame.lane,
        tenant=frame.tenant,
        generation=source.generation,
        may_be_redelivered=False,
    )


def _sources(group: list[Work], frames: list[Frame]) -> list[Work]:
    """For each inferred frame, the work of the frame it came from (by its first task)."""
    by_task = {task_id: w for w in group for task_id in w.message.task_ids}
    return [by_task[frame.task_ids[0]] for frame in frames]
