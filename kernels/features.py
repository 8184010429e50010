"""Diffusion features made ready for matching, and how the extractor batches its noise draws."""
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


def draws_per_call(ensemble, free_bytes, bytes_per_draw):
    """How many of `ensemble` noise draws fit in one model call: free_bytes // bytes_per_draw, in [1, ensemble]."""
    if ensemble < 1:
        raise ValueError(f"draws_per_call: ensemble must be >= 1, got {ensemble}")
    if bytes_per_draw <= 0:
        raise ValueError(f"draws_per_call: bytes_per_draw must be > 0, got {bytes_per_draw}")
    return int(min(ensemble, max(1, free_bytes // bytes_per_draw)))


def split_draws(ensemble, per_call):
    """The draws of each call, in order: `ensemble` split into the fewest calls of at most `per_call`, as even as possible."""
    if ensemble < 1 or per_call < 1:
        raise ValueError(f"split_draws: ensemble and per_call must be >= 1, got {ensemble} and {per_call}")
    calls = -(-ensemble // per_call)
    return [ensemble // calls + (i < ensemble % calls) for i in range(calls)]
