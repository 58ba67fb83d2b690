"""Models: the offline ``tiny`` family and loading of hub ids / local paths.

Nothing heavy is imported here; torch/transformers load inside the functions.
"""

from bicc_lab.models.loading import (
    ModelNotFoundError,
    ModelReference,
    check_model_reference,
    load_model_and_tokenizer,
    resolve_model_path,
)
from bicc_lab.models.tiny import TINY_VARIANTS, TinyModelConfig, build_tiny_model

__all__ = [
    "TINY_VARIANTS",
    "ModelNotFoundError",
    "ModelReference",
    "TinyModelConfig",
    "build_tiny_model",
    "check_model_reference",
    "load_model_and_tokenizer",
    "resolve_model_path",
]
