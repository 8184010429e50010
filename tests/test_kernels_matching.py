"""Matching kernels without the host: recovery of known warps of a real photo, exactness of
chunking, masks, thresholds, degenerate inputs."""
import kornia
import pytest
import torch
import torch.nn.functional as F

from comfyui_edicho.kernels.correspondence import Correspondence
from comfyui_edicho.kernels.features import prepare_features
from comfyui_edicho.kernels.matching import ROW_BLOCK, match_features

CELL, GRID = 4, 32
SIZE = CELL * GRID
PATCH = 5


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return torch.from_numpy(data.chelsea()).float().div(255).permute(2, 0, 1).contiguous()


def patch_features(cells, dilation=1, mirror=True):
    """Local colour patches of a cell image `[3, h, w]` (taps `dilation` apart), with `mirror` summed
    with their left-right mirror so a mirrored photo has mirrored features: `[3*P*P, h, w]`, unit length."""
    r = dilation * (PATCH // 2)
    h, w = cells.shape[-2:]
    padded = F.pad(cells[None], (r, r, r, r), mode="replicate")
    patches = F.unfold(padded, PATCH, dilation=dilation).reshape(3, PATCH, PATCH, h, w)
    if mirror:
        patches = patches + patches.flip(2)
    features = patches.reshape(3 * PATCH * PATCH, h, w)
    return F.normalize(features - features.mean(dim=0, keepdim=True), dim=0)


def features_of(image):
    return patch_features(F.avg_pool2d(image[None], CELL)[0])


def within_one_cell(corr, truth_y, truth_x, considered):
    found = corr.index[1].reshape(GRID, GRID)
    near = ((found // GRID - truth_y).abs() <= 1) & ((found % GRID - truth_x).abs() <= 1)
    return (near & considered).sum().item() / considered.sum().item()


def interior(margin):
    keep = torch.zeros(GRID, GRID, dtype=torch.bool)
    keep[margin:GRID - margin, margin:GRID - margin] = True
    return keep


Y0, X0 = 60, 120
CELLS = torch.arange(GRID)


def test_recovers_a_translation(photo):
    dy, dx = 4 * CELL, -6 * CELL
    reference = photo[:, Y0:Y0 + SIZE, X0:X0 + SIZE]
    target = photo[:, Y0 + dy:Y0 + dy + SIZE, X0 + dx:X0 + dx + SIZE]
    corr = match_features(torch.stack([features_of(reference), features_of(target)]), 0, mutual=False, min_similarity=-1)
    truth_y = (CELLS + dy // CELL)[:, None].expand(GRID, GRID)
    truth_x = (CELLS + dx // CELL)[None, :].expand(GRID, GRID)
    inside = (truth_y >= PATCH // 2) & (truth_y < GRID - PATCH // 2) & (truth_x >= PATCH // 2) & (truth_x < GRID - PATCH // 2)
    # Cells whose patch runs over an image border (replicate-padded) can't match by construction.
    assert within_one_cell(corr, truth_y, truth_x, inside & interior(PATCH // 2)) >= 0.95


def test_recovers_a_mirror_image(photo):
    reference = photo[:, Y0:Y0 + SIZE, X0:X0 + SIZE]
    corr = match_features(torch.stack([features_of(reference), features_of(reference.flip(-1))]), 0, mutual=False,
                          min_similarity=-1)
    truth_y = CELLS[:, None].expand(GRID, GRID)
    truth_x = (GRID - 1 - CELLS)[None, :].expand(GRID, GRID)
    assert within_one_cell(corr, truth_y, truth_x, interior(0)) >= 0.95


def test_recovers_a_crop_scaled_up(photo):
    # A 1.5x zoom into the middle. Pixel patches are not scale-invariant (DIFT features are what
    # makes that work for real), so each cell's feature is read from the photo's per-pixel feature
    # map at the pixel that cell shows: the truth the matcher must find.
    zoom = 1.5
    # Smooth so that features change gradually with position, as diffusion features do.
    smooth = kornia.filters.gaussian_blur2d(photo[None], (13, 13), (CELL / 2, CELL / 2), border_type="replicate")[0]
    per_pixel = patch_features(smooth, dilation=CELL, mirror=False)
    centres = (CELLS + 0.5) * CELL
    crop = (SIZE - SIZE / zoom) / 2
    ref_px_y, ref_px_x = Y0 + centres, X0 + centres
    tgt_px_y, tgt_px_x = Y0 + crop + centres / zoom, X0 + crop + centres / zoom
    reference = per_pixel[:, ref_px_y.long()][:, :, ref_px_x.long()]
    target = per_pixel[:, tgt_px_y.long()][:, :, tgt_px_x.long()]
    corr = match_features(torch.stack([reference, target]), 0, mutual=False, min_similarity=-1)
    truth = ((crop + centres / zoom) // CELL).long()
    assert within_one_cell(corr, truth[:, None].expand(GRID, GRID), truth[None, :].expand(GRID, GRID), interior(0)) >= 0.95


def test_mutual_check_and_threshold_drop_what_only_one_image_has(photo):
    dy, dx = 4 * CELL, 4 * CELL
    reference = photo[:, Y0:Y0 + SIZE, X0:X0 + SIZE]
    target = photo[:, Y0 + dy:Y0 + dy + SIZE, X0 + dx:X0 + dx + SIZE].clone()
    planted = torch.zeros(GRID, GRID, dtype=torch.bool)
    planted[8:18, 8:18] = True
    target[:, 8 * CELL:18 * CELL, 8 * CELL:18 * CELL] = torch.tensor([0.1, 0.9, 0.2])[:, None, None]
    features = torch.stack([features_of(reference), features_of(target)])
    loose = match_features(features, 0, mutual=False, min_similarity=-1)
    strict = match_features(features, 0, mutual=True, min_similarity=0.5)
    core = planted & interior(0)
    core[8:10] = core[16:18] = False
    core[:, 8:10] = core[:, 16:18] = False
    assert loose.valid[1].reshape(GRID, GRID)[core].float().mean() == 1.0
    assert strict.valid[1].reshape(GRID, GRID)[core].float().mean() <= 0.05
    # ...while most of the rest still matches.
    assert strict.valid[1].reshape(GRID, GRID)[~planted & interior(3)].float().mean() >= 0.5


def random_features(batch, channels, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, channels, h, w, generator=g), dim=1)


def near_ties(features, rows, seed):
    """`features` with the first `rows` image rows of every image set to one direction plus a few ulps of
    noise per cell: their similarities differ in the last bits only, so any rounding difference
    between chunkings would change the argmax."""
    g = torch.Generator().manual_seed(seed)
    batch, channels, _, w = features.shape
    base = F.normalize(torch.randn(1, channels, 1, 1, generator=g), dim=1)
    ulps = torch.randint(-3, 4, (batch, channels, rows, w), generator=g).float()
    out = features.clone()
    out[:, :, :rows] = base + ulps * torch.finfo(torch.float32).eps * base.abs()
    return out


H, W = 24, 30  # 720 positions: not a multiple of the row block


@pytest.mark.parametrize("chunk", [1, 7, 100, ROW_BLOCK, ROW_BLOCK + 1, H * W - 1, H * W, H * W + 1])
@pytest.mark.parametrize("mutual", [True, False])
def test_chunked_equals_all_at_once_exactly(chunk, mutual):
    features = near_ties(random_features(3, 64, H, W, seed=chunk), 12, seed=chunk)
    masks = torch.rand(3, H, W, generator=torch.Generator().manual_seed(9)) > 0.2
    for kwargs in ({"min_similarity": -1}, {"masks": masks, "min_similarity": 0.1}):
        naive = match_features(features, 1, mutual=mutual, chunk_size=None, **kwargs)
        chunked = match_features(features, 1, mutual=mutual, chunk_size=chunk, **kwargs)
        assert torch.equal(naive.index, chunked.index)
        assert torch.equal(naive.valid, chunked.valid)
        assert torch.equal(naive.similarity, chunked.similarity)
        assert naive.valid.any()


def plain_match(features, reference, mutual, min_similarity, masks):
    """The definition, on the whole similarity matrix in float64: (index, valid) `[B, h*w]`."""
    batch, _, h, w = features.shape
    flat = features.double().flatten(2).transpose(1, 2)
    ok = masks.flatten(1) if masks is not None else torch.ones(batch, h * w, dtype=torch.bool)
    index = torch.arange(h * w).repeat(batch, 1)
    valid = torch.zeros(batch, h * w, dtype=torch.bool)
    for b in range(batch):
        if b == reference:
            continue
        sim = (flat[b] @ flat[reference].T).masked_fill(~ok[reference][None, :], float("-inf"))
        index[b] = sim.argmax(dim=1)
        valid[b] = ok[b] & (sim.max(dim=1).values >= min_similarity) & ok[reference][index[b]]
        if mutual:
            back = sim.masked_fill(~ok[b][:, None], float("-inf")).argmax(dim=0)
            valid[b] &= back[index[b]] == torch.arange(h * w)
    return index, valid


@pytest.mark.parametrize("mutual", [True, False])
@pytest.mark.parametrize("reference", [0, 2])
def test_matches_the_definition_on_the_whole_matrix(mutual, reference):
    # Features correlated with a shifted copy of the reference, so a good share of matches is mutual.
    ref = random_features(1, 16, 20, 20, seed=10)
    noisy = F.normalize(ref.roll(3, dims=-1) + 0.6 * random_features(3, 16, 20, 20, seed=11), dim=1)
    features = torch.cat([noisy[:reference], ref, noisy[reference:]])[:3]
    masks = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(12)) > 0.1
    for kwargs in ({"masks": None, "min_similarity": 0.0}, {"masks": masks, "min_similarity": 0.3}):
        corr = match_features(features, reference, mutual=mutual, chunk_size=ROW_BLOCK, **kwargs)
        index, valid = plain_match(features, reference, mutual, **kwargs)
        assert torch.equal(corr.index, index)
        assert torch.equal(corr.valid, valid)
        assert 0.2 < valid.float().mean() < 0.9


def test_reference_row_is_identity_and_invalid():
    corr = match_features(random_features(3, 8, 5, 7, seed=1), 2)
    assert torch.equal(corr.index[2], torch.arange(35))
    assert not corr.valid[2].any()
    assert corr.grid == (5, 7) and corr.reference == 2


def test_masks_keep_matches_off_masked_reference_cells_and_invalidate_masked_targets():
    features = random_features(2, 8, 6, 6, seed=2)
    masks = torch.ones(2, 6, 6, dtype=torch.bool)
    masks[0, :3] = False  # top half of the reference may not be matched
    masks[1, :, :2] = False  # left columns of the target are left out
    corr = match_features(features, 0, mutual=False, min_similarity=-1, masks=masks)
    assert (corr.index[1] >= 18).all()
    assert not corr.valid[1].reshape(6, 6)[:, :2].any()
    assert corr.valid[1].reshape(6, 6)[:, 2:].all()


def test_degenerate_grids_and_masks():
    one = match_features(random_features(2, 4, 1, 1, seed=3), 0, mutual=True, min_similarity=-1)
    assert one.index.tolist() == [[0], [0]] and one.valid.tolist() == [[False], [True]]
    none = match_features(random_features(3, 4, 4, 4, seed=4), 0, masks=torch.zeros(3, 4, 4, dtype=torch.bool))
    assert not none.valid.any()
    assert torch.isfinite(none.similarity).all()
    high = match_features(random_features(2, 4, 4, 4, seed=5), 0, min_similarity=1.01)
    assert not high.valid.any()


@pytest.mark.parametrize("call, message", [
    (lambda f: match_features(f[:1], 0), "at least 2 images"),
    (lambda f: match_features(f, 3), "reference index 3 is out of range"),
    (lambda f: match_features(f, 0, masks=torch.ones(2, 4, 4, dtype=torch.bool)), "masks must be"),
    (lambda f: match_features(f.masked_fill(f > 0.5, float("nan")), 0), "NaN"),
    (lambda f: match_features(f, 0, chunk_size=0), "chunk_size"),
    (lambda f: match_features(f[0], 0), r"\[B, C, h, w\]"),
    (lambda f: prepare_features(f.masked_fill(f > 0.5, float("inf")), (4, 4)), "NaN or inf"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_features(3, 4, 4, 4, seed=6))


def test_prepare_features_resizes_bilinearly_and_normalises():
    features = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(7))
    out = prepare_features(features, (6, 8))
    assert out.shape == (2, 5, 6, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 6, 8))
    expected = F.normalize(F.interpolate(features, size=(6, 8), mode="bilinear", align_corners=False), dim=1)
    torch.testing.assert_close(out, expected)


def test_correspondence_checks_its_shapes():
    with pytest.raises(ValueError, match=r"index must be \[B, 16\]"):
        Correspondence(torch.zeros(2, 15, dtype=torch.long), torch.zeros(2, 16, dtype=torch.bool), torch.zeros(2, 16),
                       (4, 4), 0, (32, 32))
