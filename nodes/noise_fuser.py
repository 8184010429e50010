"""EdichoNoiseFuser: Corr-CFG (Edicho §3.4) as a chained pre-CFG function on a model clone."""
import comfy.model_sampling
import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..kernels.fusion import denoised_change, eps_from_denoised, fuse_uncond_eps, injection_mask, share_noise
from .families import CorrespondenceOnDevice, add_sampling_check, family_of
from .step_range import StepGate, StepRange
from .types import CorrespondenceType

NODE = "EdichoNoiseFuser"
READINGS = ("literal", "substituted")
# own: each photo's noise as the sampler drew it (the paper says nothing of it); shared: see SharedStartNoise.
START_NOISE = ("own", "shared")


class CorrCfgFusion:
    """Fuses each target's unconditional noise with the reference's, warped, in eps space."""

    def __init__(self, corr, gate, lam, gamma, seed, reading, flow=False):
        self.corr = corr
        # Rectified flow (CONST sampling: Flux, Qwen-Image, SD3): x = (1 - sigma) x0 + sigma eps; else x = x0 + sigma eps.
        self.flow = flow
        self.gate = gate
        self.lam = lam
        self.gamma = gamma
        self.seed = seed
        self.reading = reading
        self._run = (None, None, None)

    def __deepcopy__(self, memo):
        return self

    def injection_masks(self, schedule, device, grid):
        """`[S, B, h*w]` bool on the latent grid: step i's injection mask drawn with seed + i, made once per sampling run."""
        run_schedule, run_device, masks = self._run
        if masks is None or run_schedule is not schedule or run_device != device:
            steps = 1 if schedule is None else len(schedule)
            valid = self.corr.at(torch.device("cpu"), grid).valid
            masks = torch.stack([injection_mask(valid, self.gamma, torch.Generator().manual_seed(self.seed + step))
                                 for step in range(steps)]).to(device)
            self._run = (schedule, device, masks)
        return masks

    def __call__(self, args):
        conds_out = args["conds_out"]
        # cfg == 1: the host skipped the unconditional pass, and there is nothing to fuse.
        if self.lam == 0.0 or args["conds"][1] is None:
            return conds_out
        schedule = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        sigma = args["sigma"]
        if not self.gate.update(sigma, schedule).is_active:
            return conds_out
        x = args["input"]
        masks = self.injection_masks(schedule, x.device, tuple(x.shape[-2:]))
        mask = masks[min(self.gate.step, masks.shape[0] - 1)]
        cond, uncond = conds_out[0], conds_out[1]
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).float()
        alpha = 1.0 - sig if self.flow else 1.0
        if self.flow and bool((alpha <= 0).any()):
            # sigma = 1: x is pure noise and x0 can't be recovered from an eps.
            return conds_out
        eps_u = eps_from_denoised(x.float(), uncond.float(), sig, alpha)
        fused = fuse_uncond_eps(eps_u, self.corr.at(x.device, tuple(x.shape[-2:])), self.lam, mask)
        # u' written as a change of u, so rows and positions left alone stay bit-exact.
        new_uncond = (uncond.float() + denoised_change(fused - eps_u, sig, alpha)).to(uncond.dtype)
        if self.reading == "literal":
            # Eq. 9: eps_u' + s (eps_c - eps_u): the host computes u' + s (c' - u'), so shift c by u' - u.
            cond = cond + (new_uncond - uncond)
        return [cond, new_uncond, *conds_out[2:]]


class SharedStartNoise:
    """OUTER_SAMPLE wrapper: the targets start from the reference's noise, warped, at their matched cells.

    A noise prediction is mostly the photo's own starting noise: fusing predictions that describe
    different noises moves a fused cell's denoised estimate by lambda sigma (own - reference's),
    noise over the level the next step expects (tests/test_noise_residual.py). With the noise shared,
    Eq. 7-9 fuse only what the model predicts beyond it. Ancestral and SDE samplers still add each
    photo's own noise at every step.
    """

    def __init__(self, corr):
        self.corr = corr

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, noise, *args, **kwargs):
        # Another batch is left as it is: the sampling check names it at the first model call.
        if noise.ndim in (4, 5) and noise.shape[0] == self.corr.corr.batch_size:
            noise = share_noise(noise, self.corr.at(noise.device, tuple(noise.shape[-2:])))
        return executor(noise, *args, **kwargs)


