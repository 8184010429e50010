"""Qwen-Image(-Edit): Corr-Attention as the gather of the reference's attention output on the image
tokens (exactly Eq. 3-4 with warped post-RoPE queries and the reference's K/V), edit-reference tokens
untouched, Corr-CFG in flow eps space on 5-D latents, chaining and clear errors.

The host's loader fixes Qwen-Image's width (3072) and text width (3584), so most tests build the
host's own class at a reduced size (real code, not loader-detected); the loader-detected smallest
checkpoint is exercised by tests/test_tiny_dit_checkpoints.py.
"""
import inspect
import math
from collections import Counter

import pytest
import torch

from patch_calls import AttentionRecorder, record_gathers
from patch_reference import joint_corr_attention_reference, random_correspondence

LATENT = (12, 10)  # Qwen tokens 6x5: not square
TEXT = 6


def reduced_qwen(text_width=32, ref_method=None):
    """The host's QwenImage model class at a reduced size: 2 blocks, 2 heads of 16."""
    import comfy.ldm.qwen_image.model
    import comfy.model_patcher
    import comfy.supported_models

    config = {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2,
              "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": text_width,
              "axes_dims_rope": (4, 6, 6)}
    if ref_method is not None:
        params = inspect.signature(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel).parameters
        if "default_ref_method" not in params:
            pytest.skip(f"this host's Qwen-Image has no reference method {ref_method!r} (Qwen-Image-Edit 2511)")
        config["default_ref_method"] = ref_method
    torch.manual_seed(0)
    model = comfy.supported_models.QwenImage(config).get_model({})
    for _, param in model.diffusion_model.named_parameters():
        param.data = torch.randn(param.shape) / math.sqrt(param.shape[-1]) if param.ndim > 1 else torch.zeros(param.shape)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def sample_reduced(model, batch=3, latent=LATENT, frames=1, steps=2, cfg=2.0, refs=1):
    """Sample a 5-D latent with `refs` edit references per photo (each photo's own, as ReferenceLatent gives)."""
    import comfy.sample

    gen = torch.Generator().manual_seed(5)
    extra = {"reference_latents": [torch.randn(batch, 16, 1, *latent, generator=gen) for _ in range(refs)]} if refs else {}
    positive = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), dict(extra)]]
    noise = torch.randn(batch, 16, frames, *latent, generator=gen)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros_like(noise),
                               disable_pbar=True, seed=5)


@pytest.fixture
def qwen_parts(host, pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 1, torch.Generator().manual_seed(41), image_size=(96, 80))
    return reduced_qwen(), corr


@pytest.mark.parametrize("ref_method", [None, "index_timestep_zero"], ids=["edit-2509", "edit-2511"])
def test_warp_is_the_reference_attention_output_at_the_match(host, pack, monkeypatch, ref_method):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 1, torch.Generator().manual_seed(41), image_size=(96, 80))
    base = reduced_qwen(ref_method=ref_method)
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.1", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    sample_reduced(patched)

    active = [c for c in recorder.calls if c["block"] == ("double", 1)]
    # 2 steps x block 1, cond and uncond in one call; every block runs once per step.
    assert len(active) == len(results) == 2
    assert Counter(c["block"] for c in recorder.calls) == Counter({("double", 0): 2, ("double", 1): 2})
    resized = pack("kernels.correspondence").resize_correspondence(corr, (6, 5))
    for call, (out, result, start, count) in zip(active, results):
        assert call["layout"] == (TEXT, (6, 5)) and (start, count) == (TEXT, 30)
        # [text | image | edit reference]: the reference photo's 30 tokens follow the image's.
        assert out.shape[:2] == (6, TEXT + 2 * count)
        expected = joint_corr_attention_reference(call["q"], call["k"], call["v"], resized, start)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(result[:, start + count:], out[:, start + count:])
        assert torch.equal(result[:, :start], out[:, :start])


