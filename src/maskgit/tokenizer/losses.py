"""VQGAN training losses: reconstruction, hinge GAN, adaptive GAN weight, perceptual."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 or L2 distance between images (B, C, H, W)."""
    if kind == "l1":
        return (recon - target).abs().mean()
    if kind == "l2":
        return (recon - target).pow(2).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; valid: l1, l2")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), halved."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean(D(G(z)))."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """||grad rec_loss|| / (||grad g_loss|| + 1e-4) at the decoder's last layer (detached).

    Balances the GAN term against reconstruction (Esser et al., taming-transformers).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class PerceptualLoss(nn.Module):
    """L2 distance between features of a user-supplied TorchScript network (frozen).

    The network takes images in [-1, 1] (B, 3, H, W) and returns a tensor or a list of
    feature maps. No weights ship with maskgit (none are reachable offline); pass a path.
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual_weights {path}: file not found (a TorchScript feature network)"
            )
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_r, feats_t = self.net(recon), self.net(target)
        if isinstance(feats_r, torch.Tensor):
            feats_r, feats_t = [feats_r], [feats_t]
        return sum(F.mse_loss(a, b) for a, b in zip(feats_r, feats_t, strict=True))
