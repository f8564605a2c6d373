"""Hypothesis strategies for wire messages (shared by the schemas tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import (
    CONTENT_TYPES,
    ErrorCode,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
    Status,
)
from schemas.fields import Priority

NUMERIC_DTYPES = [
    np.dtype(name)
    for name in (
        "?", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
        ">i4", ">f8", ">u2",
    )
]  # fmt: skip
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
tensor_names = st.text(min_size=1, max_size=12)
timestamps = st.integers(min_value=0, max_value=2**63 - 1)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
traceparents = st.builds(
    lambda trace, parent, flags: f"00-{trace:032x}-{parent:016x}-{flags:02x}",
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 255),
)
topics = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True)
ints64 = st.integers(-(2**63), 2**64 - 1)
json_scalars = st.none() | st.booleans() | ints64 | finite_floats | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
parameters = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
timings = st.dictionaries(names, finite_floats, max_size=4)


def numeric_arrays(*, finite: bool) -> st.SearchStrategy[Any]:
    def for_dtype(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
        elements = hnp.from_dtype(dtype, allow_nan=not finite, allow_infinity=not finite)
        return hnp.arrays(dtype, SHAPES, elements=elements)

    return st.sampled_from(NUMERIC_DTYPES).flatmap(for_dtype)


def _object_array(items: list[Any], shape: tuple[int, ...]) -> Any:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def string_arrays() -> st.SearchStrategy[Any]:
    def for_shape(shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
        size = int(np.prod(shape))
        items = st.lists(st.text(max_size=10), min_size=size, max_size=size) | st.lists(
            st.binary(max_size=10), min_size=size, max_size=size
        )
        return items.map(lambda values: _object_array(values, shape))

    return SHAPES.flatmap(for_shape)


def tensors(*, finite: bool) -> st.SearchStrategy[dict[str, Any]]:
    arrays = numeric_arrays(finite=finite) | string_arrays()
    return st.dictionaries(tensor_names, arrays, max_size=4)


def requests(*, finite: bool = True) -> st.SearchStrategy[InferenceRequest]:
    return st.builds(
        InferenceRequest,
        task_id=ids,
        tenant=names,
        pipeline=names,
        inputs=tensors(finite=finite),
        parameters=parameters,
        model_version=st.none() | st.integers(1, 2**63 - 1),
        priority=st.none() | st.sampled_from([p.value for p in Priority]),
        deadline_ms=st.none() | timestamps,
        reply_to=st.none() | topics,
        traceparent=st.none() | traceparents,
        submitted_at_ms=timestamps,
        response_content_type=st.none() | st.sampled_from(CONTENT_TYPES),
    )


def results(*, finite: bool = True) -> st.SearchStrategy[InferenceResult]:
    return st.builds(
        InferenceResult,
        task_id=ids,
        tenant=names,
        pipeline=names,
        outputs=tensors(finite=finite),
        model_name=names,
        model_version=st.integers(1, 2**63 - 1),
        submitted_at_ms=timestamps,
        completed_at_ms=timestamps,
        timings_ms=timings,
        traceparent=st.none() | traceparents,
    )


def errors() -> st.SearchStrategy[ErrorResult]:
    return st.builds(
        ErrorResult,
        task_id=ids,
        tenant=names,
        status=st.sampled_from([Status.FAILED, Status.EXPIRED, Status.REJECTED]),
        code=st.sampled_from(list(ErrorCode)),
        message=st.text(min_size=1, max_size=50),
        stage=names,
        pipeline=st.none() | names,
        traceparent=st.none() | traceparents,
        completed_at_ms=timestamps,
    )


def messages(*, finite: bool = True) -> st.SearchStrategy[Message]:
    return requests(finite=finite) | results(finite=finite) | errors()
