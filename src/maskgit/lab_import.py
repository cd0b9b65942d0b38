"""Import the course lab's checkpoints (VQGAN + BidirectionalTransformer) as a maskgit model.

The lab hands out a pretrained VQGAN (the dome272/VQGAN-pytorch layout, configured by the
skeleton's VQGAN.yml) and each student trains a `BidirectionalTransformer` (MaskGit.yml) whose
multi-head attention is their own. `import_lab` reads those files with `weights_only=True`,
works out the architecture from the tensors' names and shapes, checks it against the yml files,
maps every tensor onto maskgit's own modules (configured through TokenizerConfig /
TransformerConfig options, never a second copy of the models) and writes a normal model folder:
tokenizer.safetensors, transformer.safetensors, config.yaml and import.json.

Every check fails with one `LabImportError` line naming the key and the file; nothing is written
unless every check passed.

A fused qkv projection's row order is not in its names or shapes, so it is never guessed: the
lab report's `qkv = self.qkv_proj(x).view(B, N, heads, 3 * d_k).transpose(1, 2)` then
`q, k, v = qkv.chunk(3, dim=-1)` groups the rows per head, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]
("per-head"); `q, k, v = self.qkv_proj(x).chunk(3, dim=-1)` before the head split gives
[all q | all k | all v] ("qkv", maskgit's own order). The user states it (`qkv_order`), or
`qkv_evidence` (a few of the lab's images or token grids) decides it by the masked-token loss
of both orders; otherwise the import is refused with both code lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from maskgit.checkpoint import CheckpointError, load_model, load_weights, save_model
from maskgit.config import ConfigError, TokenizerConfig, TransformerConfig, to_dict
from maskgit.data import TOKENS_FILE, load_folder, load_tokens, to_model_range
from maskgit.fileio import atomic_write
from maskgit.masking import apply_token_mask
from maskgit.reader import DataError
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

# The lab skeleton's constants that its yml files do not hold.
LAB_IMAGE_MEAN = (0.4868, 0.4341, 0.3844)  # utils.py: transforms.Normalize(mean, std)
LAB_IMAGE_STD = (0.2620, 0.2527, 0.2543)
LAB_HEADS = 16  # MultiHeadAttention(dim, num_heads=16)
LAB_LAYER_NORM_EPS = 1e-12  # every nn.LayerNorm of the skeleton's transformer
ROLES = ("q", "k", "v", "qkv", "out", "ignore")
CONTAINER_KEYS = ("model_state_dict", "state_dict", "model", "transformer_state_dict")
QKV_ORDERS = ("per-head", "qkv")  # rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] or [q | k | v]
EVIDENCE_MAX_GRIDS = 16  # token grids (images) scored per order
EVIDENCE_MASKS = 2  # random masks per grid, each hiding half of the tokens
EVIDENCE_MIN_GAP = 0.05  # the better order's loss is at least 5 % lower ...
EVIDENCE_MIN_Z = 3.0  # ... and lower by 3 standard errors of the per-sample differences

# Module names (inside each layer's attention module) recognised for each role.
_NAMES = {
    "q": {"q", "query", "to_q", "q_proj", "query_proj", "w_q", "wq", "q_linear", "linear_q"},
    "k": {"k", "key", "to_k", "k_proj", "key_proj", "w_k", "wk", "k_linear", "linear_k"},
    "v": {"v", "value", "to_v", "v_proj", "value_proj", "w_v", "wv", "v_linear", "linear_v"},
    "qkv": {"qkv", "to_qkv", "qkv_proj", "in_proj", "w_qkv", "wqkv", "qkv_linear", "c_attn"},
    "out": {
        "proj", "out", "out_proj", "o_proj", "to_out", "to_out.0", "o", "wo", "w_o", "fc_out",
        "output", "out_linear", "linear_out", "proj_out", "c_proj", "dense", "projection",
    },
}  # fmt: skip


class LabImportError(ValueError):
    """A lab file cannot be imported; the message names the file and the key."""


class QkvOrderUnknown(LabImportError):
    """A fused qkv projection whose row order was neither stated nor decided by evidence."""


@dataclass
class OrderChoice:
    """The fused qkv row order used ("" when there was none to choose) and why."""

    order: str = ""
    decided_by: str = ""  # "--qkv-order" or "evidence DIR"
    losses: dict[str, float] = field(default_factory=dict)  # order -> masked-token loss
    grids: int = 0  # token grids the losses were measured on

    def record(self) -> dict[str, Any] | None:
        """What import.json keeps of the choice."""
        if not self.order:
            return None
        found = {"order": self.order, "decided_by": self.decided_by}
        if self.losses:
            found |= {"masked_token_loss": self.losses, "evidence_grids": self.grids}
        return found

    def describe(self) -> str:
        """Both losses in words, e.g. 'masked-token loss per-head 1.2345, qkv 3.4567 on 8
        token grids'."""
        losses = ", ".join(f"{order} {loss:.4f}" for order, loss in self.losses.items())
        return f"masked-token loss {losses} on {self.grids} token grids"

    def summary(self) -> str:
        """E.g. 'per-head (decided by evidence DIR; masked-token loss per-head ..., qkv ...)'."""
        stated = self.decided_by == "--qkv-order"
        how = "stated with --qkv-order" if stated else f"decided by {self.decided_by}"
        return f"{self.order} ({how}" + (f"; {self.describe()})" if self.losses else ")")


