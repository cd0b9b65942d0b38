"""Bidirectional transformer for masked visual token modelling.

Input: token ids (B, N) in [0, codebook_size], where id `codebook_size` is [MASK].
Output: logits (B, N, codebook_size) over the real codes ([MASK] is never predicted).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskgit.config import TransformerConfig


def manual_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention written out: softmax(q k^T / sqrt(d)) v.

    q, k, v: (B, H, N, d) -> (B, H, N, d). No mask: every token sees every token.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, N)
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """The same maths through torch's fused kernel (flash / memory-efficient where available)."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


ATTENTION = {"manual": manual_attention, "fused": fused_attention}


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attend = ATTENTION[cfg.attention]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, d_head)
        out = self.attend(q, k, v, self.attn_dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Block(nn.Module):
    """Encoder layer: attention + MLP, pre-norm (default) or post-norm (the lab's layout)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_dim),
            nn.GELU(),
            nn.Linear(cfg.mlp_dim, cfg.dim),
            nn.Dropout(cfg.dropout),
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.norm1(x)))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.dropout(self.attn(x)))
        return self.norm2(x + self.mlp(x))


class BidirectionalTransformer(nn.Module):
    """Token + position embedding, encoder blocks, weight-tied head (Linear-GELU-LN, +bias)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.codebook_size + 1, cfg.dim)  # +1: [MASK]
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        eps = cfg.layer_norm_eps
        self.embed_norm = nn.LayerNorm(cfg.dim, eps=eps)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=eps) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim, eps=eps)
        )
        # (K,) shared by every position, or (N, K): one bias per position and code
        bias_shape = (cfg.num_tokens,) if cfg.logit_bias == "per-position" else ()
        self.logit_bias = nn.Parameter(torch.zeros(*bias_shape, cfg.codebook_size))
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> logits (B, N, codebook_size)."""
        if tokens.shape[1] != self.cfg.num_tokens:
            raise ValueError(
                f"expected {self.cfg.num_tokens} tokens per image, got {tokens.shape[1]}"
            )
        x = self.token_embedding(tokens) + self.position_embedding  # (B, N, D)
        x = self.embed_dropout(self.embed_norm(x))
        for block in self.blocks:
            x = block(x)
        h = self.head(self.final_norm(x))  # (B, N, D)
        codes = self.token_embedding.weight[: self.cfg.codebook_size]  # (K, D), tied
        return h @ codes.t() + self.logit_bias  # (B, N, K); the bias is (K,) or (N, K)
