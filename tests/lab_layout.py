"""A tiny stand-in for the course lab's models, written for the tests (not shipped code).

It follows the *layout* of the lab skeleton (parameter names, nesting, shapes and maths) so
that `maskgit import-lab` can be tested without the real checkpoints:

- the VQGAN of dome272/VQGAN-pytorch as the skeleton configures it from VQGAN.yml's
  `model_param` (encoder / decoder as `model` Sequentials of ResidualBlock, NonLocalBlock,
  DownSampleBlock, UpSampleBlock, GroupNorm(32) and Swish; `codebook.embedding`;
  `quant_conv` / `post_quant_conv`), downsampling after stages 2 and 4;
- the BidirectionalTransformer (`tok_emb` with codebook + 1 rows, `pos_emb` (N, D),
  post-norm `blocks` with LayerNorm eps 1e-12, `Token_Prediction`, `LN`, a per-position
  `bias` of (N, codebook + 1)) with the student's attention in one of several layouts
  (ATTENTIONS): "report" is the lab report's own MultiHeadAttention (a fused `qkv_proj` in
  per-head row order), "fused-qkv" a fused projection in [all q | all k | all v] order.

Images enter the lab models normalised with the lab's mean / std (see `normalise`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LAB_MEAN = (0.4868, 0.4341, 0.3844)
LAB_STD = (0.2620, 0.2527, 0.2543)


def normalise(images_pm1: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the lab's input (ToTensor then Normalize(mean, std))."""
    mean = torch.tensor(LAB_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LAB_STD).view(1, 3, 1, 1)
    return ((images_pm1 + 1) / 2 - mean) / std


# ------------------------------------------------------------------------------ VQGAN parts


class GroupNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gn = nn.GroupNorm(32, channels, eps=1e-6, affine=True)

    def forward(self, x):
        return self.gn(x)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.block = nn.Sequential(
            GroupNorm(cin), Swish(), nn.Conv2d(cin, cout, 3, 1, 1),
            GroupNorm(cout), Swish(), nn.Conv2d(cout, cout, 3, 1, 1),
        )  # fmt: skip
        if cin != cout:
            self.channel_up = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        skip = self.channel_up(x) if self.cin != self.cout else x
        return skip + self.block(x)


class UpSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0))


class DownSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class NonLocalBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gn = GroupNorm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.gn(x)
        q = self.q(y).reshape(b, c, h * w).permute(0, 2, 1)  # (B, hw, C)
        k = self.k(y).reshape(b, c, h * w)  # (B, C, hw)
        v = self.v(y).reshape(b, c, h * w)
        attn = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2).permute(0, 2, 1)
        return x + self.proj_out(torch.bmm(v, attn).reshape(b, c, h, w))


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        ch = cfg["enc_channels"]
        res = cfg["img_resolution"]
        layers = [nn.Conv2d(cfg["image_channels"], ch[0], 3, 1, 1)]
        for i in range(len(ch) - 1):
            cin = ch[i]
            for _ in range(2):
                layers.append(ResidualBlock(cin, ch[i + 1]))
                cin = ch[i + 1]
                if res == cfg["latent_resolution"]:
                    layers.append(NonLocalBlock(cin))
            if i in (2, 4):
                layers.append(DownSampleBlock(ch[i + 1]))
                res //= 2
        layers += [
            ResidualBlock(ch[-1], ch[-1]), NonLocalBlock(ch[-1]), ResidualBlock(ch[-1], ch[-1]),
            GroupNorm(ch[-1]), Swish(), nn.Conv2d(ch[-1], cfg["latent_dim"], 3, 1, 1),
        ]  # fmt: skip
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class Decoder(nn.Module):
    def __init__(self, cfg: dict, out_swish: bool = False):
        super().__init__()
        ch = cfg["dec_channels"]
        res = cfg["latent_resolution"]
        layers = [
            nn.Conv2d(cfg["latent_dim"], ch[-1], 3, 1, 1),
            ResidualBlock(ch[-1], ch[-1]), NonLocalBlock(ch[-1]), ResidualBlock(ch[-1], ch[-1]),
        ]  # fmt: skip
        cin = ch[-1]
        for i in reversed(range(len(ch))):
            for _ in range(3):
                layers.append(ResidualBlock(cin, ch[i]))
                cin = ch[i]
                if res == cfg["latent_resolution"]:
                    layers.append(NonLocalBlock(cin))
            if i in (4, 2):
                layers.append(UpSampleBlock(cin))
                res *= 2
        layers.append(GroupNorm(cin))
        if out_swish:
            layers.append(Swish())
        layers.append(nn.Conv2d(cin, cfg["image_channels"], 3, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class Codebook(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.dim = cfg["latent_dim"]
        self.embedding = nn.Embedding(cfg["num_codebook_vectors"], cfg["latent_dim"])

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.dim)
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        idx = d.argmin(dim=1)
        zq = self.embedding(idx).view(z.shape).permute(0, 3, 1, 2)
        return zq, idx, torch.zeros(())


class LabVQGAN(nn.Module):
    def __init__(self, cfg: dict, out_swish: bool = False):
        super().__init__()
        dim = cfg["latent_dim"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, out_swish)
        self.codebook = Codebook(cfg)
        self.quant_conv = nn.Conv2d(dim, dim, 1)
        self.post_quant_conv = nn.Conv2d(dim, dim, 1)

    def encode(self, x):
        return self.codebook(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


# ------------------------------------------------------------------------------ transformer


class ReportAttention(nn.Module):
    """The lab report's MultiHeadAttention, written from its lines: one `qkv_proj` whose rows
    are grouped per head, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (d_k rows each): the head split
    comes first, then `chunk(3, dim=-1)` inside each head (`--qkv-order per-head`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.d_k = num_heads, dim // num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv_proj(x).view(B, N, self.num_heads, 3 * self.d_k).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, heads, N, d_k)
        return self.out_proj(_attend(q, k, v).transpose(1, 2).reshape(B, N, D))


class FusedAttention(nn.Module):
    """One fused Linear chunked into q, k, v *before* the head split, so its rows are
    [all q | all k | all v] (`--qkv-order qkv`), then `proj`; not the report's order."""

    def __init__(self, dim: int, heads: int, bias: bool = True, names=("qkv", "proj")):
        super().__init__()
        self.heads, self.names = heads, names
        setattr(self, names[0], nn.Linear(dim, 3 * dim, bias=bias))
        setattr(self, names[1], nn.Linear(dim, dim, bias=bias))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (
            t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for t in getattr(self, self.names[0])(x).chunk(3, dim=-1)
        )
        return getattr(self, self.names[1])(_attend(q, k, v).transpose(1, 2).reshape(b, n, d))


class SeparateAttention(nn.Module):
    """Four Linear layers with names of the student's choosing."""

    def __init__(self, dim: int, heads: int, bias: bool = True, names=("q", "k", "v", "out")):
        super().__init__()
        self.heads, self.names = heads, names
        for name in names:
            setattr(self, name, nn.Linear(dim, dim, bias=bias))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (
            getattr(self, name)(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
            for name in self.names[:3]
        )
        return getattr(self, self.names[3])(_attend(q, k, v).transpose(1, 2).reshape(b, n, d))


class TorchAttention(nn.Module):
    """nn.MultiheadAttention wrapped (in_proj_weight / out_proj)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def _attend(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


# Each layout names its fused-qkv row order where it has one (import-lab's --qkv-order).
ATTENTIONS = {
    "report": lambda d, h: ReportAttention(d, h),  # the lab report's code: per-head order
    "fused-qkv": lambda d, h: FusedAttention(d, h),  # q, k, v = qkv(x).chunk(3): qkv order
    "fused-qkv-nobias": lambda d, h: FusedAttention(d, h, bias=False, names=("to_qkv", "to_out")),
    "separate": lambda d, h: SeparateAttention(d, h, names=("query", "key", "value", "out")),
    "separate-nobias": lambda d, h: SeparateAttention(
        d, h, bias=False, names=("q_proj", "k_proj", "v_proj", "out_proj")
    ),
    "torch": lambda d, h: TorchAttention(d, h),
    "odd": lambda d, h: SeparateAttention(d, h, names=("alpha", "beta", "gamma", "delta")),
    "odd-but-out": lambda d, h: SeparateAttention(d, h, names=("alpha", "beta", "gamma", "out")),
}


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, hidden: int, heads: int, attention: str):
        super().__init__()
        self.Attention = ATTENTIONS[attention](dim, heads)
        self.LayerNorm1 = nn.LayerNorm(dim, eps=1e-12)
        self.LayerNorm2 = nn.LayerNorm(dim, eps=1e-12)
        self.MLP = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.1)
        )
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x = self.LayerNorm1(x + self.dropout(self.Attention(x)))
        return self.LayerNorm2(x + self.MLP(x))


class LabTransformer(nn.Module):
    def __init__(self, cfg: dict, heads: int, attention: str):
        super().__init__()
        n, k, d = cfg["num_image_tokens"], cfg["num_codebook_vectors"], cfg["dim"]
        self.tok_emb = nn.Embedding(k + 1, d)
        self.pos_emb = nn.Parameter(torch.randn(n, d) * 0.02)
        self.blocks = nn.Sequential(
            *[EncoderLayer(d, cfg["hidden_dim"], heads, attention) for _ in range(cfg["n_layers"])]
        )
        self.Token_Prediction = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12)
        )
        self.LN = nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(0.1)
        self.bias = nn.Parameter(torch.randn(n, k + 1) * 0.1)

    def forward(self, x):
        h = self.drop(self.LN(self.tok_emb(x) + self.pos_emb))
        h = self.Token_Prediction(self.blocks(h))
        return h @ self.tok_emb.weight.T + self.bias  # (B, N, K + 1)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values (norm scales near 1) so a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(".weight") and p.ndim == 1:  # norm scales
                p.copy_(1 + 0.1 * noise)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(noise / math.sqrt(fan_in) if p.ndim > 1 else 0.1 * noise)
    return module.eval()


# ------------------------------------------------------------------------------ lab files

TINY_VQGAN = {
    "image_channels": 3,
    "latent_dim": 32,
    "num_codebook_vectors": 32,
    "beta": 0.25,
    "enc_channels": [32, 32, 32, 32, 32, 32],
    "dec_channels": [32, 32, 32, 32, 32],
    "img_resolution": 16,
    "latent_resolution": 4,
}
TINY_TRANSFORMER = {
    "num_image_tokens": 16,
    "num_codebook_vectors": 32,
    "dim": 32,
    "n_layers": 2,
    "hidden_dim": 64,
}


def make_lab_models(
    attention: str, heads: int = 16, out_swish: bool = False, seed: int = 0
) -> tuple[LabVQGAN, LabTransformer]:
    """A tiny lab VQGAN and transformer with random weights whose codes are all in use;
    `attention` names the layout (ATTENTIONS), so every caller says which one it checks."""
    torch.manual_seed(seed)
    vqgan = randomise(LabVQGAN(TINY_VQGAN, out_swish), seed)
    with torch.no_grad():  # codes drawn from encoder outputs, so images use many codes
        images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        z = vqgan.quant_conv(vqgan.encoder(normalise(images))).permute(0, 2, 3, 1).reshape(-1, 32)
        vqgan.codebook.embedding.weight.copy_(z[torch.randperm(len(z))[:32]])
    transformer = randomise(LabTransformer(TINY_TRANSFORMER, heads, attention), seed + 1)
    return vqgan, transformer


def write_lab_files(
    folder,
    attention: str,
    save_as: str = "bare",
    heads: int = 16,
    out_swish: bool = False,
    seed: int = 0,
) -> tuple[LabVQGAN, LabTransformer]:
    """Write VQGAN.yml, VQGAN.pt, MaskGit.yml and transformer.pt the way the lab's scripts do.

    save_as: "bare" (torch.save(model.transformer.state_dict())), "training" (a dict with
    model_state_dict, optimizer_state_dict and epoch) or "whole" (the MaskGit module's state
    dict: transformer.* and vqgan.* keys).
    """
    from pathlib import Path

    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vqgan, transformer = make_lab_models(attention, heads, out_swish, seed)
    (folder / "VQGAN.yml").write_text(yaml.safe_dump({"model_param": TINY_VQGAN}))
    maskgit_yml = {
        "model_param": {
            "VQ_Configs": {
                "VQ_config_path": str(folder / "VQGAN.yml"),
                "VQ_CKPT_path": str(folder / "VQGAN.pt"),
            },
            "num_image_tokens": TINY_TRANSFORMER["num_image_tokens"],
            "num_codebook_vectors": TINY_TRANSFORMER["num_codebook_vectors"],
            "choice_temperature": 4.5,
            "gamma_type": "cosine",
            "Transformer_param": dict(TINY_TRANSFORMER),
        }
    }
    (folder / "MaskGit.yml").write_text(yaml.safe_dump(maskgit_yml, sort_keys=False))
    torch.save(vqgan.state_dict(), folder / "VQGAN.pt")
    if save_as == "bare":
        saved = transformer.state_dict()
    elif save_as == "training":
        optimizer = torch.optim.Adam(transformer.parameters(), lr=1e-4)
        saved = {
            "epoch": 12,
            "model_state_dict": transformer.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 3.25,
        }
    elif save_as == "whole":
        whole = nn.Module()
        whole.vqgan, whole.transformer = vqgan, transformer
        saved = whole.state_dict()
    else:
        raise ValueError(save_as)
    torch.save(saved, folder / "transformer.pt")
    return vqgan, transformer
