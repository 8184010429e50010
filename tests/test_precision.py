"""What users load and run in reduced precision, on the CPU: the tiny checkpoints stored as fp8 e4m3fn, as the
host's scaled fp8 (`*_fp8_scaled`) and as bf16, loaded by the nodes users pick (CheckpointLoaderSimple; UNETLoader
with its `weight_dtype`) and sampled with both patches; the patched sampling computing in bf16 and fp16; the
extractor on a half-precision UNet, matched in float32.

No host flag makes the host compute in half precision on the CPU: `--bf16-unet` / `--fp16-unet` set the weights'
dtype, and `unet_manual_cast` then casts them back to float32, because `should_use_bf16` / `should_use_fp16` answer
False for a CPU device before any flag is read. Those two functions are the host's device capability switch: set to
True (the `compute` fixture), the host builds and runs the model in that dtype, as on a GPU that supports it.

Measured figures go to test-output/precision.json (the README's Precision table)."""
import json

import pytest
import torch

import graphs
import runner
import tiny_checkpoints
from conftest import CACHE, REPO, link_checkpoint, relative
from patch_calls import AttentionRecorder, record_fusions, record_gathers
from patch_reference import random_correspondence

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The capability switch each compute dtype needs.
SWITCHES = {"bf16": "should_use_bf16", "fp16": "should_use_fp16"}
FIGURES = REPO / "test-output" / "precision.json"


@pytest.fixture(scope="module")
def figures():
    """Measured figures by name, merged into test-output/precision.json at the end of the module."""
    found = {}
    yield found
    old = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(old | found, indent=1, sort_keys=True))


@pytest.fixture
def compute(host, monkeypatch):
    """compute(name): from now on the host picks `name` ("float32", "bf16", "fp16") as compute dtype on the CPU."""
    import comfy.model_management as mm

    def switch(name):
        if name in SWITCHES:
            monkeypatch.setattr(mm, SWITCHES[name], lambda *args, **kwargs: True)
    return switch


def file_of(family, weights):
    """The tiny checkpoint of `family` with weights "fp16" (as built) or one of `tiny_checkpoints.WEIGHTS`."""
    folder = CACHE / "checkpoints"
    if weights == "fp16":
        return tiny_checkpoints.ensure_checkpoint(family, folder)
    return tiny_checkpoints.ensure_variant(family, folder, weights)


def compute_dtype(model):
    """The dtype the host computes the loaded MODEL in (its manual cast, else its weights')."""
    return model.model.manual_cast_dtype or model.model.get_dtype()


def stored_dtypes(model):
    """Set of the dtypes the diffusion model's Linear weights are held in (0.33 holds a scaled fp8 one as a
    QuantizedTensor: its storage's)."""
    weights = [m.weight for m in model.model.diffusion_model.modules() if type(m).__name__ == "Linear"]
    return {getattr(w, "_qdata", w).dtype for w in weights}


def record_corr_attention(monkeypatch, pack):
    """List of (q, k, v dtypes, output dtype) of every active UNet Corr-Attention call, and of the host attention
    calls it makes (`host`), filled as the host samples."""
    unet = pack("nodes.families.unet")
    seen = {"corr": [], "host": []}
    active, attention = unet.CorrAttentionPatch.corr_attention, unet.host_attention

    def corr_attention(self, q, k, v, extra_options):
        out = active(self, q, k, v, extra_options)
        seen["corr"].append((q.dtype, k.dtype, v.dtype, out.dtype))
        return out

    def host_attention(q, k, v, extra_options):
        seen["host"].append((q.dtype, k.dtype, v.dtype))
        return attention(q, k, v, extra_options)

    monkeypatch.setattr(unet.CorrAttentionPatch, "corr_attention", corr_attention)
    # Patches made after this wrap it (their default inner), and the packed path calls it by name.
    monkeypatch.setattr(unet, "host_attention", host_attention)
    return seen


# 1. Reduced-precision files through the host's loaders, sampled with both patches.

