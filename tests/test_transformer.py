"""Bidirectional transformer: hand-written attention == fused attention, shapes, weight tying."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from maskgit.config import ConfigError, get_preset
from maskgit.transformer import (
    ATTENTION,
    BidirectionalTransformer,
    fused_attention,
    manual_attention,
)


def _qkv(seed=0, shape=(2, 4, 9, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("shape", [(2, 4, 9, 8), (1, 1, 16, 32), (3, 2, 5, 4)])
def test_manual_attention_equals_fused(shape):
    q1, k1, v1 = _qkv(1, shape)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q1, k1, v1))
    out1 = manual_attention(q1, k1, v1)
    out2 = fused_attention(q2, k2, v2)
    assert out1.shape == shape
    torch.testing.assert_close(out1, out2, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    for a, b in ((q1, q2), (k1, k2), (v1, v2)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_manual_attention_matches_formula_and_torch_reference():
    q, k, v = (t.detach() for t in _qkv(2))
    d = q.shape[-1]
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    torch.testing.assert_close(manual_attention(q, k, v), weights @ v)
    torch.testing.assert_close(
        manual_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5
    )


def test_attention_is_bidirectional():
    """No causal mask: the first query attends to the last key."""
    q, k, v = (t.detach() for t in _qkv(3))
    v2 = v.clone()
    v2[..., -1, :] += 1.0
    assert not torch.allclose(
        manual_attention(q, k, v)[..., 0, :], manual_attention(q, k, v2)[..., 0, :]
    )


def test_attention_dropout_is_applied_only_when_asked():
    q, k, v = (t.detach() for t in _qkv(4))
    torch.manual_seed(0)
    dropped = manual_attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(dropped, manual_attention(q, k, v))
    assert set(ATTENTION) == {"manual", "fused"}


def _cfg(tiny_transformer_cfg, **changes):
    return dataclasses.replace(tiny_transformer_cfg, **changes)


def _tokens(cfg, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # ids in [0, codebook_size] inclusive: [MASK] is a valid input.
    return torch.randint(0, cfg.codebook_size + 1, (batch, cfg.num_tokens), generator=g)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_whole_model_manual_equals_fused(tiny_transformer_cfg, norm):
    cfg_fused = _cfg(tiny_transformer_cfg, attention="fused", norm=norm)
    cfg_manual = _cfg(tiny_transformer_cfg, attention="manual", norm=norm)
    torch.manual_seed(0)
    fused = BidirectionalTransformer(cfg_fused).eval()
    manual = BidirectionalTransformer(cfg_manual).eval()
    manual.load_state_dict(fused.state_dict())
    tokens = _tokens(cfg_fused)
    target = torch.randint(0, cfg_fused.codebook_size, tokens.shape)
    logits = []
    for model in (fused, manual):
        out = model(tokens)
        F.cross_entropy(out.flatten(0, 1), target.flatten()).backward()
        logits.append(out.detach())
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
    grads_manual = dict(manual.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_manual[name].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_logits_shape_and_finite(tiny_transformer_cfg, norm):
    cfg = _cfg(tiny_transformer_cfg, norm=norm)
    model = BidirectionalTransformer(cfg).eval()
    tokens = _tokens(cfg, batch=2)
    logits = model(tokens)
    assert logits.shape == (2, cfg.num_tokens, cfg.codebook_size)
    assert torch.isfinite(logits).all()


def test_pre_and_post_norm_differ(tiny_transformer_cfg):
    torch.manual_seed(0)
    pre = BidirectionalTransformer(_cfg(tiny_transformer_cfg, norm="pre")).eval()
    post = BidirectionalTransformer(_cfg(tiny_transformer_cfg, norm="post")).eval()
    state = {k: v for k, v in pre.state_dict().items() if not k.startswith("final_norm")}
    post.load_state_dict(state)
    tokens = _tokens(tiny_transformer_cfg)
    assert not torch.allclose(pre(tokens), post(tokens))


def test_all_mask_tokens_input(tiny_transformer):
    cfg = tiny_transformer.cfg
    assert cfg.mask_token_id == cfg.codebook_size
    tokens = torch.full((2, cfg.num_tokens), cfg.mask_token_id)
    logits = tiny_transformer(tokens)
    assert logits.shape == (2, cfg.num_tokens, cfg.codebook_size)
    assert torch.isfinite(logits).all()
    with pytest.raises(IndexError):
        tiny_transformer(torch.full((1, cfg.num_tokens), cfg.codebook_size + 1))


def test_output_head_is_weight_tied(tiny_transformer_cfg):
    cfg = _cfg(tiny_transformer_cfg, codebook_size=24)  # distinct from num_tokens and dim
    torch.manual_seed(0)
    model = BidirectionalTransformer(cfg).eval()
    assert model.token_embedding.weight.shape == (cfg.codebook_size + 1, cfg.dim)
    # No separate (dim x codebook) output matrix anywhere.
    for name, p in model.named_parameters():
        if name.startswith("token_embedding"):
            continue
        assert cfg.codebook_size not in p.shape or name == "logit_bias", name
        assert cfg.codebook_size + 1 not in p.shape, name
    tokens = _tokens(cfg, seed=1)
    before = model(tokens)
    with torch.no_grad():
        model.token_embedding.weight[3] += 0.5  # code 3: changes logit 3 at every position
    after = model(tokens)
    assert not torch.allclose(before[..., 3], after[..., 3])
    # Logits are head(h) @ E[:K]^T + bias.
    with torch.no_grad():
        x = model.token_embedding(tokens) + model.position_embedding
        x = model.embed_norm(x)
        for block in model.blocks:
            x = block(x)
        h = model.head(model.final_norm(x))
        manual = h @ model.token_embedding.weight[: cfg.codebook_size].t() + model.logit_bias
    torch.testing.assert_close(after, manual)
    with torch.no_grad():
        model.logit_bias[5] += 2.0
    torch.testing.assert_close(model(tokens)[..., 5], after[..., 5] + 2.0)


@pytest.mark.parametrize("length", [15, 17, 1])
def test_wrong_sequence_length_raises(tiny_transformer, length):
    with pytest.raises(ValueError, match="16 tokens"):
        tiny_transformer(torch.zeros(1, length, dtype=torch.long))


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", ["manual", "fused"])
def test_gradient_reaches_every_parameter(tiny_transformer_cfg, norm, attention):
    cfg = _cfg(tiny_transformer_cfg, norm=norm, attention=attention, dropout=0.1, attn_dropout=0.1)
    torch.manual_seed(0)
    model = BidirectionalTransformer(cfg).train()
    tokens = _tokens(cfg)
    target = torch.randint(0, cfg.codebook_size, tokens.shape)
    F.cross_entropy(model(tokens).flatten(0, 1), target.flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_dropout_only_in_train_mode(tiny_transformer_cfg):
    cfg = _cfg(tiny_transformer_cfg, dropout=0.3, attn_dropout=0.3)
    model = BidirectionalTransformer(cfg)
    tokens = _tokens(cfg)
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    torch.manual_seed(0)
    a = model(tokens)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(tokens))


def test_invalid_config_rejected(tiny_transformer_cfg):
    with pytest.raises(ConfigError, match="divisible"):
        BidirectionalTransformer(_cfg(tiny_transformer_cfg, heads=5))
    with pytest.raises(ConfigError, match="attention"):
        BidirectionalTransformer(_cfg(tiny_transformer_cfg, attention="flash"))
    with pytest.raises(ConfigError, match="norm"):
        BidirectionalTransformer(_cfg(tiny_transformer_cfg, norm="mid"))


def test_lab64_transformer_config():
    cfg = get_preset("lab-64").transformer
    assert (cfg.codebook_size, cfg.num_tokens) == (1024, 256)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim) == (768, 15, 16, 1536)
    assert cfg.attn_dropout == pytest.approx(0.1)
    assert cfg.norm == "post"
    model = BidirectionalTransformer(cfg)  # built, never run: 72M parameters
    assert model.token_embedding.weight.shape == (1025, 768)
    assert model.position_embedding.shape == (1, 256, 768)
    assert len(model.blocks) == 15
    block = model.blocks[0]
    assert block.attn.heads == 16 and block.attn.attn_dropout == pytest.approx(0.1)
    assert block.mlp[0].out_features == 1536
    n_params = sum(p.numel() for p in model.parameters())
    assert 60_000_000 < n_params < 90_000_000
