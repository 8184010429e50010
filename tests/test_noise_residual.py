"""What Corr-CFG leaves of each photo's own noise, measured with oracle models run by the host's samplers.

An oracle answers every model call from each photo's known clean latent, through the model's
`model_function_wrapper`: the host's sampler, CFG, model sampling and the Noise Fuser's patches
all run as in a graph, and only the network is replaced. The photos are a consistent group (each
target's clean latent is the reference's, warped, at its matched cells), so Corr-CFG has nothing
to change and whatever the fused steps leave is noise. Two oracles bracket a trained model:
- x0: the exact clean latent at every call, wherever the sampler has drifted. It removes any noise
  by the end, so what counts is the noise a state carries over its level sigma (what a trained
  model at that level would have to remove: more than it was trained for is grain).
- eps: the noise each photo started with, exact along the plain trajectory; noise added on the way
  is never seen, so the final latent shows what nothing removes.
Figures are recorded as the `residuals` property of each test (`--junitxml`).
"""
import pytest
import torch

import reduced_dits
from patch_reference import random_correspondence

STEPS = 20
CFG = 4.0
LAM = 0.8
RANGES = {"default": (0.08, 0.8), "full": (0.0, 1.0)}
READINGS = ("literal", "substituted")


@pytest.fixture(params=["sd15", "flux", "qwen-image", "sd3"])
def family(request, host, pack):
    """(name, model, one photo's latent shape, flow, correspondence): the tiny SD1.x (eps) or a reduced DiT (flow)."""
    if request.param == "sd15":
        name, model, shape, flow = "sd15", request.getfixturevalue("sd15_parts")[0], (4, 8, 10), False
    else:
        frames = (1,) if request.param == "qwen-image" else ()
        name, model, shape, flow = request.param, reduced_dits.FAMILIES[request.param][0](), (16, *frames, *reduced_dits.LATENT), True
    Correspondence = pack("kernels.correspondence").Correspondence
    corr = random_correspondence(Correspondence, 3, shape[-2:], 1, torch.Generator().manual_seed(40),
                                 image_size=(shape[-2] * 8, shape[-1] * 8))
    return name, model, shape, flow, corr


def text_conds(name):
    """(positive, negative) conditioning the family's extra_conds accept; the oracle never reads it."""
    gen = torch.Generator().manual_seed(2)
    if name == "sd15":
        return [[[torch.randn(1, 77, 768, generator=gen), {}]] for _ in range(2)]
    extra = {"flux": {"guidance": 3.5}, "sd3": {}, "qwen-image": None}[name]
    return [[[torch.randn(1, reduced_dits.TEXT, 32, generator=gen),
              {} if extra is None else {"pooled_output": torch.randn(1, 32, generator=gen), **extra}]] for _ in range(2)]


class Oracle:
    """model_function_wrapper answering each row from its photo's clean latent `[B, ...]` (see the module docstring).

    Records the noise each photo started with, per unit of sigma (`start`, `[B, ...]`), and at every
    call the noise its state carries over its level against that (`levels`, `[B]` each; 1 along the plain trajectory).
    """

    def __init__(self, clean, flow, mode):
        self.clean, self.flow, self.mode = clean, flow, mode
        self.start = None
        self.start_sigma = None
        self.levels = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args):
        x, sigma = args["input"], args["timestep"]
        repeat = (len(args["cond_or_uncond"]), *([1] * (x.ndim - 1)))
        clean = self.clean.to(x).repeat(repeat)
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)
        alpha = 1.0 - sig if self.flow else torch.ones_like(sig)
        noise = (x - alpha * clean) / sig
        if self.start is None:
            self.start, self.start_sigma = noise[:self.clean.shape[0]].clone(), float(sigma.max())
        start = self.start.repeat(repeat)
        self.levels.append((noise.flatten(1).norm(dim=1) / start.flatten(1).norm(dim=1))[:self.clean.shape[0]])
        if self.mode == "x0":
            return clean
        # At sigma 1 (flow) x is all noise and any x0 fits it: along the plain trajectory, the clean one.
        return torch.where(alpha > 0, (x - sig * start) / alpha.clamp(min=1e-6), clean)


