"""Carry reference content onto targets through a correspondence."""
import torch
from einops import rearrange

from .correspondence import resize_correspondence


def warp_tokens(reference_tokens, tokens, index, valid):
    """out[b, p] = reference_tokens[index[b, p]] where valid[b, p], else tokens[b, p]: `[N, C]`, `[B, N, C]` -> `[B, N, C]`."""
    if tokens.ndim != 3 or reference_tokens.shape != tokens.shape[1:] or index.shape != tokens.shape[:2] \
            or valid.shape != tokens.shape[:2]:
        raise ValueError(f"warp_tokens: expected reference [N, C], tokens [B, N, C], index/valid [B, N]; got "
                         f"{list(reference_tokens.shape)}, {list(tokens.shape)}, {list(index.shape)}, {list(valid.shape)}")
    gathered = reference_tokens[index.to(reference_tokens.device)]
    return torch.where(valid.to(tokens.device)[..., None], gathered, tokens)


def warp_images(images, corr):
    """The reference image warped onto every target: `[B, C, H, W]` -> `[B, C, H, W]`; the reference row unchanged."""
    if images.ndim != 4 or images.shape[0] != corr.batch_size:
        raise ValueError(f"warp_images: expected [B, C, H, W] with B = {corr.batch_size}, got {list(images.shape)}")
    height, width = images.shape[-2:]
    at_size = resize_correspondence(corr, (height, width))
    tokens = rearrange(images, "b c h w -> b (h w) c")
    warped = warp_tokens(tokens[corr.reference], tokens, at_size.index, at_size.valid)
    return rearrange(warped, "b (h w) c -> b c h w", h=height, w=width)
