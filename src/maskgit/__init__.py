"""maskgit: masked generative image transformers, made practical.

Public API: `MaskGIT` (tokenizer + transformer pipeline: inpaint, outpaint, generate), the
config dataclasses, and checkpoint load/save.
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

__all__ = [
    "CheckpointError",
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
