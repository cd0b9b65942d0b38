"""maskgit against its peers: diffusers' aMUSEd and lucidrains' muse-maskgit-pytorch.

Every contender is built from its public API with random weights (speed does not depend on
them) and nothing downloaded, at maskgit's embedded emoji-demo model's width (192), heads
(6 of 32), tokens (16x16 = 256) and codes (512):

  maskgit       MaskGIT: VQGAN (64x64 -> 16x16 tokens, 512 codes) + BidirectionalTransformer
                (depth 5, MLP 768), `MaskGIT.inpaint` with blend="none" (linear schedule,
                argmax, Telea prefill of the hole before encoding): the peers paste nothing.
  seamless-blend  maskgit's default blend="seamless" alone: the paste of the same batch's
                decoded images, the cost it adds to a default maskgit call (its own row).
  maskgit-int8  maskgit with `quantize="int8"` (dynamic int8 linear layers; CPU only).
  amused        diffusers' AmusedInpaintPipeline: UVit2DModel (no res-blocks around the
                transformer, no down/upsampling), VQModel (64 -> 16x16, 512 codes),
                AmusedScheduler, and a tiny random CLIPTextModelWithProjection with a CLIP
                tokenizer whose vocabulary is written to a temporary folder.
  muse          muse-maskgit-pytorch: MaskGitTransformer (flash=False) + VQGanVAE (dim 48, 2
                layers: 64 -> 16x16, 512 codes); its decoding loop written out below
                (`muse_inpaint`), since the package has no inpainting entry point.

Equal size (--match): a peer's transformer keeps maskgit's width and heads and has its
depth and gated-MLP width solved so that, with --match params (default), its parameter
count equals maskgit's transformer's (at the deepest depth up to maskgit's 5 where a
positive MLP width gets there), or with --match flops, its FLOPs of one forward (one image,
256 tokens) equal maskgit's at depth 5. Both cannot hold at once: aMUSEd's adaptive norms
(3 per layer) and both peers' cross-attention (a second attention per layer, to text) hold
parameters that cost almost no per-token FLOPs, and muse builds a self-conditioning MLP it
does not use unless self_cond=True. The table prints both counts so the choice is visible.

Attention: each contender runs the attention a CPU user would pick, printed with the table.
maskgit and aMUSEd call torch's fused F.scaled_dot_product_attention; muse is built with
flash=False (softmax attention written out with einsum): its flash=True path is a tiled
attention in Python on CPUs (its SDPA call is switched off in its code).

What differs besides the size (the table prints it too): aMUSEd's transformer
cross-attends to the text encoder's states at every layer, adds micro-conditioning, runs
the text encoder once per call, and samples with its own scheduler; guidance is off
(guidance_scale 0) so every contender runs one forward per step. muse's transformer has
self- and cross-attention (to an empty context: one null key/value) in every layer and a
GEGLU MLP; its VQGanVAE is a different conv tokenizer. maskgit has self-attention only and
a tied output head.

Decode: inpaint a batch of --batch 64x64 images (centre hole, half the side) in --steps
steps. Train: one optimiser step (AdamW) on a batch of --train-batch token grids, masked-token
cross-entropy (aMUSEd: UVit2DModel on random text states; muse: MaskGit.forward's loss).

Rounds are interleaved (each round times every contender once, the order rotated) and the
table gives medians; `vs maskgit` is the median of the per-round ratios with their spread
(min-max over the rounds), so load that drifts during the run cancels out; `per FLOP` is
the same ratio divided by the ratio of FLOPs. FLOPs are counted with
torch.utils.flop_counter (torch's fused CPU attention kernel added: torch does not count
it), for the whole call and for one transformer forward of one image; `% peak` compares
them per second with the best fp32 matmul speed (square --peak-size matmuls, 2048 by
default, at --threads) measured in the same rounds, printed with each table beside the
load average at the start.

    python benchmarks/bench_peers.py                       # 15 rounds, 2 threads, CPU
    python benchmarks/bench_peers.py --rounds 2 --json out.json
    python benchmarks/bench_peers.py --match flops         # peers at maskgit's FLOPs
    python benchmarks/bench_peers.py --device cuda         # where a GPU is lent

The peers come from the `peers` extra: `make bench-peers` installs them, at the versions of
requirements/peers.txt, into their own venv and runs this script (a peer that is not
installed is left out, said so in the table).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maskgit.config import get_preset
from maskgit.options import resolve
from maskgit.pipeline import MaskGIT, crop_window, paste_window, quantize_int8
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

SIZE = 64  # image side
GRID = 16  # token grid side
CODES = 512
DIM, DEPTH, HEADS, MLP = 192, 5, 6, 768
MATCHES = ("params", "flops")  # what a peer's transformer matches of maskgit's (peer_size)


@dataclass
class Contender:
    name: str
    run: Callable[[], None]  # one timed call
    params: int  # parameters of the whole model (transformer + tokenizer + text encoder)
    transformer_params: int
    notes: str = ""
    flops: int = 0
    forward_flops: int = 0  # one transformer forward of one image (256 tokens)
    attention: str = ""  # the attention kernel it runs
    size: str = ""  # how its transformer is sized
    transformer: torch.nn.Module | None = None  # the transformer it runs
    per_flop: bool = True  # its time per FLOP compares with maskgit's (not the blend's)
    times: list[float] = field(default_factory=list)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- inputs


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, S, S) and bool masks (B, S, S), True = repaint (a centre hole)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    masks = torch.zeros(batch, SIZE, SIZE, dtype=torch.bool)
    masks[:, SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = True
    return images, masks


def forward_flops(forward: Callable[[], object]) -> int:
    """FLOPs of one forward without autograd."""

    def run() -> None:
        with torch.no_grad():
            forward()

    return count_flops(run)


# --------------------------------------------------------------------------- maskgit


def maskgit_transformer() -> BidirectionalTransformer:
    cfg = get_preset("emoji-demo").transformer
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.codebook_size) == (
        DIM,
        DEPTH,
        HEADS,
        MLP,
        CODES,
    ), "the emoji-demo preset changed: update the peers' sizes"
    torch.manual_seed(0)
    return BidirectionalTransformer(cfg)


def maskgit_forward(model: BidirectionalTransformer) -> Callable[[], object]:
    device = next(model.parameters()).device
    tokens = torch.randint(0, CODES, (1, GRID * GRID), device=device)
    return lambda: model(tokens)


def maskgit_attention(model: BidirectionalTransformer) -> str:
    if model.cfg.attention == "fused":
        return "torch SDPA (F.scaled_dot_product_attention)"
    return "written out (matmul + softmax)"


def maskgit_model(device: torch.device) -> MaskGIT:
    preset = get_preset("emoji-demo")
    transformer = maskgit_transformer()
    return MaskGIT(VQGAN(preset.tokenizer), transformer, device)


def maskgit_decode(device, batch, steps, int8=False) -> Contender:
    model = maskgit_model(device)
    params = count(model.tokenizer) + count(model.transformer)
    transformer_params = count(model.transformer)
    fwd = forward_flops(maskgit_forward(model.transformer))
    attention = maskgit_attention(model.transformer)
    images, masks = inputs(batch)

    def run() -> None:  # blend="none": the peers paste nothing (the blend: seamless-blend)
        model.inpaint(images, masks, steps=steps, batch_size=batch, blend="none")

    flops = 0
    if int8:  # torch counts no FLOPs of int8 kernels: the fp32 model's count, same maths
        flops = count_flops(run)
        model.transformer = quantize_int8(model.transformer)
        attention += ", int8 projections"

    notes = "self-attention only; Telea prefill; argmax + Gumbel choice noise; blend none"
    if int8:
        notes = "as maskgit, linear layers dynamic int8 (FLOPs: the fp32 count)"
    name = "maskgit-int8" if int8 else "maskgit"
    size = f"depth {DEPTH}, MLP {MLP}"
    return Contender(
        name, run, params, transformer_params, notes, flops, fwd, attention, size, model.transformer
    )


def blend_decode(device, batch, steps) -> Contender:
    """maskgit's seamless blend alone: what blend="seamless" (the default) adds to a call,
    pasting each decoded image of the batch into its original as `MaskGIT.inpaint` does."""
    model = maskgit_model(device)
    images, masks = inputs(batch)
    options = resolve(None, steps=steps, blend="none")
    decoded, _, _ = model.decode_batch(images, masks, options)  # (B, 3, S, S) uint8
    windows = [crop_window(m, SIZE) for m in masks]

    def run() -> None:
        for image, hole, fill, window in zip(images, masks, decoded, windows, strict=True):
            paste_window(image, hole, fill, window, 0, "seamless")

    notes = "maskgit's default blend='seamless' alone (paste_window per image, as inpaint)"
    return Contender("seamless-blend", run, 0, 0, notes, attention="-", size="-", per_flop=False)


def maskgit_train(device, batch) -> Contender:
    from maskgit.masking import apply_token_mask, masked_token_loss, random_token_mask

    model = maskgit_transformer().to(device)
    fwd = forward_flops(maskgit_forward(model))
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CODES, (batch, GRID * GRID), generator=g).to(device)

    def run() -> None:  # maskgit's training objective (train.py adds clipping, EMA, ...)
        masked = random_token_mask(*tokens.shape, "cosine", device=device)
        loss = masked_token_loss(model(apply_token_mask(tokens, masked, CODES)), tokens, masked)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    notes = "masked-token CE, AdamW"
    size = f"depth {DEPTH}, MLP {MLP}"
    attention = maskgit_attention(model)
    return Contender(
        "maskgit", run, count(model), count(model), notes, 0, fwd, attention, size, model
    )


# --------------------------------------------------------------------------- equal size


def peer_size(
    build: Callable[[int, int], torch.nn.Module],
    forward: Callable[[torch.nn.Module], Callable[[], object]],
    match: str,
) -> tuple[int, int]:
    """(depth, gated-MLP width) at which `build(depth, width)`, a peer's transformer at
    maskgit's width and heads, matches maskgit's transformer: its parameter count (match
    "params": the deepest depth up to maskgit's where a positive width gets there) or its
    FLOPs of one forward (match "flops", `forward(model)` makes the call; maskgit's depth).
    Both grow linearly with the MLP width, so two builds per depth solve it."""

    def measure(model, make_forward) -> int:
        return count(model) if match == "params" else forward_flops(make_forward(model))

    target = measure(maskgit_transformer(), maskgit_forward)
    for depth in range(DEPTH, 0, -1) if match == "params" else [DEPTH]:
        low, high = (measure(build(depth, width), forward) for width in (64, 128))
        width = round(64 + (target - low) * 64 / (high - low))
        if width >= 1:
            return depth, width
    raise RuntimeError(f"no depth up to {DEPTH} matches maskgit's {match}")


def size_note(depth: int, width: int, match: str) -> str:
    return f"depth {depth}, gated MLP {width} ({match} matched)"


# --------------------------------------------------------------------------- aMUSEd


def _clip_tokenizer(folder: str):
    """A CLIP tokenizer from a tiny vocabulary written to `folder` (no download)."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["<|startoftext|>", "<|endoftext|>", "!"] + letters + [x + "</w>" for x in letters]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(
        folder, local_files_only=True, model_max_length=TEXT_TOKENS
    )


TEXT_DIM = 32
TEXT_TOKENS = 16  # the CLIP tokenizer's model_max_length


def _uvit(depth: int, mlp: int):
    """aMUSEd's transformer at maskgit's width and heads: no res-blocks (ConvNeXt and
    attention) around it, `depth` layers with a gated MLP of width `mlp`."""
    from diffusers import UVit2DModel

    return UVit2DModel(
        hidden_size=DIM,
        use_bias=False,
        hidden_dropout=0.0,
        cond_embed_dim=TEXT_DIM,
        micro_cond_encode_dim=8,
        micro_cond_embed_dim=8 * 5,
        encoder_hidden_size=TEXT_DIM,
        vocab_size=CODES + 1,  # + [MASK]
        codebook_size=CODES,
        in_channels=DIM,
        block_out_channels=DIM,
        num_res_blocks=0,
        downsample=False,
        upsample=False,
        block_num_heads=HEADS,
        num_hidden_layers=depth,
        num_attention_heads=HEADS,
        attention_dropout=0.0,
        intermediate_size=mlp,
        layer_norm_eps=1e-6,
        ln_elementwise_affine=True,
        sample_size=GRID,
    )


def _uvit_inputs(batch: int, device, generator=None):
    """Random text states (B, TEXT_TOKENS, TEXT_DIM), pooled text (B, TEXT_DIM) and the
    micro-conditions (B, 5) UVit2DModel takes besides the tokens."""
    text = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=generator).to(device)
    pooled = torch.randn(batch, TEXT_DIM, generator=generator).to(device)
    micro = torch.tensor([SIZE, SIZE, 0, 0, 6.0], device=device).repeat(batch, 1)
    return text, pooled, micro


