"""Every example workflow in workflows/api executes through the host on tiny checkpoints of the
kinds it names (inpainting, ControlNet, InstructPix2Pix, plain SD1.x), made small."""
import json
from pathlib import Path

import pytest
import torch

import runner
import sample_photos
from patch_calls import count_corr_attention_calls
from conftest import REPO

API = REPO / "workflows" / "api"
# The model files each example names -> the tiny family standing in for it, and its models folder.
TINY = {
    "v1-5-pruned-emaonly.safetensors": ("sd15", "checkpoints"),
    "sd-v1-5-inpainting.ckpt": ("sd15-inpaint", "checkpoints"),
    "instruct-pix2pix-00-22000.safetensors": ("sd15-ip2p", "checkpoints"),
    "control_v11p_sd15_canny.pth": ("sd15-controlnet", "controlnet"),
    "flux1-dev-kontext_fp8_scaled.safetensors": ("flux-dev", "diffusion_models"),
    "flux-2-klein-base-9b-fp8.safetensors": ("flux2-klein", "diffusion_models"),
    "ae.safetensors": ("taef1", "vae"),
    "qwen_image_vae.safetensors": ("wan21-vae", "vae"),
}
# Qwen-Image's width is fixed by the host: its examples run on a reduced model in tests/test_qwen_image.py.
# The FLUX.2 VAE: tests/test_flux2.py runs its example with the host's TAEF2 (VAELoader "taef2") at a tiny size.
REDUCED_ELSEWHERE = {"qwen_image_edit_2509_fp8_e4m3fn.safetensors", "full_encoder_small_decoder.safetensors"}
# T5-XXL can't be built small (the host fixes its size): the tiny SD1.x checkpoint's CLIP-L stands in
# for Flux's text encoders, which is why the tiny Flux takes 768-wide text.
TEXT_ENCODERS = {"clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                 "qwen_3_8b_fp8mixed.safetensors"}
MODEL_INPUTS = ("ckpt_name", "control_net_name", "unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2")
# Run at 128x96 by tests/test_flux.py (at 256 px the 545 M-parameter Flux that 0.3.75 detects takes minutes),
# tests/test_flux2.py and tests/test_qwen_image.py.
EXECUTED_ELSEWHERE = {"edicho_kontext.json", "edicho_flux2_klein.json", "edicho_qwen_edit.json", "edicho_exemplar.json"}


def small(graph, tiny_checkpoint):
    """The example with tiny models, 256 px photos, 1 feature draw, and 2 steps with both patches on both."""
    for node in graph.values():
        inputs = node["inputs"]
        for key in MODEL_INPUTS:
            if key in inputs:
                inputs[key] = tiny_checkpoint(*TINY[inputs[key]])
        if node["class_type"] == "LoadImage":
            inputs["image"] = inputs["image"].replace("-512", "-256")
        if node["class_type"] == "EdichoBatchImages":
            inputs["megapixels"] = 0.066
        if node["class_type"] == "EdichoFeatureExtractor":
            inputs["ensemble"] = 1
        if node["class_type"] == "KSampler":
            inputs["steps"] = 2
        if node["class_type"] in ("EdichoAttentionWarp", "EdichoNoiseFuser"):
            inputs.update(start_percent=0.0, end_percent=1.0)
    return graph


@pytest.fixture(scope="module")
def example_photos(host):
    return sample_photos.write_sample_group(host.base_directory / "input", 256, masked_reference=True)


def test_every_example_names_only_models_with_a_tiny_stand_in():
    named = {node["inputs"][key] for path in API.glob("*.json") for node in json.loads(path.read_text()).values()
             for key in MODEL_INPUTS if key in node["inputs"]}
    assert named == set(TINY) | TEXT_ENCODERS | REDUCED_ELSEWHERE


@pytest.mark.parametrize("name", sorted(p.name for p in API.glob("*.json") if p.name not in EXECUTED_ELSEWHERE))
def test_example_workflow_executes(host, tiny_checkpoint, sample_files, example_photos, pack, monkeypatch, name):
    calls = count_corr_attention_calls(monkeypatch, pack)
    graph = small(json.loads((API / name).read_text()), tiny_checkpoint)
    result = runner.run_graph(graph)
    assert calls, "Corr-Attention never ran"
    edited = result.output("decode")
    assert edited.shape == (3, 256, 256, 3) and torch.isfinite(edited).all()
    if "restore" in graph:
        restored = result.output_list("restore")
        assert [tuple(r.shape) for r in restored] == [(1, 256, 256, 3)] * 3
    if "sample_plain" in graph:
        assert not torch.equal(result.output("sample")["samples"], result.output("sample_plain")["samples"])


def test_inpaint_example_edits_only_inside_the_carried_masks(host, tiny_checkpoint, sample_files, example_photos):
    graph = small(json.loads((API / "edicho_inpaint.json").read_text()), tiny_checkpoint)
    result = runner.run_graph(graph)
    masks, originals = result.output("masks"), result.output("images")
    assert masks[0].sum() > 0 and masks[1:].sum() > 0  # drawn on the reference, carried to the others
    for restored, mask, original in zip(result.output_list("restore"), masks, originals):
        outside = mask < 0.5
        assert torch.equal(restored[0][outside], original[outside])
        assert not torch.equal(restored[0][~outside], original[~outside])


def test_controlnet_example_feeds_the_canny_hint_to_the_sampler(host, tiny_checkpoint, sample_files, example_photos):
    graph = small(json.loads((API / "edicho_controlnet.json").read_text()), tiny_checkpoint)
    result = runner.run_graph(graph)
    control = result.output("control")[0][1]["control"]
    assert type(control).__name__ == "ControlNet"
    assert tuple(control.cond_hint_original.shape) == (3, 3, 256, 256)
    without = json.loads(json.dumps(graph))
    without["sample"]["inputs"].update(positive=["positive", 0], negative=["negative", 0])
    assert not torch.equal(runner.run_graph(without).output("sample")["samples"], result.output("sample")["samples"])


def test_ip2p_example_runs_the_instruct_pix2pix_model(host, tiny_checkpoint, sample_files, example_photos):
    graph = small(json.loads((API / "edicho_ip2p.json").read_text()), tiny_checkpoint)
    result = runner.run_graph(graph)
    assert type(result.output("ckpt", 0).model.model_config).__name__ == "SD15_instructpix2pix"
    assert result.output("ip2p", 2)["samples"].shape == (3, 4, 32, 32)


def test_inpaint_example_without_a_painted_mask_says_how_to_paint_one(host, tiny_checkpoint, sample_files, example_photos):
    graph = small(json.loads((API / "edicho_inpaint.json").read_text()), tiny_checkpoint)
    graph["load_a"]["inputs"]["image"] = sample_files[0]  # the same photo, nothing painted on it
    with pytest.raises(runner.GraphError, match=r"EdichoBatchImages.*mask_1 is empty.*MaskEditor"):
        runner.run_graph(graph)
