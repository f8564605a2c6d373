"""What replaces a refused record: the refused tasks fail alone, each answered once."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import ErrorCode, ErrorResult, InferenceResult, Status, decode_result, encode
from schemas.codec import headers_for
from workers.engine.refusals import OwnTopicRefused, Refusals
from workers.engine.work import Outgoing
from workers.kafka.produce import Refused
from workers.ledger import Transition
from workers.names import Topics

TOPICS = Topics("cv")


def _result(task_id: str, topic: str) -> Outgoing:
    result = InferenceResult(
        task_id=task_id,
        tenant="acme",
        pipeline="p",
        outputs={"y": np.zeros(2, np.float32)},
        model_name="m",
        model_version=1,
        submitted_at_ms=1,
    )
    return Outgoing(topic, task_id.encode(), encode(result), headers_for(result), "result")


def _done(task_id: str) -> Transition:
    return Transition(task_id=task_id, state=Status.DONE, at_ms=1, tenant="acme", pipeline="p")


def test_a_result_to_a_refused_reply_topic_fails_its_task_only() -> None:
    outgoing = [_result("a", "client.replies"), _result("b", TOPICS.results)]
    transitions = [_done("a"), _done("b")]
    refused = [Refused(0, "client.replies", "topic 'client.replies' does not exist")]
    instead = Refusals(TOPICS, "postprocess").answer(refused, outgoing, transitions)
    assert [(o.topic, o.kind) for o in instead] == [
        (TOPICS.results, "error"),
        (TOPICS.dlq, "dead_letter"),
    ]
    error = decode_result(instead[0].value, instead[0].headers)
    assert isinstance(error, ErrorResult)
    assert (error.task_id, error.code, error.status) == (
        "a",
        ErrorCode.UNDELIVERABLE,
        Status.FAILED,
    )
    assert "does not exist" in error.message
    assert instead[1].value == outgoing[0].value  # the undelivered result itself
    states = {t.task_id: (t.state, t.error_code) for t in transitions}
    assert states == {"a": (Status.FAILED, "UNDELIVERABLE"), "b": (Status.DONE, None)}


def test_a_result_too_large_is_answered_where_it_was_to_go() -> None:
    outgoing = [_result("a", "client.replies")]
    transitions = [_done("a")]
    refused = [Refused(0, "client.replies", "record too large", too_large=True)]
    instead = Refusals(TOPICS, "postprocess").answer(refused, outgoing, transitions)
    assert instead[0].topic == "client.replies"
    assert decode_result(instead[0].value, instead[0].headers).code is ErrorCode.PAYLOAD_TOO_LARGE  # type: ignore[union-attr]
    assert instead[1].value == b""
    assert transitions[0].state is Status.FAILED


def test_an_error_result_to_a_refused_topic_goes_to_the_results_topic() -> None:
    record = Outgoing("client.replies", b"a", b"error bytes", [], "error")
    instead = Refusals(TOPICS, "preprocess").answer(
        [Refused(0, "client.replies", "gone")], [record], []
    )
    assert instead == [Outgoing(TOPICS.results, b"a", b"error bytes", [], "error")]


@pytest.mark.parametrize("topic", [TOPICS.results, TOPICS.dlq, TOPICS.preprocessed_of("bulk")])
def test_a_refusal_of_conveyors_own_topic_is_retried(topic: str) -> None:
    with pytest.raises(OwnTopicRefused):
        Refusals(TOPICS, "preprocess").answer(
            [Refused(0, topic, "gone")], [_result("a", topic)], [_done("a")]
        )