# (weights stored, compute dtype, the host flag --fp8_e4m3fn-unet that keeps fp8 weights in memory)
SD15_CASES = [("fp8_e4m3fn", "float32", False), ("fp8_e4m3fn", "float32", True), ("fp8_scaled", "float32", False),
              ("bf16", "float32", False), pytest.param("bf16", "bf16", False, marks=pytest.mark.slow),
              ("fp16", "fp16", False)]


def load_sd15(host, monkeypatch, weights, keep_fp8=False):
    """(model, clip, vae) of the tiny SD1.x `weights` file through the host's CheckpointLoaderSimple."""
    import comfy.cli_args
    import nodes

    if keep_fp8:
        monkeypatch.setattr(comfy.cli_args.args, "fp8_e4m3fn_unet", True)
    return nodes.CheckpointLoaderSimple().load_checkpoint(link_checkpoint(host, file_of("sd15", weights)))[:3]


def check_sd15_run(model, seen, dtype, weights, keep_fp8):
    assert compute_dtype(model) == DTYPES[dtype]
    assert stored_dtypes(model) == ({torch.float8_e4m3fn} if weights == "fp8_scaled" or keep_fp8 else {DTYPES[dtype]})
    assert seen["corr"]
    assert {s[:3] for s in seen["host"]} == {s[:3] for s in seen["corr"]} == {(DTYPES[dtype],) * 3}


@pytest.mark.parametrize("weights,dtype,keep_fp8", SD15_CASES,
                         ids=["fp8_e4m3fn-float32", "fp8_e4m3fn-kept", "fp8_scaled", "bf16-float32", "bf16-bf16", "fp16-fp16"])
def test_sd15_file_through_checkpoint_loader_samples_with_both_patches(host, pack, monkeypatch, compute, weights,
                                                                       dtype, keep_fp8):
    compute(dtype)
    model, _, _ = load_sd15(host, monkeypatch, weights, keep_fp8)
    seen = record_corr_attention(monkeypatch, pack)
    fused = record_fusions(monkeypatch, pack)
    out = sample_patched(pack, "sd15", model)
    check_sd15_run(model, seen, dtype, weights, keep_fp8)
    assert fused and out.shape == (3, *INPUTS["sd15"][2]) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("weights,dtype", [("fp8_scaled", "float32"), ("bf16", "bf16")])
def test_sd15_file_runs_the_example_graph(host, sample_files, pack, monkeypatch, compute, weights, dtype):
    compute(dtype)
    seen = record_corr_attention(monkeypatch, pack)
    fused = record_fusions(monkeypatch, pack)
    name = link_checkpoint(host, file_of("sd15", weights))
    result = runner.run_graph(graphs.edicho_img2img(name, sample_files, steps=3, size=(128, 128)))
    check_sd15_run(result.output("ckpt"), seen, dtype, weights, False)
    edited = result.output("decode")
    assert fused and edited.shape == (3, 128, 128, 3) and torch.isfinite(edited).all()


# Per family: the conditioning width, the pooled width (None: none), the latent [C, (T,) h, w], the correspondence's
# grid and image size (the matcher's 8 px grid).
DIT_SHAPES = {"flux-dev": (768, 768, (16, 12, 10)), "sd35-medium": (768, 768, (16, 12, 10)),
              "flux2-klein": (768, None, (128, 6, 5)), "qwen-image": (3584, None, (16, 1, 12, 10))}
INPUTS = {"sd15": (768, None, (4, 16, 16), (16, 16), (128, 128))} | {
    family: (*shape, (12, 10), (96, 80)) for family, shape in DIT_SHAPES.items()}
DITS = list(DIT_SHAPES)
# (weights file, UNETLoader weight_dtype, compute dtype)
DIT_CASES = [("fp16", "fp8_e4m3fn", "float32"), ("fp8_e4m3fn", "default", "float32"),
             ("fp8_scaled", "default", "float32"), ("bf16", "default", "float32"), ("bf16", "default", "bf16"),
             ("fp16", "fp8_e4m3fn", "bf16")]


