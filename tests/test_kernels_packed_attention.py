"""The packed Corr-Attention path (attention only where the correspondence does not answer) and the
ensemble batching arithmetic, without the host."""
import pytest
import torch
import torch.nn.functional as F

from comfyui_edicho.kernels.corr_attention import (attention_sources, gather_attention_inputs, packed_attention_plan,
                                                   packed_corr_attention)
from comfyui_edicho.kernels.correspondence import Correspondence
from comfyui_edicho.kernels.features import draws_per_call, split_draws
from patch_reference import corr_attention_reference, random_correspondence

# Packed vs gather path, float32 on the CPU: measured 0 here (torch SDPA computes each query row
# alone); the bound allows a kernel that blocks queries differently for another query count.
FP32_PATH_TOLERANCE = 1e-6


def sdpa(heads):
    """Multi-head attention `[b, n, h*d]` x `[b, m, h*d]` -> `[b, n, h*d]`, as the host's backends compute it."""
    def attention(q, k, v):
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    return attention


def with_valid(corr, kind, generator):
    """`corr` with its targets all matched, none matched, or as drawn (the reference row stays invalid)."""
    if kind == "random":
        return corr
    valid = torch.full_like(corr.valid, kind == "all")
    valid[corr.reference] = False
    return Correspondence(corr.index, valid, corr.similarity, corr.grid, corr.reference, corr.image_size)


@pytest.mark.parametrize("heads, dim", [(8, 40), (10, 64)])
@pytest.mark.parametrize("reference", [0, 2])
@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("kind", ["random", "all", "none"])
def test_packed_path_equals_the_plain_loop_and_the_gather_path(heads, dim, reference, chunks, kind):
    gen = torch.Generator().manual_seed(10 * reference + chunks)
    batch, grid = 3, (4, 6)
    corr = with_valid(random_correspondence(Correspondence, batch, grid, reference, gen), kind, gen)
    rows, n = chunks * batch, grid[0] * grid[1]
    q, k, v = (torch.randn(rows, n, heads * dim, generator=gen) for _ in range(3))
    attention = sdpa(heads)
    out = packed_corr_attention(q, k, v, packed_attention_plan(corr, chunks), attention)
    torch.testing.assert_close(out.double(), corr_attention_reference(q, k, v, corr, heads), rtol=1e-5, atol=1e-5)
    gathered = attention(*gather_attention_inputs(q, k, v, attention_sources(corr, chunks)))
    assert (out - gathered).abs().max() <= FP32_PATH_TOLERANCE


def test_plan_of_a_small_correspondence_by_hand():
    # 2 images of 3 cells, reference 0; target cells 0 and 2 match reference cells 2 and 0, cell 1 is unmatched.
    corr = Correspondence(torch.tensor([[0, 1, 2], [2, 1, 0]]), torch.tensor([[False] * 3, [True, False, True]]),
                          torch.ones(2, 3), (1, 3), 0, (8, 24))
    plan = packed_attention_plan(corr, chunks=2)
    assert plan.kv_rows.tolist() == [0, 2]
    # Per chunk: the reference's 3 queries, then the target's cell 1 (flattened row 1 * 3 + 1).
    assert plan.query_source.tolist() == [0, 1, 2, 4, 6, 7, 8, 10]
    # Packed rows per chunk: 4. The target reads the reference's outputs 2 and 0, and its own packed row 3.
    assert plan.output_source.tolist() == [0, 1, 2, 2, 3, 0, 4, 5, 6, 6, 7, 4]


