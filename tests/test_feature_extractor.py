"""EdichoFeatureExtractor on the tiny SD1.x checkpoint, through the host's own model code."""
import pytest
import torch

import runner


def _extract(pack, parts, images, **kw):
    fe = pack("nodes.feature_extractor")
    model, _, vae = parts
    settings = dict(timestep=261, up_level=1, ensemble=1, seed=0) | kw
    features, latent_grid, _ = fe.extract_features(model, vae, images, fe.empty_conditioning(model), **settings)
    return features, latent_grid


@pytest.mark.parametrize("up_level, side", [(0, 8), (1, 16), (2, 32)])
def test_grid_is_the_decoder_level_size(pack, sd15_parts, sample_images, up_level, side):
    features, latent_grid = _extract(pack, sd15_parts, sample_images, up_level=up_level)
    assert latent_grid == (32, 32)
    assert features.shape == (3, 320, side, side)
    assert torch.isfinite(features).all()


def test_auto_level_is_dift_level_one_on_sd1(pack, sd15_parts, sample_images):
    fe = pack("nodes.feature_extractor")
    model, _, vae = sd15_parts
    features, _, level = fe.extract_features(model, vae, sample_images, fe.empty_conditioning(model), 261, fe.AUTO, 1, 0)
    assert level == 1
    torch.testing.assert_close(features, _extract(pack, sd15_parts, sample_images, up_level=1)[0], rtol=0, atol=0)


def test_ensemble_mean_is_the_mean_of_single_draws(pack, sd15_parts, sample_images):
    fe = pack("nodes.feature_extractor")
    model, _, vae = sd15_parts
    mean, _ = _extract(pack, sd15_parts, sample_images, ensemble=3, seed=5)
    single = fe.FeaturePass(model, vae, sample_images, fe.empty_conditioning(model), 261, 1)
    draws = [single(noise) for noise in fe.ensemble_noises(single.latent.shape, 3, 5)]
    torch.testing.assert_close(mean, sum(draws) / 3, rtol=0, atol=1e-6)
    assert not torch.equal(draws[0], draws[1])


def test_same_seed_same_features_other_seed_other_features(pack, sd15_parts, sample_images):
    a, _ = _extract(pack, sd15_parts, sample_images, seed=1)
    b, _ = _extract(pack, sd15_parts, sample_images, seed=1)
    c, _ = _extract(pack, sd15_parts, sample_images, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_blocks_after_the_chosen_one_never_run(pack, sd15_parts, sample_images):
    model = sd15_parts[0]
    unet = model.model.diffusion_model
    calls = [0] * len(unet.output_blocks)
    # The host runs a block's layers one by one (forward_timestep_embed), so hook each block's first layer.
    hooks = [block[0].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, block in enumerate(unet.output_blocks)]
    try:
        _extract(pack, sd15_parts, sample_images, up_level=1, ensemble=2)
    finally:
        for hook in hooks:
            hook.remove()
    # Tiny SD1.x: 2 output blocks per level; level 1's output enters block 4.
    assert calls == [2, 2, 2, 2, 0, 0, 0, 0]


def test_batch_of_one_is_refused_with_a_fix(host, tiny_sd15):
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "features": {"class_type": "EdichoFeatureExtractor", "inputs": {
            "model": ["ckpt", 0], "vae": ["ckpt", 2], "images": ["img", 0], "timestep": 261, "up_level": 1,
            "ensemble": 1, "seed": 0}},
        "corr": {"class_type": "EdichoMatcher", "inputs": {"features": ["features", 0], "reference": 0,
                                                           "mutual": True, "min_similarity": 0.0, "chunk_size": 1024}},
        "preview": {"class_type": "EdichoCorrespondencePreview", "inputs": {"images": ["img", 0], "correspondence": ["corr", 0]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["preview", 0]}},
    }
    with pytest.raises(runner.GraphError) as err:
        runner.run_graph(graph)
    message = str(err.value)
    assert "EdichoFeatureExtractor" in message and "at least 2" in message
