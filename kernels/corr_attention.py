"""Corr-Attention (Edicho §3.3): the inputs of a target's self-attention, taken from the reference."""
import torch
from einops import rearrange

MODES = ("warp", "share")


def corr_attention_inputs(q, k, v, corr, mode="warp"):
    """q, k, v `[R, N, C]` with R = chunks * B (row = chunk * B + b) -> (q2, k2, v2) `[R, N, C]`.

    In every chunk each target row gets the reference row's K and V; its queries are the
    reference's warped through `corr` where valid (mode "warp", Eq. 3) or its own (mode "share",
    K/V sharing as in MasaCtrl/DragonDiffusion). Reference rows are unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rows, tokens = q.shape[:2]
    batch = corr.batch_size
    if rows % batch:
        raise ValueError(f"corr_attention_inputs: {rows} rows is not a multiple of the correspondence's {batch} images")
    if tokens != corr.grid[0] * corr.grid[1]:
        raise ValueError(f"corr_attention_inputs: {tokens} tokens but the correspondence grid {corr.grid} has "
                         f"{corr.grid[0] * corr.grid[1]}")
    ref = corr.reference
    k4, v4 = (rearrange(t, "(c b) n d -> c b n d", b=batch) for t in (k, v))
    k2 = rearrange(k4[:, ref:ref + 1].expand_as(k4), "c b n d -> (c b) n d")
    v2 = rearrange(v4[:, ref:ref + 1].expand_as(v4), "c b n d -> (c b) n d")
    if mode == "share":
        return q, k2, v2
    q4 = rearrange(q, "(c b) n d -> c b n d", b=batch)
    index = corr.index.to(q.device)
    valid = corr.valid.to(q.device)
    gathered = q4[:, ref][:, index]
    q2 = torch.where(valid[None, ..., None], gathered, q4)
    return rearrange(q2, "c b n d -> (c b) n d"), k2, v2
