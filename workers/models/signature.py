"""The signature contract between a pipeline and its model, checked against the ONNX graph.

A pipeline's preprocess function makes tensors of fixed names, datatypes and ranks, and its
postprocess function reads outputs of fixed names; a model version only fits the pipeline
when its graph takes and gives exactly those. `check_model` lists every difference, so a
refused model says all that is wrong with it at once (the seed's "ABI compatibility" check).

In a model's `config.json`, a pipeline may declare its contract; without one, the model's
own `inputs`/`outputs` are the contract, the batch dimension first::

    "pipelines": [{"name": "...", "preprocess": "...", "postprocess": "...",
                   "signature": {"inputs": [{"name": "features", "datatype": "FP32",
                                             "shape": [-1, 16]}],
                                 "outputs": [...], "batch_dim": 0},
                   "runtime": {"min_opset": 13, "min_ort_version": "1.16",
                               "execution_provider": "CUDAExecutionProvider"}}]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

DYNAMIC = -1

_DATATYPES = {
    "FP32": onnx.TensorProto.FLOAT,
    "FP16": onnx.TensorProto.FLOAT16,
    "BF16": onnx.TensorProto.BFLOAT16,
    "FP64": onnx.TensorProto.DOUBLE,
    "INT8": onnx.TensorProto.INT8,
    "INT16": onnx.TensorProto.INT16,
    "INT32": onnx.TensorProto.INT32,
    "INT64": onnx.TensorProto.INT64,
    "UINT8": onnx.TensorProto.UINT8,
    "BOOL": onnx.TensorProto.BOOL,
    "BYTES": onnx.TensorProto.STRING,
}
_NAMES: dict[int, str] = {int(code): name for name, code in _DATATYPES.items()}


class SignatureError(ValueError):
    """A model version that does not fit its pipeline; the message names every difference."""

    def __init__(self, subject: str, problems: Sequence[str]) -> None:
        super().__init__(f"{subject} does not fit its signature: {'; '.join(problems)}")
        self.problems = tuple(problems)


@dataclass(frozen=True)
class TensorContract:
    name: str
    datatype: str
    """Triton-style name: FP32, INT64, ..."""
    shape: tuple[int, ...]
    """One entry per dimension; -1 marks a dynamic dimension."""


@dataclass(frozen=True)
class RuntimeRequirements:
    min_opset: int | None = None
    """Lowest default-domain opset the graph may import."""
    min_ort_version: str | None = None
    """Lowest ONNX Runtime version the model needs, e.g. "1.16"."""
    execution_provider: str | None = None
    """A provider that must be available (e.g. CUDAExecutionProvider); None: any."""


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]
    batch_dim: int = 0
    runtime: RuntimeRequirements = RuntimeRequirements()


def parse_signature(
    raw_signature: dict[str, Any] | None,
    raw_runtime: dict[str, Any] | None,
    default_inputs: Iterable[TensorContract],
    default_outputs: Iterable[TensorContract],
) -> Signature:
    """A pipeline's contract from its config entry; the model's own tensors by default."""
    raw = raw_signature or {}
    runtime = raw_runtime or {}
    inputs = tuple(_contract(t) for t in raw["inputs"]) if "inputs" in raw else default_inputs
    outputs = tuple(_contract(t) for t in raw["outputs"]) if "outputs" in raw else default_outputs
    for key in runtime:
        if key not in ("min_opset", "min_ort_version", "execution_provider"):
            raise ValueError(f"unknown runtime requirement {key!r}")
    return Signature(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batch_dim=int(raw.get("batch_dim", 0)),
        runtime=RuntimeRequirements(
            min_opset=_optional_int(runtime.get("min_opset")),
            min_ort_version=_optional_str(runtime.get("min_ort_version")),
            execution_provider=_optional_str(runtime.get("execution_provider")),
        ),
    )


def check_model(
    signature: Signature,
    model: onnx.ModelProto,
    available_providers: Sequence[str],
    ort_version: str,
) -> list[str]:
    """Every difference between the graph (and this runtime) and the contract; [] if none."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in graph.output}
    problems: list[str] = []
    for contract in signature.inputs:
        problems += _check_tensor("input", contract, graph_inputs.get(contract.name), signature)
    for extra in sorted(set(graph_inputs) - {c.name for c in signature.inputs}):
        problems.append(f"input {extra!r} is not fed by the pipeline")
    for contract in signature.outputs:
        problems += _check_tensor("output", contract, graph_outputs.get(contract.name), signature)
    problems += _check_runtime(signature.runtime, model, available_providers, ort_version)
    return problems


def _check_tensor(
    kind: str, contract: TensorContract, value: onnx.ValueInfoProto | None, signature: Signature
) -> list[str]:
    if value is None:
        return [f"{kind} {contract.name!r} is missing"]
    problems = []
    tensor = value.type.tensor_type
    want = _DATATYPES.get(contract.datatype)
    if want is None:
        problems.append(f"{kind} {contract.name!r}: contract datatype {contract.datatype} unknown")
    elif tensor.elem_type != want:
        got = _NAMES.get(tensor.elem_type, str(tensor.elem_type))
        problems.append(
            f"{kind} {contract.name!r}: datatype {got}, contract says {contract.datatype}"
        )
    if not tensor.HasField("shape"):
        return problems  # rank unknown in the graph: ONNX Runtime checks it at run time
    dims = tensor.shape.dim
    if len(dims) != len(contract.shape):
        problems.append(
            f"{kind} {contract.name!r}: rank {len(dims)}, contract says {len(contract.shape)}"
        )
        return problems
    for index, (dim, wanted) in enumerate(zip(dims, contract.shape, strict=True)):
        fixed = dim.dim_value if dim.HasField("dim_value") else None
        if index == signature.batch_dim and fixed is not None:
            problems.append(
                f"{kind} {contract.name!r}: batch dim {index} is fixed at {fixed}, "
                "contract says dynamic"
            )
        elif wanted == DYNAMIC and fixed is not None:
            problems.append(
                f"{kind} {contract.name!r}: dim {index} is fixed at {fixed}, contract says dynamic"
            )
        elif wanted != DYNAMIC and fixed is not None and fixed != wanted:
            problems.append(
                f"{kind} {contract.name!r}: dim {index} is {fixed}, contract says {wanted}"
            )
    return problems


def _check_runtime(
    needs: RuntimeRequirements,
    model: onnx.ModelProto,
    available_providers: Sequence[str],
    ort_version: str,
) -> list[str]:
    problems = []
    if needs.min_opset is not None:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < needs.min_opset:
            problems.append(f"opset {opset}, contract needs >= {needs.min_opset}")
    if needs.min_ort_version is not None and _version(ort_version) < _version(
        needs.min_ort_version
    ):
        problems.append(
            f"ONNX Runtime {ort_version} here, contract needs >= {needs.min_ort_version}"
        )
    if needs.execution_provider is not None and needs.execution_provider not in available_providers:
        problems.append(
            f"execution provider {needs.execution_provider} unavailable; "
            f"this runtime has {list(available_providers)}"
        )
    return problems


def _contract(raw: dict[str, Any]) -> TensorContract:
    datatype = str(raw["datatype"])
    if datatype not in _DATATYPES:
        raise ValueError(f"datatype must be one of {sorted(_DATATYPES)}, got {datatype!r}")
    return TensorContract(str(raw["name"]), datatype, tuple(int(d) for d in raw["shape"]))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
