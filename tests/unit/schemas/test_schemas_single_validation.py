"""Each field is checked once: fast-path checks, trusted decoding, ``evolve`` and derivations."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    MSGPACK,
    ContractError,
    ErrorCode,
    InferenceRequest,
    InferenceResult,
    _envelope,
    decode_result,
    encode,
)
from schemas import fields as fields_module
from schemas._checks import check_int, check_str
from schemas.fields import Field, Kind
from schemas.messages import ErrorResult
from tests.unit.schemas.schema_strategies import results

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def result(**options: Any) -> InferenceResult:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "tenant": "acme",
        "pipeline": "tiny-classify",
        "outputs": {"logits": np.zeros((1, 16), np.float32)},
        "model_name": "m",
        "model_version": 3,
        "traceparent": TRACEPARENT,
        "timings_ms": {"preprocess": 0.5},
        "submitted_at_ms": 1_700_000_000_000,
        "completed_at_ms": 1_700_000_000_010,
    }
    return InferenceResult(**(fields | options))


def full_check(spec: Field, value: Any) -> Any:
    """The reference: the slow check every fast path falls back to."""
    if value is None and spec.nullable:
        return None
    name, kind = spec.name, spec.kind
    if kind in (Kind.ID, Kind.NAME, Kind.TEXT):
        pattern = {Kind.ID: fields_module.ID_RE, Kind.NAME: fields_module.NAME_RE}.get(kind)
        return check_str(value, name, max_len=spec.max_len, pattern=pattern)
    if kind is Kind.TOPIC:
        return check_str(value, name, max_len=249, pattern=fields_module.TOPIC_RE)
    if kind is Kind.TRACEPARENT:
        return check_str(value, name, min_len=55, max_len=55, pattern=fields_module.TRACEPARENT_RE)
    if kind in (Kind.COUNT, Kind.VERSION):
        return check_int(value, name, minimum=0 if kind is Kind.COUNT else 1)
    if kind is Kind.CONTENT_TYPE:
        return fields_module._check_content_type(spec, value)
    if kind is Kind.PARAMS:
        return fields_module._check_params(spec, value)
    assert kind is Kind.TIMINGS
    return fields_module._check_timings(spec, value)


def outcome(check: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", check(value)
    except ContractError as error:
        return "error", (error.code, error.field, error.message)


SCALAR_FIELDS = [
    spec
    for cls in (InferenceRequest, InferenceResult, ErrorResult)
    for spec in cls.FIELDS
    if spec.kind not in (Kind.TENSORS, Kind.ENUM)
]
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True),
    st.text(max_size=70),
    st.text(alphabet="abcdef0123456789-", min_size=50, max_size=60),
    st.sampled_from([MSGPACK, "application/json", TRACEPARENT, "acme", "a" * 129, "\udcff"]),
    st.dictionaries(
        st.one_of(st.text(max_size=70), st.integers()),
        st.one_of(st.floats(allow_nan=True), st.integers(), st.none()),
        max_size=3,
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SCALAR_FIELDS), ODD_VALUES)
def test_compiled_checks_agree_with_the_full_checks(spec: Field, value: Any) -> None:
    assert outcome(spec.check, value) == outcome(lambda v: full_check(spec, v), value)
    assert outcome(spec.check, value) == outcome(spec.check, value)  # remembered names too


def test_remembered_names_are_bounded() -> None:
    seen: set[str] = set()
    for index in range(fields_module.SEEN_NAMES_LIMIT + 10):
        fields_module._remember(seen, f"n{index}")
    assert len(seen) == fields_module.SEEN_NAMES_LIMIT


def test_timings_are_copied_and_ints_become_floats() -> None:
    timings: dict[str, Any] = {"preprocess": 1}
    message = result(timings_ms=timings)
    assert message.timings_ms == {"preprocess": 1.0}
    assert type(message.timings_ms["preprocess"]) is float
    timings["late"] = 2.0
    assert "late" not in message.timings_ms


@settings(max_examples=50, deadline=None)
@given(results())
def test_evolve_equals_replace(message: InferenceResult) -> None:
    changes: dict[str, Any] = {
        "outputs": {"out": np.arange(4, dtype=np.float32).reshape(1, 4)},
        "timings_ms": {**message.timings_ms, "postprocess": 1.5},
        "completed_at_ms": 1_700_000_000_010,
    }
    evolved = message.evolve(**changes)
    assert evolved == dataclasses.replace(message, **changes)
    assert decode_result(encode(evolved)) == evolved


def test_evolve_checks_the_changed_fields() -> None:
    message = result()
    with pytest.raises(ContractError) as caught:
        message.evolve(timings_ms={"bad key": 1.0})
    assert (caught.value.code, caught.value.field) == (
        ErrorCode.INVALID_VALUE,
        "timings_ms.bad key",
    )
    with pytest.raises(ContractError) as caught:
        message.evolve(outputs={"x": [1, 2]})
    assert caught.value.code is ErrorCode.WRONG_TYPE
    with pytest.raises(TypeError, match="no field 'output'"):
        message.evolve(output={})
    strings = message.evolve(outputs={"s": np.array(["a", "b"])}).outputs["s"]
    assert isinstance(strings, np.ndarray)
    assert strings.dtype == object  # normalised like the constructor does


def test_evolve_shares_unchanged_values_and_rechecks_parameters() -> None:
    request = InferenceRequest.new(
        tenant="acme", pipeline="p", inputs={"x": np.zeros(3)}, parameters={"top_k": 3}
    )
    evolved = request.evolve(tenant="other", reply_to="conveyor.results.other")
    assert evolved.inputs is request.inputs
    assert (evolved.tenant, request.tenant) == ("other", "acme")
    request.parameters["bad"] = np.float64(1.0)  # e.g. a plug-in writing into its parameters
    with pytest.raises(ContractError) as caught:
        request.evolve(tenant="again")
    assert caught.value.field == "parameters.bad"


def test_of_task_builds_the_result_and_checks_only_what_it_is_given() -> None:
    carried = {
        "task_id": "t-1",
        "tenant": "acme",
        "pipeline": "tiny-classify",
        "submitted_at_ms": 1_700_000_000_000,
        "model_name": "m",
        "model_version": 3,
    }
    outputs = {"logits": np.zeros((1, 16), np.float32)}
    built = InferenceResult.of_task(
        carried,
        outputs,
        completed_at_ms=1_700_000_000_010,
        timings_ms={"preprocess": 0.5},
        traceparent=TRACEPARENT,
    )
    assert built == result()
    not_an_array: dict[str, Any] = {"x": [1.0]}
    with pytest.raises(ContractError) as caught:
        InferenceResult.of_task(carried, not_an_array)
    assert (caught.value.code, caught.value.field) == (ErrorCode.WRONG_TYPE, "outputs['x']")
    with pytest.raises(ContractError) as caught:
        InferenceResult.of_task(carried, outputs, timings_ms={"bad key": 1.0})
    assert caught.value.field == "timings_ms.bad key"
    unnamed = {key: value for key, value in carried.items() if key != "model_name"}
    with pytest.raises(TypeError, match="missing field 'model_name'"):
        InferenceResult.of_task(unnamed, outputs)


def test_decoding_checks_each_field_once(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = result()
    value = encode(expected)
    calls: list[str] = []
    checks = dict(InferenceResult.CHECKS)
    for attr, check in checks.items():

        def counting(raw: Any, attr: str = attr, check: Any = check) -> Any:
            calls.append(attr)
            return check(raw)

        checks[attr] = counting
    monkeypatch.setattr(InferenceResult, "CHECKS", checks)
    monkeypatch.setitem(
        _envelope._VALUE_CHECKS,
        InferenceResult,
        tuple((attr, check) for attr, check in checks.items() if attr != "outputs"),
    )
    assert decode_result(value) == expected
    assert sorted(calls) == sorted(set(calls))  # no field checked twice
    assert {"task_id", "traceparent", "timings_ms"} <= set(calls)
    assert "outputs" not in calls  # the tensor reader checked them while reading
