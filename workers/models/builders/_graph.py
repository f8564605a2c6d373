"""A small helper for writing ONNX graphs node by node with ``onnx.helper``."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Opset 17 is the first with ``LayerNormalization``; it is old enough for every
#: ONNX Runtime we expect to meet (1.14+) and ORT still fuses the erf-GELU pattern.
OPSET = 17
#: IR version 8 is the one paired with opset 17, so older runtimes accept the file.
IR_VERSION = 8


class GraphBuilder:
    """Accumulates nodes and initializers; every output gets a fresh, readable name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: dict[str, npt.NDArray[Any]] = {}
        self._counter = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> str:
        """Adds an initializer and returns its name.

        Re-adding a name with an equal value shares the tensor (handy for small constants);
        a different value under the same name is an error.
        """
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        existing = self._initializers.get(name)
        if existing is not None and not np.array_equal(existing, array):
            raise ValueError(f"initializer {name!r} already holds a different value")
        self._initializers[name] = array
        return name

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Adds a single-output node and returns the name of its output."""
        self._counter += 1
        output = name or f"{op_type.lower()}_{self._counter}"
        node = helper.make_node(
            op_type, list(inputs), [output], name=f"{op_type}_{self._counter}", **attrs
        )
        self._nodes.append(node)
        return output

    def linear(
        self, x: str, weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], prefix: str
    ) -> str:
        """``x @ weight.T + bias`` with a PyTorch-layout ``[out, in]`` weight."""
        w = self.const(f"{prefix}.weight_t", weight.T)
        b = self.const(f"{prefix}.bias", bias)
        return self.op("Add", self.op("MatMul", x, w), b)

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        """Assembles and checks the model; raises ``onnx.checker.ValidationError`` if invalid."""
        graph = helper.make_graph(
            self._nodes,
            self.name,
            inputs,
            outputs,
            initializer=[numpy_helper.from_array(a, name=n) for n, a in self._initializers.items()],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="conveyor.workers.models.builders",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def tensor_info(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    """A graph input/output; string dims are symbolic (dynamic), ints are fixed."""
    return helper.make_tensor_value_info(name, elem_type, shape)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
