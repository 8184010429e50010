"""Every UNet family end to end on its tiny real-layout checkpoint: SD1.x, SD2.x (eps and v) and
SDXL are detected by the host as themselves, extract features at DIFT's resolution, and sample a
non-square batch of 3 with both patches on exactly the decoder self-attention layers."""
import pytest
import torch

import runner
import tiny_checkpoints
from graphs import edicho_img2img
from patch_calls import count_corr_attention_calls

FAMILIES = ["sd15", "sd2", "sd2-v", "sdxl"]
WIDTH, HEIGHT = 320, 192  # 5:3, not a power of two on any grid
PREDICTION = {"sd15": "EPS", "sd2": "EPS", "sd2-v": "V_PREDICTION", "sdxl": "EPS"}

# Decoder blocks with self-attention and the image side / grid side they run at (HOST.md's
# table for SDXL and SD2.x; the tiny SD1.x keeps attention on its two middle levels only).
DECODER_SCALE = {
    "sd15": {2: 32, 3: 32, 4: 16, 5: 16},
    "sd2": {3: 32, 4: 32, 5: 32, 6: 16, 7: 16, 8: 16, 9: 8, 10: 8, 11: 8},
    "sdxl": {0: 32, 1: 32, 2: 32, 3: 16, 4: 16, 5: 16},
}
DECODER_SCALE["sd2-v"] = DECODER_SCALE["sd2"]


def _assert_every_layer_ran(counts, expected_layers, steps):
    """Exactly the expected (block, id, depth, tokens) ran, each once per model call: the host sends
    cond and uncond in one call per step, or in two when memory is short."""
    assert set(counts) == set(expected_layers)
    assert len(set(counts.values())) == 1 and next(iter(counts.values())) in (steps, 2 * steps), counts


def _graph(ckpt, files, size=(WIDTH, HEIGHT), steps=2, **kw):
    return edicho_img2img(ckpt, files, steps=steps, size=size, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_by_the_host_loader(host, tiny_checkpoint, family):
    import comfy.sd
    import folder_paths

    model, clip, _ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", tiny_checkpoint(family)))[:3]
    assert type(model.model.model_config).__name__ == tiny_checkpoints.FAMILIES[family]["expected_model_type"]
    assert model.model.model_type.name == PREDICTION[family]
    cond, extra = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert torch.isfinite(cond).all() and torch.isfinite(extra).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_extractor_auto_level_is_one_sixteenth_of_a_non_square_image(host, tiny_checkpoint, sample_files, family):
    graph = _graph(tiny_checkpoint(family), sample_files)
    result = runner.run_graph({k: graph[k] for k in ("load_a", "load_b", "load_c", "reference_crop", "images", "ckpt",
                                                     "empty_prompt", "features", "correspondence", "preview",
                                                     "save_preview")})
    features = result.output("features")
    assert features.latent_grid == (HEIGHT // 8, WIDTH // 8)
    assert tuple(features.features.shape[-2:]) == (HEIGHT // 16, WIDTH // 16)
    assert features.up_level == (0 if family == "sdxl" else 1)
    assert torch.isfinite(features.features).all()
    assert result.output("preview").shape == (3, HEIGHT, 2 * WIDTH, 3)


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f.startswith("sd2") else f
                                    for f in FAMILIES])
def test_both_patches_run_on_every_decoder_self_attention_layer(host, tiny_checkpoint, sample_files, pack,
                                                                monkeypatch, family):
    counts = count_corr_attention_calls(monkeypatch, pack)
    result = runner.run_graph(_graph(tiny_checkpoint(family), sample_files))
    edited = result.output("decode")
    assert edited.shape == (3, HEIGHT, WIDTH, 3)
    assert torch.isfinite(edited).all()
    assert not torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])
    unet = result.output("ckpt", 0).model.diffusion_model
    layers = pack("nodes.families.unet").self_attention_layers(unet)
    expected = [(block, block_id, depth, (HEIGHT // DECODER_SCALE[family][block_id]) * (WIDTH // DECODER_SCALE[family][block_id]))
                for block, block_id, depth in layers if block == "output"]
    _assert_every_layer_ran(counts, expected, steps=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the host's own sampling is not bit-reproducible from "
                    "one call to the next (fp16, cuDNN), so bit-identity is checked on the CPU")
@pytest.mark.parametrize("family", ["sd2-v", pytest.param("sdxl", marks=pytest.mark.slow)])
def test_outside_the_step_range_sampling_is_bit_identical_to_unpatched(host, tiny_checkpoint, sample_files, family):
    result = runner.run_graph(_graph(tiny_checkpoint(family), sample_files, start_percent=1.0, end_percent=1.0))
    assert torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


@pytest.mark.slow
def test_sdxl_at_one_of_its_own_sizes_patches_its_38x26_and_76x52_grids(host, tiny_checkpoint, sample_files, pack,
                                                                        monkeypatch):
    counts = count_corr_attention_calls(monkeypatch, pack)
    result = runner.run_graph(_graph(tiny_checkpoint("sdxl"), sample_files, size=(1216, 832), steps=1,
                                     start_percent=0.0, end_percent=1.0))
    assert result.output("decode").shape == (3, 832, 1216, 3)
    tokens = {1216 // 32 * (832 // 32): [0, 1, 2], 1216 // 16 * (832 // 16): [3, 4, 5]}
    _assert_every_layer_ran(counts, [("output", block_id, depth, n) for n, blocks in tokens.items()
                                     for block_id in blocks for depth in range(2 if block_id < 3 else 1)], steps=1)