def sample_patched(pack, family, model, cfg=2.0, steps=3, packed=True):
    """Both patches (every block, warp; UNet: on the `packed` path or not) on a random correspondence of 3 images;
    euler from noise at a fixed seed."""
    import comfy.sample

    width, pooled, latent, grid, image_size = INPUTS[family]
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, grid, 1, torch.Generator().manual_seed(40), image_size=image_size)
    layers = ", ".join(dict.fromkeys(key[0] for key in pack("nodes.families").family_of(model, "x").attention_layers(model)))
    patched = pack("nodes.attention_warp").apply_attention_warp(model, corr, layers, 0.0, 1.0, 1.0, "warp")
    for patch in patched.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {}).values():
        patch.packed = packed
    patched = pack("nodes.noise_fuser").apply_noise_fuser(patched, corr, 0.8, 0.9, 0.0, 1.0, 0, "literal")
    gen = torch.Generator().manual_seed(5)

    def cond():
        extra = {"guidance": 3.5} | ({"pooled_output": torch.randn(1, pooled, generator=gen)} if pooled else {})
        return [[torch.randn(1, 7, width, generator=gen), extra]]

    positive, negative = cond(), cond()
    noise = torch.randn(3, *latent, generator=gen)
    return comfy.sample.sample(patched, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros_like(noise),
                               disable_pbar=True, seed=5)


def dit_params():
    for family in DITS:
        for case in DIT_CASES:
            # Qwen-Image's smallest loader-detected file is one 3072-wide block (380 M params); 0.3.75's smallest
            # Flux.1 (545 M) runs only the fp8_scaled case.
            big = family == "qwen-image" or (family == "flux-dev" and case == ("fp8_scaled", "default", "float32"))
            marks = [pytest.mark.slow] if big else []
            yield pytest.param(family, *case, marks=marks, id=f"{family}-{case[0]}-{case[1]}-{case[2]}")


@pytest.mark.parametrize("family,weights,weight_dtype,dtype", list(dit_params()))
def test_dit_file_through_unet_loader_samples_with_both_patches(host, pack, monkeypatch, compute, family, weights,
                                                                weight_dtype, dtype):
    import nodes

    if family.startswith("flux2") and not tiny_checkpoints.host_detects(family):
        pytest.skip(f"this host does not detect the tiny {family} (0.3.75 fixes FLUX.2's heads: its smallest is 1.67 B "
                    f"params); tests/test_flux2.py runs the host's class at a reduced size")
    if family == "flux-dev" and tiny_checkpoints.family_spec(family)["dit"]["hidden_size"] != 256 \
            and (weights, weight_dtype, dtype) != ("fp8_scaled", "default", "float32"):
        pytest.skip("this host's smallest Flux.1 is 545 M params: only its fp8_scaled file (the Kontext templates') runs")
    compute(dtype)
    name = link_checkpoint(host, file_of(family, weights), "diffusion_models")
    model = nodes.UNETLoader().load_unet(name, weight_dtype)[0]
    assert compute_dtype(model) == DTYPES[dtype]
    fp8 = weights.startswith("fp8_scaled") or weight_dtype == "fp8_e4m3fn"
    assert stored_dtypes(model) == ({torch.float8_e4m3fn} if fp8 else {DTYPES[dtype]})

    base = model.clone()
    recorder = AttentionRecorder()
    base.model_options["transformer_options"]["optimized_attention_override"] = recorder
    gathers = record_gathers(monkeypatch, pack)
    fused = record_fusions(monkeypatch, pack)
    out = sample_patched(pack, family, base)
    assert gathers and fused
    assert {(c["q"].dtype, c["k"].dtype, c["v"].dtype, c["out"].dtype) for c in recorder.calls} == {(DTYPES[dtype],) * 4}
    assert {patched.dtype for _, patched, _, _ in gathers} == {DTYPES[dtype]}
    assert out.shape == (3, *INPUTS[family][2]) and torch.isfinite(out).all()


# 2. Reduced-precision compute: the patched sampling in bf16 and fp16 next to float32 at the same seed.

