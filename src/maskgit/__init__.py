"""maskgit: masked generative image transformers, made practical.

Public API: `MaskGIT` (tokenizer + transformer pipeline: inpaint, outpaint, generate), its
decoding options (`DecodingOptions`, `DEFAULT_DECODING`), the config dataclasses, and
checkpoint load/save.

The names are loaded on first use (module `__getattr__`, PEP 562): `import maskgit` and
`maskgit --help` import no torch; `from maskgit import MaskGIT` imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {  # public name -> the module that defines it
    "CheckpointError": "maskgit.checkpoint",
    "load_model": "maskgit.checkpoint",
    "save_model": "maskgit.checkpoint",
    "ConfigError": "maskgit.config",
    "Preset": "maskgit.config",
    "TokenizerConfig": "maskgit.config",
    "TrainingConfig": "maskgit.config",
    "TransformerConfig": "maskgit.config",
    "get_preset": "maskgit.config",
    "load_config": "maskgit.config",
    "DEFAULT_DECODING": "maskgit.options",
    "DecodingOptions": "maskgit.options",
    "MaskGIT": "maskgit.pipeline",
}

if TYPE_CHECKING:  # for type checkers and editors: the names as if imported eagerly
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


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first access (then cached here)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'maskgit' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
