"""Writes the on-disk layout of one model in a Triton-like model repository.

```
<repository>/<name>/config.json
<repository>/<name>/<version>/model.onnx
```

The version folder is written first and ``config.json`` last, so a reader that
treats "config.json present" as "model ready" never sees a half-written model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

from workers.models.repository import CONFIG_FILENAME, MODEL_FILENAME


def tensor_spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    """One entry of ``inputs``/``outputs`` in config.json; ``-1`` marks a dynamic dim."""
    return {"name": name, "datatype": datatype, "shape": shape}


def version_dir(repository: Path, name: str, version: int) -> Path:
    """Creates (if needed) and returns ``<repository>/<name>/<version>``."""
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    path = repository / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_model(model: onnx.ModelProto, directory: Path) -> Path:
    """Saves ``model.onnx`` into ``directory`` atomically (temp file, then rename)."""
    target = directory / MODEL_FILENAME
    atomic_write_bytes(target, model.SerializeToString())
    return target


def write_config(model_dir: Path, config: dict[str, Any]) -> Path:
    """Writes ``config.json``, keys in the order given (stable, so rebuilds are byte-identical)."""
    target = model_dir / CONFIG_FILENAME
    text = json.dumps(config, indent=2) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))
    return target


def atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
