"""The patches inside the host's real sampling: identity invariance, the host's batch layouts,
chaining with a core attention patch, unsupported families, the all-in-one node."""
import pytest
import torch

import runner
from graphs import edicho_img2img


@pytest.fixture(scope="module")
def conds(sd15_parts):
    clip = sd15_parts[1]
    return (clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat")),
            clip.encode_from_tokens_scheduled(clip.tokenize("")))


def sample(model, latent, noise, conds, steps=2, cfg=7.0, positive=None):
    import comfy.sample

    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive or conds[0], conds[1], latent,
                                   denoise=1.0, disable_pbar=True, seed=0)


def both_patches(pack, model, corr, start=0.0, end=1.0):
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, "output, middle", start, end, 1.0, "warp")
    return pack("nodes.noise_fuser").apply_noise_fuser(patched, corr, 0.8, 0.9, start, end, 0, "literal")


def test_identity_correspondence_on_identical_images_changes_nothing(pack, sd15_parts, conds):
    kc = pack("kernels.correspondence")
    model = sd15_parts[0]
    latent = torch.zeros(3, 4, 32, 32)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1)).expand(3, -1, -1, -1).contiguous()
    identity = kc.Correspondence.identity(3, (32, 32), 1, (256, 256))
    plain = sample(model, latent, noise, conds)
    edicho = sample(both_patches(pack, model, identity), latent, noise, conds)
    # Identical rows of one batch already differ in the last bits on the CPU (blocked kernels),
    # so "unchanged" is up to float rounding; a one-cell shift moves the result by far more.
    scale = plain.abs().max()
    assert (edicho - plain).abs().max() <= 1e-4 * scale
    shifted = kc.Correspondence(identity.index.roll(1, dims=1), identity.valid, identity.similarity, (32, 32), 1, (256, 256))
    moved = sample(both_patches(pack, model, shifted), latent, noise, conds)
    assert (moved - plain).abs().max() > 1e-2 * scale


class Recorder:
    """Wraps active Corr-Attention calls to record how many cond chunks (of 3 images) each had."""

    def __init__(self, pack, monkeypatch):
        unet_family = pack("nodes.families.unet")
        self.layouts = []
        original = unet_family.CorrAttentionPatch.corr_attention
        recorder = self

        def recording(patch, q, k, v, extra_options):
            recorder.layouts.append(q.shape[0] // 3)
            return original(patch, q, k, v, extra_options)

        monkeypatch.setattr(unet_family.CorrAttentionPatch, "corr_attention", recording)


def random_corr(pack, sd15_parts, sample_images):
    matcher = pack("nodes.matcher")
    fe = pack("nodes.feature_extractor")
    model, _, vae = sd15_parts
    features, grid, _ = fe.extract_features(model, vae, sample_images, fe.empty_conditioning(model), 261, 1, 1, 0)
    dift = pack("nodes.types").DiftFeatures(features, (256, 256), grid, 1, 261)
    return matcher.build_correspondence(dift, 0, False, -1.0, 1024)


def test_cond_and_uncond_in_separate_calls_give_the_same_result(pack, sd15_parts, conds, sample_images, monkeypatch):
    import comfy.model_management

    corr = random_corr(pack, sd15_parts, sample_images)
    model = both_patches(pack, sd15_parts[0], corr)
    latent = torch.zeros(3, 4, 32, 32)
    noise = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    recorder = Recorder(pack, monkeypatch)
    together = sample(model, latent, noise, conds, steps=1)
    assert set(recorder.layouts) == {2}
    recorder.layouts.clear()
    # Under memory pressure the host sends each cond chunk in its own call; make its free-memory probe say so.
    monkeypatch.setattr(comfy.model_management, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (1, 1) if torch_free_too else 1)
    apart = sample(model, latent, noise, conds, steps=1)
    assert set(recorder.layouts) == {1}
    # Same math; the host's attention also chunks differently under low memory, hence rounding
    # only: float32 on the CPU, float16 on a GPU.
    rounding = 1e-4 if sd15_parts[0].model.get_dtype() == torch.float32 else 1e-2
    assert (apart - together).abs().max() <= rounding * together.abs().max()


def test_more_than_two_cond_chunks(pack, sd15_parts, conds, sample_images, monkeypatch):
    corr = random_corr(pack, sd15_parts, sample_images)
    model = both_patches(pack, sd15_parts[0], corr)
    clip = sd15_parts[1]
    second = clip.encode_from_tokens_scheduled(clip.tokenize("a painting"))
    recorder = Recorder(pack, monkeypatch)
    latent = torch.zeros(3, 4, 32, 32)
    noise = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    out = sample(model, latent, noise, conds, steps=1, positive=conds[0] + second)
    assert torch.isfinite(out).all()
    assert set(recorder.layouts) == {3}


@pytest.mark.slow
def test_core_attention_patch_on_the_same_layer_still_runs(host, tiny_sd15, sample_files):
    # SelfAttentionGuidance (a core node) sets an attn1 replace on the middle block and reads what it
    # recorded in its post-CFG step: if Edicho clobbered it, sampling would fail there.
    graph = edicho_img2img(tiny_sd15, sample_files, steps=2)
    graph["sag"] = {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["ckpt", 0], "scale": 0.5, "blur_sigma": 2.0}}
    graph["attention"]["inputs"].update(model=["sag", 0], layers="output, middle")
    graph["sample_plain"]["inputs"]["model"] = ["sag", 0]
    with_sag = runner.run_graph(graph)
    graph.pop("sag")
    graph["attention"]["inputs"]["model"] = ["ckpt", 0]
    graph["sample_plain"]["inputs"]["model"] = ["ckpt", 0]
    without = runner.run_graph(graph)
    assert torch.isfinite(with_sag.output("decode")).all()
    assert not torch.equal(with_sag.output("sample")["samples"], without.output("sample")["samples"])
    assert not torch.equal(with_sag.output("sample_plain")["samples"], without.output("sample_plain")["samples"])


