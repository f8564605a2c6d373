"""A float16 variant of a transformer encoder, for CUDA and TensorRT: ``model.fp16.onnx``
beside ``model.onnx`` in the same version folder.

ONNX Runtime's own transformer optimizer fuses what it recognizes (LayerNormalization with its
residual add into SkipLayerNormalization) and converts the weights and activations to float16,
keeping the graph's inputs and outputs float32, so the variant has the same contract as the
float32 model and the runtime can serve either (``runtime.precision``). It needs ``sympy``
(shape inference), which the ``gpu`` and ``dev`` extras bring.
"""

from __future__ import annotations

import logging
from pathlib import Path

from workers.models.repository import FP16_FILENAME, MODEL_FILENAME

from ._repository import atomic_write_bytes

log = logging.getLogger(__name__)


def write_fp16_variant(version_dir: Path, *, num_heads: int, hidden_size: int) -> Path:
    """Writes ``model.fp16.onnx`` from the version's ``model.onnx``; returns its path."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:  # the optimizer imports sympy on use, others at import
        raise RuntimeError(f"the fp16 build needs onnxruntime's transformer tools: {exc}") from exc
    # Our graph is not a PyTorch export, which the optimizer logs as a warning: expected.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        # opt_level 0: the Python fusions only (ORT's own graph optimization would need torch
        # installed to tell GPU builds apart, and the session applies it at load anyway).
        optimized = optimize_model(
            str(version_dir / MODEL_FILENAME),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
        )
        optimized.convert_float_to_float16(keep_io_types=True)
    except ImportError as exc:
        raise RuntimeError(f"the fp16 build needs sympy (pip install sympy): {exc}") from exc
    target = version_dir / FP16_FILENAME
    atomic_write_bytes(target, optimized.model.SerializeToString())
    log.info("wrote %s (%s)", target, optimized.get_fused_operator_statistics())
    return target
