"""Qwen-Image 2.1 (edit, turbo edit; ComfyUI >= 0.37) on upstream's own class at a reduced size (2 blocks of 2 heads
of 32), inside a stand-in for upstream's model base (ModelType FLUX), sampled by the host's sampler.

Corr-Attention acts on the target's attention call of each selected block only (queries on the target's tokens,
keys over the whole sequence) and equals a float64 Eq. 3-4 computation there, whether the prefix cache is off, being
filled (step 1) or read (later steps); text and reference segments, and the reference photo's rows, stay bit-identical
to the unpatched model; a cached run equals an uncached one bit for bit with both patches. Runs where the class can
run: a host that has it, or the 0.33.0 tree with the overlay (`reduced_qwen21`); skipped with the reason elsewhere
(0.3.75, no overlay).
"""
import dataclasses

import pytest
import torch

import reduced_qwen21
from patch_calls import AttentionRecorder, record_fusions
from patch_reference import corr_attention_reference, joint_corr_attention_reference, random_correspondence
from reduced_qwen21 import LATENT, TEXT

TOKENS = LATENT[0] * LATENT[1]
# [text | the photo's own reference | target]
SEQUENCE = TEXT + 2 * TOKENS
REFERENCE = 1
NODE = "EdichoAttentionWarp"


@pytest.fixture(scope="module")
def upstream_class(host_source):
    """The host's QwenImage21Transformer2DModel, or upstream's on the 0.33.0 tree with what that tree lacks added."""
    comfyui_path, _ = host_source
    reason = reduced_qwen21.why_not_runnable(comfyui_path)
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as monkeypatch:
        # 0.33.0 lacks them, upstream has them: args.disable_comfy_compiler and args.assert_graph_breaks (False),
        # pin_memory(tensor, evict_active=...). Undone when the module's tests end, like the overlay's modules.
        reduced_qwen21.add_missing_host_bits(monkeypatch)
        yield reduced_qwen21.upstream_class(comfyui_path, monkeypatch)


@pytest.fixture
def parts(upstream_class, pack):
    """(model, corr): the reduced model and a random correspondence on its token grid (reference photo 1)."""
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, REFERENCE, torch.Generator().manual_seed(41),
                                 image_size=(96, 80))
    return reduced_qwen21.qwen_image21(upstream_class), corr


class OverrideAbove:
    """Another pack's attention override set after Edicho's; records what came back from below (Edicho). With
    `answer` it computes the target calls itself instead, as BlockSparseAttention does on its sparse calls."""

    def __init__(self, below, answer=False):
        self.below = below
        self.answer = answer
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        q, k, v, heads = args[:4]
        out = func(*args, **kwargs) if self.answer and k.shape[1] == SEQUENCE else self.below(func, *args, **kwargs)
        options = kwargs["transformer_options"]
        self.calls.append({"block": (options["block_type"], options["block_index"]), "q": q, "k": k, "v": v,
                           "heads": heads, "out": out})
        return out


def with_override(model, override):
    """A clone of `model` with `override` as its attention override."""
    clone = model.clone()
    clone.model_options["transformer_options"]["optimized_attention_override"] = override
    return clone


def recorded(model, apply, answer=False):
    """`apply(clone)` between an AttentionRecorder below and an OverrideAbove on top: (patched, below, above)."""
    below = AttentionRecorder()
    patched = apply(with_override(model, below))
    above = OverrideAbove(patched.model_options["transformer_options"]["optimized_attention_override"], answer)
    return with_override(patched, above), below, above


def both_patches(pack, corr, layers="single", start=0.0, end=1.0):
    """model -> a clone with Corr-Attention (warp) on `layers` and Corr-CFG, both over [start, end]."""
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    return lambda m: fuser.apply_noise_fuser(warp.apply_attention_warp(m, corr, layers, start, end, 1.0, "warp"), corr,
                                             0.8, 0.9, start, end, 0, "literal")


def target_calls(calls, sequence=SEQUENCE):
    """The calls whose keys span the whole sequence: the target's."""
    return [c for c in calls if c["k"].shape[1] == sequence]


