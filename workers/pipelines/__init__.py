"""Preprocess and postprocess functions, the two replaceable layers around the model.

A pipeline in the model repository names one of each by the keys of `PREPROCESSORS` and
`POSTPROCESSORS`. Both raise `schemas.ContractError` for input they cannot serve.
"""

from workers.pipelines.base import Postprocessor, Preprocessor
from workers.pipelines.registry import POSTPROCESSORS, PREPROCESSORS, postprocessor, preprocessor

__all__ = [
    "POSTPROCESSORS",
    "PREPROCESSORS",
    "Postprocessor",
    "Preprocessor",
    "postprocessor",
    "preprocessor",
]
