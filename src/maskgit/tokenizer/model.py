"""VQGAN: conv encoder -> vector quantiser -> conv decoder, and a PatchGAN discriminator.

Images are float tensors in [-1, 1], shape (B, C, H, W); tokens are int64, shape (B, h, w)
with h = H / downsample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import TokenizerConfig


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with a 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            _norm(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map, with a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (f(y).reshape(b, 1, c, h * w).transpose(-1, -2) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h*w, C)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Resample(nn.Module):
    """Halve ("down") or double ("up", nearest) the resolution, with a conv."""

    def __init__(self, channels: int, direction: str, downsample_conv: str = "k4"):
        super().__init__()
        self.direction = direction
        self.pad = direction == "down" and downsample_conv == "pad-k3"
        if direction == "up":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif self.pad:  # pad right and bottom, 3x3 stride 2 (taming / VQGAN-pytorch)
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        else:
            self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.direction == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        elif self.pad:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def _layers_from_list(cfg: TokenizerConfig, entries: tuple[str, ...], ch: int) -> tuple[list, int]:
    """Modules for an explicit layer list (TokenizerConfig.encoder_layers / decoder_layers)."""
    layers: list[nn.Module] = []
    for entry in entries:
        if entry.startswith("res:"):
            width = int(entry[4:])
            layers.append(ResBlock(ch, width))
            ch = width
        elif entry == "attn":
            layers.append(SpatialAttention(ch))
        else:
            layers.append(Resample(ch, entry, cfg.downsample_conv))
    return layers, ch


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        if cfg.encoder_layers:
            layers, ch = _layers_from_list(cfg, cfg.encoder_layers, cfg.base_channels)
            k = cfg.encoder_out_kernel
            self.net = nn.Sequential(
                nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1),
                *layers,
                _norm(ch),
                nn.SiLU(),
                nn.Conv2d(ch, cfg.latent_dim, k, padding=k // 2),
            )
            return
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, width))
                ch = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))
        k = cfg.encoder_out_kernel
        layers += [
            ResBlock(ch, ch),
            _norm(ch),
            nn.SiLU(),
            nn.Conv2d(ch, cfg.latent_dim, k, padding=k // 2),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, latent_dim, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        if cfg.decoder_layers:
            width = next(int(x[4:]) for x in cfg.decoder_layers if x.startswith("res:"))
            layers, ch = _layers_from_list(cfg, cfg.decoder_layers, width)
            first = nn.Conv2d(cfg.latent_dim, width, 3, padding=1)
            act = [nn.SiLU()] if cfg.decoder_out_act else []
            self.net = nn.Sequential(first, *layers, _norm(ch), *act)
            self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
            return
        widths = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        ch = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, ch, 3, padding=1), ResBlock(ch, ch)]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, width))
                ch = width
            if level < len(widths) - 1:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ch, ch, 3, padding=1),
                ]
        layers += [_norm(ch), nn.SiLU()] if cfg.decoder_out_act else [_norm(ch)]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))  # (B, C, H, W)


@dataclass
class VQOutput:
    """What the quantiser reports for one batch."""

    loss: torch.Tensor  # codebook loss + beta * commitment loss (scalar)
    tokens: torch.Tensor  # (B, h, w) int64
    perplexity: torch.Tensor  # exp(entropy of the batch's code histogram)
    usage: torch.Tensor  # fraction of the codebook used by the batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup with a straight-through gradient.

    loss = ||sg(z) - e||^2 + beta * ||z - sg(e)||^2: the codebook term moves the codes, the
    commitment term (weighted by beta) pulls the encoder output to its code.
    """

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        if cfg.l2_normalize:
            nn.init.normal_(self.codebook.weight)
        self.register_buffer("steps_unused", torch.zeros(cfg.codebook_size, dtype=torch.long))
        self._recent_inputs: torch.Tensor | None = None

    def codes(self) -> torch.Tensor:
        """The lookup vectors (K, code_dim), l2-normalised when configured."""
        weight = self.codebook.weight
        return F.normalize(weight, dim=-1) if self.cfg.l2_normalize else weight

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of z_flat (M, code_dim) -> (M,)."""
        codes = self.codes()
        if self.cfg.l2_normalize:
            return (F.normalize(z_flat, dim=-1) @ codes.t()).argmax(dim=-1)
        dist = (
            z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ codes.t() + codes.pow(2).sum(1)[None]
        )
        return dist.argmin(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        b, c, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, D)
        if self.cfg.l2_normalize:
            z_flat = F.normalize(z_flat, dim=-1)
        idx = self.nearest(z_flat)  # (B*h*w,)
        chosen = self.codes()[idx]  # (B*h*w, D)
        loss = F.mse_loss(chosen, z_flat.detach()) + self.cfg.beta * F.mse_loss(
            z_flat, chosen.detach()
        )
        quantized = z_flat + (chosen - z_flat).detach()  # straight-through estimator
        quantized = quantized.reshape(b, h, w, c).permute(0, 3, 1, 2)
        counts = torch.bincount(idx, minlength=self.cfg.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        if self.training and self.codebook.weight.requires_grad:  # frozen: never re-seeded
            self._track_usage(counts, z_flat)
        stats = VQOutput(loss, idx.reshape(b, h, w), perplexity, (counts > 0).float().mean())
        return quantized, stats

    @torch.no_grad()
    def _track_usage(self, counts: torch.Tensor, z_flat: torch.Tensor) -> None:
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        self._recent_inputs = z_flat.detach()

    @torch.no_grad()
    def reseed_dead_codes(self, generator: torch.Generator | None = None) -> int:
        """Replace codes unused for `dead_code_steps` steps by recent encoder outputs."""
        if self.cfg.dead_code_steps <= 0 or self._recent_inputs is None:
            return 0
        dead = (self.steps_unused >= self.cfg.dead_code_steps).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = self._recent_inputs
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=generator)
        self.codebook.weight[dead] = pool[pick.to(pool.device)].to(self.codebook.weight.dtype)
        self.steps_unused[dead] = 0
        return int(dead.numel())


class VQGAN(nn.Module):
    """The tokenizer. `encode` gives tokens, `decode_tokens` gives images back."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_proj = nn.Conv2d(cfg.latent_dim, cfg.code_dim, 1)
        self.quantizer = VectorQuantizer(cfg)
        self.post_quant_proj = nn.Conv2d(cfg.code_dim, cfg.latent_dim, 1)
        self.decoder = Decoder(cfg)
        # image normalisation the weights expect (TokenizerConfig.image_mean / image_std)
        self._normalise = bool(cfg.image_mean)
        if self._normalise:
            self.register_buffer(
                "_mean", torch.tensor(cfg.image_mean).view(1, -1, 1, 1), persistent=False
            )
            self.register_buffer(
                "_std", torch.tensor(cfg.image_std).view(1, -1, 1, 1), persistent=False
            )

    def _to_native(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> what the weights were trained on (identity by default)."""
        if not self._normalise:
            return images
        return ((images + 1) / 2 - self._mean) / self._std

    def _from_native(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's output -> images in [-1, 1] (identity by default)."""
        if not self._normalise:
            return images
        return (images * self._std + self._mean) * 2 - 1

    def tokenizing_part(self) -> nn.ModuleList:
        """The modules that decide the tokens (encoder, projection, codebook); the rest
        (`post_quant_proj`, `decoder`) only turns tokens back into pixels."""
        return nn.ModuleList([self.encoder, self.quant_proj, self.quantizer])

    def tokenizes_like(self, other: VQGAN) -> bool:
        """True when `other` has the same config and the same tokenizing weights, so both give
        the same tokens for every image (e.g. `other` was trained decoder-only from this one)."""
        mine, theirs = (dict(m.tokenizing_part().named_parameters()) for m in (self, other))
        return self.cfg == other.cfg and all(torch.equal(mine[k], theirs[k]) for k in mine)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the decoder's last conv, where the adaptive GAN weight is measured."""
        return self.decoder.conv_out.weight

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        quantized, stats = self.quantizer(self.quant_proj(self.encoder(self._to_native(images))))
        return self._from_native(self.decoder(self.post_quant_proj(quantized))), stats

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> tokens (B, h, w) int64."""
        z = self.quant_proj(self.encoder(self._to_native(images)))  # (B, D, h, w)
        b, d, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.cfg.l2_normalize:
            z_flat = F.normalize(z_flat, dim=-1)
        return self.quantizer.nearest(z_flat).reshape(b, h, w)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h, w) -> images (B, C, H, W), roughly in [-1, 1]."""
        codes = self.quantizer.codes()[tokens]  # (B, h, w, D)
        return self._from_native(self.decoder(self.post_quant_proj(codes.permute(0, 3, 1, 2))))

    def after_optimizer_step(self) -> dict[str, float]:
        """Training hook: re-seed dead codes (when configured)."""
        return {"reseeded": float(self.quantizer.reseed_dead_codes())}


class Discriminator(nn.Module):
    """PatchGAN: a map of real/fake logits, one per receptive patch (GroupNorm, DDP-safe)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for n in range(1, layers):
            out = channels * min(2**n, 8)
            stride = 2 if n < layers - 1 else 1
            seq += [nn.Conv2d(ch, out, 4, stride, 1), _norm(out), nn.LeakyReLU(0.2)]
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, 1, h', w')