def _uvit_forward(model) -> Callable[[], object]:
    device = next(model.parameters()).device
    tokens = torch.randint(0, CODES, (1, GRID, GRID), device=device)
    text, pooled, micro = _uvit_inputs(1, device)
    return lambda: model(
        tokens, encoder_hidden_states=text, pooled_text_emb=pooled, micro_conds=micro
    )


@functools.cache
def amused_size(match: str) -> tuple[int, int]:
    """(depth, MLP width) of aMUSEd's transformer at maskgit's size (`peer_size`)."""
    return peer_size(_uvit, _uvit_forward, match)


def _uvit_attention(model) -> str:
    processors = sorted({type(p).__name__ for p in model.attn_processors.values()})
    sdpa = all(name == "AttnProcessor2_0" for name in processors)
    return "/".join(processors) + (" (torch SDPA)" if sdpa else "")


def amused_decode(device, batch, steps, match="params") -> Contender:
    from diffusers import AmusedInpaintPipeline, AmusedScheduler, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    depth, mlp = amused_size(match)
    torch.manual_seed(0)
    transformer = _uvit(depth, mlp)
    fwd = forward_flops(_uvit_forward(transformer))
    vqvae = VQModel(
        act_fn="silu",
        block_out_channels=[32, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        in_channels=3,
        out_channels=3,
        latent_channels=64,
        layers_per_block=1,
        norm_num_groups=32,
        num_vq_embeddings=CODES,  # codes of width latent_channels (the pipeline needs that)
        sample_size=SIZE,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
    )
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=TEXT_DIM,
            intermediate_size=2 * TEXT_DIM,
            num_attention_heads=1,
            num_hidden_layers=2,  # the pipeline reads the penultimate layer's states
            vocab_size=64,
            max_position_embeddings=TEXT_TOKENS,
            projection_dim=TEXT_DIM,
        )
    )
    folder = tempfile.mkdtemp(prefix="bench-peers-clip-")
    pipe = AmusedInpaintPipeline(
        vqvae=vqvae,
        tokenizer=_clip_tokenizer(folder),
        text_encoder=text_encoder,
        transformer=transformer,
        scheduler=AmusedScheduler(mask_token_id=CODES),
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    images, masks = inputs(batch)
    image = images.float().div(255).to(device)
    mask = masks[:, None].float().to(device)

    def run() -> None:
        pipe(
            prompt=[""] * batch,
            image=image,
            mask_image=mask,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=torch.Generator(device).manual_seed(0),
            output_type="pt",
        )

    params = count(transformer) + count(vqvae) + count(text_encoder)
    notes = (
        f"+ cross-attention to {TEXT_DIM}-dim text states, adaptive norms, micro-conds; "
        "text encoder each call; AmusedScheduler (pipeline deprecated since diffusers 0.33)"
    )
    attention = _uvit_attention(transformer)
    size = size_note(depth, mlp, match)
    params_t = count(transformer)
    return Contender("amused", run, params, params_t, notes, 0, fwd, attention, size, transformer)


def amused_train(device, batch, match="params") -> Contender:
    depth, mlp = amused_size(match)
    torch.manual_seed(0)
    model = _uvit(depth, mlp).to(device)
    fwd = forward_flops(_uvit_forward(model))
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CODES, (batch, GRID, GRID), generator=g).to(device)
    text, pooled, micro = _uvit_inputs(batch, device, g)

    def run() -> None:
        ratio = torch.rand(batch, 1, 1, device=device)
        masked = torch.rand(tokens.shape, device=device) < torch.cos(ratio * math.pi / 2)
        x = torch.where(masked, torch.full_like(tokens, CODES), tokens)
        logits = model(x, encoder_hidden_states=text, pooled_text_emb=pooled, micro_conds=micro)
        logits = logits.permute(0, 2, 3, 1)  # (B, H, W, codes)
        loss = torch.nn.functional.cross_entropy(logits[masked], tokens[masked])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    notes = "UVit2DModel on random text states; masked-token CE, AdamW"
    attention, size = _uvit_attention(model), size_note(depth, mlp, match)
    params = count(model)
    return Contender("amused", run, params, params, notes, 0, fwd, attention, size, model)


