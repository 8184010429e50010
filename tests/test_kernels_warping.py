"""Resizing, warping, fusion and attention-input kernels against plain loops, without the host."""
import pytest
import torch

from comfyui_edicho.kernels.corr_attention import attention_sources, corr_attention_inputs, gather_attention_inputs
from comfyui_edicho.kernels.correspondence import Correspondence, resize_correspondence
from comfyui_edicho.kernels.fusion import fuse_uncond_eps, injection_mask
from comfyui_edicho.kernels.warping import warp_images, warp_tokens


def translation(batch, grid, shifts, reference=0, image_size=(64, 64)):
    """Target b shows the reference moved by shifts[b] = (dy, dx) cells: target cell p <- reference cell p + shift."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    index, valid = [], []
    for dy, dx in shifts:
        sy, sx = ys + dy, xs + dx
        inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        index.append((sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).flatten())
        valid.append(inside.flatten())
    valid = torch.stack(valid)
    valid[reference] = False
    return Correspondence(torch.stack(index), valid, torch.ones(batch, h * w), grid, reference, image_size)


@pytest.mark.parametrize("grid", [(8, 8), (2, 2), (3, 5), (1, 1), (64, 32)])
def test_identity_stays_identity_on_any_grid(grid):
    resized = resize_correspondence(Correspondence.identity(3, (16, 16), 1, (128, 128)), grid)
    n = grid[0] * grid[1]
    assert resized.grid == grid
    assert torch.equal(resized.index, torch.arange(n).expand(3, n))
    assert resized.valid[0].all() and not resized.valid[1].any()


def test_whole_cell_translation_round_trips_down_and_up():
    corr = translation(2, (8, 12), [(0, 0), (2, -4)])
    down = resize_correspondence(corr, (4, 6))
    assert torch.equal(down.index, translation(2, (4, 6), [(0, 0), (1, -2)]).index)
    back = resize_correspondence(down, (8, 12))
    assert torch.equal(back.index[1][back.valid[1]], corr.index[1][back.valid[1]])
    assert resize_correspondence(corr, (8, 12)) is corr


def test_resize_to_a_non_square_finer_grid_scales_the_flow():
    corr = translation(2, (4, 4), [(0, 0), (1, 1)])
    fine = resize_correspondence(corr, (8, 16))
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(16), indexing="ij")
    inside = (ys < 6) & (xs < 12)
    expected = ((ys + 2) * 16 + (xs + 4))[inside]
    assert torch.equal(fine.index[1].reshape(8, 16)[inside], expected)


def test_warp_tokens_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    ref, tokens = torch.randn(12, 5, generator=g), torch.randn(3, 12, 5, generator=g)
    index, valid = torch.randint(0, 12, (3, 12), generator=g), torch.rand(3, 12, generator=g) > 0.4
    out = warp_tokens(ref, tokens, index, valid)
    for b in range(3):
        for p in range(12):
            assert torch.equal(out[b, p], ref[index[b, p]] if valid[b, p] else tokens[b, p])


def test_warp_images_matches_a_loop_at_pixel_resolution():
    g = torch.Generator().manual_seed(8)
    images = torch.rand(3, 2, 6, 5, generator=g)
    index, valid = torch.randint(0, 30, (3, 30), generator=g), torch.rand(3, 30, generator=g) > 0.3
    valid[2] = False
    out = warp_images(images, Correspondence(index, valid, torch.ones(3, 30), (6, 5), 2, (6, 5)))
    for b in range(3):
        for y in range(6):
            for x in range(5):
                p = y * 5 + x
                ry, rx = divmod(int(index[b, p]), 5)
                expected = images[2, :, ry, rx] if valid[b, p] else images[b, :, y, x]
                assert torch.equal(out[b, :, y, x], expected)


def test_warp_images_moves_pixels_by_the_translation():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    corr = translation(2, (8, 8), [(0, 0), (1, -2)])
    out = warp_images(images, corr)
    assert torch.equal(out[0], images[0])
    # Target pixel (y, x) shows reference pixel (y + 8, x - 16) where that exists.
    assert torch.equal(out[1, :, :56, 16:], images[0, :, 8:, :48])
    assert torch.equal(out[1, :, 56:], images[1, :, 56:])


def test_injection_mask_is_a_seeded_fraction_of_valid_positions():
    valid = torch.rand(4, 4096, generator=torch.Generator().manual_seed(3)) > 0.5
    a = injection_mask(valid, 0.9, torch.Generator().manual_seed(4))
    b = injection_mask(valid, 0.9, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not (a & ~valid).any()
    assert abs(a.sum().item() / valid.sum().item() - 0.9) < 0.02


def test_fuse_uncond_eps_matches_a_loop_and_lambda_zero_is_identity():
    g = torch.Generator().manual_seed(5)
    corr = translation(3, (4, 4), [(0, 1), (0, 0), (1, 0)], reference=1, image_size=(32, 32))
    eps = torch.randn(3, 4, 4, 4, generator=g)
    mask = injection_mask(corr.valid, 0.5, torch.Generator().manual_seed(6))
    assert mask.any()
    # A mask that also marks invalid cells and the reference row injects nothing more.
    out = fuse_uncond_eps(eps, corr, 0.8, mask | ~corr.valid)
    for b in range(3):
        for p in range(16):
            y, x = divmod(p, 4)
            if mask[b, p]:
                ry, rx = divmod(int(corr.index[b, p]), 4)
                expected = (1 - 0.8) * eps[b, :, y, x] + 0.8 * eps[1, :, ry, rx]
                assert torch.equal(out[b, :, y, x], expected)
            else:
                assert torch.equal(out[b, :, y, x], eps[b, :, y, x])
    assert fuse_uncond_eps(eps, corr, 0.0, mask) is eps
    with pytest.raises(ValueError, match="fuse_uncond_eps: eps must be"):
        fuse_uncond_eps(eps[:, :, :2], corr, 0.8, mask)
    with pytest.raises(ValueError, match="fuse_uncond_eps: mask must be"):
        fuse_uncond_eps(eps, corr, 0.8, mask[:, :3])


def test_fuse_uncond_eps_on_a_one_frame_5d_latent_matches_a_loop():
    g = torch.Generator().manual_seed(8)
    corr = translation(3, (3, 5), [(0, 0), (1, -1), (0, 2)], reference=0, image_size=(24, 40))
    eps = torch.randn(3, 16, 1, 3, 5, generator=g)
    mask = injection_mask(corr.valid, 0.7, torch.Generator().manual_seed(9))
    assert mask.any() and (corr.valid & ~mask).any()
    out = fuse_uncond_eps(eps, corr, 0.8, mask)
    assert out.shape == eps.shape
    for b in range(3):
        for p in range(15):
            y, x = divmod(p, 5)
            if mask[b, p]:
                ry, rx = divmod(int(corr.index[b, p]), 5)
                assert torch.equal(out[b, :, 0, y, x], (1 - 0.8) * eps[b, :, 0, y, x] + 0.8 * eps[0, :, 0, ry, rx])
            else:
                assert torch.equal(out[b, :, 0, y, x], eps[b, :, 0, y, x])
    with pytest.raises(ValueError, match="fuse_uncond_eps: eps must be"):
        fuse_uncond_eps(eps[..., :4], corr, 0.8, mask)


@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("reference", [0, 2])
def test_corr_attention_inputs_match_a_loop(chunks, reference):
    g = torch.Generator().manual_seed(7)
    batch, n, c = 3, 6, 4
    valid = torch.rand(batch, n, generator=g) > 0.3
    valid[reference] = False
    corr = Correspondence(torch.randint(0, n, (batch, n), generator=g), valid, torch.ones(batch, n), (2, 3), reference,
                          (16, 24))
    q, k, v = (torch.randn(chunks * batch, n, c, generator=g) for _ in range(3))
    for mode in ("warp", "share"):
        q2, k2, v2 = corr_attention_inputs(q, k, v, corr, mode=mode)
        for row in range(chunks * batch):
            chunk, b = divmod(row, batch)
            ref = chunk * batch + reference
            assert torch.equal(k2[row], k[ref]) and torch.equal(v2[row], v[ref])
            for p in range(n):
                use_ref = mode == "warp" and b != reference and corr.valid[b, p]
                assert torch.equal(q2[row, p], q[ref, corr.index[b, p]] if use_ref else q[row, p])


def test_corr_attention_inputs_refuse_mismatched_batches_and_modes():
    corr = Correspondence.identity(3, (2, 2), 0, (16, 16))
    q = torch.randn(4, 4, 8)
    with pytest.raises(ValueError, match="4 rows is not a multiple of the correspondence's 3 images"):
        corr_attention_inputs(q, q, q, corr)
    with pytest.raises(ValueError, match="mode must be one of"):
        corr_attention_inputs(torch.randn(3, 4, 8), q[:3], q[:3], corr, mode="warp_outputs")


def test_kernels_refuse_inconsistent_shapes():
    corr = Correspondence.identity(2, (2, 2), 0, (16, 16))
    with pytest.raises(ValueError, match="index must be int64 and valid bool"):
        Correspondence(corr.index.int(), corr.valid, corr.similarity, (2, 2), 0, (16, 16))
    with pytest.raises(ValueError, match=r"valid must be \[B, 4\]"):
        Correspondence(corr.index, corr.valid[:1], corr.similarity, (2, 2), 0, (16, 16))
    with pytest.raises(ValueError, match="reference 2 is out of range"):
        Correspondence(corr.index, corr.valid, corr.similarity, (2, 2), 2, (16, 16))
    with pytest.raises(ValueError, match="grid must be two positive sizes"):
        resize_correspondence(corr, (0, 4))
    with pytest.raises(ValueError, match="warp_tokens: expected"):
        warp_tokens(torch.zeros(4, 3), torch.zeros(2, 5, 3), corr.index, corr.valid)
    with pytest.raises(ValueError, match="warp_images: expected"):
        warp_images(torch.zeros(3, 1, 8, 8), corr)
    with pytest.raises(ValueError, match="injection_mask: gamma"):
        injection_mask(corr.valid, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="injection_mask: valid"):
        injection_mask(corr.valid.float(), 0.5, torch.Generator())
    q = torch.zeros(4, 4, 8)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        attention_sources(corr, 0)
    with pytest.raises(ValueError, match="gather_attention_inputs: q, k, v must be"):
        gather_attention_inputs(q, q, q, attention_sources(corr, 1))