@pytest.mark.parametrize("chunks", [1, 2])
def test_all_matched_needs_only_the_reference_queries_none_matched_every_query(chunks):
    gen = torch.Generator().manual_seed(2)
    corr = random_correspondence(Correspondence, 4, (3, 5), 1, gen)
    n = 15
    everything = packed_attention_plan(with_valid(corr, "all", gen), chunks)
    reference_rows = torch.arange(chunks)[:, None] * 4 * n + n + torch.arange(n)
    assert torch.equal(everything.query_source, reference_rows.reshape(-1))
    nothing = packed_attention_plan(with_valid(corr, "none", gen), chunks)
    assert nothing.query_source.shape[0] == chunks * 4 * n
    # Nothing matched: every target queries the reference's K/V with its own queries, which is K/V sharing.
    q, k, v = (torch.randn(chunks * 4, n, 16, generator=gen) for _ in range(3))
    attention = sdpa(2)
    shared = attention(*gather_attention_inputs(q, k, v, attention_sources(corr, chunks), mode="share"))
    assert (packed_corr_attention(q, k, v, nothing, attention) - shared).abs().max() <= FP32_PATH_TOLERANCE


def test_plan_is_deterministic_and_ignores_the_reference_rows_validity():
    gen = torch.Generator().manual_seed(3)
    corr = random_correspondence(Correspondence, 3, (4, 4), 2, gen)
    index, valid = corr.index.clone(), corr.valid.clone()
    index[2], valid[2] = index[2].roll(1), True
    odd = Correspondence(index, valid, corr.similarity, corr.grid, 2, corr.image_size)
    plans = [packed_attention_plan(corr, 2), packed_attention_plan(corr, 2), packed_attention_plan(odd, 2)]
    for a, b, c in zip(*plans):
        assert torch.equal(a, b) and torch.equal(a, c)
    unmatched = int((~corr.valid[:2]).sum())
    assert plans[0].query_source.shape[0] == 2 * (16 + unmatched)


def test_packed_path_refuses_inconsistent_input():
    corr = Correspondence.identity(2, (2, 2), 0, (16, 16))
    q = torch.zeros(4, 4, 8)
    with pytest.raises(ValueError, match="packed_attention_plan: chunks must be >= 1"):
        packed_attention_plan(corr, 0)
    with pytest.raises(ValueError, match=r"packed_corr_attention: q, k, v must be one \[R, N, C\] shape with R \* N = 16"):
        packed_corr_attention(torch.zeros(4, 3, 8), q, q, packed_attention_plan(corr, 2), sdpa(1))
    with pytest.raises(ValueError, match="packed_corr_attention"):
        packed_corr_attention(q, q, q, packed_attention_plan(corr, 1), sdpa(1))


@pytest.mark.parametrize("ensemble, free, per_draw, expected", [
    (8, 10_000, 1_000, 8),   # everything fits in one call
    (8, 3_500, 1_000, 3),    # room for 3 draws
    (8, 999, 1_000, 1),      # not even one: one per call, as before
    (8, -5, 1_000, 1),       # less than nothing free (the host's reserve exceeds it)
    (1, 10_000, 1, 1),
])
def test_draws_per_call_from_free_memory(ensemble, free, per_draw, expected):
    assert draws_per_call(ensemble, free, per_draw) == expected


@pytest.mark.parametrize("ensemble, per_call, expected", [
    (8, 8, [8]), (8, 3, [3, 3, 2]), (8, 5, [4, 4]), (8, 1, [1] * 8), (3, 10, [3]), (7, 2, [2, 2, 2, 1]),
])
def test_split_draws_into_the_fewest_even_calls(ensemble, per_call, expected):
    calls = split_draws(ensemble, per_call)
    assert calls == expected
    assert sum(calls) == ensemble and max(calls) <= per_call


def test_batching_arithmetic_refuses_bad_input():
    with pytest.raises(ValueError, match="draws_per_call: ensemble must be >= 1"):
        draws_per_call(0, 10, 1)
    with pytest.raises(ValueError, match="draws_per_call: bytes_per_draw must be > 0"):
        draws_per_call(4, 10, 0)
    with pytest.raises(ValueError, match="split_draws: ensemble and per_call must be >= 1"):
        split_draws(4, 0)
