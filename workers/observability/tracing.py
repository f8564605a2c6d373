"""W3C trace context across stages: one trace id from request to result, a span per stage.

Each stage forwards `traceparent` with the same trace id and a span id of its own, so a
tracing backend sees the stages as consecutive spans of the client's trace; a request
without trace context starts a new trace at preprocess.

With OpenTelemetry enabled (`observability.otel_enabled`, the `otel` extra installed) those
span ids belong to real spans: one per task and stage, child of the incoming context, and
one per batch linked to every task it carried. Off (the default), forwarding a context is
a string operation and nothing else runs.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    return f"00-{random.getrandbits(128):032x}-{_span_id()}-01"


def _span_id() -> str:
    # Ids need uniqueness, not secrecy (OpenTelemetry's SDK draws them the same way); the
    # secrets module cost ~2 % of a stage's CPU at this rate.
    return f"{random.getrandbits(64) or 1:016x}"


def child_of(traceparent: str | None, span_id: str | None = None) -> str:
    """The context a stage forwards: same trace, new span (`span_id`, else a fresh one); a
    new trace when none is valid."""
    match = _TRACEPARENT.match(traceparent or "")
    if match is None or match.group(1) == "0" * 32:
        return new_traceparent()
    return f"00-{match.group(1)}-{span_id or _span_id()}-{match.group(3)}"


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


class Tracer:
    """No spans: forwarding a context only draws a new span id."""

    def forward(self, stage: str, traceparent: str | None, task_id: str) -> str:
        return child_of(traceparent)

    def forward_frame(
        self, stage: str, traceparents: Sequence[str | None], task_ids: Sequence[str]
    ) -> list[str]:
        """`forward` for every task of a frame. Without spans one span id serves the whole
        frame (ids need only be unique within a trace, and each task has a trace of its
        own): one draw per frame, not per task."""
        span_id = _span_id()
        return [child_of(traceparent, span_id) for traceparent in traceparents]

    @contextlib.contextmanager
    def batch(
        self, stage: str, batch_id: str, traceparents: Sequence[str | None]
    ) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        """Export what is pending; the worker calls it once its runner has stopped."""


class OtelTracer(Tracer):
    """Real OpenTelemetry spans through the given tracer provider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("conveyor")
        self._propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        # Spans of the last batches wait in the batch processor; an exit that skipped the
        # interpreter's atexit hooks would lose them, so they are flushed here explicitly.
        self._provider.shutdown()

    def forward(self, stage: str, traceparent: str | None, task_id: str) -> str:
        parent = self._propagator.extract({"traceparent": traceparent} if traceparent else {})
        span = self._tracer.start_span(
            f"conveyor.{stage}", context=parent, attributes={"conveyor.task_id": task_id}
        )
        span.end()
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent") or child_of(traceparent)

    def forward_frame(
        self, stage: str, traceparents: Sequence[str | None], task_ids: Sequence[str]
    ) -> list[str]:
        """A real span per task, as `forward`."""
        return [
            self.forward(stage, traceparent, task_id)
            for traceparent, task_id in zip(traceparents, task_ids, strict=True)
        ]

    @contextlib.contextmanager
    def batch(
        self, stage: str, batch_id: str, traceparents: Sequence[str | None]
    ) -> Iterator[None]:
        from opentelemetry import trace

        links = []
        for traceparent in traceparents:
            context = self._propagator.extract({"traceparent": traceparent} if traceparent else {})
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                links.append(trace.Link(span_context))
        attributes = {"conveyor.batch_id": batch_id, "conveyor.batch_tasks": len(traceparents)}
        with self._tracer.start_as_current_span(
            f"conveyor.{stage}.batch", links=links, attributes=attributes
        ):
            yield


_active: Tracer = Tracer()


def active() -> Tracer:
    return _active


def configure(enabled: bool, exporter: str = "otlp", endpoint: str | None = None) -> Tracer:
    """Install the process's tracer once at start; OpenTelemetry only when enabled and present."""
    global _active
    if not enabled:
        _active = Tracer()
        return _active
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "observability.otel_enabled needs the otel extra: pip install 'conveyor[otel]'"
        ) from exc

    provider = TracerProvider(resource=Resource.create({"service.name": "conveyor"}))
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    else:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    _active = OtelTracer(provider)
    return _active