# --------------------------------------------------------------------------- muse


MUSE_T5 = "t5-small"  # the name muse looks its text width up under (see _muse_modules)
TORCHVISION_IMPORT = re.compile(r"^(import torchvision\b|from torchvision\b).*$", re.M)


def _muse_modules():
    """muse-maskgit-pytorch's MaskGit, MaskGitTransformer and VQGanVAE, imported without
    torchvision and without a download.

    The package imports torchvision when imported (image transforms for its trainers, VGG
    for its perceptual loss), and no torchvision release installs beside torch 2.13.0's CPU
    wheel (requirements/peers.txt leaves it out). The classes used here never call it (the
    VAE is built with use_vgg_and_gan=False), so when torchvision is missing the package's
    __init__ (its trainers) is skipped and its two model files are executed from their
    installed source with the torchvision import lines left out; nothing stands in for
    torchvision. The transformer reads its text width from a T5 config it would download:
    a local T5Config of width DIM is put in muse's own config cache first.
    """
    try:
        import muse_maskgit_pytorch as muse
        import torchvision  # noqa: F401
    except ImportError:
        muse = _muse_without_torchvision()
    from transformers import T5Config

    t5 = importlib.import_module("muse_maskgit_pytorch.t5")
    t5.T5_CONFIGS.setdefault(MUSE_T5, {"config": T5Config(d_model=DIM)})
    return muse.MaskGit, muse.MaskGitTransformer, muse.VQGanVAE