def sample(pack, family, mode, reading=None, percent="default", start_noise="own"):
    """The group sampled with an oracle, plain (`reading` None) or through the Noise Fuser: (final latents, oracle)."""
    import comfy.sample

    name, model, shape, flow, corr = family
    share_noise = pack("kernels.fusion").share_noise
    gen = torch.Generator().manual_seed(21)
    oracle = Oracle(share_noise(torch.randn(corr.batch_size, *shape, generator=gen), corr), flow, mode)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(oracle)
    if reading is not None:
        patched = pack("nodes.noise_fuser").apply_noise_fuser(patched, corr, LAM, 0.9, *RANGES[percent], 0, reading,
                                                              start_noise)
    noise = torch.randn(corr.batch_size, *shape, generator=gen)
    positive, negative = text_conds(name)
    samples = comfy.sample.sample(patched, noise, STEPS, CFG, "euler", "simple" if flow else "normal", positive,
                                  negative, torch.zeros_like(noise), disable_pbar=True, seed=5)
    return patched.model.process_latent_in(samples), oracle


def targets(corr):
    return [b for b in range(corr.batch_size) if b != corr.reference]


def left(final, oracle, corr):
    """How much of the targets' starting noise (x_T - alpha_T x0) is in their final latents, as a fraction."""
    rows = targets(corr)
    return float((final - oracle.clean)[rows].norm() / (oracle.start_sigma * oracle.start[rows].norm()))


def peak_level(oracle, corr):
    """The most noise a target's state carried over its level, in units of that level (1 = plain)."""
    return float(torch.stack(oracle.levels)[:, targets(corr)].max())


def predicted_eps_oracle_residual(pack, family, reading, percent, start):
    """final - x0 under the eps oracle, worked through: sum over fused steps k of
    c lambda (sigma_k - sigma_k+1) / (alpha_k alpha_k+1) m_k (eps_own - eps_ref warped), c = 1 literal, 1 - s substituted.

    A fused step moves the guided eps by c lambda m_k (eps_ref warped - eps_own) (both CFG halves of this oracle
    predict the photo's own eps); Euler turns that into x - x_plain, which later eps-oracle steps carry to the end
    as (x - x_plain) / alpha.
    """
    import comfy.samplers

    name, model, shape, flow, corr = family
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple" if flow else "normal", STEPS)
    steps = pack("nodes.step_range").StepRange.from_percent(model, *RANGES[percent], "test")
    injection_mask = pack("kernels.fusion").injection_mask
    difference = start - pack("kernels.fusion").share_noise(start, corr)
    c = 1.0 if reading == "literal" else 1.0 - CFG
    alpha = (lambda s: 1.0 - s) if flow else (lambda s: 1.0)
    out = torch.zeros_like(start)
    for k in range(STEPS):
        sigma, after = float(sigmas[k]), float(sigmas[k + 1])
        if not steps.contains(sigma) or alpha(sigma) <= 0:
            continue
        mask = injection_mask(corr.valid, 0.9, torch.Generator().manual_seed(k))
        cells = mask.reshape(corr.batch_size, *([1] * (start.ndim - 3)), *shape[-2:])
        out += c * LAM * (sigma - after) / (alpha(sigma) * alpha(after)) * cells * difference
    return out


@pytest.mark.parametrize("percent", sorted(RANGES))
def test_eps_oracle_keeps_lambda_times_own_minus_reference_noise(pack, family, percent, record_property):
    plain, plain_oracle = sample(pack, family, "eps")
    corr = family[4]
    figures = {"plain": left(plain, plain_oracle, corr)}
    for reading in READINGS:
        final, oracle = sample(pack, family, "eps", reading, percent)
        figures[reading] = left(final, oracle, corr)
        expected = predicted_eps_oracle_residual(pack, family, reading, percent, oracle.start)
        scale = float(expected.abs().max())
        torch.testing.assert_close(final - oracle.clean, expected, rtol=0, atol=1e-4 * scale)
        # Not a rounding error: a large share of the starting noise, where plain leaves none.
        assert figures[reading] > 0.2 > 1e4 * figures["plain"]
    record_property("residuals", figures)
    # The substituted reading carries (s - 1) times the literal one's, the other way.
    assert figures["substituted"] == pytest.approx((CFG - 1) * figures["literal"], rel=1e-3)