def reference_rows(call):
    """The reference photo's row in each of a call's two chunks (uncond, cond)."""
    rows = call["q"].shape[0]
    return torch.arange(REFERENCE, rows, rows // 2)


def test_the_family_its_blocks_default_and_layer_syntax(parts, pack):
    model, corr = parts
    family = pack("nodes.families").family_of(model, NODE)
    assert family.__name__.endswith("families.qwen_image21") and family.LATENT_RATIO == 16
    assert family.attention_layers(model) == [("single", 0), ("single", 1)]
    assert family.default_layers(model) == "single.1-1"
    full = reduced_qwen21.qwen_image21(type(model.model.diffusion_model), blocks=32)
    assert family.default_layers(full) == "single.16-31"
    warp = pack("nodes.attention_warp")
    with pytest.raises(ValueError, match=rf"{NODE}: layer selection 'double' is not understood\. Use a block name of "
                                         rf"this model \(single\)"):
        warp.apply_attention_warp(model, corr, "double", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=rf"{NODE}: layer selection 'single.7' matches no attention layer.*"
                                         rf"single\.0-1"):
        warp.apply_attention_warp(model, corr, "single.7", 0.0, 1.0, 1.0, "warp")


@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.parametrize("mode", ["warp", "share"])
def test_only_the_target_call_is_patched_and_it_is_eq_3_4(parts, pack, cache, mode):
    model, corr = parts
    if cache == "off":
        model = reduced_qwen21.without_prefix_cache(model)
    warp = pack("nodes.attention_warp")
    patched, below, above = recorded(model, lambda m: warp.apply_attention_warp(m, corr, "single.1", 0.0, 1.0, 1.0,
                                                                                mode))
    reduced_qwen21.sample_qwen21(patched, steps=3)

    # Per step and block (uncond and cond rows in one call): without the cache the text, reference and target
    # segments' calls; with it those at step 1, which fills it, then only the target's, which reads it.
    assert len(above.calls) == 2 * {"off": 3 + 3 + 3, "on": 3 + 1 + 1}[cache]
    targets = target_calls(above.calls)
    assert len(targets) == 2 * 3 and all(c["q"].shape[1] == TOKENS for c in targets)
    patched_calls = [c for c in targets if c["block"] == ("single", 1)]
    for call in above.calls:
        if not any(call is c for c in patched_calls):
            # Text and reference segments, and the unselected block: what the host computed, untouched.
            host = next(c for c in below.calls if c["q"] is call["q"] and c["k"] is call["k"])
            assert torch.equal(call["out"], host["out"])
    for call in patched_calls:
        if mode == "warp":
            q, k, v = (t.view(t.shape[0], t.shape[1], call["heads"], -1).transpose(1, 2)
                       for t in (call["q"], call["k"], call["v"]))
            expected = joint_corr_attention_reference(q, k, v, corr, 0)
        else:
            expected = corr_attention_reference(call["q"], call["k"], call["v"], corr, call["heads"], mode="share")
        torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)
    # share attends once more per patched call: the targets' queries to the reference's K/V.
    assert len(below.calls) == len(above.calls) + (len(patched_calls) if mode == "share" else 0)


def test_text_reference_segments_and_the_reference_photo_are_bit_identical_to_unpatched(parts, pack):
    # Uncached, each step recomputes text and reference segments: they never see the target, so they equal the
    # unpatched model's at every step however the targets are patched; the reference photo's rows too.
    model, corr = parts
    model = reduced_qwen21.without_prefix_cache(model)
    patched, _, mine = recorded(model, both_patches(pack, corr))
    plain, _, theirs = recorded(model, lambda m: m)
    reduced_qwen21.sample_qwen21(patched, steps=3)
    reduced_qwen21.sample_qwen21(plain, steps=3)
    assert len(mine.calls) == len(theirs.calls) == 2 * 3 * 3
    changed = 0
    for patched_call, plain_call in zip(mine.calls, theirs.calls):
        if patched_call["k"].shape[1] == SEQUENCE:
            rows = reference_rows(patched_call)
            assert torch.equal(patched_call["out"][rows], plain_call["out"][rows])
            changed += not torch.equal(patched_call["out"], plain_call["out"])
        else:
            assert torch.equal(patched_call["out"], plain_call["out"])
    assert changed == 2 * 3


def test_a_cached_run_equals_an_uncached_one_bit_for_bit_with_both_patches(parts, pack, monkeypatch):
    model, corr = parts
    fused = record_fusions(monkeypatch, pack)
    cached_calls, uncached_calls = AttentionRecorder(), AttentionRecorder()
    cached = both_patches(pack, corr)(with_override(model, cached_calls))
    uncached = both_patches(pack, corr)(with_override(reduced_qwen21.without_prefix_cache(model), uncached_calls))
    out = reduced_qwen21.sample_qwen21(cached, steps=4, refs=2)
    assert torch.equal(out, reduced_qwen21.sample_qwen21(uncached, steps=4, refs=2))
    # [text | ref | ref | target]: 4 segments per block and step uncached; cached the target's alone after step 1.
    assert len(uncached_calls.calls) == 2 * 4 * 4 and len(cached_calls.calls) == 2 * (4 + 1 + 1 + 1)
    # Corr-CFG on 3 of the 4 steps (the first is at sigma 1), in both runs.
    assert fused == [(3, 64, *LATENT)] * 6
    assert not torch.equal(out, reduced_qwen21.sample_qwen21(model, steps=4, refs=2))


