"""Corr-Attention: exact math against a plain computation, invariants, the packed and the gather path
in real sampling, chaining, errors."""
from collections import Counter

import pytest
import torch

from patch_reference import corr_attention_reference, random_correspondence

# (heads, dim_head): SD1.x decoder layers use 8 heads; SDXL uses 64-wide heads (10 or 20 of them).
HEAD_CONFIGS = [(8, 40), (10, 64)]


def extra_options(rows, grid, chunks, heads, dim, sigma=5.0, latent_grid=None):
    return {
        "n_heads": heads, "dim_head": dim, "attn_precision": None,
        "cond_or_uncond": [1, 0, 0][:chunks] if chunks <= 3 else [0] * chunks,
        "sigmas": torch.full((rows,), sigma),
        "activations_shape": [rows, heads * dim, *grid],
        "original_shape": [rows, 4, *(latent_grid or grid)],
    }


def make_patch(pack, corr, strength=1.0, mode="warp", sigma_range=(10.0, 1.0), inner=None):
    unet_family = pack("nodes.families.unet")
    support = pack("nodes.families.patch_support")
    steps = pack("nodes.step_range")
    gate = steps.StepGate(steps.StepRange(*sigma_range))
    return unet_family.CorrAttentionPatch(support.CorrespondenceOnDevice(corr), gate, strength, mode, "EdichoAttentionWarp", inner=inner)


@pytest.mark.parametrize("heads, dim", HEAD_CONFIGS)
@pytest.mark.parametrize("reference", [0, 2])
@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("mode", ["warp", "share"])
def test_patched_attention_equals_plain_computation(pack, heads, dim, reference, chunks, mode):
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(100 * reference + chunks)
    batch, grid = 3, (4, 6)
    corr = random_correspondence(Correspondence, batch, grid, reference, gen)
    rows, n = chunks * batch, grid[0] * grid[1]
    q, k, v = (torch.randn(rows, n, heads * dim, generator=gen) for _ in range(3))
    out = make_patch(pack, corr, mode=mode)(q, k, v, extra_options(rows, grid, chunks, heads, dim))
    expected = corr_attention_reference(q, k, v, corr, heads, mode=mode)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_layer_grid_coarser_than_the_correspondence_uses_the_resized_one(pack):
    kc = pack("kernels.correspondence")
    gen = torch.Generator().manual_seed(3)
    corr = random_correspondence(kc.Correspondence, 2, (8, 8), 0, gen)
    layer_grid = (4, 4)
    q, k, v = (torch.randn(4, 16, 16, generator=gen) for _ in range(3))
    out = make_patch(pack, corr)(q, k, v, extra_options(4, layer_grid, 2, 2, 8, latent_grid=(8, 8)))
    expected = corr_attention_reference(q, k, v, kc.resize_correspondence(corr, layer_grid), 2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma, strength", [(20.0, 1.0), (0.5, 1.0), (5.0, 0.0)])
def test_outside_the_range_or_at_strength_zero_it_is_the_host_attention_bit_for_bit(pack, sigma, strength):
    unet_family = pack("nodes.families.unet")
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(4)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    q, k, v = (torch.randn(6, 16, 64, generator=gen) for _ in range(3))
    options = extra_options(6, (4, 4), 2, 8, 8, sigma=sigma)
    out = make_patch(pack, corr, strength=strength)(q, k, v, options)
    assert torch.equal(out, unet_family.host_attention(q, k, v, options))


def test_strength_blends_linearly_with_the_unpatched_output(pack):
    unet_family = pack("nodes.families.unet")
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(5)
    corr = random_correspondence(Correspondence, 3, (4, 4), 1, gen)
    q, k, v = (torch.randn(6, 16, 64, generator=gen) for _ in range(3))
    options = extra_options(6, (4, 4), 2, 8, 8)
    full = make_patch(pack, corr)(q, k, v, options)
    half = make_patch(pack, corr, strength=0.5)(q, k, v, options)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * unet_family.host_attention(q, k, v, options))


