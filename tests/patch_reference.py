"""Plain, loop-by-loop reference computations the patches are checked against."""
import math

import torch


def random_correspondence(Correspondence, batch, grid, reference, generator, image_size=(256, 256)):
    """A random correspondence: arbitrary matches, about 70% valid, reference row invalid."""
    n = grid[0] * grid[1]
    index = torch.randint(0, n, (batch, n), generator=generator)
    valid = torch.rand(batch, n, generator=generator) < 0.7
    valid[reference] = False
    index[reference] = torch.arange(n)
    similarity = torch.rand(batch, n, generator=generator)
    return Correspondence(index=index, valid=valid, similarity=similarity, grid=tuple(grid), reference=reference,
                          image_size=tuple(image_size))


def plain_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, for one row: [N, C] each."""
    n, c = q.shape
    d = c // heads
    out = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * d:(h + 1) * d].double() for t in (q, k, v))
        weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
        out.append(weights @ vh)
    return torch.cat(out, dim=1)


def corr_attention_reference(q, k, v, corr, heads, mode="warp"):
    """Edicho Eq. 3-4 row by row: rows laid out chunk-major, `rows = chunks * B`."""
    batch = corr.batch_size
    out = torch.empty(q.shape, dtype=torch.float64)
    for row in range(q.shape[0]):
        chunk, b = divmod(row, batch)
        ref = chunk * batch + corr.reference
        if b == corr.reference:
            out[row] = plain_attention(q[row], k[row], v[row], heads)
            continue
        q_edit = q[row].clone()
        if mode == "warp":
            for p in range(q.shape[1]):
                if corr.valid[b, p]:
                    q_edit[p] = q[ref, corr.index[b, p]]
        out[row] = plain_attention(q_edit, k[ref], v[ref], heads)
    return out


def plain_joint_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v for one row, per head: q `[H, M, D]`, k, v `[H, L, D]` -> `[M, H*D]`."""
    weights = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ v.double()).permute(1, 0, 2).reshape(q.shape[1], -1)


def joint_corr_attention_reference(q, k, v, corr, start):
    """Eq. 3-4 on a joint sequence, row by row (chunk-major rows): q, k, v `[R, H, L, D]` (after RoPE) -> `[R, L, H*D]`.

    Each target's matched image tokens (`start` + p on `corr`'s grid) attend with the reference's
    query at the match to the reference's K/V; every other token attends with its own row.
    """
    batch = corr.batch_size
    out = torch.stack([plain_joint_attention(q[r], k[r], v[r]) for r in range(q.shape[0])])
    for row in range(q.shape[0]):
        chunk, b = divmod(row, batch)
        if b == corr.reference:
            continue
        ref = chunk * batch + corr.reference
        cells = corr.valid[b].nonzero().flatten()
        warped_q = q[ref][:, start + corr.index[b, cells]]
        out[row, start + cells] = plain_joint_attention(warped_q, k[ref], v[ref])
    return out


def plain_fused_eps(eps, corr, lam, mask):
    """Eq. 7/8 position by position: (1 - lam) eps_u + lam Inj(warped ref eps_u, eps_u); `[B, ..., H, W]`."""
    out = eps.clone()
    h, w = eps.shape[-2:]
    for b in range(eps.shape[0]):
        if b == corr.reference:
            continue
        for p in range(h * w):
            y, x = divmod(p, w)
            injected = eps[b, ..., y, x]
            if mask[b, p]:
                ry, rx = divmod(int(corr.index[b, p]), w)
                injected = eps[corr.reference, ..., ry, rx]
            out[b, ..., y, x] = (1 - lam) * eps[b, ..., y, x] + lam * injected
    return out
