"""The seamless paste (options.BLENDS) and the harmonic continuation behind it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from maskgit.fill import harmonic_fill
from maskgit.pipeline import paste_known


def reference_solution(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The same discrete problem by a direct sparse solve: at each hole pixel, 4 u = the sum
    of its 4 neighbours, a neighbour outside the image being the pixel itself (mirror)."""
    height, width = hole.shape
    unknown = {p: i for i, p in enumerate(zip(*np.nonzero(hole), strict=True))}
    matrix, rhs = lil_matrix((len(unknown), len(unknown))), np.zeros(len(unknown))
    for (y, x), row in unknown.items():
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            ny, nx = min(max(ny, 0), height - 1), min(max(nx, 0), width - 1)
            if (ny, nx) in unknown:
                matrix[row, unknown[(ny, nx)]] -= 1
            else:
                rhs[row] += values[ny, nx]
        matrix[row, row] += 4
    out = values.copy()
    solution = spsolve(matrix.tocsr(), rhs)
    for (y, x), row in unknown.items():
        out[y, x] = solution[row]
    return out


@pytest.mark.parametrize("shape", [(13, 11), (32, 32)])
def test_matches_a_direct_sparse_solve(shape):
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(1, 2, *shape, generator=generator, dtype=torch.float64)
    hole = torch.zeros(1, *shape, dtype=torch.bool)
    hole[0, 2:-3, 3:] = True  # reaches the right border
    hole[0, 0, 0] = True  # a corner pixel
    filled = harmonic_fill(values, hole)
    for channel in range(2):
        expected = reference_solution(values[0, channel].numpy(), hole[0].numpy())
        np.testing.assert_allclose(filled[0, channel].numpy(), expected, atol=1e-6)


def test_known_values_stay_and_a_plane_is_continued_exactly():
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), indexing="ij")
    plane = (3 * ys - 2 * xs + 5)[None, None]  # (1, 1, 20, 24): harmonic everywhere
    hole = torch.zeros(1, 20, 24, dtype=torch.bool)
    hole[0, 4:15, 6:19] = True  # inside the image: only the plane fits its edge
    broken = plane.masked_fill(hole[:, None], 1000.0)  # what the hole held is ignored
    filled = harmonic_fill(broken, hole)
    assert torch.equal(filled[~hole[:, None].expand_as(filled)], plane[~hole[:, None]])
    torch.testing.assert_close(filled, plane, atol=1e-4, rtol=0)


def test_an_image_comes_back_the_same_in_any_batch():
    generator = torch.Generator().manual_seed(2)
    values = torch.rand(3, 3, 24, 24, generator=generator) * 255
    hole = torch.zeros(3, 24, 24, dtype=torch.bool)
    hole[0, 2:22, 2:22], hole[1, 10:12, 10:12], hole[2, :, 5:9] = True, True, True
    together = harmonic_fill(values, hole, exact_unknowns=50)  # large holes: coarse to fine
    for i in range(3):  # each image is solved on its own, exactly or coarse to fine
        alone = harmonic_fill(values[i : i + 1], hole[i : i + 1], exact_unknowns=50)
        assert torch.equal(alone, together[i : i + 1])


def test_an_image_with_no_known_pixel_gets_zeros():
    values = torch.full((1, 3, 8, 8), 7.0)
    assert torch.equal(harmonic_fill(values, torch.ones(1, 8, 8, dtype=torch.bool)), values * 0)


def shifted_decoder_output(shift: int):
    """True images, the same with a white hole, and a 'decoder' that adds `shift` to every
    colour everywhere (the kind of error that leaves a seam at the hole's edge)."""
    generator = torch.Generator().manual_seed(1)
    truth = torch.randint(40, 200, (2, 3, 16, 16), generator=generator, dtype=torch.uint8)
    truth = truth[..., :1, :1].expand(-1, -1, 16, 16).clone()  # flat colours, one per image
    hole = torch.zeros(2, 16, 16, dtype=torch.bool)
    hole[0, 4:12, 3:9], hole[1, 9:, 5:13] = True, True  # the second reaches the border
    masked = truth.masked_fill(hole[:, None], 255)
    return truth, masked, hole, (truth.int() + shift).to(torch.uint8)


@pytest.mark.parametrize("shift", [-30, 25])
def test_seamless_removes_a_colour_shift_that_plain_pasting_keeps(shift):
    truth, masked, hole, decoded = shifted_decoder_output(shift)
    inside = hole[:, None].expand_as(truth)
    plain = paste_known(masked, decoded, hole, blend="none")
    seamless = paste_known(masked, decoded, hole, blend="seamless")
    for result in (plain, seamless):  # known pixels stay exact either way
        assert torch.equal(result[~inside], truth[~inside])
    assert torch.equal(
        plain[inside].int() - truth[inside].int(), torch.full_like(plain[inside].int(), shift)
    )
    assert (seamless[inside].int() - truth[inside].int()).abs().max() <= 1


def test_an_unknown_blend_is_refused_naming_it():
    truth, masked, hole, decoded = shifted_decoder_output(0)
    with pytest.raises(ValueError, match="blend='poisson': expected one of seamless, none"):
        paste_known(masked, decoded, hole, blend="poisson")


def test_seamless_keeps_what_the_decoder_drew_inside_the_hole():
    truth, masked, hole, decoded = shifted_decoder_output(0)
    decoded[0, :, 7, 5] = 0  # a black dot in the middle of the first hole
    seamless = paste_known(masked, decoded, hole, blend="seamless")
    assert torch.equal(seamless, paste_known(masked, decoded, hole, blend="none"))
