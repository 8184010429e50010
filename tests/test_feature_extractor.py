"""EdichoFeatureExtractor on the tiny SD1.x checkpoint, through the host's own model code."""
import importlib

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
    mean, _ = _extract(pack, sd15_parts, sample_images, ensemble=3, seed=5, per_call=1)
    single = fe.FeaturePass(model, vae, sample_images, fe.empty_conditioning(model), 261, 1)
    draws = [single(noise) for noise in fe.ensemble_noises(single.latent.shape, 3, 5)]
    assert torch.equal(mean, sum(draws) / 3)
    assert not torch.equal(draws[0], draws[1])


def report_room_for(monkeypatch, pack, model, draws):
    """Make the host's free-memory probe report room for `draws` draws of the sample group per UNet call."""
    import comfy.model_management as mm

    fe = pack("nodes.feature_extractor")
    # Weights already on the device: only the draws count (on a GPU the host would load them first).
    mm.load_models_gpu([model])
    free = int((draws + 0.5) * fe.MEMORY_MARGIN * model.memory_required([3, 4, 32, 32]) + mm.minimum_inference_memory())
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)


class CallLog:
    """The extractor's UNet calls (rows), interrupt checks and progress steps, in order."""

    def __init__(self, monkeypatch, pack):
        import comfy.model_management as mm

        fe = pack("nodes.feature_extractor")
        self.events = []
        original_call, original_check = fe.FeaturePass.__call__, mm.throw_exception_if_processing_interrupted

        def call(feature_pass, noise):
            self.events.append(("call", noise.shape[0]))
            return original_call(feature_pass, noise)

        def check():
            self.events.append(("check",))
            original_check()

        monkeypatch.setattr(fe.FeaturePass, "__call__", call)
        monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", check)

    def update(self, value):
        self.events.append(("progress", value))

    def calls(self):
        return [event[1] for event in self.events if event[0] == "call"]


# Batched draws vs one draw per call, float32 on the CPU: measured 1.0e-6 of the features' largest
# magnitude (the matrix kernels round differently for another batch size); the bound leaves 10x room.
BATCHING_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def one_draw_per_call(host, sd15_parts, sample_images):
    """Features of the sample group, ensemble 3, seed 3, one draw per UNet call (as before batching)."""
    fe = importlib.import_module(f"{host.pack_module.__name__}.nodes.feature_extractor")
    model, _, vae = sd15_parts
    return fe.extract_features(model, vae, sample_images, fe.empty_conditioning(model), 261, 1, 3, 3, per_call=1)[0]


# One draw per call is the computation before batching, bit for bit.
@pytest.mark.parametrize("room, calls, tolerance", [(8, [9], BATCHING_TOLERANCE), (2, [6, 3], BATCHING_TOLERANCE),
                                                    (0, [3, 3, 3], 0.0)])
def test_draws_are_batched_as_free_memory_allows(pack, sd15_parts, sample_images, one_draw_per_call, monkeypatch,
                                                   room, calls, tolerance):
    fe = pack("nodes.feature_extractor")
    model, _, vae = sd15_parts
    report_room_for(monkeypatch, pack, model, room)
    log = CallLog(monkeypatch, pack)
    features, _, _ = fe.extract_features(model, vae, sample_images, fe.empty_conditioning(model), 261, 1, 3, 3,
                                         progress=log)
    assert log.calls() == calls
    # Before each UNet call an interrupt check; after it one progress step counting its draws (the
    # host checks for interrupts inside the call too).
    outside = [event for event in log.events if event[0] != "check"]
    assert outside == [event for rows in calls for event in (("call", rows), ("progress", rows // 3))]
    starts = [i for i, event in enumerate(log.events) if event[0] == "call"]
    assert all(log.events[i - 1] == ("check",) for i in starts)
    assert (features - one_draw_per_call).abs().max() <= tolerance * one_draw_per_call.abs().max()


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
        _extract(pack, sd15_parts, sample_images, up_level=1, ensemble=2, per_call=1)
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
