"""Corr-CFG (Edicho §3.4): fusing the targets' unconditional noise with the reference's."""
import torch
from einops import rearrange

from .warping import warp_tokens


def injection_mask(valid, gamma, generator):
    """A random fraction `gamma` of the valid positions: `[B, N]` bool -> `[B, N]` bool, drawn from `generator`."""
    if valid.ndim != 2 or valid.dtype != torch.bool:
        raise ValueError(f"injection_mask: valid must be a [B, N] bool tensor, got {valid.dtype} {list(valid.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"injection_mask: gamma must be in [0, 1], got {gamma}")
    draw = torch.rand(valid.shape, generator=generator, device=generator.device)
    return (draw < gamma).to(valid.device) & valid


def fuse_uncond_eps(eps, corr, lam, mask):
    """eps' = (1 - lam) eps + lam Inj(warped reference eps, eps): `[B, C, H, W]` or `[B, C, T, H, W]` -> same.

    `corr` must be on the grid (H, W); `mask` `[B, H*W]` bool (see `injection_mask`) says where
    the reference's value is injected (only where `corr` is valid, so never on the reference row).
    Positions not injected keep their own value exactly, as (1 - lam) e + lam e = e. A 5-D latent
    (Qwen-Image's one frame) moves all its channels and frames at a position together.
    """
    if eps.ndim not in (4, 5) or tuple(eps.shape[-2:]) != tuple(corr.grid) or eps.shape[0] != corr.batch_size:
        raise ValueError(f"fuse_uncond_eps: eps must be [{corr.batch_size}, C, {corr.grid[0]}, {corr.grid[1]}] or "
                         f"[{corr.batch_size}, C, T, {corr.grid[0]}, {corr.grid[1]}], got {list(eps.shape)}")
    if mask.shape != corr.valid.shape:
        raise ValueError(f"fuse_uncond_eps: mask must be {list(corr.valid.shape)}, got {list(mask.shape)}")
    if lam == 0.0:
        return eps
    mask = mask.to(eps.device) & corr.valid.to(eps.device)
    tokens = rearrange(eps.flatten(1, -3), "b c h w -> b (h w) c")
    warped = warp_tokens(tokens[corr.reference], tokens, corr.index, mask)
    # Eq. 7/8 as written (not lerp), so a plain per-position computation matches it bit for bit.
    fused = torch.where(mask[..., None], (1 - lam) * tokens + lam * warped, tokens)
    return rearrange(fused, "b (h w) c -> b c h w", h=eps.shape[-2]).view(eps.shape)


def share_noise(noise, corr):
    """Each target's starting noise with the reference's, warped, at every valid cell: `[B, C, H, W]` or `[B, C, T, H, W]` -> same.

    `corr` must be on the grid (H, W). Corr-CFG then fuses noise predictions that describe the
    same noise at the cells it fuses (`fuse_uncond_eps` only injects where `corr` is valid).
    The reference row and the cells without a match keep their own noise; cells matched to one
    reference cell get the same values.
    """
    if noise.ndim not in (4, 5) or tuple(noise.shape[-2:]) != tuple(corr.grid) or noise.shape[0] != corr.batch_size:
        raise ValueError(f"share_noise: noise must be [{corr.batch_size}, C, {corr.grid[0]}, {corr.grid[1]}] or "
                         f"[{corr.batch_size}, C, T, {corr.grid[0]}, {corr.grid[1]}], got {list(noise.shape)}")
    tokens = rearrange(noise.flatten(1, -3), "b c h w -> b (h w) c")
    shared = warp_tokens(tokens[corr.reference], tokens, corr.index, corr.valid)
    return rearrange(shared, "b (h w) c -> b c h w", h=noise.shape[-2]).view(noise.shape)


def eps_from_denoised(x, denoised, sigma, alpha):
    """The noise of x = alpha x0 + sigma eps given x0 (`denoised`): `[B, ...]` -> `[B, ...]`.

    alpha is 1 for EPS and V models (the host's x = x0 + sigma eps) and 1 - sigma for rectified
    flow (CONST: x = (1 - sigma) x0 + sigma eps); `sigma`, `alpha` broadcast against x.
    """
    return (x - alpha * denoised) / sigma


def denoised_change(eps_change, sigma, alpha):
    """How x0 moves when eps moves by `eps_change` at fixed x: `[B, ...]` -> `[B, ...]` (x0 = (x - sigma eps) / alpha)."""
    return -eps_change * sigma / alpha
