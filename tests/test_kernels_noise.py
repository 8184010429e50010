"""Shared starting noise (Corr-CFG's noise-consistent form) against a plain loop, without the host."""
import pytest
import torch

from comfyui_edicho.kernels.correspondence import Correspondence
from comfyui_edicho.kernels.fusion import fuse_uncond_eps, injection_mask, share_noise
from patch_reference import random_correspondence


def plain_shared_noise(noise, corr):
    """Position by position: a valid target cell takes the reference's noise at its match; `[B, ..., H, W]`."""
    out = noise.clone()
    h, w = noise.shape[-2:]
    for b in range(noise.shape[0]):
        for p in range(h * w):
            if corr.valid[b, p]:
                ry, rx = divmod(int(corr.index[b, p]), w)
                out[b, ..., p // w, p % w] = noise[corr.reference, ..., ry, rx]
    return out


@pytest.mark.parametrize("channels", [(4,), (16, 1), (3, 2)], ids=["4d", "qwen-5d", "5d-two-frames"])
@pytest.mark.parametrize("reference", [0, 2])
def test_shared_noise_equals_plain_computation(channels, reference):
    gen = torch.Generator().manual_seed(30 + reference)
    corr = random_correspondence(Correspondence, 3, (4, 5), reference, gen)
    noise = torch.randn(3, *channels, 4, 5, generator=gen)
    shared = share_noise(noise, corr)
    assert torch.equal(shared, plain_shared_noise(noise, corr))
    assert torch.equal(shared[reference], noise[reference])
    assert torch.equal(shared.flatten(1, -3).transpose(0, 1)[:, ~corr.valid.reshape(3, 4, 5)],
                       noise.flatten(1, -3).transpose(0, 1)[:, ~corr.valid.reshape(3, 4, 5)])


def test_fusing_shared_pure_noise_changes_nothing():
    # Where the noise predictions are the photos' shared noise, Eq. 7/8 give back each target's own.
    gen = torch.Generator().manual_seed(33)
    corr = random_correspondence(Correspondence, 3, (6, 4), 1, gen)
    noise = share_noise(torch.randn(3, 4, 6, 4, generator=gen), corr)
    mask = injection_mask(corr.valid, 0.9, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fuse_uncond_eps(noise, corr, 0.8, mask), noise, rtol=0, atol=1e-6)
    own = torch.randn(3, 4, 6, 4, generator=gen)
    assert (fuse_uncond_eps(own, corr, 0.8, mask) - own).abs().max() > 0.1


def test_shared_noise_is_idempotent_and_keeps_the_identity():
    gen = torch.Generator().manual_seed(34)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    noise = torch.randn(3, 4, 4, 4, generator=gen)
    assert torch.equal(share_noise(share_noise(noise, corr), corr), share_noise(noise, corr))
    identity = Correspondence.identity(3, (4, 4), 0, (32, 32))
    assert all(torch.equal(row, share_noise(noise, identity)[0]) for row in share_noise(noise, identity))


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (3, 4, 4, 5), (3, 4, 4), (3, 4, 1, 1, 4, 4)])
def test_shared_noise_of_another_batch_or_grid_is_a_clear_error(shape):
    corr = Correspondence.identity(3, (4, 4), 0, (32, 32))
    with pytest.raises(ValueError, match=r"share_noise: noise must be \[3, C, 4, 4\] or \[3, C, T, 4, 4\]"):
        share_noise(torch.zeros(shape), corr)
