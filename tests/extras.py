"""Optional extras in tests: a test that needs one that is not installed is skipped, naming it.

`make test` installs every extra, so nothing is skipped there; `pip install -e ".[dev]"`
followed by `pytest` skips these tests with the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

EXTRA_OF_MODULE = {
    "skimage": "baselines",
    "fastapi": "web",
    "uvicorn": "web",
    "multipart": "web",
    "cairosvg": "data",
    "emoji": "data",
    "diffusers": "peers",
    "transformers": "peers",
    "muse_maskgit_pytorch": "peers",
}


def extra_missing(module: str) -> str | None:
    """The skip reason when `module` (from an optional extra) cannot be imported, else None."""
    extra = EXTRA_OF_MODULE[module.split(".")[0]]
    try:
        importlib.import_module(module)
    except (ImportError, OSError) as exc:  # cairocffi raises OSError without libcairo
        return f"needs the `{extra}` extra: pip install -e '.[{extra}]' ({exc})"
    return None


def require_extra(module: str, *, module_level: bool = False) -> ModuleType:
    """Import `module` or skip the test (or the whole file) with a reason naming its extra."""
    reason = extra_missing(module)
    if reason is not None:
        pytest.skip(reason, allow_module_level=module_level)
    return importlib.import_module(module)


def _inception_available() -> bool:
    from maskgit.fid import InceptionWeightsError, find_inception_weights

    try:
        find_inception_weights(None)
        return True
    except InceptionWeightsError:
        return False


# FID tests need the TF-Inception weights (`make test` fetches them)
needs_inception = pytest.mark.skipif(
    not _inception_available(), reason="Inception weights not found: run scripts/get_inception.sh"
)