def test_several_edit_references_are_all_left_alone(qwen_parts, pack, monkeypatch):
    model, corr = qwen_parts
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    sample_reduced(patched, refs=2)
    assert len(results) == 2  # auto = the second half: block 1 of 2
    for out, result, start, count in results:
        assert out.shape[1] == start + 3 * count
        assert torch.equal(result[:, start + count:], out[:, start + count:])
        assert not torch.equal(result[:, start:start + count], out[:, start:start + count])


def test_another_attention_override_still_runs_on_every_call(qwen_parts, pack):
    model, corr = qwen_parts
    base = model.clone()
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double", 0.0, 1.0, 1.0, "share")
    sample_reduced(patched)
    # 2 blocks x 2 steps, plus the share mode's second call with the reference's K/V on each.
    assert len(recorder.calls) == 4 + 4
    assert base.model_options["transformer_options"]["optimized_attention_override"] is recorder


def test_outside_the_step_range_sampling_is_bit_identical(qwen_parts, pack):
    model, corr = qwen_parts
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    patched = warp.apply_attention_warp(model, corr, "double", 0.9, 0.95, 1.0, "warp")
    patched = fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.9, 0.95, 0, "literal")
    assert torch.equal(sample_reduced(patched), sample_reduced(model))
    inside = warp.apply_attention_warp(model, corr, "double", 0.0, 1.0, 1.0, "warp")
    assert not torch.equal(sample_reduced(inside), sample_reduced(model))


def test_noise_fuser_fuses_the_5d_latent_in_flow_space(qwen_parts, pack, monkeypatch):
    model, corr = qwen_parts
    fuser = pack("nodes.noise_fuser")
    patched = fuser.apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    assert patched.model_options["sampler_pre_cfg_function"][-1].flow
    fused = []
    fuse = fuser.fuse_uncond_eps
    monkeypatch.setattr(fuser, "fuse_uncond_eps", lambda *a: fused.append(a[0].shape) or fuse(*a))
    assert not torch.equal(sample_reduced(patched, steps=3), sample_reduced(model, steps=3))
    # The first of 3 steps is at sigma 1 (pure noise: no x0 to recover from a fused eps).
    assert fused == [(3, 16, 1, *LATENT)] * 2


def test_default_layers_are_the_second_half_of_the_blocks(qwen_parts, pack):
    model, corr = qwen_parts
    family = pack("nodes.family_qwen_image")
    assert pack("nodes.families").family_of(model, "EdichoAttentionWarp") is family
    assert family.default_layers(model) == "double.1-1"
    keys = pack("nodes.layer_selection").parse_layers(family.default_layers(model), family.attention_layers(model), "x")
    assert keys == [("double", 1)]


@pytest.mark.parametrize("layers, message", [
    ("single", r"EdichoAttentionWarp: layer selection 'single' is not understood\. Use a block name of this model \(double\)"),
    ("double.2", r"EdichoAttentionWarp: layer selection 'double.2' matches no attention layer.*double\.0-1"),
])
def test_layer_syntax_errors_are_clear(qwen_parts, pack, layers, message):
    model, corr = qwen_parts
    with pytest.raises(ValueError, match=message):
        pack("nodes.attention_warp").apply_attention_warp(model, corr, layers, 0.0, 1.0, 1.0, "warp")


def test_mismatched_correspondence_or_frames_are_clear_errors(qwen_parts, pack):
    model, corr = qwen_parts
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: the correspondence was built for a 10x12 latent.*runs 8x12"):
        sample_reduced(patched, latent=(12, 8))
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: the sampler runs a batch of 2 latents.*3 images"):
        sample_reduced(patched, batch=2)
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: Qwen-Image is sampling a latent of shape \[6, 16, 2, 12, 10\].*one frame"):
        sample_reduced(patched, frames=2, refs=0)
    fused = pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    with pytest.raises(ValueError, match=r"EdichoNoiseFuser: the sampler runs a batch of 2 latents"):
        sample_reduced(fused, batch=2, steps=3)