def tiny_auraflow():
    """AuraFlow, a family Edicho does not support, as the host's own class at a reduced size."""
    import comfy.model_patcher
    import comfy.supported_models

    config = {"cond_seq_dim": 32, "dim": 64, "n_layers": 2, "n_double_layers": 1, "n_heads": 2, "global_conddim": 64,
              "max_seq": 256}
    model = comfy.supported_models.AuraFlow(config).get_model({})
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


@pytest.mark.parametrize("node, message", [
    ("attention_warp", r"EdichoAttentionWarp: the model is AuraFlow, which Edicho does not support yet\. Supported: SD1\.x, SD2\.x, SDXL \(UNet\), Flux\.1.*Qwen-Image.*SD3/SD3\.5"),
    ("noise_fuser", r"EdichoNoiseFuser: the model is AuraFlow, which Edicho does not support yet"),
    ("feature_extractor", r"EdichoFeatureExtractor: the model is AuraFlow, and DIFT features come from a UNet\. Load an SD1\.5, SD2\.1 or SDXL"),
])
def test_unsupported_dit_models_are_refused_with_a_clear_message(host, pack, node, message):
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = Correspondence.identity(2, (8, 8), 0, (64, 64))
    apply = {"attention_warp": lambda m: pack("nodes.attention_warp").apply_attention_warp(m, corr, "auto", 0, 1, 1, "warp"),
             "noise_fuser": lambda m: pack("nodes.noise_fuser").apply_noise_fuser(m, corr, 0.8, 0.9, 0, 1, 0, "literal"),
             "feature_extractor": lambda m: pack("nodes.feature_extractor").FeaturePass(m, None, None, None, 261, -1)}
    with pytest.raises(ValueError, match=message):
        apply[node](tiny_auraflow())


@pytest.mark.slow
def test_all_in_one_node_runs_in_a_graph(host, tiny_sd15, sample_files):
    graph = edicho_img2img(tiny_sd15, sample_files, steps=1)
    graph["apply"] = {"class_type": "EdichoApply", "inputs": {"model": ["ckpt", 0], "vae": ["ckpt", 2],
                                                              "images": ["images", 0], "reference": 0, "seed": 0}}
    graph["sample"]["inputs"]["model"] = ["apply", 0]
    graph["preview"]["inputs"]["correspondence"] = ["apply", 1]
    for unused in ("attention", "fuser", "features", "correspondence"):
        graph.pop(unused)
    result = runner.run_graph(graph)
    assert result.output("decode").shape == (3, 256, 256, 3)