def test_an_existing_replace_is_wrapped_and_receives_the_warped_inputs(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr_attention_inputs = pack("kernels.corr_attention").corr_attention_inputs
    gen = torch.Generator().manual_seed(6)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    q, k, v = (torch.randn(6, 16, 64, generator=gen) for _ in range(3))
    seen = []

    def other_pack(q_, k_, v_, options):
        seen.append((q_, k_, v_))
        return q_ * 2

    out = make_patch(pack, corr, inner=other_pack)(q, k, v, extra_options(6, (4, 4), 2, 8, 8))
    q2, k2, v2 = corr_attention_inputs(q, k, v, corr, mode="warp")
    assert len(seen) == 1
    assert torch.equal(seen[0][0], q2) and torch.equal(seen[0][1], k2) and torch.equal(seen[0][2], v2)
    assert torch.equal(out, q2 * 2)


def run_sampling_check(pack, corr, x, chunks, node="EdichoAttentionWarp"):
    """The model-call check both patches set, on latent `x` with `chunks` cond/uncond chunks; what the model ran."""
    ran = []
    check = pack("nodes.families.patch_support").SamplingCheck(corr, node)
    check(lambda *args, **kwargs: ran.append(args[0].shape), x, torch.ones(x.shape[0]), None, None, None,
          {"cond_or_uncond": [1, 0][:chunks]})
    return ran


def test_a_batch_that_is_not_the_correspondence_batch_is_a_clear_error(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, torch.Generator().manual_seed(7))
    assert run_sampling_check(pack, corr, torch.randn(6, 4, 4, 4), 2) == [(6, 4, 4, 4)]
    with pytest.raises(ValueError, match="EdichoAttentionWarp.*batch of 2 latents.*3 images") as error:
        run_sampling_check(pack, corr, torch.randn(4, 4, 4, 4), 2)
    # The video-VAE hint is for 5-D latents only.
    assert "Edicho Encode Photos" not in str(error.value)
    with pytest.raises(ValueError, match="EdichoNoiseFuser.*batch of 1 latents.*Edicho Encode Photos"):
        run_sampling_check(pack, corr, torch.randn(1, 16, 3, 4, 4), 1, node="EdichoNoiseFuser")


def test_a_correspondence_for_another_resolution_is_a_clear_error(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="EdichoAttentionWarp.*built for a 4x4 latent.*Rebuild"):
        run_sampling_check(pack, corr, torch.randn(6, 4, 8, 8), 2)


def test_layer_selection_parses_and_refuses_clearly(pack, sd15_parts):
    layout = pack("nodes.families.unet")
    parse = pack("nodes.families.layer_selection").parse_layers
    available = layout.self_attention_layers(sd15_parts[0].model.diffusion_model)
    assert parse("output", available, "N") == [k for k in available if k[0] == "output"]
    assert [k[1] for k in parse("output.3-4, middle", available, "N")] == [0, 3, 4]
    with pytest.raises(ValueError, match="N: layer selection 'decoder' is not understood"):
        parse("decoder", available, "N")
    with pytest.raises(ValueError, match="matches no attention layer.*output.2"):
        parse("output.7", available, "N")


@pytest.fixture(scope="module")
def conds(sd15_parts):
    clip = sd15_parts[1]
    return (clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat")),
            clip.encode_from_tokens_scheduled(clip.tokenize("")))


def sample(model, conds, steps=2):
    """Two euler steps at cfg 7 of a batch of 3 at 256 px (latent 32x32), fixed noise."""
    import comfy.sample

    latent = torch.zeros(3, 4, 32, 32)
    noise = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 7.0, "euler", "normal", conds[0], conds[1], latent,
                                   denoise=1.0, disable_pbar=True, seed=0)


def count_paths(monkeypatch, pack):
    """Counter of active Corr-Attention calls by path: "packed" or "gathered"."""
    unet_family = pack("nodes.families.unet")
    counts = Counter()
    for name, path in (("packed_corr_attention", "packed"), ("gather_attention_inputs", "gathered")):
        def counting(*args, _original=getattr(unet_family, name), _path=path, **kwargs):
            counts[_path] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(unet_family, name, counting)
    return counts