def _muse_without_torchvision():
    name = "muse_maskgit_pytorch"
    if getattr(sys.modules.get(name), "VQGanVAE", None) is not None:
        return sys.modules[name]  # loaded so before
    spec = importlib.util.find_spec(name)  # locates the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"No module named {name!r}")
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules[name] = package
    package = sys.modules[name]
    folder = spec.submodule_search_locations[0]
    for stem in ("vqgan_vae", "muse_maskgit_pytorch"):
        full = f"{name}.{stem}"
        if full in sys.modules:
            continue
        path = os.path.join(folder, f"{stem}.py")
        with open(path) as f:
            source = TORCHVISION_IMPORT.sub("pass  # torchvision: not used here", f.read())
        module = types.ModuleType(full)
        module.__file__ = path
        sys.modules[full] = module
        exec(compile(source, path, "exec"), module.__dict__)
        setattr(package, stem, module)
    models = sys.modules[f"{name}.muse_maskgit_pytorch"]
    for attr in ("MaskGit", "MaskGitTransformer"):
        setattr(package, attr, getattr(models, attr))
    package.VQGanVAE = sys.modules[f"{name}.vqgan_vae"].VQGanVAE
    return package


MUSE_FLASH = False  # muse's flash=True is a tiled attention in Python on CPUs


