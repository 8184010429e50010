"""Cosine nearest-neighbour matching from every target position to the reference."""
import torch
from einops import rearrange

from .correspondence import Correspondence
from .features import all_finite

# A matmul's last bits depend on its shape: on MKL, products of 1..7 rows (and a short last
# chunk) round differently from the same rows inside a larger product. Similarities are therefore
# always computed in these fixed row blocks, aligned to absolute target positions, one matmul per
# block; chunks are whole numbers of blocks, so every chunking (and all-at-once) sees bit-identical
# similarities and picks identical argmaxes, whatever the BLAS or the device. 256 rows keep the
# matmul as fast as one big product (measured at C=1280 on CPU).
ROW_BLOCK = 256


def _check(features, reference, masks):
    if features.ndim != 4:
        raise ValueError(f"features must be [B, C, h, w], got {list(features.shape)}")
    batch = features.shape[0]
    if batch < 2:
        raise ValueError(f"matching needs at least 2 images (a reference and a target), got {batch}")
    if not 0 <= reference < batch:
        raise ValueError(f"reference index {reference} is out of range for {batch} images (0..{batch - 1})")
    if not all_finite(features):
        raise ValueError("features contain NaN or inf")
    if masks is not None and tuple(masks.shape) != (batch, *features.shape[-2:]):
        raise ValueError(f"masks must be [B, h, w] = {[batch, *features.shape[-2:]]}, got {list(masks.shape)}")


def _match_one(target, ref, ref_ok, target_ok, mutual, chunk):
    """Per target row the best reference row and its similarity; per reference row the best target row.

    target, ref `[N, C]`; one chunk's similarities `[chunk, N]` are held at a time. The reverse
    argmax is a running column maximum over chunks, updated only on strictly greater values so
    ties keep the first index, exactly as torch.argmax over the whole matrix.
    """
    n = target.shape[0]
    ref_t = ref.T
    best_ref = torch.empty(n, device=target.device, dtype=torch.long)
    best_sim = torch.empty(n, device=target.device, dtype=target.dtype)
    col_sim = torch.full((ref.shape[0],), float("-inf"), device=target.device, dtype=target.dtype)
    col_arg = torch.zeros(ref.shape[0], device=target.device, dtype=torch.long)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sim = torch.empty(stop - start, ref.shape[0], device=target.device, dtype=target.dtype)
        for row in range(start, stop, ROW_BLOCK):
            torch.matmul(target[row:row + ROW_BLOCK], ref_t, out=sim[row - start:row - start + ROW_BLOCK])
        if ref_ok is not None:
            sim.masked_fill_(~ref_ok[None, :], float("-inf"))
        best = sim.argmax(dim=1)
        best_ref[start:stop] = best
        best_sim[start:stop] = sim.gather(1, best[:, None])[:, 0]
        if mutual:
            # An argmax over dim 0 allocates 8x the chunk on CUDA; a transposed copy costs 1x.
            reverse = sim.T.contiguous()
            if target_ok is not None:
                reverse.masked_fill_(~target_ok[None, start:stop], float("-inf"))
            arg = reverse.argmax(dim=1)
            value = reverse.gather(1, arg[:, None])[:, 0]
            better = value > col_sim
            col_sim = torch.where(better, value, col_sim)
            col_arg = torch.where(better, arg + start, col_arg)
            del reverse
        # Free this chunk's matrix before the next one is allocated.
        del sim
    return best_ref, best_sim, col_arg


def match_features(features, reference, *, mutual=True, min_similarity=0.0, masks=None, chunk_size=512,
                   image_size=None):
    """Unit-length features `[B, C, h, w]` -> Correspondence (reference -> each target) on the grid (h, w).

    `masks` `[B, h, w]` bool, True where a cell may take part: masked reference cells are never
    chosen, masked target cells are invalid. A match is valid when it passes the mutual check
    (if on), reaches `min_similarity`, and is not masked. `chunk_size` target cells are matched at a
    time, rounded up to whole blocks of ROW_BLOCK cells (peak memory O(chunk x h*w)); None matches
    all at once. Every chunking gives exactly the same result.
    """
    _check(features, reference, masks)
    batch, _, h, w = features.shape
    n = h * w
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    chunk = n if chunk_size is None else -(-int(chunk_size) // ROW_BLOCK) * ROW_BLOCK
    flat = rearrange(features, "b c h w -> b (h w) c")
    flat_masks = rearrange(masks.bool(), "b h w -> b (h w)") if masks is not None else None
    ref_ok = flat_masks[reference] if flat_masks is not None else None
    positions = torch.arange(n, device=features.device)
    index = positions.repeat(batch, 1)
    valid = torch.zeros(batch, n, dtype=torch.bool, device=features.device)
    similarity = torch.ones(batch, n, dtype=torch.float32, device=features.device)
    for b in range(batch):
        if b == reference:
            continue
        target_ok = flat_masks[b] if flat_masks is not None else None
        best_ref, best_sim, col_arg = _match_one(flat[b], flat[reference], ref_ok, target_ok, mutual, chunk)
        ok = torch.isfinite(best_sim) & (best_sim >= min_similarity)
        if mutual:
            ok &= col_arg[best_ref] == positions
        if target_ok is not None:
            ok &= target_ok
        index[b] = best_ref
        valid[b] = ok
        similarity[b] = torch.where(torch.isfinite(best_sim), best_sim, torch.full_like(best_sim, -1.0)).float()
    size = tuple(image_size) if image_size is not None else (h, w)
    return Correspondence(index=index, valid=valid, similarity=similarity, grid=(h, w), reference=reference,
                          image_size=size)
