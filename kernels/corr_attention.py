"""Corr-Attention (Edicho §3.3): a target's self-attention inputs taken from the reference, and the
packed form that computes attention only for the queries the correspondence does not answer."""
from typing import NamedTuple

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


class PackedPlan(NamedTuple):
    """Index plan of `packed_corr_attention` for `chunks * B` rows of N tokens, U unmatched target tokens."""
    kv_rows: torch.Tensor
    query_source: torch.Tensor
    output_source: torch.Tensor


def packed_attention_plan(corr, chunks, device=None):
    """Where the packed queries come from and where each output row is read: a `PackedPlan`.

    kv_rows `[chunks]`: each chunk's reference row. query_source `[chunks * (N + U)]`: per chunk, the
    reference's N queries, then every target's unmatched ones (by image, then token), as rows of the
    flattened `[R*N, C]` queries. output_source `[R*N]`: output row r*N + p is row output_source[r*N + p]
    of the flattened `[chunks * (N + U), C]` attention output; a matched target token reads the
    reference's output at its match. All matched: U = 0, only the reference's queries; none matched:
    U = (B - 1) * N. The reference row's validity is ignored (it is never valid).
    """
    if chunks < 1:
        raise ValueError(f"packed_attention_plan: chunks must be >= 1, got {chunks}")
    batch, tokens = corr.index.shape
    reference = corr.reference
    index, valid = corr.index.to(device), corr.valid.to(device)
    own = torch.arange(tokens, device=device)
    unmatched = ~valid
    unmatched[reference] = False
    images, cells = unmatched.nonzero(as_tuple=True)
    packed = tokens + images.shape[0]
    queries = torch.cat([reference * tokens + own, images * tokens + cells])
    slot = torch.full((batch, tokens), -1, dtype=torch.long, device=device)
    slot[images, cells] = torch.arange(tokens, packed, device=device)
    outputs = torch.where(valid, index, slot)
    outputs[reference] = own
    chunk = torch.arange(chunks, device=device)
    return PackedPlan(kv_rows=chunk * batch + reference,
                      query_source=(chunk[:, None] * (batch * tokens) + queries).reshape(-1),
                      output_source=(chunk[:, None, None] * packed + outputs).reshape(-1))


def packed_corr_attention(q, k, v, plan, attention):
    """Eq. 3-4 (mode "warp") computing attention only where the correspondence does not answer:
    q, k, v `[R, N, C]` -> `[R, N, C]`, through one `attention(q [chunks, N+U, C], k, v [chunks, N, C])`.

    A matched target query is the reference's query at its match, attending to the reference's
    K/V: its output is the reference's own output there, so it is gathered, not recomputed.
    """
    rows, tokens, channels = q.shape
    chunks = plan.kv_rows.shape[0]
    if not q.shape == k.shape == v.shape or rows * tokens != plan.output_source.shape[0] \
            or rows % chunks:
        raise ValueError(f"packed_corr_attention: q, k, v must be one [R, N, C] shape with R * N = "
                         f"{plan.output_source.shape[0]} and R a multiple of {chunks} chunks, as the plan was made "
                         f"for, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    packed_q = q.reshape(rows * tokens, channels).index_select(0, plan.query_source).view(chunks, -1, channels)
    out = attention(packed_q, k.index_select(0, plan.kv_rows), v.index_select(0, plan.kv_rows))
    return out.reshape(-1, out.shape[-1]).index_select(0, plan.output_source).view(rows, tokens, out.shape[-1])


def _image_slice(out, start, count, token_dim):
    if token_dim not in (1, 2) or out.ndim != token_dim + 2 or start < 0 or start + count > out.shape[token_dim]:
        raise ValueError(f"image tokens {start}..{start + count} do not fit an attention output of shape "
                         f"{list(out.shape)} with tokens on dim {token_dim}")
    return out.narrow(token_dim, start, count)


def gather_image_tokens(out, query_source, start, count, token_dim=1):
    """Eq. 3-4 on a joint sequence: each target's matched image tokens take the reference's attention
    output at the match. out `[R, L, C]` (token_dim 1) or `[R, H, L, D]` (token_dim 2) -> same shape.

    Image tokens are `start .. start + count` of L; `query_source` `[R*count]` is
    `attention_sources`' (own token where unmatched, so those and every other token keep their value).
    """
    image = _image_slice(out, start, count, token_dim)
    if query_source.shape[0] != out.shape[0] * count:
        raise ValueError(f"gather_image_tokens: query_source has {query_source.shape[0]} entries for "
                         f"{out.shape[0]} rows of {count} image tokens")
    tokens_last = image.movedim(token_dim, 1)
    flat = tokens_last.reshape(out.shape[0] * count, -1)
    gathered = flat.index_select(0, query_source).view(tokens_last.shape).movedim(1, token_dim)
    result = out.clone()
    result.narrow(token_dim, start, count).copy_(gathered)
    return result


def share_image_tokens(out, shared, row_source, start, count, token_dim=1):
    """K/V sharing on a joint sequence: target rows' image tokens from `shared` (computed with the
    reference's K/V), everything else from `out`. out, shared `[R, L, C]` or `[R, H, L, D]` -> same."""
    if out.shape != shared.shape or row_source.shape[0] != out.shape[0]:
        raise ValueError(f"share_image_tokens: out {list(out.shape)} and shared {list(shared.shape)} must match, "
                         f"with one row source per row (got {row_source.shape[0]})")
    target = (row_source != torch.arange(out.shape[0], device=row_source.device)).view(-1, *[1] * (out.ndim - 1))
    image = torch.where(target, _image_slice(shared, start, count, token_dim), _image_slice(out, start, count, token_dim))
    result = out.clone()
    result.narrow(token_dim, start, count).copy_(image)
    return result