def test_each_photo_its_own_references_of_another_size(parts, pack):
    model, corr = parts
    patched, _, above = recorded(model, both_patches(pack, corr, "auto"))
    reduced_qwen21.sample_qwen21(patched, steps=2, refs=2, ref_latent=(4, 4))
    sequence = TEXT + 2 * 16 + TOKENS
    assert [c["block"] for c in target_calls(above.calls, sequence)] == [("single", 0), ("single", 1)] * 2
    # The reference segments' keys differ per photo (each row its own photo), the same in cond and uncond.
    first_reference = next(c for c in above.calls if c["q"].shape[1] == 16)
    keys = first_reference["k"][:, -16:]
    assert not torch.equal(keys[0], keys[1]) and torch.equal(keys[:3], keys[3:])


def test_outside_the_step_range_sampling_is_bit_identical(parts, pack):
    model, corr = parts
    assert torch.equal(reduced_qwen21.sample_qwen21(both_patches(pack, corr, "single", 0.9, 0.95)(model), steps=3),
                       reduced_qwen21.sample_qwen21(model, steps=3))
    assert not torch.equal(reduced_qwen21.sample_qwen21(both_patches(pack, corr, "single")(model), steps=3),
                           reduced_qwen21.sample_qwen21(model, steps=3))


def test_noise_fuser_works_in_flow_space_and_does_nothing_at_cfg_one(parts, pack, monkeypatch):
    model, corr = parts
    patched = pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    assert patched.model_options["sampler_pre_cfg_function"][-1].flow
    fused = record_fusions(monkeypatch, pack)
    assert torch.equal(reduced_qwen21.sample_qwen21(patched, cfg=1.0), reduced_qwen21.sample_qwen21(model, cfg=1.0))
    assert fused == []
    assert not torch.equal(reduced_qwen21.sample_qwen21(patched, steps=3), reduced_qwen21.sample_qwen21(model, steps=3))
    assert fused == [(3, 64, *LATENT)] * 2


def test_an_override_above_that_answers_the_target_calls_itself_is_a_clear_error(parts, pack):
    model, corr = parts
    warp = pack("nodes.attention_warp")
    patched, _, _ = recorded(model, lambda m: warp.apply_attention_warp(m, corr, "single", 0.0, 1.0, 1.0, "warp"),
                             answer=True)
    with pytest.raises(RuntimeError, match=rf"{NODE}: Corr-Attention did not reach the target attention of "
                                           rf"single\.0-1 in this step.*BlockSparseAttention.*dense_blocks"):
        reduced_qwen21.sample_qwen21(patched)


def test_two_attention_warps_on_one_model_each_patch_their_own_blocks_and_range(parts, pack):
    model, corr = parts
    warp = pack("nodes.attention_warp")
    patched, below, above = recorded(model, lambda m: warp.apply_attention_warp(
        warp.apply_attention_warp(m, corr, "single.0", 0.0, 1.0, 1.0, "warp"), corr, "single.1", 0.9, 0.95, 1.0,
        "warp"))
    reduced_qwen21.sample_qwen21(patched, steps=2)
    changed = [not torch.equal(c["out"], next(h for h in below.calls if h["q"] is c["q"])["out"])
               for c in target_calls(above.calls)]
    # Block 0 on both steps; block 1's range (0.9-0.95) holds no step.
    assert changed == [True, False, True, False]


def test_a_latent_or_correspondence_for_other_images_is_a_clear_error(parts, pack):
    model, corr = parts
    warp = pack("nodes.attention_warp")
    patched = warp.apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=rf"{NODE}: the correspondence was built for a 5x6 latent \(80x96 px images\) "
                                         rf"but the sampler runs 3x6"):
        reduced_qwen21.sample_qwen21(patched, latent=(6, 3))
    with pytest.raises(ValueError, match=rf"{NODE}: the sampler runs a batch of 2 latents.*3 images"):
        reduced_qwen21.sample_qwen21(patched, batch=2)
    with pytest.raises(ValueError, match=rf"{NODE}: Qwen-Image 2.1 is sampling a latent of shape \[6, 64, 1, 6, 5\].*"
                                         rf"4-D latent \[B, 64, h, w\]"):
        reduced_qwen21.sample_qwen21(patched, frames=1, refs=0)
    odd = dataclasses.replace(corr, image_size=(100, 80))
    with pytest.raises(ValueError, match=rf"{NODE}: QwenImage21 encodes 16x16 px per latent cell, but the "
                                         rf"correspondence was built from 80x100 px images"):
        warp.apply_attention_warp(model, odd, "auto", 0.0, 1.0, 1.0, "warp")
