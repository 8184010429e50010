"""DiT kernels with no host: the image-token gather and K/V sharing on a joint [text | image | context]
sequence, against plain loops, and eps in a rectified flow's own space."""
import pytest
import torch

from comfyui_edicho.kernels.corr_attention import attention_sources, gather_image_tokens, share_image_tokens
from comfyui_edicho.kernels.correspondence import Correspondence
from comfyui_edicho.kernels.fusion import denoised_change, eps_from_denoised
from patch_reference import random_correspondence

TEXT, CONTEXT = 5, 7


@pytest.mark.parametrize("reference, chunks", [(0, 1), (1, 2)])
@pytest.mark.parametrize("token_dim", [1, 2])
def test_gather_image_tokens_equals_a_plain_loop(reference, chunks, token_dim):
    gen = torch.Generator().manual_seed(30 + reference)
    corr = random_correspondence(Correspondence, 3, (3, 4), reference, gen)
    n = 12
    rows = chunks * 3
    out = torch.randn(rows, TEXT + n + CONTEXT, 6, generator=gen)
    if token_dim == 2:
        out = out.view(rows, TEXT + n + CONTEXT, 2, 3).permute(0, 2, 1, 3)
    _, query_source = attention_sources(corr, chunks)
    got = gather_image_tokens(out, query_source, TEXT, n, token_dim)

    tokens_first = out.movedim(token_dim, 1)
    expected = tokens_first.clone()
    for row in range(rows):
        chunk, b = divmod(row, 3)
        for p in range(n):
            if b != reference and corr.valid[b, p]:
                expected[row, TEXT + p] = tokens_first[chunk * 3 + reference, TEXT + int(corr.index[b, p])]
    assert torch.equal(got.movedim(token_dim, 1), expected)
    # Text and context tokens, the reference rows and unmatched tokens are exactly their own.
    assert torch.equal(got.narrow(token_dim, 0, TEXT), out.narrow(token_dim, 0, TEXT))
    assert torch.equal(got.narrow(token_dim, TEXT + n, CONTEXT), out.narrow(token_dim, TEXT + n, CONTEXT))
    assert torch.equal(got[reference], out[reference])


def test_gather_with_nothing_matched_changes_nothing():
    corr = Correspondence(index=torch.zeros(2, 4, dtype=torch.long), valid=torch.zeros(2, 4, dtype=torch.bool),
                          similarity=torch.zeros(2, 4), grid=(2, 2), reference=0, image_size=(16, 16))
    out = torch.randn(2, TEXT + 4, 3)
    assert torch.equal(gather_image_tokens(out, attention_sources(corr, 1)[1], TEXT, 4), out)


def test_share_image_tokens_takes_only_the_targets_image_tokens():
    gen = torch.Generator().manual_seed(33)
    corr = random_correspondence(Correspondence, 3, (2, 2), 1, gen)
    row_source, _ = attention_sources(corr, 2)
    out, shared = torch.randn(6, TEXT + 4 + CONTEXT, 3, generator=gen), torch.randn(6, TEXT + 4 + CONTEXT, 3, generator=gen)
    got = share_image_tokens(out, shared, row_source, TEXT, 4)
    for row in range(6):
        image = slice(TEXT, TEXT + 4)
        expected = out[row, image] if row % 3 == 1 else shared[row, image]
        assert torch.equal(got[row, image], expected)
        assert torch.equal(got[row, :TEXT], out[row, :TEXT]) and torch.equal(got[row, TEXT + 4:], out[row, TEXT + 4:])


def test_image_tokens_outside_the_sequence_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        gather_image_tokens(torch.zeros(1, 6, 2), torch.zeros(4, dtype=torch.long), 4, 4)


def test_flow_eps_round_trips_and_matches_the_flow_definition():
    gen = torch.Generator().manual_seed(34)
    x0, eps = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64), torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.7, 0.2], dtype=torch.float64).view(-1, 1, 1, 1)
    x = (1 - sigma) * x0 + sigma * eps
    torch.testing.assert_close(eps_from_denoised(x, x0, sigma, 1 - sigma), eps)
    moved = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    # x0' = (x - sigma (eps + moved)) / (1 - sigma)
    torch.testing.assert_close(x0 + denoised_change(moved, sigma, 1 - sigma), (x - sigma * (eps + moved)) / (1 - sigma))
