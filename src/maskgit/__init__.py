"""maskgit: masked generative image transformers, made practical.

Public API: `MaskGIT` (tokenizer + transformer pipeline: inpaint, outpaint, generate), its
decoding options (`DecodingOptions`, `DEFAULT_DECODING`), the config dataclasses, and
checkpoint load/save.
"""

from maskgit.checkpoint import CheckpointError, load_model, save_model
from maskgit.config import (
    ConfigError,
    Preset,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    get_preset,
    load_config,
)
from maskgit.options import DEFAULT_DECODING, DecodingOptions
from maskgit.pipeline import MaskGIT

__all__ = [
    "DEFAULT_DECODING",
    "CheckpointError",
    "DecodingOptions",
    "MaskGIT",
    "ConfigError",
    "Preset",
    "TokenizerConfig",
    "TrainingConfig",
    "TransformerConfig",
    "get_preset",
    "load_config",
    "load_model",
    "save_model",
]
__version__ = "0.1.0"
