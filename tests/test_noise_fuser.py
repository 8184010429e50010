"""Corr-CFG: exact math against a plain computation, both readings of Eq. 9, invariants."""
import pytest
import torch

from patch_reference import plain_fused_eps, random_correspondence


def make_fusion(pack, corr, lam=0.8, gamma=0.9, seed=3, reading="literal", sigma_range=(10.0, 1.0), flow=False):
    fuser = pack("nodes.noise_fuser")
    support = pack("nodes.families.patch_support")
    steps = pack("nodes.step_range")
    gate = steps.StepGate(steps.StepRange(*sigma_range))
    return fuser.CorrCfgFusion(support.CorrespondenceOnDevice(corr), gate, lam, gamma, seed, reading, flow=flow)


def make_args(x, cond, uncond, sigma, schedule, cfg_uncond=True):
    return {"conds": [["c"], ["u"] if cfg_uncond else None], "conds_out": [cond, uncond], "cond_scale": 7.0,
            "timestep": sigma, "input": x, "sigma": sigma, "model": None,
            "model_options": {"transformer_options": {"sample_sigmas": schedule}}}


@pytest.mark.parametrize("reading", ["literal", "substituted"])
@pytest.mark.parametrize("reference", [0, 1])
def test_fusion_equals_plain_computation(pack, reading, reference):
    kc = pack("kernels.correspondence")
    injection_mask = pack("kernels.fusion").injection_mask
    gen = torch.Generator().manual_seed(11 + reference)
    corr = random_correspondence(kc.Correspondence, 3, (4, 5), reference, gen)
    x, cond, uncond = (torch.randn(3, 4, 4, 5, generator=gen) for _ in range(3))
    schedule = torch.tensor([14.0, 6.0, 3.0, 1.5, 0.0])
    sigma = torch.full((3,), 3.0)
    fused = make_fusion(pack, corr, seed=3, reading=reading)(make_args(x, cond, uncond, sigma, schedule))

    step = 2  # sigma 3.0 is schedule[2]: the mask seed is seed + step
    mask = injection_mask(corr.valid, 0.9, torch.Generator().manual_seed(3 + step))
    eps_u = (x - uncond) / 3.0
    eps_c = (x - cond) / 3.0
    eps_u_fused = plain_fused_eps(eps_u, corr, 0.8, mask)
    torch.testing.assert_close(fused[1], x - 3.0 * eps_u_fused, rtol=1e-5, atol=1e-5)
    s = 7.0
    guided = fused[1] + s * (fused[0] - fused[1])  # what the host's CFG does with the list
    if reading == "literal":
        expected_eps = eps_u_fused + s * (eps_c - eps_u)
    else:
        expected_eps = eps_u_fused + s * (eps_c - eps_u_fused)
    torch.testing.assert_close(guided, x - 3.0 * expected_eps, rtol=1e-4, atol=1e-4)
    # The reference row is never changed.
    assert torch.equal(fused[1][reference], uncond[reference])


@pytest.mark.parametrize("kwargs, sigma", [({"lam": 0.0}, 3.0), ({}, 20.0), ({}, 0.5)])
def test_off_or_outside_the_range_returns_the_predictions_untouched(pack, kwargs, sigma):
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(12)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    x, cond, uncond = (torch.randn(3, 4, 4, 4, generator=gen) for _ in range(3))
    out = make_fusion(pack, corr, **kwargs)(make_args(x, cond, uncond, torch.full((3,), sigma), torch.tensor([sigma, 0.0])))
    assert out[0] is cond and out[1] is uncond


def test_cfg_one_skips_the_uncond_pass_and_fusion_does_nothing(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(13)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    x, cond = (torch.randn(3, 4, 4, 4, generator=gen) for _ in range(2))
    zeros = torch.zeros_like(x)
    out = make_fusion(pack, corr)(make_args(x, cond, zeros, torch.full((3,), 3.0), torch.tensor([3.0, 0.0]), cfg_uncond=False))
    assert out[0] is cond and out[1] is zeros


@pytest.mark.parametrize("channels", [(4,), (16, 1)], ids=["4d", "qwen-5d"])
@pytest.mark.parametrize("reading", ["literal", "substituted"])
def test_flow_model_fusion_is_done_in_its_own_eps_space(pack, reading, channels):
    # Rectified flow (Flux, Qwen-Image, SD3: CONST sampling): x = (1 - sigma) x0 + sigma eps, predictions are x0.
    # Qwen-Image's latents are 5-D, one frame.
    kc = pack("kernels.correspondence")
    injection_mask = pack("kernels.fusion").injection_mask
    gen = torch.Generator().manual_seed(15)
    corr = random_correspondence(kc.Correspondence, 3, (4, 5), 0, gen)
    x, cond, uncond = (torch.randn(3, *channels, 4, 5, generator=gen) for _ in range(3))
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    sigma = torch.full((3,), 0.5)
    fused = make_fusion(pack, corr, seed=3, reading=reading, sigma_range=(1.0, 0.0), flow=True)(
        make_args(x, cond, uncond, sigma, schedule))

    mask = injection_mask(corr.valid, 0.9, torch.Generator().manual_seed(3 + 2))
    to_eps = lambda x0: (x - 0.5 * x0) / 0.5  # noqa: E731
    to_x0 = lambda eps: (x - 0.5 * eps) / 0.5  # noqa: E731
    eps_u, eps_c = to_eps(uncond), to_eps(cond)
    eps_u_fused = plain_fused_eps(eps_u, corr, 0.8, mask)
    torch.testing.assert_close(fused[1], to_x0(eps_u_fused), rtol=1e-5, atol=1e-5)
    guided = fused[1] + 7.0 * (fused[0] - fused[1])
    other = eps_u if reading == "literal" else eps_u_fused
    torch.testing.assert_close(guided, to_x0(eps_u_fused + 7.0 * (eps_c - other)), rtol=1e-4, atol=1e-4)
    assert torch.equal(fused[1][0], uncond[0])


def test_flow_model_at_sigma_one_is_left_alone(pack):
    Correspondence = pack("kernels.correspondence").Correspondence
    gen = torch.Generator().manual_seed(16)
    corr = random_correspondence(Correspondence, 3, (4, 4), 0, gen)
    x, cond, uncond = (torch.randn(3, 4, 4, 4, generator=gen) for _ in range(3))
    out = make_fusion(pack, corr, sigma_range=(1.0, 0.0), flow=True)(
        make_args(x, cond, uncond, torch.full((3,), 1.0), torch.tensor([1.0, 0.0])))
    assert out[0] is cond and out[1] is uncond


def test_start_noise_is_an_optional_input_after_the_saved_ones(pack):
    # Saved workflows list the widgets in order: the new input goes last, and its default changes nothing.
    schema = pack("nodes.noise_fuser").EdichoNoiseFuser.define_schema()
    assert [i.id for i in schema.inputs] == ["model", "correspondence", "lam", "gamma", "start_percent",
                                             "end_percent", "seed", "reading", "start_noise"]
    start_noise = schema.inputs[-1]
    assert start_noise.optional and start_noise.default == "own" and start_noise.options == ["own", "shared"]
