"""The import direction of README's architecture: a module imports only lower layers."""

from __future__ import annotations

import ast
from pathlib import Path

import maskgit

PACKAGE = Path(maskgit.__file__).parent

LAYERS = {
    # below everything: the decoding options (no torch either)
    "options": -1,
    "phases": -1,
    # bottom: pure functions, nothing of the package but the options
    "config": 0,
    "schedule": 0,
    "metrics": 0,
    "fileio": 0,
    "fill": 0,
    "reader": 0,
    "tokenizer.losses": 0,
    # models, data and pictures
    "tokenizer.model": 1,
    "transformer": 1,
    "masking": 1,
    "data": 1,
    "run_folder": 1,
    "visualize": 1,
    "fid": 1,
    # decoding (model-free) and checkpoints
    "decoding": 2,
    "checkpoint": 2,
    # the pipeline
    "pipeline": 3,
    # what runs on top of it
    "train": 4,
    "pretokenize": 4,
    "evaluate": 4,
    "inpaint_files": 4,
    "lab_import": 3,
    "prepare": 4,
    "demo": 4,
    # the edge
    "app": 5,
    "cli": 6,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            found[".".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskgit."):
            names.add(node.module.removeprefix("maskgit."))
        elif isinstance(node, ast.Import):
            names |= {
                a.name.removeprefix("maskgit.") for a in node.names if a.name.startswith("maskgit.")
            }
    return names


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYERS)


def test_modules_import_only_lower_layers():
    wrong = [
        f"{name} (layer {LAYERS[name]}) imports {target} (layer {LAYERS.get(target)})"
        for name, path in _modules().items()
        for target in _imports(path)
        if LAYERS.get(target, 99) >= LAYERS[name]
    ]
    assert not wrong


def test_options_import_neither_torch_nor_the_package():
    tree = ast.parse((PACKAGE / "options.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"torch", "numpy", "maskgit"}, imported
