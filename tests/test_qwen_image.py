"""Qwen-Image(-Edit): Corr-Attention as the gather of the reference's attention output on the image
tokens (exactly Eq. 3-4 with warped post-RoPE queries and the reference's K/V), edit-reference tokens
untouched, several references, one frame only, and the Qwen-Image-Edit and exemplar example graphs.
What every DiT family does (chaining, bit-identity, Corr-CFG on 5-D latents, errors) is in
tests/test_dit_families.py.

The host's loader fixes Qwen-Image's width (3072) and text width (3584), so most tests build the
host's own class at a reduced size (real code, not loader-detected); the loader-detected smallest
checkpoint is exercised by tests/test_tiny_dit_checkpoints.py.
"""
import json
from collections import Counter

import pytest
import torch

import reduced_dits
import runner
from conftest import REPO
from patch_calls import AttentionRecorder, record_fusions, record_gathers
from patch_reference import joint_corr_attention_reference, random_correspondence
from reduced_dits import LATENT, TEXT

WIDTH, HEIGHT = 128, 96  # the example graphs' canvas: latent 16x12, tokens 8x6


@pytest.fixture
def qwen_parts(host, pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 1, torch.Generator().manual_seed(41), image_size=(96, 80))
    return reduced_dits.qwen_image(), corr


@pytest.mark.parametrize("ref_method", [None, "index_timestep_zero"], ids=["edit-2509", "edit-2511"])
def test_warp_is_the_reference_attention_output_at_the_match(host, pack, monkeypatch, ref_method):
    if ref_method is not None and not reduced_dits.qwen_has_reference_methods():
        pytest.skip(f"this host's Qwen-Image has no reference method {ref_method!r} (Qwen-Image-Edit 2511)")
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 1, torch.Generator().manual_seed(41), image_size=(96, 80))
    base = reduced_dits.qwen_image(ref_method=ref_method)
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.1", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    reduced_dits.sample_qwen_image(patched)

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
    reduced_dits.sample_qwen_image(patched, refs=2)
    assert len(results) == 2  # auto = the second half: block 1 of 2
    for out, result, start, count in results:
        assert out.shape[1] == start + 3 * count
        assert torch.equal(result[:, start + count:], out[:, start + count:])
        assert not torch.equal(result[:, start:start + count], out[:, start:start + count])


def test_a_latent_of_several_frames_is_a_clear_error(qwen_parts, pack):
    model, corr = qwen_parts
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: Qwen-Image is sampling a latent of shape \[6, 16, 2, 12, 10\].*one frame"):
        reduced_dits.sample_qwen_image(patched, frames=2, refs=0)


@pytest.mark.parametrize("node", ["attention_warp", "noise_fuser"])
def test_one_video_latent_for_the_photos_says_to_encode_them_one_by_one(qwen_parts, pack, node):
    # What VAEEncode gives for a batch of photos with Qwen-Image's VAE: one latent.
    model, corr = qwen_parts
    patched = {"attention_warp": lambda: pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp"),
               "noise_fuser": lambda: pack("nodes.noise_fuser").apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")}[node]()
    with pytest.raises(ValueError, match=r"the sampler runs a batch of 1 latents but the correspondence was built for 3 "
                                         r"images.*encode the photos with Edicho Encode Photos"):
        reduced_dits.sample_qwen_image(patched, batch=1, steps=3)


# The example workflows through the host's runner, on tiny stand-ins.

class ReducedQwenImage:
    """Stands in for UNETLoader in the example graphs: the reduced Qwen-Image, 768-wide text (CLIP-L's)."""
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (reduced_dits.qwen_image(text_width=768),)


def example_graph(name, tiny_checkpoint, photos, steps=3, start=0.0, end=1.0):
    """workflows/api/<name>.json with tiny stand-ins: the tiny SD1.x for features and text (Qwen2.5-VL can't be built
    small), the reduced Qwen-Image, the tiny Wan 2.1 VAE; 3 photos at 128x96, 1 feature draw, `steps` steps."""
    graph = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    for node, file_name in zip(("load_a", "load_b", "load_c"), photos):
        graph[node]["inputs"]["image"] = file_name
    graph["crop"] = {"class_type": "ImageScale", "inputs": {"image": ["load_a", 0], "upscale_method": "bicubic",
                                                           "width": WIDTH, "height": HEIGHT, "crop": "center"}}
    graph["images"]["inputs"].update(image_1=["crop", 0], megapixels=WIDTH * HEIGHT / 1e6, multiple=16)
    if "mask_1" in graph["images"]["inputs"]:
        # The region painted on the reference, cropped with it.
        graph["mask_image"] = {"class_type": "MaskToImage", "inputs": {"mask": ["load_a", 1]}}
        graph["mask_crop"] = {"class_type": "ImageScale", "inputs": {"image": ["mask_image", 0], "upscale_method": "bilinear",
                                                                    "width": WIDTH, "height": HEIGHT, "crop": "center"}}
        graph["mask_cropped"] = {"class_type": "ImageToMask", "inputs": {"image": ["mask_crop", 0], "channel": "red"}}
        graph["images"]["inputs"]["mask_1"] = ["mask_cropped", 0]
    graph["features_ckpt"]["inputs"]["ckpt_name"] = tiny_checkpoint("sd15")
    graph["features"]["inputs"]["ensemble"] = 1
    # Random-weight features pass no mutual check: match every cell so the gather has work.
    graph["correspondence"]["inputs"]["mutual"] = False
    graph["unet"] = {"class_type": "EdichoTestReducedQwenImage", "inputs": {}}
    assert graph["clip"]["class_type"] == "CLIPLoader"
    del graph["clip"]
    for node in ("positive", "negative"):
        graph[node]["inputs"]["clip"] = ["features_ckpt", 1]
    graph["vae"]["inputs"]["vae_name"] = tiny_checkpoint("wan21-vae", "vae")
    graph["attention"]["inputs"].update(start_percent=start, end_percent=end)
    graph["fuser"]["inputs"].update(start_percent=start, end_percent=end)
    graph["sample"]["inputs"]["steps"] = steps
    return graph


@pytest.fixture
def qwen_examples(host, tiny_checkpoint, monkeypatch):
    import nodes
    import sample_photos

    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "EdichoTestReducedQwenImage", ReducedQwenImage)
    folder = host.base_directory / "input"
    photos = sample_photos.write_sample_group(folder, 256, masked_reference=True)
    return tiny_checkpoint, photos, sample_photos.write_exemplar(folder, 256)


