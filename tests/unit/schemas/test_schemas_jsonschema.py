"""The JSON Schema files are generated from the field table and accept what the codec writes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; types-jsonschema is not a dev dep
import pytest
from hypothesis import given, settings

from schemas import DATATYPES, JSON, ErrorCode, Message, encode
from schemas.jsonschema_gen import OUTPUT_DIR, render
from tests.unit.schemas.make_golden import golden_messages
from tests.unit.schemas.schema_strategies import messages

SCHEMA_BY_TYPE = {
    "InferenceRequest": "request",
    "InferenceResult": "result",
    "ErrorResult": "error",
}


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((OUTPUT_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATORS = {name: validator(name) for name in SCHEMA_BY_TYPE.values()}


def validate(message: Message) -> None:
    body: Any = json.loads(encode(message, JSON))
    VALIDATORS[SCHEMA_BY_TYPE[type(message).__name__]].validate(body)


def test_checked_in_files_match_the_generator() -> None:
    for file_name, text in render().items():
        assert (OUTPUT_DIR / file_name).read_text(encoding="utf-8") == text, (
            f"{file_name} is stale: run python -m schemas.jsonschema_gen"
        )


def test_enums_come_from_the_python_definitions() -> None:
    request = json.loads(render()["request.schema.json"])
    assert request["$defs"]["tensor"]["properties"]["datatype"]["enum"] == list(DATATYPES)
    error = json.loads(render()["error.schema.json"])
    assert error["properties"]["code"]["enum"] == [code.value for code in ErrorCode]


@pytest.mark.parametrize("name", ["request", "result", "error"])
def test_golden_messages_validate(name: str) -> None:
    validate(golden_messages()[name])


@settings(max_examples=100, deadline=None)
@given(messages())
def test_every_encoded_message_validates(message: Message) -> None:
    validate(message)


def test_v2_example_validates_and_typos_do_not() -> None:
    body: dict[str, Any] = {
        "id": "t-1",
        "tenant": "acme",
        "pipeline": "text-embedding",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello world"]}],
    }
    VALIDATORS["request"].validate(body)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATORS["request"].validate(body | {"deadline": 5})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATORS["request"].validate({k: v for k, v in body.items() if k != "tenant"})
