"""Reference model on the tiny preset: output shapes at awkward sizes, determinism, INPE, extrapolation."""
import pytest
import torch

from infgen.ref.inpe import INPE, grid_coords
from infgen.ref.model import token_grid

from conftest import rel_err

# (h, w): tiny, odd, non-square, extreme aspect ratios, exact and inexact multiples of 8.
SIZES = [(8, 8), (9, 17), (17, 9), (1000, 8), (8, 1000), (257, 129), (129, 257), (64, 64),
         (100, 37), (31, 33), (72, 128), (16, 200), (65, 65), (15, 8)]


@pytest.fixture(scope="module")
def z():
    torch.manual_seed(1)
    return torch.randn(1, 4, 8, 8)


@pytest.mark.parametrize("h,w", SIZES)
def test_decode_shape(tiny_model, z, h, w):
    with torch.no_grad():
        out = tiny_model.decode(z, h, w)
    assert out.shape == (1, 3, h, w)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_at_least_twelve_sizes_incl_the_required_ones():
    required = {(8, 8), (9, 17), (17, 9), (1000, 8), (257, 129)}
    assert len(set(SIZES)) >= 12 and required <= set(SIZES)


def test_token_grid_is_ceil_division(tiny_cfg):
    assert token_grid(9, 17, tiny_cfg) == (2, 3)
    assert token_grid(1000, 8, tiny_cfg) == (125, 1)
    assert token_grid(257, 129, tiny_cfg) == (33, 17)


def test_batch_of_three_matches_single_decodes(tiny_model):
    torch.manual_seed(2)
    zb = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        out = tiny_model.decode(zb, 40, 24)
        singles = torch.cat([tiny_model.decode(zb[i:i + 1], 40, 24) for i in range(3)])
    assert out.shape == (3, 3, 40, 24)
    assert rel_err(out, singles) < 1e-5
    assert not torch.allclose(out[0], out[1])  # the batch items are really different latents


@pytest.mark.parametrize("grid,size", [(32, (64, 48)), (64, (72, 56))])
def test_latent_grids_32_and_64(tiny_model, grid, size):
    torch.manual_seed(3)
    zz = torch.randn(1, 4, grid, grid)
    with torch.no_grad():
        out = tiny_model.decode(zz, *size)
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


def test_same_input_twice_gives_identical_output(tiny_model, z):
    with torch.no_grad():
        a = tiny_model.decode(z, 257, 129)
        b = tiny_model.decode(z.clone(), 257, 129)
    assert torch.equal(a, b)


def test_output_depends_on_latent(tiny_model, z):
    with torch.no_grad():
        a = tiny_model.decode(z, 32, 32)
        b = tiny_model.decode(z + 0.5, 32, 32)
    assert not torch.allclose(a, b)


def test_crop_is_top_left_of_grid_decode(tiny_model, z):
    """decode(h, w) is the top-left (h, w) crop of the decode on the ceil(h/8) x ceil(w/8) grid."""
    with torch.no_grad():
        full = tiny_model.decode_grid(z, 3, 5)  # (1, 3, 24, 40)
        crop = tiny_model.decode(z, 17, 33)
    assert full.shape == (1, 3, 24, 40)
    assert torch.equal(full[:, :, :17, :33], crop)


# ----------------------------------------------------------------------------- INPE
def test_grid_coords_are_cell_centres():
    c = grid_coords(2, 4)
    assert c.shape == (8, 2)
    assert torch.allclose(c[0], torch.tensor([0.25, 0.125]))
    assert torch.allclose(c[-1], torch.tensor([0.75, 0.875]))


