"""Flux.1 end to end: Corr-Attention as the gather of the reference's attention output (exactly
Eq. 3-4 with warped post-RoPE queries and the reference's K/V), Corr-CFG in the flow's eps space,
tiny loader-detected Flux checkpoints sampled through the host with a correspondence from a
tiny SD1.x in the same graph, Kontext context tokens left alone. What every DiT family does
(chaining, bit-identity, Corr-CFG, errors) is in tests/test_dit_families.py."""
import json
from collections import Counter

import pytest
import torch

import reduced_dits
import runner
import tiny_checkpoints
from conftest import REPO
from patch_calls import AttentionRecorder, record_fusions, record_gathers
from patch_reference import joint_corr_attention_reference, random_correspondence

WIDTH, HEIGHT = 128, 96  # latent 16x12, Flux tokens 8x6: not square


@pytest.fixture
def flux_parts(host, pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (12, 10), 1, torch.Generator().manual_seed(40), image_size=(96, 80))
    return reduced_dits.flux(), corr


def test_warp_is_the_reference_attention_output_at_the_match(flux_parts, pack, monkeypatch):
    model, corr = flux_parts
    base = model.clone()
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.1, single.0", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    reduced_dits.sample_flux(patched)

    active = [c for c in recorder.calls if c["block"] in {("double", 1), ("single", 0)}]
    assert len(active) == len(results) == 4  # 2 blocks x 2 steps, one chunk (cfg 1)
    assert Counter(c["block"] for c in recorder.calls) == Counter({(t, i): 2 for t in ("double", "single") for i in (0, 1)})
    resized = pack("kernels.correspondence").resize_correspondence(corr, (6, 5))
    for call, (_, result, _, _) in zip(active, results):
        start, grid = call["layout"]
        assert grid == (6, 5) and start == 6
        # Warped queries: the reference's (after RoPE, [rows, heads, tokens, dim]) at the match, against its K/V.
        expected = joint_corr_attention_reference(call["q"], call["k"], call["v"], resized, start)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_longcat_image_edit_gathers_exactly_with_text_positions_and_reference_tokens(host, pack, monkeypatch):
    import comfy.sample

    base = reduced_dits.longcat()
    if base is None:
        pytest.skip("this host has no LongCat-Image (added after ComfyUI 0.3.75)")
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (12, 10), 1, torch.Generator().manual_seed(44), image_size=(96, 80))
    assert pack("nodes.families").family_of(base, "x").__name__.endswith("families.flux")
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.0, single.1", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    gen = torch.Generator().manual_seed(6)
    cond = [[torch.randn(1, reduced_dits.TEXT, 32, generator=gen),
             {"reference_latents": [torch.randn(3, 16, *reduced_dits.LATENT, generator=gen)]}]]
    noise = torch.randn(3, 16, *reduced_dits.LATENT, generator=gen)
    comfy.sample.sample(patched, noise, 2, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise), disable_pbar=True,
                        seed=5)
    active = [c for c in recorder.calls if c["block"] in {("double", 0), ("single", 1)}]
    assert len(active) == len(results) == 4
    resized = pack("kernels.correspondence").resize_correspondence(corr, (6, 5))
    for call, (out, result, start, count) in zip(active, results):
        assert start == reduced_dits.TEXT and count == 30 and out.shape[1] == start + 2 * count
        expected = joint_corr_attention_reference(call["q"], call["k"], call["v"], resized, start)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(result[:, start + count:], out[:, start + count:])


def test_feature_extractor_refuses_flux_and_says_where_features_come_from(flux_parts, pack):
    model, _ = flux_parts
    with pytest.raises(ValueError, match=r"EdichoFeatureExtractor: .*Flux.*SD1\.5, SD2\.1 or SDXL checkpoint"):
        pack("nodes.feature_extractor").FeaturePass(model, None, None, None, 261, -1)


# Through the host's loaders and runner: the example workflow on tiny stand-ins.

