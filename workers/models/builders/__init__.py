"""Offline builders that write ONNX models into a model repository, without PyTorch.

Each builder writes ``<repository>/<name>/config.json`` and
``<repository>/<name>/<version>/model.onnx`` (plus any files the pipeline needs, such as
``tokenizer.json``) and returns the model folder.
"""

from .minilm import build_minilm, find_minilm_package_dir
from .tiny import build_tiny_classifier

__all__ = ["build_minilm", "build_tiny_classifier", "find_minilm_package_dir"]