def attn1_patches(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn1"]


def sampling_corr(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    return random_correspondence(Correspondence, 3, (32, 32), 0, torch.Generator().manual_seed(12))


# Packed vs gather path over a whole sampling run, float32 on the CPU: measured 0, bit for bit (the
# host's CPU attention, sub-quadratic, computes each query row alone); the bound allows other backends' rounding.
SAMPLING_PATH_TOLERANCE = 1e-5


def test_sampling_takes_the_packed_path_by_default_with_the_gather_paths_result(pack, sd15_parts, conds, monkeypatch):
    warp = pack("nodes.attention_warp")
    model, corr = sd15_parts[0], sampling_corr(pack)
    counts = count_paths(monkeypatch, pack)
    default = warp.apply_attention_warp(model, corr, "output", 0.0, 1.0, 1.0, "warp")
    packed = sample(default, conds)
    layers = len(attn1_patches(default))
    # One call per decoder layer per step: cond and uncond go together here.
    assert counts == {"packed": 2 * layers}
    forced = warp.apply_attention_warp(model, corr, "output", 0.0, 1.0, 1.0, "warp")
    for patch in attn1_patches(forced).values():
        patch.packed = False
    counts.clear()
    gathered = sample(forced, conds)
    assert counts == {"gathered": 2 * layers}
    scale = gathered.abs().max()
    assert (packed - gathered).abs().max() <= SAMPLING_PATH_TOLERANCE * scale
    assert (sample(model, conds) - gathered).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("strength, mode, other_pack", [(0.5, "warp", False), (1.0, "share", False), (1.0, "warp", True)])
def test_the_gather_path_where_the_packed_one_is_not_the_same_math(pack, sd15_parts, conds, monkeypatch,
                                                                   strength, mode, other_pack):
    warp = pack("nodes.attention_warp")
    unet_family = pack("nodes.families.unet")
    model = sd15_parts[0].clone()
    if other_pack:
        for key in pack("nodes.families.unet").self_attention_layers(model.model.diffusion_model):
            model.set_model_attn1_replace(unet_family.host_attention, *key)
    counts = count_paths(monkeypatch, pack)
    patched = warp.apply_attention_warp(model, sampling_corr(pack), "output", 0.0, 1.0, strength, mode)
    sample(patched, conds, steps=1)
    edicho = [patch for patch in attn1_patches(patched).values() if isinstance(patch, unet_family.CorrAttentionPatch)]
    assert counts == {"gathered": len(edicho)}


def test_another_packs_replace_on_the_block_key_is_wrapped_and_still_runs(pack, sd15_parts, conds):
    warp = pack("nodes.attention_warp")
    unet_family = pack("nodes.families.unet")
    model = sd15_parts[0].clone()
    available = pack("nodes.families.unet").self_attention_layers(model.model.diffusion_model)
    decoder = pack("nodes.families.layer_selection").parse_layers("output", available, "test")
    block = decoder[0][:2]
    seen = []

    def other_pack(q, k, v, extra_options):
        seen.append(q.shape[0])
        return unet_family.host_attention(q, k, v, extra_options)

    # (block, id) without a depth: the host uses it for every depth of that block with no 3-tuple key of its own.
    model.set_model_attn1_replace(other_pack, *block)
    assert block in attn1_patches(model)
    sample(model, conds)
    alone = len(seen)
    assert alone > 0
    seen.clear()
    patched = warp.apply_attention_warp(model, sampling_corr(pack), "output", 0.0, 1.0, 1.0, "warp")
    wrapping = [patch for key, patch in attn1_patches(patched).items() if key[:2] == block and len(key) == 3]
    assert wrapping and all(patch.inner is other_pack and not patch.packed for patch in wrapping)
    sample(patched, conds)
    assert len(seen) == alone
    assert set(seen) == {6}