def kontext_graph(tiny_checkpoint, sample_files, steps=2, start=0.0, end=1.0):
    """workflows/api/edicho_kontext.json, small: tiny SD1.x for features and text (CLIP-L; T5-XXL can't be
    built small), tiny loader-detected Flux dev, TAEF1-layout VAE; 3 photos at 128x96."""
    graph = json.loads((REPO / "workflows" / "api" / "edicho_kontext.json").read_text())
    sd15 = tiny_checkpoint("sd15")
    for node, name in zip(("load_a", "load_b", "load_c"), sample_files):
        graph[node]["inputs"]["image"] = name
    graph["crop"] = {"class_type": "ImageScale", "inputs": {"image": ["load_a", 0], "upscale_method": "bicubic",
                                                           "width": WIDTH, "height": HEIGHT, "crop": "center"}}
    graph["images"]["inputs"].update(image_1=["crop", 0], megapixels=WIDTH * HEIGHT / 1e6, multiple=16)
    graph["features_ckpt"]["inputs"]["ckpt_name"] = sd15
    graph["features"]["inputs"]["ensemble"] = 1
    # Random-weight features pass no mutual check: match every cell so the gather has work.
    graph["correspondence"]["inputs"]["mutual"] = False
    graph["unet"]["inputs"]["unet_name"] = tiny_checkpoint("flux-dev", "diffusion_models")
    graph["vae"]["inputs"]["vae_name"] = tiny_checkpoint("taef1", "vae")
    assert graph["clip"]["class_type"] == "DualCLIPLoader" and graph["positive"]["inputs"]["clip"] == ["clip", 0]
    graph["positive"]["inputs"]["clip"] = ["features_ckpt", 1]
    del graph["clip"]
    graph["attention"]["inputs"].update(start_percent=start, end_percent=end, layers="double, single")
    graph["sample"]["inputs"]["steps"] = steps
    return graph


@pytest.fixture(scope="module")
def flux_files(host, tiny_checkpoint):
    tiny_checkpoint("flux-dev", "diffusion_models")
    return tiny_checkpoint


def test_tiny_flux_checkpoints_are_detected_by_the_host_loader(host, flux_files):
    import comfy.model_sampling
    import comfy.sd
    import folder_paths

    for family in ("flux-dev", "flux-schnell"):
        model = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", flux_files(family, "diffusion_models")))
        assert type(model.model.model_config).__name__ == tiny_checkpoints.FAMILIES[family]["expected_model_type"]
        assert comfy.model_sampling.CONST in type(model.model.model_sampling).__mro__


def test_kontext_example_patches_every_block_and_leaves_context_tokens_alone(host, flux_files, sample_files, pack,
                                                                             monkeypatch):
    family = pack("nodes.families.joint_attention")
    seen = record_gathers(monkeypatch, pack)

    blocks = Counter()
    call = family.JointCorrAttention.__call__

    def counting(self, func, *args, **kwargs):
        before = len(seen)
        out = call(self, func, *args, **kwargs)
        if len(seen) > before:
            options = kwargs["transformer_options"]
            blocks[(options["block_type"], options["block_index"])] += 1
        return out

    monkeypatch.setattr(family.JointCorrAttention, "__call__", counting)
    result = runner.run_graph(kontext_graph(flux_files, sample_files))

    dm = result.output("unet").model.diffusion_model
    expected = {("double", i) for i in range(len(dm.double_blocks))} | {("single", i) for i in range(len(dm.single_blocks))}
    assert set(blocks) == expected and set(blocks.values()) == {2}
    for out, patched, start, count in seen:
        assert count == (HEIGHT // 16) * (WIDTH // 16)
        # [text | image | Kontext context]: the context tokens (one reference image each) are there and untouched.
        assert out.shape[1] == start + 2 * count
        assert torch.equal(patched[:, start + count:], out[:, start + count:])
        assert torch.equal(patched[:, :start], out[:, :start])
        assert not torch.equal(patched[:, start:start + count], out[:, start:start + count])
    images = result.output_list("restore")
    assert len(images) == 3 and all(torch.isfinite(i).all() for i in images)


def test_kontext_example_outside_the_step_range_is_bit_identical_to_unpatched(host, flux_files, sample_files):
    graph = kontext_graph(flux_files, sample_files, start=1.0, end=1.0)
    patched = runner.run_graph(graph).output("sample")["samples"]
    graph["sample"]["inputs"]["model"] = ["unet", 0]
    assert torch.equal(patched, runner.run_graph(graph).output("sample")["samples"])


def test_kontext_graph_with_both_patches_at_cfg_two_fuses_in_flow_space(host, flux_files, sample_files, pack,
                                                                        monkeypatch):
    fused = record_fusions(monkeypatch, pack)
    graph = kontext_graph(flux_files, sample_files, steps=3)
    graph["fuser"] = {"class_type": "EdichoNoiseFuser", "inputs": {
        "model": ["attention", 0], "correspondence": ["correspondence", 0], "lam": 0.8, "gamma": 0.9,
        "start_percent": 0.0, "end_percent": 1.0, "seed": 0, "reading": "literal"}}
    graph["sample"]["inputs"].update(model=["fuser", 0], cfg=2.0)
    result = runner.run_graph(graph)
    # 3 steps, the first at sigma 1 (pure noise) left alone: fused on the latent grid of 3 photos.
    assert fused == [(3, 16, HEIGHT // 8, WIDTH // 8)] * 2
    assert result.output("sample")["samples"].shape == (3, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(result.output("sample")["samples"]).all()