def _muse_transformer(depth: int, mlp: int):
    """muse's MaskGitTransformer at maskgit's width and heads: `depth` layers with a GEGLU
    MLP of width `mlp` (muse's inner width is int(dim * ff_mult * 2 / 3))."""
    _, MaskGitTransformer, _ = _muse_modules()
    return MaskGitTransformer(
        num_tokens=CODES,
        seq_len=GRID * GRID,
        dim=DIM,
        depth=depth,
        dim_head=DIM // HEADS,
        heads=HEADS,
        ff_mult=(mlp + 0.5) * 3 / (2 * DIM),
        t5_name=MUSE_T5,
        flash=MUSE_FLASH,
    )


def _muse_forward(model) -> Callable[[], object]:
    device = next(model.parameters()).device
    tokens = torch.randint(0, CODES, (1, GRID * GRID), device=device)
    return lambda: model(tokens, text_embeds=_empty_text(1, device))


@functools.cache
def muse_size(match: str) -> tuple[int, int]:
    """(depth, MLP width) of muse's transformer at maskgit's size (`peer_size`)."""
    return peer_size(_muse_transformer, _muse_forward, match)


def muse_attention(model) -> str:
    """The attention muse's Attend modules run: flash=True is its tiled attention in Python
    on a CPU (memory-efficient-attention-pytorch), flash=False softmax written out."""
    flash = {m.flash for m in model.modules() if type(m).__name__ == "Attend"}
    if flash == {False}:
        return "written out (einsum + softmax), flash=False"
    return f"flash={sorted(flash)}: tiled Python attention on CPUs"


def _muse_vae():
    _, _, VQGanVAE = _muse_modules()
    return VQGanVAE(dim=48, layers=2, codebook_size=CODES, use_vgg_and_gan=False)


def _empty_text(batch: int, device) -> torch.Tensor:
    """muse's text states for no text: one all-zero state, which its context mask drops
    (every layer's cross-attention then sees its learned null key/value only)."""
    return torch.zeros(batch, 1, DIM, device=device)


