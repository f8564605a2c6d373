"""Preprocess: decode and validate requests, resolve pipeline and model version, tokenize."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from schemas import (
    ContractError,
    DecodeLimits,
    ErrorCode,
    InferenceRequest,
    Status,
    arrays_of,
    content_type_of,
    decode_request,
)
from schemas.tensors import normalize_tensors
from workers.engine.framing import FrameBuilder
from workers.engine.identity import AnswersFailures, identify_task
from workers.engine.work import (
    DEFAULT_LANE,
    StageOutput,
    TaskIdentity,
    Work,
    internal_error,
)
from workers.lanes.affinity import lane_record_key
from workers.lanes.batcher import BatchWindow
from workers.lanes.intake import TenantTopicSelector
from workers.ledger import Transition
from workers.models.repository import ModelRepository, ModelVersion, PipelineConfig
from workers.names import LANES, Topics
from workers.observability import tracing
from workers.pipelines import Preprocessor, preprocessor
from workers.pipelines.base import Array, BatchPreprocessor
from workers.settings import LimitsSettings
from workers.stages.limits import check_request_inputs

BATCH_SIZE = 256


class PreprocessStage(AnswersFailures):
    name = "preprocess"
    reaches = Status.PREPROCESSED

    def __init__(
        self,
        topics: Topics,
        repository: ModelRepository,
        limits: LimitsSettings,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        tenant_topics: bool = False,
        partitions_per_tenant: int = 2,
        lane_of_tenant: Callable[[str], str] | None = None,
        lanes: tuple[str, ...] = (),
    ) -> None:
        self.topics = topics
        self.input_topics: tuple[str, ...] = (topics.requests,)
        self.input_pattern: str | None = None
        """Per-tenant mode: the runner subscribes to every `<prefix>.requests.<tenant>`."""
        self.input_selector: TenantTopicSelector | None = None
        """A lane pool in per-tenant mode: the runner follows the topics of its lanes' tenants."""
        if lanes:
            if not tenant_topics or lane_of_tenant is None:
                raise ValueError(
                    "worker.lanes: a preprocess pool reads the request topics of its lanes' "
                    "tenants, so it needs kafka.tenant_topics (on the one shared requests "
                    "topic a request's lane is known only once it has been read)"
                )
            self.input_selector = TenantTopicSelector(topics, lanes, lane_of_tenant)
        elif tenant_topics:
            self.input_pattern = topics.tenant_requests_pattern
        self.repository = repository
        self.request_limits = limits
        self.limits: DecodeLimits = limits.decode_limits()
        self._window = BatchWindow(
            max_batch_size or BATCH_SIZE, max_wait_ms if max_wait_ms is not None else 0
        )
        self._preprocessors: dict[str, Preprocessor] = {}
        self._batch_preprocessors: dict[str, BatchPreprocessor | None] = {}
        """Per preprocessor name: itself where it preprocesses many tasks in one call."""
        self.partitions_per_tenant = partitions_per_tenant
        self._lane_of_tenant = lane_of_tenant
        """The tenant's class (registry), so preprocess already serves high lanes first."""

    def batching(self, batch_key: Hashable) -> BatchWindow:
        return self._window

    def decode(self, record: ConsumerRecord[bytes, bytes]) -> Work:
        work = Work(record)
        try:
            request = decode_request(record.value or b"", record.headers, limits=self.limits)
            work.message = self._as_topic_tenant(record.topic, request)
            work.tenant = work.message.tenant
            if self._lane_of_tenant is not None:
                work.lane = self._lane_of_tenant(work.tenant)
            # Cheap checks at intake: a request over a limit never reaches a batch's work.
            check_request_inputs(work.message.inputs, self.request_limits)
        except ContractError as error:
            work.error = error
        return work

    def _as_topic_tenant(self, topic: str, request: InferenceRequest) -> InferenceRequest:
        """Per-tenant mode: the request is the topic's tenant's whatever its payload claims,
        and its answer goes to that tenant's results topic (a payload `reply_to` is ignored,
        so no tenant can have a worker write into another tenant's results)."""
        if not self._tenant_topics:
            return request
        tenant = self.topics.tenant_of(topic)
        if tenant is None:
            raise ContractError(ErrorCode.INVALID_VALUE, f"{topic!r} is no tenant's topic")
        return request.evolve(tenant=tenant, reply_to=self.topics.results_of(tenant))

    @property
    def _tenant_topics(self) -> bool:
        return self.input_pattern is not None or self.input_selector is not None

    def _identity(self, work: Work) -> TaskIdentity:
        identity = identify_task(work)
        tenant = self.topics.tenant_of(work.record.topic) if self._tenant_topics else None
        if tenant is None:
            return identity
        # Even a request that does not decode is answered on its topic's tenant's results.
        return dataclasses.replace(identity, tenant=tenant, reply_to=self.topics.results_of(tenant))

    async def process(self, batch: list[Work]) -> StageOutput:
        """Every request of the batch preprocessed, the good ones forwarded as frames: one
        per (lane, tenant, pipeline, model, version pin, shape bucket), made of what arrived;
        nothing waits for a frame to fill. Requests of one pipeline and model version are
        preprocessed together where the preprocessor can (one `encode_batch_fast` for all their
        texts)."""
        output = StageOutput()
        frames = FrameBuilder()
        groups: dict[tuple[str, str, int], list[_Resolved]] = {}
        for work in batch:
            try:
                resolved = self._resolve(work)
            except ContractError as error:
                self._fail(output, work, error, _status_of(error))
                continue
            except Exception as exc:  # a bug fails its task, never the worker
                self._fail(output, work, internal_error(exc))
                continue
            model = resolved.model
            groups.setdefault((resolved.pipeline.name, model.name, model.version), []).append(
                resolved
            )
        for group in groups.values():
            started = time.perf_counter()
            answers = self._run_preprocessor(group)
            each_ms = (time.perf_counter() - started) * 1000 / len(group)
            # All of the group's tasks are preprocessed by now: one time for all of them lets
            # the ledger write them as one group (per-task times split a frame into several).
            preprocessed_at_ms = int(time.time() * 1000)
            for resolved, answer in zip(group, answers, strict=True):
                try:
                    if isinstance(answer, BaseException):
                        raise answer
                    self._add(output, frames, resolved, answer, each_ms, preprocessed_at_ms)
                except ContractError as error:
                    self._fail(output, resolved.work, error, _status_of(error))
                except Exception as exc:  # a bug in a plug-in fails its task, never the worker
                    self._fail(output, resolved.work, internal_error(exc))
        for frame in frames.frames():
            output.forward(
                self.topics.preprocessed_of(frame.lane),
                frame,
                key=lane_record_key(frame.tenant, frame.task_ids[0], self.partitions_per_tenant),
            )
        return output

    def _resolve(self, work: Work) -> _Resolved:
        """The request's pipeline and model version, once it is known to be worth it."""
        if work.error is not None:
            raise work.error
        request: InferenceRequest = work.message
        now_ms = int(time.time() * 1000)
        if request.deadline_ms is not None and request.deadline_ms <= now_ms:
            raise ContractError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"deadline_ms {request.deadline_ms} passed before preprocessing (now {now_ms})",
                "deadline_ms",
            )
        pipeline, model = self.repository.resolve(request.pipeline, request.model_version)
        return _Resolved(work, request, pipeline, model)

    def _run_preprocessor(self, group: list[_Resolved]) -> list[dict[str, Array] | Exception]:
        """The group's tensors (or its error) per task: one call for all where the
        preprocessor takes many tasks at once, else one call each."""
        first = group[0]
        function = self._preprocessor(first.pipeline.preprocess)
        many = self._batch_preprocessors[first.pipeline.preprocess]
        if many is not None:
            tasks = [(arrays_of(r.request.inputs), r.request.parameters) for r in group]
            try:
                return many.many(tasks, first.pipeline, first.model)
            except Exception as exc:  # the whole call failed: each task on its own below
                if len(group) == 1:
                    return [exc]
        answers: list[dict[str, Array] | Exception] = []
        for r in group:
            try:
                answers.append(
                    function(arrays_of(r.request.inputs), r.request.parameters, r.pipeline, r.model)
                )
            except Exception as exc:  # answered per task by the caller
                answers.append(exc)
        return answers

    def _add(
        self,
        output: StageOutput,
        frames: FrameBuilder,
        resolved: _Resolved,
        tensors: dict[str, Array],
        preprocess_ms: float,
        preprocessed_at_ms: int,
    ) -> None:
        work, request, model = resolved.work, resolved.request, resolved.model
        checked = arrays_of(normalize_tensors(tensors, "tensors"))
        content_type = request.response_content_type or content_type_of(
            work.record.headers, work.record.value or b""
        )
        # Admission wrote the lane into `priority` (the tenant's class, or a lower one asked for).
        lane = request.priority if request.priority in LANES else DEFAULT_LANE
        config = model.config
        first = config.inputs[0].name if config.inputs else None
        shape: tuple[int, ...] = tuple(getattr(checked.get(first) if first else None, "shape", ()))
        bucket = config.batching.bucket_of(int(shape[1]) if len(shape) >= 2 else 1)
        frames.add(
            # Only a pin travels on: an unpinned task is routed by the inference worker's
            # policy (latest, canary) when it runs, not by what preprocess saw as latest.
            (lane, request.tenant, request.pipeline, request.model_version, bucket, *checked),
            task_id=request.task_id,
            tenant=request.tenant,
            pipeline=request.pipeline,
            lane=lane,
            model_name=model.name,
            model_version=request.model_version,
            submitted_at_ms=request.submitted_at_ms,
            deadline_ms=request.deadline_ms,
            reply_to=request.reply_to,
            content_type=content_type,
            traceparent=tracing.active().forward(self.name, request.traceparent, request.task_id),
            parameters=request.parameters,
            timings_ms={
                "preprocess_queue": max(0.0, (time.monotonic() - work.received_at) * 1000),
                "preprocess": preprocess_ms,
            },
            tensors=checked,
        )
        output.transitions.append(
            Transition(
                task_id=request.task_id,
                state=Status.PREPROCESSED,
                at_ms=preprocessed_at_ms,
                tenant=request.tenant,
                pipeline=request.pipeline,
                stage=self.name,
                model_name=model.name,
                model_version=request.model_version,
            )
        )

    def _preprocessor(self, name: str) -> Preprocessor:
        if name not in self._preprocessors:
            function = self._preprocessors[name] = preprocessor(name)
            # Asked once: a runtime-checkable Protocol's isinstance walks the protocol's
            # members on every call (~10-20 us, paid by every frame).
            batch = function if isinstance(function, BatchPreprocessor) else None
            self._batch_preprocessors[name] = batch
        return self._preprocessors[name]


@dataclass(frozen=True)
class _Resolved:
    """A request past its first checks, with what it runs on."""

    work: Work
    request: InferenceRequest
    pipeline: PipelineConfig
    model: ModelVersion


_REJECTED = (
    ErrorCode.QUOTA_EXCEEDED,
    ErrorCode.UNKNOWN_TENANT,
    ErrorCode.UNDELIVERABLE,
    ErrorCode.DUPLICATE_ID,
)


def _status_of(error: ContractError) -> Status:
    if error.code == ErrorCode.DEADLINE_EXCEEDED:
        return Status.EXPIRED
    if error.code in _REJECTED:
        return Status.REJECTED
    return Status.FAILED