def apply_noise_fuser(model, corr, lam, gamma, start_percent, end_percent, seed, reading, start_noise="own"):
    """A clone of `model` whose unconditional predictions are fused through the correspondence."""
    family = family_of(model, NODE)
    gate = StepGate(StepRange.from_percent(model, start_percent, end_percent, NODE))
    flow = isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    patched = model.clone()
    add_sampling_check(patched, corr, NODE, family)
    # A UNet reads the noise level at the start of its call (StepGate); other families ignore this patch.
    patched.set_model_emb_patch(gate)
    on_device = CorrespondenceOnDevice(corr)
    patched.set_model_sampler_pre_cfg_function(CorrCfgFusion(on_device, gate, lam, gamma, seed, reading, flow=flow))
    if start_noise == "shared" and lam != 0.0:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "edicho_shared_noise",
                                     SharedStartNoise(on_device))
    return patched


class EdichoNoiseFuser(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="Edicho Noise Fuser (Corr-CFG)",
            category="edicho/patches",
            description="Fuses each target's unconditional noise prediction with the reference's, warped through "
                        "the correspondence (Edicho Corr-CFG), in the model's own noise space (rectified flow for Flux, "
                        "Qwen-Image and SD3). "
                        "The conditional branch is left alone. Nothing is fused at cfg 1, where the host skips the "
                        "unconditional pass: Flux dev, schnell and Kontext are guidance-distilled and run at cfg 1. "
                        "start_noise shared starts the targets from the reference's noise at their matched cells, "
                        "so the fused predictions leave no noise behind (README: Corr-CFG).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched; the input is untouched)."),
                CorrespondenceType.Input("correspondence", tooltip="From Edicho Matcher, built on the same image batch that is sampled."),
                io.Float.Input("lam", default=0.8, min=0.0, max=1.0, step=0.05, display_name="lambda",
                               tooltip="Fusion weight lambda (paper: 0.8). 0 = off."),
                io.Float.Input("gamma", default=0.9, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of matched positions that take the reference's noise (paper: 0.9)."),
                io.Float.Input("start_percent", default=0.08, min=0.0, max=1.0, step=0.01,
                               tooltip="Start of the active range, in percent of denoising (paper: step 4 of 50 = 0.08)."),
                io.Float.Input("end_percent", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="End of the active range (paper: step 40 of 50 = 0.80)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the random injection mask (a new mask each step, the same for a given seed)."),
                io.Combo.Input("reading", options=list(READINGS), default="literal",
                               tooltip="literal (Eq. 9): eps_u' + s(eps_c - eps_u). substituted: eps_u' + s(eps_c - eps_u'), which also pulls the guidance."),
                io.Combo.Input("start_noise", options=list(START_NOISE), default="own", optional=True,
                               tooltip="own: each photo starts from the noise the sampler drew for it (the paper "
                                       "does not say; fused cells then carry lambda x (own - reference's noise), "
                                       "extra noise a model sees as grain). shared: the targets start from the "
                                       "reference's noise, warped, at their matched cells, so the fused predictions "
                                       "describe the same noise and leave none (at cfg 1 too, where nothing is fused). "
                                       "KSampler and SamplerCustomAdvanced alike; for deterministic samplers (euler, "
                                       "dpmpp_2m, ddim): ancestral and SDE samplers add each photo's own noise at "
                                       "every step."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, correspondence, lam, gamma, start_percent, end_percent, seed, reading,
                start_noise="own") -> io.NodeOutput:
        return io.NodeOutput(apply_noise_fuser(model, correspondence, lam, gamma, start_percent, end_percent, seed, reading,
                                               start_noise))
