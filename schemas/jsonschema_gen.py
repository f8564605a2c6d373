"""Generate the JSON Schema (draft 2020-12) files of the JSON bodies from the field table.

Run ``python -m schemas.jsonschema_gen`` after changing ``schemas.fields`` or
``schemas.messages``; a unit test fails while the checked-in files are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas._envelope import SCHEMA_KEY
from schemas.fields import tensor_json_schema
from schemas.messages import (
    SCHEMA_VERSION,
    ErrorResult,
    InferenceRequest,
    InferenceResult,
    Message,
)

__all__ = ["OUTPUT_DIR", "main", "message_schema", "render"]

OUTPUT_DIR = Path(__file__).parent / "jsonschema"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_MESSAGES: dict[str, type[Message]] = {
    "request": InferenceRequest,
    "result": InferenceResult,
    "error": ErrorResult,
}


def message_schema(name: str, cls: type[Message]) -> dict[str, Any]:
    """The JSON Schema of one message's JSON body at this schema version."""
    major, minor = SCHEMA_VERSION
    properties: dict[str, Any] = {
        SCHEMA_KEY: {"type": "string", "pattern": f"^{major}\\.[0-9]{{1,6}}$"}
    }
    for spec in cls.FIELDS:
        properties[spec.name] = spec.json_schema()
    schema: dict[str, Any] = {
        "$schema": _DRAFT,
        "$id": f"urn:conveyor:schema:{name}:{major}.{minor}",
        "title": f"Conveyor {cls.__name__} (JSON, schema {major}.{minor})",
        "type": "object",
        "required": [spec.name for spec in cls.FIELDS if spec.required],
        "properties": properties,
        "additionalProperties": False,
    }
    if cls.TENSORS:
        schema["$defs"] = tensor_json_schema()
    return schema


def render() -> dict[str, str]:
    """File name -> file text of every generated schema."""
    return {
        f"{name}.schema.json": json.dumps(message_schema(name, cls), indent=2) + "\n"
        for name, cls in _MESSAGES.items()
    }


def main(output_dir: Path = OUTPUT_DIR) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for file_name, text in render().items():
        (output_dir / file_name).write_text(text, encoding="utf-8")
        print(f"wrote {output_dir / file_name}")


if __name__ == "__main__":
    main()
