"""Diffusion features made ready for matching."""
import torch
import torch.nn.functional as F


def prepare_features(features, grid):
    """`[B, C, h, w]` -> `[B, C, gh, gw]`: bilinear resize to `grid` (as DIFT upsamples), unit length over C."""
    if features.ndim != 4:
        raise ValueError(f"features must be [B, C, h, w], got {list(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf: the model produced non-finite activations "
                         "(try fp32, another checkpoint, or a lower timestep)")
    resized = F.interpolate(features.float(), size=tuple(grid), mode="bilinear", align_corners=False)
    return F.normalize(resized, dim=1)