def muse_inpaint(vae, transformer, images, masks, steps: int, generator=None):
    """muse's decoding loop (MaskGit.generate) started from the known tokens of the images.

    images float (B, 3, S, S) in [0, 1], masks bool (B, S, S) True = repaint. Cosine
    schedule, Gumbel sampling at a temperature annealed from 1, top-k filtering
    (thres 0.9), re-mask the least confident (1 - logit) of the new tokens, as
    MaskGit.generate does; an empty text context (muse conditions on text).
    """
    from einops import rearrange

    device = images.device
    _, ids, _ = vae.encode(images)
    ids = rearrange(ids, "b ... -> b (...)")
    down = SIZE // GRID
    unknown = masks.reshape(-1, GRID, down, GRID, down).any(4).any(2).flatten(1)
    mask_id = transformer.mask_id
    ids = torch.where(unknown, torch.full_like(ids, mask_id), ids)
    scores = torch.zeros(ids.shape, device=device)
    scores = scores.masked_fill(~unknown, -1e5)
    text_embeds = _empty_text(ids.shape[0], device)
    n_unknown = unknown.sum(-1)
    for step in range(steps):
        ratio = math.cos(math.pi / 2 * step / steps)
        count_masked = (n_unknown * ratio).long().clamp(min=1)
        ranks = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
        remask = (ranks < count_masked[:, None]) & unknown
        ids = torch.where(remask, torch.full_like(ids, mask_id), ids)
        logits = transformer(ids, text_embeds=text_embeds)
        k = math.ceil(0.1 * logits.shape[-1])
        val, ind = logits.topk(k, dim=-1)
        filtered = torch.full_like(logits, float("-inf")).scatter_(2, ind, val)
        temperature = (steps - 1 - step) / steps
        u = torch.rand(filtered.shape, device=device, generator=generator)
        noise = -torch.log(-torch.log(u.clamp(min=1e-20)).clamp(min=1e-20))
        pred = (filtered / max(temperature, 1e-10) + noise).argmax(dim=-1)
        is_mask = ids == mask_id
        ids = torch.where(is_mask, pred, ids)
        scores = 1 - logits.gather(2, pred[..., None]).squeeze(-1)
        scores = scores.masked_fill(~is_mask, -1e5)
    return vae.decode_from_ids(ids.reshape(-1, GRID, GRID))


def muse_decode(device, batch, steps, match="params") -> Contender:
    depth, mlp = muse_size(match)
    torch.manual_seed(0)
    vae = _muse_vae().to(device).eval()
    transformer = _muse_transformer(depth, mlp).to(device).eval()
    fwd = forward_flops(_muse_forward(transformer))
    images, masks = inputs(batch)
    image = images.float().div(255).to(device)
    masks = masks.to(device)

    def run() -> None:
        with torch.no_grad():
            muse_inpaint(
                vae, transformer, image, masks, steps, torch.Generator(device).manual_seed(0)
            )

    notes = "+ cross-attention to an empty text context (null kv), GEGLU MLP; VQGanVAE"
    params = count(vae) + count(transformer)
    attention, size = muse_attention(transformer), size_note(depth, mlp, match)
    params_t = count(transformer)
    return Contender("muse", run, params, params_t, notes, 0, fwd, attention, size, transformer)


def muse_train(device, batch, match="params") -> Contender:
    MaskGit, _, _ = _muse_modules()
    depth, mlp = muse_size(match)
    torch.manual_seed(0)
    transformer = _muse_transformer(depth, mlp)
    model = MaskGit(vae=_muse_vae(), transformer=transformer, image_size=SIZE).to(device)
    fwd = forward_flops(_muse_forward(transformer))
    model.train()
    optimiser = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CODES, (batch, GRID * GRID), generator=g).to(device)
    text_embeds = _empty_text(batch, device)

    def run() -> None:
        loss = model(tokens, text_embeds=text_embeds)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    notes = "MaskGit.forward's masked CE (empty text context), AdamW"
    attention, size = muse_attention(transformer), size_note(depth, mlp, match)
    params = count(transformer)
    return Contender("muse", run, params, params, notes, 0, fwd, attention, size, transformer)


# --------------------------------------------------------------------------- measuring


def _sdpa_cpu_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter_module().sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter_module().sdpa_backward_flop_count(
        grad_out.shape, query.shape, key.shape, value.shape
    )


_sdpa_cpu_flops._get_raw = True  # called with the tensors, as torch's raw formulas
_sdpa_cpu_backward_flops._get_raw = True


def flop_counter_module():
    from torch.utils import flop_counter

    return flop_counter


def count_flops(run: Callable[[], None]) -> int:
    """FLOPs of one call by torch.utils.flop_counter, with torch's fused CPU attention
    kernel (not in torch's table) counted by torch's formula for the other fused kernels."""
    flop_counter = flop_counter_module()
    aten = torch.ops.aten
    extra = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flops),
    ):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            extra[op] = formula
    with flop_counter.FlopCounterMode(display=False, custom_mapping=extra) as counter:
        run()
    return counter.get_total_flops()


