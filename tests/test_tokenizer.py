"""VQGAN tokenizer: shapes, encode/decode, straight-through gradient, commitment loss, codes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from maskgit.config import ConfigError, get_preset
from maskgit.tokenizer.model import VQGAN, Discriminator, VectorQuantizer


def _images(batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def test_forward_shapes(tiny_vqgan):
    cfg = tiny_vqgan.cfg
    recon, stats = tiny_vqgan(_images(3))
    assert recon.shape == (3, 3, cfg.image_size, cfg.image_size)
    assert stats.tokens.shape == (3, cfg.token_grid, cfg.token_grid) == (3, 4, 4)
    assert stats.tokens.dtype == torch.int64
    assert stats.loss.ndim == 0 and torch.isfinite(stats.loss)
    assert torch.isfinite(recon).all()


def test_encode_decode_shapes_and_range(tiny_vqgan):
    cfg = tiny_vqgan.cfg
    tokens = tiny_vqgan.encode(_images(2))
    assert tokens.shape == (2, 4, 4) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < cfg.codebook_size
    images = tiny_vqgan.decode_tokens(tokens)
    assert images.shape == (2, 3, 16, 16)
    # Any token grid decodes, including every code.
    every = torch.arange(cfg.codebook_size).reshape(1, 4, 4)
    assert tiny_vqgan.decode_tokens(every).shape == (1, 3, 16, 16)


def test_encode_matches_forward_tokens_in_eval(tiny_vqgan):
    x = _images(4, seed=1)
    _, stats = tiny_vqgan(x)
    assert torch.equal(tiny_vqgan.encode(x), stats.tokens)


def test_forward_reconstruction_equals_decode_of_tokens(tiny_vqgan):
    x = _images(2, seed=2)
    with torch.no_grad():
        recon, stats = tiny_vqgan(x)
        torch.testing.assert_close(
            recon, tiny_vqgan.decode_tokens(stats.tokens), atol=1e-5, rtol=1e-5
        )


def test_straight_through_passes_gradient_to_encoder(tiny_vqgan):
    model = tiny_vqgan.train()
    recon, _ = model(_images(2, seed=3))
    F.l1_loss(recon, _images(2, seed=4)).backward()  # reconstruction only, no VQ loss
    for name, p in list(model.encoder.named_parameters()) + list(
        model.quant_proj.named_parameters()
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"encoder {name} got no gradient"
    # The codebook gets nothing from the reconstruction loss alone.
    grad = model.quantizer.codebook.weight.grad
    assert grad is None or grad.abs().sum() == 0


def _quantizer_case(beta, l2=False, seed=0):
    cfg = dataclasses.replace(
        get_preset("tiny").tokenizer, beta=beta, l2_normalize=l2, codebook_size=8, code_dim=4
    )
    torch.manual_seed(seed)
    vq = VectorQuantizer(cfg)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.randn(8, 4))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    return cfg, vq, z


@pytest.mark.parametrize("beta", [0.25, 0.1])
def test_commitment_loss_value_and_beta_side(beta):
    cfg, vq, z = _quantizer_case(beta)
    quantized, stats = vq(z)
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    # Independent nearest-neighbour lookup.
    dists = torch.cdist(z_flat, vq.codebook.weight.detach())
    idx = dists.argmin(dim=1)
    assert torch.equal(stats.tokens.flatten(), idx)
    e = vq.codebook.weight.detach()[idx]
    expected = F.mse_loss(e, z_flat) + beta * F.mse_loss(z_flat, e)
    assert stats.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Forward value of the quantised output is the code.
    torch.testing.assert_close(quantized.permute(0, 2, 3, 1).reshape(-1, 4), e)

    stats.loss.backward()
    numel = z_flat.numel()
    grad_z = z.grad.permute(0, 2, 3, 1).reshape(-1, 4)
    # beta sits on the encoder side: d loss / d z = 2 beta (z - e) / numel.
    torch.testing.assert_close(grad_z, 2 * beta * (z_flat - e) / numel, atol=1e-6, rtol=1e-5)
    # The codebook term (weight 1) moves the codes: d loss / d e_k = sum 2 (e_k - z) / numel.
    want = torch.zeros_like(vq.codebook.weight)
    want.index_add_(0, idx, 2 * (e - z_flat) / numel)
    torch.testing.assert_close(vq.codebook.weight.grad, want, atol=1e-6, rtol=1e-5)


def test_straight_through_gradient_is_identity():
    _, vq, z = _quantizer_case(0.25, seed=1)
    quantized, _ = vq(z)
    upstream = torch.randn_like(quantized)
    (quantized * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)


def test_perplexity_and_usage():
    _, vq, z = _quantizer_case(0.25, seed=2)
    _, stats = vq(z)
    idx = stats.tokens.flatten()
    used = idx.unique().numel()
    assert stats.usage.item() == pytest.approx(used / 8)
    assert 1.0 - 1e-5 <= stats.perplexity.item() <= used + 1e-4
    counts = torch.bincount(idx, minlength=8).double()
    p = counts[counts > 0] / counts.sum()
    assert stats.perplexity.item() == pytest.approx(
        torch.exp(-(p * p.log()).sum()).item(), rel=1e-5
    )


def test_perplexity_extremes():
    _, vq, _ = _quantizer_case(0.25)
    codes = vq.codebook.weight.detach()
    # Every input at code 0: perplexity 1, usage 1/8.
    z = codes[0].reshape(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    _, stats = vq(z)
    assert stats.perplexity.item() == pytest.approx(1.0, abs=1e-4)
    assert stats.usage.item() == pytest.approx(1 / 8)
    # One input exactly at each code: perplexity 8, usage 1.
    z = codes.t().reshape(1, 4, 2, 4)
    _, stats = vq(z)
    assert stats.tokens.flatten().tolist() == list(range(8))
    assert stats.perplexity.item() == pytest.approx(8.0, rel=1e-4)
    assert stats.usage.item() == 1.0


def test_l2_normalize_lookup(tiny_tokenizer_cfg):
    cfg = dataclasses.replace(tiny_tokenizer_cfg, l2_normalize=True)
    torch.manual_seed(0)
    model = VQGAN(cfg).eval()
    codes = model.quantizer.codes()
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(cfg.codebook_size))
    x = _images(2, seed=5)
    recon, stats = model(x)
    assert recon.shape == x.shape and torch.isfinite(stats.loss)
    assert torch.equal(model.encode(x), stats.tokens)
    # Lookup is by cosine similarity, independent of the input's scale.
    z = torch.randn(5, cfg.code_dim)
    want = (F.normalize(z, dim=-1) @ codes.t()).argmax(-1)
    assert torch.equal(model.quantizer.nearest(F.normalize(z, dim=-1)), want)
    assert torch.equal(model.quantizer.nearest(F.normalize(3 * z, dim=-1)), want)


def test_l2_normalize_straight_through_trains(tiny_tokenizer_cfg):
    cfg = dataclasses.replace(tiny_tokenizer_cfg, l2_normalize=True)
    model = VQGAN(cfg).train()
    recon, stats = model(_images(2))
    (F.l1_loss(recon, _images(2, seed=1)) + stats.loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.weight.grad.abs().sum() > 0


def test_reseed_dead_codes(tiny_tokenizer_cfg):
    cfg = dataclasses.replace(tiny_tokenizer_cfg, dead_code_steps=1)
    torch.manual_seed(0)
    model = VQGAN(cfg).train()
    vq = model.quantizer
    before = vq.codebook.weight.detach().clone()
    with torch.no_grad():
        _, stats = model(_images(1, seed=6))  # 16 inputs: some of the 16 codes are unused
    used = set(stats.tokens.flatten().tolist())
    assert len(used) < cfg.codebook_size
    dead = [k for k in range(cfg.codebook_size) if k not in used]
    assert vq.steps_unused[dead].tolist() == [1] * len(dead)
    assert vq.steps_unused[sorted(used)].tolist() == [0] * len(used)

    assert model.after_optimizer_step() == {"reseeded": float(len(dead))}
    after = vq.codebook.weight.detach()
    pool = vq._recent_inputs
    for k in range(cfg.codebook_size):
        if k in used:
            assert torch.equal(after[k], before[k])
        else:
            assert not torch.equal(after[k], before[k])
            assert (pool == after[k]).all(dim=1).any(), f"code {k} is not a recent encoder output"
    assert vq.steps_unused.sum() == 0
    assert vq.reseed_dead_codes() == 0  # nothing is dead right after re-seeding


def test_reseed_off_and_eval_does_not_track(tiny_tokenizer_cfg):
    torch.manual_seed(0)
    model = VQGAN(tiny_tokenizer_cfg).train()  # dead_code_steps = 0
    model(_images(1))
    assert model.quantizer.reseed_dead_codes() == 0
    cfg = dataclasses.replace(tiny_tokenizer_cfg, dead_code_steps=1)
    model = VQGAN(cfg).eval()
    with torch.no_grad():
        model(_images(1))
    assert model.quantizer.steps_unused.sum() == 0
    assert model.quantizer.reseed_dead_codes() == 0


def test_last_layer_weight_is_decoder_output_conv(tiny_vqgan):
    assert tiny_vqgan.last_layer_weight is tiny_vqgan.decoder.conv_out.weight


def test_invalid_config(tiny_tokenizer_cfg):
    with pytest.raises(ConfigError, match="divisible"):
        VQGAN(dataclasses.replace(tiny_tokenizer_cfg, image_size=18))


def _conv_out(size, stride):
    return (size + 2 - 4) // stride + 1


@pytest.mark.parametrize(("channels", "layers", "size"), [(8, 2, 16), (8, 3, 32), (4, 1, 16)])
def test_discriminator_output_shape(channels, layers, size):
    disc = Discriminator(3, channels, layers)
    out = disc(torch.randn(2, 3, size, size))
    s = _conv_out(size, 2)
    for n in range(1, layers):
        s = _conv_out(s, 2 if n < layers - 1 else 1)
    s = _conv_out(s, 1)
    assert out.shape == (2, 1, s, s)
    assert torch.isfinite(out).all()
