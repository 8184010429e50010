"""Diffusion features made ready for matching."""
import torch
import torch.nn.functional as F


def all_finite(tensor):
    """True when no element is NaN or inf, without tensor-sized temporaries: NaN and inf survive a
    sum, and features (unit length, or activations) are far too small for a float32 sum to overflow."""
    return bool(torch.isfinite(tensor.float().sum()))


def prepare_features(features, grid):
    """`[B, C, h, w]` -> `[B, C, gh, gw]`: bilinear resize to `grid` (as DIFT upsamples), unit length over C."""
    if features.ndim != 4:
        raise ValueError(f"features must be [B, C, h, w], got {list(features.shape)}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be two positive sizes (h, w), got {tuple(grid)}")
    if not all_finite(features):
        raise ValueError("features contain NaN or inf: the model produced non-finite activations "
                         "(try fp32, another checkpoint, or a lower timestep)")
    resized = F.interpolate(features.float(), size=tuple(grid), mode="bilinear", align_corners=False)
    return F.normalize(resized, dim=1)
