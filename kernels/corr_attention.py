"""Corr-Attention (Edicho §3.3): the inputs of a target's self-attention, taken from the reference."""
import torch

MODES = ("warp", "share")


def attention_sources(corr, chunks, device=None):
    """Where each row's K/V and each query come from, for `chunks * B` rows laid out chunk-major.

    Returns (row_source `[R]`, query_source `[R*N]`): row r takes K and V of row row_source[r] (its
    chunk's reference row); flattened query r*N + p is query query_source[r*N + p] of the
    flattened `[R*N, C]` queries (the reference's, warped, where the match is valid).
    """
    if chunks < 1:
        raise ValueError(f"attention_sources: chunks must be >= 1, got {chunks}")
    batch, tokens = corr.index.shape
    rows = torch.arange(chunks * batch, device=device)
    chunk_of, image_of = rows // batch, rows % batch
    row_source = chunk_of * batch + corr.reference
    index, valid = corr.index.to(device), corr.valid.to(device)
    warped = row_source[:, None] * tokens + index[image_of]
    own = rows[:, None] * tokens + torch.arange(tokens, device=device)
    query_source = torch.where(valid[image_of], warped, own).reshape(-1)
    return row_source, query_source


def gather_attention_inputs(q, k, v, sources, mode="warp"):
    """q, k, v `[R, N, C]` -> (q2, k2, v2) `[R, N, C]` gathered as `attention_sources` says (3 index_selects)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    row_source, query_source = sources
    if not q.shape[0] == k.shape[0] == v.shape[0] == row_source.shape[0] \
            or q.shape[0] * q.shape[1] != query_source.shape[0]:
        raise ValueError(f"gather_attention_inputs: q, k, v must be [{row_source.shape[0]}, "
                         f"{query_source.shape[0] // max(row_source.shape[0], 1)}, C] as the sources were made for, "
                         f"got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    k2, v2 = k.index_select(0, row_source), v.index_select(0, row_source)
    if mode == "share":
        return q, k2, v2
    rows, tokens, channels = q.shape
    q2 = q.reshape(rows * tokens, channels).index_select(0, query_source).view(rows, tokens, channels)
    return q2, k2, v2


def corr_attention_inputs(q, k, v, corr, mode="warp"):
    """q, k, v `[R, N, C]` with R = chunks * B (row = chunk * B + b) -> (q2, k2, v2) `[R, N, C]`.

    In every chunk each target row gets the reference row's K and V; its queries are the
    reference's warped through `corr` where valid (mode "warp", Eq. 3) or its own (mode "share",
    K/V sharing as in MasaCtrl/DragonDiffusion). Reference rows are unchanged.
    """
    rows, tokens = q.shape[:2]
    batch = corr.batch_size
    if rows % batch:
        raise ValueError(f"corr_attention_inputs: {rows} rows is not a multiple of the correspondence's {batch} images")
    if tokens != corr.grid[0] * corr.grid[1]:
        raise ValueError(f"corr_attention_inputs: {tokens} tokens but the correspondence grid {corr.grid} has "
                         f"{corr.grid[0] * corr.grid[1]}")
    return gather_attention_inputs(q, k, v, attention_sources(corr, rows // batch, q.device), mode)
