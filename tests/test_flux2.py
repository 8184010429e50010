"""FLUX.2 (dev, Klein, Klein KV) on the host's own class at a reduced size: Corr-Attention as the gather
of the reference's attention output (exactly Eq. 3-4 with warped post-RoPE queries over 4 RoPE axes,
reference tokens present), also on the FluxKVCache steps where the queries are shorter than the
keys; Corr-CFG on 128-channel latents at 1/16; sizes that are not multiples of 16 refused. What
every DiT family does (chaining, bit-identity, errors for another batch or size) is in
tests/test_dit_families.py. The example workflow runs on loader-detected tiny FLUX.2 files where the
host detects them at that size (0.33; 0.3.75 fixes 48 heads: its smallest FLUX.2 is 3.3 GB)."""
import json
from collections import Counter

import pytest
import torch

import reduced_dits
import runner
import tiny_checkpoints
from conftest import REPO
from patch_calls import AttentionRecorder, record_fusions, record_gathers
from patch_reference import joint_corr_attention_reference, plain_fused_eps, random_correspondence

TOKENS = reduced_dits.LATENT_FLUX2  # 96x80 px: 6x5 latent cells, one token each
TEXT = 512  # the host pads FLUX.2's text to 512 tokens


def correspondence(pack, image_size=(96, 80), seed=40):
    """A random correspondence on the 8 px grid the matcher builds from an SD1.5's features."""
    Correspondence = pack("kernels.correspondence").Correspondence
    grid = (image_size[0] // 8, image_size[1] // 8)
    return random_correspondence(Correspondence, 3, grid, 1, torch.Generator().manual_seed(seed), image_size=image_size)


def check_gathers(pack, recorder, results, blocks, corr):
    """Every gather on `blocks` equals Eq. 3-4 in float64; text and reference tokens keep their own output."""
    active = [c for c in recorder.calls if c["block"] in blocks]
    assert len(active) == len(results) > 0
    resized = pack("kernels.correspondence").resize_correspondence(corr, TOKENS)
    count = TOKENS[0] * TOKENS[1]
    for call, (out, result, start, gathered) in zip(active, results):
        assert call["layout"].grid == TOKENS and start == TEXT and gathered == count
        expected = joint_corr_attention_reference(call["q"], call["k"], call["v"], resized, start)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(result[:, :start], out[:, :start])
        assert torch.equal(result[:, start + count:], out[:, start + count:])
    return active


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "klein"])
def test_warp_is_the_reference_attention_output_at_the_match_with_reference_tokens(host, pack, monkeypatch, guidance):
    corr = correspondence(pack)
    base = reduced_dits.flux2(guidance=guidance)
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.1, single.0", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    reduced_dits.sample_flux2(patched, refs=1)

    active = check_gathers(pack, recorder, results, {("double", 1), ("single", 0)}, corr)
    assert len(active) == 4  # 2 blocks x 2 steps at cfg 1
    # [text | image | reference]: the reference's tokens are in the sequence, untouched.
    assert all(c["q"].shape[2] == TEXT + 2 * TOKENS[0] * TOKENS[1] for c in active)
    assert Counter(c["block"] for c in recorder.calls) == Counter({(t, i): 2 for t in ("double", "single") for i in (0, 1)})