@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_compute_stays_in_its_dtype_and_close_to_float32(host, pack, monkeypatch, compute, sd15_parts, figures,
                                                              dtype):
    import comfy.sample

    def plain(model):
        gen = torch.Generator().manual_seed(5)
        positive, negative = ([[torch.randn(1, 7, 768, generator=gen), {}]] for _ in range(2))
        noise = torch.randn(3, *INPUTS["sd15"][2], generator=gen)
        return comfy.sample.sample(model, noise, 3, 2.0, "euler", "simple", positive, negative, torch.zeros_like(noise),
                                   disable_pbar=True, seed=5)

    float32 = sample_patched(pack, "sd15", sd15_parts[0])
    float32_plain = plain(sd15_parts[0])
    compute(dtype)
    model = load_sd15(host, monkeypatch, "fp16")[0]
    seen = record_corr_attention(monkeypatch, pack)
    packed = sample_patched(pack, "sd15", model)
    gather = sample_patched(pack, "sd15", model, packed=False)
    check_sd15_run(model, seen, dtype, "fp16", False)
    assert torch.isfinite(packed).all() and torch.isfinite(gather).all()
    host_rounding = relative(plain(model), float32_plain)
    found = {"packed vs gather": relative(packed, gather), "patched vs float32": relative(packed, float32),
             "unpatched vs float32": host_rounding}
    figures[f"sd15 {dtype} compute, 3 euler steps, relative L2"] = found
    # Edicho adds no more error than the host's own rounding in that dtype.
    assert found["patched vs float32"] <= 2 * host_rounding
    assert found["packed vs gather"] <= host_rounding


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_packed_and_gather_paths_agree_in_half_precision(pack, figures, dtype):
    import torch.nn.functional as F

    kernels = pack("kernels.corr_attention")
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (16, 16), 1, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(6, 256, 64, generator=gen) for _ in range(3))

    def attention(q, k, v):
        split = lambda t: t.view(t.shape[0], -1, 8, 8).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(q.shape[0], -1, 64)

    def paths(q, k, v):
        packed = kernels.packed_corr_attention(q, k, v, kernels.packed_attention_plan(corr, 2), attention)
        gather = attention(*kernels.gather_attention_inputs(q, k, v, kernels.attention_sources(corr, 2), "warp"))
        return packed, gather

    exact, _ = paths(q.double(), k.double(), v.double())
    half = [q.to(DTYPES[dtype]), k.to(DTYPES[dtype]), v.to(DTYPES[dtype])]
    packed, gather = paths(*half)
    assert packed.dtype == gather.dtype == DTYPES[dtype]
    found = {"packed vs gather": relative(packed, gather), "packed vs float64": relative(packed, exact),
             "gather vs float64": relative(gather, exact)}
    figures[f"Corr-Attention layer in {dtype}, relative L2"] = found
    # Both are the same attention on the same rows: they differ only by the batch the kernel rounds in.
    eps = torch.finfo(DTYPES[dtype]).eps
    assert found["packed vs gather"] <= eps and found["packed vs float64"] <= eps


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_corr_cfg_in_flow_eps_space_is_finite_and_close_near_sigma_0_and_1(pack, figures, dtype):
    fuser, support, steps = pack("nodes.noise_fuser"), pack("nodes.families.patch_support"), pack("nodes.step_range")
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, (12, 10), 1, torch.Generator().manual_seed(40))
    fusion = fuser.CorrCfgFusion(support.CorrespondenceOnDevice(corr), steps.StepGate(steps.StepRange(1.0, 0.0)),
                                 0.8, 0.9, 3, "literal", flow=True)
    gen = torch.Generator().manual_seed(17)
    x, cond, uncond = (torch.randn(3, 16, 12, 10, generator=gen).to(DTYPES[dtype]) for _ in range(3))
    found = {}
    for sigma in (0.001, 0.01, 0.5, 0.99, 0.999):
        def guided(x, cond, uncond):
            args = {"conds": [["c"], ["u"]], "conds_out": [cond, uncond], "cond_scale": 4.0, "timestep": None,
                    "input": x, "sigma": torch.full((3,), sigma), "model": None,
                    "model_options": {"transformer_options": {"sample_sigmas": torch.tensor([1.0, sigma, 0.0])}}}
            c, u = fusion(args)
            # The host's CFG, then the eps the sampler steps with (flow: x = (1 - sigma) x0 + sigma eps).
            denoised = u + 4.0 * (c - u)
            return denoised, (x.double() - (1 - sigma) * denoised.double()) / sigma

        half = guided(x, cond, uncond)
        exact = guided(x.float(), cond.float(), uncond.float())
        assert half[0].dtype == DTYPES[dtype] and torch.isfinite(half[0]).all()
        found[f"sigma {sigma}"] = {"x0": relative(half[0], exact[0]), "eps": relative(half[1], exact[1])}
    figures[f"Corr-CFG (flow) on {dtype} predictions, relative L2 vs float32"] = found
    eps = torch.finfo(DTYPES[dtype]).eps
    # Near sigma 0 the sampler moves x to x0; near sigma 1 it steps along eps: each stays within a few roundings.
    for sigma in (0.001, 0.01, 0.5):
        assert found[f"sigma {sigma}"]["x0"] <= 8 * eps
    for sigma in (0.5, 0.99, 0.999):
        assert found[f"sigma {sigma}"]["eps"] <= 8 * eps


