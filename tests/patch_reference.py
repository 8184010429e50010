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