@dataclass
class ImportReport:
    """What `import_lab` wrote and what it found."""

    out: Path
    tokenizer: TokenizerConfig
    transformer: TransformerConfig
    attention_layouts: dict[str, int] = field(default_factory=dict)  # layout -> layers
    transformer_container: str = ""
    vqgan_source: str = ""
    qkv: OrderChoice = field(default_factory=OrderChoice)  # fused qkv row order


# --------------------------------------------------------------------------- reading files


def load_torch_file(path: str | Path) -> Any:
    """torch.load with weights_only=True; a pickle that needs code is refused, by name."""
    path = Path(path)
    if not path.is_file():
        raise LabImportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise LabImportError(f"{path}: empty file (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        message = " ".join(str(exc).split())
        code = re.search(r"GLOBAL ([\w.]+)", message)
        if message.startswith("Weights only load failed") and code:
            raise LabImportError(
                f"{path}: refused: loading it would run code ({code.group(1)}); maskgit reads "
                "checkpoints with weights_only=True. Save the weights alone, e.g. "
                "torch.save(model.state_dict(), path)"
            ) from exc
        raise LabImportError(
            f"{path}: not a readable torch checkpoint, probably truncated or corrupt "
            f"(torch.load: {type(exc).__name__}: {_first_sentence(message)}); save or copy it "
            "again."
        ) from exc


def _first_sentence(message: str, limit: int = 160) -> str:
    """The first sentence of an error message (torch's reason, before its advice), whole
    when it fits `limit` characters, else cut at a word and marked with '...'."""
    sentence = message.split(". ", 1)[0].rstrip(".")
    if len(sentence) <= limit:
        return sentence
    return sentence[:limit].rsplit(" ", 1)[0] + " ..."


def read_yaml(path: str | Path, section: str) -> dict[str, Any]:
    """The `section` mapping of a lab yml (under model_param, or at the top level)."""
    path = Path(path)
    if not path.is_file():
        raise LabImportError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LabImportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise LabImportError(f"{path}: expected a mapping")
    for candidate in (data.get("model_param"), data):
        if isinstance(candidate, dict):
            found = candidate if section == "model_param" else candidate.get(section)
            if isinstance(found, dict):
                return found
    raise LabImportError(f"{path}: no {section!r} mapping (expected it under model_param)")


def _need(params: Mapping[str, Any], key: str, path: Path, kind: type = int) -> Any:
    if key not in params:
        raise LabImportError(f"{path}: missing key {key!r}")
    value = params[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise LabImportError(f"{path}: {key}={value!r}: expected a positive integer")
    return value


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from what a lab script saved: bare, or inside model_state_dict & co."""
    how = "a bare state_dict"
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, how = obj[key], f"the {key!r} entry of a training checkpoint"
                break
        else:
            keys = ", ".join(map(str, list(obj)[:6]))
            raise LabImportError(
                f"{path}: no state dict found (top-level keys: {keys}); expected a state_dict "
                f"or a dict with one of {', '.join(CONTAINER_KEYS)}"
            )
    if not isinstance(obj, Mapping):
        raise LabImportError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise LabImportError(f"{path}: key {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise LabImportError(f"{path}: tensor {key} holds NaN or infinite values")
        state[str(key).removeprefix("module.")] = value  # DataParallel prefix
    if not state:
        raise LabImportError(f"{path}: the state dict is empty")
    return state, how


# --------------------------------------------------------------------------- VQGAN


# NonLocalBlock: GroupNorm wrapper (gn.gn) and four 1x1 convs
_ATTN_KEYS = {f"{m}.{p}" for m in ("gn.gn", "q", "k", "v", "proj_out") for p in ("weight", "bias")}


def _sequential(state: dict[str, torch.Tensor], prefix: str, path: Path) -> list[tuple]:
    """Group `prefix.N.rest` keys into (N, kind, {rest: tensor}) sorted by N."""
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            if not index.isdigit():
                raise LabImportError(f"{path}: unexpected key {key}")
            groups.setdefault(int(index), {})[rest] = value
    if not groups:
        raise LabImportError(f"{path}: missing keys {prefix}* (expected the VQGAN layout)")
    layers = []
    for index in sorted(groups):
        params = groups[index]
        layers.append((index, _layer_kind(params, f"{prefix}{index}", path), params))
    return layers


# The VQGAN-pytorch layers of an encoder / decoder Sequential: kind -> (required, optional keys)
_LAYER_KEYS = {
    "conv": ({"weight", "bias"}, set()),
    "norm": ({"gn.weight", "gn.bias"}, set()),
    "resample": ({"conv.weight", "conv.bias"}, set()),
    "res": (
        {f"block.{i}.{p}" for i in (2, 5) for p in ("weight", "bias")}
        | {f"block.{i}.gn.{p}" for i in (0, 3) for p in ("weight", "bias")},
        {"channel_up.weight", "channel_up.bias"},
    ),
    "attn": (_ATTN_KEYS, set()),
}
_LAYER_CLASSES = {
    "conv": "Conv2d",
    "norm": "GroupNorm",
    "resample": "DownSampleBlock / UpSampleBlock",
    "res": "ResidualBlock",
    "attn": "NonLocalBlock",
}


def _layer_kind(params: dict[str, torch.Tensor], layer: str, path: Path) -> str:
    """The kind of one Sequential entry: the layer its keys come closest to; a key that
    layer needs and lacks, or one it has no place for, is named."""
    names = set(params)

    def shared(kind: str) -> int:
        return len(names & set.union(*_LAYER_KEYS[kind]))

    kind = max(_LAYER_KEYS, key=shared)
    required, optional = _LAYER_KEYS[kind]
    weight = params.get("weight")
    not_conv = kind == "conv" and weight is not None and weight.ndim != 4  # e.g. a Linear
    if not shared(kind) or not_conv:
        raise LabImportError(
            f"{path}: layer {layer} is not a VQGAN-pytorch layer "
            f"(keys {', '.join(sorted(names)[:5])})"
        )
    extra, missing = sorted(names - required - optional), sorted(required - names)
    if extra:
        raise LabImportError(f"{path}: unexpected key {layer}.{extra[0]}")
    if missing:
        raise LabImportError(
            f"{path}: missing key{'s' if len(missing) > 1 else ''} "
            f"{', '.join(f'{layer}.{m}' for m in missing)} (layer {layer} has the other keys "
            f"of a {_LAYER_CLASSES[kind]})"
        )
    return kind


def _body(layers: list[tuple], prefix: str, path: Path, resample: str, width: int) -> list[str]:
    """Layer list ("res:W", "attn", resample) of the layers between the first conv and norm."""
    entries = []
    for expected, (index, kind, params) in enumerate(layers, start=1):
        if index != expected:
            raise LabImportError(
                f"{path}: {prefix}{expected} has no weights (a layer maskgit cannot place)"
            )
        if kind == "res":
            cin, cout = params["block.2.weight"].shape[1], params["block.5.weight"].shape[0]
            if cin != width or (("channel_up.weight" in params) != (cin != cout)):
                raise LabImportError(
                    f"{path}: {prefix}{index}.block.2.weight takes {cin} channels, "
                    f"the layer before gives {width}"
                )
            entries.append(f"res:{cout}")
            width = cout
        elif kind == "attn":
            entries.append("attn")
        elif kind == "resample":
            k = tuple(params["conv.weight"].shape[-2:])
            if k != (3, 3):
                raise LabImportError(f"{path}: {prefix}{index}.conv.weight: expected 3x3, got {k}")
            entries.append(resample)
        else:
            raise LabImportError(f"{path}: unexpected {kind} layer at {prefix}{index}")
    return entries


def _ends(layers: list[tuple], prefix: str, path: Path) -> tuple[list[tuple], int]:
    """Check [conv, ..., norm, (act), conv]; return the middle layers and the norm-conv gap."""
    if len(layers) < 4 or layers[0][:2] != (0, "conv") or layers[-1][1] != "conv":
        raise LabImportError(f"{path}: {prefix}*: expected a conv first and a conv last")
    if layers[-2][1] != "norm":
        raise LabImportError(f"{path}: {prefix}{layers[-2][0]}: expected the GroupNorm")
    if layers[-2][0] != len(layers) - 2:
        raise LabImportError(f"{path}: {prefix}*: a layer without weights before the GroupNorm")
    return layers[1:-2], layers[-1][0] - layers[-2][0]


def convert_vqgan(
    state: dict[str, torch.Tensor],
    params: Mapping[str, Any],
    path: Path,
    config_path: Path,
    image_mean: tuple[float, ...] = LAB_IMAGE_MEAN,
    image_std: tuple[float, ...] = LAB_IMAGE_STD,
) -> tuple[TokenizerConfig, dict[str, torch.Tensor]]:
    """The lab VQGAN's state dict -> (TokenizerConfig, maskgit VQGAN state dict)."""
    for key in ("quant_conv.weight", "post_quant_conv.weight", "codebook.embedding.weight"):
        if key not in state:
            raise LabImportError(f"{path}: missing key {key}")
    known = ("encoder.model.", "decoder.model.", "codebook.", "quant_conv.", "post_quant_conv.")
    for key in state:
        if not key.startswith(known) or key.count(".") < 1:
            raise LabImportError(f"{path}: unexpected key {key}")
    codebook = state["codebook.embedding.weight"]
    if codebook.ndim != 2:
        raise LabImportError(f"{path}: codebook.embedding.weight: expected 2 dimensions")
    codes, latent = codebook.shape
    image_channels = _need(params, "image_channels", config_path)
    image_size = _need(params, "img_resolution", config_path)
    for key, have in (("num_codebook_vectors", codes), ("latent_dim", latent)):
        if _need(params, key, config_path) != have:
            raise LabImportError(
                f"{path}: codebook.embedding.weight has shape {tuple(codebook.shape)}, "
                f"{config_path} says {key}={params[key]}"
            )

    enc = _sequential(state, "encoder.model.", path)
    middle, gap = _ends(enc, "encoder.model.", path)
    conv_in, conv_out = enc[0][2]["weight"], enc[-1][2]["weight"]
    if conv_in.shape[1] != image_channels:
        raise LabImportError(
            f"{path}: encoder.model.0.weight takes {conv_in.shape[1]} channels, {config_path} "
            f"says image_channels={image_channels}"
        )
    if gap != 2:
        raise LabImportError(f"{path}: encoder.model.{enc[-1][0]}: expected Swish before it")
    if conv_out.shape[0] != latent or conv_out.shape[-1] not in (1, 3):
        raise LabImportError(
            f"{path}: encoder.model.{enc[-1][0]}.weight has shape {tuple(conv_out.shape)}, "
            f"expected ({latent}, _, 3, 3) for latent_dim={latent}"
        )
    encoder_layers = _body(middle, "encoder.model.", path, "down", conv_in.shape[0])

    dec = _sequential(state, "decoder.model.", path)
    middle, gap = _ends(dec, "decoder.model.", path)
    if gap not in (1, 2):
        raise LabImportError(f"{path}: decoder.model.{dec[-1][0]}: unexpected layers before it")
    first = dec[0][2]["weight"]
    if first.shape[1] != latent:
        raise LabImportError(
            f"{path}: decoder.model.0.weight takes {first.shape[1]} channels, expected {latent}"
        )
    decoder_layers = _body(middle, "decoder.model.", path, "up", first.shape[0])
    if not decoder_layers or not decoder_layers[0].startswith("res:"):
        raise LabImportError(f"{path}: decoder.model.1: expected a ResidualBlock")
    if dec[-1][2]["weight"].shape[0] != image_channels:
        raise LabImportError(
            f"{path}: decoder.model.{dec[-1][0]}.weight gives {dec[-1][2]['weight'].shape[0]} "
            f"channels, {config_path} says image_channels={image_channels}"
        )

    downs = encoder_layers.count("down")
    latent_res = _need(params, "latent_resolution", config_path)
    if image_size // 2**downs != latent_res or decoder_layers.count("up") != downs:
        raise LabImportError(
            f"{path}: the encoder downsamples {2**downs}x and the decoder upsamples "
            f"{2 ** decoder_layers.count('up')}x, {config_path} says img_resolution="
            f"{image_size}, latent_resolution={latent_res}"
        )
    beta = params.get("beta", 0.25)
    try:
        cfg = TokenizerConfig(
            image_size=image_size,
            in_channels=image_channels,
            base_channels=conv_in.shape[0],
            channel_mult=(1,),
            num_res_blocks=0,
            latent_dim=latent,
            codebook_size=codes,
            code_dim=latent,
            beta=float(beta) if isinstance(beta, (int, float)) else 0.25,
            encoder_layers=tuple(encoder_layers),
            decoder_layers=tuple(decoder_layers),
            downsample_conv="pad-k3",
            encoder_out_kernel=conv_out.shape[-1],
            decoder_out_act=gap == 2,
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
        )
        cfg.validate()
    except ConfigError as exc:
        raise LabImportError(f"{path}: {exc}") from exc

    out: dict[str, torch.Tensor] = {
        "quantizer.codebook.weight": codebook,
        "quant_proj.weight": state["quant_conv.weight"],
        "post_quant_proj.weight": state["post_quant_conv.weight"],
    }
    for src, dst in (
        ("quant_conv.bias", "quant_proj.bias"),
        ("post_quant_conv.bias", "post_quant_proj.bias"),
    ):  # noqa: E501
        if src not in state:
            raise LabImportError(f"{path}: missing key {src}")
        out[dst] = state[src]
    for part, layers in (("encoder", enc), ("decoder", dec)):
        for position, (index, kind, tensors) in enumerate(layers):
            last = position == len(layers) - 1
            target = "decoder.conv_out" if part == "decoder" and last else f"{part}.net.{index}"
            for rest, tensor in tensors.items():
                out[f"{target}.{_rename_vqgan(kind, rest)}"] = tensor
    return cfg, out


def _rename_vqgan(kind: str, rest: str) -> str:
    if kind == "norm":
        return rest.removeprefix("gn.")
    if kind == "attn":
        return re.sub(r"^gn\.gn\.", "norm.", rest)
    if kind == "res":
        rest = re.sub(r"^block\.(\d+)\.gn\.", r"body.\1.", rest)
        return rest.replace("block.", "body.", 1).replace("channel_up.", "skip.", 1)
    return rest


# --------------------------------------------------------------------------- transformer


def _attention(
    tensors: dict[str, torch.Tensor],
    prefix: str,
    dim: int,
    key_map: Mapping[str, str],
    path: Path,
    unknown: list[str],
    heads: int,
    qkv_order: str | None,
    undecided: list[str],
) -> tuple[dict[str, torch.Tensor], str]:
    """One layer's attention tensors -> maskgit's qkv / proj weights and biases.

    Names it does not know go to `unknown` (the layer is then skipped); a fused qkv whose
    row order `qkv_order` does not give goes to `undecided` (read in qkv order meanwhile).
    """
    roles: dict[str, dict[str, torch.Tensor]] = {}
    modules: dict[str, str] = {}  # role -> module name ("in_proj_" for nn.MultiheadAttention)
    unknown_before = len(unknown)
    for rest, tensor in tensors.items():
        if rest.endswith(("in_proj_weight", "in_proj_bias")):  # nn.MultiheadAttention
            module, param = "in_proj", rest.rpartition("in_proj_")[2]
            modules["qkv"] = rest.rpartition("in_proj_")[0] + "in_proj_"
        else:
            module, _, param = rest.rpartition(".")
            if param not in ("weight", "bias"):
                module, param = rest, "weight"
        role = key_map.get(module) or key_map.get(rest)
        for candidate in (module.lower(), module.lower().rpartition(".")[2]):
            if role is None:
                role = next((r for r, names in _NAMES.items() if candidate in names), None)
        if role is None:
            unknown.append(prefix + rest)
            continue
        if role == "ignore":
            continue
        if param in roles.setdefault(role, {}):
            raise LabImportError(f"{path}: {prefix}{rest}: a second {role!r} {param}")
        roles[role][param] = tensor
        modules.setdefault(role, module)
    if not roles or len(unknown) > unknown_before:  # the caller lists the unknown names
        return {}, ""
    if "qkv" in roles and roles.keys() & {"q", "k", "v"}:
        raise LabImportError(f"{path}: {prefix}*: both a fused qkv and separate q/k/v")
    needed = ("qkv", "out") if "qkv" in roles else ("q", "k", "v", "out")
    for role in needed:
        if "weight" not in roles.get(role, {}):
            raise LabImportError(
                f"{path}: {prefix}*: no {role} projection weight found (name it in --map)"
            )
    for role, params in roles.items():
        rows = 3 * dim if role == "qkv" else dim
        expected = {"weight": (rows, dim), "bias": (rows,)}
        for param, tensor in params.items():
            if tuple(tensor.shape) != expected[param]:
                raise LabImportError(
                    f"{path}: {prefix}* {role} {param} has shape {tuple(tensor.shape)}, "
                    f"expected {expected[param]} for dim={dim}"
                )

    def get(role: str, param: str, rows: int) -> torch.Tensor:
        return roles[role].get(param, torch.zeros(rows) if param == "bias" else None)

    if "qkv" in roles:
        qkv_w, qkv_b = get("qkv", "weight", 3 * dim), get("qkv", "bias", 3 * dim)
        order = _fused_order(prefix + modules["qkv"], qkv_order, path, undecided)
        if order == "per-head":
            if dim % heads:
                raise LabImportError(
                    f"{path}: {prefix}{modules['qkv']}: dim={dim} does not split into "
                    f"{heads} heads (set --heads)"
                )
            qkv_w, qkv_b = _per_head_to_qkv(qkv_w, heads), _per_head_to_qkv(qkv_b, heads)
        torch_mha = modules["qkv"].endswith("in_proj_")
        layout = "nn.MultiheadAttention" if torch_mha else f"fused qkv, {order} order"
        layout += "" if "bias" in roles["qkv"] else " (no bias)"
    else:
        qkv_w = torch.cat([get(r, "weight", dim) for r in "qkv"])
        qkv_b = torch.cat([get(r, "bias", dim) for r in "qkv"])
        has_bias = all("bias" in roles[r] for r in "qkv")
        layout = "separate q/k/v" + ("" if has_bias else " (no bias)")
    return {
        "qkv.weight": qkv_w,
        "qkv.bias": qkv_b,
        "proj.weight": get("out", "weight", dim),
        "proj.bias": get("out", "bias", dim),
    }, layout


def _fused_order(module: str, qkv_order: str | None, path: Path, undecided: list[str]) -> str:
    """The row order of the fused qkv projection `module` ("qkv" while undecided)."""
    if module.endswith("in_proj_"):  # nn.MultiheadAttention: [q | k | v] by definition
        if qkv_order == "per-head":
            raise LabImportError(
                f"{path}: {module}weight is nn.MultiheadAttention's in_proj_weight, whose "
                "rows are [all q | all k | all v] by torch's definition; --qkv-order per-head "
                "does not fit it (leave the option out)"
            )
        return "qkv"
    if qkv_order is None:
        undecided.append(module)
        return "qkv"
    return qkv_order


def _per_head_to_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (d_k rows each) -> [q_0 q_1 .. | k_0 .. | v_0 ..]
    (3 * dim, ...) -> (3 * dim, ...): the lab report's order -> maskgit's."""
    return tensor.reshape(heads, 3, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def _order_refusal(path: Path, module: str) -> str:
    """The message for a fused qkv of unknown row order: both code lines, the options."""
    name = module.rpartition("Attention.")[2]
    return (
        f"{path}: {module}.weight is a fused q/k/v projection, and the order of its rows is "
        "in neither its name nor its shape: if your attention does "
        f"`qkv = self.{name}(x).view(B, N, heads, 3 * d_k).transpose(1, 2); "
        "q, k, v = qkv.chunk(3, dim=-1)` (the lab report's code) give --qkv-order per-head; "
        f"if it does `q, k, v = self.{name}(x).chunk(3, dim=-1)` before splitting the heads "
        "give --qkv-order qkv; or let a few of the lab's images decide with --qkv-evidence DIR "
        "(qkv_order= / qkv_evidence= in Python)"
    )


def convert_transformer(
    state: dict[str, torch.Tensor],
    params: Mapping[str, Any],
    path: Path,
    config_path: Path,
    heads: int | None = None,
    key_map: Mapping[str, str] | None = None,
    layer_norm_eps: float = LAB_LAYER_NORM_EPS,
    qkv_order: str | None = None,
) -> tuple[TransformerConfig, dict[str, torch.Tensor], dict[str, int]]:
    """The lab transformer's state dict -> (TransformerConfig, maskgit state, layouts).

    `qkv_order` ("per-head" or "qkv", QKV_ORDERS) is the row order of a fused qkv
    projection; when one is found and it is None, `QkvOrderUnknown` is raised after every
    other check passed.
    """
    codes = _need(params, "num_codebook_vectors", config_path)
    tokens = _need(params, "num_image_tokens", config_path)
    dim = _need(params, "dim", config_path)
    depth = _need(params, "n_layers", config_path)
    hidden = _need(params, "hidden_dim", config_path)
    if heads is None:
        heads = next((params[k] for k in ("num_heads", "n_heads", "heads") if k in params), None)
        heads = LAB_HEADS if heads is None else heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0:
            raise LabImportError(f"{config_path}: num_heads={heads!r}: expected a positive integer")
    key_map = dict(key_map or {})

    def take(key: str, shape: tuple[int, ...], why: str = "") -> torch.Tensor:
        if key not in state:
            raise LabImportError(f"{path}: missing key {key}")
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise LabImportError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, expected {shape}"
                + (f" ({why})" if why else f" from {config_path}")
            )
        return tensor

    emb = state.get("tok_emb.weight")
    if emb is not None and emb.ndim == 2 and emb.shape[0] != codes + 1:
        raise LabImportError(
            f"{path}: tok_emb.weight has {emb.shape[0]} rows; the mask id is "
            f"num_codebook_vectors={codes} in {config_path}, so {codes + 1} rows are expected"
        )
    out = {"token_embedding.weight": take("tok_emb.weight", (codes + 1, dim))}
    pos = state.get("pos_emb")
    if pos is not None and pos.ndim == 3:
        pos = take("pos_emb", (1, tokens, dim))
    else:
        pos = take("pos_emb", (tokens, dim))
    out["position_embedding"] = pos.reshape(1, tokens, dim)
    bias = state.get("bias")
    if bias is not None and bias.ndim == 1:
        out["logit_bias"] = take("bias", (codes + 1,))[:codes]
        bias_mode = "shared"
    else:
        out["logit_bias"] = take("bias", (tokens, codes + 1), "num_image_tokens x codes + 1")[
            :, :codes
        ]
        bias_mode = "per-position"
    for src, dst in (("LN", "embed_norm"), ("Token_Prediction.2", "head.2")):
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = take(f"{src}.{p}", (dim,))
    out["head.0.weight"] = take("Token_Prediction.0.weight", (dim, dim))
    out["head.0.bias"] = take("Token_Prediction.0.bias", (dim,))

    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if layers != set(range(depth)):
        found = max(layers) + 1 if layers else 0
        raise LabImportError(
            f"{path}: holds {found} layers (blocks.0 to blocks.{found - 1}), {config_path} says "
            f"n_layers={depth}"
        )
    unknown: list[str] = []
    undecided: list[str] = []
    layouts: dict[str, int] = {}
    for i in range(depth):
        p = f"blocks.{i}."
        for src, dst in (("LayerNorm1", "norm1"), ("LayerNorm2", "norm2")):
            for q in ("weight", "bias"):
                out[f"{p}{dst}.{q}"] = take(f"{p}{src}.{q}", (dim,))
        out[f"{p}mlp.0.weight"] = take(f"{p}MLP.0.weight", (hidden, dim), f"hidden_dim={hidden}")
        out[f"{p}mlp.0.bias"] = take(f"{p}MLP.0.bias", (hidden,), f"hidden_dim={hidden}")
        out[f"{p}mlp.2.weight"] = take(f"{p}MLP.2.weight", (dim, hidden), f"hidden_dim={hidden}")
        out[f"{p}mlp.2.bias"] = take(f"{p}MLP.2.bias", (dim,))
        attn = {
            k[len(p) + len("Attention.") :]: v
            for k, v in state.items()
            if k.startswith(p + "Attention.")
        }  # noqa: E501
        mapped, layout = _attention(
            attn, p + "Attention.", dim, key_map, path, unknown, heads, qkv_order, undecided
        )
        if mapped:
            out.update({f"{p}attn.{k}": v for k, v in mapped.items()})
            layouts[layout] = layouts.get(layout, 0) + 1
        elif not unknown:
            raise LabImportError(f"{path}: missing keys {p}Attention.* (the layer's attention)")
    if unknown:
        names = sorted({k.split("Attention.", 1)[1] for k in unknown})
        raise LabImportError(
            f"{path}: attention keys not understood: {', '.join(unknown[:4])}"
            + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else "")
            + f"; name them in --map keys.yaml, e.g. '{names[0].rpartition('.')[0] or names[0]}"
            ": q' (roles: q, k, v, qkv, out, ignore)"
        )
    used = {"tok_emb.weight", "pos_emb", "bias", "LN.weight", "LN.bias"}
    used |= {f"Token_Prediction.{i}.{q}" for i in (0, 2) for q in ("weight", "bias")}
    for i in range(depth):
        used |= {k for k in state if k.startswith(f"blocks.{i}.Attention.")}
        used |= {
            f"blocks.{i}.{m}.{q}"
            for m in ("LayerNorm1", "LayerNorm2", "MLP.0", "MLP.2")
            for q in ("weight", "bias")
        }  # noqa: E501
    extra = sorted(set(state) - used)
    if extra:
        raise LabImportError(f"{path}: unexpected key {extra[0]}")
    try:
        cfg = TransformerConfig(
            codebook_size=codes,
            num_tokens=tokens,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_dim=hidden,
            dropout=0.1,
            attn_dropout=0.1,
            norm="post",
            layer_norm_eps=layer_norm_eps,
            logit_bias=bias_mode,
        )
        cfg.validate()
    except ConfigError as exc:
        raise LabImportError(f"{path}: {exc} (heads={heads}; set it with --heads)") from exc
    if undecided:
        raise QkvOrderUnknown(_order_refusal(path, undecided[0]))
    return cfg, out, layouts


def read_key_map(path: str | Path | None) -> dict[str, str]:
    """--map keys.yaml: {attention module name (or key inside it): role}."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise LabImportError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LabImportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise LabImportError(f"{path}: expected a mapping of names to roles")
    result = {}
    for name, role in data.items():
        if role not in ROLES:
            raise LabImportError(f"{path}: {name}: role {role!r}; valid roles: {', '.join(ROLES)}")
        name = str(name)
        if "Attention." in name:  # a full key as the error printed it
            name = name.split("Attention.", 1)[1]
        result[name.removesuffix(".weight").removesuffix(".bias")] = role
    return result


# --------------------------------------------------------------------------- qkv row order


def evidence_tokens(folder: str | Path, tokenizer: VQGAN) -> torch.Tensor:
    """Token grids (B, N) of `folder`: a `maskgit tokenize` folder, or images tokenised by
    `tokenizer` (resized to its image size); at most EVIDENCE_MAX_GRIDS."""
    folder = Path(folder)
    cfg = tokenizer.cfg
    try:
        if (folder / TOKENS_FILE).is_file():
            grids = load_tokens(folder)[0][:EVIDENCE_MAX_GRIDS]
        else:
            images = load_folder(folder, cfg.image_size, progress=False)[0]
            with torch.no_grad():
                grids = tokenizer.encode(to_model_range(images[:EVIDENCE_MAX_GRIDS]))
    except DataError as exc:
        raise LabImportError(f"--qkv-evidence {exc}") from exc
    tokens = grids.reshape(len(grids), -1).long()  # (B, N)
    if not len(tokens) or tokens.shape[1] != cfg.token_grid**2:
        raise LabImportError(
            f"{folder}: {len(tokens)} token grids of {tokens.shape[1]} tokens, expected "
            f"{cfg.token_grid}x{cfg.token_grid} grids (the VQGAN's)"
        )
    if tokens.min() < 0 or tokens.max() >= cfg.codebook_size:
        raise LabImportError(
            f"{folder}: token ids {int(tokens.min())}..{int(tokens.max())}, the VQGAN's codes "
            f"are 0..{cfg.codebook_size - 1}"
        )
    return tokens


def masked_token_losses(model: BidirectionalTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the masked tokens, (B * EVIDENCE_MASKS,): each grid of `tokens`
    (B, N) under EVIDENCE_MASKS fixed random masks hiding half of its tokens."""
    targets = tokens.repeat_interleave(EVIDENCE_MASKS, dim=0)  # (S, N)
    gen = torch.Generator().manual_seed(0)
    ranks = torch.rand(targets.shape, generator=gen).argsort(dim=1).argsort(dim=1)
    masked = ranks < max(1, targets.shape[1] // 2)  # (S, N), True = hidden
    losses = []
    with torch.no_grad():
        for rows in torch.arange(len(targets)).split(8):
            inputs = apply_token_mask(targets[rows], masked[rows], model.cfg.codebook_size)
            logits = model(inputs).float()  # (b, N, K)
            ce = F.cross_entropy(logits.transpose(1, 2), targets[rows], reduction="none")
            losses.append((ce * masked[rows]).sum(dim=1) / masked[rows].sum(dim=1))
    return torch.cat(losses)


def clearly_better(losses: Mapping[str, torch.Tensor]) -> str | None:
    """The order whose per-sample losses (paired, same samples) are clearly lower: by
    EVIDENCE_MIN_GAP of the higher mean and EVIDENCE_MIN_Z standard errors; else None."""
    (a, loss_a), (b, loss_b) = losses.items()
    diff = (loss_b - loss_a).double()  # > 0 where `a` is better
    if len(diff) < 2:
        return None
    mean, error = diff.mean().abs(), diff.std() / len(diff) ** 0.5
    higher = max(loss_a.mean(), loss_b.mean())
    if mean < EVIDENCE_MIN_Z * error or mean < EVIDENCE_MIN_GAP * higher:
        return None
    return a if diff.mean() > 0 else b


def _choose_order(
    models: Mapping[str, BidirectionalTransformer],
    qkv_order: str | None,
    evidence: str | Path | None,
    tokenizer: VQGAN,
) -> OrderChoice:
    """Which of `models` (keyed by order; "" alone when no order was needed) to keep."""
    if "" in models:
        return OrderChoice()
    if evidence is None:
        return OrderChoice(qkv_order, "--qkv-order")
    tokens = evidence_tokens(evidence, tokenizer)
    samples = {order: masked_token_losses(model, tokens) for order, model in models.items()}
    losses = {order: round(float(loss.mean()), 4) for order, loss in samples.items()}
    better = clearly_better(samples)
    choice = OrderChoice(qkv_order or better or "", "", losses, len(tokens))
    if qkv_order is not None:
        if better not in (None, qkv_order):
            raise LabImportError(
                f"{evidence}: --qkv-order {qkv_order} contradicts the evidence, "
                f"{choice.describe()}; check which line your attention has (leave out "
                "--qkv-evidence to import it as stated)"
            )
        choice.decided_by = "--qkv-order"
    elif better is None:
        raise LabImportError(
            f"{evidence}: {choice.describe()}: not clearly apart (the better order needs a "
            f"loss {EVIDENCE_MIN_GAP:.0%} and {EVIDENCE_MIN_Z:g} standard errors lower); give "
            "more of the lab's images, or state the order with --qkv-order per-head|qkv"
        )
    else:
        choice.decided_by = f"evidence {evidence}"
    return choice


# --------------------------------------------------------------------------- the import


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build(model_cls: type, cfg: Any, state: dict[str, torch.Tensor], path: Path) -> Any:
    model = model_cls(cfg)
    own = model.state_dict()
    for name, tensor in own.items():  # buffers maskgit keeps and the lab has not
        if state.get(name) is None and name.endswith("steps_unused"):
            state[name] = torch.zeros_like(tensor)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        load_weights(model, state, path)
    except CheckpointError as exc:
        raise LabImportError(str(exc)) from exc
    return model.eval()


def import_lab(
    vqgan_config: str | Path,
    vqgan: str | Path | None,
    transformer_config: str | Path,
    transformer: str | Path,
    out: str | Path,
    *,
    key_map: str | Path | None = None,
    heads: int | None = None,
    image_mean: tuple[float, ...] = LAB_IMAGE_MEAN,
    image_std: tuple[float, ...] = LAB_IMAGE_STD,
    layer_norm_eps: float = LAB_LAYER_NORM_EPS,
    qkv_order: str | None = None,
    qkv_evidence: str | Path | None = None,
) -> ImportReport:
    """Convert the lab's files into a maskgit model folder `out` (written only on success).

    A fused qkv projection needs its row order: `qkv_order` ("per-head": the lab report's
    `.view(B, N, heads, 3 * d_k)` then `chunk(3, dim=-1)`; "qkv": `chunk(3, dim=-1)` before
    the head split), or `qkv_evidence`, a folder of a few of the lab's images (or a
    `maskgit tokenize` token folder) on which the order with the clearly lower masked-token
    loss is taken. With both, a stated order the evidence clearly contradicts is refused.
    """
    if qkv_order not in (None, *QKV_ORDERS):
        raise LabImportError(f"qkv_order={qkv_order!r}: expected one of {', '.join(QKV_ORDERS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabImportError(f"{out}: already exists and is not empty; choose another --out")
    vqgan_config, transformer_config = Path(vqgan_config), Path(transformer_config)
    transformer = Path(transformer)
    mapping = read_key_map(key_map)
    vq_params = read_yaml(vqgan_config, "model_param")
    tr_params = read_yaml(transformer_config, "Transformer_param")

    tr_state, container = unwrap_state_dict(load_torch_file(transformer), transformer)
    vq_state = None
    if any(k.startswith("transformer.") for k in tr_state):  # the whole MaskGit module
        container += " (whole MaskGit module)"
        vq_state = {k[6:]: v for k, v in tr_state.items() if k.startswith("vqgan.")}
        rest = [k for k in tr_state if not k.startswith(("transformer.", "vqgan."))]
        if rest:
            raise LabImportError(f"{transformer}: unexpected key {rest[0]}")
        tr_state = {k[12:]: v for k, v in tr_state.items() if k.startswith("transformer.")}
    if vqgan is not None:
        vqgan = Path(vqgan)
        vq_state, _ = unwrap_state_dict(load_torch_file(vqgan), vqgan)
        vq_path, vq_source = vqgan, str(vqgan)
    elif vq_state:
        vq_path, vq_source = transformer, f"{transformer} (vqgan.* keys)"
    else:
        raise LabImportError(f"{transformer}: holds no vqgan.* keys; give the VQGAN with --vqgan")

    tok_cfg, tok_state = convert_vqgan(
        vq_state, vq_params, vq_path, vqgan_config, image_mean, image_std
    )

    def convert(order: str | None) -> tuple:
        return convert_transformer(
            tr_state, tr_params, transformer, transformer_config, heads, mapping,
            layer_norm_eps, order,
        )  # fmt: skip

    try:
        candidates = {"": convert(None)}  # "": no fused qkv of unknown row order
        if qkv_order is not None:
            convert(qkv_order)  # refuses per-head for nn.MultiheadAttention
    except QkvOrderUnknown:
        if qkv_order is None and qkv_evidence is None:
            raise
        orders = QKV_ORDERS if qkv_evidence is not None else (qkv_order,)
        candidates = {order: convert(order) for order in orders}
    tr_cfg = next(iter(candidates.values()))[0]
    if tok_cfg.codebook_size != tr_cfg.codebook_size:
        raise LabImportError(
            f"{vq_path}: codebook.embedding.weight has {tok_cfg.codebook_size} codes, but the "
            f"transformer's mask id is {tr_cfg.codebook_size} (num_codebook_vectors in "
            f"{transformer_config}; tok_emb.weight has {tr_cfg.codebook_size + 1} rows)"
        )
    if tr_cfg.num_tokens != tok_cfg.token_grid**2:
        raise LabImportError(
            f"{transformer}: pos_emb holds {tr_cfg.num_tokens} positions, the VQGAN makes a "
            f"{tok_cfg.token_grid}x{tok_cfg.token_grid} grid (num_image_tokens in "
            f"{transformer_config})"
        )
    tokenizer = _build(VQGAN, tok_cfg, tok_state, vq_path)
    models = {
        order: _build(BidirectionalTransformer, cfg, state, transformer)
        for order, (cfg, state, _) in candidates.items()
    }
    choice = _choose_order(models, qkv_order, qkv_evidence, tokenizer)
    model, layouts = models[choice.order], candidates[choice.order][2]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(tokenizer, tmp / "tokenizer.safetensors")
        save_model(model, tmp / "transformer.safetensors")
        config = {"tokenizer": to_dict(tok_cfg), "transformer": to_dict(tr_cfg)}
        atomic_write(
            tmp / "config.yaml",
            lambda t: t.write_text(
                "# imported from the course lab's checkpoints by `maskgit import-lab`\n"
                + yaml.safe_dump(config, sort_keys=False)
            ),
        )
        sources = {"vqgan_config": vqgan_config, "transformer_config": transformer_config}
        sources |= {"transformer": transformer} | ({"vqgan": vqgan} if vqgan else {})
        record = {
            "imported_by": "maskgit import-lab",
            "files": {k: {"path": str(p), "sha256": _sha256(p)} for k, p in sources.items()},
            "transformer_saved_as": container,
            "attention_layouts": layouts,
            "heads": tr_cfg.heads,
            "image_mean": list(image_mean),
            "image_std": list(image_std),
            "key_map": mapping,
            "qkv_order": choice.record(),
        }
        atomic_write(tmp / "import.json", lambda t: t.write_text(json.dumps(record, indent=2)))
        for name in ("tokenizer", "transformer"):  # the written files load back
            load_model(tmp / f"{name}.safetensors", name)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportReport(out, tok_cfg, tr_cfg, layouts, container, vq_source, choice)