def matmul_speed(
    device: torch.device, size: int, repeats: int = 3, clock=time.perf_counter
) -> float:
    """Best fp32 matmul speed (FLOP/s) of `repeats` square size x size products, timed by
    `clock` (the contenders' clock)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        started = clock()
        a @ b
        _sync(device)
        best = min(best, clock() - started)
    return 2 * size**3 / best


def interleave(contenders: list[Contender], rounds: int, device, peak_size: int, clock) -> float:
    """Time every contender once per round, the order rotated each round; -> matmul peak."""
    for c in contenders:  # warm-up (allocators, kernels, lazy inits)
        c.run()
    peak = 0.0
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            _sync(device)
            started = clock()
            c.run()
            _sync(device)
            c.times.append(clock() - started)
        peak = max(peak, matmul_speed(device, peak_size, clock=clock))
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return peak


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(contenders: list[Contender], peak: float) -> list[dict]:
    """One row per contender: seconds, the per-round ratios to the first contender (maskgit)
    and per FLOP, each with its spread over the rounds, sizes and FLOPs."""
    base = contenders[0]
    rows = []
    for c in contenders:
        ratios = [t / b for t, b in zip(c.times, base.times, strict=True)]
        comparable = c.per_flop and c.flops and base.flops
        flop_ratio = c.flops / base.flops if comparable else float("nan")
        per_flop = _spread([r / flop_ratio for r in ratios])
        median = statistics.median(c.times)
        row = {
            "name": c.name,
            "median_s": median,
            "min_s": min(c.times),
            "max_s": max(c.times),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "params": c.params,
            "transformer_params": c.transformer_params,
            "gflop": c.flops / 1e9,
            "transformer_gflop_per_forward": c.forward_flops / 1e9,
            "gflops_per_s": c.flops / median / 1e9,
            "percent_of_peak": 100 * c.flops / median / peak if peak else float("nan"),
            "flop_ratio": flop_ratio,
            "time_per_flop_ratio": per_flop["median"],
            "time_per_flop_ratio_min": per_flop["min"],
            "time_per_flop_ratio_max": per_flop["max"],
            "attention": c.attention,
            "size": c.size,
            "times_s": c.times,
            "notes": c.notes,
        }
        if c.name == "seamless-blend":  # its share of a default (blend="seamless") call
            shares = [t / (t + b) for t, b in zip(c.times, base.times, strict=True)]
            row["share_of_default_call"] = _spread(shares)
        rows.append(row)
    return rows


def _ratio(median: float, low: float, high: float) -> str:
    if math.isnan(median):
        return "-"
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def table(title: str, rows: list[dict]) -> str:
    """The rows as a text table: times, ratios with their spread, sizes, FLOPs, and below
    it each contender's size, attention and notes."""
    lines = [title]
    header = (
        f"{'contender':<14} {'median s':>8} {'min-max s':>13} | {'vs maskgit (spread)':>19} | "
        f"{'per FLOP (spread)':>19} | {'params M':>8} {'transf.':>7} | "
        f"{'GFLOP/call':>10} {'transf. fwd':>11} {'% peak':>6}"
    )
    lines += [header, "-" * len(header)]
    for r in rows:
        ratio = _ratio(r["ratio_median"], r["ratio_min"], r["ratio_max"])
        per_flop = _ratio(
            r["time_per_flop_ratio"], r["time_per_flop_ratio_min"], r["time_per_flop_ratio_max"]
        )
        lines.append(
            f"{r['name']:<14} {r['median_s']:>8.3f} {r['min_s']:>6.3f}-{r['max_s']:<6.3f} | "
            f"{ratio:>19} | {per_flop:>19} | {r['params'] / 1e6:>8.2f} "
            f"{r['transformer_params'] / 1e6:>7.2f} | {r['gflop']:>10.1f} "
            f"{r['transformer_gflop_per_forward']:>11.3f} {r['percent_of_peak']:>5.0f}%"
        )
    lines += [
        "  (params M: whole model, transf.: its transformer; GFLOP/call: the timed call,"
        " transf. fwd: one transformer forward of one image)",
        "",
    ]
    for r in rows:
        lines.append(f"  {r['name']}: size {r['size']}; attention {r['attention']}")
        lines.append(f"  {' ' * len(r['name'])}  {r['notes']}")
        if "share_of_default_call" in r:
            share = r["share_of_default_call"]
            lines.append(
                f"  {' ' * len(r['name'])}  = {100 * share['median']:.0f} % of a default "
                f"maskgit call (blend none + blend; {100 * share['min']:.0f}-"
                f"{100 * share['max']:.0f} %)"
            )
    return "\n".join(lines)


