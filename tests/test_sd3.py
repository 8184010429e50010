"""SD3 / SD3.5 (MMDiT): Corr-Attention as the gather of the reference's attention output on the image
tokens (exactly Eq. 3-4 with the reference's K/V), on the joint attention and on SD3.5 Medium's
image-only attn2; blocks named through a dit replace that wraps another pack's; text and register
tokens untouched; a tiny loader-detected SD3.5 sampled in a graph with both patches and the
correspondence from a tiny SD1.x; bit-identity outside the step range. What every DiT family does
is in tests/test_dit_families.py."""
from collections import Counter

import pytest
import torch

import reduced_dits
import runner
from patch_calls import AttentionRecorder, record_fusions, record_gathers
from patch_reference import joint_corr_attention_reference, random_correspondence
from reduced_dits import LATENT, TEXT

WIDTH, HEIGHT = 128, 96


def heads_first(t, heads=2):
    """[R, L, H*D] -> [R, H, L, D]."""
    return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


class BlockReplace:
    """Another pack's dit replace on a joint block: records the block index it sees, then runs the block."""

    def __init__(self):
        self.seen = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        self.seen.append(args["transformer_options"].get("block_index"))
        return extra["original_block"](args)


@pytest.fixture
def sd3_parts(host, pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 2, torch.Generator().manual_seed(42), image_size=(96, 80))
    return reduced_dits.sd3(), corr


@pytest.mark.parametrize("register_length", [0, 2])
def test_warp_is_the_reference_attention_output_at_the_match(host, pack, monkeypatch, register_length):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 2, torch.Generator().manual_seed(42), image_size=(96, 80))
    base = reduced_dits.sd3(register_length)
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    reduced_dits.sample_sd3(patched)

    # Per step: block 0's joint attention and its image-only attn2, then block 1's joint attention.
    assert Counter(c["block"] for c in recorder.calls) == Counter({("double", 0): 4, ("double", 1): 2})
    assert len(results) == len(recorder.calls) == 6
    resized = pack("kernels.correspondence").resize_correspondence(corr, (6, 5))
    start = register_length + TEXT
    image_only = 0
    for call, (out, result, gathered_from, count) in zip(recorder.calls, results):
        assert call["layout"] == (start, (6, 5)) and count == 30
        joint = out.shape[1] == start + count
        image_only += not joint
        assert gathered_from == (start if joint else 0)
        expected = joint_corr_attention_reference(heads_first(call["q"]), heads_first(call["k"]), heads_first(call["v"]),
                                                  resized, gathered_from)
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(result[:, :gathered_from], out[:, :gathered_from])
    assert image_only == 2


def test_another_packs_block_replace_and_override_still_run(sd3_parts, pack):
    model, corr = sd3_parts
    base = model.clone()
    replace, recorder = BlockReplace(), AttentionRecorder()
    base.set_model_patch_replace(replace, "dit", "double_block", 1)
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double.1", 0.0, 1.0, 1.0, "warp")
    reduced_dits.sample_sd3(patched)
    # The other pack's replace runs inside Edicho's, and sees which block it is.
    assert replace.seen == [1, 1]
    assert len(recorder.calls) == 2 * 3
    assert base.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 1)] is replace


# Through the host's loaders and runner: a tiny loader-detected SD3.5 (Medium's shape).

def sd35_graph(tiny_checkpoint, sample_files, steps=2, start=0.0, end=1.0):
    """3 photos at 128x96, correspondence from the tiny SD1.x (its CLIP-L also conditions the tiny SD3.5), both patches, cfg 3."""
    sd15 = tiny_checkpoint("sd15")
    graph = {
        **{f"load_{i}": {"class_type": "LoadImage", "inputs": {"image": name}} for i, name in enumerate(sample_files)},
        # The reference sets the canvas' aspect: not square.
        "crop": {"class_type": "ImageScale", "inputs": {"image": ["load_0", 0], "upscale_method": "bicubic",
                                                        "width": WIDTH, "height": HEIGHT, "crop": "center"}},
        "images": {"class_type": "EdichoBatchImages", "inputs": {
            "image_1": ["crop", 0], "image_2": ["load_1", 0], "image_3": ["load_2", 0],
            "megapixels": WIDTH * HEIGHT / 1e6, "multiple": 16, "fit": "crop", "group_size": 8, "only_group": -1}},
        "features_ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["features_ckpt", 1]}},
        "features": {"class_type": "EdichoFeatureExtractor", "inputs": {
            "model": ["features_ckpt", 0], "vae": ["features_ckpt", 2], "images": ["images", 0],
            "conditioning": ["empty", 0], "timestep": 261, "up_level": -1, "ensemble": 1, "seed": 0}},
        # Random-weight features pass no mutual check: match every cell so the gather has work.
        "correspondence": {"class_type": "EdichoMatcher", "inputs": {
            "features": ["features", 0], "reference": 0, "mutual": False, "min_similarity": 0.0, "chunk_size": 512}},
        "unet": {"class_type": "UNETLoader", "inputs": {
            "unet_name": tiny_checkpoint("sd35-medium", "diffusion_models"), "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": tiny_checkpoint("taef1", "vae")}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red hat", "clip": ["features_ckpt", 1]}},
        "latent": {"class_type": "VAEEncode", "inputs": {"pixels": ["images", 0], "vae": ["vae", 0]}},
        "attention": {"class_type": "EdichoAttentionWarp", "inputs": {
            "model": ["unet", 0], "correspondence": ["correspondence", 0], "layers": "auto",
            "start_percent": start, "end_percent": end, "strength": 1.0, "mode": "warp"}},
        "fuser": {"class_type": "EdichoNoiseFuser", "inputs": {
            "model": ["attention", 0], "correspondence": ["correspondence", 0], "lam": 0.8, "gamma": 0.9,
            "start_percent": start, "end_percent": end, "seed": 0, "reading": "literal"}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["fuser", 0], "positive": ["positive", 0], "negative": ["empty", 0], "latent_image": ["latent", 0],
            "seed": 7, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    return graph


def test_tiny_sd35_graph_with_both_patches_patches_the_second_half(host, tiny_checkpoint, sample_files, pack,
                                                                   monkeypatch):
    fused = record_fusions(monkeypatch, pack)
    seen = record_gathers(monkeypatch, pack)
    result = runner.run_graph(sd35_graph(tiny_checkpoint, sample_files, steps=3))

    model = result.output("unet")
    assert type(model.model.model_config).__name__ == "SD3"
    assert len(model.model.diffusion_model.joint_blocks) == 2
    # auto = block 1 of 2, 3 steps; cond and uncond rows in one call.
    assert len(seen) == 3
    for out, patched, start, count in seen:
        assert count == (HEIGHT // 16) * (WIDTH // 16) and out.shape[0] == 6
        assert torch.equal(patched[:, :start], out[:, :start])
        assert not torch.equal(patched[:, start:], out[:, start:])
    # Corr-CFG on the 3-photo latent grid, the first step (sigma 1) left alone.
    assert fused == [(3, 16, HEIGHT // 8, WIDTH // 8)] * 2
    assert torch.isfinite(result.output("decode")).all()


def test_tiny_sd35_graph_outside_the_step_range_is_bit_identical_to_unpatched(host, tiny_checkpoint, sample_files):
    graph = sd35_graph(tiny_checkpoint, sample_files, start=1.0, end=1.0)
    patched = runner.run_graph(graph).output("sample")["samples"]
    graph["sample"]["inputs"]["model"] = ["unet", 0]
    assert torch.equal(patched, runner.run_graph(graph).output("sample")["samples"])