def test_x0_oracle_is_pushed_over_its_noise_level(pack, family, record_property):
    corr = family[4]
    plain, plain_oracle = sample(pack, family, "x0")
    assert peak_level(plain_oracle, corr) == pytest.approx(1.0, abs=1e-4)
    figures = {}
    for percent in sorted(RANGES):
        for reading in READINGS:
            final, oracle = sample(pack, family, "x0", reading, percent)
            figures[f"{reading}, {percent}"] = {"peak level": peak_level(oracle, corr), "left": left(final, oracle, corr)}
    record_property("residuals", figures)
    for percent in RANGES:
        # Literal: each fused step adds lambda (own - reference's) to the noise the next one reads.
        assert figures[f"literal, {percent}"]["peak level"] > 2.0
        # Substituted pulls the target's noise onto the reference's (1 - (s - 1) lambda per unit step): far less.
        assert figures[f"substituted, {percent}"]["peak level"] < figures[f"literal, {percent}"]["peak level"] / 2
    # An exact denoiser removes what is over the level on the plain steps after the range, but not on a fused last step.
    assert figures["literal, default"]["left"] < 1e-5
    assert figures["literal, full"]["left"] > 0.01


@pytest.mark.parametrize("mode", ["eps", "x0"])
def test_shared_start_noise_leaves_what_plain_sampling_leaves(pack, family, mode, record_property):
    corr = family[4]
    plain, plain_oracle = sample(pack, family, mode)
    figures = {"plain": {"left": left(plain, plain_oracle, corr), "peak level": peak_level(plain_oracle, corr)}}
    for percent in sorted(RANGES):
        for reading in READINGS:
            final, oracle = sample(pack, family, mode, reading, percent, start_noise="shared")
            figures[f"{reading}, {percent}"] = {"left": left(final, oracle, corr), "peak level": peak_level(oracle, corr)}
            assert figures[f"{reading}, {percent}"]["left"] < 3e-5
            assert figures[f"{reading}, {percent}"]["peak level"] == pytest.approx(1.0, abs=1e-4)
    record_property("residuals", figures)


def test_ksampler_and_sampler_custom_advanced_start_the_targets_from_the_reference_noise(host, pack, sd15_parts):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as custom
    import nodes

    model = sd15_parts[0]
    corr = random_correspondence(pack("kernels.correspondence").Correspondence, 3, (8, 10), 1,
                                 torch.Generator().manual_seed(40), image_size=(64, 80))
    positive, negative = text_conds("sd15")
    latent = {"samples": torch.zeros(3, 4, 8, 10)}
    fuser = pack("nodes.noise_fuser")

    def start_noise(sampler, start_noise="own", lam=LAM):
        oracle = Oracle(torch.zeros(3, 4, 8, 10), False, "x0")
        patched = model.clone()
        patched.set_model_unet_function_wrapper(oracle)
        patched = fuser.apply_noise_fuser(patched, corr, lam, 0.9, 0.08, 0.8, 0, "literal", start_noise)
        if sampler == "KSampler":
            nodes.KSampler().sample(patched, 7, 2, CFG, "euler", "normal", positive, negative, latent)
        else:
            guider = comfy.samplers.CFGGuider(patched)
            guider.set_conds(positive, negative)
            guider.set_cfg(CFG)
            sigmas = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "normal", 2)
            custom.SamplerCustomAdvanced.execute(custom.Noise_RandomNoise(7), guider, comfy.samplers.sampler_object("euler"),
                                                 sigmas, latent)
        return oracle.start

    share_noise = pack("kernels.fusion").share_noise
    for sampler in ("KSampler", "SamplerCustomAdvanced"):
        own = start_noise(sampler)
        assert torch.equal(start_noise(sampler, "shared"), share_noise(own, corr))
        assert not torch.equal(share_noise(own, corr), own)
        # lambda 0 is off, and the photos keep their own noise.
        assert torch.equal(start_noise(sampler, "shared", lam=0.0), own)
