"""SD3 / SD3.5 (MMDiT): Corr-Attention as the gather of the reference's attention output on the image
tokens (exactly Eq. 3-4 with the reference's K/V), on the joint attention and on SD3.5 Medium's
image-only attn2; blocks named through a dit replace that wraps another pack's; text and register
tokens untouched; Corr-CFG in flow eps space; a tiny loader-detected SD3.5 sampled in a graph with
the correspondence from a tiny SD1.x; bit-identity outside the step range; clear errors."""
import math
from collections import Counter

import pytest
import torch

import runner
from patch_calls import AttentionRecorder, record_gathers
from patch_reference import joint_corr_attention_reference, random_correspondence

LATENT = (12, 10)  # tokens 6x5: not square
TEXT = 6
WIDTH, HEIGHT = 128, 96


def reduced_sd3(register_length=0):
    """The host's SD3 model class at a reduced size: depth 2 (hidden 128, 2 heads), attn2 in block 0 as SD3.5 Medium."""
    import comfy.model_patcher
    import comfy.supported_models

    config = {"in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "depth": 2, "patch_size": 2,
              "adm_in_channels": 32, "pos_embed_max_size": 16, "num_patches": 256, "qk_norm": "rms",
              "x_block_self_attn_layers": [0], "register_length": register_length,
              "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}}}
    torch.manual_seed(0)
    model = comfy.supported_models.SD3(config).get_model({})
    # pos_embed is a buffer: every tensor of the state dict gets a value.
    for _, tensor in model.diffusion_model.state_dict(keep_vars=True).items():
        tensor.data = torch.randn(tensor.shape) / math.sqrt(tensor.shape[-1]) if tensor.ndim > 1 else torch.zeros(tensor.shape)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def sample_reduced(model, batch=3, latent=LATENT, steps=2, cfg=2.0):
    import comfy.sample

    gen = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen)}]]
    negative = [[torch.randn(1, TEXT, 32, generator=gen), {"pooled_output": torch.randn(1, 32, generator=gen)}]]
    noise = torch.randn(batch, 16, *latent, generator=gen)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros_like(noise),
                               disable_pbar=True, seed=5)


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
    return reduced_sd3(), corr


@pytest.mark.parametrize("register_length", [0, 2])
def test_warp_is_the_reference_attention_output_at_the_match(host, pack, monkeypatch, register_length):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, LATENT, 2, torch.Generator().manual_seed(42), image_size=(96, 80))
    base = reduced_sd3(register_length)
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    patched = pack("nodes.attention_warp").apply_attention_warp(base, corr, "double", 0.0, 1.0, 1.0, "warp")
    results = record_gathers(monkeypatch, pack)
    sample_reduced(patched)

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
    sample_reduced(patched)
    # The other pack's replace runs inside Edicho's, and sees which block it is.
    assert replace.seen == [1, 1]
    assert len(recorder.calls) == 2 * 3
    assert base.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 1)] is replace


def test_outside_the_step_range_sampling_is_bit_identical(sd3_parts, pack):
    model, corr = sd3_parts
    warp, fuser = pack("nodes.attention_warp"), pack("nodes.noise_fuser")
    patched = warp.apply_attention_warp(model, corr, "double", 0.9, 0.95, 1.0, "warp")
    patched = fuser.apply_noise_fuser(patched, corr, 0.8, 0.9, 0.9, 0.95, 0, "literal")
    assert torch.equal(sample_reduced(patched), sample_reduced(model))
    inside = warp.apply_attention_warp(model, corr, "double", 0.0, 1.0, 1.0, "warp")
    assert not torch.equal(sample_reduced(inside), sample_reduced(model))


def test_noise_fuser_on_sd3_works_in_flow_space(sd3_parts, pack, monkeypatch):
    model, corr = sd3_parts
    fuser = pack("nodes.noise_fuser")
    patched = fuser.apply_noise_fuser(model, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    assert patched.model_options["sampler_pre_cfg_function"][-1].flow
    fused = []
    fuse = fuser.fuse_uncond_eps
    monkeypatch.setattr(fuser, "fuse_uncond_eps", lambda *a: fused.append(a[0].shape) or fuse(*a))
    assert not torch.equal(sample_reduced(patched, steps=3), sample_reduced(model, steps=3))
    assert fused == [(3, 16, *LATENT)] * 2


def test_default_layers_are_the_second_half_and_unet_syntax_is_refused(sd3_parts, pack):
    model, corr = sd3_parts
    family = pack("nodes.family_sd3")
    assert pack("nodes.families").family_of(model, "EdichoAttentionWarp") is family
    assert family.default_layers(model) == "double.1-1"
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: layer selection 'output' is not understood\. Use a block name of this model \(double\)"):
        pack("nodes.attention_warp").apply_attention_warp(model, corr, "output", 0.0, 1.0, 1.0, "warp")


def test_correspondence_for_other_images_is_a_clear_error(sd3_parts, pack):
    model, corr = sd3_parts
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "auto", 0.0, 1.0, 1.0, "warp")
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: the correspondence was built for a 10x12 latent.*runs 8x12"):
        sample_reduced(patched, latent=(12, 8))
    with pytest.raises(ValueError, match=r"EdichoAttentionWarp: the sampler runs a batch of 4 latents.*3 images"):
        sample_reduced(patched, batch=4)


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
    fuser = pack("nodes.noise_fuser")
    fused = []
    fuse = fuser.fuse_uncond_eps
    monkeypatch.setattr(fuser, "fuse_uncond_eps", lambda *a: fused.append(a[0].shape) or fuse(*a))
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