BUILDERS = {
    "decode": {
        "maskgit": lambda d, a: maskgit_decode(d, a.batch, a.steps),
        "seamless-blend": lambda d, a: blend_decode(d, a.batch, a.steps),
        "maskgit-int8": lambda d, a: maskgit_decode(d, a.batch, a.steps, int8=True),
        "amused": lambda d, a: amused_decode(d, a.batch, a.steps, a.match),
        "muse": lambda d, a: muse_decode(d, a.batch, a.steps, a.match),
    },
    "train": {
        "maskgit": lambda d, a: maskgit_train(d, a.train_batch),
        "amused": lambda d, a: amused_train(d, a.train_batch, a.match),
        "muse": lambda d, a: muse_train(d, a.train_batch, a.match),
    },
}
PACKAGE = {"amused": "diffusers / transformers", "muse": "muse-maskgit-pytorch"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    parser.add_argument("--batch", type=int, default=8, help="images inpainted per call (8)")
    parser.add_argument("--steps", type=int, default=8, help="decoding steps (8)")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch (32)")
    parser.add_argument(
        "--only", choices=["decode", "train"], default=None, help="one of the two tables"
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"a subset of {', '.join(BUILDERS['decode'])} (maskgit always runs)",
    )
    parser.add_argument(
        "--match",
        choices=MATCHES,
        default="params",
        help="size the peers' transformers to maskgit's parameter count (default) or to its "
        "FLOPs of one forward",
    )
    parser.add_argument(
        "--peak-size", type=int, default=2048, help="matmul side for the fp32 peak (2048)"
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall (default) or this process's CPU time (with --threads 1 on a busy machine)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write every number to this file")
    return parser


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_table(kind: str, args, device, clock, wanted: set[str], report: dict) -> str:
    """Build the wanted contenders of `kind`, time them, record the table in `report`."""
    contenders = []
    for name, build in BUILDERS[kind].items():
        if name not in wanted:
            continue
        if name == "maskgit-int8" and device.type != "cpu":
            report["left_out"][f"{kind}/{name}"] = "int8 runs on the CPU only"
            continue
        try:
            contenders.append(build(device, args))
        except ImportError as exc:
            reason = f"{PACKAGE.get(name, name)} not installed ({exc}); make bench-peers"
            report["left_out"][f"{kind}/{name}"] = reason
            print(f"left out {kind} {name}: {reason}", file=sys.stderr)
    for c in contenders:
        c.flops = c.flops or count_flops(c.run)
    print(f"{kind}: {len(contenders)} contenders, {args.rounds} rounds", file=sys.stderr)
    load_start = load_average()
    peak = interleave(contenders, args.rounds, device, args.peak_size, clock)
    load_end = load_average()
    rows = summarise(contenders, peak)
    report["tables"][kind] = {
        "matmul_peak_gflops": peak / 1e9,
        "peak_size": args.peak_size,
        "threads": args.threads,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "rows": rows,
    }
    what = (
        f"inpaint {args.batch} images {SIZE}x{SIZE} in {args.steps} steps"
        if kind == "decode"
        else f"one training step, batch {args.train_batch} x {GRID * GRID} tokens, AdamW"
    )
    title = (
        f"\n{kind}: {what}; {device}, {args.threads} thread(s), {args.clock} clock, median of "
        f"{args.rounds} interleaved rounds; peers sized by --match {args.match}\n"
        f"  fp32 matmul peak {peak / 1e9:.0f} GFLOP/s ({args.peak_size}x{args.peak_size}, "
        f"{args.threads} thread(s), best over the rounds); load average (1/5/15 min) "
        f"{_load(load_start)} at the start, {_load(load_end)} at the end "
        f"({os.cpu_count()} CPUs)"
    )
    return table(title, rows)


def _load(load: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads: at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    everyone = ["maskgit", "seamless-blend", "maskgit-int8", "amused", "muse"]
    wanted = set(args.contenders or everyone) | {"maskgit"}
    unknown = wanted - set(BUILDERS["decode"])
    if unknown:
        parser.error(
            f"--contenders {' '.join(sorted(unknown))}: valid: {', '.join(BUILDERS['decode'])}"
        )

    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "threads": args.threads,
            "clock": args.clock,
            "load_average_at_start": load_average(),
        },
        "settings": vars(args),
        "tables": {},
        "left_out": {},
    }
    versions = {}
    for package in ("diffusers", "transformers", "muse_maskgit_pytorch"):
        try:
            from importlib.metadata import version

            versions[package] = version(package.replace("_", "-"))
        except Exception:
            versions[package] = None
    report["machine"]["versions"] = versions
    out = []
    for kind in ("decode", "train"):
        if not args.only or args.only == kind:
            out.append(run_table(kind, args, device, clock, wanted, report))
    for key, reason in report["left_out"].items():
        out.append(f"  left out {key}: {reason}")
    out.append(
        "  versions: torch "
        + torch.__version__
        + "".join(f", {k} {v}" for k, v in versions.items() if v is not None)
    )
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
