"""Checkpoints: safetensors weights with the model config inside, written atomically.

A model file holds the weights and, in its safetensors metadata, `kind` (tokenizer or
transformer) and `config` (JSON of the config dataclass), so loading needs nothing else.
Training state (optimiser, scheduler, RNG, step) lives beside it in a `.state.pt` file
loaded with `weights_only=True`, so no checkpoint ever runs code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from maskgit.config import ConfigError, TokenizerConfig, TransformerConfig, from_dict, to_dict
from maskgit.fileio import atomic_write
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

MODEL_KINDS: dict[str, tuple[type, type]] = {
    "tokenizer": (TokenizerConfig, VQGAN),
    "transformer": (TransformerConfig, BidirectionalTransformer),
}


# transformer metadata: sha256 of the weights of the tokenizer it was trained on (weights_digest)
TOKENIZER_DIGEST_KEY = "tokenizer_sha256"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, of another kind, or does not match."""


def _kind_of(model: nn.Module) -> str:
    for kind, (_, cls) in MODEL_KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"cannot save a {type(model).__name__}: expected VQGAN or transformer")


def save_model(
    model: nn.Module,
    path: str | Path,
    dtype: torch.dtype | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Write `model` (weights + config) to a safetensors file atomically; `dtype` casts floats."""
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous()
    metadata = {"kind": _kind_of(model), "config": json.dumps(to_dict(model.cfg)), **(extra or {})}
    with _naming_failed_write(path):
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


@contextmanager
def _naming_failed_write(path: str | Path) -> Iterator[None]:
    """A failed write (a full disk: ENOSPC, a file-size limit: EFBIG) raises an OSError naming
    `path`, not atomic_write's temporary file; the OSError inside safetensors' own error (it
    only says `os error 28` in its text) is recovered."""
    try:
        yield
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


class _RecordingWriter:
    """A binary file for torch.save that keeps the exception of a failed write: torch replaces
    any (an OSError of a full disk, the KeyboardInterrupt of a Ctrl-C landing in this Python
    method) with `[enforce fail at inline_container.cc] unexpected pos`."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except BaseException as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a model file; CheckpointError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("kind") not in MODEL_KINDS or "config" not in metadata:
        raise CheckpointError(f"{path}: safetensors file without maskgit kind/config metadata")
    return metadata


def load_model(
    path: str | Path, expected_kind: str | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """Rebuild a model from its file alone (config from the metadata), in eval mode, fp32.

    Before anything is built, the config is checked against the tensors the file's header
    lists (names, shapes, float or integer): building it costs no more memory than the file
    holds, whatever its metadata says. Weights must be finite (`load_weights`).
    """
    path = Path(path)
    metadata = read_metadata(path)
    kind = metadata["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path}: holds a {kind}, expected a {expected_kind}")
    config_cls, model_cls = MODEL_KINDS[kind]
    header = _header(path)
    try:
        cfg = from_dict(config_cls, json.loads(metadata["config"]))
        check_tensors(_tensors(_build_within(model_cls, cfg, header, path)), header, path)
        model = model_cls(cfg)
    except CheckpointError:
        raise
    except (ConfigError, json.JSONDecodeError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid config in checkpoint ({exc})") from exc
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_weights(model, state, path)
    return model.to(device).eval()


Tensors = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype name: "float32")


def _dtype_name(code: str) -> str:
    """A safetensors header dtype as torch names it: F32 -> float32, I64 -> int64."""
    for prefix, kind in (("BF", "bfloat"), ("F", "float"), ("I", "int"), ("U", "uint")):
        if code.startswith(prefix) and code[len(prefix) : len(prefix) + 1].isdigit():
            return kind + code[len(prefix) :].lower()
    return code.lower()  # BOOL


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _tensors(model: nn.Module) -> Tensors:
    return {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in model.state_dict().items()
    }


def _header(path: Path) -> Tensors:
    """The tensors a safetensors file lists in its header (read without their values)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {
                name: (
                    tuple(handle.get_slice(name).get_shape()),
                    _dtype_name(handle.get_slice(name).get_dtype()),
                )
                for name in handle.keys()  # noqa: SIM118 (a handle, not a dict)
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt weights ({exc})") from exc


def _build_within(model_cls: type, cfg: Any, header: Tensors, path: Path) -> nn.Module:
    """`model_cls(cfg)` on the meta device (no memory), stopped with CheckpointError at the
    first parameter beyond the file's tensors (their count or their values): a config that
    describes a larger model than the file holds costs nothing to refuse."""
    most_tensors = len(header)
    most_values = sum(math.prod(shape) for shape, _ in header.values())
    seen: set[int] = set()
    values = 0
    thread = threading.get_ident()

    def count(_module: nn.Module, _name: str, param: nn.Parameter | None) -> None:
        nonlocal values
        if param is None or id(param) in seen or threading.get_ident() != thread:
            return
        seen.add(id(param))
        values += param.numel()
        if len(seen) > most_tensors or values > most_values:
            raise CheckpointError(
                f"{path}: the config in its metadata describes a larger model than the "
                f"file's {most_tensors} tensors ({most_values:,} values) hold: it needs a "
                f"tensor of shape {tuple(param.shape)} beyond them; the config does not "
                "belong to these weights"
            )

    hook = register_module_parameter_registration_hook(count)
    try:
        with torch.device("meta"), _NoNormalInit():
            return model_cls(cfg)
    finally:
        hook.remove()


class _NoNormalInit(TorchFunctionMode):
    """`normal_` does nothing: on the meta device there are no values to draw, and torch's
    meta kernel for it imports ~800 modules (1 to 2 s) on first use."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.normal_, nn.init.normal_):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def check_tensors(expected: Tensors, found: Tensors, path: str | Path) -> None:
    """The tensors `found` in a file are those `expected` by the model: the same names,
    shapes and kind of values (floating point or integer); CheckpointError names the file."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for name, (shape, dtype) in found.items():
        want_shape, want_dtype = expected[name]
        if shape != want_shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {shape}, the config expects {want_shape}"
            )
        if _is_float(dtype) != _is_float(want_dtype):
            kind = "floating-point" if _is_float(want_dtype) else "integer"
            raise CheckpointError(
                f"{path}: tensor {name} is stored as {dtype}, the model expects {kind} values "
                f"({want_dtype})"
            )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a state dict strictly; a missing, extra or misshapen tensor, integers where the
    model holds floats (or the reverse) and NaN or infinite values name the file."""
    found = {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()
    }
    check_tensors(_tensors(model), found, path)
    for name, tensor in state.items():
        # one pass: NaN or infinity makes the sum so (a finite sum that overflows is counted)
        if tensor.is_floating_point() and not torch.isfinite(tensor.sum()):
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{path}: tensor {name} holds {bad} of {tensor.numel()} values that are "
                    "not finite (NaN or infinity): the weights are broken, e.g. saved from a "
                    "training run that diverged"
                )
    model.load_state_dict(state)


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a training-state dict (tensors, numbers, strings, lists) atomically; a failed
    write raises an OSError naming `path` (e.g. `No space left on device`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            writer = _RecordingWriter(handle)
            try:
                torch.save(state, writer)
            except RuntimeError as exc:
                if writer.error is None:
                    raise
                raise writer.error from exc

    with _naming_failed_write(path):
        atomic_write(path, write)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training-state dict safely (weights_only); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        message = " ".join(str(exc).split())  # torch's messages span several lines
        code = re.search(r"GLOBAL ([\w.]+)", message)
        if message.startswith("Weights only load failed") and code:
            raise CheckpointError(
                f"{path}: refused: it holds a Python object ({code.group(1)}) that loading "
                "would have to run; a training state holds only tensors and plain values"
            ) from exc
        raise CheckpointError(f"{path}: unreadable training state ({message})") from exc


def weights_digest(path: str | Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes), not its metadata:
    a copy of the file, or the same weights saved again, give the same digest."""
    path = Path(path)
    read_metadata(path)  # a readable model file, or CheckpointError naming it
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(data[8 + length :])
    return digest.hexdigest()


def check_pair(tokenizer_path: str | Path, transformer_path: str | Path) -> None:
    """Refuse a transformer trained on another tokenizer than the one beside it: its metadata
    records the tokenizer's digest when trained by maskgit (files without the record pass)."""
    recorded = read_metadata(transformer_path).get(TOKENIZER_DIGEST_KEY)
    if recorded is not None and recorded != weights_digest(tokenizer_path):
        raise CheckpointError(
            f"{transformer_path} was trained on another tokenizer than {tokenizer_path} "
            "(the tokenizer weights recorded in the transformer differ): the two files do not "
            "belong together; put the transformer beside the tokenizer it was trained with"
        )