def test_kv_cache_steps_gather_with_queries_shorter_than_keys(host, pack, monkeypatch):
    import comfy_extras.nodes_flux

    if not hasattr(comfy_extras.nodes_flux, "FluxKVCache"):
        pytest.skip("this host has no FluxKVCache node (added after ComfyUI 0.3.75)")
    corr = correspondence(pack)
    base = comfy_extras.nodes_flux.FluxKVCache.execute(reduced_dits.flux2(guidance=False))[0]
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double, single", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    samples = reduced_dits.sample_flux2(patched, steps=3, refs=1)

    active = check_gathers(pack, recorder, results, {(t, i) for t in ("double", "single") for i in (0, 1)}, corr)
    count = TOKENS[0] * TOKENS[1]
    lengths = Counter((c["q"].shape[2], c["k"].shape[2]) for c in active)
    # Step 1 fills the cache over the whole sequence; steps 2 and 3 run [text | image] against the cached reference.
    assert lengths == Counter({(TEXT + 2 * count, TEXT + 2 * count): 4, (TEXT + count, TEXT + 2 * count): 8})
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("node", ["attention_warp", "noise_fuser"])
def test_images_whose_sides_are_not_multiples_of_16_are_refused(host, pack, node):
    corr = correspondence(pack, image_size=(96, 88))
    model = reduced_dits.flux2()
    message = r"Edicho\w+: Flux2 encodes 16x16 px per latent cell, but the correspondence was built from 88x96 px images"
    with pytest.raises(ValueError, match=message):
        if node == "attention_warp":
            pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
        else:
            pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")