@pytest.mark.parametrize("name, references", [("edicho_qwen_edit", 1), ("edicho_exemplar", 2)])
def test_example_runs_both_patches_and_leaves_every_reference_token_alone(qwen_examples, pack, monkeypatch, name,
                                                                          references):
    tiny_checkpoint, photos, exemplar = qwen_examples
    fused = record_fusions(monkeypatch, pack)
    seen = record_gathers(monkeypatch, pack)
    graph = example_graph(name, tiny_checkpoint, photos)
    if "load_exemplar" in graph:
        graph["load_exemplar"]["inputs"]["image"] = exemplar
    result = runner.run_graph(graph)

    latent = (HEIGHT // 8, WIDTH // 8)
    assert result.output("photo_latents")["samples"].shape == (3, 16, 1, *latent)
    # auto = block 1 of 2, on each of 3 steps; cond and uncond rows in one call.
    assert len(seen) == 3
    tokens = (HEIGHT // 16) * (WIDTH // 16)
    for out, patched, start, count in seen:
        assert count == tokens and out.shape[0] == 6
        # [text | image | each photo's own latent | the exemplar (256 px: 16x16 tokens)]
        exemplar_tokens = 16 * 16 if references == 2 else 0
        assert out.shape[1] == start + 2 * count + exemplar_tokens
        assert torch.equal(patched[:, start + count:], out[:, start + count:])
        assert torch.equal(patched[:, :start], out[:, :start])
        assert not torch.equal(patched[:, start:start + count], out[:, start:start + count])
    # Corr-CFG on the 5-D latent of 3 photos, the first step (sigma 1) left alone.
    assert fused == [(3, 16, 1, *latent)] * 2
    restored = result.output_list("restore")
    assert [tuple(r.shape) for r in restored] == [(1, HEIGHT, WIDTH, 3), (1, 256, 256, 3), (1, 256, 256, 3)]
    assert all(torch.isfinite(r).all() for r in restored)
    if name == "edicho_exemplar":
        # Drawn on the reference, carried to the others; the reference (the canvas' own size) is pasted
        # back only inside its mask.
        # The restored photos are clamped to [0, 1]; the bicubic crop overshoots a little.
        masks, original = result.output("masks"), result.output("crop")[0].clamp(0, 1)
        assert masks.shape == (3, HEIGHT, WIDTH) and masks[0].sum() > 0 and masks[1:].sum() > 0
        outside, inside = masks[0] <= 0.5, masks[0] > 0.5
        assert torch.equal(restored[0][0][outside], original[outside])
        assert not torch.equal(restored[0][0][inside], original[inside])


def test_qwen_edit_example_outside_the_step_range_is_bit_identical_to_unpatched(qwen_examples):
    tiny_checkpoint, photos, _ = qwen_examples
    graph = example_graph("edicho_qwen_edit", tiny_checkpoint, photos, steps=2, start=1.0, end=1.0)
    patched = runner.run_graph(graph).output("sample")["samples"]
    graph["sample"]["inputs"]["model"] = ["unet", 0]
    assert torch.equal(patched, runner.run_graph(graph).output("sample")["samples"])
