"""Matcher, preview and mask transfer nodes: right pixels on a known warp, clear errors."""
import pytest
import torch

from test_kernels_warping import translation


@pytest.fixture
def shifted_pair():
    """Two 64 px images, the second the first moved up by 8 and right by 16 px, and the true correspondence."""
    first = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1))
    second = torch.zeros_like(first)
    second[:56, 16:] = first[8:, :48]
    return torch.stack([first, second]), translation(2, (8, 8), [(0, 0), (1, -2)])


def test_preview_shows_the_reference_warped_onto_each_image(pack, shifted_pair):
    images, corr = shifted_pair
    preview = pack("nodes.preview").render_preview(images, corr)
    assert preview.shape == (2, 64, 128, 3)
    assert torch.equal(preview[:, :, :64], images)
    assert torch.equal(preview[0, :, 64:], images[0])
    assert torch.equal(preview[1, :56, 64 + 16:], images[1, :56, 16:])
    # Unmatched cells: the image's own pixels, half-tinted magenta.
    torch.testing.assert_close(preview[1, 56:, 64:], 0.5 * images[1, 56:] + 0.5 * torch.tensor([1.0, 0.0, 1.0]))


def test_transfer_carries_the_reference_mask_onto_every_image(pack, shifted_pair):
    _, corr = shifted_pair
    mask = torch.zeros(1, 64, 64)
    mask[0, 24:40, 24:40] = 1.0
    masks = pack("nodes.transfer_points").transfer_mask(mask, corr)
    assert masks.shape == (2, 64, 64)
    assert torch.equal(masks[0], mask[0])
    expected = torch.zeros(64, 64)
    expected[16:32, 40:56] = 1.0
    assert torch.equal(masks[1], expected)


def test_transfer_node_refuses_a_mask_of_another_size(pack, shifted_pair):
    node = pack("nodes.transfer_points").EdichoTransferPoints
    with pytest.raises(ValueError, match="EdichoTransferPoints: the mask is 32x32 but the correspondence was built for 64x64"):
        node.execute(shifted_pair[1], torch.zeros(1, 32, 32), 0)


def test_transfer_node_grows_the_masks(pack, shifted_pair):
    node = pack("nodes.transfer_points").EdichoTransferPoints
    mask = torch.zeros(1, 64, 64)
    mask[0, 30, 30] = 1.0
    grown = node.execute(shifted_pair[1], mask, 2).result[0]
    assert grown[0].sum() == 25


def test_preview_node_refuses_images_that_are_not_the_correspondence_batch(pack, shifted_pair):
    node = pack("nodes.preview").EdichoCorrespondencePreview
    images, corr = shifted_pair
    with pytest.raises(ValueError, match="EdichoCorrespondencePreview: got 3 images of 64x64 but the correspondence was built for 2"):
        node.execute(torch.cat([images, images[:1]]), corr)


def dift(pack, batch=3, grid=(4, 4), latent=(8, 8)):
    features = torch.randn(batch, 16, *grid, generator=torch.Generator().manual_seed(2))
    return pack("nodes.types").DiftFeatures(features, (latent[0] * 8, latent[1] * 8), latent, 1, 261)


def test_matcher_matches_at_the_latent_grid(pack):
    corr = pack("nodes.matcher").EdichoMatcher.execute(dift(pack), 1, True, 0.0, 7).result[0]
    assert corr.grid == (8, 8) and corr.image_size == (64, 64) and corr.reference == 1
    assert corr.batch_size == 3 and not corr.valid[1].any()


@pytest.mark.parametrize("kwargs, message", [
    ({"reference": 3}, "EdichoMatcher: reference index 3 is out of range for a batch of 3 images"),
    ({"masks": torch.ones(2, 64, 64)}, "EdichoMatcher: got 2 masks for 3 images"),
])
def test_matcher_bad_input_names_the_node_and_the_fix(pack, kwargs, message):
    settings = {"reference": 0, "mutual": True, "min_similarity": 0.0, "chunk_size": 64} | kwargs
    with pytest.raises(ValueError, match=message):
        pack("nodes.matcher").EdichoMatcher.execute(dift(pack), **settings)


def test_matcher_masks_restrict_matching(pack):
    masks = torch.ones(3, 64, 64)
    masks[:, :, :32] = 0
    corr = pack("nodes.matcher").EdichoMatcher.execute(dift(pack), 0, False, -1.0, 64, masks=masks).result[0]
    valid_columns = (torch.arange(64) % 8)[corr.valid[1]]
    assert (valid_columns >= 4).all() and corr.valid[1].sum() == 32
    assert ((corr.index[1] % 8) >= 4).all()
