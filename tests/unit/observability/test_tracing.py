from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from workers.observability.tracing import OtelTracer, Tracer, child_of, trace_id

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_without_otel_a_stage_keeps_the_trace_and_draws_a_new_span() -> None:
    forwarded = Tracer().forward("preprocess", PARENT, "t-1")
    assert trace_id(forwarded) == trace_id(PARENT)
    assert forwarded != PARENT
    assert trace_id(child_of(None)) is not None
    assert trace_id(child_of("garbage")) is not None
    assert trace_id(child_of(f"00-{'0' * 32}-00f067aa0ba902b7-01")) != "0" * 32


def test_otel_spans_are_children_of_the_request_and_batches_link_every_task() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = OtelTracer(provider)
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    with tracer.batch("inference", "b1", [PARENT, other, None]):
        forwarded = tracer.forward("inference", PARENT, "t-1")

    spans = {s.name: s for s in exporter.get_finished_spans()}
    task, batch = spans["conveyor.inference"], spans["conveyor.inference.batch"]
    assert f"{task.context.trace_id:032x}" == trace_id(PARENT)
    assert task.parent is not None
    assert f"{task.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert forwarded == f"00-{task.context.trace_id:032x}-{task.context.span_id:016x}-01"
    assert {f"{link.context.trace_id:032x}" for link in batch.links} == {
        trace_id(PARENT),
        trace_id(other),
    }
    assert batch.attributes is not None
    assert batch.attributes["conveyor.batch_tasks"] == 3