@pytest.mark.parametrize("reading", ["literal", "substituted"])
def test_corr_cfg_on_128_channel_latents_is_the_per_position_loop_in_flow_eps_space(host, pack, reading):
    corr = correspondence(pack)
    fuser, support, steps = pack("nodes.noise_fuser"), pack("nodes.families.patch_support"), pack("nodes.step_range")
    fusion = fuser.CorrCfgFusion(support.CorrespondenceOnDevice(corr), steps.StepGate(steps.StepRange(1.0, 0.0)),
                                 0.8, 0.9, 3, reading, flow=True)
    gen = torch.Generator().manual_seed(17)
    x, cond, uncond = (torch.randn(3, 128, *TOKENS, generator=gen) for _ in range(3))
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    fused = fusion({"conds": [["c"], ["u"]], "conds_out": [cond, uncond], "cond_scale": 4.0, "timestep": None,
                    "input": x, "sigma": torch.full((3,), 0.5), "model": None,
                    "model_options": {"transformer_options": {"sample_sigmas": schedule}}})

    resized = pack("kernels.correspondence").resize_correspondence(corr, TOKENS)
    mask = pack("kernels.fusion").injection_mask(resized.valid, 0.9, torch.Generator().manual_seed(3 + 2))
    to_eps = lambda x0: (x - 0.5 * x0) / 0.5  # noqa: E731
    to_x0 = lambda eps: (x - 0.5 * eps) / 0.5  # noqa: E731
    eps_u, eps_c = to_eps(uncond), to_eps(cond)
    eps_u_fused = plain_fused_eps(eps_u, resized, 0.8, mask)
    torch.testing.assert_close(fused[1], to_x0(eps_u_fused), rtol=1e-5, atol=1e-5)
    other = eps_u if reading == "literal" else eps_u_fused
    torch.testing.assert_close(fused[1] + 4.0 * (fused[0] - fused[1]), to_x0(eps_u_fused + 4.0 * (eps_c - other)),
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(fused[1][corr.reference], uncond[corr.reference])


# Through the host's loaders and runner: the example workflow on tiny stand-ins.
WIDTH, HEIGHT = 128, 96  # FLUX.2 latent 8x6, SD1.5 features 16x12: not square


@pytest.fixture(scope="module")
def flux2_files(host, tiny_checkpoint):
    if not tiny_checkpoints.host_detects("flux2-klein"):
        pytest.skip("this host detects FLUX.2 only at 48 heads (6144 wide, 3.3 GB): the reduced class tests above "
                    "cover it here")
    for part in ("encoder", "decoder"):
        tiny_checkpoint(f"taef2-{part}", "vae_approx", f"taef2_{part}.safetensors")
    return tiny_checkpoint


def klein_graph(files, sample_files, steps=2, start=0.0, end=1.0, unet="flux2-klein"):
    """workflows/api/edicho_flux2_klein.json, small: tiny SD1.x for features and text (its 768-wide CLIP-L for
    Qwen3-8B), tiny loader-detected FLUX.2, TAEF2 through VAELoader; 3 photos at 128x96."""
    graph = json.loads((REPO / "workflows" / "api" / "edicho_flux2_klein.json").read_text())
    for node, name in zip(("load_a", "load_b", "load_c"), sample_files):
        graph[node]["inputs"]["image"] = name
    graph["crop"] = {"class_type": "ImageScale", "inputs": {"image": ["load_a", 0], "upscale_method": "bicubic",
                                                           "width": WIDTH, "height": HEIGHT, "crop": "center"}}
    graph["images"]["inputs"].update(image_1=["crop", 0], megapixels=WIDTH * HEIGHT / 1e6)
    graph["features_ckpt"]["inputs"]["ckpt_name"] = files("sd15")
    graph["features"]["inputs"]["ensemble"] = 1
    # Random-weight features pass no mutual check: match every cell so the gather has work.
    graph["correspondence"]["inputs"]["mutual"] = False
    graph["unet"]["inputs"]["unet_name"] = files(unet, "diffusion_models")
    graph["vae"]["inputs"]["vae_name"] = "taef2"
    for node in ("positive", "negative"):
        assert graph[node]["inputs"]["clip"] == ["clip", 0]
        graph[node]["inputs"]["clip"] = ["features_ckpt", 1]
    del graph["clip"]
    for node in ("attention", "fuser"):
        graph[node]["inputs"].update(start_percent=start, end_percent=end)
    graph["attention"]["inputs"]["layers"] = "double, single"
    graph["sigmas"]["inputs"]["steps"] = steps
    return graph


@pytest.mark.parametrize("unet", ["flux2-klein", "flux2-dev"])
def test_klein_example_patches_every_block_fuses_in_flow_space_and_leaves_references_alone(
        host, flux2_files, sample_files, pack, monkeypatch, unet):
    seen = record_gathers(monkeypatch, pack)
    fused = record_fusions(monkeypatch, pack)
    result = runner.run_graph(klein_graph(flux2_files, sample_files, steps=3, unet=unet))

    dm = result.output("unet").model.diffusion_model
    assert type(result.output("unet").model.model_config).__name__ == "Flux2"
    assert dm.params.guidance_embed == (unet == "flux2-dev") and dm.params.patch_size == 1
    blocks = len(dm.double_blocks) + len(dm.single_blocks)
    count = (HEIGHT // 16) * (WIDTH // 16)
    # 3 steps at cfg 5 (cond and uncond in one call): every block on every step.
    assert len(seen) == 3 * blocks
    for out, patched, start, gathered in seen:
        assert gathered == count and start == TEXT
        # [text | image | the photo's own reference]: the reference tokens are there and untouched.
        assert out.shape[1] == start + 2 * count
        assert torch.equal(patched[:, start + count:], out[:, start + count:])
        assert torch.equal(patched[:, :start], out[:, :start])
        assert not torch.equal(patched[:, start:start + count], out[:, start:start + count])
    # The first of 3 steps is at sigma 1 (pure noise) and left alone by Corr-CFG.
    assert fused == [(3, 128, HEIGHT // 16, WIDTH // 16)] * 2
    images = result.output_list("restore")
    # Restored to each photo's own size: the cropped reference and the two 256 px photos.
    assert [tuple(i.shape) for i in images] == [(1, HEIGHT, WIDTH, 3)] + [(1, 256, 256, 3)] * 2
    assert all(torch.isfinite(i).all() for i in images)


def test_klein_example_outside_the_step_range_is_bit_identical_to_unpatched(host, flux2_files, sample_files):
    graph = klein_graph(flux2_files, sample_files, start=1.0, end=1.0)
    patched = runner.run_graph(graph).output("sample")
    graph["guider"]["inputs"]["model"] = ["unet", 0]
    assert torch.equal(patched["samples"], runner.run_graph(graph).output("sample")["samples"])
