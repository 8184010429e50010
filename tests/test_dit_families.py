"""What every DiT family (Flux.1, FLUX.2, Qwen-Image, SD3) must do, on the hosts' own classes at a reduced
size: chain another pack's attention override, stay bit-identical outside the step range, fuse the
unconditional prediction in the flow's eps space (nothing at cfg 1), take its own block syntax,
and stop with a clear error on a correspondence for other images."""
import pytest
import torch

import reduced_dits
from patch_calls import AttentionRecorder, record_fusions
from patch_reference import random_correspondence

NAMES = sorted(reduced_dits.FAMILIES)


@pytest.fixture(params=NAMES)
def dit(request, host, pack):
    """(name, model, sample, corr): a reduced DiT, its sampling call and a random correspondence on its latent."""
    build, sample = reduced_dits.FAMILIES[request.param]
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, reduced_dits.LATENT, 1, torch.Generator().manual_seed(40),
                                 image_size=(96, 80))
    return request.param, build(), sample, corr


# Attention calls of 2 sampling steps with Corr-Attention in share mode on the default blocks: every attention
# once per step, plus share's second call (the reference's K/V) on each default block. Flux: 4 blocks at cfg 1,
# auto = 2 single blocks (FLUX.2 too); Qwen-Image: 2 blocks, auto = block 1; SD3: block 0's joint attention and
# attn2, block 1's joint attention, auto = block 1.
SHARE_CALLS = {"flux": 2 * 4 + 2 * 2, "flux2": 2 * 4 + 2 * 2, "qwen-image": 2 * 2 + 2, "sd3": 2 * 3 + 2}


def test_another_attention_override_still_runs_on_every_call(dit, pack):
    name, model, sample, corr = dit
    base = model.clone()
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    sample(pack("nodes.attention_warp").apply_attention_warp(base, corr, "auto", 0.0, 1.0, 1.0, "share"))
    assert len(recorder.calls) == SHARE_CALLS[name]
    assert base.model_options["transformer_options"]["optimized_attention_override"] is recorder


def test_outside_the_step_range_sampling_is_bit_identical(dit, pack):
    _, model, sample, corr = dit
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    every = ", ".join(dict.fromkeys(key[0] for key in pack("nodes.families").family_of(model, "x").attention_layers(model)))
    patched = warp.apply_attention_warp(model, corr, every, 0.9, 0.95, 1.0, "warp")
    patched = fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.9, 0.95, 0, "literal")
    assert torch.equal(sample(patched, cfg=2.0), sample(model, cfg=2.0))
    inside = warp.apply_attention_warp(model, corr, every, 0.0, 1.0, 1.0, "warp")
    assert not torch.equal(sample(inside), sample(model))


def test_noise_fuser_works_in_flow_space_and_does_nothing_at_cfg_one(dit, pack, monkeypatch):
    name, model, sample, corr = dit
    fuser = pack("nodes.noise_fuser")
    patched = fuser.apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    assert patched.model_options["sampler_pre_cfg_function"][-1].flow
    fused = record_fusions(monkeypatch, pack)
    assert torch.equal(sample(patched, cfg=1.0), sample(model, cfg=1.0))
    assert fused == []
    assert not torch.equal(sample(patched, steps=3, cfg=2.0), sample(model, steps=3, cfg=2.0))
    # The first of 3 steps is at sigma 1 (pure noise: no x0 to recover from a fused eps). Qwen-Image's latent is 5-D.
    assert fused == [(3, *reduced_dits.LATENT_SHAPES[name])] * 2


LAYER_NAMES = {"flux": "double, single", "flux2": "double, single", "qwen-image": "double", "sd3": "double"}
MODULES = {"flux": "families.flux", "flux2": "families.flux2", "qwen-image": "families.qwen_image", "sd3": "families.sd3"}
DEFAULT_LAYERS = {"flux": "single", "flux2": "single", "qwen-image": "double.1-1", "sd3": "double.1-1"}


def test_default_layers_and_layer_syntax(dit, pack):
    name, model, _, corr = dit
    family = pack("nodes.families").family_of(model, "EdichoAttentionWarp")
    assert family.__name__.endswith(MODULES[name])
    assert family.default_layers(model) == DEFAULT_LAYERS[name]
    warp = pack("nodes.attention_warp")
    with pytest.raises(ValueError, match=rf"EdichoAttentionWarp: layer selection 'output' is not understood\. Use a block "
                                         rf"name of this model \({LAYER_NAMES[name]}\)"):
        warp.apply_attention_warp(model, corr, "output", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: layer selection 'double.7' matches no attention layer.*double\.0-1"):
        warp.apply_attention_warp(model, corr, "double.7", 0.0, 1.0, 1.0, "warp")


def narrower(name):
    """(a latent 2 cells narrower than the family's for 96x80 px, the error's regex for it)."""
    h, w = reduced_dits.LATENT_SHAPES[name][-2:]
    return (h, w - 2), rf"the correspondence was built for a {w}x{h} latent.*runs {w - 2}x{h}"


def test_correspondence_for_other_images_is_a_clear_error(dit, pack):
    name, model, sample, corr = dit
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    latent, message = narrower(name)
    with pytest.raises(ValueError, match=rf"EdichoAttentionWarp: {message}"):
        sample(patched, latent=latent)
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: the sampler runs a batch of 2 latents.*3 images"):
        sample(patched, batch=2)
    fused = pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    with pytest.raises(ValueError, match=r"EdichoNoiseFuser: the sampler runs a batch of 2 latents"):
        sample(fused, batch=2, steps=3, cfg=2.0)


@pytest.mark.parametrize("node", ["attention_warp", "noise_fuser"])
def test_a_wrong_batch_or_size_stops_at_the_first_model_call_before_the_range_starts(dit, pack, node):
    name, model, sample, corr = dit
    if node == "attention_warp":
        patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.6, 1.0, 1.0, "warp")
    else:
        patched = pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.6, 1.0, 0, "literal")
    forwards = []
    hook = patched.model.diffusion_model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        latent, message = narrower(name)
        with pytest.raises(ValueError, match=message):
            sample(patched, latent=latent, steps=4, cfg=2.0)
        with pytest.raises(ValueError, match=r"the sampler runs a batch of 2 latents"):
            sample(patched, batch=2, steps=4, cfg=2.0)
        assert forwards == []
        sample(patched, steps=2, cfg=2.0)
        assert forwards
    finally:
        hook.remove()