@pytest.mark.parametrize("n,m", [(4, 4), (5, 7), (8, 3)])
def test_inpe_same_coordinate_same_embedding_grid_n_and_3n(n, m):
    """Token (3i+1, 3j+1) of a (3n, 3m) grid sits at the same normalised point as (i, j) of (n, m)."""
    torch.manual_seed(0)
    pe = INPE(32, 16, 1.0, seed=0)
    with torch.no_grad():
        small = pe(n, m).view(n, m, 32)
        big = pe(3 * n, 3 * m).view(3 * n, 3 * m, 32)
    assert torch.allclose(big[1::3, 1::3], small, atol=1e-6, rtol=0)
    # and the embedding does vary over the grid (otherwise the test above proves nothing)
    assert (small[0, 0] - small[-1, -1]).abs().max() > 1e-3


def test_inpe_centre_token_of_odd_grids_is_identical():
    torch.manual_seed(0)
    pe = INPE(32, 16, 1.0, seed=0)
    with torch.no_grad():
        centres = [pe(h, w).view(h, w, 32)[h // 2, w // 2] for h, w in [(1, 1), (3, 3), (5, 9), (33, 65), (127, 1)]]
        expect = pe.embed_points(torch.tensor([[0.5, 0.5]]))[0]
    for c in centres:
        assert torch.allclose(c, expect, atol=1e-6, rtol=0)


def test_decoder_mask_and_latent_positions_are_resolution_agnostic(tiny_model):
    """The model's own mask tokens: grid 3x5 vs 9x15 at shared coordinates."""
    dec = tiny_model.decoder
    d = tiny_model.config.token_dim
    with torch.no_grad():
        a = dec.mask_tokens(3, 5).view(3, 5, d)
        b = dec.mask_tokens(9, 15).view(9, 15, d)
        la = dec.latent_pos(3, 5).view(3, 5, d)
        lb = dec.latent_pos(9, 15).view(9, 15, d)
    assert torch.allclose(b[1::3, 1::3], a, atol=1e-6, rtol=0)
    assert torch.allclose(lb[1::3, 1::3], la, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- extrapolation
def _record_decode_sizes(model, monkeypatch):
    sizes = []
    original = model.decode

    def spy(z, h, w):
        sizes.append((h, w))
        return original(z, h, w)

    monkeypatch.setattr(model, "decode", spy)
    return sizes


def test_extrapolate_steps_at_most_2x(tiny_model, monkeypatch):
    torch.manual_seed(4)
    zz = torch.randn(1, 4, 4, 4)  # native size 32x32
    sizes = _record_decode_sizes(tiny_model, monkeypatch)
    out = tiny_model.extrapolate(zz, 100, 128, max_step=2.0)
    assert out.shape == (1, 3, 100, 128)
    assert sizes == [(56, 64), (100, 128)]
    prev = (32, 32)
    for s in sizes:
        assert max(s[0] / prev[0], s[1] / prev[1]) <= 2.0
        prev = s


def test_extrapolate_within_one_step_is_plain_decode(tiny_model, monkeypatch):
    torch.manual_seed(5)
    zz = torch.randn(1, 4, 4, 4)
    sizes = _record_decode_sizes(tiny_model, monkeypatch)
    out = tiny_model.extrapolate(zz, 48, 40)
    assert sizes == [(48, 40)]
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.equal(out, tiny_model.decode(zz, 48, 40))


def test_extrapolate_rejects_bad_step(tiny_model, z):
    with pytest.raises(ValueError, match="0.5"):
        tiny_model.extrapolate(z, 64, 64, max_step=0.5)


def test_parse_size_is_width_by_height_everywhere():
    """One parser for every tool: 'WIDTHxHEIGHT' or 'N' -> (height, width)."""
    from infgen.ref.config import parse_size
    assert parse_size("3840x2160") == (2160, 3840)
    assert parse_size(" 512 X 288 ") == (288, 512)
    assert parse_size("64") == (64, 64)
    assert parse_size("0x5") == (5, 0)  # the range check is the config's (check_size), not the parser's
    for bad in ("abc", "12x", "-5x10", "3.5x2", "1920-1080"):
        with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
            parse_size(bad)