# 3. The extractor on a half-precision UNet, matched in float32.

@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_features_from_a_half_precision_unet_match_as_float32_does(host, pack, monkeypatch, compute, sd15_parts,
                                                                   sample_images, figures, dtype):
    extractor, features, matching = pack("nodes.feature_extractor"), pack("kernels.features"), pack("kernels.matching")
    float32_model, _, vae = sd15_parts

    def matches(model):
        raw, grid, _ = extractor.extract_features(model, vae, sample_images, extractor.empty_conditioning(model), 261,
                                                  -1, 1, 0)
        assert raw.dtype == torch.float32
        return matching.match_features(features.prepare_features(raw, grid), 0, mutual=True)

    float32 = matches(float32_model)
    compute(dtype)
    model = load_sd15(host, monkeypatch, "fp16")[0]
    assert compute_dtype(model) == DTYPES[dtype]
    half = matches(model)

    agree = {"index": float((half.index[1:] == float32.index[1:]).float().mean()),
             "valid": float((half.valid[1:] == float32.valid[1:]).float().mean())}
    figures[f"extractor on a {dtype} UNet, matched in float32: bundled photos, target cells agreeing"] = agree
    assert agree["index"] >= 0.9 and agree["valid"] >= 0.95


# 4. int8 files, on a host that reads them (its ops know "int8_tensorwise", via comfy-kitchen: 0.33; 0.3.75 has none).

def host_reads_int8():
    import importlib.util

    ops = importlib.util.find_spec("comfy.ops")
    return "int8_tensorwise" in open(ops.origin).read() and importlib.util.find_spec("comfy_kitchen") is not None


def test_int8_file_through_checkpoint_loader_samples_with_both_patches(host, pack, monkeypatch, compute, figures):
    if not host_reads_int8():
        pytest.skip("this host reads no int8_tensorwise files (ComfyUI 0.3.75 has no int8 format)")
    compute("float32")
    model, _, _ = load_sd15(host, monkeypatch, "int8")
    assert stored_dtypes(model) == {torch.int8}
    seen = record_corr_attention(monkeypatch, pack)
    fused = record_fusions(monkeypatch, pack)
    out = sample_patched(pack, "sd15", model)
    assert seen["corr"] and {s[:3] for s in seen["corr"]} == {(torch.float32,) * 3}
    assert fused and out.shape == (3, *INPUTS["sd15"][2]) and torch.isfinite(out).all()
    # Close to the fp16 file it was quantized from (measured 0.018): one int8 scale per layer.
    reference = sample_patched(pack, "sd15", load_sd15(host, monkeypatch, "fp16")[0])
    figures["sd15 int8 file, float32 compute, 3 euler steps, relative L2 to the fp16 file"] = relative(out, reference)
    assert relative(out, reference) < 0.05
